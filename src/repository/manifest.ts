/**
 * Manifest: what a disk image holds, as a list of fixed-size chunks. Chunk `i` covers bytes
 * [i * chunkSize, min((i + 1) * chunkSize, diskSize)); the last chunk is shorter than chunkSize when
 * diskSize is not a multiple of it, and its id is the SHA-256 of those actual (short) bytes, never of
 * a zero-padded chunk. A chunk is either "zero" (every byte zero; not stored anywhere) or named by
 * the SHA-256 of its bytes.
 *
 * In memory: one Buffer of chunkCount * 32 bytes for the ids plus a presence bitmap (1 bit per
 * chunk). Both are zero-filled allocations, so a mostly zero manifest costs little resident memory.
 *
 * Binary format, version 1 (all integers little-endian; the encoding is canonical: one manifest has
 * exactly one encoding, so equal manifests have equal bytes and equal content ids):
 *
 *   offset  size  field
 *   0       8     magic 89 53 46 4D 0D 0A 1A 0A  ("\x89SFM\r\n\x1a\n": non-ASCII first byte and
 *                 CR LF / ^Z / LF catch text-mode and 7-bit transfer damage)
 *   8       2     format version = 1 (u16)
 *   10      2     flags = 0 (u16; any other value is rejected)
 *   12      4     chunkSize in bytes (u32, >= 1)
 *   16      8     diskSize in bytes (u64, <= 2^53 - 1)
 *   24      ...   runs, covering chunk 0 .. chunkCount-1 in order; chunkCount = ceil(diskSize / chunkSize)
 *   end-32  32    SHA-256 of every preceding byte (detects truncation and corruption on its own)
 *
 * A run is an unsigned LEB128 varint `n * 2 + kind` (minimal encoding, n >= 1) followed by, for
 * kind 1 ("data"), n chunk ids of 32 raw bytes each; kind 0 ("zero") has no payload: n zero chunks.
 * Runs alternate kinds (two adjacent runs never have the same kind). A full 1 TiB disk with 1 MiB
 * chunks encodes as one data run: 24 + 4 + 32 MiB + 32 bytes; an empty disk of any size as one
 * zero run (about 60 bytes).
 */
import { createHash } from 'node:crypto';
import { assertChunkId } from '../chunkstore/chunk-store.ts';

export class ManifestFormatError extends Error {
  override name = 'ManifestFormatError';
}

export const MANIFEST_MAGIC = Buffer.from([0x89, 0x53, 0x46, 0x4d, 0x0d, 0x0a, 0x1a, 0x0a]);
export const MANIFEST_VERSION = 1;
const HEADER_SIZE = 24;
const TRAILER_SIZE = 32;
const ID_SIZE = 32;
/**
 * Largest chunk count a manifest may have: 2^26 chunks (64 TiB at 1 MiB chunks) means a 2 GiB id
 * buffer. Also bounds what a damaged or hostile header can make `decode` allocate.
 */
export const MAX_CHUNK_COUNT = 2 ** 26;
const MAX_CHUNK_SIZE = 0xffff_ffff;

function chunkCountOf(diskSize: number, chunkSize: number): number {
  return diskSize === 0 ? 0 : Math.ceil(diskSize / chunkSize);
}

function checkGeometry(diskSize: number, chunkSize: number, err: (msg: string) => Error): number {
  if (!Number.isSafeInteger(chunkSize) || chunkSize < 1 || chunkSize > MAX_CHUNK_SIZE) {
    throw err(`chunk size ${chunkSize} is not an integer in [1, 2^32-1]`);
  }
  if (!Number.isSafeInteger(diskSize) || diskSize < 0) throw err(`disk size ${diskSize} is not a non-negative safe integer`);
  const count = chunkCountOf(diskSize, chunkSize);
  if (count > MAX_CHUNK_COUNT) {
    throw err(`disk size ${diskSize} with chunk size ${chunkSize} needs ${count} chunks, more than the limit ${MAX_CHUNK_COUNT}`);
  }
  return count;
}

