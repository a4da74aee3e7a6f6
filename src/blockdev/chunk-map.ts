/**
 * The per-disk chunk map: for every chunk of a disk, the write generation it was last written in
 * and its state. This is the changed-block tracking: a snapshot reads only chunks whose generation
 * is newer than the disk's base (the snapshot it last matched), and the first snapshot of a new disk
 * reads only chunks that were ever written.
 *
 * File format (little-endian), version 1:
 *   0  magic "SFCMAP01" (8 bytes)   8  u32 version = 1   12 u32 chunkSize   16 u32 chunkCount
 *   20 u32 currentGeneration        24 u32 inUse (1 while open, 0 after a clean close)
 *   28 u32 lastWrittenGeneration    32 entries: u32 per chunk
 * An entry's low 30 bits are its generation (0: untouched since creation or last restore), bit 31 is
 * "allocated" (the chunk may hold non-zero bytes; clear means it reads as zeros), bit 30 "trimmed"
 * (reads as zeros, but the file still holds old bytes, so a partial write must zero the chunk first;
 * trimming therefore costs no data writes).
 *
 * Durability, and why it is cheap: most entry changes (a write into a hole or into data) are kept in
 * memory and written out at capture and close, never one fsync per write. Two things are synced
 * before a write lands: the map's "in use" mark (once per open) and the generation of the newest
 * write (once per generation, so once per snapshot). A map found in use at open was not closed
 * cleanly (a crash), so its entries may under-report. The one state a crash must never lose is
 * "trimmed" (forgetting it would resurrect old bytes), so transitions into and out of it are
 * written and synced before the data write they describe.
 *
 * The unclean-open rule, bounded by what is allocated. At an unclean open the caller names the
 * chunk ranges that may hold writes the map does not know of: the chunks of every segment file
 * that exists (see segmented-image.ts; a layout-1 disk is one segment that always exists). Every
 * chunk in those ranges that is not trimmed is taken as written in the newest written generation
 * and as possibly holding data; every other chunk keeps its saved entry. Why that is sound: a write
 * creates its segment file before any byte of it lands, so a segment that does not exist never
 * received a write the map could have missed (after a process crash the file is there; after a
 * power loss that lost the file's name, the write's bytes are gone too and the saved entry still
 * describes what the disk reads). Saved entries never claim more than the image holds durably for a
 * generation a snapshot froze, because a capture flushes the image before it advances the
 * generation (disk.ts) and a restore flushes before it resets the map. What it costs: one read of
 * each touched segment's chunks at the next snapshot (unless nothing was written since the last
 * one), instead of every chunk of the disk. It also tells an interrupted snapshot capture whether
 * the disk changed after it froze. Rejected: `stat().blocks > 0` instead of "the file exists": it
 * depends on how each filesystem counts delayed allocation, and existence never under-reports.
 *
 * Memory and I/O stay proportional to what changed, not to the disk: entries are saved by dirty
 * 4 KiB page (1024 entries; with 1 MiB chunks one page is one 1 GiB segment), a new map is a sparse
 * file (entries 0 are holes, nothing is written), and the entries are read and written as the
 * host's little-endian memory without a per-entry conversion.
 *
 * Rejected alternative: an fdatasync of the map before every first write to a chunk. Measured at
 * about 2 s per GiB of sequential writes on this machine's disks; it bought nothing the unclean-open
 * rule does not give.
 */
import { endianness } from 'node:os';
import { open, type FileHandle } from 'node:fs/promises';
import { Coalesced } from '../lib/coalesced.ts';
import { ChunkSet } from './chunk-set.ts';

const MAGIC = Buffer.from('SFCMAP01', 'latin1');
const VERSION = 1;
const HEADER = 32;
const ALLOCATED = 0x8000_0000;
const TRIMMED = 0x4000_0000;
const GEN_MASK = 0x3fff_ffff;
/** Entries per dirty-tracking page: 4 KiB of the file. */
const PAGE_ENTRIES = 1024;
/** Entries copied and written per write call: bounds the copy buffer to 4 MiB. */
const WRITE_SLICE_ENTRIES = 1 << 20;

// The file format is little-endian and the entries are copied to and from it as raw memory.
// Every platform Node supports for this service (x86-64, arm64) is little-endian; refuse the rest
// loudly rather than corrupt maps.
if (endianness() !== 'LE') throw new Error('chunk maps need a little-endian host');

export type ChunkState = 'data' | 'hole' | 'trimmed';

/** Inclusive chunk ranges that may hold writes the map does not know of (see the unclean-open rule). */
export type ChunkRanges = ReadonlyArray<readonly [first: number, last: number]>;

export class ChunkMapFormatError extends Error {
  override name = 'ChunkMapFormatError';
}

export class ChunkMap {
  private readonly syncer: Coalesced;
  /** Pages (of PAGE_ENTRIES entries) changed in memory since they were last written out. */
  private dirty: ChunkSet;
  private inUse = true;
  /** The newest written generation as it stands on disk. */
  private durableLastWritten: number;

