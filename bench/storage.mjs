// `bench storage`: lading's storage layer beside the tools and SDK calls a user would otherwise use, each
// pair measured in the same run, interleaved round by round (the order flips every round), medians reported.
//
//   file copy      FileStore.copy (kernel copy → temp file → fsync → rename, sha256 of the source alongside)  vs  `cp` + `sync FILE`
//                  (lading's copy is durable and atomic; a `cp` that has not reached the disk is not done, so
//                  the baseline flushes the copy too; plain `cp` is logged alongside).
//   file sha256    FileStore.read of the whole file, hashed by the reader          vs  `sha256sum FILE`
//   S3 put / get   S3Store.write / read on an s3rver started here  vs  @aws-sdk lib-storage Upload (same part
//                  size and queue size) / HEAD + parallel ranged GETs (same part size and concurrency).
//   warm cache     CachedStore over FileStore, every block cached                  vs  fs.createReadStream
//   cold fan-in    8 processes read one uncached object through one cache directory at once: backend fetches
//                  per block (must be exactly 1).
//   claim check    Queue.publish of a 100 MiB body with a file store              vs  the store write alone.
//   peak RSS       a child process copying a 10 GiB file (quick: 1 GiB) through the file driver, and putting
//                  the S3 object: VmHWM, against a 256 MiB budget.
//
// Page cache: every input file is read once before the first round, and each round reads it again for both
// systems (order alternating), so neither side gets a colder cache than the other; destinations are deleted
// (and the disk synced) between measurements so one side's writeback never lands in the other's time.
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, createWriteStream, mkdirSync, readFileSync, rmSync, statSync, statfsSync, writeFileSync } from 'node:fs';
import { open, rm } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { loadavg } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { pipeline } from 'node:stream/promises';
import { pathToFileURL } from 'node:url';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};

function exec(cmd, args, opts = {}) {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], ...opts });
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (err += d));
    child.on('error', reject);
    child.on('close', (code) => (code === 0 ? resolve(out) : reject(new Error(`${cmd} ${args.join(' ')} exited ${code}: ${err}`))));
  });
}

async function timed(fn) {
  const t0 = performance.now();
  await fn();
  return (performance.now() - t0) / 1000;
}

/** A file of `bytes` made of one random 1 MiB block repeated (cheap to write, not sparse, not compressible per block). */
async function makeFile(path, bytes) {
  const block = randomBytes(MiB);
  const fh = await open(path, 'w');
  try {
    for (let off = 0; off < bytes; off += MiB) await fh.write(block, 0, Math.min(MiB, bytes - off));
    await fh.sync();
  } finally {
    await fh.close();
  }
}

async function drain(stream, hash) {
  let n = 0;
  for await (const c of stream) {
    n += c.length;
    hash?.update(c);
  }
  return n;
}

async function readAll(path) {
  await drain(createReadStream(path, { highWaterMark: MiB }));
}

function freeBytes(dir) {
  const s = statfsSync(dir);
  return Number(s.bavail) * Number(s.bsize);
}

/** Run the measured pair `rounds` times, order flipped every round; returns arrays of seconds. */
async function interleave(ctx, label, rounds, a, b, between = async () => {}) {
  const ta = [];
  const tb = [];
  for (let r = 0; r < rounds; r++) {
    const steps = [async () => ta.push(await a(r)), async () => tb.push(await b(r))];
    for (const step of r % 2 ? steps.reverse() : steps) {
      await step();
      await between();
    }
    ctx.log(`${label} round ${r + 1}/${rounds}: lading ${ta.at(-1).toFixed(3)} s, baseline ${tb.at(-1).toFixed(3)} s`);
  }
  return [ta, tb];
}

/** Throughput row (MiB/s, higher is better) from seconds per run. */
function rateRow(name, baseName, bytes, ta, tb, target, targetRatio, note) {
  const ra = ta.map((t) => bytes / MiB / t);
  const rb = tb.map((t) => bytes / MiB / t);
  return {
    name, value: median(ra), unit: 'MiB/s', higherIsBetter: true, samples: ra,
    baseline: { name: baseName, value: median(rb), samples: rb }, target, targetRatio, ...(note ? { note } : {}),
  };
}

// ---- child processes ---------------------------------------------------------------------------

