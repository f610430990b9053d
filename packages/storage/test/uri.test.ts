import { describe, expect, it } from 'vitest';
import { checkKey, checkPrefix, openStore, parseStoreUri } from '@lading/storage';
import { LadingError } from '@lading/core';

function badUri(uri: string): LadingError {
  try {
    parseStoreUri(uri, { cwd: '/work' });
  } catch (e) {
    expect(e).toBeInstanceOf(LadingError);
    expect((e as LadingError).code).toBe('BAD_URI');
    expect((e as LadingError).message).toContain(JSON.stringify(uri));
    expect((e as LadingError).hint).toContain('s3://bucket/prefix');
    return e as LadingError;
  }
  throw new Error(`${uri} parsed`);
}

describe('store URIs', () => {
  it('parses file URIs in all three spellings', () => {
    expect(parseStoreUri('file:./rel/path', { cwd: '/work' })).toEqual({ scheme: 'file', path: '/work/rel/path', profile: undefined, uri: 'file:/work/rel/path' });
    expect(parseStoreUri('file:rel', { cwd: '/work' })).toMatchObject({ path: '/work/rel' });
    expect(parseStoreUri('file:/abs/path')).toMatchObject({ path: '/abs/path', uri: 'file:/abs/path' });
    expect(parseStoreUri('file:///abs/my%20dir')).toMatchObject({ path: '/abs/my dir' });
    expect(parseStoreUri('file://localhost/abs')).toMatchObject({ path: '/abs' });
    expect(parseStoreUri('file:/mnt/x?profile=lustre')).toMatchObject({ path: '/mnt/x', profile: 'lustre', uri: 'file:/mnt/x?profile=lustre' });
  });

  it('parses s3 and gs URIs with their parameters', () => {
    expect(parseStoreUri('s3://bucket/prefix?endpoint=http://127.0.0.1:9000&region=us-east-1&forcePathStyle=true')).toEqual({
      scheme: 's3', bucket: 'bucket', prefix: 'prefix/', endpoint: 'http://127.0.0.1:9000', region: 'us-east-1', forcePathStyle: true,
      uri: 's3://bucket/prefix/?endpoint=http%3A%2F%2F127.0.0.1%3A9000&region=us-east-1&forcePathStyle=true',
    });
    expect(parseStoreUri('s3://my.bucket-1')).toMatchObject({ bucket: 'my.bucket-1', prefix: '', endpoint: undefined, region: undefined, forcePathStyle: undefined, uri: 's3://my.bucket-1' });
    expect(parseStoreUri('s3://b1b/a/b/')).toMatchObject({ prefix: 'a/b/' });
    expect(parseStoreUri('gs://bucket/p%20q?endpoint=http://127.0.0.1:4443')).toEqual({
      scheme: 'gs', bucket: 'bucket', prefix: 'p q/', endpoint: 'http://127.0.0.1:4443', uri: 'gs://bucket/p%20q/?endpoint=http%3A%2F%2F127.0.0.1%3A4443',
    });
  });

  it.each([
    ['', 'empty'],
    ['./data', 'no scheme'],
    ['/abs/path', 'no scheme'],
    ['ftp://host/x', 'unknown scheme'],
    ['file:', 'the path is empty'],
    ['file://server/share', 'cannot name a host'],
    ['file:/x?profile=ceph', 'profile must be one of'],
    ['file:/x?mode=fast', 'unknown parameter `mode`'],
    ['file:/x#frag', 'fragments'],
    ['s3://', 'bucket name is missing'],
    ['s3:bucket/x', 's3://bucket/prefix'],
    ['s3://Bucket/x', 'not a valid bucket name'],
    ['s3://b/x', 'not a valid bucket name'],
    ['s3://bucket/../x', 'unsafe'],
    ['s3://bucket/a//b', 'unsafe'],
    ['s3://bucket/x?endpoint=localhost:9000', 'not an http(s) URL'],
    ['s3://bucket/x?forcePathStyle=yes', 'forcePathStyle must be true or false'],
    ['s3://bucket/x?region=a&region=b', 'given twice'],
    ['s3://bucket/x?acl=public', 'unknown parameter `acl`'],
    ['gs://bucket/x?region=eu', 'unknown parameter `region`'],
    ['gs://bucket/%zz', 'malformed percent-escape'],
  ])('refuses %j (%s)', (uri, why) => {
    expect(badUri(uri).message).toContain(why);
  });

  it('openStore dispatches by scheme and refuses bad URIs', async () => {
    const s = await openStore('file:./x', { cwd: '/tmp/lading-uri-test' });
    expect(s.kind).toBe('file');
    expect(s.uri).toBe('file:/tmp/lading-uri-test/x');
    const s3 = await openStore('s3://bucket/p?endpoint=http://127.0.0.1:1');
    expect(s3.kind).toBe('s3');
    await s3.close();
    await expect(openStore('nope:x')).rejects.toMatchObject({ code: 'BAD_URI' });
  });
});

describe('keys', () => {
  it.each([
    ['../x', '`..` segment'],
    ['/etc/passwd', 'absolute'],
    ['a/../../b', '`..` segment'],
    ['a\0b', 'NUL byte'],
    ['a\nb', 'control character'],
    ['a\\b', 'backslash'],
    ['', 'empty'],
    ['a//b', 'empty segment'],
    ['a/', 'empty segment'],
    ['./a', '`.` segment'],
    ['x/.lading-tmp-1', 'reserved'],
    ['x'.repeat(256), 'longer than 255'],
    [`${'abc/'.repeat(300)}x`, 'longer than 1024'],
  ])('refuses %j (%s)', (key, why) => {
    expect(() => checkKey(key)).toThrow(why);
    try {
      checkKey(key);
    } catch (e) {
      expect((e as LadingError).code).toBe('UNSAFE_KEY');
    }
  });

  it('accepts ordinary keys and list prefixes', () => {
    for (const k of ['a', 'a/b.c', 'runs/42/out-1.bin', '.hidden', 'a..b', 'ünï/çødé', 'with space']) expect(checkKey(k)).toBe(k);
    for (const p of ['', 'a', 'a/', 'a/b', 'a/b/', 'a/.']) {
      if (p === 'a/.') expect(() => checkPrefix(p)).toThrow();
      else expect(checkPrefix(p)).toBe(p);
    }
    expect(() => checkPrefix('../')).toThrow('`..`');
    expect(() => checkPrefix('a//')).toThrow('empty segment');
  });
});