  private constructor(
    private readonly fh: FileHandle,
    readonly chunkSize: number,
    private entries: Uint32Array,
    private generation: number,
    private lastWritten: number,
  ) {
    this.syncer = new Coalesced(() => this.writeOut());
    this.durableLastWritten = lastWritten;
    this.dirty = new ChunkSet(pageCount(entries.length));
  }

  /** Creates an empty map (every chunk a hole, generation 1) and leaves it open. Allocates nothing on disk. */
  static async create(path: string, chunkSize: number, chunkCount: number): Promise<ChunkMap> {
    const fh = await open(path, 'w+');
    try {
      const map = new ChunkMap(fh, chunkSize, new Uint32Array(chunkCount), 1, 0);
      // Entries 0 are holes of a sparse file: a 32765 GB disk's 128 MiB map costs no blocks.
      await fh.truncate(HEADER + chunkCount * 4);
      await fh.write(map.header(), 0, HEADER, 0);
      await fh.sync();
      return map;
    } catch (e) {
      await fh.close();
      throw e;
    }
  }

  /**
   * Opens a map. When it was not closed cleanly, the chunks in `mayHoldWrites` (default: all; a
   * function gets the map's chunk size) are taken as written (the unclean-open rule in the file
   * comment).
   */
  static async open(path: string, mayHoldWrites?: ChunkRanges | ((chunkSize: number) => ChunkRanges)): Promise<ChunkMap> {
    const fh = await open(path, 'r+');
    try {
      const header = Buffer.alloc(HEADER);
      await fh.read(header, 0, HEADER, 0);
      if (!header.subarray(0, 8).equals(MAGIC)) throw new ChunkMapFormatError(`${path}: not a chunk map`);
      const version = header.readUInt32LE(8);
      if (version !== VERSION) throw new ChunkMapFormatError(`${path}: chunk map version ${version} is not supported`);
      const chunkSize = header.readUInt32LE(12);
      const count = header.readUInt32LE(16);
      const generation = header.readUInt32LE(20);
      const unclean = header.readUInt32LE(24) !== 0;
      const lastWritten = header.readUInt32LE(28);
      const entries = new Uint32Array(count);
      const bytes = Buffer.from(entries.buffer, entries.byteOffset, entries.byteLength);
      let done = 0;
      while (done < bytes.length) {
        const { bytesRead } = await fh.read(bytes, done, bytes.length - done, HEADER + done);
        if (bytesRead === 0) throw new ChunkMapFormatError(`${path}: truncated chunk map`);
        done += bytesRead;
      }
      const map = new ChunkMap(fh, chunkSize, entries, generation, lastWritten);
      if (unclean) {
        const ranges = typeof mayHoldWrites === 'function' ? mayHoldWrites(chunkSize) : (mayHoldWrites ?? [[0, count - 1]]);
        map.takeAsWritten(ranges, lastWritten);
      }
      // Durably "in use" before any write can land: a crash from here on is recognised at next open.
      await map.syncer.run();
      return map;
    } catch (e) {
      await fh.close();
      throw e;
    }
  }

  get chunkCount(): number {
    return this.entries.length;
  }

  /** The generation writes are recorded in now. */
  get currentGeneration(): number {
    return this.generation;
  }

  generationOf(index: number): number {
    return this.entries[index]! & GEN_MASK;
  }

  isAllocated(index: number): boolean {
    return (this.entries[index]! & ALLOCATED) !== 0;
  }

  isTrimmed(index: number): boolean {
    return (this.entries[index]! & TRIMMED) !== 0;
  }

  /** The chunks whose generation is newer than `generation`: what a snapshot on that base must read. */
  changedSince(generation: number): ChunkSet {
    const out = new ChunkSet(this.entries.length);
    const e = this.entries;
    if (generation < 0) {
      // No trustworthy base (its manifest is gone, or named a chunk scrub removed): every chunk that
      // may hold data, whatever its generation (a restored chunk is allocated in generation 0).
      for (let i = 0; i < e.length; i++) if (e[i]! & ALLOCATED) out.add(i);
      return out;
    }
    for (let i = 0; i < e.length; i++) if ((e[i]! & GEN_MASK) > generation) out.add(i);
    return out;
  }

  /**
   * Records that chunks [first, last] are about to be written ('data') or were trimmed. Resolves
   * once the record is as durable as it needs to be: at once in memory for hole/data changes,
   * synced to disk for anything that enters or leaves the trimmed state.
   */
  async recordWrite(first: number, last: number, state: 'data' | 'trimmed'): Promise<void> {
    let mustSync = false;
    // Until the newest written generation is on disk, every writer waits for it (not only the first:
    // a second writer must not land its bytes while the first one's sync is still in flight).
    if (this.durableLastWritten < this.generation) {
      this.lastWritten = this.generation;
      mustSync = true;
    }
    const want = (this.generation & GEN_MASK) | (state === 'data' ? ALLOCATED : TRIMMED);
    for (let i = first; i <= last; i++) {
      const had = this.entries[i]!;
      if (had === want) continue;
      if ((had | want) & TRIMMED) mustSync = true;
      this.entries[i] = want;
      this.markDirty(i);
    }
    if (mustSync) await this.syncer.run();
  }

