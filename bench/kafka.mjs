// `bench kafka`: lading's Kafka driver beside raw kafkajs 2.2.4 on the same broker in the same run.
// The broker is librdkafka's mock cluster (test/kafka-mock, a real Kafka wire-protocol server on
// 127.0.0.1, in memory): absolute numbers say little about a real cluster, the ratios are the point.
//
//   produce   lading `publishMany` in batches of B (envelope JSON, key = message id, idempotent producer,
//             acks -1) vs raw kafkajs `producer.sendBatch` of the same batches with the same settings, a
//             value of the same size (an envelope-like JSON with a UUID per message) and the same headers.
//   consume   per round, N messages are published once with lading (not timed) and then read by fresh
//             consumer groups, in alternating order: the very same records for every side. Timed from the
//             first message handled to the last one handled (group join excluded), plus the CPU time of this
//             process per message (user + system, all threads: GC included) over the same window.
//             lading: a Consumer (concurrency 64, no-op handler; per-key order, leases in the commit
//             metadata, ack = commit of the contiguous acked prefix).
//             raw eachBatch (the target baseline): JSON.parse of each value, resolveOffset, and an awaited
//             commitOffsets after every batch (the usual at-least-once loop, the fastest raw kafkajs way).
//             raw eachMessage (reference): an async handler per message doing JSON.parse, kafkajs' default
//             autoCommit (resolve per message, commit after each batch).
//   latency   one message every 5 ms, publish → handler start, p50 and p99 (lading: envelope publishedAt;
//             raw eachMessage + autoCommit: a timestamp in the value), all consumers already joined, in
//             alternating blocks of both sides.
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

  // What lading writes per message: envelope JSON, key = id, headers lading-id and lading-dedup (a generated id).
  const rawMessage = (topic, i) => {
    const id = randomUUID();
    const value = JSON.stringify({ v: 1, id, topic, headers: {}, attempt: 0, publishedAt: Date.now(), body: body(i) });
    return { key: id, value, headers: { 'lading-id': id, 'lading-dedup': '0' } };
  };

  // ---- produce -------------------------------------------------------------------------------------
  async function produceRaw(topic) {
    const t0 = performance.now();
    for (let i = 0; i < n; i += batch) {
      const messages = [];
      for (let j = i; j < Math.min(n, i + batch); j++) messages.push(rawMessage(topic, j));
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

  // ---- consume (all sides read the same topic, each with a fresh group) -----------------------------
  /** Rate and CPU per message between the first and the last message handled. */
  function window() {
    let seen = 0;
    let t0 = 0;
    let c0;
    let result;
    return {
      hit() {
        if (seen === 0) { t0 = performance.now(); c0 = process.cpuUsage(); }
        if (++seen === n) {
          const cpu = process.cpuUsage(c0);
          result = { rate: n / ((performance.now() - t0) / 1000), cpuUs: (cpu.user + cpu.system) / n };
        }
      },
      async done() {
        while (!result) await sleep(5);
        return result;
      },
    };
  }
  async function consumeRawBatch(topic, group) {
    const consumer = kafka.consumer({ groupId: group, sessionTimeout: SESSION, heartbeatInterval: 500, maxWaitTimeInMs: 100 });
    await consumer.connect();
    await consumer.subscribe({ topics: [topic], fromBeginning: true });
    const w = window();
    await consumer.run({
      autoCommit: false,
      eachBatch: async ({ batch: b, resolveOffset }) => {
        for (const m of b.messages) {
          w.hit();
          JSON.parse(m.value.toString());
          resolveOffset(m.offset);
        }
        await consumer.commitOffsets([{ topic: b.topic, partition: b.partition, offset: String(Number(b.lastOffset()) + 1) }]);
      },
    });
    const r = await w.done();
    await consumer.disconnect();
    return r;
  }
  async function consumeRawMessage(topic, group) {
    const consumer = kafka.consumer({ groupId: group, sessionTimeout: SESSION, heartbeatInterval: 500, maxWaitTimeInMs: 100 });
    await consumer.connect();
    await consumer.subscribe({ topics: [topic], fromBeginning: true });
    const w = window();
    await consumer.run({
      eachMessage: async ({ message }) => {
        w.hit();
        JSON.parse(message.value.toString());
      },
    });
    const r = await w.done();
    await consumer.disconnect();
    return r;
  }
  async function consumeLading(queue, topic, group) {
    const w = window();
    const c = queue.consume(topic, { group, concurrency: 64, maxPollMs: 20 }, () => w.hit());
    const r = await w.done();
    await c.close();
    return r;
  }

  // ---- latency -------------------------------------------------------------------------------------
  async function latencyRawSetup(topic) {
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
    return {
      lat,
      async block(count) {
        const want = lat.length + count;
        for (let i = 0; i < count; i++) {
          await producer.send({ topic, acks: -1, messages: [{ key: randomUUID(), value: JSON.stringify({ t: Date.now(), i }) }] });
          await sleep(5);
        }
        while (lat.length < want) await sleep(5);
      },
      close: () => consumer.disconnect(),
    };
  }
  async function latencyLadingSetup(queue, topic) {
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
    return {
      lat,
      async block(count) {
        const want = lat.length + count;
        for (let i = 0; i < count; i++) {
          await queue.publish(topic, { i });
          await sleep(5);
        }
        while (lat.length < want) await sleep(5);
      },
      close: () => c.close(),
    };
  }

  const SIDES = ['lading', 'rawBatch', 'rawMessage'];
  const samples = { produce: { lading: [], raw: [] } };
  for (const s of SIDES) samples[s] = { rate: [], cpu: [] };
  let latL = [];
  let latR = [];
  const queue = await core.openQueue({ uri });
  try {
    // Warm-up (not measured): both producers, and every consumer kind once.
    await produceRaw(freshTopic());
    const warm = freshTopic();
    await produceLading(queue, warm);
    await consumeLading(queue, warm, 'warm');
    await consumeRawBatch(warm, `warm-b-${warm}`);
    await consumeRawMessage(warm, `warm-m-${warm}`);
    for (let r = 0; r < rounds; r++) {
      const order = r % 2 ? ['raw', 'lading'] : ['lading', 'raw'];
      for (const s of order) {
        const rate = s === 'raw' ? await produceRaw(freshTopic()) : await produceLading(queue, freshTopic());
        samples.produce[s].push(rate);
      }
      const topic = freshTopic();
      await produceLading(queue, topic);
      const consumeOrder = r % 3 === 0 ? SIDES : r % 3 === 1 ? ['rawBatch', 'rawMessage', 'lading'] : ['rawMessage', 'lading', 'rawBatch'];
      for (const s of consumeOrder) {
        const x = s === 'lading' ? await consumeLading(queue, topic, `bench-${r}`)
          : s === 'rawBatch' ? await consumeRawBatch(topic, `raw-b-${topic}`) : await consumeRawMessage(topic, `raw-m-${topic}`);
        samples[s].rate.push(x.rate);
        samples[s].cpu.push(x.cpuUs);
      }
      const last = (s) => `${Math.round(samples[s].rate.at(-1))}/s ${samples[s].cpu.at(-1).toFixed(1)}µs`;
      ctx.log(`round ${r + 1}/${rounds}: produce lading ${Math.round(samples.produce.lading.at(-1))} raw ${Math.round(samples.produce.raw.at(-1))} msgs/s; consume lading ${last('lading')}, raw eachBatch ${last('rawBatch')}, raw eachMessage ${last('rawMessage')} (rate, CPU per message)`);
    }
    const count = ctx.quick ? 200 : 1000;
    const blocks = ctx.quick ? 2 : 4;
    const rawLat = await latencyRawSetup(freshTopic());
    const ladingLat = await latencyLadingSetup(queue, freshTopic());
    for (let b = 0; b < blocks; b++) {
      const per = Math.ceil(count / blocks);
      if (b % 2) { await rawLat.block(per); await ladingLat.block(per); } else { await ladingLat.block(per); await rawLat.block(per); }
    }
    latR = rawLat.lat;
    latL = ladingLat.lat;
    await rawLat.close();
    await ladingLat.close();
  } finally {
    await queue.close().catch(() => undefined);
    await producer.disconnect().catch(() => undefined);
    await mock.stop();
  }
  const target = { target: '≥ 0.9×', targetRatio: 0.9 };
  const rateRow = (id, name, base, baseName, extra = {}) => ({
    id, name, value: median(samples.lading.rate), unit: 'msgs/s', higherIsBetter: true, samples: samples.lading.rate,
    baseline: { name: baseName, value: median(samples[base].rate), samples: samples[base].rate }, ...extra,
  });
  const cpuRow = (id, name, base, baseName) => ({
    id, name, value: median(samples.lading.cpu), unit: 'µs CPU/msg', higherIsBetter: false, samples: samples.lading.cpu,
    baseline: { name: baseName, value: median(samples[base].cpu), samples: samples[base].cpu },
  });
  return {
    rows: [
      { id: 'produce', name: `kafka produce (batches of ${batch}, acks -1, idempotent)`, value: median(samples.produce.lading), unit: 'msgs/s', higherIsBetter: true, samples: samples.produce.lading,
        baseline: { name: 'raw kafkajs sendBatch', value: median(samples.produce.raw), samples: samples.produce.raw }, ...target },
      rateRow('consume', 'kafka consume (no-op handler, at-least-once)', 'rawBatch', 'raw kafkajs eachBatch + commit per batch', target),
      rateRow('consume.eachMessage', 'kafka consume vs raw eachMessage', 'rawMessage', 'raw kafkajs eachMessage + autoCommit'),
      cpuRow('consume.cpu', 'kafka consume CPU per message', 'rawBatch', 'raw kafkajs eachBatch + commit per batch'),
      cpuRow('consume.cpu.eachMessage', 'kafka consume CPU per message vs raw eachMessage', 'rawMessage', 'raw kafkajs eachMessage + autoCommit'),
      { id: 'latency.p50', name: 'kafka end-to-end latency p50', value: pct(latL, 50), unit: 'ms', higherIsBetter: false, baseline: { name: 'raw kafkajs eachMessage', value: Math.max(pct(latR, 50), 0.5) } },
      { id: 'latency.p99', name: 'kafka end-to-end latency p99', value: pct(latL, 99), unit: 'ms', higherIsBetter: false, baseline: { name: 'raw kafkajs eachMessage', value: Math.max(pct(latR, 99), 0.5) } },
    ],
    meta: { messages: n, rounds, broker: 'librdkafka 2.0.2 mock (1 broker, 4 partitions)' },
    notes: [
      `${n} messages of ~${Buffer.byteLength(JSON.stringify(body(12345)))} B JSON body per measurement; consume: one topic per round published once with lading and read by every side (fresh groups, rotating order); medians of ${rounds} rounds after a warm-up.`,
      'Broker: librdkafka\'s in-memory mock cluster on 127.0.0.1 (no disk, no replication, fetches wait the full maxWaitTime of 100 ms when idle on both sides): it measures client-side cost; a real cluster adds network and fsync time to both sides alike.',
      'lading consume = a Consumer with concurrency 64: records are handed off the kafkajs fetch loop, per-key ordering, leases recorded in the commit metadata, commit of the contiguous acked prefix. CPU per message is this process\'s user+system time (GC threads included) over the timed window: steadier than rates on a shared machine.',
      `latency: ${latL.length} lading and ${latR.length} raw samples in alternating blocks; lading p50/p99 ${pct(latL, 50)}/${pct(latL, 99)} ms, raw ${pct(latR, 50)}/${pct(latR, 99)} ms.`,
    ],
  };
}
