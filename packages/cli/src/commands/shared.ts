import { InvalidArgumentError, type Command, type OptionValues } from 'commander';
import type { Cli } from '../context.js';

/**
 * Helpers for defining commands. Command modules import only commander and these helpers at the top;
 * the SDK and the queue are loaded when an action runs, so `lading --help` stays fast.
 */

/** Every command takes --json. */
export function withJson(cmd: Command): Command {
  return cmd.option('--json', 'print machine-readable JSON instead of text');
}

/** The `Example:` section of a command's --help. */
export function examples(cmd: Command, lines: string[]): Command {
  return cmd.addHelpText('after', `\nExample:\n${lines.map((l) => (l.startsWith('#') || l === '' ? `  ${l}` : `  $ ${l}`)).join('\n')}\n`);
}

/** For repeatable options: `--header a=1 --header b=2`. */
export function collect(value: string, previous: string[] = []): string[] {
  return [...previous, value];
}

export function positiveInt(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError('expected a whole number of at least 1.');
  return n;
}

export function nonNegativeInt(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 0) throw new InvalidArgumentError('expected a whole number of at least 0.');
  return n;
}

/**
 * Attach an action that gets a Cli (config, queue, output), its positional arguments and options.
 * The Cli is closed afterwards whatever happens; errors propagate to main, which prints them.
 */
export function action<O extends OptionValues, A extends unknown[] = []>(cmd: Command, fn: (cli: Cli, options: O, ...args: A) => Promise<void>): Command {
  return cmd.action(async (...all: unknown[]) => {
    const command = all.at(-1) as Command;
    const options = all.at(-2) as O;
    const args = all.slice(0, -2) as A;
    const { Cli } = await import('../context.js');
    const cli = Cli.fromCommand(command);
    try {
      await fn(cli, options, ...args);
    } finally {
      await cli.close();
    }
  });
}

/**
 * SIGINT / SIGTERM drain a long-running command (consume, worker): the first calls `drain(signal)`, a second
 * exits at once (130) after saying what becomes of the work in flight. Returns a function removing the handlers.
 */
export function onStopSignals(note: (text: string) => void, inFlight: string, drain: (signal: NodeJS.Signals) => void): () => void {
  const signals: NodeJS.Signals[] = ['SIGINT', 'SIGTERM'];
  let signalled = 0;
  const onSignal = (sig: NodeJS.Signals) => {
    if (++signalled > 1) {
      note(`${sig} again: exiting without waiting (${inFlight})`);
      process.exit(130);
    }
    drain(sig);
  };
  for (const s of signals) process.on(s, onSignal);
  return () => {
    for (const s of signals) process.off(s, onSignal);
  };
}

/** `--cache`, `--cache-dir`, `--cache-max`: read `what` through this node's local read-through cache. */
export function cacheFlags(cmd: Command, what: string): Command {
  return cmd
    .option('--cache', `read ${what} through this node's local read-through cache (blocks are kept for the next read; see \`lading cache stats\`)`)
    .option('--cache-dir <dir>', 'cache directory on a local disk, implies --cache (env LADING_CACHE_DIR, config cache.dir; default $XDG_CACHE_HOME/lading or ~/.cache/lading)')
    .option('--cache-max <size>', 'byte budget of the cache, e.g. 200GiB (config cache.max; default 10GiB)');
}
