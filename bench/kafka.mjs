// `bench kafka`: lading's Kafka driver beside raw kafkajs 2.2.4 on the same broker in the same run.
// The broker is librdkafka's mock cluster (test/kafka-mock, a real Kafka wire-protocol server on
// 127.0.0.1, in memory): absolute numbers say little about a real cluster, the ratios are the point.
//
//   produce   lading `publishMany` in batches of B (envelope JSON, key = message id, idempotent producer,
//             acks -1) vs raw kafkajs `producer.sendBatch` of the same batches with the same settings and
//             a value of the same size (an envelope-like JSON built with a UUID per message).
//   consume   N messages pre-published (not timed); time from the first message handled to the last one
//             handled. lading: a Consumer (concurrency 64, no-op handler, ack = commit of the contiguous
//             prefix). raw: kafkajs eachBatch with a no-op per message, resolveOffset + one commitOffsets per
//             batch (the usual at-least-once loop). Group join time is excluded from both.
//   latency   one message every 5 ms, publish → handler start, p50 and p99 (lading envelope publishedAt;
//             raw: a timestamp in the value), both consumers already joined.
import { spawn, execFileSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { createInterface } from 'node:readline';

const require = createRequire(import.meta.url);
const { Kafka, logLevel, Partitioners } = require('kafkajs');

const SESSION = 4000;
const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};
const pct = (xs, p) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))];
};
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function body(i) {
  return {
    i, kind: 'tile.segment', path: `/scratch/proj-astro/run-0042/tiles/${String(i).padStart(8, '0')}.tif`,
    shape: [512, 512, 3], dtype: 'uint16', params: { threshold: 0.35, sigma: 1.5, model: 'segm-v3', seed: i % 97 }, tags: ['bench', 'lading'],
  };
}

async function startMock(root) {
  const bin = execFileSync(process.execPath, [join(root, 'test/kafka-mock/build.mjs')], { encoding: 'utf8' }).trim();
  const child = spawn(bin, ['--brokers', '1'], { stdio: ['pipe', 'pipe', 'ignore'] });
  const line = await new Promise((resolve, reject) => {
    createInterface({ input: child.stdout }).once('line', resolve);
    child.once('exit', () => reject(new Error('mock broker exited')));
  });
  const brokers = line.replace(/^READY /, '').split(',');
  return { brokers, stop: () => new Promise((r) => { child.once('exit', r); child.kill('SIGTERM'); }) };
}

