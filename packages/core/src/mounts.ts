import { readFileSync, realpathSync, existsSync } from 'node:fs';
import { dirname, resolve } from 'node:path';

/** What kind of file system a path lives on; it decides what lading may do there. */
export type MountKind = 'local' | 'nfs' | 'lustre' | 'daos';

export interface MountEntry {
  mountPoint: string;
  fsType: string;
  source: string;
}

/** Parse /proc/self/mountinfo (man 5 proc): fields, then ` - `, then fstype, source, options. */
export function parseMountInfo(text: string): MountEntry[] {
  const entries: MountEntry[] = [];
  for (const line of text.split('\n')) {
    const sep = line.indexOf(' - ');
    if (sep < 0) continue;
    const left = line.slice(0, sep).split(' ');
    const right = line.slice(sep + 3).split(' ');
    const mountPoint = left[4];
    const fsType = right[0];
    if (!mountPoint || !fsType) continue;
    entries.push({ mountPoint: unescapeOctal(mountPoint), fsType, source: unescapeOctal(right[1] ?? '') });
  }
  return entries;
}

function unescapeOctal(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
}

export function kindOfFsType(fsType: string): MountKind {
  if (fsType === 'nfs' || fsType === 'nfs4') return 'nfs';
  if (fsType === 'lustre') return 'lustre';
  if (fsType === 'fuse.dfuse' || fsType === 'daos') return 'daos';
  return 'local';
}

/** The mount holding `path`: the longest mount point that is a prefix of it (later mounts shadow earlier ones). */
export function mountFor(entries: MountEntry[], path: string): MountEntry | undefined {
  let best: MountEntry | undefined;
  for (const e of entries) {
    const mp = e.mountPoint.endsWith('/') ? e.mountPoint : `${e.mountPoint}/`;
    if ((path === e.mountPoint || path.startsWith(mp) || e.mountPoint === '/') && (!best || e.mountPoint.length >= best.mountPoint.length)) best = e;
  }
  return best;
}

/** Real path of `path` or of its nearest existing ancestor (the path may not exist yet). */
export function nearestRealPath(path: string): string {
  let p = resolve(path);
  const rest: string[] = [];
  while (!existsSync(p)) {
    const parent = dirname(p);
    if (parent === p) break;
    rest.unshift(p.slice(parent.length + (parent.endsWith('/') ? 0 : 1)));
    p = parent;
  }
  return resolve(realpathSync(p), ...rest);
}

export function detectMountKind(path: string, mountinfo?: string): { kind: MountKind; mount: MountEntry | undefined } {
  let text = mountinfo;
  if (text === undefined) {
    try {
      text = readFileSync('/proc/self/mountinfo', 'utf8');
    } catch {
      return { kind: 'local', mount: undefined }; // not Linux: nothing to detect
    }
  }
  const mount = mountFor(parseMountInfo(text), nearestRealPath(path));
  return { kind: mount ? kindOfFsType(mount.fsType) : 'local', mount };
}
