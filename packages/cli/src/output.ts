/**
 * Output helpers shared by every command: human text or JSON on stdout, notes and warnings on stderr,
 * tables, and a progress bar that only appears when a person is watching (stdout is a terminal, no --json).
 */

export interface Progress {
  increment(n?: number): void;
  setTotal(total: number): void;
  stop(): void;
}

const NO_PROGRESS: Progress = { increment() {}, setTotal() {}, stop() {} };

export class Output {
  constructor(
    readonly json: boolean,
    private readonly stdout: NodeJS.WriteStream = process.stdout,
    private readonly stderr: NodeJS.WriteStream = process.stderr,
  ) {}

  /** A line of human-readable output (suppressed with --json). */
  line(text = ''): void {
    if (!this.json) this.stdout.write(`${text}\n`);
  }

  /** Text that is the command's result in every mode (a report already rendered in the format asked for). */
  text(text: string): void {
    this.stdout.write(text.endsWith('\n') ? text : `${text}\n`);
  }

  /** The structured result of a command (only with --json). */
  result(value: unknown): void {
    if (this.json) this.stdout.write(`${JSON.stringify(value, null, 2)}\n`);
  }

  /** One JSON value per line (streams: consume, publish --lines). */
  jsonLine(value: unknown): void {
    this.stdout.write(`${JSON.stringify(value)}\n`);
  }

  /** A note for the person at the terminal, on stderr so it never mixes with data. */
  note(text: string): void {
    if (!this.json) this.stderr.write(`${text}\n`);
  }

  warn(text: string): void {
    if (this.json) this.stderr.write(`${JSON.stringify({ warning: text })}\n`);
    else this.stderr.write(`warning: ${text}\n`);
  }

  get interactive(): boolean {
    return !this.json && this.stdout.isTTY === true && this.stderr.isTTY === true;
  }

  /** A progress bar on stderr when interactive; a no-op otherwise. */
  async progress(total: number, label: string): Promise<Progress> {
    if (!this.interactive || total < 2) return NO_PROGRESS;
    const { default: cliProgress } = await import('cli-progress');
    const bar = new cliProgress.SingleBar(
      { format: `${label} [{bar}] {value}/{total} {percentage}% | {eta_formatted} left`, hideCursor: true, clearOnComplete: false, stream: this.stderr },
      cliProgress.Presets.shades_classic,
    );
    bar.start(total, 0);
    return {
      increment: (n = 1) => bar.increment(n),
      setTotal: (t) => bar.setTotal(t),
      stop: () => bar.stop(),
    };
  }
}

/** Left-aligned text table; the last column is not padded. */
export function table(header: string[], rows: string[][]): string {
  const all = [header, ...rows];
  const widths = header.map((_, i) => Math.max(...all.map((r) => (r[i] ?? '').length)));
  return all
    .map((r) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]!))).join('  ').trimEnd())
    .join('\n');
}

export function truncate(s: string, n: number): string {
  const flat = s.replace(/\s+/g, ' ').trim();
  return flat.length > n ? `${flat.slice(0, n - 1)}…` : flat;
}

export function plural(n: number, word: string, many = `${word}s`): string {
  return `${n} ${n === 1 ? word : many}`;
}

/** `3s ago`, `5m ago`, `2h ago`, or the ISO date for older times. */
export function ago(epochMs: number, now = Date.now()): string {
  const s = Math.round((now - epochMs) / 1000);
  if (s < 0) return new Date(epochMs).toISOString();
  if (s < 60) return `${s}s ago`;
  if (s < 3600) return `${Math.round(s / 60)}m ago`;
  if (s < 86400 * 2) return `${Math.round(s / 3600)}h ago`;
  return new Date(epochMs).toISOString();
}

export function formatMs(ms: number): string {
  if (ms % 86_400_000 === 0 && ms > 0) return `${ms / 86_400_000}d`;
  if (ms % 3_600_000 === 0 && ms > 0) return `${ms / 3_600_000}h`;
  if (ms % 60_000 === 0 && ms > 0) return `${ms / 60_000}m`;
  if (ms % 1000 === 0 && ms > 0) return `${ms / 1000}s`;
  return `${ms}ms`;
}
