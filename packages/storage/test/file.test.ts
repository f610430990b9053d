import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, open, readdir, readFile, rename, rm, stat, symlink, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { FileStore, MOUNT_KINDS, detectMount, isBlockLocal, openStore } from '@lading/storage';
import { collect, describeBlobStoreContract, digestOf, expectCode, keysOf, slowStream } from './contract.js';

const tmpStore = async (profile?: string) => {
  const dir = await mkdtemp(join(tmpdir(), 'lading-file-'));
  const store = await openStore(`file:${dir}/root${profile ? `?profile=${profile}` : ''}`);
  return { store, dir, cleanup: () => rm(dir, { recursive: true, force: true }) };
};

describeBlobStoreContract('file (detected mount kind)', () => tmpStore());
for (const kind of MOUNT_KINDS) describeBlobStoreContract(`file ?profile=${kind}`, () => tmpStore(kind));

describe('file driver', () => {
  let dir: string;
  let root: string;
  let outside: string;
  let store: FileStore;

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'lading-file-'));
    root = join(dir, 'root');
    outside = join(dir, 'outside');
    await mkdir(join(root, 'real'), { recursive: true });
    await mkdir(outside);
    await writeFile(join(outside, 'secret.txt'), 'secret');
    await writeFile(join(root, 'real', 'inside.txt'), 'inside');
    await symlink(outside, join(root, 'dir-out'));
    await symlink(join(outside, 'secret.txt'), join(root, 'file-out'));
    await symlink('../../outside/secret.txt', join(root, 'real', 'rel-out'));
    await symlink(join(root, 'real', 'inside.txt'), join(root, 'link-in'));
    await symlink(join(root, 'real'), join(root, 'dir-in'));
    store = await FileStore.open(root);
  });
  afterAll(() => rm(dir, { recursive: true, force: true }));

  it('refuses symlinks that lead outside the root, for reads and writes', async () => {
    for (const key of ['dir-out/secret.txt', 'file-out', 'real/rel-out']) {
      const err = await expectCode(() => store.read(key), 'UNSAFE_KEY');
      expect(err.message).toContain('outside the store root');
      await expectCode(() => store.stat(key), 'UNSAFE_KEY');
      await expectCode(() => store.copy(key, 'stolen'), 'UNSAFE_KEY');
    }
    await expectCode(() => store.write('dir-out/planted', 'x'), 'UNSAFE_KEY');
    await expectCode(() => store.write('dir-out/deeper/planted', 'x'), 'UNSAFE_KEY');
    await expectCode(() => store.delete('dir-out/secret.txt'), 'UNSAFE_KEY');
    await expectCode(() => keysOf(store, 'dir-out/'), 'UNSAFE_KEY');
    expect(await readdir(outside)).toEqual(['secret.txt']);
    expect(await readFile(join(outside, 'secret.txt'), 'utf8')).toBe('secret');
    expect(await store.stat('stolen')).toBeUndefined();
  });

  it('stats the same through a synchronous call (local disk) and the thread pool (network profiles)', async () => {
    const { mount } = await detectMount(root);
    expect(store.profile.syncStat).toBe(isBlockLocal(mount?.fsType)); // ext4 / overlay / tmpfs here: the synchronous path
    const pooled = await FileStore.open(root, { profile: 'nfs' });
    expect(pooled.profile.syncStat).toBe(false);
    for (const s of [store, pooled]) {
      expect(await s.stat('real/missing')).toBeUndefined();
      expect(await s.stat('real/inside.txt/under-a-file')).toBeUndefined(); // ENOTDIR
      expect(await s.stat('real')).toBeUndefined(); // a directory is not an object
      expect(await s.stat('real/inside.txt')).toMatchObject({ key: 'real/inside.txt', size: 6 });
      await expectCode(() => s.stat('file-out'), 'UNSAFE_KEY');
    }
  });

  it('lists no link that leads outside, but follows links inside', async () => {
    const keys = await keysOf(store);
    expect(keys).toEqual(['link-in', 'real/inside.txt']);
    expect((await collect(await store.read('link-in'))).toString()).toBe('inside');
    expect((await collect(await store.read('dir-in/inside.txt'))).toString()).toBe('inside');
  });

  it('replaces a symlink itself on write, never the file it points to', async () => {
    await store.write('file-out', 'replaced');
    expect(await readFile(join(outside, 'secret.txt'), 'utf8')).toBe('secret');
    expect((await collect(await store.read('file-out'))).toString()).toBe('replaced');
    await symlink(join(outside, 'secret.txt'), join(root, 'file-out2'));
    expect(await store.delete('file-out2')).toBe(true); // removes the link
    expect(await readFile(join(outside, 'secret.txt'), 'utf8')).toBe('secret');
  });

  it('works when the root itself is a symlink', async () => {
    await symlink(root, join(dir, 'root-link'));
    const s = await FileStore.open(join(dir, 'root-link'));
    expect((await collect(await s.read('real/inside.txt'))).toString()).toBe('inside');
    await s.write('via-link/k', 'v');
    expect(await readFile(join(root, 'via-link', 'k'), 'utf8')).toBe('v');
  });

  it('never lists temp files, and refuses them as keys', async () => {
    await mkdir(join(root, 'tmpdemo'), { recursive: true });
    await writeFile(join(root, '.lading-tmp-deadbeef'), 'partial');
    await writeFile(join(root, 'tmpdemo', '.lading-tmp-cafe'), 'partial');
    await writeFile(join(root, 'tmpdemo', 'done'), 'done');
    expect(await keysOf(store, 'tmpdemo/')).toEqual(['tmpdemo/done']);
    expect(await keysOf(store, '.lading')).toEqual([]);
    await expectCode(() => store.stat('tmpdemo/.lading-tmp-cafe'), 'UNSAFE_KEY');
    // During a slow write the temp file exists on disk but not in the store.
    const writing = store.write('tmpdemo/slow', slowStream([Buffer.alloc(1000), Buffer.alloc(1000)], 100));
    await sleep(150);
    expect((await readdir(join(root, 'tmpdemo'))).some((n) => n.startsWith('.lading-tmp-') && n !== '.lading-tmp-cafe')).toBe(true);
    expect(await keysOf(store, 'tmpdemo/')).toEqual(['tmpdemo/done']);
    await writing;
    expect(await keysOf(store, 'tmpdemo/')).toEqual(['tmpdemo/done', 'tmpdemo/slow']);
    expect((await readdir(join(root, 'tmpdemo'))).filter((n) => n.startsWith('.lading-tmp-'))).toEqual(['.lading-tmp-cafe']);
  });

  it('flushes a write (file and directory) unless it is asked not to; both are atomic', async () => {
    // A spy on the real FileHandle.sync (it still syncs): counts the flushes each write makes.
    const probe = await open(join(root, 'real', 'inside.txt'), 'r');
    const proto = Object.getPrototypeOf(probe) as { sync: () => Promise<void> };
    await probe.close();
    const sync = vi.spyOn(proto, 'sync');
    try {
      await store.write('flush/durable', 'kept');
      expect(sync).toHaveBeenCalledTimes(2); // the file's bytes, then its directory entry
      sync.mockClear();
      const r = await store.write('flush/marker', 'maybe lost in a crash', { durable: false });
      expect(sync).not.toHaveBeenCalled();
      expect(r).toMatchObject({ size: 21, checksum: `sha256:${createHash('sha256').update('maybe lost in a crash').digest('hex')}` });
    } finally {
      sync.mockRestore();
    }
    expect((await collect(await store.read('flush/marker'))).toString()).toBe('maybe lost in a crash');
    expect((await readdir(join(root, 'flush'))).sort()).toEqual(['durable', 'marker']); // no temp file left
  });

  it('writes whole aligned chunks on Lustre whatever the source yields, and a small body in one write', async () => {
    const lustre = await FileStore.open(root, { profile: 'lustre' });
    const chunk = lustre.profile.ioChunkBytes;
    const probe = await open(join(root, 'real', 'inside.txt'), 'r');
    const proto = Object.getPrototypeOf(probe) as { write: (...args: unknown[]) => Promise<{ bytesWritten: number }> };
    await probe.close();
    const write = vi.spyOn(proto, 'write'); // the real write, counted
    try {
      // Odd pieces, one larger than a chunk, straddling chunk boundaries: 10 MiB + 12345 bytes in all.
      const sizes = [100_000, 3 * 1024 * 1024, chunk + 77, 999, 3 * 1024 * 1024 - 100_000 - 77 - 999 + 12_345];
      const pieces = sizes.map((n, i) => Buffer.alloc(n, i + 1));
      const total = sizes.reduce((a, n) => a + n, 0);
      await lustre.write('aligned/big', Readable.from(pieces));
      const lengths = write.mock.calls.map((c) => (c[2] as number | undefined) ?? (c[0] as Buffer).length);
      expect(lengths.reduce((a, n) => a + n, 0)).toBe(total);
      for (const n of lengths.slice(0, -1)) expect(n % chunk).toBe(0); // every write but the tail is whole chunks
      expect((await collect(await lustre.read('aligned/big'))).equals(Buffer.concat(pieces))).toBe(true);
      write.mockClear();
      await lustre.write('aligned/small', 'tiny');
      expect(write).toHaveBeenCalledTimes(1);
    } finally {
      write.mockRestore();
    }
  });

  it('sweeps old temp files left by dead writers, not fresh ones', async () => {
    await mkdir(join(root, 'sweep'), { recursive: true });
    await writeFile(join(root, 'sweep', '.lading-tmp-old'), 'x');
    await writeFile(join(root, 'sweep', '.lading-tmp-new'), 'x');
    const old = new Date(Date.now() - 2 * 86400_000);
    await utimes(join(root, 'sweep', '.lading-tmp-old'), old, old);
    expect(await store.sweepTempFiles()).toBe(1);
    expect(await readdir(join(root, 'sweep'))).toEqual(['.lading-tmp-new']);
  });

  it('a copy whose source is replaced meanwhile returns the checksum of the bytes it left at the destination', async () => {
    // The kernel copies and the sha256 is taken of the source alongside: the etag check after both must
    // catch a source replaced between them (then the copy streams instead), never pair one version's bytes
    // with the other's checksum.
    const big = Buffer.alloc(24 * 1024 * 1024, 1);
    const other = Buffer.alloc(24 * 1024 * 1024, 2);
    for (const delayMs of [0, 1, 5, 20]) {
      await store.write('swap/src', big);
      const copying = store.copy('swap/src', 'swap/dst');
      await sleep(delayMs);
      await writeFile(join(root, 'swap', 'next.tmp'), other);
      await rename(join(root, 'swap', 'next.tmp'), join(root, 'swap', 'src'));
      const r = await copying;
      expect(await digestOf(await store.read('swap/dst')), `replaced after ${delayMs} ms`).toEqual({ size: r.size, checksum: r.checksum });
    }
  });

  it('reports CONFLICT when a key is both an object and a prefix', async () => {
    await store.write('conf/a', 'x');
    await expectCode(() => store.write('conf/a/b', 'y'), 'CONFLICT');
    await store.write('conf/d/e', 'y');
    await expectCode(() => store.write('conf/d', 'z'), 'CONFLICT');
    expect(await store.stat('conf/d')).toBeUndefined();
    await expectCode(() => store.read('conf/d'), 'NOT_FOUND');
    expect(await store.delete('conf/d')).toBe(false);
  });

  it('creates the root on first write and detects its mount kind before it exists', async () => {
    const s = await FileStore.open(join(dir, 'later', 'deep'));
    expect(s.profile.kind).toBe('local');
    expect(await keysOf(s)).toEqual([]);
    expect(await s.stat('x')).toBeUndefined();
    await s.write('x', 'y');
    expect((await stat(join(dir, 'later', 'deep', 'x'))).size).toBe(1);
  });

  it('exposes the profile: no SQLite or locks on NFS, large I/O on Lustre', async () => {
    const nfs = (await openStore(`file:${dir}/p?profile=nfs`)) as FileStore;
    expect(nfs.uri).toBe(`file:${dir}/p?profile=nfs`);
    expect(nfs.profile).toMatchObject({ kind: 'nfs', canHostSqlite: false, allowsLocks: false });
    const lustre = await FileStore.open(join(dir, 'p'), { profile: 'lustre' });
    expect(lustre.profile.ioChunkBytes).toBe(4 * 1024 * 1024);
  });

  it('stream errors from the body reach the caller unchanged', async () => {
    const body = new Readable({ read() { this.destroy(new Error('disk on fire')); } });
    await expect(store.write('err/k', body)).rejects.toThrow('disk on fire');
    expect(await keysOf(store, 'err/')).toEqual([]);
  });
});

