// A throw-away local redis-server for the BullMQ baselines: 127.0.0.1, a random free port, its own temp
// dir, AOF with fsync every second (BullMQ's usual durable setup), no RDB snapshots. Installed with apt
// when missing (root, or passwordless sudo); otherwise the caller prints a skip line.
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';

function findRedis() {
  if (process.env.LADING_BENCH_REDIS_SERVER) return existsSync(process.env.LADING_BENCH_REDIS_SERVER) ? process.env.LADING_BENCH_REDIS_SERVER : undefined;
  for (const dir of (process.env.PATH ?? '').split(':').concat(['/usr/bin', '/usr/sbin', '/usr/local/bin'])) {
    if (dir && existsSync(join(dir, 'redis-server'))) return join(dir, 'redis-server');
  }
  return undefined;
}

function run(cmd, args, log) {
  log(`$ ${[cmd, ...args].join(' ')}`);
  const r = spawnSync(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'], encoding: 'utf8', env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' }, timeout: 300_000 });
  if (r.error) return r.error.message;
  if (r.status !== 0) return (r.stderr || `exit ${r.status}`).trim().split('\n').slice(-3).join(' / ');
  return undefined;
}

/** Path of redis-server, installing Debian's package if needed; `{ skip }` with the reason when impossible. */
export function ensureRedisServer(log) {
  const found = findRedis();
  if (found) return { path: found };
  if (process.env.LADING_BENCH_NO_INSTALL === '1') return { skip: 'redis-server is not installed (LADING_BENCH_NO_INSTALL=1: not installing it)' };
  const error = installRedis(log);
  if (error) return { skip: error };
  const path = findRedis();
  return path ? { path } : { skip: 'redis-server was installed but is not on PATH' };
}

/** `apt-get update && apt-get install -y redis-server`, as root or with passwordless sudo; returns an error text or undefined. */
export function installRedis(log) {
  if (!existsSync('/usr/bin/apt-get')) return 'redis-server is not installed and there is no apt-get to install it (install Redis 7 and put redis-server on PATH)';
  let prefix = [];
  if (process.getuid?.() !== 0) {
    const sudo = spawnSync('sudo', ['-n', 'true'], { stdio: 'ignore' });
    if (sudo.error || sudo.status !== 0) return 'redis-server is not installed and installing it needs root (run `sudo apt-get install -y redis-server`, then the bench again)';
    prefix = ['sudo', '-n', 'env', 'DEBIAN_FRONTEND=noninteractive'];
  }
  log("redis-server is missing: installing Debian's redis-server for the BullMQ baseline");
  const apt = (...args) => (prefix.length ? run(prefix[0], [...prefix.slice(1), 'apt-get', ...args], log) : run('apt-get', args, log));
  const e1 = apt('update');
  if (e1) return `apt-get update failed: ${e1}`;
  const e2 = apt('install', '-y', 'redis-server');
  if (e2) return `apt-get install -y redis-server failed: ${e2}`;
  return undefined;
}

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/** Start redis-server; resolves `{ port, host, version, stop() }`. */
export async function startRedis(binary, dir, log) {
  mkdirSync(dir, { recursive: true });
  const version = (spawnSync(binary, ['--version'], { encoding: 'utf8' }).stdout ?? '').match(/v=(\S+)/)?.[1] ?? '?';
  for (let tries = 0; ; tries++) {
    const port = await freePort();
    const child = spawn(binary, [
      '--port', String(port), '--bind', '127.0.0.1', '--dir', dir,
      '--appendonly', 'yes', '--appendfsync', 'everysec', '--save', '',
      '--maxmemory-policy', 'noeviction', '--daemonize', 'no', '--logfile', '',
    ], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    const ready = await new Promise((resolve) => {
      const timer = setTimeout(() => resolve(false), 10_000);
      const onData = (b) => {
        out += b.toString();
        if (out.length > 20_000) out = out.slice(-10_000); // bounded
        if (/Ready to accept connections/.test(out)) { clearTimeout(timer); resolve(true); }
      };
      child.stdout.on('data', onData);
      child.stderr.on('data', onData);
      child.once('exit', () => { clearTimeout(timer); resolve(false); });
    });
    if (!ready) {
      child.kill('SIGKILL');
      if (tries < 2 && /Address already in use/.test(out)) continue;
      throw new Error(`redis-server did not start: ${out.trim().split('\n').slice(-3).join(' / ')}`);
    }
    child.stdout.resume();
    child.stderr.resume();
    const exited = new Promise((resolve) => { if (child.exitCode !== null) resolve(); else child.once('exit', resolve); });
    const killOnExit = () => { try { child.kill('SIGKILL'); } catch { /* gone */ } };
    process.once('exit', killOnExit);
    log(`redis-server ${version} on 127.0.0.1:${port} (appendonly yes, appendfsync everysec, save '')`);
    return {
      host: '127.0.0.1', port, version,
      async stop() {
        process.off('exit', killOnExit);
        if (child.exitCode === null) {
          child.kill('SIGTERM');
          const t = setTimeout(() => child.kill('SIGKILL'), 5000);
          await exited;
          clearTimeout(t);
        }
        rmSync(dir, { recursive: true, force: true });
      },
    };
  }
}