export async function run(ctx) {
  const n = ctx.size('LADING_BENCH_N', 20_000, 3000);
  const rounds = ctx.size('LADING_BENCH_ROUNDS', 3, 1);
  const batch = 500;
  const core = await ctx.importPackage('core');
  const mock = await startMock(ctx.root);
  const uri = `kafka://${mock.brokers.join(',')}?sessionTimeoutMs=${SESSION}&retries=2`;
  const kafka = new Kafka({ clientId: 'bench-raw', brokers: mock.brokers, logLevel: logLevel.NOTHING, retry: { retries: 2 } });
  const producer = kafka.producer({ idempotent: true, maxInFlightRequests: 1, createPartitioner: Partitioners.DefaultPartitioner });
  await producer.connect();
  let topicNo = 0;
  const freshTopic = () => `bench-${++topicNo}`;

  const rawValue = (topic, i) => JSON.stringify({ v: 1, id: randomUUID(), topic, headers: {}, attempt: 0, publishedAt: Date.now(), body: body(i) });

  // ---- produce -------------------------------------------------------------------------------------
  async function produceRaw(topic) {
    const t0 = performance.now();
    for (let i = 0; i < n; i += batch) {
      const messages = [];
      for (let j = i; j < Math.min(n, i + batch); j++) {
        const value = rawValue(topic, j);
        messages.push({ key: JSON.parse(value).id, value });
      }
      await producer.sendBatch({ acks: -1, topicMessages: [{ topic, messages }] });
    }
    return n / ((performance.now() - t0) / 1000);
  }
  async function produceLading(queue, topic) {
    await queue.createTopic(topic);
    const t0 = performance.now();
    for (let i = 0; i < n; i += batch) {
      const inputs = [];
      for (let j = i; j < Math.min(n, i + batch); j++) inputs.push({ body: body(j) });
      await queue.publishMany(topic, inputs);
    }
    return n / ((performance.now() - t0) / 1000);
  }

  // ---- consume -------------------------------------------------------------------------------------
  async function consumeRaw(topic) {
    await produceRaw(topic);
    const consumer = kafka.consumer({ groupId: `raw-${topic}`, sessionTimeout: SESSION, heartbeatInterval: 500, maxWaitTimeInMs: 100 });
    await consumer.connect();
    await consumer.subscribe({ topics: [topic], fromBeginning: true });
    let seen = 0;
    let first = 0;
    let last = 0;
    await consumer.run({
      autoCommit: false,
      eachBatch: async ({ batch: b, resolveOffset }) => {
        if (!first) first = performance.now();
        for (const m of b.messages) {
          JSON.parse(m.value.toString());
          resolveOffset(m.offset);
          seen++;
        }
        await consumer.commitOffsets([{ topic: b.topic, partition: b.partition, offset: String(Number(b.lastOffset()) + 1) }]);
        if (seen >= n) last = performance.now();
      },
    });
    while (!last) await sleep(5);
    await consumer.disconnect();
    return n / ((last - first) / 1000);
  }
  async function consumeLading(queue, topic) {
    await produceLading(queue, topic);
    let seen = 0;
    let first = 0;
    let last = 0;
    const c = queue.consume(topic, { group: 'bench', concurrency: 64, maxPollMs: 20 }, () => {
      if (!first) first = performance.now();
      if (++seen >= n) last = performance.now();
    });
    while (!last) await sleep(5);
    await c.close();
    return n / ((last - first) / 1000);
  }

  // ---- latency -------------------------------------------------------------------------------------
  async function latencyRaw(topic, count) {
    await producer.send({ topic, acks: -1, messages: [{ key: 'warm', value: JSON.stringify({ t: Date.now(), warm: true }) }] });
    const consumer = kafka.consumer({ groupId: `rawlat-${topic}`, sessionTimeout: SESSION, heartbeatInterval: 500, maxWaitTimeInMs: 100 });
    await consumer.connect();
    await consumer.subscribe({ topics: [topic], fromBeginning: true });
    const lat = [];
    let ready = false;
    await consumer.run({
      eachMessage: async ({ message }) => {
        const v = JSON.parse(message.value.toString());
        if (v.warm) ready = true;
        else lat.push(Date.now() - v.t);
      },
    });
    while (!ready) await sleep(5);
    for (let i = 0; i < count; i++) {
      await producer.send({ topic, acks: -1, messages: [{ key: randomUUID(), value: JSON.stringify({ t: Date.now(), i }) }] });
      await sleep(5);
    }
    while (lat.length < count) await sleep(5);
    await consumer.disconnect();
    return lat;
  }
  async function latencyLading(queue, topic, count) {
    await queue.createTopic(topic);
    const lat = [];
    let ready = false;
    const c = queue.consume(topic, { group: 'lat', concurrency: 16, maxPollMs: 10 }, (m) => {
      if (m.body?.warm) ready = true;
      else lat.push(Date.now() - m.envelope.publishedAt);
    });
    await queue.driver.ensureGroup(topic, 'lat');
    await queue.publish(topic, { warm: true });
    while (!ready) await sleep(5);
    for (let i = 0; i < count; i++) {
      await queue.publish(topic, { i });
      await sleep(5);
    }
    while (lat.length < count) await sleep(5);
    await c.close();
    return lat;
  }

  const samples = { produce: { lading: [], raw: [] }, consume: { lading: [], raw: [] } };
  let latL = [];
  let latR = [];
  const queue = await core.openQueue({ uri });
  try {
    // Warm-up (not measured).
    await produceRaw(freshTopic());
    await produceLading(queue, freshTopic());
    for (let r = 0; r < rounds; r++) {
      const order = r % 2 ? ['raw', 'lading'] : ['lading', 'raw'];
      for (const s of order) {
        const rate = s === 'raw' ? await produceRaw(freshTopic()) : await produceLading(queue, freshTopic());
        samples.produce[s].push(rate);
      }
      for (const s of order) {
        const rate = s === 'raw' ? await consumeRaw(freshTopic()) : await consumeLading(queue, freshTopic());
        samples.consume[s].push(rate);
      }
      ctx.log(`round ${r + 1}/${rounds}: produce lading ${Math.round(samples.produce.lading.at(-1))} raw ${Math.round(samples.produce.raw.at(-1))}; consume lading ${Math.round(samples.consume.lading.at(-1))} raw ${Math.round(samples.consume.raw.at(-1))} msgs/s`);
    }
    const count = ctx.quick ? 200 : 1000;
    latR = await latencyRaw(freshTopic(), count);
    latL = await latencyLading(queue, freshTopic(), count);
  } finally {
    await queue.close().catch(() => undefined);
    await producer.disconnect().catch(() => undefined);
    await mock.stop();
  }
  const row = (key, name, base) => ({
    id: key, name, value: median(samples[key].lading), unit: 'msgs/s', higherIsBetter: true, samples: samples[key].lading,
    baseline: { name: base, value: median(samples[key].raw), samples: samples[key].raw }, target: '≥ 0.9×', targetRatio: 0.9,
  });
  return {
    rows: [
      row('produce', `kafka produce (batches of ${batch}, acks -1, idempotent)`, 'raw kafkajs sendBatch'),
      row('consume', 'kafka consume (no-op handler, at-least-once)', 'raw kafkajs eachBatch + commit per batch'),
      { id: 'latency.p50', name: 'kafka end-to-end latency p50', value: pct(latL, 50), unit: 'ms', higherIsBetter: false, baseline: { name: 'raw kafkajs', value: Math.max(pct(latR, 50), 0.5) } },
      { id: 'latency.p99', name: 'kafka end-to-end latency p99', value: pct(latL, 99), unit: 'ms', higherIsBetter: false, baseline: { name: 'raw kafkajs', value: Math.max(pct(latR, 99), 0.5) } },
    ],
    meta: { messages: n, rounds, broker: 'librdkafka 2.0.2 mock (1 broker, 4 partitions)' },
    notes: [
      `${n} messages of ~${Buffer.byteLength(JSON.stringify(body(12345)))} B JSON body per measurement, a fresh topic each time, median of ${rounds} interleaved rounds after a warm-up.`,
      'Broker: librdkafka\'s in-memory mock cluster on 127.0.0.1 (no disk, no replication): it measures client-side cost; a real cluster adds network and fsync time to both sides alike.',
      'lading consume = a Consumer with concurrency 64: records are handed off the kafkajs fetch loop, per-key ordering, leases recorded in the commit metadata, commit of the contiguous acked prefix.',
    ],
  };
}
