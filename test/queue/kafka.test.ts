// The queue contract against the Kafka driver, on a real Kafka-protocol broker: librdkafka's mock cluster
// (test/kafka-mock), a fresh one per test (it starts in milliseconds and keeps everything in memory).
import { startKafkaMock } from '../kafka-mock/index.js';
import { describeQueueContract } from './contract.js';
import { kafkaUri } from './kafka-helpers.js';

describeQueueContract('kafka', async () => {
  const mock = await startKafkaMock({ brokers: 1 });
  return { uri: kafkaUri(mock), cleanup: () => mock.stop() };
}, {
  // A dead member's partitions reach a survivor after its session timeout and one join window.
  redeliveryTimeoutMs: 30_000,
  // Every first join of a group costs the mock's 3 s initial rebalance delay.
  timeoutScale: 2,
  // Order holds per key (per partition), not across keys.
  globalOrder: false,
  // A new group member receives nothing before its first join (the mock's initial rebalance delay is 3 s).
  consumerStartMs: 4000,
});
