/**
 * An HTTP proxy in front of a test server that misbehaves on demand: answers 5xx / throttling errors
 * instead of forwarding, or flips a byte in upload bodies. Records every request it sees.
 */
import { createServer, request, type IncomingHttpHeaders } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Transform } from 'node:stream';

export interface SeenRequest {
  method: string;
  url: string;
  headers: IncomingHttpHeaders;
}

export interface FaultyProxy {
  endpoint: string;
  requests: SeenRequest[];
  /** Answer the next `n` requests with this status and S3 error code instead of forwarding them. */
  failNext(n: number, status?: number, code?: string): void;
  /** Flip one byte in the body of every PUT that carries data (PutObject, UploadPart). */
  corruptUploads: boolean;
  close(): Promise<void>;
}

export async function startFaultyProxy(target: string): Promise<FaultyProxy> {
  const t = new URL(target);
  let failures = 0;
  let failStatus = 503;
  let failCode = 'SlowDown';
  const state: FaultyProxy = {
    endpoint: '',
    requests: [],
    corruptUploads: false,
    failNext(n, status = 503, code = 'SlowDown') {
      failures = n;
      failStatus = status;
      failCode = code;
    },
    close: async () => {
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
  const server = createServer((req, res) => {
    state.requests.push({ method: req.method ?? '', url: req.url ?? '', headers: req.headers });
    if (failures > 0) {
      failures--;
      req.resume();
      res.writeHead(failStatus, { 'content-type': 'application/xml' });
      res.end(`<?xml version="1.0" encoding="UTF-8"?><Error><Code>${failCode}</Code><Message>injected by the test proxy</Message></Error>`);
      return;
    }
    const up = request({ host: t.hostname, port: t.port, method: req.method, path: req.url, headers: req.headers }, (ur) => {
      res.writeHead(ur.statusCode ?? 502, ur.headers);
      ur.pipe(res);
    });
    up.on('error', () => res.destroy());
    let flipped = false;
    const corrupt = state.corruptUploads && req.method === 'PUT' && Number(req.headers['content-length'] ?? 0) > 0;
    const body = new Transform({
      transform(chunk: Buffer, _enc, cb) {
        if (corrupt && !flipped && chunk.length > 0) {
          chunk = Buffer.from(chunk);
          const mid = chunk.length >> 1;
          chunk[mid] = chunk[mid]! ^ 0xff;
          flipped = true;
        }
        cb(null, chunk);
      },
    });
    req.pipe(body).pipe(up);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  state.endpoint = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return state;
}
