/**
 * `ChunkStore` on a local directory.
 *
 * Layout: `root/ab/<64-hex id>` where `ab` is the first two hex characters of the id (256 fan-out
 * directories, created on open), and `root/.tmp/` for chunks that are put but not yet synced.
 *
 * Crash safety:
 * - `put` verifies the hash, writes the bytes to a new temp file `root/.tmp/<id>.<nonce>` without
 *   fsync and records it as pending. From then on `get`/`has`/`list` see it (reads go to the temp
 *   file).
 * - `sync` fsyncs the pending temp files (in parallel, bounded), renames each one to its final name
 *   only after its own fsync succeeded, then fsyncs each touched fan-out directory once.
 * - So a file under its final name is always complete and its bytes durable; a crash loses only
 *   pending temp files, and `open` deletes whatever is left in `.tmp/`.
 * - A failed write (ENOSPC, EIO...) removes the temp file and rejects the put: nothing is stored.
 * - A failed fsync rejects the sync and drops the affected chunks (temp file deleted, no longer
 *   visible): after a failed fsync the page cache may no longer hold what was written, so the bytes
 *   are not trusted. Such a chunk is "lost": every later `sync()` rejects with `ChunksLostError`
 *   until it is put again (or deleted), because another caller's put of the same id may have been
 *   a no-op that relied on it (dedup), and that caller's sync must not report it durable.
 *
 * Reads: `get` opens the file, reads it whole with one read into a buffer of the file's size and
 * re-hashes it; bytes whose hash differs from the id are never returned (`ChunkIntegrityError`).
 *
 * Limits: one store instance per root directory at a time (open clears `.tmp/`, which would delete
 * another live instance's pending chunks). The caller must not modify a buffer passed to `put`
 * until the put settles. A final file that exists with the right size is trusted by `put` (no
 * re-read); a scrubber that finds a damaged chunk should `delete` it and put it again. A final file
 * whose size differs from the data being put is treated as damaged and replaced at the next sync.
 */
import { KeyedMutex } from '../lib/keyed-mutex.ts';
import { mapLimit } from '../lib/map-limit.ts';
import { randomBytes } from 'node:crypto';
import type { FileHandle } from 'node:fs/promises';
import * as fsp from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { sha256Hex } from '../lib/sha256-pool.ts';
import {
  assertChunkId,
  ChunkIntegrityError,
  ChunkNotFoundError,
  type ChunkStore,
} from './chunk-store.ts';

/**
 * Thrown by `sync()` while chunks that were put are gone because their fsync failed (see the file
 * comment). Put them again (or delete them) to clear it; reopening the store also clears it.
 */
export class ChunksLostError extends Error {
  override name = 'ChunksLostError';
  constructor(readonly ids: string[]) {
    super(
      `${ids.length} chunk(s) were lost to a failed fsync and must be put again before a sync can succeed: ${ids
        .slice(0, 5)
        .join(', ')}${ids.length > 5 ? ', ...' : ''}`,
    );
  }
}

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
  /** Files stat'ed at the same time by `has` and `list`. Default 32. */
  statConcurrency?: number;
  /**
   * Testing aid: called before the named operation on `path`; if it throws (or rejects), the
   * operation fails with that error, as if the file system had returned it.
   */
  faultHook?: (op: FaultPoint, path: string) => void | Promise<void>;
}

interface Pending {
  tmpPath: string;
  size: number;
  mtimeMs: number;
}

const HEX = '0123456789abcdef';
const ID_RE = /^[0-9a-f]{64}$/;

function isCode(err: unknown, code: string): boolean {
  return typeof err === 'object' && err !== null && (err as NodeJS.ErrnoException).code === code;
}

export class LocalDirChunkStore implements ChunkStore {
  readonly root: string;
  readonly tmpDir: string;

  private readonly hasher: Hasher;
  private readonly syncConcurrency: number;
  private readonly statConcurrency: number;
  private readonly faultHook: LocalDirStoreOptions['faultHook'];