/** Bytes of an unsigned LEB128 encoding of `v` (a safe integer). */
function varintSize(v: number): number {
  let n = 1;
  while (v >= 0x80) {
    v = Math.floor(v / 0x80);
    n++;
  }
  return n;
}

function writeVarint(buf: Buffer, at: number, v: number): number {
  while (v >= 0x80) {
    buf[at++] = (v % 0x80) | 0x80;
    v = Math.floor(v / 0x80);
  }
  buf[at++] = v;
  return at;
}

export class Manifest {
  readonly chunkSize: number;
  readonly diskSize: number;
  readonly chunkCount: number;
  /** chunkCount * 32 bytes; the id of chunk i at [i*32, i*32+32) when its presence bit is set. */
  private readonly ids: Buffer;
  /** Bit i set: chunk i has an id; clear: chunk i is zero. */
  private readonly present: Uint8Array;
  private nonZero = 0;

  private constructor(diskSize: number, chunkSize: number) {
    this.chunkCount = checkGeometry(diskSize, chunkSize, (m) => new RangeError(m));
    this.diskSize = diskSize;
    this.chunkSize = chunkSize;
    this.ids = Buffer.alloc(this.chunkCount * ID_SIZE);
    this.present = new Uint8Array(Math.ceil(this.chunkCount / 8));
  }

  /** A manifest of an all-zero disk. */
  static empty(diskSize: number, chunkSize: number): Manifest {
    return new Manifest(diskSize, chunkSize);
  }

  /** Number of chunks that are not zero. */
  get nonZeroCount(): number {
    return this.nonZero;
  }

  /** Length in bytes of chunk `i`: chunkSize, except possibly for the last chunk. */
  chunkLength(i: number): number {
    this.checkIndex(i);
    return Math.min(this.chunkSize, this.diskSize - i * this.chunkSize);
  }

  /** The id of chunk `i`, or null when the chunk is zero. */
  chunkId(i: number): string | null {
    this.checkIndex(i);
    if (!this.has(i)) return null;
    return this.ids.toString('hex', i * ID_SIZE, (i + 1) * ID_SIZE);
  }

  /** True when chunk `i` is zero. Cheap (one bit): for walks over every chunk of a large disk. */
  isZero(i: number): boolean {
    this.checkIndex(i);
    return !this.has(i);
  }

  /**
   * True when chunk `i` is the same here and in `other` (both zero, or the same id), compared as
   * raw bytes: no hex string per chunk.
   */
  sameChunk(i: number, other: Manifest): boolean {
    this.checkIndex(i);
    other.checkIndex(i);
    const here = this.has(i);
    if (here !== other.has(i)) return false;
    return !here || this.ids.compare(other.ids, i * ID_SIZE, (i + 1) * ID_SIZE, i * ID_SIZE, (i + 1) * ID_SIZE) === 0;
  }

  /** The id of chunk `i` as 32 raw bytes (a copy), or null when the chunk is zero. */
  chunkIdBytes(i: number): Buffer | null {
    this.checkIndex(i);
    if (!this.has(i)) return null;
    return Buffer.from(this.ids.subarray(i * ID_SIZE, (i + 1) * ID_SIZE));
  }

  /** Sets chunk `i` to `id` (64 lower-case hex characters) or to zero (`null`). */
  set(i: number, id: string | null): void {
    this.checkIndex(i);
    const at = i * ID_SIZE;
    if (id === null) {
      if (this.has(i)) {
        this.present[i >> 3]! &= ~(1 << (i & 7));
        this.ids.fill(0, at, at + ID_SIZE);
        this.nonZero--;
      }
      return;
    }
    assertChunkId(id);
    this.ids.write(id, at, ID_SIZE, 'hex');
    if (!this.has(i)) {
      this.present[i >> 3]! |= 1 << (i & 7);
      this.nonZero++;
    }
  }

  /** The indexes of the chunks that are not zero, in order (no id strings). */
  *nonZeroIndexes(): IterableIterator<number> {
    for (let i = this.nextNonZero(0); i >= 0; i = this.nextNonZero(i + 1)) yield i;
  }