/** Script run in a child: peak RSS of a copy / put, and one reader of the cold fan-in. */
const CHILD = String.raw`
import { createHash } from 'node:crypto';
import { createReadStream, readFileSync } from 'node:fs';
const [mode, storageUrl, argJson] = process.argv.slice(2);
const arg = JSON.parse(argJson);
const storage = await import(storageUrl);
const hwm = () => Number(/VmHWM:\s+(\d+)/.exec(readFileSync('/proc/self/status', 'utf8'))[1]) * 1024;
if (mode === 'copy') {
  const store = await storage.FileStore.open(arg.dir);
  const r = await store.copy(arg.from, arg.to);
  console.log(JSON.stringify({ size: r.size, hwm: hwm(), maxRSS: process.resourceUsage().maxRSS * 1024 }));
} else if (mode === 'stream') {
  // Two stores (as \`lading store cp\` between two directories): read stream → sha256 → write, no kernel copy.
  const from = await storage.FileStore.open(arg.fromDir);
  const to = await storage.FileStore.open(arg.toDir);
  const r = await to.write(arg.to, await from.read(arg.from));
  console.log(JSON.stringify({ size: r.size, hwm: hwm(), maxRSS: process.resourceUsage().maxRSS * 1024 }));
} else if (mode === 'put') {
  const store = await storage.openStore(arg.uri, { s3: { credentials: arg.credentials } });
  const r = await store.write(arg.key, createReadStream(arg.file), { sizeHint: arg.size });
  await store.close();
  console.log(JSON.stringify({ size: r.size, hwm: hwm(), maxRSS: process.resourceUsage().maxRSS * 1024 }));
} else if (mode === 'reader') {
  const inner = await storage.openStore(arg.uri, { s3: { credentials: arg.credentials } });
  let fetches = 0;
  const counting = {
    uri: inner.uri, kind: inner.kind,
    stat: (k) => inner.stat(k),
    read: (k, o) => { fetches++; return inner.read(k, o); },
    write: (...a) => inner.write(...a), list: (...a) => inner.list(...a), delete: (k) => inner.delete(k),
    copy: (...a) => inner.copy(...a), close: () => inner.close(),
  };
  const cached = await storage.withCache(counting, { dir: arg.cacheDir, blockSize: arg.blockSize, maxBytes: arg.maxBytes });
  process.stdout.write('ready\n');
  await new Promise((r) => process.stdin.once('data', r));
  const hash = createHash('sha256');
  let n = 0;
  for await (const c of await cached.read(arg.key)) { n += c.length; hash.update(c); }
  await cached.close();
  console.log(JSON.stringify({ fetches, bytes: n, sha256: hash.digest('hex') }));
}
`;

function child(ctx, script, args, { onReady } = {}) {
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, [script, ...args], { stdio: ['pipe', 'pipe', 'pipe'], env: { ...process.env, AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true' } });
    let out = '';
    let err = '';
    let readySeen = false;
    p.stdout.setEncoding('utf8').on('data', (d) => {
      out += d;
      if (!readySeen && out.includes('ready\n')) {
        readySeen = true;
        onReady?.(() => p.stdin.end('go\n'));
      }
    });
    p.stderr.setEncoding('utf8').on('data', (d) => (err += d));
    p.on('error', reject);
    if (!onReady) p.stdin.end();
    p.on('close', (code) => {
      if (code !== 0) return reject(new Error(`child ${args[0]} exited ${code}: ${err}`));
      const last = out.trim().split('\n').at(-1);
      resolve(JSON.parse(last));
    });
  });
}

// ---- s3rver ------------------------------------------------------------------------------------

async function startS3rver(ctx, dir, bucket) {
  const bin = join(ctx.root, 'node_modules', 's3rver', 'bin', 's3rver.js');
  mkdirSync(dir, { recursive: true });
  const p = spawn(process.execPath, [bin, '-d', dir, '-a', '127.0.0.1', '-p', '0', '-s', '--configure-bucket', bucket], {
    env: { ...process.env, NODE_OPTIONS: '--openssl-legacy-provider' }, stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  const port = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`s3rver did not start: ${output}`)), 20_000);
    const on = (b) => {
      output += b;
      const m = /listening on [\d.]+:(\d+)/.exec(output);
      if (m) { clearTimeout(timer); resolve(Number(m[1])); }
    };
    p.stdout.on('data', on);
    p.stderr.on('data', on);
    p.once('exit', (code) => { clearTimeout(timer); reject(new Error(`s3rver exited ${code}: ${output}`)); });
  });
  p.stdout.resume();
  p.stderr.resume();
  return {
    endpoint: `http://127.0.0.1:${port}`,
    pid: p.pid,
    async stop() {
      if (p.exitCode === null && p.signalCode === null) {
        const exited = new Promise((r) => p.once('exit', r));
        p.kill('SIGTERM');
        await exited;
      }
    },
  };
}

