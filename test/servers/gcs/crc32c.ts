/**
 * CRC32C (Castagnoli, reflected polynomial 0x82F63B78), slicing-by-8, written here rather than borrowed
 * from the SDK under test so that the fake server checks the client with an independent implementation.
 * GCS reports it as base64 of the 4 big-endian bytes.
 */
const TABLES: Uint32Array[] = (() => {
  const t0 = new Uint32Array(256);
  for (let i = 0; i < 256; i++) {
    let c = i;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1;
    t0[i] = c >>> 0;
  }
  const tables = [t0];
  for (let s = 1; s < 8; s++) {
    const prev = tables[s - 1]!;
    const t = new Uint32Array(256);
    for (let i = 0; i < 256; i++) t[i] = (prev[i]! >>> 8) ^ t0[prev[i]! & 0xff]!;
    tables.push(t);
  }
  return tables;
})();

export class Crc32c {
  private crc = 0xffffffff;

  update(buf: Uint8Array): this {
    const [t0, t1, t2, t3, t4, t5, t6, t7] = TABLES as [Uint32Array, Uint32Array, Uint32Array, Uint32Array, Uint32Array, Uint32Array, Uint32Array, Uint32Array];
    let crc = this.crc;
    let i = 0;
    const n8 = buf.length - (buf.length % 8);
    for (; i < n8; i += 8) {
      const a = (buf[i]! | (buf[i + 1]! << 8) | (buf[i + 2]! << 16) | (buf[i + 3]! << 24)) ^ crc;
      crc =
        t7[a & 0xff]! ^ t6[(a >>> 8) & 0xff]! ^ t5[(a >>> 16) & 0xff]! ^ t4[a >>> 24]! ^
        t3[buf[i + 4]!]! ^ t2[buf[i + 5]!]! ^ t1[buf[i + 6]!]! ^ t0[buf[i + 7]!]!;
    }
    for (; i < buf.length; i++) crc = (crc >>> 8) ^ t0[(crc ^ buf[i]!) & 0xff]!;
    this.crc = crc >>> 0;
    return this;
  }

  /** The checksum as an unsigned 32-bit integer. */
  value(): number {
    return (this.crc ^ 0xffffffff) >>> 0;
  }

  /** The checksum the way the GCS JSON API spells it: base64 of the big-endian bytes. */
  base64(): string {
    const b = Buffer.alloc(4);
    b.writeUInt32BE(this.value(), 0);
    return b.toString('base64');
  }
}