describe('file driver: a writer killed with SIGKILL mid-write', () => {
  const dist = pathToFileURL(fileURLToPath(new URL('../dist/index.js', import.meta.url))).href;
  const script = `
    import { Readable } from 'node:stream';
    import { openStore } from ${JSON.stringify(dist)};
    const store = await openStore(process.argv[1]);
    const body = new Readable({ read() {} });
    store.write('victim/k', body).then(() => console.log('finished?!'));
    for (let i = 0; i < 8; i++) body.push(Buffer.alloc(1024 * 1024, 7));
    console.log('writing');
    setInterval(() => {}, 1000); // never end the body
  `;

  it('leaves the old object and no visible partial one', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'lading-kill-'));
    try {
      const store = await FileStore.open(join(dir, 'root'));
      await store.write('victim/k', 'old');
      const child = spawn(process.execPath, ['--input-type=module', '-e', script, `file:${join(dir, 'root')}`], { stdio: ['ignore', 'pipe', 'inherit'] });
      let out = '';
      child.stdout.on('data', (b: Buffer) => { out += b.toString(); });
      // Wait until the temp file holds data, then kill without a chance to clean up.
      const vdir = join(dir, 'root', 'victim');
      let tmp: string | undefined;
      for (let i = 0; i < 200 && tmp === undefined; i++) {
        await sleep(50);
        for (const n of await readdir(vdir)) {
          if (n.startsWith('.lading-tmp-') && (await stat(join(vdir, n))).size > 0) tmp = n;
        }
      }
      expect(tmp, `child output: ${out}`).toBeDefined();
      const exited = new Promise((r) => child.once('exit', r));
      child.kill('SIGKILL');
      await exited;
      expect(out).not.toContain('finished');

      expect((await collect(await store.read('victim/k'))).toString()).toBe('old');
      expect(await keysOf(store)).toEqual(['victim/k']);
      expect(await readdir(vdir)).toContain(tmp); // the debris is there, but invisible
      expect(await store.sweepTempFiles(0)).toBe(1);
      expect(await readdir(vdir)).toEqual(['k']);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