// ---- main --------------------------------------------------------------------------------------

export async function run(ctx) {
  process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';
  const storage = await ctx.importPackage('storage');
  const core = await ctx.importPackage('core');
  const storageUrl = pathToFileURL(join(ctx.root, 'packages', 'storage', 'dist', 'index.js')).href;
  const req = createRequire(join(ctx.root, 'packages', 'storage', 'package.json'));
  const { S3Client, HeadObjectCommand, GetObjectCommand, DeleteObjectCommand } = await import(pathToFileURL(req.resolve('@aws-sdk/client-s3')).href);
  const { Upload } = await import(pathToFileURL(req.resolve('@aws-sdk/lib-storage')).href);

  const dir = ctx.workDir;
  const rounds = ctx.size('LADING_BENCH_ROUNDS', 5, 3);
  const fileBytes = ctx.size('LADING_BENCH_FILE_MIB', 2048, 256) * MiB;
  const s3Bytes = ctx.size('LADING_BENCH_S3_MIB', 1024, 128) * MiB;
  const cacheBytes = ctx.size('LADING_BENCH_CACHE_MIB', 1024, 128) * MiB;
  const rssBytes = ctx.size('LADING_BENCH_RSS_MIB', 10240, 1024) * MiB;
  const ccBytes = ctx.size('LADING_BENCH_CLAIM_MIB', 100, 100) * MiB;
  const readers = ctx.size('LADING_BENCH_READERS', 8, 8);
  const rows = [];
  const notes = [];
  const sync = () => exec('sync', []);

  const need = 2 * fileBytes + rssBytes * 2 + s3Bytes * 3 + 2 * GiB;
  const free = freeBytes(dir);
  if (free < need) throw new Error(`bench storage needs about ${(need / GiB).toFixed(1)} GiB free in ${dir}, ${(free / GiB).toFixed(1)} GiB are (lower LADING_BENCH_FILE_MIB / LADING_BENCH_RSS_MIB, or LADING_BENCH_QUICK=1)`);

  const script = join(dir, 'child.mjs');
  writeFileSync(script, CHILD);

  // ---- file driver: copy and checksummed read ----------------------------------------------------
  {
    const fdir = join(dir, 'file');
    mkdirSync(fdir, { recursive: true });
    const src = join(fdir, 'src.bin');
    ctx.log(`writing a ${fileBytes / MiB} MiB input file`);
    await makeFile(src, fileBytes);
    const store = await storage.FileStore.open(fdir);
    await readAll(src); // warm: both sides read from the page cache from now on
    const dst = (who) => join(fdir, `dst-${who}.bin`);
    const cleanup = async () => {
      await rm(dst('lading'), { force: true });
      await rm(dst('cp'), { force: true });
      await sync();
    };
    const cpPlain = [];
    const [lc, bc] = await interleave(ctx, 'file copy', rounds,
      async () => timed(async () => {
        const r = await store.copy('src.bin', 'dst-lading.bin');
        if (r.size !== fileBytes) throw new Error('short copy');
      }),
      async () => {
        const t = await timed(async () => {
          await exec('cp', [src, dst('cp')]);
          await exec('sync', [dst('cp')]); // coreutils sync FILE: fsync(2) of that file
        });
        return t;
      },
      cleanup,
    );
    // Plain cp (page cache only, nothing durable), for reference.
    for (let r = 0; r < Math.min(rounds, 3); r++) {
      cpPlain.push(await timed(() => exec('cp', [src, dst('cp')])));
      await cleanup();
    }
    rows.push(rateRow(`file driver copy, ${fileBytes / MiB} MiB (sha256 + fsync + rename)`, 'cp + sync FILE', fileBytes, lc, bc, '≥ 0.9×', 0.9));
    notes.push(`file copy: plain \`cp\` without a flush took a median ${median(cpPlain).toFixed(2)} s (${(fileBytes / MiB / median(cpPlain)).toFixed(0)} MiB/s) — it returns before the bytes are on disk; lading's copy is durable (fsync before rename), so the row compares it with \`cp\` followed by \`sync FILE\`.`);

    const [lh, bh] = await interleave(ctx, 'file sha256', rounds,
      async () => timed(async () => {
        const hash = createHash('sha256');
        const n = await drain(await store.read('src.bin'), hash);
        if (n !== fileBytes) throw new Error('short read');
        hash.digest('hex');
      }),
      async () => timed(() => exec('sha256sum', [src])),
    );
    rows.push(rateRow(`file driver read + sha256, ${fileBytes / MiB} MiB`, 'sha256sum', fileBytes, lh, bh, '≥ 0.9×', 0.9));
    await store.close();
    rmSync(fdir, { recursive: true, force: true });
  }

  // ---- S3 put / get on s3rver ----------------------------------------------------------------------
  const bucket = 'lading-bench';
  const s3dir = join(dir, 's3rver');
  const server = await startS3rver(ctx, s3dir, bucket);
  const credentials = { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' };
  const s3uri = `s3://${bucket}?endpoint=${encodeURIComponent(server.endpoint)}&region=us-east-1&forcePathStyle=true`;
  const s3src = join(dir, 's3-src.bin');
  try {
    await makeFile(s3src, s3Bytes);
    await readAll(s3src);
    const partSize = 16 * MiB;
    const queueSize = 4;
    const readPart = 8 * MiB;
    const readConcurrency = 4;
    const store = await storage.openStore(s3uri, { s3: { credentials, partSize, queueSize, readPartSize: readPart, readConcurrency } });
    const client = new S3Client({
      region: 'us-east-1', endpoint: server.endpoint, forcePathStyle: true, credentials,
      requestChecksumCalculation: 'WHEN_REQUIRED', responseChecksumValidation: 'WHEN_REQUIRED',
    });
    const del = async (Key) => client.send(new DeleteObjectCommand({ Bucket: bucket, Key })).catch(() => undefined);
    const [lp, bp] = await interleave(ctx, 's3 put', rounds,
      async (r) => timed(async () => {
        const w = await store.write(`put/lading-${r}`, createReadStream(s3src, { highWaterMark: MiB }), { sizeHint: s3Bytes });
        if (w.size !== s3Bytes) throw new Error('short put');
      }),
      async (r) => timed(async () => {
        const up = new Upload({ client, queueSize, partSize, leavePartsOnError: false, params: { Bucket: bucket, Key: `put/sdk-${r}`, Body: createReadStream(s3src, { highWaterMark: MiB }) } });
        await up.done();
      }),
    );
    rows.push(rateRow(`S3 put, ${s3Bytes / MiB} MiB (s3rver)`, `SDK lib-storage Upload (${partSize / MiB} MiB parts × ${queueSize})`, s3Bytes, lp, bp, '≥ 1.0×', 1.0));
    for (let r = 1; r < rounds; r++) { await del(`put/lading-${r}`); await del(`put/sdk-${r}`); }

    // GET: both read the object lading uploaded (sha256 stored in its metadata: lading verifies it on the way).
    const key = 'put/lading-0';
    const sdkGet = async () => {
      const head = await client.send(new HeadObjectCommand({ Bucket: bucket, Key: key }));
      const size = head.ContentLength;
      const inflight = [];
      let next = 0;
      let got = 0;
      const launch = () => {
        const s = next;
        const e = Math.min(size, s + readPart);
        next = e;
        inflight.push(client.send(new GetObjectCommand({ Bucket: bucket, Key: key, Range: `bytes=${s}-${e - 1}`, IfMatch: head.ETag })).then((o) => o.Body.transformToByteArray()));
      };
      while (next < size && inflight.length < readConcurrency) launch();
      while (inflight.length) {
        const b = await inflight.shift();
        if (next < size) launch();
        got += b.length;
      }
      if (got !== size) throw new Error('short get');
    };
    const [lg, bg] = await interleave(ctx, 's3 get', rounds,
      async () => timed(async () => {
        const n = await drain(await store.read(key));
        if (n !== s3Bytes) throw new Error('short get');
      }),
      async () => timed(sdkGet),
    );
    rows.push(rateRow(`S3 get, ${s3Bytes / MiB} MiB (s3rver; multipart object: length-checked, no stored sha256)`, `SDK HEAD + ranged GETs (${readPart / MiB} MiB × ${readConcurrency})`, s3Bytes, lg, bg, '≥ 1.0×', 1.0));
    client.destroy();

    // ---- cold fan-in: N processes, one object, one cache ----------------------------------------------
    {
      const blockSize = 4 * MiB;
      const objBytes = ctx.quick ? 64 * MiB : 256 * MiB;
      const fanKey = 'fan/object.bin';
      const body = join(dir, 'fan.bin');
      await makeFile(body, objBytes);
      const w = await store.write(fanKey, createReadStream(body), { sizeHint: objBytes });
      const want = w.checksum.slice(7);
      rmSync(body, { force: true });
      const cacheDir = join(dir, 'fan-cache');
      const arg = JSON.stringify({ uri: s3uri, credentials, cacheDir, key: fanKey, blockSize, maxBytes: 4 * objBytes });
      const gates = [];
      let ready = 0;
      const all = new Promise((resolveAll) => {
        for (let i = 0; i < readers; i++) {
          gates.push(child(ctx, script, ['reader', storageUrl, arg], {
            onReady: (go) => {
              gates[i].go = go;
              if (++ready === readers) resolveAll();
            },
          }));
        }
      });
      await all;
      for (const g of gates) g.go();
      const results = await Promise.all(gates);
      const blocks = Math.ceil(objBytes / blockSize);
      const fetches = results.reduce((n, r) => n + r.fetches, 0);
      const bad = results.filter((r) => r.sha256 !== want || r.bytes !== objBytes).length;
      if (bad) throw new Error(`${bad} of ${readers} concurrent readers got wrong bytes`);
      rows.push({
        name: `cache: ${readers} processes read one cold ${objBytes / MiB} MiB S3 object at once: backend fetches per block`,
        value: fetches / blocks, unit: 'fetches/block', higherIsBetter: false,
        baseline: { name: 'one fetch per block', value: 1 }, target: '= 1', targetRatio: 1,
        note: `${fetches} fetches for ${blocks} blocks of ${blockSize / MiB} MiB; per reader: ${results.map((r) => r.fetches).join(', ')}; all ${readers} readers got the right sha256`,
      });
      ctx.log(`cold fan-in: ${fetches} fetches for ${blocks} blocks (${results.map((r) => r.fetches).join(', ')})`);
      rmSync(cacheDir, { recursive: true, force: true });
    }

    // ---- peak RSS of an S3 put in a child -------------------------------------------------------------
    {
      const r = await child(ctx, script, ['put', storageUrl, JSON.stringify({ uri: s3uri, credentials, key: 'rss/put.bin', file: s3src, size: s3Bytes })]);
      rows.push({
        name: `peak RSS of a process putting a ${s3Bytes / MiB} MiB file to S3 (16 MiB parts × 4)`, value: r.hwm / MiB, unit: 'MiB', higherIsBetter: false,
        baseline: { name: 'budget', value: 256 }, target: '≤ 256 MiB', targetRatio: 1,
      });
    }
    await store.close();
  } finally {
    await server.stop();
    rmSync(s3dir, { recursive: true, force: true });
    rmSync(s3src, { force: true });
  }

  // ---- warm cache read vs plain file read ----------------------------------------------------------
  {
    const cdir = join(dir, 'cache-src');
    mkdirSync(cdir, { recursive: true });
    const path = join(cdir, 'obj.bin');
    await makeFile(path, cacheBytes);
    const cached = await storage.withCache(await storage.FileStore.open(cdir), { dir: join(dir, 'cache'), maxBytes: 4 * cacheBytes + GiB });
    await drain(await cached.read('obj.bin')); // fill
    await drain(await cached.read('obj.bin')); // warm the block files' pages
    await readAll(path);
    // A warm read of a small object takes tens of ms, where one scheduler hiccup on a busy machine decides a
    // round: each sample reads the object `reps` times (≥ 1 GiB), on both sides.
    const reps = Math.max(1, Math.ceil(GiB / cacheBytes));
    const [lw, bw] = await interleave(ctx, 'warm cache', rounds,
      async () => timed(async () => {
        for (let i = 0; i < reps; i++) {
          const n = await drain(await cached.read('obj.bin'));
          if (n !== cacheBytes) throw new Error('short read');
        }
      }),
      async () => timed(async () => { for (let i = 0; i < reps; i++) await readAll(path); }),
    );
    rows.push(rateRow(`warm cache read, ${cacheBytes / MiB} MiB${reps > 1 ? ` × ${reps}` : ''} (every block cached)`, 'fs.createReadStream of the same bytes', cacheBytes * reps, lw, bw, '≥ 0.9×', 0.9));
    await cached.close();
    rmSync(cdir, { recursive: true, force: true });
    rmSync(join(dir, 'cache'), { recursive: true, force: true });
  }

  // ---- claim-check publish vs the store write alone ------------------------------------------------
  {
    const qdir = join(dir, 'claim');
    mkdirSync(qdir, { recursive: true });
    const store = await storage.FileStore.open(join(qdir, 'store'));
    const queue = await core.openQueue({ uri: `sqlite:${join(qdir, 'queue.db')}`, store });
    await queue.createTopic('big');
    // A body of ~ccBytes of JSON: one long base64 string, different in every round (payloads are content-addressed).
    const base = randomBytes(Math.floor((ccBytes - 64) * 3 / 4)).toString('base64');
    const bodyOf = (tag) => ({ tag, data: base });
    // warm-up (sqlite, store root, first fsyncs)
    await queue.publish('big', bodyOf('warm'));
    await store.write('alone/warm', JSON.stringify(bodyOf('warm-alone')));
    // More rounds than the other rows: the two sides differ by one sha256 pass over the body (~3 % of the time,
    // content addressing needs the hash before the write), less than one 100 MiB write's noise on a shared disk.
    const [lq, bq] = await interleave(ctx, 'claim check', Math.max(rounds, 7),
      async (r) => {
        const body = bodyOf(`lading-${r}`);
        return timed(() => queue.publish('big', body));
      },
      async (r) => {
        const body = bodyOf(`alone-${r}`);
        return timed(() => store.write(`alone/${r}`, JSON.stringify(body), { contentType: 'application/json' }));
      },
      sync,
    );
    const bytes = Buffer.byteLength(JSON.stringify(bodyOf('lading-0')));
    rows.push({
      name: `claim-check publish of a ${(bytes / MiB).toFixed(0)} MiB body (file store)`, value: median(lq), unit: 's', higherIsBetter: false, samples: lq,
      baseline: { name: 'JSON.stringify + the store write of the same body alone', value: median(bq), samples: bq }, target: '≥ 0.95× (≤ 1.05× the time)', targetRatio: 0.95,
    });
    await queue.close();
    await store.close();
    rmSync(qdir, { recursive: true, force: true });
  }

  // ---- peak RSS of a large file copy in a child ----------------------------------------------------
  {
    const rdir = join(dir, 'rss');
    mkdirSync(rdir, { recursive: true });
    ctx.log(`writing a ${rssBytes / MiB} MiB file for the peak-RSS copy`);
    await makeFile(join(rdir, 'big.bin'), rssBytes);
    mkdirSync(join(rdir, 'out'), { recursive: true });
    const streamed = await child(ctx, script, ['stream', storageUrl, JSON.stringify({ fromDir: rdir, from: 'big.bin', toDir: join(rdir, 'out'), to: 'copy.bin' })]);
    if (streamed.size !== rssBytes) throw new Error('short streamed copy');
    rmSync(join(rdir, 'out'), { recursive: true, force: true });
    await sync();
    const copied = await child(ctx, script, ['copy', storageUrl, JSON.stringify({ dir: rdir, from: 'big.bin', to: 'copy.bin' })]);
    if (copied.size !== rssBytes) throw new Error('short copy');
    rows.push({
      name: `peak RSS of a process streaming a ${rssBytes / GiB} GiB file through the file driver (read → sha256 → write, two stores)`, value: streamed.hwm / MiB, unit: 'MiB', higherIsBetter: false,
      baseline: { name: 'budget', value: 256 }, target: '≤ 256 MiB', targetRatio: 1,
    });
    rows.push({
      name: `peak RSS of a process copying a ${rssBytes / GiB} GiB file with FileStore.copy (kernel copy + sha256 of the source)`, value: copied.hwm / MiB, unit: 'MiB', higherIsBetter: false,
      baseline: { name: 'budget', value: 256 }, target: '≤ 256 MiB', targetRatio: 1,
    });
    rmSync(rdir, { recursive: true, force: true });
  }

  notes.push(`Medians of ${rounds} interleaved rounds (order flipped every round); inputs read once before the first round so both sides read from the page cache; 1-min load average at the end ${loadavg()[0].toFixed(1)}.`);
  notes.push('S3 rows run against s3rver on 127.0.0.1 (a single Node process that MD5s and writes every byte itself): they compare the clients on equal terms, not S3 throughput.');
  return { rows, notes, meta: { 'file MiB': fileBytes / MiB, 'S3 MiB': s3Bytes / MiB } };
}
