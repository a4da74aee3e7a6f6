/**
 * `ChunkStore` on a local directory.
 *
 * Layout: `root/ab/<64-hex id>` where `ab` is the first two hex characters of the id (256 fan-out
 * directories, created on open), and `root/.tmp/` for blobs that are put but not yet synced.
 *
 * Compression at rest: a blob put with a `packed` form (a zstd frame of its bytes, made by the
 * caller: a capture's hash worker, an incoming copy's body) that is smaller than the blob is kept as
 * that frame, under `root/ab/<id>.zst`; every other blob as its plain bytes under `root/ab/<id>`.
 * One form per id: a put finds either, a sync that renames one form into place removes the other
 * (only a damaged plain file can be there then). Reads decode the frame and re-hash the decoded
 * bytes (CS-4): a frame that does not decode, or decodes to other bytes, is damage like any other.
 * Stores written before compression at rest hold plain files only and are read as they are.
 *
 * Crash safety (invariant CS-1: a file under its final name is always whole and durable):
 * - `put` verifies the hash, writes the bytes to a new temp file `root/.tmp/<id>.<nonce>` without
 *   fsync and records it as pending. From then on `get`/`has`/`list` see it (reads go to the temp
 *   file).
 * - `sync` fsyncs the pending temp files (in parallel, bounded), renames each one to its final name
 *   only after its own fsync succeeded, then fsyncs each touched fan-out directory once; only then
 *   is the blob durable. A crash loses only pending temp files, which `open` deletes.
 * - A failed write (ENOSPC, EIO...) removes the temp file and rejects the put: nothing is stored.
 * - A failed fsync drops the affected blob (temp file deleted, no longer visible): after a failed
 *   fsync the page cache may no longer hold what was written, so the bytes are not trusted. The
 *   writers that put it, or relied on it while it was pending (dedup), fail their next `sync` with
 *   `ChunksLostError`; nobody else does (invariant CS-3: a failed fsync fails only the operations
 *   whose bytes it touched). A later put of the same id stores it afresh.
 *
 * Last-used time (garbage collection's clock, invariant GC-2) is the file's mtime: a put that finds
 * the blob already stored, and `touch`, set it to now. `deleteIfUnusedSince` and those uses of one
 * id are serialised by a per-id lock, so a GC cannot delete a blob between "it is here" and "its
 * mtime is now". One process per data dir (a kernel lock, see lib/data-dir-lock.ts) makes that lock
 * sufficient.
 *
 * Reads: `get` opens the file, reads it whole with one read into a buffer of the file's size and
 * re-hashes it; bytes whose hash differs from the id are never returned (`ChunkIntegrityError`).
 *
 * Limits: one store instance per root directory at a time (open clears `.tmp/`, which would delete
 * another live instance's pending blobs). The caller must not modify a buffer passed to `put`
 * until the put settles. A final file that exists with the right size is trusted by `put` (no
 * re-read); a scrubber that finds a damaged blob should `delete` it and put it again. A final file
 * whose size differs from the data being put is treated as damaged and replaced at the next sync.
 */
import { DIRECT_IO_ALIGN, isDirectIoReady } from '../lib/aligned-memory.ts';
import { KeyedMutex } from '../lib/keyed-mutex.ts';
import { mapLimit } from '../lib/map-limit.ts';
import { PathProbe } from '../lib/path-probe.ts';
import { closeFd, fsyncFd, fsyncPath, fstatSizeSync, O_DIRECT, openFd, PerhapsDirectFile, readFd, setTimesPath, writeFd } from '../lib/raw-fd.ts';
import { randomBytes } from 'node:crypto';
import { constants as fsConstants } from 'node:fs';
import * as fsp from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { sha256Hex } from '../lib/sha256-pool.ts';
import { decodeFrame } from '../lib/zstd.ts';
import {
  assertChunkId,
  ChunkIntegrityError,
  ChunkNotFoundError,
  ChunksLostError,
  type ChunkStore,
  type ChunkWriter,
  type StoredBlob,
  type StoredRead,
} from './chunk-store.ts';