  /** Every chunk that is not zero, in index order. */
  *nonZeroChunks(): IterableIterator<{ index: number; id: string }> {
    for (let i = this.nextNonZero(0); i >= 0; i = this.nextNonZero(i + 1)) {
      yield { index: i, id: this.ids.toString('hex', i * ID_SIZE, (i + 1) * ID_SIZE) };
    }
  }

  /**
   * The non-zero chunks in manifest order, in batches of at most `size`, each id once per batch
   * (a chunk repeated further away may come again in a later batch). Memory stays O(size) however
   * large the disk: for walks over a whole manifest such as a copy or a commit check.
   */
  *chunkBatches(size: number): IterableIterator<Array<{ id: string; length: number }>> {
    let batch: Array<{ id: string; length: number }> = [];
    let seen = new Set<string>();
    for (const { index, id } of this.nonZeroChunks()) {
      if (seen.has(id)) continue;
      seen.add(id);
      batch.push({ id, length: this.chunkLength(index) });
      if (batch.length === size) {
        yield batch;
        batch = [];
        seen = new Set();
      }
    }
    if (batch.length > 0) yield batch;
  }

  /** Bytes of all non-zero chunks (a repeated chunk counts each time it appears). */
  get nonZeroBytes(): number {
    let total = 0;
    for (const { index } of this.nonZeroChunks()) total += this.chunkLength(index);
    return total;
  }

  /** The ids of the non-zero chunks, each once. */
  distinctChunkIds(): Set<string> {
    const out = new Set<string>();
    for (let i = this.nextNonZero(0); i >= 0; i = this.nextNonZero(i + 1)) {
      out.add(this.ids.toString('hex', i * ID_SIZE, (i + 1) * ID_SIZE));
    }
    return out;
  }

  /**
   * A copy for a disk of `diskSize` bytes with the same chunk size: chunks that exist in both keep
   * their entries, new chunks are zero. Caution: when the length of a chunk changes (the old last
   * chunk was short and the disk grew, or the disk shrank into a chunk), its entry is kept as is and
   * no longer describes that chunk's bytes; the caller must set that chunk again (re-capture it).
   */
  resized(diskSize: number): Manifest {
    const m = new Manifest(diskSize, this.chunkSize);
    const keep = Math.min(this.chunkCount, m.chunkCount);
    // Only the present runs: the id buffer is lazily zeroed memory (1 GiB for a 32765 GB disk), and
    // copying it whole would make every page of both copies resident, whatever the disk holds.
    for (const [start, end] of this.presentRuns(keep)) this.ids.copy(m.ids, start * ID_SIZE, start * ID_SIZE, end * ID_SIZE);
    const fullBytes = keep >> 3;
    m.present.set(this.present.subarray(0, fullBytes));
    for (let i = fullBytes * 8; i < keep; i++) if (this.has(i)) m.present[i >> 3]! |= 1 << (i & 7);
    let count = 0;
    for (let b = 0; b < m.present.length; b++) count += popcount8(m.present[b]!);
    m.nonZero = count;
    return m;
  }

  /** A deep copy. */
  clone(): Manifest {
    return this.resized(this.diskSize);
  }

  /** True when both describe the same disk size, chunk size and chunks. */
  equals(other: Manifest): boolean {
    const same =
      this.diskSize === other.diskSize &&
      this.chunkSize === other.chunkSize &&
      this.nonZero === other.nonZero &&
      Buffer.from(this.present.buffer, this.present.byteOffset, this.present.byteLength).equals(
        Buffer.from(other.present.buffer, other.present.byteOffset, other.present.byteLength),
      );
    if (!same) return false;
    // Same presence bits, so the same runs; ids outside them are not compared (nor paged in).
    for (const [s, e] of this.presentRuns(this.chunkCount)) {
      if (this.ids.compare(other.ids, s * ID_SIZE, e * ID_SIZE, s * ID_SIZE, e * ID_SIZE) !== 0) return false;
    }
    return true;
  }

