/**
 * The one place where errors become output and exit codes. Kept free of heavy imports: it runs on the
 * error path of every command, including usage errors before any command module has loaded.
 */

/** Exit codes scripts can rely on (also printed by `lading --help`). */
export const ExitCode = {
  /** Everything worked. */
  OK: 0,
  /** A runtime failure: the backend failed, a checksum did not match, a bug. */
  FAILURE: 1,
  /** A usage or input error: bad flag, bad URI, bad config, malformed JSON, unknown id. */
  USAGE: 2,
  /** The work finished but something is in the error hospital (`wait`, `hospital list --fail-if-any`). */
  HOSPITAL: 3,
} as const;
export type ExitCodeValue = (typeof ExitCode)[keyof typeof ExitCode];

export const EXIT_CODES_HELP = `Exit codes:
  0  ok
  1  failure: a runtime or backend error (or a bug: rerun with --debug)
  2  usage or input error: bad option, URI, config, JSON body, unknown id, unsafe location
  3  finished, but something is in the error hospital (e.g. hospital list --fail-if-any)`;

/** LadingError codes that mean the user asked for something wrong: exit 2, never a stack trace. */
const USER_MISTAKES = new Set(['BAD_URI', 'BAD_CONFIG', 'BAD_MESSAGE', 'BAD_JOB_SPEC', 'BAD_ARGUMENT', 'NOT_FOUND', 'UNSAFE_KEY', 'UNSAFE_LOCATION', 'TOO_LARGE', 'CONFLICT']);

/** A LadingError, recognised by shape so that two copies of @lading/core (or none loaded yet) still work. */
export interface LadingErrorLike extends Error {
  code: string;
  hint?: string | undefined;
}

export function isLadingErrorLike(e: unknown): e is LadingErrorLike {
  return e instanceof Error && e.name === 'LadingError' && typeof (e as { code?: unknown }).code === 'string';
}

export function exitCodeForError(e: unknown): ExitCodeValue {
  if (isLadingErrorLike(e)) return USER_MISTAKES.has(e.code) ? ExitCode.USAGE : ExitCode.FAILURE;
  return ExitCode.FAILURE;
}

export interface ErrorOutputOptions {
  json: boolean;
  debug: boolean;
  write?: (text: string) => void;
}

/** The exit code a command asked for (e.g. 3 when something is in the hospital); errors override it. */
export const exitState: { code: number } = { code: ExitCode.OK };

export function requestExit(code: ExitCodeValue): void {
  exitState.code = Math.max(exitState.code, code);
}

function writer(options: ErrorOutputOptions): (text: string) => void {
  return options.write ?? ((text) => process.stderr.write(text));
}

/** Print an error the way the CLI always does and return the exit code. */
export function reportError(e: unknown, options: ErrorOutputOptions): ExitCodeValue {
  const write = writer(options);
  const code = exitCodeForError(e);
  if (isLadingErrorLike(e)) {
    if (options.json) {
      write(`${JSON.stringify({ error: { code: e.code, message: e.message, hint: e.hint ?? null } })}\n`);
    } else {
      write(`error: ${e.message}\n`);
      if (e.hint) write(`hint: ${e.hint}\n`);
    }
    // A stack trace only when asked for, and never for a user mistake.
    if (options.debug && code !== ExitCode.USAGE && e.stack) write(`${e.stack}\n${causeText(e)}`);
    return code;
  }
  const message = e instanceof Error ? e.message : String(e);
  const hint = options.debug ? 'this is a bug in lading; please report it with the stack trace above' : 'this is a bug in lading; rerun with --debug (or LADING_DEBUG=1) for the stack trace and report it';
  if (options.json) {
    write(`${JSON.stringify({ error: { code: 'INTERNAL', message, hint, ...(options.debug && e instanceof Error ? { stack: e.stack ?? null } : {}) } })}\n`);
  } else {
    write(`internal error: ${message}\n`);
    if (options.debug && e instanceof Error && e.stack) write(`${e.stack}\n${causeText(e)}`);
    write(`hint: ${hint}\n`);
  }
  return ExitCode.FAILURE;
}

function causeText(e: Error): string {
  const cause = (e as { cause?: unknown }).cause;
  if (cause instanceof Error) return `caused by: ${cause.stack ?? cause.message}\n`;
  return '';
}

/** A commander usage error (unknown option, missing argument, bad choice): exit 2 and point at --help. */
export function reportUsageError(message: string, commandPath: string, options: ErrorOutputOptions): ExitCodeValue {
  const write = writer(options);
  const text = message.trim().replace(/^error:\s*/, '');
  const hint = `see: ${commandPath} --help`;
  if (options.json) write(`${JSON.stringify({ error: { code: 'USAGE', message: text, hint } })}\n`);
  else write(`error: ${text}\n${hint}\n`);
  return ExitCode.USAGE;
}

/** `--json`, `--debug` and LADING_DEBUG, known before (and even without) a successful parse. */
export function scanGlobalFlags(args: readonly string[], env: NodeJS.ProcessEnv = process.env): { json: boolean; debug: boolean } {
  const end = args.indexOf('--');
  const before = end < 0 ? args : args.slice(0, end);
  const envDebug = env.LADING_DEBUG !== undefined && env.LADING_DEBUG !== '' && env.LADING_DEBUG !== '0' && env.LADING_DEBUG !== 'false';
  return { json: before.includes('--json'), debug: before.includes('--debug') || envDebug };
}