export type Hasher = (data: Buffer) => string | Promise<string>;

/** Operations at which `LocalDirStoreOptions.faultHook` is called (testing aid). */
export type FaultPoint = 'write' | 'fsync' | 'rename' | 'dirsync' | 'read';

export interface LocalDirStoreOptions {
  /**
   * Computes the lower-case hex SHA-256 for put verification and get re-hashing. Default: Node's
   * crypto on the calling thread. Pass `(b) => pool.hash(b)` of a `Sha256Pool` to hash off-thread.
   */
  hasher?: Hasher;
  /** Temp files fsynced at the same time during `sync`. Default 16. */
  syncConcurrency?: number;
  /** Files stat'ed at the same time by `list`. Default 32. */
  statConcurrency?: number;
  /**
   * Answers `has` and `touch` in batches off the event loop (lib/path-probe.ts): the process's
   * probe, whose workers every store shares. Default: one without workers (every path on the thread
   * pool), as the default hasher hashes on the calling thread.
   */
  probe?: PathProbe;
  /**
   * Testing aid: called before the named operation on `path`; if it throws (or rejects), the
   * operation fails with that error, as if the file system had returned it.
   */
  faultHook?: (op: FaultPoint, path: string) => void | Promise<void>;
  /** Keep blobs put with a `packed` form as that form (compression at rest). Default true. */
  storePacked?: boolean;
}

/** A blob put but not yet durable. Writers keep a reference to learn how its sync went. */
interface Pending {
  id: string;
  tmpPath: string;
  /** The temp file holds a zstd frame (its final name is `<id>.zst`). */
  packed: boolean;
  /** The blob's plain length (what a writer counts towards its batch). */
  size: number;
  /** Bytes of the temp file. */
  storedSize: number;
  lastUsedMs: number;
  /** pending until renamed and its directory synced; lost when its fsync failed (it is gone). */
  state: 'pending' | 'durable' | 'lost';
}

const HEX = '0123456789abcdef';
/** A final file's name: the id, with `.zst` when it holds a zstd frame of the blob. */
const STORED_NAME_RE = /^([0-9a-f]{64})(\.zst)?$/;
const PACKED_SUFFIX = '.zst';
/** No packed blob decodes to more: packed blobs are chunks, at most 64 MiB (config.ts). */
const PACKED_MAX_PLAIN = 64 << 20;
/** A new temp file: created, never an existing one. */
const WRITE_NEW = fsConstants.O_WRONLY | fsConstants.O_CREAT | fsConstants.O_EXCL;

function isCode(err: unknown, code: string): boolean {
  return typeof err === 'object' && err !== null && (err as NodeJS.ErrnoException).code === code;
}

/** Where a final file of an id was found. */
interface StoredFile {
  path: string;
  packed: boolean;
  size: number;
  mtimeMs: number;
}

export class LocalDirChunkStore implements ChunkStore {
  readonly root: string;
  readonly tmpDir: string;
  readonly storesPacked: boolean;

  private readonly hasher: Hasher;
  private readonly syncConcurrency: number;
  private readonly statConcurrency: number;
  private readonly probe: PathProbe;
  private readonly faultHook: LocalDirStoreOptions['faultHook'];

  /** Chunks put but not yet renamed into place, by id. */
  private readonly pending = new Map<string, Pending>();
  /** Per-id serialization of put / delete / the rename step of sync. */
  private readonly locks = new KeyedMutex<string>();
  /** Fan-out directories with a removed entry since the last sync (fsynced at the next sync). */
  private readonly dirtyDirs = new Set<string>();
  /** Blobs renamed into a fan-out directory whose fsync has not succeeded yet, by directory. */
  private readonly awaitingDirSync = new Map<string, Pending[]>();
  private syncRunning: Promise<void> | null = null;
  private syncQueued: Promise<void> | null = null;
  private tmpCounter = 0;
  /** False once the file system refused O_DIRECT (writeNewFile). */
  private directWrites = O_DIRECT !== 0;
  /** False once the file system refused an O_DIRECT read (readInto). */
  private directReads = O_DIRECT !== 0;
  private readonly tmpPrefix = randomBytes(6).toString('hex');

