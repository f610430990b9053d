/**
 * Errors a user can act on. Every LadingError carries a stable `code` (for scripts and tests) and a
 * `hint` that says what to do. The CLI prints `error: <message>` and `hint: <hint>` for these and
 * never a stack trace; anything that is not a LadingError is a bug and is reported as one.
 */
export type LadingErrorCode =
  | 'BAD_URI'
  | 'BAD_CONFIG'
  | 'BAD_MESSAGE'
  | 'BAD_JOB_SPEC'
  | 'BAD_ARGUMENT'
  | 'NOT_FOUND'
  | 'UNSAFE_KEY'
  | 'UNSAFE_LOCATION'
  | 'TOO_LARGE'
  | 'CHECKSUM_MISMATCH'
  | 'CONFLICT'
  | 'CLOSED'
  | 'UNSUPPORTED'
  | 'BACKEND';

export class LadingError extends Error {
  override readonly name: string = 'LadingError';
  readonly code: LadingErrorCode;
  readonly hint: string | undefined;

  constructor(code: LadingErrorCode, message: string, options: { hint?: string; cause?: unknown } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.hint = options.hint;
  }
}

export function isLadingError(e: unknown): e is LadingError {
  return e instanceof LadingError || (e instanceof Error && typeof (e as { code?: unknown }).code === 'string' && e.name === 'LadingError');
}

/** Plain, serialisable record of an error: what the hospital keeps for every attempt. */
export interface ErrorRecord {
  name: string;
  message: string;
  stack?: string | undefined;
  code?: string | undefined;
}

export function toErrorRecord(e: unknown): ErrorRecord {
  if (e instanceof Error) {
    const code = (e as { code?: unknown }).code;
    return { name: e.name, message: e.message, stack: e.stack, code: typeof code === 'string' ? code : undefined };
  }
  return { name: 'NonError', message: typeof e === 'string' ? e : JSON.stringify(e) ?? String(e) };
}
