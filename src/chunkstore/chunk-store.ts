/**
 * Content-addressed bytes. One instance holds one namespace (chunks, or manifests); the id of a blob
 * is the lower-case hex SHA-256 of its plain bytes, computed by the caller.
 *
 * Contract (test/helpers/chunkstore-contract.ts, run against every implementation):
 * - `put(id, data)` stores `data` under `id` if absent. Idempotent: a put of an id already held is a
 *   no-op that still resolves. Resolves `true` when this call stored the blob, `false` when the store
 *   already held it (so a caller learns about dedup without a separate `has`). Either way the blob's
 *   **last-used time** becomes now: a put is a use, and garbage collection never deletes a blob used
 *   after its cutoff (docs/design.md, invariant GC-2). The implementation verifies sha256(data) === id
 *   and throws `ChunkIntegrityError` otherwise (nothing is stored). After `put` resolves the blob is
 *   visible to `get`/`has`; it is durable only after a `sync()` (of the store, or of the writer it
 *   went through) resolves: implementations group their fsyncs there.
 * - `get(id)` returns the plain bytes, re-hashed: bytes whose hash differs from `id` are never
 *   returned, `ChunkIntegrityError` is thrown instead. A missing id throws `ChunkNotFoundError`.
 * - `has(ids)` returns the subset of `ids` that are present (no hashing, no use recorded).
 * - `touch(ids)` is `has` for a caller that will rely on the blobs it finds (a copy told "you need
 *   not send these"): the present ones also get last-used = now, atomically with respect to
 *   `deleteIfUnusedSince` of the same id (a blob is either reported present and kept, or deleted and
 *   reported absent, never reported present and then deleted by a GC that was already past it).
 * - `delete(id)` removes a blob unconditionally (scrub of a damaged blob); a missing id is no error.
 * - `deleteIfUnusedSince(id, cutoffMs)` is garbage collection's delete: it removes the blob only when
 *   its last-used time is before `cutoffMs` and it is not waiting to be synced, atomically with
 *   respect to put/touch of the same id. Resolves true when it deleted.
 * - `list()` yields every stored id with its size and last-used time, in no particular order.
 * - `put(id, data, packed)` and `putHashed(id, data, packed)`: `packed`, when given, is a zstd frame
 *   whose content is exactly `data`, made by the caller (a capture's hash worker compressed `data`;
 *   an incoming copy decoded `packed` into `data`). A store that keeps blobs compressed
 *   (`storesPacked`) stores that frame instead of `data`; the others ignore it. Whatever is stored,
 *   `get` answers the plain bytes and re-hashes them after decoding, so a frame that does not decode
 *   to the id's bytes is caught at read like any damage (invariant CS-4).
 * - `writer()` gives a ChunkWriter: puts whose durability one caller waits for (see below).
 * - `sync()` makes every put that resolved before it durable; it rejects when any of them could not
 *   be made durable (callers on the data path use a writer instead, whose sync fails only for its own).
 * - Ids that are not 64 lower-case hex characters throw `RangeError`.
 */
export interface ChunkStore {
  /** Puts with a `packed` form store that form (compression at rest); false: `packed` is ignored. */
  readonly storesPacked: boolean;
  put(id: string, data: Buffer, packed?: Buffer | null): Promise<boolean>;
  /**
   * `put` without the hash check, for a caller that computed `id` from exactly these in-memory
   * bytes a moment before (a snapshot capture): hashing them twice would buy nothing. Never for
   * bytes that arrived from elsewhere (a replication peer, a file): those go through `put`.
   */
  putHashed(id: string, data: Buffer, packed?: Buffer | null): Promise<boolean>;
  get(id: string): Promise<Buffer>;
  has(ids: readonly string[]): Promise<Set<string>>;
  touch(ids: readonly string[]): Promise<Set<string>>;
  delete(id: string): Promise<void>;
  deleteIfUnusedSince(id: string, cutoffMs: number): Promise<boolean>;
  list(): AsyncIterable<StoredBlob>;
  /**
   * Stores that keep bookkeeping beside the blobs (the S3 store's chunk index) reclaim what crashed
   * writers and deleters left there, for garbage collection to call with its cutoff. Optional: the
   * local store has nothing of the kind (its open clears pending files).
   */
  sweepAbandoned?(cutoffMs: number): Promise<unknown>;
  /**
   * The stored bytes of `id` read into `into` (which must hold the blob's plain length), NOT
   * verified, in the form they are stored in: plain (`raw`) or a zstd frame (`zstd`); answers their
   * length and form. Only for a caller whose bytes someone else verifies before anything relies on
   * them (a copy's first send: the destination decodes and hashes what arrives). Optional: a store
   * that cannot read into a caller's memory leaves it out, and such callers use `get`. Throws
   * ChunkNotFoundError.
   */
  readInto?(id: string, into: Buffer): Promise<StoredRead>;
  writer(): ChunkWriter;
  sync(): Promise<void>;
}

/** How a blob is stored: its plain bytes, or one zstd frame of them. */
export type StoredEncoding = 'raw' | 'zstd';

export interface StoredRead {
  length: number;
  encoding: StoredEncoding;
}

export interface StoredBlob {
  id: string;
  /** Bytes it takes in the store (its compressed size when stored packed). */
  size: number;
  /** When the blob was last put or touched (ms since the epoch). */
  lastUsedMs: number;
}

/**
 * One caller's puts (a capture, one incoming copy...). `sync()` resolves once every blob put through
 * this writer, or found already stored but not yet durable by one of its puts, is durable; it rejects
 * with `ChunksLostError` naming only those of its own blobs that could not be made durable (a failed
 * fsync: they are gone from the store and must be put again). Another caller's failure never fails
 * it (failure isolation: docs/design.md, invariant CS-3). A writer may be synced many times (a long
 * capture or copy syncs in bounded batches); each sync covers the puts since the previous one.
 */
export interface ChunkWriter {
  put(id: string, data: Buffer, packed?: Buffer | null): Promise<boolean>;
  putHashed(id: string, data: Buffer, packed?: Buffer | null): Promise<boolean>;
  /** Plain bytes put through this writer (stored or found pending) that are not yet known durable. */
  readonly unsyncedBytes: number;
  sync(): Promise<void>;
}

export class ChunkNotFoundError extends Error {
  override name = 'ChunkNotFoundError';
  constructor(readonly id: string) {
    super(`chunk ${id} not found`);
  }
}

export class ChunkIntegrityError extends Error {
  override name = 'ChunkIntegrityError';
  constructor(
    readonly id: string,
    readonly actual: string,
  ) {
    super(`chunk ${id} is damaged: its bytes hash to ${actual}`);
  }
}

/** A writer's blobs that could not be made durable (their fsync failed); they are no longer stored. */
export class ChunksLostError extends Error {
  override name = 'ChunksLostError';
  constructor(readonly ids: string[]) {
    super(`${ids.length} chunk(s) could not be made durable and must be put again: ${ids.slice(0, 5).join(', ')}${ids.length > 5 ? ', ...' : ''}`);
  }
}

const ID_PATTERN = /^[0-9a-f]{64}$/;

export function assertChunkId(id: string): void {
  if (!ID_PATTERN.test(id)) throw new RangeError(`not a chunk id: ${JSON.stringify(id)}`);
}