  private constructor(root: string, options: LocalDirStoreOptions) {
    this.root = root;
    this.tmpDir = join(root, '.tmp');
    this.hasher = options.hasher ?? sha256Hex;
    this.syncConcurrency = Math.max(1, options.syncConcurrency ?? 16);
    this.statConcurrency = Math.max(1, options.statConcurrency ?? 32);
    this.probe = options.probe ?? new PathProbe({ inlineBelow: Infinity });
    this.faultHook = options.faultHook;
    this.storesPacked = options.storePacked ?? true;
  }

  /**
   * Opens (creating if needed) a store at `root`: creates the fan-out directories and `.tmp/`, and
   * deletes anything left in `.tmp/` by a crash (chunks that were never synced).
   */
  static async open(root: string, options: LocalDirStoreOptions = {}): Promise<LocalDirChunkStore> {
    const store = new LocalDirChunkStore(root, options);
    await store.init();
    return store;
  }

  private async init(): Promise<void> {
    await fsp.mkdir(this.root, { recursive: true });
    await fsp.rm(this.tmpDir, { recursive: true, force: true });
    await fsp.mkdir(this.tmpDir);
    const dirs: string[] = [];
    for (const a of HEX) for (const b of HEX) dirs.push(a + b);
    await mapLimit(dirs, 32, async (d) => {
      try {
        await fsp.mkdir(join(this.root, d));
      } catch (err) {
        if (!isCode(err, 'EEXIST')) throw err;
      }
    });
    await fsyncPath(this.root);
  }

  /** Final path of a blob kept plain (it is there only once synced). */
  finalPath(id: string): string {
    assertChunkId(id);
    return join(this.root, id.slice(0, 2), id);
  }

  /** Final path of a blob kept as a zstd frame (compression at rest). */
  packedPath(id: string): string {
    return this.finalPath(id) + PACKED_SUFFIX;
  }

  /** Where `id` may be stored, in the order every lookup tries: plain first (incompressible chunks are the most), then packed. */
  private storedPaths(id: string): [string, string] {
    const plain = this.finalPath(id);
    return [plain, plain + PACKED_SUFFIX];
  }

  /** The final file of `id` in either form, or null: the lookup `has` makes, for one id. */
  private async findStored(id: string): Promise<StoredFile | null> {
    const paths = this.storedPaths(id);
    const found = await this.probe.statFirst([paths]);
    const k = found.index[0]!;
    return k < 0 ? null : { path: paths[k]!, packed: k === 1, size: found.size[0]!, mtimeMs: found.mtimeMs[0]! };
  }

  /** Number of chunks put but not yet synced. */
  get pendingCount(): number {
    return this.pending.size;
  }

  async put(id: string, data: Buffer, packed?: Buffer | null): Promise<boolean> {
    return (await this.store(id, data, true, packed ?? null)).stored;
  }

  async putHashed(id: string, data: Buffer, packed?: Buffer | null): Promise<boolean> {
    return (await this.store(id, data, false, packed ?? null)).stored;
  }

  writer(): ChunkWriter {
    return new LocalDirWriter(this, (id, data, verify, packed) => this.store(id, data, verify, packed));
  }

