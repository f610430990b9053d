import { createRequire } from 'node:module';
import { Command, CommanderError } from 'commander';
import { registerConsume } from './commands/consume.js';
import { registerDemo } from './commands/demo.js';
import { registerHospital } from './commands/hospital.js';
import { registerPublish } from './commands/publish.js';
import { registerStatus } from './commands/status.js';
import { registerBench } from './commands/bench.js';
import { registerCache } from './commands/cache.js';
import { registerStore } from './commands/store.js';
import { registerSubmit } from './commands/submit.js';
import { registerTopics } from './commands/topics.js';
import { registerWait } from './commands/wait.js';
import { registerWorker } from './commands/worker.js';
import { EXIT_CODES_HELP, ExitCode, exitState, reportError, reportUsageError, scanGlobalFlags } from './errors.js';

const VERSION = (createRequire(import.meta.url)('../package.json') as { version: string }).version;

/**
 * Command groups, one module each. Later ones (submit, worker, status, wait, store, cache, bench)
 * plug in here with a `register<Name>(program)` of their own.
 */
const COMMAND_GROUPS: ((program: Command) => void)[] = [registerDemo, registerPublish, registerConsume, registerTopics, registerHospital, registerSubmit, registerWorker, registerStatus, registerWait, registerStore, registerCache, registerBench];

export function buildProgram(): Command {
  const program = new Command('lading')
    .description('lading: async HPC / ML data-pipeline jobs over large files.\nThe queue carries small messages (the bill); large bodies stay in storage (the cargo).')
    .version(VERSION, '-V, --version', 'print the version')
    .option('--queue <uri>', 'queue URI: sqlite:PATH or kafka://host:9092 (env LADING_QUEUE; default sqlite:./.lading/queue.db)')
    .option('--store <uri>', 'store for large bodies: file:DIR, s3://bucket/prefix, gs://bucket/prefix (env LADING_STORE; default file:./.lading/store)')
    .option('--no-store', 'no store: every body must fit inline (64 KiB unless inlineLimit says otherwise)')
    .option('--config <path>', 'config file (env LADING_CONFIG; default lading.config.json or lading.config.yaml in the working directory)')
    .option('--debug', 'print stack traces of internal errors (env LADING_DEBUG=1)')
    .configureHelp({ showGlobalOptions: true })
    .showSuggestionAfterError(true)
    .exitOverride();
  for (const register of COMMAND_GROUPS) register(program);
  program.addHelpText(
    'after',
    `\nExample:\n  $ lading demo\n  $ lading publish images '{"path":"cat.png"}' --type image\n  $ lading consume images --group thumbnails --handler ./thumbnail.js\n  $ lading hospital list\n\n${EXIT_CODES_HELP}\n\nConfiguration: flags > env (LADING_QUEUE, LADING_STORE, LADING_CACHE_DIR, LADING_CONFIG) > lading.config.json|yaml > defaults.\nEvery command takes --json and has its own --help.\n`,
  );
  return program;
}

function walk(cmd: Command, path: string, fn: (cmd: Command, path: string) => void): void {
  fn(cmd, path);
  for (const sub of cmd.commands) walk(sub, `${path} ${sub.name()}`, fn);
}

/** Run the CLI; resolves to the exit code. Every error is printed here and only here. */
export async function main(argv: readonly string[] = process.argv): Promise<number> {
  const flags = scanGlobalFlags(argv.slice(2));
  exitState.code = ExitCode.OK;
  const program = buildProgram();
  let usage: { message: string; path: string } | undefined;
  walk(program, 'lading', (cmd, path) => {
    cmd.configureOutput({
      outputError: (message) => {
        usage = { message, path };
      },
    });
  });
  try {
    await program.parseAsync([...argv]);
    return exitState.code;
  } catch (e) {
    if (e instanceof CommanderError) {
      if (e.code === 'commander.helpDisplayed' || e.code === 'commander.version') return ExitCode.OK;
      // Help printed because a command group was called without a subcommand: a usage error.
      if (e.code === 'commander.help' || e.code === 'commander.executeSubCommandAsync') return ExitCode.USAGE;
      return reportUsageError(usage?.message ?? e.message, usage?.path ?? 'lading', flags);
    }
    return reportError(e, flags);
  }
}