  /** Chunks put but not yet renamed into place, by id. */
  private readonly pending = new Map<string, Pending>();
  /** Per-id serialization of put / delete / the rename step of sync. */
  private readonly locks = new KeyedMutex<string>();
  /** Fan-out directories with a removed entry since the last sync (fsynced at the next sync). */
  private readonly dirtyDirs = new Set<string>();
  /** Chunks dropped after a failed fsync, not put again or deleted since (see ChunksLostError). */
  private readonly lost = new Set<string>();
  private syncRunning: Promise<void> | null = null;
  private syncQueued: Promise<void> | null = null;
  private tmpCounter = 0;
  private readonly tmpPrefix = randomBytes(6).toString('hex');

  private constructor(root: string, options: LocalDirStoreOptions) {
    this.root = root;
    this.tmpDir = join(root, '.tmp');
    this.hasher = options.hasher ?? sha256Hex;
    this.syncConcurrency = Math.max(1, options.syncConcurrency ?? 16);
    this.statConcurrency = Math.max(1, options.statConcurrency ?? 32);
    this.faultHook = options.faultHook;
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
    await fsyncDir(this.root);
  }

  /** Final path of a chunk (it is there only once synced). */
  finalPath(id: string): string {
    assertChunkId(id);
    return join(this.root, id.slice(0, 2), id);
  }

  /** Ids of chunks lost to a failed fsync and not put again or deleted since. */
  get lostChunks(): string[] {
    return [...this.lost];
  }

  /** Number of chunks put but not yet synced. */
  get pendingCount(): number {
    return this.pending.size;
  }

  async put(id: string, data: Buffer): Promise<boolean> {
    assertChunkId(id);
    const actual = await this.hasher(data);
    if (actual !== id) throw new ChunkIntegrityError(id, actual);
    return this.putHashed(id, data);
  }

  async putHashed(id: string, data: Buffer): Promise<boolean> {
    assertChunkId(id);
    return this.withLock(id, async () => {
      if (this.pending.has(id)) return false;
      const finalPath = this.finalPath(id);
      try {
        const st = await fsp.stat(finalPath);
        if (st.isFile() && st.size === data.length) {
          this.lost.delete(id);
          return false;
        }
        // Wrong size (or not a file): damaged; store a fresh copy that sync renames over it.
      } catch (err) {
        if (!isCode(err, 'ENOENT')) throw err;
      }
      const tmpPath = join(this.tmpDir, `${id}.${this.tmpPrefix}.${(this.tmpCounter++).toString(36)}`);
      await this.writeNewFile(tmpPath, data);
      this.pending.set(id, { tmpPath, size: data.length, mtimeMs: Date.now() });
      this.lost.delete(id);
      return true;
    });
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
    assertChunkId(id);
    const finalPath = this.finalPath(id);
    // A pending chunk may be renamed into place between the lookup and the open; one retry on the
    // final path covers that (an open file handle is unaffected by a later rename or delete).
    const p = this.pending.get(id);
    if (p) {
      try {
        return await this.readWhole(p.tmpPath);
      } catch (err) {
        if (!isCode(err, 'ENOENT')) throw err;
      }
    }
    try {
      return await this.readWhole(finalPath);
    } catch (err) {
      if (isCode(err, 'ENOENT') || isCode(err, 'EISDIR')) throw new ChunkNotFoundError(id);
      throw err;
    }
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
    await mapLimit(toStat, this.statConcurrency, async (id) => {
      try {
        const st = await fsp.stat(this.finalPath(id));
        if (st.isFile()) present.add(id);
      } catch (err) {
        if (!isCode(err, 'ENOENT')) throw err;
        // Absent, unless a put that finished while this call ran made it pending.
        if (this.pending.has(id)) present.add(id);
      }
    });
    return present;
  }

  async delete(id: string): Promise<void> {
    assertChunkId(id);
    await this.withLock(id, async () => {
      this.lost.delete(id);
      const p = this.pending.get(id);
      if (p) {
        this.pending.delete(id);
        await unlinkIfExists(p.tmpPath);
      }
      if (await unlinkIfExists(this.finalPath(id))) this.dirtyDirs.add(id.slice(0, 2));
    });
  }