  /**
   * put/putHashed. `pending` is the not-yet-durable entry the caller now depends on (its own, or one
   * it found), null when the blob is already durable under its final name.
   */
  private async store(id: string, data: Buffer, verify: boolean, packed: Buffer | null): Promise<{ stored: boolean; pending: Pending | null }> {
    assertChunkId(id);
    if (verify) {
      const actual = await this.hasher(data);
      if (actual !== id) throw new ChunkIntegrityError(id, actual);
    }
    return this.withLock(id, async () => {
      const now = Date.now();
      const waiting = this.pending.get(id);
      if (waiting) {
        waiting.lastUsedMs = now;
        return { stored: false, pending: waiting };
      }
      // A frame's size says nothing about the blob's, so a packed file is trusted as a plain file
      // of the right size is (scrub finds either damaged).
      const found = await this.findStored(id);
      if (found && (found.packed || found.size === data.length)) {
        if (await this.markUsed(found.path, now)) return { stored: false, pending: null };
      }
      // Absent, or a plain file of the wrong size (damaged): store a fresh copy that sync renames
      // into place (removing the damaged one).
      const body = this.storesPacked && packed && packed.length < data.length ? packed : data;
      const tmpPath = join(this.tmpDir, `${id}.${this.tmpPrefix}.${(this.tmpCounter++).toString(36)}`);
      await this.writeNewFile(tmpPath, body);
      const entry: Pending = { id, tmpPath, packed: body !== data, size: data.length, storedSize: body.length, lastUsedMs: now, state: 'pending' };
      this.pending.set(id, entry);
      return { stored: true, pending: entry };
    });
  }

  async touch(ids: readonly string[]): Promise<Set<string>> {
    for (const id of ids) assertChunkId(id);
    const unique = [...new Set(ids)];
    const present = new Set<string>();
    // Every id's lock is held while the batch is probed, as one lock per id was before: a GC's
    // deleteIfUnusedSince of one of them runs wholly before (the probe finds nothing) or after (it
    // finds the fresh mtime and keeps the blob). Keys are taken in sorted order: no deadlock.
    await this.locks.run(unique, async () => {
      const now = Date.now();
      const onDisk: string[] = [];
      for (const id of unique) {
        const p = this.pending.get(id);
        if (p) {
          p.lastUsedMs = now;
          present.add(id);
        } else onDisk.push(id);
      }
      const touched = await this.probe.touchFirst(onDisk.map((id) => this.storedPaths(id)), now / 1000);
      onDisk.forEach((id, i) => {
        if (touched[i]! >= 0) present.add(id);
      });
    });
    return present;
  }

  async deleteIfUnusedSince(id: string, cutoffMs: number): Promise<boolean> {
    assertChunkId(id);
    return this.withLock(id, async () => {
      if (this.pending.has(id)) return false; // being written right now: in use by definition
      const found = await this.findStored(id);
      if (!found || found.mtimeMs >= cutoffMs) return false;
      if (await unlinkIfExists(found.path)) this.dirtyDirs.add(id.slice(0, 2));
      return true;
    });
  }

  /** Sets a final file's mtime (its last-used time) to `now`; false when the file is not there. */
  private async markUsed(finalPath: string, now: number): Promise<boolean> {
    return setTimesPath(finalPath, now / 1000);
  }

  async get(id: string): Promise<Buffer> {
    const data = await this.readUnverified(id);
    const actual = await this.hasher(data);
    if (actual !== id) throw new ChunkIntegrityError(id, actual);
    return data;
  }

  /**
   * The stored bytes of `id` WITHOUT verifying them: for a scrubber that hashes them itself (for
   * example on a `Sha256Pool`) and must not hash twice. Never hand these bytes to anyone without
   * checking that they hash to `id`. Throws `ChunkNotFoundError` for a missing id.
   */
  async readUnverified(id: string): Promise<Buffer> {
    const { bytes, packed } = await this.readStored(id, (path) => this.readWhole(path));
    // A frame that does not decode is answered as it is: its hash is not the id's (CS-4).
    return packed ? (decodeFrame(bytes, PACKED_MAX_PLAIN) ?? bytes) : bytes;
  }

