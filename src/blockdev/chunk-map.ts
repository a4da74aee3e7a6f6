/**
 * The per-disk chunk map: for every chunk of a disk, the write generation it was last written in
 * and whether it holds data. This is the changed-block tracking: a snapshot reads only chunks whose
 * generation is newer than the disk's base (the snapshot it last matched), and the first snapshot of
 * a new disk reads only chunks that were ever written.
 *
 * File format (little-endian), version 1:
 *   0  magic "SFCMAP01" (8 bytes)   8  u32 version = 1   12 u32 chunkSize   16 u32 chunkCount
 *   20 u32 currentGeneration        24..32 reserved (0)  32 entries: u32 per chunk
 * An entry's low 30 bits are its generation (0: untouched since creation or last restore), bit 31 is
 * "allocated" (the chunk may hold non-zero bytes; clear means it reads as zeros), bit 30 "stale"
 * (trimmed: reads as zeros, but the file still holds old bytes, so a partial write must zero the
 * chunk first; trimming therefore costs no data writes).
 *
 * Durability rule: an entry change is on disk (fdatasync) before the data write it describes is
 * started, so after a crash the map can only over-report changes, never miss one. Header and
 * entries are updated in place with positional writes; fsyncs of concurrent writers are grouped.
 */
import { open, type FileHandle } from 'node:fs/promises';
import { Coalesced } from '../lib/coalesced.ts';

const MAGIC = Buffer.from('SFCMAP01', 'latin1');
const VERSION = 1;
const HEADER = 32;
const ALLOCATED = 0x8000_0000;
const STALE = 0x4000_0000;
const GEN_MASK = 0x3fff_ffff;

export class ChunkMapFormatError extends Error {
  override name = 'ChunkMapFormatError';
}

export class ChunkMap {
  private readonly syncer: Coalesced;
  private dirtyRange: [number, number] | null = null;

  private constructor(
    private readonly fh: FileHandle,
    readonly chunkSize: number,
    private entries: Uint32Array,
    private generation: number,
  ) {
    this.syncer = new Coalesced(() => this.writeOut());
  }

  static async create(path: string, chunkSize: number, chunkCount: number): Promise<ChunkMap> {
    const fh = await open(path, 'w+');
    const map = new ChunkMap(fh, chunkSize, new Uint32Array(chunkCount), 1);
    await fh.write(map.header(), 0, HEADER, 0);
    await fh.write(Buffer.alloc(chunkCount * 4), 0, chunkCount * 4, HEADER);
    await fh.sync();
    return map;
  }

  static async open(path: string): Promise<ChunkMap> {
    const fh = await open(path, 'r+');
    try {
      const header = Buffer.alloc(HEADER);
      await fh.read(header, 0, HEADER, 0);
      if (!header.subarray(0, 8).equals(MAGIC)) throw new ChunkMapFormatError(`${path}: not a chunk map`);
      const version = header.readUInt32LE(8);
      if (version !== VERSION) throw new ChunkMapFormatError(`${path}: chunk map version ${version} is not supported`);
      const chunkSize = header.readUInt32LE(12);
      const count = header.readUInt32LE(16);
      const body = Buffer.alloc(count * 4);
      const { bytesRead } = await fh.read(body, 0, body.length, HEADER);
      if (bytesRead !== body.length) throw new ChunkMapFormatError(`${path}: truncated chunk map`);
      const entries = new Uint32Array(count);
      for (let i = 0; i < count; i++) entries[i] = body.readUInt32LE(i * 4);
      return new ChunkMap(fh, chunkSize, entries, header.readUInt32LE(20));
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

  isStale(index: number): boolean {
    return (this.entries[index]! & STALE) !== 0;
  }

  /**
   * Records that chunks [first, last] are about to be written ('data') or were trimmed ('trimmed':
   * reads as zeros, file bytes stale), and resolves once that record is durable. Chunks already
   * recorded so cost nothing.
   */
  async recordWrite(first: number, last: number, state: 'data' | 'trimmed'): Promise<void> {
    let changed = false;
    for (let i = first; i <= last; i++) {
      const want = (this.generation & GEN_MASK) | (state === 'data' ? ALLOCATED : STALE);
      if (this.entries[i] !== want) {
        this.entries[i] = want;
        this.markDirty(i);
        changed = true;
      }
    }
    if (changed) await this.syncer.run();
  }

  /** Starts a new generation; returns the one that just ended. Durable on return. */
  async advanceGeneration(): Promise<number> {
    const ended = this.generation;
    this.generation += 1;
    await this.syncer.run();
    return ended;
  }

  /** Resets every entry to generation 0 with the given state (after a restore). Durable on return. */
  async resetAll(state: (index: number) => 'data' | 'hole' | 'trimmed'): Promise<void> {
    for (let i = 0; i < this.entries.length; i++) {
      const s = state(i);
      this.entries[i] = s === 'data' ? ALLOCATED : s === 'trimmed' ? STALE : 0;
    }
    this.dirtyRange = [0, this.entries.length - 1];
    await this.syncer.run();
  }

  /** Grows the map to `chunkCount` entries (new chunks untouched). Durable on return. */
  async grow(chunkCount: number): Promise<void> {
    if (chunkCount < this.entries.length) throw new RangeError('a chunk map only grows');
    const bigger = new Uint32Array(chunkCount);
    bigger.set(this.entries);
    const oldCount = this.entries.length;
    this.entries = bigger;
    if (chunkCount > oldCount) this.dirtyRange = [Math.min(this.dirtyRange?.[0] ?? oldCount, oldCount), chunkCount - 1];
    await this.syncer.run();
  }

  async close(): Promise<void> {
    await this.syncer.run();
    await this.fh.close();
  }

  private markDirty(i: number): void {
    this.dirtyRange = this.dirtyRange ? [Math.min(this.dirtyRange[0], i), Math.max(this.dirtyRange[1], i)] : [i, i];
  }

  private header(): Buffer {
    const h = Buffer.alloc(HEADER);
    MAGIC.copy(h, 0);
    h.writeUInt32LE(VERSION, 8);
    h.writeUInt32LE(this.chunkSize, 12);
    h.writeUInt32LE(this.entries.length, 16);
    h.writeUInt32LE(this.generation, 20);
    return h;
  }

  private async writeOut(): Promise<void> {
    const range = this.dirtyRange;
    this.dirtyRange = null;
    await this.fh.write(this.header(), 0, HEADER, 0);
    if (range) {
      const [a, b] = range;
      const buf = Buffer.alloc((b - a + 1) * 4);
      for (let i = a; i <= b; i++) buf.writeUInt32LE(this.entries[i]!, (i - a) * 4);
      await this.fh.write(buf, 0, buf.length, HEADER + a * 4);
    }
    await this.fh.datasync();
  }
}
