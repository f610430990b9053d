import { Option, type Command } from 'commander';
import type { GroupStats, RouteRule, TopicInfo, TopicPolicy, TopicPolicyInput } from '@lading/core';
import type { Cli } from '../context.js';
import { formatMs as fmt, table } from '../output.js';
import { action, collect, examples, positiveInt, withJson } from './shared.js';

interface CreateOptions {
  maxAttempts?: number;
  backoffInitial?: string;
  backoffMax?: string;
  backoffMultiplier?: string;
  backoffJitter?: string;
  ttl?: string;
  onExpired?: 'hospital' | 'drop';
  dedupWindow?: string;
  lease?: string;
  retention?: string;
  partitions?: number;
  route?: string[];
  routes?: boolean;
}

export function registerTopics(program: Command): void {
  const topics = program.command('topics').description('create topics, set their policies, and list them with their consumer groups');
  examples(topics, ['lading topics create images --max-attempts 3 --ttl 1h', 'lading topics list']);

  const create = topics
    .command('create')
    .description('create a topic, or change the policy of an existing one (only the options given change)')
    .argument('<name>', 'topic name: letters, digits, ".", "_" or "-"')
    .option('--max-attempts <n>', 'deliveries before a failing message goes to the hospital (default 5)', positiveInt)
    .option('--backoff-initial <duration>', 'delay before the first retry (default 1s)')
    .option('--backoff-max <duration>', 'longest delay between retries (default 5m)')
    .option('--backoff-multiplier <x>', 'each retry waits this many times longer (default 2)')
    .option('--backoff-jitter <fraction>', 'fraction of the delay that is random, 0 to 1 (default 0.2)')
    .option('--ttl <duration>', 'default time to live of a message (default: none)')
    .addOption(new Option('--on-expired <action>', 'what happens to a message past its TTL (default hospital)').choices(['hospital', 'drop']))
    .option('--dedup-window <duration>', 'window of idempotent publish and consumer dedup (default 24h)')
    .option('--lease <duration>', 'lease of a delivery without a heartbeat (default 30s)')
    .option('--retention <duration>', 'how long messages wait for consumer groups that do not exist yet (default 7d)')
    .option('--partitions <n>', 'Kafka: partitions of the topic (default 1)', positiveInt)
    .option('--route <rule>', "routing rule 'FIELD=VALUE[,FIELD=VALUE]->TOPIC' on type, key, id, headers.X or body.A.B (repeatable; replaces the topic's routes)", collect)
    .option('--no-routes', 'remove all routes of the topic');
  withJson(create);
  examples(create, [
    'lading topics create images --max-attempts 3 --backoff-initial 1s --backoff-max 5m',
    'lading topics create events --ttl 1h --on-expired drop --dedup-window 24h',
    "lading topics create uploads --route 'type=image->images' --route 'headers.tenant=acme,body.kind=video->videos'",
  ]);
  action<CreateOptions, [string]>(create, createTopic);

  const list = topics.command('list').description('list topics with their policies and, per consumer group, the counts of ready, delayed, leased and hospital messages');
  withJson(list);
  examples(list, ['lading topics list', 'lading topics list --json']);
  action<Record<string, never>>(list, listTopics);
}

async function createTopic(cli: Cli, o: CreateOptions, name: string): Promise<void> {
  const { LadingError, parseDuration } = await import('@lading/core');
  const number = (value: string | undefined, flag: string): number | undefined => {
    if (value === undefined) return undefined;
    const n = Number(value);
    if (value.trim() === '' || !Number.isFinite(n)) throw new LadingError('BAD_ARGUMENT', `${flag} ${JSON.stringify(value)} is not a number`, { hint: `e.g. ${flag} 2` });
    return n;
  };
  const ms = (value: string | undefined, flag: string) => (value === undefined ? undefined : Math.round(parseDuration(value, flag)));

  const queue = await cli.queue();
  const existing = await queue.driver.getTopic(name);
  const policy: TopicPolicyInput = {};
  if (o.maxAttempts !== undefined) policy.maxAttempts = o.maxAttempts;
  const backoff = { initialMs: ms(o.backoffInitial, '--backoff-initial'), maxMs: ms(o.backoffMax, '--backoff-max'), multiplier: number(o.backoffMultiplier, '--backoff-multiplier'), jitter: number(o.backoffJitter, '--backoff-jitter') };
  const givenBackoff = Object.fromEntries(Object.entries(backoff).filter(([, v]) => v !== undefined));
  if (Object.keys(givenBackoff).length) policy.backoff = { ...(existing?.policy.backoff ?? {}), ...givenBackoff };
  const ttlMs = ms(o.ttl, '--ttl');
  if (ttlMs !== undefined) policy.ttlMs = ttlMs;
  if (o.onExpired !== undefined) policy.onExpired = o.onExpired;
  const dedup = ms(o.dedupWindow, '--dedup-window');
  if (dedup !== undefined) policy.dedupWindowMs = dedup;
  const lease = ms(o.lease, '--lease');
  if (lease !== undefined) policy.leaseMs = lease;
  const retention = ms(o.retention, '--retention');
  if (retention !== undefined) policy.retentionMs = retention;
  if (o.partitions !== undefined) policy.partitions = o.partitions;
  if (o.route?.length) {
    if (o.routes === false) throw new LadingError('BAD_ARGUMENT', '--route and --no-routes contradict each other', { hint: 'give --route rules to replace the routes, or --no-routes to remove them' });
    policy.routes = o.route.map((r) => parseRoute(r, LadingError));
  } else if (o.routes === false) {
    policy.routes = [];
  }

  const info = await queue.createTopic(name, policy, { update: true });
  if (cli.json) {
    cli.out.result({ created: !existing, ...info });
    return;
  }
  cli.out.line(`${existing ? 'updated' : 'created'} topic ${name}: ${describePolicy(info.policy)}`);
  for (const r of info.policy.routes) cli.out.line(`  route ${describeRoute(r)}`);
}