  /**
   * Reads the stored form of `id` with `read`: its temp file while pending, else its final file in
   * either form. A pending blob may be renamed into place between the lookup and the open; trying
   * the final paths after covers that (an open file handle is unaffected by a later rename or
   * delete). Throws ChunkNotFoundError.
   */
  private async readStored<T>(id: string, read: (path: string) => Promise<T>): Promise<{ bytes: T; packed: boolean }> {
    assertChunkId(id);
    const p = this.pending.get(id);
    if (p) {
      try {
        return { bytes: await read(p.tmpPath), packed: p.packed };
      } catch (err) {
        if (!isCode(err, 'ENOENT')) throw err;
      }
    }
    for (const packed of [false, true]) {
      try {
        return { bytes: await read(packed ? this.packedPath(id) : this.finalPath(id)), packed };
      } catch (err) {
        if (!isCode(err, 'ENOENT') && !isCode(err, 'EISDIR')) throw err;
      }
    }
    throw new ChunkNotFoundError(id);
  }

  /**
   * `ChunkStore.readInto`: like `readUnverified`, into the caller's memory, past the page cache
   * (O_DIRECT) when that memory is page-aligned (lib/aligned-memory.ts): a chunk read to be sent
   * is read once, and the copy out of the page cache was the largest CPU cost of a copy's reads.
   */
  async readInto(id: string, into: Buffer): Promise<StoredRead> {
    const { bytes, packed } = await this.readStored(id, (path) => this.readWholeInto(path, into));
    return { length: bytes, encoding: packed ? 'zstd' : 'raw' };
  }

  /**
   * Scrub helper: re-reads and re-hashes `id` (with the store's hasher). `'ok'`, `'missing'`, or
   * the hash the stored bytes actually have.
   */
  async verify(id: string): Promise<'ok' | 'missing' | { actual: string }> {
    let data: Buffer;
    try {
      data = await this.readUnverified(id);
    } catch (err) {
      if (err instanceof ChunkNotFoundError) return 'missing';
      throw err;
    }
    const actual = await this.hasher(data);
    return actual === id ? 'ok' : { actual };
  }

  async has(ids: readonly string[]): Promise<Set<string>> {
    for (const id of ids) assertChunkId(id);
    const present = new Set<string>();
    const toStat: string[] = [];
    const seen = new Set<string>();
    for (const id of ids) {
      if (seen.has(id)) continue;
      seen.add(id);
      if (this.pending.has(id)) present.add(id);
      else toStat.push(id);
    }
    const found = await this.probe.statFirst(toStat.map((id) => this.storedPaths(id)));
    toStat.forEach((id, i) => {
      // Absent, unless a put that finished while this call ran made it pending.
      if (found.index[i]! >= 0 || this.pending.has(id)) present.add(id);
    });
    return present;
  }

  async delete(id: string): Promise<void> {
    assertChunkId(id);
    await this.withLock(id, async () => {
      const p = this.pending.get(id);
      if (p) {
        this.pending.delete(id);
        p.state = 'lost'; // a writer that relied on it must not report it durable
        await unlinkIfExists(p.tmpPath);
      }
      const plainGone = await unlinkIfExists(this.finalPath(id));
      const packedGone = await unlinkIfExists(this.packedPath(id));
      if (plainGone || packedGone) this.dirtyDirs.add(id.slice(0, 2));
    });
  }

