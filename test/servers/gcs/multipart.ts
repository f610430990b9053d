import type { Readable } from 'node:stream';

/**
 * Streaming parser for the `multipart/related` body of a GCS `uploadType=multipart` request:
 * part 1 is the JSON object resource (buffered, small), part 2 is the media (streamed to `onData`,
 * never held whole in memory). This is the framing the JSON API and teeny-request use:
 *   --B\r\nContent-Type: application/json\r\n\r\n{...}\r\n--B\r\nContent-Type: x/y\r\n\r\n<bytes>\r\n--B--
 */
export interface MultipartResult {
  metadata: Record<string, unknown>;
  mediaContentType: string | undefined;
}

const MAX_META = 1024 * 1024;

export async function parseMultipartRelated(
  body: Readable,
  boundary: string,
  onData: (chunk: Buffer) => Promise<void>,
): Promise<MultipartResult> {
  const first = Buffer.from(`--${boundary}\r\n`);
  const delim = Buffer.from(`\r\n--${boundary}`);
  let pending: Buffer = Buffer.alloc(0);
  // states: 0 = expect first boundary, 1 = headers of part, 2 = part body, 3 = after closing boundary
  let state = 0;
  let part = 0;
  let headers: Record<string, string> = {};
  let metaBuf: Buffer[] = [];
  let metaLen = 0;
  let mediaContentType: string | undefined;
  let metadataText = '';

  const finishPart = (): void => {
    if (part === 0) metadataText = Buffer.concat(metaBuf).toString('utf8');
    part++;
  };

  for await (const raw of body) {
    pending = pending.length === 0 ? (raw as Buffer) : Buffer.concat([pending, raw as Buffer]);
    for (;;) {
      if (state === 0) {
        if (pending.length < first.length) break;
        if (!pending.subarray(0, first.length).equals(first)) throw new MultipartError('multipart body does not start with its boundary');
        pending = pending.subarray(first.length);
        state = 1;
        headers = {};
      } else if (state === 1) {
        const end = pending.indexOf('\r\n\r\n');
        if (end < 0) {
          if (pending.length > 16 * 1024) throw new MultipartError('multipart part headers too long');
          break;
        }
        for (const line of pending.subarray(0, end).toString('latin1').split('\r\n')) {
          const i = line.indexOf(':');
          if (i > 0) headers[line.slice(0, i).trim().toLowerCase()] = line.slice(i + 1).trim();
        }
        if (part === 1) mediaContentType = headers['content-type'];
        pending = pending.subarray(end + 4);
        state = 2;
      } else if (state === 2) {
        const at = pending.indexOf(delim);
        const take = at >= 0 ? at : Math.max(0, pending.length - (delim.length - 1));
        if (take > 0) {
          const data = pending.subarray(0, take);
          if (part === 0) {
            metaLen += data.length;
            if (metaLen > MAX_META) throw new MultipartError('multipart metadata part too large');
            metaBuf.push(Buffer.from(data));
          } else if (part === 1) {
            await onData(Buffer.from(data));
          }
          pending = pending.subarray(take);
        }
        if (at < 0) break;
        // At the delimiter: it is followed by "\r\n" (next part) or "--" (end).
        if (pending.length < delim.length + 2) break;
        const tail = pending.subarray(delim.length, delim.length + 2).toString('latin1');
        finishPart();
        metaBuf = [];
        if (tail === '--') {
          state = 3;
          pending = pending.subarray(delim.length + 2);
        } else if (tail === '\r\n') {
          state = 1;
          headers = {};
          pending = pending.subarray(delim.length + 2);
        } else {
          throw new MultipartError('malformed multipart delimiter');
        }
      } else {
        pending = Buffer.alloc(0); // epilogue is ignored
        break;
      }
    }
  }
  if (state !== 3) throw new MultipartError('multipart body ended before its closing boundary');
  if (part !== 2) throw new MultipartError(`multipart upload needs 2 parts (metadata, media), got ${part}`);
  let metadata: Record<string, unknown>;
  try {
    metadata = metadataText.trim() === '' ? {} : (JSON.parse(metadataText) as Record<string, unknown>);
  } catch {
    throw new MultipartError('multipart metadata part is not JSON');
  }
  return { metadata, mediaContentType };
}

export class MultipartError extends Error {}
