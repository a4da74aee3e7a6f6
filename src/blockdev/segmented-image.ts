/**
 * A disk's bytes as fixed-size segment files: `{id}.d/00000042.seg` holds bytes
 * [42 * SEGMENT_BYTES, 43 * SEGMENT_BYTES). A segment is created by the first write that touches it;
 * a missing segment reads as zeros. So creating a disk of any size (BCC sells up to 32765 GB) is
 * instant and allocates nothing, and no file ever comes near ext4's 16 TiB per-file limit (the
 * previous release kept one sparse file per disk, and ftruncate failed with EFBIG from 16384 GB on).
 *
 * Layout versions (`{id}.d/layout.json`, written with a temp file, fsync, rename, fsync of the dir):
 *   1  the previous release: one sparse `{id}.img` of the disk's size, no layout file.
 *   2  this one: `{"format":"snapferry-disk-layout","version":2,"sizeBytes","segmentBytes","legacyBytes"}`.
 *      Bytes [0, legacyBytes) live in the layout-1 file `{id}.img` (a disk of the previous release
 *      that was grown keeps its old file, and grows into segments: nothing is copied); bytes from
 *      legacyBytes on live in segments. Disks created by this release have legacyBytes = 0.
 * A layout file with a newer version is refused (DiskFormatError), never guessed at.
 *
 * Why 1 GiB segments (= 1024 chunks of 1 MiB; every allowed chunk size divides 1 GiB, so a chunk
 * never straddles two segments): a segment is also the unit of the chunk map's unclean-open rule
 * (after a crash every chunk of a segment that exists is taken as written), so smaller segments
 * bound the re-read after a crash more tightly but cost more files; 1 GiB keeps the largest disk at
 * 32765 files (ext4 and xfs directories handle that without trouble) and the 64 open handles of the
 * LRU cover 64 GiB of working set. Rejected: 16 TiB segments (two files for the largest disk, but
 * a crash would then re-read up to 16 TiB); 64 MiB segments (half a million files per large disk).
 *
 * Durability: `flush` fdatasyncs every segment written since the last flush (an evicted handle is
 * fdatasynced before it is closed, so a write-back error is reported on the descriptor that wrote)
 * and fsyncs the segment directory when segments were created, so a created segment's name is as
 * durable as its bytes.
 */
import { constants, writeSync } from 'node:fs';
import { mkdir, open, readdir, readFile, rename, type FileHandle } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { DIRECT_IO_ALIGN } from '../lib/aligned-memory.ts';
import { closeFd, O_DIRECT, openPerhapsDirect, readFd, writeFd } from '../lib/raw-fd.ts';
import { ReadPathChooser } from './read-path.ts';
import { WritePathChooser } from './write-path.ts';

export const SEGMENT_BYTES = 1 << 30;
export const LAYOUT_VERSION = 2;
const LAYOUT_FORMAT = 'snapferry-disk-layout';
const LAYOUT_FILE = 'layout.json';
const LEGACY_KEY = -1;

function isAligned(at: number, length: number, position: number): boolean {
  return at % DIRECT_IO_ALIGN === 0 && length % DIRECT_IO_ALIGN === 0 && position % DIRECT_IO_ALIGN === 0;
}

/** Open segment handles kept per disk (least recently used ones are closed beyond this). */
export const DEFAULT_MAX_OPEN_SEGMENTS = 64;

export interface ImageLayout {
  sizeBytes: number;
  segmentBytes: number;
  /** Bytes [0, legacyBytes) live in the layout-1 file; 0 for disks created by this release. */
  legacyBytes: number;
}

export class DiskFormatError extends Error {
  override name = 'DiskFormatError';
}

export function segmentName(index: number): string {
  return `${String(index).padStart(8, '0')}.seg`;
}