  async *list(): AsyncIterable<StoredBlob> {
    // Pending blobs first; the directory walk below skips them (`pending` is small: bounded batches).
    const yielded = new Set<string>();
    for (const [id, p] of [...this.pending]) {
      yielded.add(id);
      yield { id, size: p.storedSize, lastUsedMs: p.lastUsedMs };
    }
    for (const a of HEX) {
      for (const b of HEX) {
        const dir = a + b;
        let names: string[];
        try {
          names = await fsp.readdir(join(this.root, dir));
        } catch (err) {
          if (isCode(err, 'ENOENT')) continue;
          throw err;
        }
        // One entry per id: both forms of one id are there only for a moment (a sync replacing a
        // damaged plain file), and either describes the blob.
        const inDir = new Map<string, string>();
        for (const name of names) {
          const m = STORED_NAME_RE.exec(name);
          if (m && m[1]!.startsWith(dir) && !yielded.has(m[1]!)) inDir.set(m[1]!, name);
        }
        const found: StoredBlob[] = [];
        await mapLimit([...inDir], this.statConcurrency, async ([id, name]) => {
          try {
            const st = await fsp.stat(join(this.root, dir, name));
            if (st.isFile()) found.push({ id, size: st.size, lastUsedMs: st.mtimeMs });
          } catch (err) {
            if (!isCode(err, 'ENOENT')) throw err;
          }
        });
        for (const entry of found) yield entry;
      }
    }
  }

  /**
   * Makes every put that resolved before this call durable. Concurrent calls are coalesced: a call
   * made while a sync runs waits for it and then for one more pass.
   */
  sync(): Promise<void> {
    if (!this.syncRunning) {
      this.syncRunning = this.runSync().finally(() => {
        this.syncRunning = null;
      });
      return this.syncRunning;
    }
    if (!this.syncQueued) {
      const after = this.syncRunning.then(
        () => undefined,
        () => undefined,
      );
      this.syncQueued = after.then(() => {
        this.syncQueued = null;
        return this.sync();
      });
    }
    return this.syncQueued;
  }

  private async runSync(): Promise<void> {
    const entries = [...this.pending.values()];
    const dirs = new Set<string>(this.dirtyDirs);
    this.dirtyDirs.clear();
    for (const d of this.awaitingDirSync.keys()) dirs.add(d);
    const errors: unknown[] = [];
    await mapLimit(entries, this.syncConcurrency, async (p) => {
      try {
        await this.fsyncFile(p.tmpPath);
      } catch (err) {
        // Deleted or replaced meanwhile: nothing to make durable.
        if (this.pending.get(p.id) !== p) return;
        // The bytes are not trustworthy after a failed fsync: drop the blob (CS-3: its writers learn).
        await this.withLock(p.id, async () => {
          if (this.pending.get(p.id) === p) {
            this.pending.delete(p.id);
            p.state = 'lost';
            await unlinkIfExists(p.tmpPath).catch(() => false);
          }
        });
        errors.push(err);
        return;
      }
      await this.withLock(p.id, async () => {
        if (this.pending.get(p.id) !== p) return; // deleted meanwhile
        try {
          await this.renameIntoPlace(p.tmpPath, p.packed ? this.packedPath(p.id) : this.finalPath(p.id));
        } catch (err) {
          errors.push(err);
          return; // stays pending (its temp file is intact); a later sync retries
        }
        this.pending.delete(p.id);
        // One form per id: the other can only be a damaged plain file this put replaces (a put that
        // finds a sound one stores nothing). Its removal is made durable with the rename's. If it
        // cannot be removed, the blob is still placed: the damaged file fails reads until a scrub
        // deletes the id, as any damaged file does.
        await unlinkIfExists(p.packed ? this.finalPath(p.id) : this.packedPath(p.id)).catch((err: unknown) => errors.push(err));
        const dir = p.id.slice(0, 2);
        dirs.add(dir);
        const waiting = this.awaitingDirSync.get(dir);
        if (waiting) waiting.push(p);
        else this.awaitingDirSync.set(dir, [p]);
      });
    });
    await mapLimit([...dirs], this.syncConcurrency, async (d) => {
      try {
        await this.hook('dirsync', join(this.root, d));
        await fsyncPath(join(this.root, d));
      } catch (err) {
        this.dirtyDirs.add(d); // retried at the next sync; its blobs stay not yet durable
        errors.push(err);
        return;
      }
      for (const p of this.awaitingDirSync.get(d) ?? []) p.state = 'durable';
      this.awaitingDirSync.delete(d);
    });
    if (errors.length === 1) throw errors[0];
    if (errors.length > 1) throw new AggregateError(errors, `chunk store sync failed (${errors.length} errors)`);
  }