  async *list(): AsyncIterable<{ id: string; size: number; mtimeMs: number }> {
    const yielded = new Set<string>();
    for (const [id, p] of [...this.pending]) {
      yielded.add(id);
      yield { id, size: p.size, mtimeMs: p.mtimeMs };
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
        const ids = names.filter((n) => ID_RE.test(n) && n.startsWith(dir) && !yielded.has(n));
        const found: Array<{ id: string; size: number; mtimeMs: number }> = [];
        await mapLimit(ids, this.statConcurrency, async (id) => {
          try {
            const st = await fsp.stat(join(this.root, dir, id));
            if (st.isFile()) found.push({ id, size: st.size, mtimeMs: st.mtimeMs });
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
    const entries = [...this.pending];
    const dirs = new Set<string>(this.dirtyDirs);
    this.dirtyDirs.clear();
    const errors: unknown[] = [];
    await mapLimit(entries, this.syncConcurrency, async ([id, p]) => {
      try {
        await this.fsyncFile(p.tmpPath);
      } catch (err) {
        // Deleted or replaced meanwhile: nothing to make durable.
        if (this.pending.get(id) !== p) return;
        // The bytes are not trustworthy after a failed fsync: drop the chunk.
        await this.withLock(id, async () => {
          if (this.pending.get(id) === p) {
            this.pending.delete(id);
            this.lost.add(id);
            await unlinkIfExists(p.tmpPath).catch(() => false);
          }
        });
        errors.push(err);
        return;
      }
      await this.withLock(id, async () => {
        if (this.pending.get(id) !== p) return; // deleted meanwhile
        const finalPath = this.finalPath(id);
        try {
          await this.renameIntoPlace(p.tmpPath, finalPath);
        } catch (err) {
          errors.push(err);
          return; // stays pending (its temp file is intact); a later sync retries
        }
        this.pending.delete(id);
        dirs.add(id.slice(0, 2));
      });
    });
    await mapLimit([...dirs], this.syncConcurrency, async (d) => {
      try {
        await this.hook('dirsync', join(this.root, d));
        await fsyncDir(join(this.root, d));
      } catch (err) {
        this.dirtyDirs.add(d); // retried at the next sync
        errors.push(err);
      }
    });
    if (errors.length === 0 && this.lost.size > 0) throw new ChunksLostError([...this.lost]);
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
      await fsyncDir(this.root);
      await fsp.rename(tmpPath, finalPath);
    }
  }

  private async writeNewFile(path: string, data: Buffer): Promise<void> {
    let fh: FileHandle | undefined;
    try {
      fh = await fsp.open(path, 'wx', 0o644);
      await this.hook('write', path);
      let off = 0;
      while (off < data.length) {
        const { bytesWritten } = await fh.write(data, off, data.length - off, off);
        if (bytesWritten <= 0) throw new Error(`short write to ${path}`);
        off += bytesWritten;
      }
      const h = fh;
      fh = undefined;
      await h.close();
    } catch (err) {
      if (fh) await fh.close().catch(() => undefined);
      await unlinkIfExists(path).catch(() => false);
      throw err;
    }
  }

  private async fsyncFile(path: string): Promise<void> {
    const fh = await fsp.open(path, 'r');
    try {
      await this.hook('fsync', path);
      await fh.sync();
    } finally {
      await fh.close();
    }
  }

  private async readWhole(path: string): Promise<Buffer> {
    const fh = await fsp.open(path, 'r');
    try {
      await this.hook('read', path);
      const { size } = await fh.stat();
      // Not from Buffer's shared pool: the caller gets a buffer that owns its memory.
      const buf = Buffer.allocUnsafeSlow(size);
      let off = 0;
      while (off < size) {
        const { bytesRead } = await fh.read(buf, off, size - off, off);
        if (bytesRead === 0) break; // file shrank under us: return what is there, the hash decides
        off += bytesRead;
      }
      return off === size ? buf : buf.subarray(0, off);
    } finally {
      await fh.close();
    }
  }

  private async hook(op: FaultPoint, path: string): Promise<void> {
    if (this.faultHook) await this.faultHook(op, path);
  }

  private withLock<T>(id: string, fn: () => Promise<T>): Promise<T> {
    return this.locks.run([id], fn);
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

async function fsyncDir(path: string): Promise<void> {
  const fh = await fsp.open(path, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}
