import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { describe, it } from 'node:test';
import {
  MANIFEST_MAGIC,
  MAX_CHUNK_COUNT,
  Manifest,
  ManifestFormatError,
} from '../src/repository/manifest.ts';

const KiB = 1024;
const MiB = 1024 * KiB;
const TiB = 1024 * 1024 * MiB;

const sha = (s: string | Uint8Array): string => createHash('sha256').update(s).digest('hex');
const randomId = (): string => randomBytes(32).toString('hex');

/** Builds raw manifest bytes: header fields, body, and (unless given) a correct trailer. */
function raw(opts: {
  magic?: Buffer;
  version?: number;
  flags?: number;
  chunkSize: number;
  diskSize: bigint | number;
  body: Buffer;
  trailer?: Buffer;
}): Buffer {
  const h = Buffer.alloc(24);
  (opts.magic ?? MANIFEST_MAGIC).copy(h, 0);
  h.writeUInt16LE(opts.version ?? 1, 8);
  h.writeUInt16LE(opts.flags ?? 0, 10);
  h.writeUInt32LE(opts.chunkSize, 12);
  h.writeBigUInt64LE(BigInt(opts.diskSize), 16);
  const head = Buffer.concat([h, opts.body]);
  return Buffer.concat([head, opts.trailer ?? createHash('sha256').update(head).digest()]);
}

const ID = (n: number): Buffer => Buffer.alloc(32, n);

function rejectsFormat(buf: Buffer, pattern: RegExp): void {
  assert.throws(() => Manifest.decode(buf), (e: unknown) => {
    assert.ok(e instanceof ManifestFormatError, `expected ManifestFormatError, got ${String(e)}`);
    assert.match(e.message, pattern);
    return true;
  });
}

