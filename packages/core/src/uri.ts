import type { QueueDriver } from './driver.js';
import { LadingError } from './errors.js';

const QUEUE_HINT = 'queue URIs look like sqlite:./.lading/queue.db, sqlite:/var/lib/lading/queue.db or kafka://host1:9092,host2:9092?clientId=lading';

export type QueueAddress =
  | { kind: 'sqlite'; path: string; options: Record<string, string> }
  | { kind: 'kafka'; brokers: string[]; options: Record<string, string> };

const SQLITE_OPTIONS = new Set(['busyTimeoutMs']);
const KAFKA_OPTIONS = new Set(['clientId', 'ssl', 'sasl', 'username', 'password', 'stateTopic', 'partitions', 'replicationFactor', 'sessionTimeoutMs', 'retries', 'connectionTimeoutMs']);

/** Parse a queue URI without opening anything. */
export function parseQueueUri(uri: string): QueueAddress {
  if (typeof uri !== 'string' || uri.trim() === '') throw new LadingError('BAD_URI', 'the queue URI is empty', { hint: QUEUE_HINT });
  const colon = uri.indexOf(':');
  const scheme = colon > 0 ? uri.slice(0, colon) : '';
  const [rest = '', query = ''] = uri.slice(colon + 1).split('?', 2);
  const options: Record<string, string> = Object.fromEntries(new URLSearchParams(query));
  if (scheme === 'sqlite') {
    const path = rest.startsWith('//') ? rest.slice(2) : rest;
    if (!path) throw new LadingError('BAD_URI', `queue URI ${JSON.stringify(uri)} names no database file`, { hint: QUEUE_HINT });
    checkOptions(uri, options, SQLITE_OPTIONS);
    return { kind: 'sqlite', path, options };
  }
  if (scheme === 'kafka') {
    if (!rest.startsWith('//')) throw new LadingError('BAD_URI', `queue URI ${JSON.stringify(uri)}: a Kafka URI starts with kafka://`, { hint: QUEUE_HINT });
    const brokers = rest.slice(2).replace(/\/$/, '').split(',').map((b) => b.trim()).filter(Boolean);
    if (brokers.length === 0) throw new LadingError('BAD_URI', `queue URI ${JSON.stringify(uri)} names no Kafka broker`, { hint: QUEUE_HINT });
    for (const b of brokers) {
      if (!/^[A-Za-z0-9.\-_[\]:]+:\d{1,5}$/.test(b)) throw new LadingError('BAD_URI', `queue URI ${JSON.stringify(uri)}: broker ${JSON.stringify(b)} is not host:port`, { hint: QUEUE_HINT });
    }
    checkOptions(uri, options, KAFKA_OPTIONS);
    return { kind: 'kafka', brokers, options };
  }
  throw new LadingError('BAD_URI', `queue URI ${JSON.stringify(uri)} has ${scheme ? `an unknown scheme "${scheme}:"` : 'no scheme'}`, { hint: QUEUE_HINT });
}

function checkOptions(uri: string, options: Record<string, string>, known: Set<string>): void {
  for (const k of Object.keys(options)) {
    if (!known.has(k)) throw new LadingError('BAD_URI', `queue URI ${JSON.stringify(uri)}: unknown option "${k}"`, { hint: `known options: ${[...known].join(', ')}` });
  }
}

/** Open the driver a queue URI names. Drivers are loaded on demand so the embedded default pulls in no Kafka client. */
export async function openQueueDriver(uri: string): Promise<QueueDriver> {
  const address = parseQueueUri(uri);
  if (address.kind === 'sqlite') {
    const { SqliteQueueDriver } = await import('./drivers/sqlite.js');
    return SqliteQueueDriver.open(address.path, address.options);
  }
  // Loaded only here, so that the embedded default never loads kafkajs.
  const { KafkaQueueDriver } = await import('./drivers/kafka/index.js');
  return KafkaQueueDriver.open(uri, address.brokers, address.options);
}
