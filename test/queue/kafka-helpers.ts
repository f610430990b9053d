// Shared by the Kafka driver tests: the URI of a mock cluster with test-friendly settings.
import type { KafkaMock } from '../kafka-mock/index.js';

/** Short session: the mock waits sessionTimeout - 1 s on every rebalance (see test/kafka-mock/README.md). */
export const KAFKA_TEST_OPTIONS = 'sessionTimeoutMs=4000&retries=2';

export function kafkaUri(mock: KafkaMock, extra = ''): string {
  return `kafka://${mock.brokers.join(',')}?${KAFKA_TEST_OPTIONS}${extra ? `&${extra}` : ''}`;
}