  /** The version-1 binary encoding (see the file comment). */
  encode(): Buffer {
    // First pass: size.
    let size = HEADER_SIZE + TRAILER_SIZE;
    this.forEachRun((kind, n) => {
      size += varintSize(n * 2 + kind) + (kind === 1 ? n * ID_SIZE : 0);
    });
    const out = Buffer.allocUnsafe(size);
    MANIFEST_MAGIC.copy(out, 0);
    out.writeUInt16LE(MANIFEST_VERSION, 8);
    out.writeUInt16LE(0, 10);
    out.writeUInt32LE(this.chunkSize, 12);
    out.writeBigUInt64LE(BigInt(this.diskSize), 16);
    let at = HEADER_SIZE;
    this.forEachRun((kind, n, start) => {
      at = writeVarint(out, at, n * 2 + kind);
      if (kind === 1) at += this.ids.copy(out, at, start * ID_SIZE, (start + n) * ID_SIZE);
    });
    createHash('sha256').update(out.subarray(0, at)).digest().copy(out, at);
    at += TRAILER_SIZE;
    if (at !== size) throw new Error(`manifest encoder bug: wrote ${at} of ${size} bytes`);
    return out;
  }

  /**
   * Parses an encoded manifest. Throws `ManifestFormatError` for anything but a complete, intact,
   * canonical version-1 manifest: wrong magic, another version, nonzero flags, bad geometry,
   * truncation or trailing bytes, checksum mismatch, runs that do not cover the disk exactly.
   */
  static decode(buf: Uint8Array): Manifest {
    const b = Buffer.isBuffer(buf) ? buf : Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength);
    if (b.length < MANIFEST_MAGIC.length || !b.subarray(0, MANIFEST_MAGIC.length).equals(MANIFEST_MAGIC)) {
      throw new ManifestFormatError('not a snapferry manifest (bad magic)');
    }
    if (b.length < HEADER_SIZE + TRAILER_SIZE) {
      throw new ManifestFormatError(`manifest truncated: ${b.length} bytes, a manifest has at least ${HEADER_SIZE + TRAILER_SIZE}`);
    }
    const version = b.readUInt16LE(8);
    if (version !== MANIFEST_VERSION) {
      throw new ManifestFormatError(
        version > MANIFEST_VERSION
          ? `manifest format version ${version} is newer than this build understands (${MANIFEST_VERSION})`
          : `invalid manifest format version ${version}`,
      );
    }
    const flags = b.readUInt16LE(10);
    if (flags !== 0) throw new ManifestFormatError(`unknown manifest flags 0x${flags.toString(16)}`);
    const body = b.length - TRAILER_SIZE;
    const expected = createHash('sha256').update(b.subarray(0, body)).digest();
    if (!expected.equals(b.subarray(body))) {
      throw new ManifestFormatError('manifest checksum mismatch (truncated or damaged)');
    }
    const chunkSize = b.readUInt32LE(12);
    const diskSizeBig = b.readBigUInt64LE(16);
    if (diskSizeBig > BigInt(Number.MAX_SAFE_INTEGER)) throw new ManifestFormatError(`disk size ${diskSizeBig} is too large`);
    const diskSize = Number(diskSizeBig);
    checkGeometry(diskSize, chunkSize, (m) => new ManifestFormatError(m));
    const m = new Manifest(diskSize, chunkSize);

