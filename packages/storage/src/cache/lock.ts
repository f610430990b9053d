/**
 * Lock files for processes on one node: created with O_EXCL (`open(path, 'wx')`), holding pid, host, a token
 * and the time; refreshed (mtime) while held. A lock is stale when its holder's pid is dead (same host) or it
 * has not been refreshed for `staleMs`; a stale lock is taken over by renaming it aside first, so two
 * waiters that both judged it stale cannot both win.
 *
 * The cache root must be on a local file system: O_EXCL is unreliable on NFSv2/3 (the cache refuses NFS).
 */
import { randomBytes } from 'node:crypto';
import { link, mkdir, open, readFile, rename, stat, unlink, utimes } from 'node:fs/promises';
import { hostname } from 'node:os';
import { dirname } from 'node:path';

export interface LockInfo {
  pid: number;
  host: string;
  token: string;
  time: number;
}

const HOST = hostname();

export function errnoOf(e: unknown): string | undefined {
  const code = (e as { code?: unknown } | null)?.code;
  return typeof code === 'string' ? code : undefined;
}

/** True when a process with this pid exists (EPERM: it exists but is someone else's). */
export function pidAlive(pid: number): boolean {
  if (!Number.isInteger(pid) || pid <= 0) return false;
  if (pid === process.pid) return true;
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return errnoOf(e) === 'EPERM';
  }
}

export class LockFile {
  private timer: NodeJS.Timeout | undefined;
  private released = false;

  private constructor(readonly path: string, readonly info: LockInfo, refreshMs: number) {
    this.timer = setInterval(() => {
      const now = new Date();
      utimes(this.path, now, now).catch(() => undefined);
    }, refreshMs);
    this.timer.unref();
  }

  /** Try once to take the lock (taking over a stale one); undefined when another live holder has it. */
  static async tryAcquire(path: string, staleMs: number): Promise<LockFile | undefined> {
    for (let attempt = 0; attempt < 4; attempt++) {
      const info: LockInfo = { pid: process.pid, host: HOST, token: randomBytes(8).toString('hex'), time: Date.now() };
      try {
        const fh = await open(path, 'wx', 0o600);
        try {
          await fh.writeFile(JSON.stringify(info));
        } finally {
          await fh.close();
        }
        return new LockFile(path, info, Math.max(50, Math.floor(staleMs / 3)));
      } catch (e) {
        const code = errnoOf(e);
        if (code === 'ENOENT') {
          await mkdir(dirname(path), { recursive: true, mode: 0o700 });
          continue;
        }
        if (code !== 'EEXIST') throw e;
      }
      const state = await lockState(path, staleMs);
      if (state.kind === 'held') return undefined;
      if (state.kind === 'stale') await breakLock(path, state.raw);
      // 'gone' or broken: try again
    }
    return undefined;
  }

  /** Remove the lock if it is still ours (someone may have taken it over as stale while we were stuck). */
  async release(): Promise<void> {
    if (this.released) return;
    this.released = true;
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    try {
      const raw = await readFile(this.path, 'utf8');
      if (parse(raw)?.token === this.info.token) await unlink(this.path);
    } catch (e) {
      if (errnoOf(e) !== 'ENOENT') throw e;
    }
  }
}

function parse(raw: string): LockInfo | undefined {
  try {
    const v = JSON.parse(raw) as Partial<LockInfo>;
    if (typeof v.pid === 'number' && typeof v.host === 'string' && typeof v.token === 'string' && typeof v.time === 'number') return v as LockInfo;
  } catch {
    // torn or empty: the holder died between create and write, or is writing right now
  }
  return undefined;
}

type LockState = { kind: 'gone' } | { kind: 'held'; info: LockInfo | undefined } | { kind: 'stale'; raw: string };

/** Is the lock at `path` held by a live process? */
export async function lockState(path: string, staleMs: number, now = Date.now()): Promise<LockState> {
  let raw: string;
  let mtimeMs: number;
  try {
    raw = await readFile(path, 'utf8');
    mtimeMs = (await stat(path)).mtimeMs;
  } catch (e) {
    if (errnoOf(e) === 'ENOENT') return { kind: 'gone' };
    throw e;
  }
  const info = parse(raw);
  const age = now - mtimeMs;
  if (info === undefined) return age > Math.min(staleMs, 2000) ? { kind: 'stale', raw } : { kind: 'held', info };
  if (info.host === HOST && !pidAlive(info.pid)) return { kind: 'stale', raw };
  if (age > staleMs) return { kind: 'stale', raw };
  return { kind: 'held', info };
}

/** Take a stale lock away: rename it aside (atomic; one winner), check it is the one judged stale, then drop it. */
export async function breakLock(path: string, staleRaw: string): Promise<void> {
  const aside = `${path}.stale-${process.pid}-${randomBytes(4).toString('hex')}`;
  try {
    await rename(path, aside);
  } catch (e) {
    if (errnoOf(e) === 'ENOENT') return; // someone else broke it (or it was released)
    throw e;
  }
  const raw = await readFile(aside, 'utf8').catch(() => '');
  if (raw !== staleRaw) {
    // Between our look and the rename a new holder took the lock: put theirs back unless a newer one exists.
    await link(aside, path).catch(() => undefined);
  }
  await unlink(aside).catch(() => undefined);
}

/** Remove the lock at `path` if it is stale (sweeps after crashes). True when it was removed. */
export async function sweepLock(path: string, staleMs: number): Promise<boolean> {
  const state = await lockState(path, staleMs).catch(() => undefined);
  if (state?.kind !== 'stale') return false;
  await breakLock(path, state.raw);
  return true;
}
