/**
 * A disk: its bytes in segment files (SegmentedImage) plus a ChunkMap recording which chunks changed
 * in which generation. Implements BlockTarget for block clients (NBD) and the HTTP data routes.
 *
 * Point-in-time snapshots under concurrent writes: `beginCapture` freezes the set of chunks a
 * snapshot must read (no write is half-way at that instant: writes pass a gate the freeze closes).
 * Until the capture has read a frozen chunk, a write that would land on it first hands the chunk's
 * old bytes to the capture (copy-on-write), then proceeds. Per-chunk locks order a capture's read of
 * a chunk against writes to that chunk.
 */
import { BlockIoError, type BlockTarget, type Extent } from './block-target.ts';
import type { ChunkMap } from './chunk-map.ts';
import type { ChunkSet, ReadonlyChunkSet } from './chunk-set.ts';
import type { SegmentedImage } from './segmented-image.ts';
import { KeyedMutex } from '../lib/keyed-mutex.ts';
import { RwLock } from '../lib/rw-lock.ts';

/** What a running snapshot capture receives when a write is about to overwrite a frozen chunk. */
export interface CaptureSink {
  /** Must take (hash and store, or copy) the old bytes before resolving; the write waits for it. */
  preserve(index: number, oldBytes: Buffer): Promise<void>;
}

export interface Capture {
  /**
   * Chunk indexes changed since the base generation (iterates ascending): what the snapshot must
   * read. A bitmap, not an array or Set: the largest disk has more chunks than V8's Set can hold.
   */
  readonly changed: ReadonlyChunkSet;
  /** Generation the snapshot describes; becomes the disk's base generation when it completes. */
  readonly generation: number;
  /** Reads frozen chunk `index` unless a write already preserved it through the sink (then null). */
  readChunk(index: number): Promise<Buffer | null>;
  /**
   * Reads the frozen chunks [first, first + count) into `into` (chunk `first + k` at
   * `k * chunkSize`) with one read per run of allocated chunks, so a capture reads several MiB at
   * once, through the page cache or past it, whichever recent reads found faster (SegmentedImage.readOnce). Answers, per chunk, a view of its bytes in `into`, or null where a write already preserved
   * it through the sink (its bytes in `into` are then meaningless). Each chunk counts as read exactly
   * as through `readChunk`: its lock is held for the read, and it leaves the copy-on-write set.
   */
  readChunks(first: number, count: number, into: Buffer): Promise<Array<Buffer | null>>;
  /** Stops copy-on-write (after the snapshot is durable or abandoned). Idempotent. */
  end(): void;
}

export class Disk implements BlockTarget {
  private readonly locks = new KeyedMutex<number>();
  private readonly gate = new RwLock();
  private capture: { pending: ChunkSet; sink: CaptureSink } | null = null;
  private captureQueue: Promise<void> = Promise.resolve();
  private capturesQueued = 0;

  constructor(
    readonly id: string,
    private readonly image: SegmentedImage,
    readonly map: ChunkMap,
  ) {
    if (map.chunkCount !== Math.ceil(image.size / map.chunkSize)) {
      throw new RangeError(`disk ${id}: the chunk map has ${map.chunkCount} chunks, the image ${image.size} bytes`);
    }
  }

  get size(): number {
    return this.image.size;
  }

  /** A capture is running or waiting: the disk must stay open. */
  get capturing(): boolean {
    return this.capturesQueued > 0;
  }

  /** Segment file handles open now. */
  get openSegments(): number {
    return this.image.openHandles;
  }

  get chunkSize(): number {
    return this.map.chunkSize;
  }

  get chunkCount(): number {
    return this.map.chunkCount;
  }

  chunkLength(index: number): number {
    return Math.min(this.chunkSize, this.size - index * this.chunkSize);
  }

