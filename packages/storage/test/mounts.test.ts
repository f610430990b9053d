import { readFileSync } from 'node:fs';
import { mkdtemp, rm, symlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { detectMountKind, detectMountKindSync, findMount, mountKindFor, mountProfile, parseMountinfo, realpathOrAncestor } from '@lading/storage';

const fixture = (name: string) => readFileSync(new URL(`./fixtures/mountinfo/${name}.txt`, import.meta.url), 'utf8');

describe('mountinfo parsing', () => {
  it('parses fields, optional fields and octal escapes', () => {
    const entries = parseMountinfo(fixture('nfs'));
    expect(entries.find((e) => e.mountPoint === '/home')).toEqual({ mountPoint: '/home', fsType: 'nfs4', source: 'filer01.example.org:/export/home' });
    expect(entries.find((e) => e.fsType === 'nfs4' && e.mountPoint.startsWith('/mnt'))).toMatchObject({ mountPoint: '/mnt/team share', source: 'filer02.example.org:/export/team share' });
    // `shared:44 master:9`: two optional fields before the separator
    expect(entries.find((e) => e.mountPoint === '/projects')?.fsType).toBe('nfs4');
  });

  it('skips malformed lines', () => {
    expect(parseMountinfo(fixture('overmount')).map((e) => e.mountPoint)).toEqual(['/', '/data', '/data', '/data2']);
  });

  const cases: [string, string, string][] = [
    ['local', '/scratch/run1/out', 'local'],
    ['local', '/tmp/x', 'local'],
    ['local', '/var/lib/docker/overlay2/3f1c/merged/app', 'local'],
    ['local', '/export/a', 'local'],
    ['nfs', '/home/alice/data', 'nfs'],
    ['nfs', '/home', 'nfs'],
    ['nfs', '/data/nfs3/x', 'nfs'],
    ['nfs', '/data/nfs30', 'local'], // prefix of a name, not of a path
    ['nfs', '/home/alice/ssd/db', 'local'], // local disk mounted inside an NFS home
    ['nfs', '/mnt/team share/y', 'nfs'],
    ['nfs', '/projects/p1', 'nfs'],
    ['nfs', '/', 'local'],
    ['lustre', '/lustre/scratch/u/run', 'lustre'],
    ['lustre', '/lustre/project', 'lustre'],
    ['lustre', '/lustre', 'local'],
    ['lustre', '/home/u', 'nfs'],
    ['daos', '/mnt/daos/pool1/cont1/dataset', 'daos'],
    ['daos', '/tmp/dfuse_legacy/a', 'daos'],
    ['daos', '/mnt/sshfs/a', 'local'],
    ['daos', '/mnt/daos/pool1', 'local'],
    ['overmount', '/data/x', 'lustre'], // the later mount on the same point hides the earlier one
    ['overmount', '/data2/x', 'local'],
  ];
  it.each(cases)('%s: %s is %s', (name, path, kind) => {
    expect(mountKindFor(fixture(name), path)).toBe(kind);
  });

  it('finds no mount in empty text and calls that local', () => {
    expect(findMount([], '/x')).toBeUndefined();
    expect(mountKindFor('', '/x')).toBe('local');
  });
});

describe('mount profiles', () => {
  it('never hosts SQLite or locks on NFS; large aligned I/O on Lustre and DAOS', () => {
    expect(mountProfile('nfs')).toMatchObject({ allowsLocks: false, canHostSqlite: false });
    expect(mountProfile('local')).toMatchObject({ allowsLocks: true, canHostSqlite: true, parallelReadThreshold: 0 });
    for (const k of ['lustre', 'daos'] as const) {
      const p = mountProfile(k);
      expect(p.ioChunkBytes).toBeGreaterThanOrEqual(4 * 1024 * 1024);
      expect(p.ioChunkBytes % (1024 * 1024)).toBe(0);
      expect(p.parallelReads).toBeGreaterThan(1);
    }
  });

  it('stats synchronously only on a local profile over a block-local file system', () => {
    for (const fs of ['ext4', 'xfs', 'btrfs', 'zfs', 'tmpfs', 'overlay']) expect(mountProfile('local', fs).syncStat).toBe(true);
    // Server-backed file systems that detect as `local` (no profile of their own), and unknown mounts.
    for (const fs of ['gpfs', 'ceph', 'beegfs', 'fuse.sshfs', 'fuse.gcsfuse', 'cifs', undefined]) expect(mountProfile('local', fs).syncStat).toBe(false);
    // A forced network profile over a local disk keeps the network behaviour (the contract suite runs each profile here).
    for (const k of ['nfs', 'lustre', 'daos'] as const) expect(mountProfile(k, 'ext4').syncStat).toBe(false);
  });
});

describe('detectMountKind on this machine', () => {
  it('resolves symlinks and not-yet-existing paths through their nearest existing ancestor', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'lading-mounts-'));
    try {
      await symlink(dir, join(dir, 'link'));
      expect(await realpathOrAncestor(join(dir, 'link', 'not', 'yet'))).toBe(join(dir, 'not', 'yet'));
      const kind = await detectMountKind(join(dir, 'link', 'not', 'yet'));
      expect(kind).toBe(detectMountKindSync(join(dir, 'not')));
      expect(['local', 'nfs', 'lustre', 'daos']).toContain(kind);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