describe('Manifest', () => {
  it('empty(): geometry, all chunks zero, short last chunk length', () => {
    const m = Manifest.empty(10 * 4096 + 100, 4096);
    assert.equal(m.chunkCount, 11);
    assert.equal(m.chunkSize, 4096);
    assert.equal(m.diskSize, 41060);
    assert.equal(m.nonZeroCount, 0);
    for (let i = 0; i < 11; i++) assert.equal(m.chunkId(i), null);
    assert.equal(m.chunkLength(0), 4096);
    assert.equal(m.chunkLength(10), 100);
    assert.equal(Manifest.empty(0, 4096).chunkCount, 0);
    assert.equal(Manifest.empty(8192, 4096).chunkCount, 2);
    assert.equal(Manifest.empty(8193, 4096).chunkCount, 3);
  });

  it('rejects bad geometry, indices and ids', () => {
    assert.throws(() => Manifest.empty(-1, 4096), RangeError);
    assert.throws(() => Manifest.empty(1.5, 4096), RangeError);
    assert.throws(() => Manifest.empty(4096, 0), RangeError);
    assert.throws(() => Manifest.empty(4096, 2 ** 32), RangeError);
    assert.throws(() => Manifest.empty(2 ** 53, 4096), RangeError);
    assert.throws(() => Manifest.empty((MAX_CHUNK_COUNT + 1) * 4096, 4096), /limit/);
    const m = Manifest.empty(4 * 4096, 4096);
    for (const bad of [-1, 4, 1.5, NaN]) {
      assert.throws(() => m.chunkId(bad), RangeError);
      assert.throws(() => m.set(bad, null), RangeError);
    }
    assert.throws(() => m.set(0, 'ABC'), RangeError);
    assert.throws(() => m.set(0, 'A'.repeat(64)), RangeError);
    assert.throws(() => m.set(0, `${'0'.repeat(63)}g`), RangeError);
    assert.equal(m.nonZeroCount, 0);
  });

  it('set / chunkId / nonZeroCount / clearing', () => {
    const m = Manifest.empty(20 * 4096, 4096);
    const a = randomId();
    const b = randomId();
    m.set(3, a);
    m.set(7, b);
    m.set(3, a); // same again: no double count
    assert.equal(m.chunkId(3), a);
    assert.equal(m.chunkId(7), b);
    assert.deepEqual(m.chunkIdBytes(7), Buffer.from(b, 'hex'));
    assert.equal(m.chunkIdBytes(8), null);
    assert.equal(m.nonZeroCount, 2);
    m.set(7, a); // overwrite
    assert.equal(m.chunkId(7), a);
    assert.equal(m.nonZeroCount, 2);
    m.set(3, null);
    m.set(4, null); // already zero
    assert.equal(m.chunkId(3), null);
    assert.equal(m.nonZeroCount, 1);
    // An all-zero id is a legitimate id, distinct from a zero chunk.
    m.set(0, '0'.repeat(64));
    assert.equal(m.chunkId(0), '0'.repeat(64));
    assert.equal(Manifest.decode(m.encode()).chunkId(0), '0'.repeat(64));
  });

  it('iterates non-zero chunks in order and deduplicates ids', () => {
    const m = Manifest.empty(100 * MiB, MiB);
    const a = randomId();
    const b = randomId();
    for (const i of [0, 8, 9, 15, 16, 63, 64, 99]) m.set(i, i % 2 ? a : b);
    assert.deepEqual(
      [...m.nonZeroChunks()],
      [0, 8, 9, 15, 16, 63, 64, 99].map((index) => ({ index, id: index % 2 ? a : b })),
    );
    assert.deepEqual(m.distinctChunkIds(), new Set([a, b]));
    assert.deepEqual(Manifest.empty(0, MiB).distinctChunkIds(), new Set());
    assert.deepEqual([...Manifest.empty(10 * MiB, MiB).nonZeroChunks()], []);
  });

  it('walks non-zero chunks in bounded batches, each id once per batch, with chunk lengths', () => {
    const m = Manifest.empty(10 * 1000 + 500, 1000); // 11 chunks, the last 500 bytes
    const a = 'a'.repeat(64);
    const b = 'b'.repeat(64);
    for (const [i, id] of [[0, a], [1, a], [2, b], [4, a], [7, b], [10, a]] as const) m.set(i, id);
    const batches = [...m.chunkBatches(2)].map((batch) => batch.map((c) => `${c.id[0]}:${c.length}`));
    assert.deepEqual(batches, [['a:1000', 'b:1000'], ['a:1000', 'b:1000'], ['a:500']]);
    assert.equal(m.nonZeroBytes, 5 * 1000 + 500);
    assert.deepEqual([...Manifest.empty(5000, 1000).chunkBatches(4)], []);
  });

  it('round-trips random patterns of every shape', () => {
    for (let round = 0; round < 200; round++) {
      const count = [0, 1, 7, 8, 9, 16, 17, 63, 64, 65, 200, 1000][round % 12]!;
      const chunkSize = [4096, MiB, 3, 1][round % 4]!;
      const tail = round % 3 === 0 ? 0 : 1 + (round % Math.max(1, chunkSize - 1));
      const diskSize = count === 0 ? 0 : (count - 1) * chunkSize + (tail > 0 && tail < chunkSize ? tail : chunkSize);
      const m = Manifest.empty(diskSize, chunkSize);
      assert.equal(m.chunkCount, count);
      const density = [0, 0.05, 0.5, 0.95, 1][round % 5]!;
      const pool = Array.from({ length: 5 }, randomId);
      for (let i = 0; i < count; i++) if (Math.random() < density) m.set(i, pool[i % 5]!);
      const bytes = m.encode();
      const back = Manifest.decode(bytes);
      assert.ok(back.equals(m), `round ${round}`);
      assert.equal(back.nonZeroCount, m.nonZeroCount);
      for (let i = 0; i < count; i++) assert.equal(back.chunkId(i), m.chunkId(i));
      assert.deepEqual(back.encode(), bytes, 'canonical: re-encoding gives the same bytes');
    }
  });

  it('decode copies: the input buffer can be reused afterwards', () => {
    const m = Manifest.empty(4 * 4096, 4096);
    const id = randomId();
    m.set(1, id);
    const bytes = m.encode();
    const back = Manifest.decode(bytes);
    bytes.fill(0);
    assert.equal(back.chunkId(1), id);
  });

  it('run-length encodes zero chunks: a mostly empty 1 TiB disk is tiny', () => {
    const empty = Manifest.empty(TiB, MiB);
    assert.equal(empty.chunkCount, 1024 * 1024);
    const e = empty.encode();
    assert.ok(e.length <= 64, `empty 1 TiB manifest is ${e.length} bytes`);
    const sparse = Manifest.empty(TiB, MiB);
    for (const i of [0, 1, 2, 500_000, 1024 * 1024 - 1]) sparse.set(i, randomId());
    const s = sparse.encode();
    assert.ok(s.length <= 24 + 32 + 5 * 32 + 8 * 4, `sparse 1 TiB manifest is ${s.length} bytes`);
    assert.ok(Manifest.decode(s).equals(sparse));
  });

  it('a full 1 TiB disk with 1 MiB chunks encodes to ~32 MiB', () => {
    const m = Manifest.empty(TiB, MiB);
    const id = Buffer.alloc(32);
    for (let i = 0; i < m.chunkCount; i++) {
      id.writeUInt32BE(i, 0);
      m.set(i, id.toString('hex'));
    }
    const bytes = m.encode();
    // header 24 + one run header (varint of 2^21+1: 22 bits, 4 bytes) + 2^20 ids of 32 bytes + trailer 32
    assert.equal(bytes.length, 24 + 4 + 32 * MiB + 32);
    const back = Manifest.decode(bytes);
    assert.equal(back.nonZeroCount, m.chunkCount);
    assert.equal(back.chunkId(123_456), m.chunkId(123_456));
    assert.equal(back.distinctChunkIds().size, m.chunkCount);
  });

  it('version-1 golden bytes: the format cannot change unnoticed', () => {
    const A = sha('a');
    const B = sha('b');
    const C = sha('c');
    const m = Manifest.empty(10 * 4096 + 100, 4096); // 11 chunks, the last one 100 bytes
    m.set(0, A);
    m.set(1, B);
    m.set(6, A);
    m.set(10, C);
    const golden =
      '8953464d0d0a1a0a' + // magic
      '0100' + // version 1
      '0000' + // flags
      '00100000' + // chunkSize 4096
      '64a0000000000000' + // diskSize 41060
      '05' + A + B + // data run of 2 (2*2+1)
      '08' + // zero run of 4 (4*2+0)
      '03' + A + // data run of 1
      '06' + // zero run of 3
      '03' + C + // data run of 1 (the short last chunk)
      '866f19e5a23cc96cb13d5ac14110d8064d0252e769bf13f37f3c4d9d23b0c712'; // SHA-256 of all the above (computed independently)
    const bytes = m.encode();
    assert.equal(bytes.subarray(0, bytes.length - 32).toString('hex'), golden.slice(0, -64), 'header and runs');
    assert.equal(bytes.toString('hex'), golden, 'trailer');
    const back = Manifest.decode(Buffer.from(golden, 'hex'));
    assert.ok(back.equals(m));
    assert.equal(back.chunkLength(10), 100);
  });

  describe('decode rejects bad input with ManifestFormatError', () => {
    const good = (() => {
      const m = Manifest.empty(10 * 4096, 4096);
      m.set(2, sha('x'));
      m.set(3, sha('y'));
      return m.encode();
    })();

    it('bad magic, empty input, text', () => {
      rejectsFormat(Buffer.alloc(0), /magic/);
      rejectsFormat(Buffer.from('hello world, this is not a manifest at all, really not'), /magic/);
      const b = Buffer.from(good);
      b[1] = 0x54;
      rejectsFormat(b, /magic/);
    });

    it('unknown future version, version 0, unknown flags', () => {
      rejectsFormat(raw({ version: 2, chunkSize: 4096, diskSize: 0, body: Buffer.alloc(0) }), /version 2 is newer/);
      rejectsFormat(raw({ version: 0, chunkSize: 4096, diskSize: 0, body: Buffer.alloc(0) }), /invalid manifest format version 0/);
      rejectsFormat(raw({ flags: 1, chunkSize: 4096, diskSize: 0, body: Buffer.alloc(0) }), /flags/);
    });

    it('every truncation of a valid manifest, and trailing bytes', () => {
      for (let len = 0; len < good.length; len++) {
        assert.throws(() => Manifest.decode(good.subarray(0, len)), ManifestFormatError, `length ${len}`);
      }
      rejectsFormat(Buffer.concat([good, Buffer.from([0])]), /checksum/);
    });

    it('any flipped bit', () => {
      for (let at = 8; at < good.length; at += 7) {
        const b = Buffer.from(good);
        b[at]! ^= 0x10;
        assert.throws(() => Manifest.decode(b), ManifestFormatError, `byte ${at}`);
      }
    });

    it('inconsistent runs (with a correct checksum)', () => {
      const d = (n: number) => Buffer.concat([Buffer.from([n * 2 + 1]), ...Array.from({ length: n }, (_, i) => ID(i + 1))]);
      const z = (n: number) => Buffer.from([n * 2]);
      const geo = { chunkSize: 4096, diskSize: 4 * 4096 };
      assert.ok(Manifest.decode(raw({ ...geo, body: Buffer.concat([z(1), d(2), z(1)]) })).chunkId(1));
      rejectsFormat(raw({ ...geo, body: Buffer.concat([z(1), d(2)]) }), /cover 3 chunks, the disk has 4/);
      rejectsFormat(raw({ ...geo, body: Buffer.concat([z(1), d(2), z(2)]) }), /more than/);
      rejectsFormat(raw({ ...geo, body: Buffer.alloc(0) }), /cover 0 chunks/);
      rejectsFormat(raw({ ...geo, body: Buffer.concat([z(1), z(3)]) }), /adjacent zero runs/);
      rejectsFormat(raw({ ...geo, body: Buffer.concat([d(1), d(3)]) }), /adjacent data runs/);
      rejectsFormat(raw({ ...geo, body: Buffer.concat([z(0), z(4)]) }), /empty run/);
      rejectsFormat(raw({ ...geo, body: Buffer.from([0x88, 0x00]) }), /non-minimal/);
      rejectsFormat(raw({ ...geo, body: Buffer.from([0x88]) }), /cut off/);
      rejectsFormat(raw({ ...geo, body: Buffer.concat([Buffer.from([4 * 2 + 1]), ID(1)]) }), /cut off/);
      rejectsFormat(raw({ ...geo, body: Buffer.alloc(9, 0xff) }), /varint too long/);
      rejectsFormat(raw({ chunkSize: 4096, diskSize: 0, body: z(1) }), /more than/);
    });

    it('impossible geometry (with a correct checksum)', () => {
      rejectsFormat(raw({ chunkSize: 0, diskSize: 4096, body: Buffer.from([2]) }), /chunk size 0/);
      rejectsFormat(raw({ chunkSize: 4096, diskSize: 2n ** 60n, body: Buffer.from([2]) }), /too large/);
      rejectsFormat(raw({ chunkSize: 1, diskSize: MAX_CHUNK_COUNT + 1, body: Buffer.from([2]) }), /limit/);
    });
  });

  it('resized keeps common chunks and adds zero chunks', () => {
    const m = Manifest.empty(20 * 4096, 4096);
    const ids = Array.from({ length: 20 }, randomId);
    for (let i = 0; i < 20; i += 3) m.set(i, ids[i]!);
    const grown = m.resized(40 * 4096 + 1);
    assert.equal(grown.chunkCount, 41);
    for (let i = 0; i < 20; i++) assert.equal(grown.chunkId(i), m.chunkId(i));
    for (let i = 20; i < 41; i++) assert.equal(grown.chunkId(i), null);
    assert.equal(grown.nonZeroCount, m.nonZeroCount);
    const shrunk = m.resized(10 * 4096);
    assert.equal(shrunk.chunkCount, 10);
    for (let i = 0; i < 10; i++) assert.equal(shrunk.chunkId(i), m.chunkId(i));
    assert.equal(shrunk.nonZeroCount, 4); // 0, 3, 6, 9
    grown.set(0, null);
    assert.equal(m.chunkId(0), ids[0], 'a resized copy is independent');
    assert.ok(m.clone().equals(m));
  });
});