  async read(offset: number, length: number, into?: Buffer): Promise<Buffer> {
    this.checkRange(offset, length);
    if (into && into.length < length) throw new RangeError(`a buffer of ${into.length} bytes cannot hold a read of ${length}`);
    const out = into ? into.subarray(0, length) : Buffer.allocUnsafe(length);
    // Runs of allocated chunks are read with one call; the rest reads as zeros without touching the file.
    let pos = offset;
    while (pos < offset + length) {
      const index = Math.floor(pos / this.chunkSize);
      const allocated = this.map.isAllocated(index);
      let end = Math.min(offset + length, (index + 1) * this.chunkSize);
      while (end < offset + length && this.map.isAllocated(Math.floor(end / this.chunkSize)) === allocated) {
        end = Math.min(offset + length, end + this.chunkSize);
      }
      if (allocated) await this.readFileInto(out, pos - offset, end - pos, pos);
      else out.fill(0, pos - offset, end - offset);
      pos = end;
    }
    return out;
  }

  async write(offset: number, data: Buffer, fua: boolean): Promise<void> {
    this.checkRange(offset, data.length);
    if (data.length === 0) return;
    const [first, last] = this.chunkSpan(offset, data.length);
    await this.gate.shared(async () => {
      // Fast path, the common case: no capture is running (none can start while we hold the gate)
      // and no chunk needs zero-filling, so nothing has to be ordered against this write. Writes to
      // the same chunk then run in parallel, as a block device's do.
      if (!this.capture && !this.anyTrimmed(first, last)) {
        await this.map.recordWrite(first, last, 'data');
        await this.writeFile(data, offset);
        return;
      }
      await this.locks.run(span(first, last), async () => {
        await this.preserveFrozen(first, last);
        // DISK-1: a trimmed chunk still holds its old bytes in the file (a trim writes nothing). The
        // map must say "data" before this write's bytes land (changed-block tracking), so first the
        // old bytes are overwritten with zeros and made durable: neither a read racing this write nor
        // a crash before its bytes land can show them; the chunk reads as zeros (what it held) or as
        // this write. Whole chunks too, not only the parts the write leaves: until the write lands,
        // a covered part is as exposed as the rest (the command fuzz found it: a read pipelined
        // behind a write over a trimmed chunk returned the bytes from before the trim).
        let zeroed = false;
        for (let i = first; i <= last; i++) {
          if (!this.map.isTrimmed(i)) continue;
          await this.writeFile(Buffer.alloc(this.chunkLength(i)), i * this.chunkSize);
          zeroed = true;
        }
        // Durable before the map says "data": the zeroed chunks' segments, not the whole disk.
        if (zeroed) await this.flushRange(first * this.chunkSize, (last - first) * this.chunkSize + this.chunkLength(last));
        await this.map.recordWrite(first, last, 'data');
        await this.writeFile(data, offset);
      });
    });
    if (fua) await this.flush();
  }

  /** Whether any chunk of [first, last] is trimmed (a write spans at most a few dozen chunks). */
  private anyTrimmed(first: number, last: number): boolean {
    for (let i = first; i <= last; i++) if (this.map.isTrimmed(i)) return true;
    return false;
  }

  async writeZeroes(offset: number, length: number, fua: boolean): Promise<void> {
    this.checkRange(offset, length);
    if (length === 0) return;
    const [first, last] = this.chunkSpan(offset, length);
    await this.gate.shared(() =>
      this.locks.run(span(first, last), async () => {
        await this.preserveFrozen(first, last);
        for (let i = first; i <= last; i++) {
          if (this.covers(offset, length, i)) {
            // Whole chunk: record it as trimmed; no data is written.
            if (this.map.isAllocated(i) || this.map.isTrimmed(i)) await this.map.recordWrite(i, i, 'trimmed');
          } else if (this.map.isAllocated(i)) {
            const a = Math.max(offset, i * this.chunkSize);
            const b = Math.min(offset + length, i * this.chunkSize + this.chunkLength(i));
            await this.map.recordWrite(i, i, 'data');
            await this.writeFile(Buffer.alloc(b - a), a);
          }
          // A partial range of a hole or trimmed chunk already reads as zeros.
        }
      }),
    );
    if (fua) await this.flush();
  }

  trim(offset: number, length: number, fua: boolean): Promise<void> {
    return this.writeZeroes(offset, length, fua);
  }

