// Everything that touches kafkajs' client object lives here and in the few modules that take a `Kafka`:
// replacing kafkajs with another client means rewriting client.ts, reader.ts, producer.ts and member.ts.
import { Kafka, logLevel, type Cluster, type KafkaConfig } from 'kafkajs';
import { LadingError } from '../../errors.js';
import type { KafkaDriverOptions } from './options.js';

export function createKafka(o: KafkaDriverOptions): Kafka {
  const config: KafkaConfig = {
    clientId: o.clientId,
    brokers: o.brokers,
    logLevel: logLevel.NOTHING,
    connectionTimeout: o.connectionTimeoutMs,
    requestTimeout: Math.max(30_000, o.sessionTimeoutMs),
    // Client-level retries drive connection and metadata retries too: keep them few so that an unreachable
    // broker gives a clear error in seconds rather than a long silence.
    retry: { retries: o.retries, initialRetryTime: 100, maxRetryTime: 1000 },
  };
  if (o.ssl) config.ssl = true;
  if (o.sasl) config.sasl = o.sasl as KafkaConfig['sasl'];
  return new Kafka(config);
}

/**
 * A cluster handle outside any consumer group, for reading a topic from given offsets to its high
 * watermark (the state topics, stats). kafkajs has no `assign()`: its consumers only read inside a group,
 * and joining one costs a rebalance. This uses kafkajs' own cluster object, which every kafkajs client builds
 * with the same connection settings; it is not part of kafkajs' typed API, hence the checks.
 */
export function createCluster(kafka: Kafka): Cluster {
  const key = Object.getOwnPropertySymbols(kafka).find((s) => s.description === 'private:Kafka:createCluster');
  const factory = key ? (kafka as unknown as Record<symbol, unknown>)[key] : undefined;
  if (typeof factory !== 'function') {
    throw new LadingError('UNSUPPORTED', 'this kafkajs version does not expose the cluster factory the lading Kafka driver reads state topics with', {
      hint: 'use kafkajs 2.2.x (the version lading is tested with)',
    });
  }
  return (factory as (o: Record<string, unknown>) => Cluster)({ metadataMaxAge: 60_000, allowAutoTopicCreation: true, maxInFlightRequests: null, isolationLevel: 1 });
}

/** KafkaJS error → a LadingError a user can act on. */
export function backendError(what: string, brokers: string[], e: unknown): LadingError {
  if (e instanceof LadingError) return e;
  const err = e as { name?: string; message?: string; type?: string };
  const name = err.name ?? 'Error';
  const message = err.message ?? String(e);
  let hint = `check that the Kafka brokers ${brokers.join(',')} are up and reachable from this host (firewall, advertised.listeners), then retry`;
  if (/SASL|Authentication|authorization|AUTHORIZATION/i.test(`${name} ${message} ${err.type ?? ''}`)) hint = 'check the credentials (sasl, username, password in the kafka:// URI) and the ACLs of this principal';
  else if (/TOPIC_AUTHORIZATION|UNKNOWN_TOPIC/i.test(err.type ?? '')) hint = 'create the topic first (`lading topics create`), or allow auto-creation on the brokers';
  return new LadingError('BACKEND', `Kafka: ${what} failed: ${name}: ${message}`, { hint, cause: e });
}

/** True for "the broker does not implement this API" (the librdkafka mock for CreateTopics, DescribeGroups, ...). */
export function isUnsupportedApi(e: unknown): boolean {
  const err = e as { name?: string; type?: string; message?: string };
  return err.name === 'KafkaJSServerDoesNotSupportApiKey' || err.type === 'UNSUPPORTED_VERSION' || /does not support the requested API/i.test(err.message ?? '');
}