  private async renameIntoPlace(tmpPath: string, finalPath: string): Promise<void> {
    await this.hook('rename', finalPath);
    try {
      await fsp.rename(tmpPath, finalPath);
    } catch (err) {
      if (!isCode(err, 'ENOENT')) throw err;
      // The fan-out directory vanished (removed by hand?): recreate it and retry once. If the temp
      // file is what is missing, the retry fails with ENOENT again and the error surfaces.
      await fsp.mkdir(dirname(finalPath), { recursive: true });
      await fsyncPath(this.root);
      await fsp.rename(tmpPath, finalPath);
    }
  }

  /**
   * Writes a new temp file. Bytes in memory known to be page-aligned (a capture's read buffers, an
   * incoming copy's pooled bodies: lib/aligned-memory.ts) are written past the page cache
   * (O_DIRECT): measured on the dev VM, writing 1 GiB of 1 MiB chunk files cost 1.6-2.0 s of system
   * CPU that way against 4.8-5.2 s through the page cache (the copy into it), on a 2-core machine
   * where the capture's reads and hashes wait for that CPU. Durability does not change: the file
   * is fsynced before its rename exactly as a buffered one (CS-1). A file system that refuses
   * O_DIRECT (EINVAL: tmpfs, some FUSE) gets buffered writes from then on.
   */
  private async writeNewFile(path: string, data: Buffer): Promise<void> {
    const wantDirect = this.directWrites && isDirectIoReady(data);
    const file = await PerhapsDirectFile.open(path, WRITE_NEW, wantDirect);
    if (wantDirect && !file.direct) this.directWrites = false; // no O_DIRECT on this file system
    try {
      await this.hook('write', path);
      let off = 0;
      while (off < data.length) {
        let bytesWritten: number;
        try {
          bytesWritten = await writeFd(file.fd, data, off, data.length - off, off);
        } catch (err) {
          if (!(await file.fellBackFrom(err))) throw err;
          this.directWrites = false; // refused as unaligned after all: the rest, and every later write, buffered
          continue;
        }
        if (bytesWritten <= 0) throw new Error(`short write to ${path}`);
        off += bytesWritten;
      }
      file.close();
    } catch (err) {
      closeQuietly(file);
      await unlinkIfExists(path).catch(() => false);
      throw err;
    }
  }

  private async fsyncFile(path: string): Promise<void> {
    const fd = await openFd(path, fsConstants.O_RDONLY);
    try {
      await this.hook('fsync', path);
      await fsyncFd(fd);
    } finally {
      closeFd(fd);
    }
  }

  private async readWhole(path: string): Promise<Buffer> {
    const fd = await openFd(path, fsConstants.O_RDONLY);
    try {
      await this.hook('read', path);
      const size = fstatSizeSync(fd);
      // Not from Buffer's shared pool: the caller gets a buffer that owns its memory.
      const buf = Buffer.allocUnsafeSlow(size);
      let off = 0;
      while (off < size) {
        const bytesRead = await readFd(fd, buf, off, size - off, off);
        if (bytesRead === 0) break; // file shrank under us: return what is there, the hash decides
        off += bytesRead;
      }
      return off === size ? buf : buf.subarray(0, off);
    } finally {
      closeFd(fd);
    }
  }