async function listTopics(cli: Cli): Promise<void> {
  const queue = await cli.queue();
  const [topics, stats] = await Promise.all([queue.topics(), queue.stats()]);
  const byTopic = new Map<string, GroupStats[]>();
  for (const s of stats) byTopic.set(s.topic, [...(byTopic.get(s.topic) ?? []), s]);
  if (cli.json) {
    cli.out.result(
      topics.map((t: TopicInfo) => ({
        name: t.name,
        createdAt: new Date(t.createdAt).toISOString(),
        policy: t.policy,
        groups: (byTopic.get(t.name) ?? []).map((g) => ({ group: g.group, ready: g.ready, delayed: g.delayed, leased: g.leased, hospital: g.hospital })),
      })),
    );
    return;
  }
  if (topics.length === 0) {
    cli.out.line(`no topics yet in ${queue.uri}`);
    cli.out.note('create one with `lading topics create NAME`, or just publish: topics are created on first use');
    return;
  }
  const rows = topics.map((t) => {
    const groups = byTopic.get(t.name) ?? [];
    return [
      t.name,
      String(t.policy.maxAttempts),
      `${fmt(t.policy.backoff.initialMs)}..${fmt(t.policy.backoff.maxMs)} x${t.policy.backoff.multiplier}`,
      t.policy.ttlMs === undefined ? '-' : `${fmt(t.policy.ttlMs)} (${t.policy.onExpired})`,
      t.policy.routes.length ? t.policy.routes.map(describeRoute).join('; ') : '-',
      groups.length ? groups.map((g) => `${g.group} ${g.ready}/${g.delayed}/${g.leased}/${g.hospital}`).join(', ') : '-',
    ];
  });
  cli.out.line(table(['TOPIC', 'ATTEMPTS', 'BACKOFF', 'TTL', 'ROUTES', 'GROUPS (ready/delayed/leased/hospital)'], rows));
}

export function describePolicy(p: TopicPolicy): string {
  return [
    `maxAttempts ${p.maxAttempts}`,
    `backoff ${fmt(p.backoff.initialMs)}..${fmt(p.backoff.maxMs)} x${p.backoff.multiplier} (jitter ${p.backoff.jitter})`,
    p.ttlMs === undefined ? 'no ttl' : `ttl ${fmt(p.ttlMs)} then ${p.onExpired}`,
    `dedup ${fmt(p.dedupWindowMs)}`,
    `lease ${fmt(p.leaseMs)}`,
    ...(p.partitions > 1 ? [`${p.partitions} partitions`] : []),
  ].join(', ');
}

export function describeRoute(r: RouteRule): string {
  const cond = Object.entries(r.when)
    .map(([k, v]) => `${k}=${typeof v === 'object' && !Array.isArray(v) ? (v.exists ? '*' : '!') : Array.isArray(v) ? v.join('|') : String(v)}`)
    .join(',');
  return `${cond} -> ${r.to}`;
}

/** `type=image->images`, `headers.tenant=acme,body.kind=video->videos`, `body.size=3->small`, `type=a|b->t`. */
export function parseRoute(text: string, LadingError: typeof import('@lading/core').LadingError): RouteRule {
  const arrow = text.lastIndexOf('->');
  const bad = (why: string) => new LadingError('BAD_ARGUMENT', `--route ${JSON.stringify(text)}: ${why}`, { hint: "write 'FIELD=VALUE->TOPIC' with FIELD one of type, key, id, headers.NAME, body.PATH; join conditions with ',' and alternatives with '|', e.g. 'type=image|photo->images'" });
  if (arrow < 0) throw bad('no "->TOPIC" target');
  const to = text.slice(arrow + 2).trim();
  if (!to) throw bad('no target topic after "->"');
  const when: Record<string, string | number | boolean | (string | number | boolean)[]> = {};
  for (const part of text.slice(0, arrow).split(',')) {
    const eq = part.indexOf('=');
    if (eq <= 0) throw bad(`condition ${JSON.stringify(part.trim())} is not FIELD=VALUE`);
    const field = part.slice(0, eq).trim();
    const raw = part.slice(eq + 1).trim();
    const typed = (v: string): string | number | boolean => {
      if (!field.startsWith('body.')) return v;
      if (v === 'true' || v === 'false') return v === 'true';
      if (v !== '' && Number.isFinite(Number(v))) return Number(v);
      return v;
    };
    const alternatives = raw.split('|').map(typed);
    when[field] = alternatives.length > 1 ? alternatives : alternatives[0]!;
  }
  return { when, to };
}
