import type { Command } from 'commander';
import { openQueue, TopicPolicySchema, type PayloadStore, type Queue } from '@lading/core';
import { loadConfig, type ResolvedConfig } from './config.js';
import { Output } from './output.js';
import { LazyStore, closeStore } from './store.js';

/** Options every command accepts (defined on the program, shown as global options in each --help). */
export interface GlobalOptions {
  queue?: string;
  /** `false` with --no-store. */
  store?: string | false;
  config?: string;
  debug?: boolean;
  json?: boolean;
}

/**
 * What a running command has at hand: the resolved configuration, the queue (opened on first use,
 * with the store and the config file's topic policies), and the output. Closed after the action.
 */
export class Cli {
  readonly out: Output;
  readonly json: boolean;
  readonly debug: boolean;
  private resolved: ResolvedConfig | undefined;
  private opened: Promise<Queue> | undefined;
  private store: PayloadStore | undefined;
  private readonly closers: (() => Promise<void> | void)[] = [];

  constructor(
    readonly options: GlobalOptions,
    readonly cwd: string = process.cwd(),
    readonly env: NodeJS.ProcessEnv = process.env,
  ) {
    this.json = options.json === true;
    this.debug = options.debug === true;
    this.out = new Output(this.json);
  }

  static fromCommand(command: Command): Cli {
    return new Cli(command.optsWithGlobals<GlobalOptions>());
  }

  config(): ResolvedConfig {
    this.resolved ??= loadConfig({ flags: { queue: this.options.queue, store: this.options.store, config: this.options.config }, env: this.env, cwd: this.cwd });
    return this.resolved;
  }

  /**
   * The queue of this invocation. With `store` the claim-check store is attached (commands that publish or
   * read bodies): lazily with `true`, at once with `'eager'`; other commands never load the storage layer.
   */
  queue(options: { store?: boolean | 'eager' } = {}): Promise<Queue> {
    this.opened ??= (async () => {
      const config = this.config();
      if (options.store && config.store !== undefined) {
        // Loaded on first use: publishing small bodies never loads the storage layer. Consumers open it
        // at once, so a bad store URI fails at start-up, not on the first claim check.
        const lazy = new LazyStore(config.store, { required: config.sources.store !== 'default', cwd: this.cwd });
        this.store = lazy;
        if (options.store === 'eager') {
          try {
            await lazy.open();
          } catch (e) {
            if (config.sources.store !== 'default') throw e;
            this.store = undefined; // the default store is a convenience: work on without it
          }
        }
      }
      const queue = await openQueue({ uri: config.queue, ...(this.store ? { store: this.store } : {}), ...(config.inlineLimit !== undefined ? { inlineLimit: config.inlineLimit } : {}) });
      try {
        await applyTopicPolicies(queue, config.topics);
      } catch (e) {
        await queue.close();
        throw e;
      }
      return queue;
    })();
    return this.opened;
  }

  /** Run on close (after the queue is closed): timers, signal handlers, progress bars. */
  onClose(fn: () => Promise<void> | void): void {
    this.closers.push(fn);
  }

  async close(): Promise<void> {
    const opened = this.opened;
    this.opened = undefined;
    if (opened) {
      const queue = await opened.catch(() => undefined);
      await queue?.close();
    }
    await closeStore(this.store);
    for (const fn of this.closers.splice(0)) await fn();
  }
}

/** Config-file topic policies: created or updated when they differ from what the queue holds. */
async function applyTopicPolicies(queue: Queue, topics: ResolvedConfig['topics']): Promise<void> {
  for (const [name, input] of Object.entries(topics)) {
    const existing = await queue.driver.getTopic(name);
    if (existing) {
      const merged = TopicPolicySchema.parse({ ...existing.policy, ...input });
      if (JSON.stringify(merged) === JSON.stringify(existing.policy)) continue;
    }
    await queue.createTopic(name, input, { update: true });
  }
}
