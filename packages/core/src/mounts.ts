/**
 * Which kind of file system a path lives on, from /proc/self/mountinfo: the one copy of this logic.
 * Core needs it to refuse SQLite and lock files on NFS; @lading/storage builds its mount profiles on it.
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

/**
 * Kernel file systems on a local block device or in memory. A metadata call on one (a stat, mostly of a
 * missing commit marker) is answered from the dentry cache in a few microseconds; anything else (NFS,
 * Lustre, GPFS, CephFS, BeeGFS, FUSE...) may wait on a server.
 */
const BLOCK_LOCAL_FS = new Set(['ext2', 'ext3', 'ext4', 'xfs', 'btrfs', 'zfs', 'f2fs', 'bcachefs', 'jfs', 'reiserfs', 'nilfs2', 'tmpfs', 'ramfs', 'overlay']);

/** Is this file system type on this node's own disks or memory (see BLOCK_LOCAL_FS)? */
export function isBlockLocal(fsType: string | undefined): boolean {
  return fsType !== undefined && BLOCK_LOCAL_FS.has(fsType);
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
  return (await detectMount(path)).kind;
}

/** The mount holding `path` (need not exist yet) and its kind; no mount where /proc is unavailable. */
export async function detectMount(path: string): Promise<{ kind: MountKind; mount: MountEntry | undefined }> {
  const real = await realpathOrAncestor(path);
  const mount = findMount(parseMountinfo(await readFile(MOUNTINFO, 'utf8').catch(() => '')), real);
  return { kind: mount === undefined ? 'local' : mountKindOf(mount), mount };
}

export function detectMountKindSync(path: string): MountKind {
  return mountOf(path).kind;
}

/** The mount holding `path` and its kind, synchronously; `mountinfo` text replaces /proc/self/mountinfo (tests). */
export function mountOf(path: string, mountinfo?: string): { kind: MountKind; mount: MountEntry | undefined } {
  let text = mountinfo;
  if (text === undefined) {
    try {
      text = readFileSync(MOUNTINFO, 'utf8');
    } catch {
      text = ''; // no procfs: treat as local
    }
  }
  const mount = findMount(parseMountinfo(text), realpathOrAncestorSync(path));
  return { kind: mount === undefined ? 'local' : mountKindOf(mount), mount };
}
