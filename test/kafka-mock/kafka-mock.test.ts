// Proves the librdkafka mock broker is good enough to test a kafkajs-based driver.
import { spawn, type ChildProcess } from 'node:child_process';
import { createServer } from 'node:net';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { Kafka, logLevel, Partitioners, type Consumer, type KafkaConfig } from 'kafkajs';
import { afterEach, describe, expect, it } from 'vitest';
import { startKafkaMock, type KafkaMock } from './index.js';

// The mock waits (session timeout - 1 s) for members to (re)join on every rebalance.
const SESSION_TIMEOUT = 4_000;

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function mock(opts: Parameters<typeof startKafkaMock>[0]): Promise<KafkaMock> {
  const m = await startKafkaMock(opts);
  cleanups.push(() => m.stop());
  return m;
}

function client(brokers: string[], extra: Partial<KafkaConfig> = {}): Kafka {
  return new Kafka({
    clientId: 'kafka-mock-test',
    brokers,
    logLevel: logLevel.NOTHING,
    retry: { retries: 10, initialRetryTime: 100, maxRetryTime: 1_000 },
    ...extra,
  });
}

async function waitFor(what: string, cond: () => boolean, timeoutMs = 30_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function produce(kafka: Kafka, topic: string, n: number, prefix = 'm'): Promise<string[]> {
  const producer = kafka.producer({ idempotent: true, createPartitioner: Partitioners.DefaultPartitioner });
  await producer.connect();
  const values = Array.from({ length: n }, (_, i) => `${prefix}-${i}`);
  await producer.send({ topic, acks: -1, messages: values.map((v) => ({ key: v, value: v })) });
  await producer.disconnect();
  return values;
}

interface Tracked {
  consumer: Consumer;
  assignment: number[];
  messages: { partition: number; value: string; at: number }[];
}

async function trackedConsumer(kafka: Kafka, topic: string, groupId: string, autoCommit = true): Promise<Tracked> {
  const consumer = kafka.consumer({ groupId, sessionTimeout: SESSION_TIMEOUT, heartbeatInterval: 500, maxWaitTimeInMs: 500 });
  const t: Tracked = { consumer, assignment: [], messages: [] };
  consumer.on(consumer.events.GROUP_JOIN, (e) => {
    t.assignment = [...(e.payload.memberAssignment[topic] ?? [])].sort();
  });
  cleanups.push(() => consumer.disconnect());
  await consumer.connect();
  await consumer.subscribe({ topics: [topic], fromBeginning: true });
  await consumer.run({
    autoCommit,
    eachMessage: async ({ partition, message }) => {
      t.messages.push({ partition, value: message.value?.toString() ?? '', at: Date.now() });
    },
  });
  return t;
}

describe('librdkafka mock broker + kafkajs 2.2.4', () => {
  it('(a) idempotent producer with acks -1 writes to a 3-partition topic', async () => {
    const m = await mock({ brokers: 3, topics: [{ name: 'a', partitions: 3 }] });
    expect(m.brokers).toHaveLength(3);
    const kafka = client(m.brokers);
    const admin = kafka.admin();
    await admin.connect();
    cleanups.push(() => admin.disconnect());
    const cluster = await admin.describeCluster();
    expect(cluster.controller).toBe(1); // the controller-id fix

    const producer = kafka.producer({ idempotent: true, createPartitioner: Partitioners.DefaultPartitioner });
    await producer.connect();
    cleanups.push(() => producer.disconnect());
    const res = await producer.send({
      topic: 'a',
      acks: -1,
      messages: Array.from({ length: 30 }, (_, i) => ({ key: `k${i}`, value: `v${i}` })),
    });
    expect(res.every((r) => r.errorCode === 0)).toBe(true);
    const offsets = await admin.fetchTopicOffsets('a');
    expect(offsets).toHaveLength(3);
    expect(offsets.reduce((s, o) => s + Number(o.high), 0)).toBe(30);
    expect(offsets.every((o) => Number(o.high) > 0)).toBe(true);
  });

  it('(b) a consumer group reads every message back and commits', async () => {
    const m = await mock({ topics: [{ name: 'b', partitions: 3 }] });
    const kafka = client(m.brokers);
    const values = await produce(kafka, 'b', 30);
    const t = await trackedConsumer(kafka, 'b', 'group-b');
    await waitFor('all messages', () => t.messages.length >= values.length);
    expect(t.messages.map((x) => x.value).sort()).toEqual([...values].sort());
    await t.consumer.disconnect();

    const admin = kafka.admin();
    await admin.connect();
    cleanups.push(() => admin.disconnect());
    const [committed] = await admin.fetchOffsets({ groupId: 'group-b', topics: ['b'] });
    expect(committed?.partitions.reduce((s, p) => s + Number(p.offset), 0)).toBe(30);
  });

  it('(c) two consumers in one group split the partitions', async () => {
    const m = await mock({ topics: [{ name: 'c', partitions: 3 }] });
    const kafka = client(m.brokers);
    const c1 = await trackedConsumer(kafka, 'c', 'group-c');
    const c2 = await trackedConsumer(kafka, 'c', 'group-c');
    const split = () =>
      c1.assignment.length > 0 &&
      c2.assignment.length > 0 &&
      [...c1.assignment, ...c2.assignment].sort().join() === '0,1,2';
    await waitFor('a disjoint split of partitions 0..2', split);

    const values = await produce(kafka, 'c', 30);
    await waitFor('all messages', () => c1.messages.length + c2.messages.length >= values.length);
    expect([...c1.messages, ...c2.messages].map((x) => x.value).sort()).toEqual([...values].sort());
    expect(c1.messages.every((x) => c1.assignment.includes(x.partition))).toBe(true);
    expect(c2.messages.every((x) => c2.assignment.includes(x.partition))).toBe(true);
  });

  it('(d) a SIGKILLed member’s uncommitted messages are redelivered after its session timeout', async () => {
    const m = await mock({ topics: [{ name: 'd', partitions: 3 }] });
    const kafka = client(m.brokers);
    const values = await produce(kafka, 'd', 30);

    // Member A: a real child process that consumes but never commits.
    const fixture = fileURLToPath(new URL('./fixtures/consumer.mjs', import.meta.url));
    const child: ChildProcess = spawn(
      process.execPath,
      [fixture, m.brokers.join(','), 'd', 'group-d', String(SESSION_TIMEOUT)],
      { stdio: ['ignore', 'pipe', 'inherit'] },
    );
    cleanups.push(() => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    });
    let childAssignment: number[] = [];
    let childMessages = 0;
    createInterface({ input: child.stdout! }).on('line', (line) => {
      const ev = JSON.parse(line) as { event: string; partitions?: number[] };
      if (ev.event === 'assigned') childAssignment = [...(ev.partitions ?? [])].sort();
      if (ev.event === 'message') childMessages++;
    });
    await waitFor('child to consume everything', () => childMessages >= values.length);

    // Member B joins; the group rebalances and splits the partitions.
    const b = await trackedConsumer(kafka, 'd', 'group-d');
    await waitFor(
      'split between child and B',
      () => b.assignment.length > 0 && childAssignment.length > 0 && [...b.assignment, ...childAssignment].sort().join() === '0,1,2',
    );
    const lost = childAssignment;
    await waitFor('B to read its own partitions', () => b.messages.length > 0);

    child.kill('SIGKILL');
    const killedAt = Date.now();
    await waitFor('B to get every message', () => new Set(b.messages.map((x) => x.value)).size >= values.length, 40_000);
    expect(b.assignment).toEqual([0, 1, 2]);
    const redelivered = b.messages.filter((x) => lost.includes(x.partition));
    expect(redelivered.length).toBeGreaterThan(0);
    const firstRedelivery = Math.min(...redelivered.map((x) => x.at));
    // The dead member holds its partitions until the broker evicts it (session timeout).
    expect(firstRedelivery - killedAt).toBeGreaterThanOrEqual(SESSION_TIMEOUT - 1_000);
    expect(new Set(b.messages.map((x) => x.value))).toEqual(new Set(values));
  });

  it('(e) broker down: produce fails; after broker up it succeeds', async () => {
    const m = await mock({ topics: [{ name: 'e', partitions: 1 }] });
    const fast = { retries: 1, initialRetryTime: 100, maxRetryTime: 200 };
    const impatient = client(m.brokers, { retry: fast });
    const producer = impatient.producer({ idempotent: true, createPartitioner: Partitioners.DefaultPartitioner, retry: fast });
    await producer.connect();
    cleanups.push(() => producer.disconnect());
    await producer.send({ topic: 'e', acks: -1, messages: [{ value: 'before' }] });

    await m.brokerDown(1);
    await expect(producer.send({ topic: 'e', acks: -1, messages: [{ value: 'while-down' }] })).rejects.toThrow();

    // A producer with enough retries rides out the outage.
    const patient = client(m.brokers, { retry: { retries: 30, initialRetryTime: 100, maxRetryTime: 300 } }).producer({
      idempotent: true,
      createPartitioner: Partitioners.DefaultPartitioner,
    });
    cleanups.push(() => patient.disconnect());
    const sending = patient.connect().then(() => patient.send({ topic: 'e', acks: -1, messages: [{ value: 'after' }] }));
    await new Promise((r) => setTimeout(r, 1_000));
    await m.brokerUp(1);
    await sending;
    // The first producer reconnects too.
    await producer.send({ topic: 'e', acks: -1, messages: [{ value: 'after-2' }] });

    const admin = client(m.brokers).admin();
    await admin.connect();
    cleanups.push(() => admin.disconnect());
    const [p0] = await admin.fetchTopicOffsets('e');
    expect(Number(p0?.high)).toBe(3);
  });
  it('(f) harness: fixed ports, kill() and restart on the same ports', async () => {
    const port = await new Promise<number>((resolve) => {
      const srv = createServer().listen(0, '127.0.0.1', () => {
        const addr = srv.address();
        srv.close(() => resolve(typeof addr === 'object' && addr ? addr.port : 0));
      });
    });
    const m1 = await startKafkaMock({ brokers: 2, port });
    expect(m1.brokers).toEqual([`127.0.0.1:${port}`, `127.0.0.1:${port + 1}`]);
    const gone = new Promise<void>((resolve) => {
      const t = setInterval(() => {
        try {
          process.kill(m1.pid, 0);
        } catch {
          clearInterval(t);
          resolve();
        }
      }, 20);
    });
    m1.kill();
    await gone;
    const m2 = await mock({ brokers: 2, port, topics: [{ name: 'f', partitions: 2 }] });
    expect(m2.brokers).toEqual(m1.brokers);
    const admin = client(m2.brokers).admin();
    await admin.connect();
    cleanups.push(() => admin.disconnect());
    expect(await admin.listTopics()).toEqual(['f']); // a fresh, empty cluster
    await expect(m2.brokerDown(3)).rejects.toThrow(/ERR/);
  });
});