  async flush(): Promise<void> {
    await this.flushing(() => this.image.flush());
  }

  private async flushRange(position: number, length: number): Promise<void> {
    await this.flushing(() => this.image.flushRange(position, length));
  }

  /** A flush of the image, failed as a block I/O error (what a client is told: EIO). */
  private async flushing(sync: () => Promise<void>): Promise<void> {
    try {
      await sync();
    } catch (e) {
      throw new BlockIoError(`flush failed: ${(e as Error).message}`);
    }
  }

  async extents(offset: number, length: number): Promise<Extent[]> {
    this.checkRange(offset, length);
    const out: Extent[] = [];
    let pos = offset;
    while (pos < offset + length) {
      const index = Math.floor(pos / this.chunkSize);
      const end = Math.min(offset + length, (index + 1) * this.chunkSize);
      const zero = !this.map.isAllocated(index);
      const hole = zero && !this.map.isTrimmed(index);
      const prev = out[out.length - 1];
      if (prev && prev.hole === hole && prev.zero === zero) prev.length += end - pos;
      else out.push({ length: end - pos, hole, zero });
      pos = end;
    }
    return out;
  }

  /**
   * Freezes the chunks changed since `baseGeneration` for a snapshot. One capture at a time per disk:
   * a second waits until the first ends. A failure here releases the queue (else every later
   * snapshot of the disk would wait forever).
   *
   * The image is flushed before the generation advances: every chunk whose generation a snapshot
   * freezes is then durable in the image, which the chunk map's unclean-open rule relies on (a
   * saved entry at or below a base generation must not outlive its bytes in a power loss). It is
   * flushed once outside the gate (the bulk, while writes continue) and once inside (what landed in
   * between, usually nothing).
   */
  async beginCapture(baseGeneration: number, sink: CaptureSink): Promise<Capture> {
    let releaseQueue!: () => void;
    const previous = this.captureQueue;
    this.captureQueue = new Promise<void>((r) => (releaseQueue = r));
    this.capturesQueued++;
    let released = false;
    const release = (): void => {
      if (released) return;
      released = true;
      this.capture = null;
      this.capturesQueued--;
      releaseQueue();
    };
    let frozen: { generation: number; changed: ChunkSet };
    try {
      await previous;
      await this.flush();
      frozen = await this.gate.exclusive(async () => {
        await this.flush();
        const generation = await this.map.advanceGeneration();
        const changed = this.map.changedSince(baseGeneration);
        this.capture = { pending: changed.clone(), sink };
        return { generation, changed };
      });
    } catch (e) {
      release();
      throw e;
    }
    let ended = false;
    return {
      changed: frozen.changed,
      generation: frozen.generation,
      readChunk: (index) =>
        this.locks.run([index], async () => (this.capture?.pending.delete(index) ? this.readChunkBytes(index) : null)),
      readChunks: (first, count, into) => this.readFrozenRun(first, count, into),
      end: () => {
        if (ended) return;
        ended = true;
        release();
      },
    };
  }

  /** A chunk's bytes straight from the image, zeros when it is not allocated. */
  async readChunkBytes(index: number): Promise<Buffer> {
    const length = this.chunkLength(index);
    if (!this.map.isAllocated(index)) return Buffer.alloc(length);
    const buf = Buffer.allocUnsafe(length);
    await this.readFileInto(buf, 0, length, index * this.chunkSize);
    return buf;
  }