  /** `readWhole` into `into`; O_DIRECT when `into` is page-aligned (the file's tail past the last full block then reads buffered). */
  private async readWholeInto(path: string, into: Buffer): Promise<number> {
    const wantDirect = this.directReads && isDirectIoReady(into);
    const file = await PerhapsDirectFile.open(path, fsConstants.O_RDONLY, wantDirect);
    if (wantDirect && !file.direct) this.directReads = false; // no O_DIRECT on this file system
    try {
      await this.hook('read', path);
      const size = fstatSizeSync(file.fd);
      if (size > into.length) throw new RangeError(`${path} has ${size} bytes; the buffer holds ${into.length}`);
      let off = 0;
      while (off < size) {
        let bytesRead: number;
        try {
          // A direct read asks for whole blocks (the buffer has room: its length is a multiple of them).
          const want = file.direct ? Math.min(into.length - off, Math.ceil((size - off) / DIRECT_IO_ALIGN) * DIRECT_IO_ALIGN) : size - off;
          bytesRead = await readFd(file.fd, into, off, want, off);
        } catch (err) {
          if (!(await file.fellBackFrom(err))) throw err;
          this.directReads = false; // refused here: the rest, and every later read, through the page cache
          continue;
        }
        if (bytesRead === 0) break; // file shrank under us: the bytes there are what is sent, the destination's hash decides
        off += bytesRead;
        if (file.direct && off % DIRECT_IO_ALIGN !== 0) break; // the file's end
      }
      return Math.min(off, size);
    } finally {
      file.close();
    }
  }

  private async hook(op: FaultPoint, path: string): Promise<void> {
    if (this.faultHook) await this.faultHook(op, path);
  }

  private withLock<T>(id: string, fn: () => Promise<T>): Promise<T> {
    return this.locks.run([id], fn);
  }
}

/**
 * A writer over a LocalDirChunkStore: remembers the pending entries its puts depend on, and after a
 * store sync checks exactly those (CS-3). Memory is one reference per blob put since the last sync:
 * callers sync in bounded batches.
 */
class LocalDirWriter implements ChunkWriter {
  private deps = new Set<Pending>();
  private bytes = 0;

  constructor(
    private readonly owner: LocalDirChunkStore,
    private readonly storeBlob: (id: string, data: Buffer, verify: boolean, packed: Buffer | null) => Promise<{ stored: boolean; pending: Pending | null }>,
  ) {}

  get unsyncedBytes(): number {
    return this.bytes;
  }

  put(id: string, data: Buffer, packed?: Buffer | null): Promise<boolean> {
    return this.track(this.storeBlob(id, data, true, packed ?? null));
  }

  putHashed(id: string, data: Buffer, packed?: Buffer | null): Promise<boolean> {
    return this.track(this.storeBlob(id, data, false, packed ?? null));
  }

  async sync(): Promise<void> {
    const mine = this.deps;
    this.deps = new Set();
    this.bytes = 0;
    if (mine.size === 0) return;
    let storeError: unknown = null;
    // Two passes at most: a rename or directory fsync that failed once is retried by the next sync.
    for (let pass = 0; pass < 2; pass++) {
      try {
        await this.owner.sync();
      } catch (err) {
        storeError = err; // maybe someone else's blob: judged below by our own entries only
      }
      if ([...mine].every((p) => p.state !== 'pending')) break;
    }
    const lost = [...mine].filter((p) => p.state === 'lost').map((p) => p.id);
    if (lost.length > 0) throw new ChunksLostError(lost);
    if ([...mine].some((p) => p.state === 'pending')) throw storeError ?? new Error('chunk store sync did not make every blob durable');
  }

  private async track(put: Promise<{ stored: boolean; pending: Pending | null }>): Promise<boolean> {
    const { stored, pending } = await put;
    if (pending && !this.deps.has(pending)) {
      this.deps.add(pending);
      this.bytes += pending.size;
    }
    return stored;
  }
}

async function unlinkIfExists(path: string): Promise<boolean> {
  try {
    await fsp.unlink(path);
    return true;
  } catch (err) {
    if (isCode(err, 'ENOENT')) return false;
    throw err;
  }
}


/** Closes a file on a path that already failed: the first error is the one to report. */
function closeQuietly(file: PerhapsDirectFile): void {
  try {
    file.close();
  } catch {
    /* the caller's error wins */
  }
}