  /** Starts a new generation; returns the one that just ended. Durable on return. */
  async advanceGeneration(): Promise<number> {
    const ended = this.generation;
    this.generation += 1;
    await this.syncer.run();
    return ended;
  }

  /**
   * Resets every entry to generation 0 with the given state (after a restore). Durable on return.
   * Only entries that change are written out: a restore onto a fresh sparse disk writes the pages
   * of its data chunks, not the whole map.
   */
  async resetAll(state: (index: number) => ChunkState): Promise<void> {
    const e = this.entries;
    for (let i = 0; i < e.length; i++) {
      const s = state(i);
      const v = s === 'data' ? ALLOCATED : s === 'trimmed' ? TRIMMED : 0;
      if (e[i] !== v) {
        e[i] = v;
        this.markDirty(i);
      }
    }
    await this.syncer.run();
  }

  /** Grows the map to `chunkCount` entries (new chunks are holes). Durable on return. */
  async grow(chunkCount: number): Promise<void> {
    if (chunkCount < this.entries.length) throw new RangeError('a chunk map only grows');
    if (chunkCount === this.entries.length) return;
    const bigger = new Uint32Array(chunkCount);
    bigger.set(this.entries);
    // The new entries are holes of the file, before the header names them.
    await this.fh.truncate(HEADER + chunkCount * 4);
    const dirty = new ChunkSet(pageCount(chunkCount));
    for (const p of this.dirty) dirty.add(p);
    this.entries = bigger;
    this.dirty = dirty;
    await this.syncer.run();
  }

  /** Saves everything and marks the map cleanly closed. */
  async close(): Promise<void> {
    this.inUse = false;
    await this.syncer.run();
    await this.fh.close();
  }

  private takeAsWritten(ranges: ChunkRanges, lastWritten: number): void {
    const e = this.entries;
    for (const [first, last] of ranges) {
      for (let i = Math.max(0, first); i <= Math.min(last, e.length - 1); i++) {
        const had = e[i]!;
        // Trimmed entries are always saved before they take effect.
        if (had & TRIMMED) continue;
        const v = ALLOCATED | Math.max(had & GEN_MASK, lastWritten);
        if (v !== had) {
          e[i] = v;
          this.markDirty(i);
        }
      }
    }
  }

  private markDirty(i: number): void {
    this.dirty.add(Math.floor(i / PAGE_ENTRIES));
  }

  private header(): Buffer {
    const h = Buffer.alloc(HEADER);
    MAGIC.copy(h, 0);
    h.writeUInt32LE(VERSION, 8);
    h.writeUInt32LE(this.chunkSize, 12);
    h.writeUInt32LE(this.entries.length, 16);
    h.writeUInt32LE(this.generation, 20);
    h.writeUInt32LE(this.inUse ? 1 : 0, 24);
    h.writeUInt32LE(this.lastWritten, 28);
    return h;
  }

  private async writeOut(): Promise<void> {
    const pages = this.dirty;
    this.dirty = new ChunkSet(pageCount(this.entries.length));
    try {
      for (const [a, b] of entryRuns(pages, this.entries.length)) {
        for (let at = a; at < b; at += WRITE_SLICE_ENTRIES) {
          // A copy, taken synchronously: the entries keep changing while the write is in flight, and
          // an entry changed after the copy is marked dirty again.
          const slice = Buffer.from(this.entries.slice(at, Math.min(b, at + WRITE_SLICE_ENTRIES)).buffer);
          let done = 0;
          while (done < slice.length) done += (await this.fh.write(slice, done, slice.length - done, HEADER + at * 4 + done)).bytesWritten;
        }
      }
      // Entries before the header: a clean-close mark never lands ahead of the entries it vouches for.
      if (!this.inUse) await this.fh.datasync();
      const lastWritten = this.lastWritten;
      await this.fh.write(this.header(), 0, HEADER, 0);
      await this.fh.datasync();
      this.durableLastWritten = lastWritten;
    } catch (e) {
      for (const p of pages) this.dirty.add(p);
      throw e;
    }
  }
}

function pageCount(entries: number): number {
  return Math.ceil(entries / PAGE_ENTRIES);
}

/** Consecutive dirty pages as half-open entry ranges [a, b). */
function* entryRuns(pages: ChunkSet, entries: number): IterableIterator<[number, number]> {
  let start = -1;
  let end = -1;
  for (const p of pages) {
    if (p === end) {
      end = p + 1;
      continue;
    }
    if (start >= 0) yield [start * PAGE_ENTRIES, Math.min(entries, end * PAGE_ENTRIES)];
    start = p;
    end = p + 1;
  }
  if (start >= 0) yield [start * PAGE_ENTRIES, Math.min(entries, end * PAGE_ENTRIES)];
}