  /** See `Capture.readChunks`. */
  private async readFrozenRun(first: number, count: number, into: Buffer): Promise<Array<Buffer | null>> {
    if (!Number.isSafeInteger(first) || !Number.isSafeInteger(count) || count < 1 || first < 0 || first + count > this.chunkCount) {
      throw new RangeError(`chunks ${first}+${count} are outside the disk (${this.chunkCount} chunks)`);
    }
    const end = first + count;
    const bytes = (end - 1 - first) * this.chunkSize + this.chunkLength(end - 1);
    if (into.length < bytes) throw new RangeError(`a buffer of ${into.length} bytes cannot hold chunks ${first}+${count}`);
    return this.locks.run(span(first, end - 1), async () => {
      const taken: boolean[] = [];
      for (let i = first; i < end; i++) taken.push(this.capture?.pending.delete(i) ?? false);
      // Runs of taken, allocated chunks: one read each. Taken chunks that are not allocated read as zeros.
      let i = first;
      while (i < end) {
        if (!taken[i - first]) {
          i++;
          continue;
        }
        const at = (i - first) * this.chunkSize;
        if (!this.map.isAllocated(i)) {
          into.fill(0, at, at + this.chunkLength(i));
          i++;
          continue;
        }
        let j = i + 1;
        while (j < end && taken[j - first] && this.map.isAllocated(j)) j++;
        await this.readFileInto(into, at, (j - 1 - i) * this.chunkSize + this.chunkLength(j - 1), i * this.chunkSize, true);
        i = j;
      }
      return taken.map((t, k) => (t ? into.subarray(k * this.chunkSize, k * this.chunkSize + this.chunkLength(first + k)) : null));
    });
  }

  /**
   * Writes a whole chunk during a restore: no copy-on-write, no generation (the caller resets the
   * map after), past the page cache where it can (SegmentedImage.writeDirect says why).
   */
  async restoreChunk(index: number, data: Buffer): Promise<void> {
    try {
      await this.image.writeDirect(data, index * this.chunkSize);
    } catch (e) {
      throw new BlockIoError(`write failed: ${(e as Error).message}`);
    }
  }

  /**
   * Grows the disk: the layout first (its size is the commit point), then the map, whose new chunks
   * are holes. A crash between the two leaves a map shorter than the layout, which the disk manager
   * grows at the next open (the new chunks cannot have been written).
   */
  async grow(newSize: number): Promise<void> {
    if (newSize < this.size) throw new RangeError('a disk only grows');
    await this.gate.exclusive(async () => {
      await this.image.grow(newSize);
      await this.map.grow(Math.ceil(newSize / this.chunkSize));
    });
  }

  /** Flushes the image, saves the map with a clean-close mark, closes every file. */
  async close(): Promise<void> {
    try {
      await this.image.flush();
    } finally {
      try {
        await this.map.close();
      } finally {
        await this.image.close();
      }
    }
  }

  /** Copy-on-write: hands the old bytes of frozen, not yet captured chunks to the capture. Caller holds the chunk locks. */
  private async preserveFrozen(first: number, last: number): Promise<void> {
    const capture = this.capture;
    if (!capture) return;
    for (let i = first; i <= last; i++) {
      if (capture.pending.delete(i)) await capture.sink.preserve(i, await this.readChunkBytes(i));
    }
  }

  private chunkSpan(offset: number, length: number): [number, number] {
    return [Math.floor(offset / this.chunkSize), Math.floor((offset + length - 1) / this.chunkSize)];
  }

  private covers(offset: number, length: number, index: number): boolean {
    const start = index * this.chunkSize;
    return offset <= start && offset + length >= start + this.chunkLength(index);
  }

  private checkRange(offset: number, length: number): void {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > this.size) {
      throw new RangeError(`range ${offset}+${length} is outside the disk (${this.size} bytes)`);
    }
  }

  /** `once`: data read once (a capture), through the page cache or past it (SegmentedImage.readOnce). */
  private async readFileInto(buf: Buffer, at: number, length: number, position: number, once = false): Promise<void> {
    try {
      if (once) await this.image.readOnce(buf, at, length, position);
      else await this.image.read(buf, at, length, position);
    } catch (e) {
      throw new BlockIoError(`read failed: ${(e as Error).message}`);
    }
  }

  private async writeFile(data: Buffer, position: number): Promise<void> {
    try {
      await this.image.write(data, position);
    } catch (e) {
      throw new BlockIoError(`write failed: ${(e as Error).message}`);
    }
  }
}

function span(a: number, b: number): number[] {
  const out: number[] = [];
  for (let i = a; i <= b; i++) out.push(i);
  return out;
}
