import { LadingError } from '../../errors.js';

/** Settings of the Kafka driver, from the `kafka://` URI's query (see uri.ts for the accepted names). */
export interface KafkaDriverOptions {
  brokers: string[];
  clientId: string;
  ssl: boolean;
  sasl: { mechanism: 'plain' | 'scram-sha-256' | 'scram-sha-512'; username: string; password: string } | undefined;
  /** Prefix of the driver's own topics: `<prefix>.topics` (policies, groups) and `<prefix>.hospital`. */
  statePrefix: string;
  /** Partitions of topics the driver creates when the policy does not say (undefined: broker default). */
  partitions: number | undefined;
  replicationFactor: number | undefined;
  /** Consumer group session timeout. The mock broker evicts a member that misses it during a rebalance. */
  sessionTimeoutMs: number;
  heartbeatIntervalMs: number;
  /** Client-level retries (connection, metadata, produce). Few retries = fast, clear failures. */
  retries: number;
  connectionTimeoutMs: number;
}

function int(uri: string, name: string, value: string | undefined, min: number, max: number): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (!Number.isInteger(n) || n < min || n > max) {
    throw new LadingError('BAD_URI', `queue URI ${JSON.stringify(uri)}: ${name}=${JSON.stringify(value)} is not an integer in ${min}..${max}`);
  }
  return n;
}

export function kafkaOptions(uri: string, brokers: string[], o: Record<string, string>): KafkaDriverOptions {
  const sessionTimeoutMs = int(uri, 'sessionTimeoutMs', o.sessionTimeoutMs, 3000, 3_600_000) ?? 10_000;
  let sasl: KafkaDriverOptions['sasl'];
  if (o.sasl !== undefined) {
    const mechanism = o.sasl.toLowerCase();
    if (mechanism !== 'plain' && mechanism !== 'scram-sha-256' && mechanism !== 'scram-sha-512') {
      throw new LadingError('BAD_URI', `queue URI ${JSON.stringify(uri)}: sasl=${o.sasl} is not one of plain, scram-sha-256, scram-sha-512`);
    }
    if (!o.username || o.password === undefined) throw new LadingError('BAD_URI', `queue URI ${JSON.stringify(uri)}: sasl needs username and password`);
    sasl = { mechanism, username: o.username, password: o.password };
  }
  return {
    brokers,
    clientId: o.clientId ?? 'lading',
    ssl: o.ssl === '1' || o.ssl === 'true',
    sasl,
    statePrefix: o.stateTopic ?? 'lading',
    partitions: int(uri, 'partitions', o.partitions, 1, 100_000),
    replicationFactor: int(uri, 'replicationFactor', o.replicationFactor, 1, 100),
    sessionTimeoutMs,
    heartbeatIntervalMs: Math.max(100, Math.min(1000, Math.floor(sessionTimeoutMs / 8))),
    retries: int(uri, 'retries', o.retries, 0, 100) ?? 5,
    connectionTimeoutMs: int(uri, 'connectionTimeoutMs', o.connectionTimeoutMs, 100, 600_000) ?? 3000,
  };
}

/** Names of the driver's own topics. */
export function retryTopicOf(topic: string): string {
  return `${topic}.lading-retry`;
}

/** Kafka consumer group of a lading (topic, group): one Kafka group per pair, so pairs never rebalance each other. */
export function kafkaGroupId(topic: string, group: string): string {
  return `lading/${topic}/${group}`;
}
