/**
 * Content-addressed bytes. One instance holds one namespace (chunks, or manifests); the id of a blob
 * is the lower-case hex SHA-256 of its plain bytes, computed by the caller.
 *
 * Contract (test/helpers/chunkstore-contract.ts, run against every implementation):
 * - `put(id, data)` stores `data` under `id` if absent. Idempotent: a second put of the same id is a
 *   no-op that still resolves. Resolves `true` when this call stored the blob, `false` when the store
 *   already held it (so a caller learns about dedup without a separate `has`). The implementation verifies sha256(data) === id and throws
 *   `ChunkIntegrityError` otherwise (nothing is stored). After `put` resolves the blob is visible to
 *   `get`/`has`; it is durable only after `sync()` resolves (implementations group their fsyncs there).
 * - `get(id)` returns the plain bytes, re-hashed: bytes whose hash differs from `id` are never
 *   returned, `ChunkIntegrityError` is thrown instead. A missing id throws `ChunkNotFoundError`.
 * - `has(ids)` returns the subset of `ids` that are present (no hashing: a presence check).
 * - `delete(id)` removes a blob; deleting a missing id is not an error.
 * - `list()` yields every stored id with its stored size, in no particular order.
 * - `sync()` makes every put that resolved before it durable (fsync of data and directory entries).
 * - Ids that are not 64 lower-case hex characters throw `RangeError`.
 */
export interface ChunkStore {
  put(id: string, data: Buffer): Promise<boolean>;
  /**
   * `put` without the hash check, for a caller that computed `id` from exactly these in-memory
   * bytes a moment before (a snapshot capture): hashing them twice would buy nothing. Never for
   * bytes that arrived from elsewhere (a replication peer, a file): those go through `put`.
   */
  putHashed(id: string, data: Buffer): Promise<boolean>;
  get(id: string): Promise<Buffer>;
  has(ids: readonly string[]): Promise<Set<string>>;
  delete(id: string): Promise<void>;
  list(): AsyncIterable<{ id: string; size: number; mtimeMs: number }>;
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

const ID_PATTERN = /^[0-9a-f]{64}$/;

export function assertChunkId(id: string): void {
  if (!ID_PATTERN.test(id)) throw new RangeError(`not a chunk id: ${JSON.stringify(id)}`);
}
