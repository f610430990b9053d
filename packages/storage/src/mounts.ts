/**
 * Which kind of file system a path lives on, from /proc/self/mountinfo.
 *
 * Self-contained on purpose (node builtins only): packages/core needs the same answer to refuse SQLite and
 * lock files on NFS, and core cannot depend on storage, so this file is meant to be copied as is.
 */
import { readFileSync, realpathSync } from 'node:fs';
import { readFile, realpath } from 'node:fs/promises';
import { basename, dirname, resolve } from 'node:path';

export type MountKind = 'local' | 'nfs' | 'lustre' | 'daos';
export const MOUNT_KINDS: readonly MountKind[] = ['local', 'nfs', 'lustre', 'daos'];

export interface MountEntry {
  mountPoint: string;
  fsType: string;
  source: string;
}

/** What a mount kind changes in how lading uses it. */
export interface MountProfile {
  kind: MountKind;
  /** fcntl/flock locks are reliable (not on NFS: lockd is optional and often broken on appliances). */
  allowsLocks: boolean;
  /** SQLite (WAL needs shared memory and working locks) may live here. */
  canHostSqlite: boolean;
  /** Size of each read/write system call; large and aligned on parallel file systems (stripe / chunk multiples). */
  ioChunkBytes: number;
  /** Ranged reads larger than this are split into aligned chunks read in parallel. 0: never. */
  parallelReadThreshold: number;
  parallelReads: number;
}

const MiB = 1024 * 1024;

export function mountProfile(kind: MountKind): MountProfile {
  switch (kind) {
    case 'nfs':
      return { kind, allowsLocks: false, canHostSqlite: false, ioChunkBytes: 1 * MiB, parallelReadThreshold: 0, parallelReads: 1 };
    case 'lustre':
    case 'daos':
      // Lustre stripes and DAOS chunks default to 1 MiB: 4 MiB aligned requests cover several OSTs / targets at once.
      return { kind, allowsLocks: true, canHostSqlite: true, ioChunkBytes: 4 * MiB, parallelReadThreshold: 32 * MiB, parallelReads: 4 };
    case 'local':
      return { kind, allowsLocks: true, canHostSqlite: true, ioChunkBytes: 1 * MiB, parallelReadThreshold: 0, parallelReads: 1 };
  }
}

/** mountinfo escapes space, tab, newline and backslash in paths as 3-digit octal (`\040`). */
function unescapeOctal(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, oct: string) => String.fromCharCode(parseInt(oct, 8)));
}

/**
 * Parse /proc/<pid>/mountinfo text (see proc(5)):
 * `36 35 98:0 /mnt1 /mnt/parent rw,noatime master:1 - ext3 /dev/root rw,errors=continue`.
 * Malformed lines are skipped.
 */
export function parseMountinfo(text: string): MountEntry[] {
  const entries: MountEntry[] = [];
  for (const line of text.split('\n')) {
    const fields = line.trim().split(' ');
    const dash = fields.indexOf('-', 6); // optional fields come after the 6th field and end at a lone '-'
    const mountPoint = fields[4];
    const fsType = fields[dash + 1];
    if (dash < 0 || mountPoint === undefined || fsType === undefined) continue;
    entries.push({ mountPoint: unescapeOctal(mountPoint), fsType, source: unescapeOctal(fields[dash + 2] ?? '') });
  }
  return entries;
}

export function mountKindOf(entry: Pick<MountEntry, 'fsType' | 'source'>): MountKind {
  const t = entry.fsType;
  if (t === 'nfs' || t === 'nfs4') return 'nfs';
  if (t === 'lustre') return 'lustre';
  // dfuse registers as `fuse.dfuse`; older releases show plain `fuse` with `dfuse` as the source.
  if (t === 'fuse.dfuse' || (t === 'fuse' && entry.source === 'dfuse')) return 'daos';
  return 'local';
}

/** The mount holding `absPath` (already a realpath): longest mount point prefix; a later mount over the same point wins. */
export function findMount(entries: readonly MountEntry[], absPath: string): MountEntry | undefined {
  let best: MountEntry | undefined;
  for (const e of entries) {
    const mp = e.mountPoint;
    const contains = mp === '/' || absPath === mp || absPath.startsWith(mp.endsWith('/') ? mp : `${mp}/`);
    if (contains && (best === undefined || mp.length >= best.mountPoint.length)) best = e;
  }
  return best;
}

/** Pure: the mount kind of `absPath` given mountinfo text. */
export function mountKindFor(mountinfo: string, absPath: string): MountKind {
  const entry = findMount(parseMountinfo(mountinfo), absPath);
  return entry === undefined ? 'local' : mountKindOf(entry);
}

function isMissing(e: unknown): boolean {
  const code = (e as { code?: unknown }).code;
  return code === 'ENOENT' || code === 'ENOTDIR';
}

/** Realpath of `path`, or of its nearest existing ancestor with the rest appended (for roots not created yet). */
export async function realpathOrAncestor(path: string): Promise<string> {
  let p = resolve(path);
  const rest: string[] = [];
  for (;;) {
    try {
      return resolve(await realpath(p), ...rest.reverse());
    } catch (e) {
      if (!isMissing(e) || dirname(p) === p) throw e;
      rest.push(basename(p));
      p = dirname(p);
    }
  }
}

export function realpathOrAncestorSync(path: string): string {
  let p = resolve(path);
  const rest: string[] = [];
  for (;;) {
    try {
      return resolve(realpathSync(p), ...rest.reverse());
    } catch (e) {
      if (!isMissing(e) || dirname(p) === p) throw e;
      rest.push(basename(p));
      p = dirname(p);
    }
  }
}

const MOUNTINFO = '/proc/self/mountinfo';

/** Mount kind of `path` (need not exist yet). 'local' where /proc is unavailable (macOS, containers without it). */
export async function detectMountKind(path: string): Promise<MountKind> {
  const real = await realpathOrAncestor(path);
  const text = await readFile(MOUNTINFO, 'utf8').catch(() => '');
  return mountKindFor(text, real);
}

export function detectMountKindSync(path: string): MountKind {
  const real = realpathOrAncestorSync(path);
  let text = '';
  try {
    text = readFileSync(MOUNTINFO, 'utf8');
  } catch {
    // no procfs: treat as local
  }
  return mountKindFor(text, real);
}