    let at = HEADER_SIZE;
    let index = 0;
    let lastKind = -1;
    while (at < body) {
      // Varint, minimal, at most 8 bytes (values stay below 2^53).
      let v = 0;
      let scale = 1;
      let len = 0;
      for (;;) {
        if (at >= body) throw new ManifestFormatError(`manifest run header at byte ${at} is cut off`);
        const byte = b[at++]!;
        len++;
        v += (byte & 0x7f) * scale;
        scale *= 0x80;
        if ((byte & 0x80) === 0) {
          if (byte === 0 && len > 1) throw new ManifestFormatError(`non-minimal varint at byte ${at - len}`);
          break;
        }
        if (len >= 8) throw new ManifestFormatError(`varint too long at byte ${at - len}`);
      }
      const kind = v % 2;
      const n = (v - kind) / 2;
      if (n < 1) throw new ManifestFormatError(`empty run at byte ${at - len}`);
      if (kind === lastKind) throw new ManifestFormatError(`two adjacent ${kind ? 'data' : 'zero'} runs at byte ${at - len}`);
      if (n > m.chunkCount - index) {
        throw new ManifestFormatError(`runs cover more than the disk's ${m.chunkCount} chunks`);
      }
      if (kind === 1) {
        const bytes = n * ID_SIZE;
        if (bytes > body - at) throw new ManifestFormatError(`data run at byte ${at - len} is cut off`);
        b.copy(m.ids, index * ID_SIZE, at, at + bytes);
        at += bytes;
        m.setPresentRange(index, n);
      }
      index += n;
      lastKind = kind;
    }
    if (index !== m.chunkCount) {
      throw new ManifestFormatError(`runs cover ${index} chunks, the disk has ${m.chunkCount}`);
    }
    return m;
  }

  // --- internals ---

  private checkIndex(i: number): void {
    if (!Number.isInteger(i) || i < 0 || i >= this.chunkCount) {
      throw new RangeError(`chunk index ${i} is outside [0, ${this.chunkCount})`);
    }
  }

  private has(i: number): boolean {
    return (this.present[i >> 3]! & (1 << (i & 7))) !== 0;
  }

  private setPresentRange(start: number, n: number): void {
    let i = start;
    const end = start + n;
    while (i < end && (i & 7) !== 0) this.present[i >> 3]! |= 1 << (i++ & 7);
    if (end - i >= 8) {
      this.present.fill(0xff, i >> 3, end >> 3);
      i = end - (end & 7);
    }
    while (i < end) this.present[i >> 3]! |= 1 << (i++ & 7);
    this.nonZero += n;
  }

  /** First non-zero chunk at or after `from`, or -1. Skips zero bitmap bytes 8 chunks at a time. */
  private nextNonZero(from: number): number {
    let i = from;
    while (i < this.chunkCount) {
      const byte = this.present[i >> 3]!;
      if (byte === 0) {
        i = (i | 7) + 1;
        continue;
      }
      if (byte & (1 << (i & 7))) return i;
      i++;
    }
    return -1;
  }

  /** Maximal runs [start, end) of non-zero chunks below `limit`, in order. */
  private *presentRuns(limit: number): IterableIterator<[number, number]> {
    let i = this.nextNonZero(0);
    while (i >= 0 && i < limit) {
      let j = i + 1;
      while (j < limit) {
        if ((j & 7) === 0 && j + 8 <= limit && this.present[j >> 3] === 0xff) {
          j += 8;
          continue;
        }
        if (!this.has(j)) break;
        j++;
      }
      yield [i, j];
      i = j < limit ? this.nextNonZero(j) : -1;
    }
  }

  /** Calls fn for each maximal run of same-kind chunks (kind 1 = data, 0 = zero), in order. */
  private forEachRun(fn: (kind: 0 | 1, n: number, start: number) => void): void {
    let i = 0;
    while (i < this.chunkCount) {
      const kind: 0 | 1 = this.has(i) ? 1 : 0;
      let j = i + 1;
      while (j < this.chunkCount) {
        // Whole bitmap bytes that continue the run.
        if ((j & 7) === 0 && j + 8 <= this.chunkCount) {
          const byte = this.present[j >> 3]!;
          if (byte === (kind ? 0xff : 0)) {
            j += 8;
            continue;
          }
        }
        if ((this.has(j) ? 1 : 0) !== kind) break;
        j++;
      }
      fn(kind, j - i, i);
      i = j;
    }
  }
}

function popcount8(x: number): number {
  x = x - ((x >> 1) & 0x55);
  x = (x & 0x33) + ((x >> 2) & 0x33);
  return (x + (x >> 4)) & 0x0f;
}