/** The layout of a segment directory, or null when it has no layout file (a layout-1 disk, or none). */
export async function readLayout(segmentDir: string): Promise<ImageLayout | null> {
  let text: string;
  try {
    text = await readFile(join(segmentDir, LAYOUT_FILE), 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw e;
  }
  let v: Record<string, unknown>;
  try {
    v = JSON.parse(text) as Record<string, unknown>;
  } catch {
    throw new DiskFormatError(`${segmentDir}: layout file is not JSON`);
  }
  if (v.format !== LAYOUT_FORMAT) throw new DiskFormatError(`${segmentDir}: not a disk layout file`);
  if (v.version !== LAYOUT_VERSION) throw new DiskFormatError(`${segmentDir}: disk layout version ${String(v.version)} is not supported (this build reads ${LAYOUT_VERSION})`);
  const layout = { sizeBytes: v.sizeBytes, segmentBytes: v.segmentBytes, legacyBytes: v.legacyBytes };
  for (const [k, n] of Object.entries(layout)) {
    if (!Number.isSafeInteger(n) || (n as number) < 0) throw new DiskFormatError(`${segmentDir}: layout ${k} is not a non-negative integer`);
  }
  if (layout.segmentBytes === 0) throw new DiskFormatError(`${segmentDir}: layout segmentBytes is 0`);
  return layout as ImageLayout;
}

/** Writes the layout file atomically and durably (the directory must exist). */
export async function writeLayout(segmentDir: string, layout: ImageLayout): Promise<void> {
  const tmp = join(segmentDir, `${LAYOUT_FILE}.tmp`);
  const fh = await open(tmp, 'w');
  try {
    await fh.writeFile(JSON.stringify({ format: LAYOUT_FORMAT, version: LAYOUT_VERSION, ...layout }));
    await fh.datasync();
  } finally {
    await fh.close();
  }
  await rename(tmp, join(segmentDir, LAYOUT_FILE));
  await syncDir(segmentDir);
}

/** Indexes of the segment files that exist, ascending. */
export async function listSegments(segmentDir: string): Promise<number[]> {
  const names = await readdir(segmentDir).catch((e: NodeJS.ErrnoException) => {
    if (e.code === 'ENOENT') return [] as string[];
    throw e;
  });
  return names.filter((n) => /^\d{8}\.seg$/.test(n)).map((n) => Number(n.slice(0, 8))).sort((a, b) => a - b);
}

export async function syncDir(dir: string): Promise<void> {
  const fh = await open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

interface Slot {
  /** The open handle, or null when the segment does not exist (yet). */
  fh: Promise<FileHandle | null>;
  state: 'opening' | 'open' | 'missing' | 'failed';
  users: number;
  /** Written since its last fdatasync. */
  dirty: boolean;
}

export class SegmentedImage {
  /** Insertion order is recency: a use moves the slot to the end; eviction takes from the front. */
  private readonly slots = new Map<number, Slot>();
  private readonly evictions = new Set<Promise<void>>();
  private dirCreatedSinceFlush = false;
  /** False once the file system refused O_DIRECT (readDirect then reads through the page cache). */
  private directReads = O_DIRECT !== 0;
  /** The same for writes (writeDirect then writes through the page cache). */
  private directWrites = O_DIRECT !== 0;
  /** How `readOnce` reads: through the page cache or past it. */
  private readonly onceReads = new ReadPathChooser();
  /** A failure of a background eviction's fdatasync, reported by the next flush. */
  private evictionFailure: Error | null = null;
  /** How `write` writes: on the event loop or through the thread pool. */
  private readonly writes: WritePathChooser;

  constructor(
    private readonly segmentDir: string,
    /** The layout-1 file holding bytes [0, layout.legacyBytes), or null when there is none. */
    private readonly legacyPath: string | null,
    private layout: ImageLayout,
    private readonly maxOpen = DEFAULT_MAX_OPEN_SEGMENTS,
    /** How `write` writes (tests pass one that always answers one way). */
    writes: WritePathChooser = new WritePathChooser(),
  ) {
    this.writes = writes;
    if (layout.legacyBytes > 0 && !legacyPath) throw new DiskFormatError('a layout with legacy bytes needs the legacy file');
  }

  get size(): number {
    return this.layout.sizeBytes;
  }

  get segmentBytes(): number {
    return this.layout.segmentBytes;
  }

  get legacyBytes(): number {
    return this.layout.legacyBytes;
  }

  /** Handles open now (for tests and metrics). */
  get openHandles(): number {
    return this.slots.size;
  }

  /** Reads `length` bytes at `position` into `buf` at `at`; bytes no file holds read as zeros. */
  async read(buf: Buffer, at: number, length: number, position: number): Promise<void> {
    for (const p of this.pieces(position, length)) {
      await this.withSegment(p.key, false, async (fh) => {
        if (!fh) {
          buf.fill(0, at + p.offset, at + p.offset + p.length);
          return;
        }
        let done = 0;
        while (done < p.length) {
          const { bytesRead } = await fh.read(buf, at + p.offset + done, p.length - done, p.filePosition + done);
          if (bytesRead === 0) {
            buf.fill(0, at + p.offset + done, at + p.offset + p.length); // past a file's end: zeros
            return;
          }
          done += bytesRead;
        }
      });
    }
  }

  /**
   * Reads bytes that are read once (a capture): through the page cache or past it (`readDirect`),
   * whichever way recent reads found faster. The answer is always `read`'s; only the cost differs
   * (read-path.ts says how the way is chosen, and what each costs).
   */
  async readOnce(buf: Buffer, at: number, length: number, position: number): Promise<void> {
    const way = this.onceReads.next();
    const started = performance.now();
    if (way === 'direct') await this.readDirect(buf, at, length, position);
    else await this.read(buf, at, length, position);
    this.onceReads.observe(way, length, performance.now() - started);
  }

  /**
   * Reads like `read`, but past the page cache (O_DIRECT) where the kernel allows it: for a snapshot
   * capture, which reads each chunk once. Measured on the dev VM (3 GiB of data in a 4 GiB file, 3
   * reads of 4 MiB in flight): 0.4 s of system CPU where buffered reads took 2.7-5.4 s (the copy out
   * of the page cache), and faster under load; nor does a capture evict the page cache for data
   * read once. Coherent with buffered writes (the kernel writes a range's dirty pages back before it
   * reads the range directly); a caller must still keep writes off the range during the read (a
   * capture holds the chunks' locks).
   *
   * O_DIRECT needs `buf`'s memory, `at`, `length` and `position` aligned to the device's block size
   * (memory of a WebAssembly.Memory is page-aligned); what the kernel refuses (EINVAL: an unaligned
   * buffer, a file system without O_DIRECT), and whatever follows a short read (a file's end), is
   * read through the page cache instead, so the answer is always the same as `read`'s.
   */
  async readDirect(buf: Buffer, at: number, length: number, position: number): Promise<void> {
    if (!this.directReads || !isAligned(at, length, position)) return this.read(buf, at, length, position);
    for (const p of this.pieces(position, length)) {
      const done = await this.readPieceDirect(p.key, buf, at + p.offset, p.length, p.filePosition);
      if (done < p.length) await this.read(buf, at + p.offset + done, p.length - done, position + p.offset + done);
    }
  }

  /** Bytes of one piece read directly (from 0: the rest, if any, is for the buffered path). */
  private async readPieceDirect(key: number, buf: Buffer, at: number, length: number, filePosition: number): Promise<number> {
    let done: number | null;
    try {
      done = await this.transferDirect(key, constants.O_RDONLY, length, (fd, d) => readFd(fd, buf, at + d, length - d, filePosition + d));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return 0; // the buffered path decides: a missing segment reads as zeros
      throw e;
    }
    if (done === null) this.directReads = false; // no O_DIRECT on this file system: never try again
    return done ?? 0;
  }

  /**
   * One piece moved past the page cache: `transfer` (a read or write of the rest, from `done`) on a
   * descriptor of segment `key` opened with O_DIRECT for this piece alone (lib/raw-fd.ts). Answers
   * the bytes moved from the piece's start, and stops early, leaving the rest to the caller's
   * buffered path: where the file system refuses O_DIRECT at the open (null: the caller stops
   * asking) or at a transfer (EINVAL, e.g. memory the kernel will not take directly), and after a
   * short transfer (a file's end).
   */
  private async transferDirect(key: number, flags: number, length: number, transfer: (fd: number, done: number) => Promise<number>): Promise<number | null> {
    const opened = await openPerhapsDirect(this.segmentPath(key), flags, true);
    try {
      if (!opened.direct) return null;
      let done = 0;
      while (done < length) {
        let moved: number;
        try {
          moved = await transfer(opened.fd, done);
        } catch (e) {
          if ((e as NodeJS.ErrnoException).code === 'EINVAL') return done;
          throw e;
        }
        done += moved;
        if (moved === 0 || !isAligned(0, done, 0)) return done;
      }
      return done;
    } finally {
      closeFd(opened.fd);
    }
  }

  /**
   * Writes `data` at `position`, creating the segments it touches. Durable after the next flush.
   * On the event loop or through the thread pool, as `writes` (write-path.ts) decides.
   */
  async write(data: Buffer, position: number): Promise<void> {
    for (const p of this.pieces(position, data.length)) {
      await this.withSegment(p.key, true, async (fh, slot) => {
        let done = 0;
        try {
          if (this.writes.next(p.length) === 'inline') {
            // Safe on the raw descriptor: `fh.fd` is -1 once a close has begun (writeSync refuses it;
            // no other file can have the number yet), and nothing awaits between reading it and the write.
            const started = performance.now();
            while (done < p.length) done += writeSync(fh!.fd, data, p.offset + done, p.length - done, p.filePosition + done);
            this.writes.observeInline(performance.now() - started);
          }
          while (done < p.length) {
            const { bytesWritten } = await fh!.write(data, p.offset + done, p.length - done, p.filePosition + done);
            done += bytesWritten;
          }
        } finally {
          // Marked when the write is done (also partly): a flush that began while it was in flight
          // may have cleared the mark before these bytes landed; the next flush must sync them.
          slot.dirty = true;
        }
      });
    }
  }

  /**
   * Writes like `write`, but past the page cache (O_DIRECT) where the kernel allows it: for a
   * restore, which writes every chunk of a disk that nothing else writes meanwhile. Why: on this
   * kind of VM, page-cache pages the guest has not touched lately are backed by the host only on
   * first touch, and filling them ran at ~425 MB/s against 5 GB/s for pages in use (docs/benchmarks.md,
   * 2026-12-04): a 1 GiB restore took 2.6-2.9 s when its writes found such pages, 1.0 s when they
   * did not. A direct write never allocates page-cache pages, and its fdatasync at the end has
   * nothing left to write back but the file's metadata.
   *
   * Durable after the next flush, as any write (the slot is marked dirty: its fdatasync makes the
   * file's size and extents, and the device's cache, durable). Coherent with the page cache: the
   * kernel writes a range's cached pages back and drops them around a direct write over it. What
   * is not aligned (memory, length, position), or refused by the file system (EINVAL), and
   * whatever follows a short write, goes through `write`, so the bytes always land.
   */
  async writeDirect(data: Buffer, position: number): Promise<void> {
    if (!this.directWrites || !isAligned(data.byteOffset, data.length, position)) return this.write(data, position);
    for (const p of this.pieces(position, data.length)) {
      const done = await this.writePieceDirect(p.key, data, p.offset, p.length, p.filePosition);
      if (done < p.length) await this.write(data.subarray(p.offset + done, p.offset + p.length), position + p.offset + done);
    }
  }

  /** Bytes of one piece written directly (from 0: the rest, if any, is for the buffered path). */
  private async writePieceDirect(key: number, data: Buffer, offset: number, length: number, filePosition: number): Promise<number> {
    // Through the slot: the segment is created (and its directory synced at the next flush) as for any write.
    return this.withSegment(key, true, async (_fh, slot) => {
      try {
        const done = await this.transferDirect(key, constants.O_WRONLY, length, (fd, d) => writeFd(fd, data, offset + d, length - d, filePosition + d));
        if (done === null) this.directWrites = false; // no O_DIRECT on this file system: never try again
        return done ?? 0;
      } finally {
        // RESTORE-1 (docs/design.md): marked also when partly written, so the next flush syncs whatever landed.
        slot.dirty = true;
      }
    });
  }

  /** Makes every write that resolved before this call durable (see the file comment). */
  async flush(): Promise<void> {
    await Promise.all([...this.evictions]);
    const failure = this.evictionFailure;
    this.evictionFailure = null;
    if (failure) throw failure;
    await this.syncSegments(() => true);
  }

  /**
   * Makes the writes to [position, position + length) durable: `flush` for the segments that
   * range touches only (a write that must land durably before another may start, DISK-1's zeros,
   * need not wait for every other dirty segment of the disk). A failed eviction is reported here
   * and kept for the next `flush` too: it may hold bytes of this range.
   */
  async flushRange(position: number, length: number): Promise<void> {
    await Promise.all([...this.evictions]);
    if (this.evictionFailure) throw this.evictionFailure;
    const keys = new Set<number>();
    for (const p of this.pieces(position, length)) keys.add(p.key);
    await this.syncSegments((key) => keys.has(key));
  }

  /** Datasyncs the dirty open segments `which` selects, then the segment directory if a segment was created since. */
  private async syncSegments(which: (key: number) => boolean): Promise<void> {
    const dirty = [...this.slots].filter(([key, s]) => s.dirty && which(key));
    await Promise.all(
      dirty.map(([key, slot]) => {
        slot.dirty = false; // a write landing during the sync marks it again for the next flush
        return this.withSegment(key, false, async (fh) => {
          try {
            await fh?.datasync();
          } catch (e) {
            slot.dirty = true;
            throw e;
          }
        });
      }),
    );
    if (this.dirCreatedSinceFlush) {
      this.dirCreatedSinceFlush = false;
      try {
        await syncDir(this.segmentDir);
      } catch (e) {
        this.dirCreatedSinceFlush = true;
        throw e;
      }
    }
  }

  /**
   * Grows the image to `sizeBytes`: writes the new layout (durable on return; the segment directory
   * is created for a layout-1 disk growing for the first time). New bytes read as zeros.
   */
  async grow(sizeBytes: number): Promise<void> {
    if (sizeBytes < this.layout.sizeBytes) throw new RangeError('a disk only grows');
    const next = { ...this.layout, sizeBytes };
    await mkdir(this.segmentDir, { recursive: true });
    await syncDir(dirname(this.segmentDir));
    await writeLayout(this.segmentDir, next);
    this.layout = next;
  }

  /** Closes every handle, fdatasyncing the dirty ones first. */
  async close(): Promise<void> {
    const all = [...this.slots.entries()];
    this.slots.clear();
    const results = await Promise.allSettled([...all.map(([, slot]) => closeSlot(slot)), ...this.evictions]);
    const failed = results.find((r) => r.status === 'rejected');
    if (failed) throw (failed as PromiseRejectedResult).reason;
  }

  /** Splits [position, position+length) at legacy and segment boundaries. */
  private *pieces(position: number, length: number): IterableIterator<{ key: number; offset: number; length: number; filePosition: number }> {
    const { legacyBytes, segmentBytes } = this.layout;
    let pos = position;
    const end = position + length;
    while (pos < end) {
      if (pos < legacyBytes) {
        const n = Math.min(end, legacyBytes) - pos;
        yield { key: LEGACY_KEY, offset: pos - position, length: n, filePosition: pos };
        pos += n;
      } else {
        const k = Math.floor(pos / segmentBytes);
        const n = Math.min(end, (k + 1) * segmentBytes) - pos;
        yield { key: k, offset: pos - position, length: n, filePosition: pos - k * segmentBytes };
        pos += n;
      }
    }
  }

  /** Runs `fn` with segment `key`'s handle (null: missing and `create` false); the handle is not closed meanwhile. */
  private async withSegment<T>(key: number, create: boolean, fn: (fh: FileHandle | null, slot: Slot) => Promise<T>): Promise<T> {
    let slot = this.slots.get(key);
    if (slot) {
      this.slots.delete(key);
      this.slots.set(key, slot);
    } else {
      slot = { fh: Promise.resolve(null), state: 'opening', users: 0, dirty: false };
      this.startOpen(slot, key, false);
      this.slots.set(key, slot);
    }
    slot.users++;
    try {
      let handle: FileHandle | null;
      for (;;) {
        const pending = slot.fh;
        handle = await pending;
        if (handle || !create) break;
        // Missing and we write: the first writer creates it, later ones share that open.
        if (slot.fh === pending) this.startOpen(slot, key, true);
      }
      return await fn(handle, slot);
    } finally {
      slot.users--;
      // Missing segments (and failed opens, retried next time) keep no slot.
      if (slot.users === 0 && (slot.state === 'missing' || slot.state === 'failed') && this.slots.get(key) === slot) this.slots.delete(key);
      this.evictIdle();
    }
  }

  private startOpen(slot: Slot, key: number, create: boolean): void {
    const pending = this.openSegment(key, create);
    slot.fh = pending;
    slot.state = 'opening';
    // Registered before any caller awaits `pending`, so the state is right when they resume.
    pending.then(
      (fh) => {
        if (slot.fh === pending) slot.state = fh ? 'open' : 'missing';
      },
      () => {
        if (slot.fh === pending) slot.state = 'failed';
      },
    );
  }

  private segmentPath(key: number): string {
    return key === LEGACY_KEY ? this.legacyPath! : join(this.segmentDir, segmentName(key));
  }

  private async openSegment(key: number, create: boolean): Promise<FileHandle | null> {
    const path = this.segmentPath(key);
    try {
      return await open(path, 'r+');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT' || key === LEGACY_KEY) throw e;
      if (!create) return null;
    }
    // O_CREAT without O_TRUNC: a concurrent creator elsewhere can never truncate what was written.
    const fh = await open(path, constants.O_RDWR | constants.O_CREAT, 0o644);
    this.dirCreatedSinceFlush = true;
    return fh;
  }

  private evictIdle(): void {
    if (this.slots.size <= this.maxOpen) return;
    for (const [key, slot] of this.slots) {
      if (this.slots.size <= this.maxOpen) break;
      if (slot.users > 0 || slot.state === 'opening') continue;
      this.slots.delete(key);
      const done: Promise<void> = closeSlot(slot)
        .catch((e: Error) => {
          this.evictionFailure ??= e;
        })
        .finally(() => this.evictions.delete(done));
      this.evictions.add(done);
    }
  }
}

async function closeSlot(slot: Slot): Promise<void> {
  const fh = await slot.fh.catch(() => null);
  if (!fh) return;
  try {
    if (slot.dirty) await fh.datasync();
  } finally {
    await fh.close();
  }
}
