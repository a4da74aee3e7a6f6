/**
 * The chunk index: where an object-store `ChunkStore` (s3-store.ts) keeps what S3 cannot do
 * cheaply: "which of these ids are here" without a HEAD per id, a last-used time per blob that a
 * put or touch can refresh, and garbage collection's conditional delete, across processes (GC-2 in
 * docs/design.md). It lives in the region's metadata store (SQLite: src/metadata/sqlite/chunk-index.ts;
 * PostgreSQL next); the metadata layer implements this interface structurally, since it may not
 * import chunkstore (its mirror is `ChunkIndexRepository` in src/metadata/metadata-store.ts, and
 * test/chunkstore-s3.test.ts checks at compile time that the two stay interchangeable).
 *
 * One row per (namespace, id), in one of three states, plus an `epoch` token:
 *
 *   absent --beginPut--> storing --markUsed--> present --claimForDelete--> deleting --forget--> absent
 *                           \________________________claimForDelete_____/
 *
 * - `storing`: a put is under way (or its process died between its PUT and `markUsed`). Not
 *   reported by `present`; the object may or may not exist.
 * - `present`: the object exists (the invariant every reader relies on; s3-store.ts proves it).
 * - `deleting`: claimed by one deleter, which may now delete the object and then `forget` the row.
 *
 * The epoch names one incarnation of a row: a fresh, never-repeating token is drawn when a row is
 * created by `beginPut` and again by every successful `claimForDelete`; nothing else changes it. So
 * `markUsed(epoch)` succeeds only if no delete was claimed since the `beginPut` that returned the
 * epoch, and `forget(epoch)` removes only the claim it names (not a later takeover).
 *
 * Every method is one atomic step with respect to every other call on the same (namespace, id), in
 * this process or another (one SQL statement or transaction). A claim must be durable on its own
 * (a crash that forgot it after the object was deleted would leave a present row for nothing).
 * `beginPut`, `markUsed` and `forget` may wait for `sync()`: losing one only hides an object, or
 * leaves a claim to go stale. A touch (`present` with `touchAt`) is relied on as soon as it
 * resolves (a copy tells its source not to send), so it may be deferred only where every process
 * that could rely on it, or run a GC against it, dies with the index's machine (embedded SQLite);
 * a networked index (PostgreSQL) must make it durable before resolving, or a GC that survives a
 * database crash could delete what the lost touch protected. Times are ms since the epoch, from the
 * caller's clock. Last-used times only move forward (`max(old, new)`), so processes whose clocks
 * differ a little never make a blob look older than one of them made it.
 *
 * Refinement of the first draft (`markUsed(ns, id, size, now)` after the PUT, creating the row when
 * absent): that lets a put index an object a racing delete removed. Row present and old; GC claims
 * it; our PUT-if-absent answers 412 (the object is still there); GC deletes the object and forgets
 * the row; our `markUsed` creates a fresh `present` row for an object that no longer exists, and the
 * next copy is told it need not send it. Reserving the row before the PUT (`beginPut`, epoch) and
 * committing only within the same incarnation closes that window; it also makes a crash between PUT
 * and `markUsed` visible (a stale `storing` row that `S3ChunkStore.sweepAbandoned` reclaims) instead
 * of leaving an object nobody indexes. Claims carry their time, so a claim whose deleter died can be
 * taken over after a lease rather than blocking every later put of that id forever.
 */
export type ChunkIndexState = 'storing' | 'present' | 'deleting';

export interface ChunkIndexEntry {
  id: string;
  state: ChunkIndexState;
  /** Bytes of the stored object; 0 while `storing` or `deleting` a row that never was present. */
  size: number;
  lastUsedMs: number;
  /** When the delete claim was made (`deleting` only), else null. */
  claimedAtMs: number | null;
}

export interface ClaimOptions {
  /** A `storing` or `present` row is claimed only when its last use is before this. */
  cutoffMs: number;
  now: number;
  /** A `deleting` row whose claim was made before this is taken over (its deleter is presumed dead). */
  staleClaimBeforeMs: number;
  /**
   * An unconditional delete (scrub of a damaged blob): claim a `storing` or `present` row whatever
   * its last use, and an absent id too (a tombstone row, so that a put racing the delete of an
   * object nobody indexed still waits for it).
   */
  force?: boolean;
}

export interface ChunkIndex {
  /**
   * Before a PUT: absent -> `storing`; `storing`/`present` -> unchanged state, last use = now.
   * Resolves the row's epoch, or null when the row is `deleting` (the caller waits for that delete,
   * or takes it over once stale, then calls again).
   */
  beginPut(namespace: string, id: string, now: number): Promise<string | null>;
  /**
   * After the PUT succeeded (stored, or found already there): when the row is still in incarnation
   * `epoch` and not `deleting`, it becomes `present` with `size` and last use = now: true. False
   * when a delete was claimed since `beginPut` (the object may be gone): the caller starts over.
   */
  markUsed(namespace: string, id: string, epoch: string, size: number, now: number): Promise<boolean>;
  /**
   * Of `ids` (duplicates allowed, any number), those whose row is `present`; with `touchAt`, their
   * last use also becomes (at least) `touchAt`, in the same atomic step as the check.
   */
  present(namespace: string, ids: readonly string[], touchAt?: number): Promise<Set<string>>;
  /**
   * Atomically marks the row `deleting` under a fresh epoch (see `ClaimOptions` for when) and
   * resolves that epoch: the caller may now delete the object, then must `forget(epoch)`. Null when
   * the row is not claimable (used since the cutoff, absent without `force`, or being deleted by a
   * live claim).
   */
  claimForDelete(namespace: string, id: string, options: ClaimOptions): Promise<string | null>;
  /** Removes the row if it is still `deleting` under `epoch` (the caller's claim); else nothing. */
  forget(namespace: string, id: string, epoch: string): Promise<void>;
  /** Every row of the namespace, in every state, streamed in pages (rows may change meanwhile). */
  list(namespace: string): AsyncIterable<ChunkIndexEntry>;
  /**
   * Durability barrier: every call that resolved before this one survives a crash of the machine
   * once it resolves (a writer's sync calls it, so "durable" covers the index row, not only the
   * object). `claimForDelete` needs none: it is durable when it resolves, before the caller deletes.
   * An index whose every write is durable at once resolves immediately.
   */
  sync(): Promise<void>;
}
