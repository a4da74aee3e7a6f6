/**
 * The disks of one region, in `{dir}`:
 *   `{id}.map`  the chunk map (chunk-map.ts), both layouts;
 *   `{id}.d/`   layout 2 (this release): `layout.json` and 1 GiB segment files (segmented-image.ts);
 *   `{id}.img`  layout 1 (the previous release): one sparse file; still read and written, and a
 *               grown layout-1 disk keeps it for its first bytes and grows into `{id}.d/`.
 *
 * Users take a counted handle (`acquire`/`release`, or `use` for a scoped call): one Disk object per
 * volume, shared by the NBD server, the HTTP data routes, captures and restores, so that
 * copy-on-write sees every writer. A disk nobody holds is closed after `idleCloseMs` (its map is
 * 4 bytes a chunk in memory: 128 MiB for the largest disk; 32 disks of 1 TiB touched once used to
 * stay open for good). A disk is never closed under a holder, nor while a capture of it runs or
 * waits. Rejected: an LRU bound on open disks; it would have to close disks that are in use, or
 * grow past its bound anyway, and says nothing about how long an idle disk may keep its memory.
 */
import { mkdir, readdir, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { ChunkMap, type ChunkRanges } from './chunk-map.ts';
import { Disk } from './disk.ts';
import { DEFAULT_MAX_OPEN_SEGMENTS, DiskFormatError, listSegments, readLayout, SEGMENT_BYTES, SegmentedImage, syncDir, writeLayout, type ImageLayout } from './segmented-image.ts';

/** A held disk. `using held = await disks.acquire(id)` releases it at the end of the scope. */
export interface DiskHandle extends Disposable {
  readonly disk: Disk;
  /** Gives the disk back; idempotent. The disk may be closed once nobody holds it for a while. */
  release(): void;
}

export interface DiskManagerOptions {
  /** How long a disk nobody holds stays open (default 30 s). */
  idleCloseMs?: number;
  /** Open segment handles per disk (default 64). */
  maxOpenSegments?: number;
  /** Told about a failure closing an idle disk (nobody is waiting for that close to report it). */
  onCloseError?: (id: string, error: unknown) => void;
}

interface Entry {
  disk: Promise<Disk>;
  /** The disk once opened (so an idle check needs no await). */
  opened: Disk | null;
  refs: number;
  timer: NodeJS.Timeout | null;
}

export class DiskManager {
  private readonly entries = new Map<string, Entry>();
  /** Closes in progress: an acquire of the same disk waits for it, so two Disk objects never share files. */
  private readonly closing = new Map<string, Promise<void>>();
  private readonly idleCloseMs: number;
  private readonly maxOpenSegments: number;

  constructor(
    private readonly dir: string,
    readonly chunkSize: number,
    private readonly options: DiskManagerOptions = {},
  ) {
    if (SEGMENT_BYTES % chunkSize !== 0) throw new RangeError(`chunk size ${chunkSize} does not divide the segment size ${SEGMENT_BYTES}`);
    this.idleCloseMs = options.idleCloseMs ?? 30_000;
    this.maxOpenSegments = options.maxOpenSegments ?? DEFAULT_MAX_OPEN_SEGMENTS;
  }

  async init(): Promise<void> {
    await mkdir(this.dir, { recursive: true });
  }

  /** Disks open now (held or idle). */
  get openCount(): number {
    return this.entries.size;
  }

  private paths(id: string): { map: string; legacy: string; segments: string } {
    return { map: join(this.dir, `${id}.map`), legacy: join(this.dir, `${id}.img`), segments: join(this.dir, `${id}.d`) };
  }

  /**
   * Creates an empty (all-zero) disk of `size` bytes in layout 2: instant and allocating nothing,
   * whatever the size. Idempotent: whatever a disk of this id had is removed first, so a retried
   * creation starts clean. Durable on return (the layout file, written last, and the directory).
   */
  async create(id: string, size: number): Promise<void> {
    await this.delete(id);
    const p = this.paths(id);
    await mkdir(p.segments);
    const map = await ChunkMap.create(p.map, this.chunkSize, Math.ceil(size / this.chunkSize));
    await map.close();
    await writeLayout(p.segments, { sizeBytes: size, segmentBytes: SEGMENT_BYTES, legacyBytes: 0 });
    await syncDir(this.dir);
  }

  /** Ids of every disk with any file here (either layout, or the remains of a half-done create or delete). */
  async list(): Promise<string[]> {
    const names = await readdir(this.dir).catch(() => [] as string[]);
    const ids = new Set<string>();
    for (const n of names) {
      const m = /^(.+)\.(img|map|d)$/.exec(n);
      if (m) ids.add(m[1]!);
    }
    return [...ids];
  }

  /** Takes a handle on a disk, opening it if needed. Throws when the disk has no files (ENOENT) or unreadable ones. */
  async acquire(id: string): Promise<DiskHandle> {
    for (;;) {
      const closing = this.closing.get(id);
      if (closing) {
        await closing.catch(() => undefined);
        continue;
      }
      let entry = this.entries.get(id);
      if (!entry) {
        const created: Entry = { disk: this.openDisk(id), opened: null, refs: 0, timer: null };
        created.disk.then(
          (disk) => (created.opened = disk),
          () => {
            if (this.entries.get(id) === created) this.entries.delete(id);
          },
        );
        this.entries.set(id, created);
        entry = created;
      }
      entry.refs++;
      if (entry.timer) clearTimeout(entry.timer);
      entry.timer = null;
      let disk: Disk;
      try {
        disk = await entry.disk;
      } catch (e) {
        entry.refs--;
        throw e;
      }
      const held = entry;
      let released = false;
      const release = (): void => {
        if (released) return;
        released = true;
        if (--held.refs === 0 && this.entries.get(id) === held) this.scheduleIdleClose(id, held);
      };
      return { disk, release, [Symbol.dispose]: release };
    }
  }

  /** Runs `fn` with the disk held. */
  async use<T>(id: string, fn: (disk: Disk) => Promise<T>): Promise<T> {
    const handle = await this.acquire(id);
    try {
      return await fn(handle.disk);
    } finally {
      handle.release();
    }
  }

  /** Closes the disk (under any holder: the caller owns the disk's lease) and removes its files, both layouts. */
  async delete(id: string): Promise<void> {
    await this.forget(id);
    const p = this.paths(id);
    await rm(p.segments, { recursive: true, force: true });
    await rm(p.legacy, { force: true });
    await rm(p.map, { force: true });
    await syncDir(this.dir).catch(() => undefined); // best effort: recovery removes files left behind
  }

  async closeAll(): Promise<void> {
    const all = [...this.entries.keys()];
    await Promise.allSettled(all.map((id) => this.forget(id)));
    await Promise.allSettled([...this.closing.values()]);
  }

  private scheduleIdleClose(id: string, entry: Entry): void {
    entry.timer = setTimeout(() => this.closeIfIdle(id, entry), this.idleCloseMs);
    entry.timer.unref();
  }

  private closeIfIdle(id: string, entry: Entry): void {
    entry.timer = null;
    if (this.entries.get(id) !== entry || entry.refs > 0) return;
    if (entry.opened?.capturing) {
      this.scheduleIdleClose(id, entry);
      return;
    }
    this.beginClose(id, entry).catch((e) => this.options.onCloseError?.(id, e));
  }

  private async forget(id: string): Promise<void> {
    const pending = this.closing.get(id);
    if (pending) await pending.catch(() => undefined); // else no await before the close is registered
    const entry = this.entries.get(id);
    if (entry) await this.beginClose(id, entry);
  }

  /**
   * Takes the entry out and closes its disk. The close is registered before anything is awaited, so
   * an acquire from here on waits for it instead of opening the same files a second time.
   */
  private beginClose(id: string, entry: Entry): Promise<void> {
    this.entries.delete(id);
    if (entry.timer) clearTimeout(entry.timer);
    entry.timer = null;
    const done: Promise<void> = (async () => {
      const disk = await entry.disk.catch(() => null);
      await disk?.close();
    })().finally(() => {
      if (this.closing.get(id) === done) this.closing.delete(id);
    });
    this.closing.set(id, done);
    return done;
  }

  private async openDisk(id: string): Promise<Disk> {
    const p = this.paths(id);
    let layout: ImageLayout | null = await readLayout(p.segments);
    if (!layout) {
      // Layout 1: the previous release's single sparse file; its length is the disk's size.
      const { size } = await stat(p.legacy);
      layout = { sizeBytes: size, segmentBytes: SEGMENT_BYTES, legacyBytes: size };
    }
    const { legacyBytes, segmentBytes, sizeBytes } = layout;
    const existing = await listSegments(p.segments);
    // What the unclean-open rule takes as written: the legacy file's chunks and those of every segment that exists.
    const mayHoldWrites = (chunkSize: number): ChunkRanges => [
      ...(legacyBytes > 0 ? [[0, Math.ceil(legacyBytes / chunkSize) - 1] as const] : []),
      ...existing.map((k) => [Math.floor((k * segmentBytes) / chunkSize), Math.ceil(((k + 1) * segmentBytes) / chunkSize) - 1] as const),
    ];
    const map = await ChunkMap.open(p.map, mayHoldWrites);
    try {
      const want = Math.ceil(sizeBytes / map.chunkSize);
      // A grow cut short after the layout (or, in layout 1, the file) grew and before the map did: the new chunks were never written.
      if (map.chunkCount < want) await map.grow(want);
      if (map.chunkCount > want) throw new DiskFormatError(`disk ${id}: the chunk map has ${map.chunkCount} chunks, more than ${sizeBytes} bytes hold`);
      const image = new SegmentedImage(p.segments, legacyBytes > 0 ? p.legacy : null, layout, this.maxOpenSegments);
      return new Disk(id, image, map);
    } catch (e) {
      await map.close();
      throw e;
    }
  }
}
