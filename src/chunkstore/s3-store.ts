/**
 * `ChunkStore` on an S3-compatible object store (Ceph RGW, MinIO, Garage, AWS S3), with a chunk
 * index in the region's metadata store (chunk-index.ts) for presence, last-used times and GC's
 * conditional delete.
 *
 * Objects: `{prefix}{namespace}/{ab}/{id}` in one bucket, `ab` the id's first two hex characters
 * (listing by hand stays manageable; S3 itself needs no fan-out). One store instance per namespace
 * (chunks, manifests), like the local store; the two of a region share one client.
 *
 * Writes. `put` verifies sha256(data) === id, then PUTs with `If-None-Match: *` (one request stores
 * if absent: 200 = stored, 412 = already there) and sends the id as the signed
 * `x-amz-content-sha256`, so the store itself refuses bytes damaged on the way (400, retried). A PUT
 * is durable when it returns, so `sync()` has nothing to flush. Objects above
 * `multipartThresholdBytes` (large manifests) go up as multipart uploads after a HEAD: RGW 16 ignores
 * `If-None-Match` on CompleteMultipartUpload, and an overwrite with identical bytes is harmless.
 *
 * Reads. `get` re-hashes; a mismatch is read once more (a bit flipped on the way must not make scrub
 * delete a good blob), and only a second mismatch is `ChunkIntegrityError`. A body shorter than its
 * Content-Length is a broken connection (retried), never "damaged".
 *
 * ---------------------------------------------------------------------------------------------
 * The index protocol (GC-2 across processes)
 *
 *   put(id):    B  e = beginPut(id, now)       row absent -> storing; else last use = now; same epoch
 *                  (null: the row is deleting: wait, or take the delete over once its claim is stale)
 *               U  PUT-if-absent                200 stored / 412 found; either way the object exists
 *               M  markUsed(id, e, size, now)   -> present; false: a claim came between: back to B
 *   touch(ids): T  present(ids, touchAt = now)  present rows only, last use = now in the same step
 *   delete:     C  c = claimForDelete(id, cutoff)   present/storing used before cutoff -> deleting(c)
 *               X  DeleteObject                  attempts only while the claim is young (below)
 *               F  forget(id, c)                 removes the row only under the same claim
 *
 * Invariant P: while a row is `present` in epoch e, its object exists. Hence `has`/`touch` (which
 * report present rows only) never name a missing object, and `list` never does either.
 *
 * Lemma D (deleters): X of claim c is carried out by S3 only while the row is `deleting`. A deleter
 * sends an attempt only while its claim is younger than lease/2 - requestTimeout by its own
 * monotonic clock, and each attempt is abandoned at requestTimeout; a claim is taken over only
 * when older than the lease by the taker's wall clock, and F(c) removes only c. After an attempt
 * with no answer (timeout, reset) the deleter waits one requestTimeout more before F, so that a
 * request S3 received but had not answered has been carried out before any new put can begin.
 * Assumptions: S3 carries out a request within 2 x requestTimeout of its sending or never, and
 * process clocks differ by less than lease/2 - 2 x requestTimeout. (S3 has no conditional delete
 * that would fence a deleter exactly; RGW 16 has no If-Match on DeleteObject.)
 *
 * Proof of P. A row becomes present only at M(e), made by a put whose B returned e and whose M
 * found epoch e still there. Epochs never repeat and change at every claim, so between that put's
 * B and M no claim happened: its U (which left the object existing) happened inside incarnation e,
 * whose rows are storing or present, never deleting. By lemma D no DeleteObject is carried out in
 * incarnation e. So the object exists from U to the end of incarnation e, which covers every
 * moment the row is present in e. The next incarnation starts with a claim (deleting). QED.
 *
 * GC-2 (a blob a writer relies on is kept, or gone and stored again). Interleavings of a put or
 * touch with a GC delete C-X-F of the same id:
 * - C before B: B sees deleting and waits until F (or takes over a stale claim and finishes it),
 *   then creates a fresh row and U stores the object anew. The put reports a blob that exists.
 * - C between B and M: the claim changed the epoch, M fails, the put starts over at B (previous
 *   case). Whether U came before X (412 on an object about to vanish) or after (200) is irrelevant.
 * - C after M: M set last use = now >= the GC's cutoff (cutoff = run start - grace, in the past), so
 *   C fails unless the GC started more than `grace` after this put returned; then the put was a use
 *   before the cutoff, which GC-1/GC-3/GC-4 cover exactly as for the local store.
 * - touch T: C and T are atomic on the row. T before C: last use = now >= cutoff, C fails. C before
 *   T: the row is deleting, T does not report it, the caller sends the blob and puts it (first case).
 * - A stalled put (B, then a pause longer than grace): GC may claim its storing row; M then fails
 *   and the put starts over. A crashed put leaves a storing row: never reported present; a later put
 *   joins it (same epoch, its own U and M); `sweepAbandoned` deletes it once older than the cutoff.
 * - A crashed deleter leaves a deleting row: puts of that id wait, and after the lease one of them
 *   (or `sweepAbandoned`) takes the claim over, deletes, forgets, and proceeds.
 * - Scrub's unconditional `delete` claims with `force` (also an absent id: a tombstone row), so a
 *   put racing it waits and stores afresh, exactly as with a GC delete.
 *
 * `deleteIfUnusedSince` additionally refuses ids put through this process and not yet synced (the
 * contract's "waiting to be synced"): bookkeeping per process only, since an S3 put is durable on
 * return and the index rule above is what holds across processes.
 * ---------------------------------------------------------------------------------------------
 */
import type { S3Client } from '@aws-sdk/client-s3';
import { sha256Hex } from '../lib/sha256-pool.ts';
import type { ChunkIndex } from './chunk-index.ts';
import { assertChunkId, ChunkIntegrityError, type ChunkStore, type ChunkWriter, type StoredBlob } from './chunk-store.ts';
import { checkBucket, createS3Client, type S3ConnectionOptions } from './s3-client.ts';
import { S3Objects } from './s3-objects.ts';
import { backoffDelay, DEFAULT_RETRY_POLICY, sleep, type AttemptFailure, type RetryPolicy } from './s3-retry.ts';

export type Hasher = (data: Buffer) => string | Promise<string>;

export interface S3ChunkStoreOptions extends S3ConnectionOptions {
  bucket: string;
  /** Prepended to every key, e.g. `region-bj/`. Default ''. */
  prefix?: string;
  /** `chunks` or `manifests`. */
  namespace: string;
  index: ChunkIndex;
  /** A client to share (the region's other namespace); default: one built from the connection options. */
  client?: S3Client;
  /** SHA-256 for verification (default Node's crypto on the calling thread; or a Sha256Pool). */
  hasher?: Hasher;
  retry?: Partial<RetryPolicy>;
  /** Objects larger than this go up as multipart uploads. Default 64 MiB. */
  multipartThresholdBytes?: number;
  /** Part size of multipart uploads (S3's minimum is 5 MiB). Default 16 MiB. */
  partSizeBytes?: number;
  /** A delete claim older than this is presumed abandoned (its deleter died) and taken over. Default 10 min. */
  claimLeaseMs?: number;
  /** A multipart upload begun this long before GC's cutoff is presumed abandoned (sweepAbandoned). Default 1 h. */
  staleUploadMs?: number;
}

export interface S3StoreStats {
  /** Attempts sent (first tries and retries). */
  requests: number;
  /** Attempts that failed and were tried again. */
  retries: number;
}

const NAMESPACE_RE = /^[a-z0-9][a-z0-9-]*$/;


export class S3ChunkStore implements ChunkStore {
  /** Objects hold plain bytes: no compression at rest here (a copy out of this store compresses for the wire). */
  readonly storesPacked = false;
  readonly namespace: string;
  readonly stats: S3StoreStats = { requests: 0, retries: 0 };
  private readonly objects: S3Objects;
  private readonly index: ChunkIndex;
  private readonly hasher: Hasher;
  private readonly policy: RetryPolicy;
  private readonly claimLeaseMs: number;
  private readonly staleUploadMs: number;
  private readonly client: S3Client;
  private readonly ownsClient: boolean;
  /** Puts of one id in flight in this process: later callers wait for the first (one upload). */
  private readonly inflight = new Map<string, Promise<boolean>>();
  /** Ids put through this process and not yet synced, with how many holders (see the header). */
  private readonly unsynced = new Map<string, number>();
  /** Ids put directly (not through a writer) since the last `sync()`. */
  private direct: string[] = [];

  private constructor(o: S3ChunkStoreOptions, client: S3Client) {
    if (!NAMESPACE_RE.test(o.namespace)) throw new RangeError(`not a namespace: ${JSON.stringify(o.namespace)}`);
    this.namespace = o.namespace;
    this.index = o.index;
    this.hasher = o.hasher ?? sha256Hex;
    this.policy = { ...DEFAULT_RETRY_POLICY, ...o.retry };
    this.claimLeaseMs = o.claimLeaseMs ?? 10 * 60_000;
    this.staleUploadMs = o.staleUploadMs ?? 3600_000;
    this.client = client;
    this.ownsClient = o.client === undefined;
    if (this.claimLeaseMs < 4 * this.policy.requestTimeoutMs) throw new RangeError('claimLeaseMs must be at least 4 x requestTimeoutMs (see lemma D)');
    this.objects = new S3Objects({
      client,
      bucket: o.bucket,
      keyPrefix: `${o.prefix ?? ''}${o.namespace}/`,
      policy: this.policy,
      multipartThresholdBytes: o.multipartThresholdBytes ?? 64 * 1024 * 1024,
      partSizeBytes: o.partSizeBytes ?? 16 * 1024 * 1024,
      hooks: {
        onAttempt: () => void this.stats.requests++,
        onFailure: (f: AttemptFailure) => void (f.willRetry && this.stats.retries++),
      },
    });
  }

  /**
   * Opens a store after checking, with HeadBucket, that the bucket exists and the keys may use it;
   * otherwise throws `S3ConfigError` saying which (s3-client.ts).
   */
  static async open(o: S3ChunkStoreOptions): Promise<S3ChunkStore> {
    const client = o.client ?? createS3Client(o);
    const store = new S3ChunkStore(o, client);
    try {
      await checkBucket(client, o.endpoint, o.bucket, store.policy, store.objects.hooks);
    } catch (err) {
      store.close();
      throw err;
    }
    return store;
  }

  /** Closes the client's connections when the store made its own client (not a shared one). */
  close(): void {
    if (this.ownsClient) this.client.destroy();
  }

  /** The object key of `id` (for operators and tests). */
  objectKey(id: string): string {
    assertChunkId(id);
    return this.objects.key(id);
  }

  put(id: string, data: Buffer): Promise<boolean> {
    return this.putDirect(id, data, true);
  }

  putHashed(id: string, data: Buffer): Promise<boolean> {
    return this.putDirect(id, data, false);
  }

  writer(): ChunkWriter {
    return new S3Writer((id, data, verify) => this.storeHeld(id, data, verify), (ids) => this.release(ids), () => this.index.sync());
  }

  /**
   * Every object is durable when its PUT returns; this makes the index rows of earlier puts durable
   * (ChunkIndex.sync) and ends the "not yet synced" hold of direct puts.
   */
  async sync(): Promise<void> {
    const ids = this.direct;
    this.direct = [];
    try {
      await this.index.sync();
    } finally {
      this.release(ids);
    }
  }

  async get(id: string): Promise<Buffer> {
    assertChunkId(id);
    let data = await this.objects.get(id);
    let actual = await this.hasher(data);
    if (actual !== id) {
      data = await this.objects.get(id); // one more read: damage on the way is not damage at rest
      actual = await this.hasher(data);
      if (actual !== id) throw new ChunkIntegrityError(id, actual);
    }
    return data;
  }

  async has(ids: readonly string[]): Promise<Set<string>> {
    for (const id of ids) assertChunkId(id);
    return this.index.present(this.namespace, ids);
  }

  async touch(ids: readonly string[]): Promise<Set<string>> {
    for (const id of ids) assertChunkId(id);
    return this.index.present(this.namespace, ids, Date.now());
  }

  async delete(id: string): Promise<void> {
    assertChunkId(id);
    const deadline = performance.now() + this.claimLeaseMs * 2;
    for (let n = 1; ; n++) {
      const [now, startedAt] = [Date.now(), performance.now()];
      const claim = await this.index.claimForDelete(this.namespace, id, { cutoffMs: Infinity, now, staleClaimBeforeMs: now - this.claimLeaseMs, force: true });
      if (claim !== null) return this.finishDelete(id, claim, startedAt);
      // Someone else's live claim: wait until it is done, then delete under our own claim.
      if (performance.now() > deadline) throw new Error(`chunk ${id}: another delete of it has not finished in ${Math.round(this.claimLeaseMs * 2 / 1000)} s`);
      await sleep(waitDelay(n));
    }
  }

  async deleteIfUnusedSince(id: string, cutoffMs: number): Promise<boolean> {
    assertChunkId(id);
    if (this.unsynced.has(id)) return false;
    const [now, startedAt] = [Date.now(), performance.now()];
    const claim = await this.index.claimForDelete(this.namespace, id, { cutoffMs, now, staleClaimBeforeMs: -Infinity });
    if (claim === null) return false;
    await this.finishDelete(id, claim, startedAt);
    return true;
  }

  async *list(): AsyncIterable<StoredBlob> {
    for await (const e of this.index.list(this.namespace)) {
      if (e.state === 'present') yield { id: e.id, size: e.size, lastUsedMs: e.lastUsedMs };
    }
  }

  /**
   * Reclaims what crashes left in the index: `storing` rows last used before `cutoffMs` (a put died
   * between its PUT and its markUsed; the object may exist and nobody reports it), and `deleting`
   * rows whose claim is older than the lease (a deleter died); and multipart uploads of a process
   * that died mid-upload. For garbage collection to call with its cutoff. Returns how many of each
   * were cleaned.
   */
  async sweepAbandoned(cutoffMs: number): Promise<{ storing: number; deleting: number; multipartUploads: number }> {
    // Never a cutoff after now: a row listed as storing that a put commits meanwhile then has a
    // last use after the cutoff, so the claim below cannot take a present row.
    cutoffMs = Math.min(cutoffMs, Date.now());
    // A multipart upload runs for minutes at most: one begun over an hour before the cutoff (and
    // before now) has lost its process. Aborting a live one would only fail that put, not lose data.
    const done = { storing: 0, deleting: 0, multipartUploads: await this.objects.abortUploadsBegunBefore(Math.min(cutoffMs, Date.now()) - this.staleUploadMs) };
    for await (const e of this.index.list(this.namespace)) {
      if (e.state === 'present' || this.unsynced.has(e.id)) continue;
      const [now, startedAt] = [Date.now(), performance.now()];
      const claim = await this.index.claimForDelete(this.namespace, e.id, { cutoffMs, now, staleClaimBeforeMs: now - this.claimLeaseMs });
      if (claim === null) continue;
      await this.finishDelete(e.id, claim, startedAt);
      done[e.state]++;
    }
    return done;
  }

  // ---- internals ----------------------------------------------------------------------------

  private async putDirect(id: string, data: Buffer, verify: boolean): Promise<boolean> {
    const { stored, held } = await this.storeHeld(id, data, verify);
    if (held) this.direct.push(id);
    return stored;
  }

  /**
   * A put whose id is held ("not yet synced") from its start, and afterwards when it stored the blob
   * or found it held by another put of this process (the local store's "found pending"); the caller
   * then releases it at its sync. A put that found the blob long stored holds nothing.
   */
  private async storeHeld(id: string, data: Buffer, verify: boolean): Promise<{ stored: boolean; held: boolean }> {
    assertChunkId(id);
    if (verify) {
      const actual = await this.hasher(data);
      if (actual !== id) throw new ChunkIntegrityError(id, actual);
    }
    const joined = this.unsynced.has(id);
    this.unsynced.set(id, (this.unsynced.get(id) ?? 0) + 1);
    let stored: boolean;
    try {
      const running = this.inflight.get(id);
      if (running && (await running.then(() => true, () => false))) {
        stored = false; // the first put did it, after we asked
      } else {
        const mine = this.storeOnce(id, data, verify);
        this.inflight.set(id, mine);
        try {
          stored = await mine;
        } finally {
          if (this.inflight.get(id) === mine) this.inflight.delete(id);
        }
      }
    } catch (err) {
      this.release([id]);
      throw err;
    }
    const held = stored || joined;
    if (!held) this.release([id]);
    return { stored, held };
  }

  /** B, U, M of the protocol (header), repeated until M holds. */
  private async storeOnce(id: string, data: Buffer, verified: boolean): Promise<boolean> {
    const deadline = performance.now() + this.claimLeaseMs * 2;
    let stored = false; // by any round of this call (a later round may find what an earlier one stored)
    for (let n = 1; ; n++) {
      const epoch = await this.index.beginPut(this.namespace, id, Date.now());
      if (epoch === null) {
        await this.waitOutDelete(id, n, deadline);
        continue;
      }
      stored = (await this.objects.putIfAbsent(id, data, verified ? id : null)) || stored;
      if (await this.index.markUsed(this.namespace, id, epoch, data.length, Date.now())) return stored;
      // A delete was claimed since beginPut: the object may be gone. Start over.
    }
  }

  /** The row is deleting: take the claim over if it is stale, else wait a little. */
  private async waitOutDelete(id: string, n: number, deadline: number): Promise<void> {
    const [now, startedAt] = [Date.now(), performance.now()];
    const claim = await this.index.claimForDelete(this.namespace, id, { cutoffMs: -Infinity, now, staleClaimBeforeMs: now - this.claimLeaseMs });
    if (claim !== null) return this.finishDelete(id, claim, startedAt);
    if (performance.now() > deadline) throw new Error(`chunk ${id} is being deleted and the delete has not finished in ${Math.round(this.claimLeaseMs * 2 / 1000)} s`);
    await sleep(waitDelay(n));
  }

  /**
   * X and F under claim `epoch`, keeping to lemma D (header). `claimStartedAt` is this process's
   * monotonic clock just before the claim was asked for, so the claim is at most that old.
   */
  private async finishDelete(id: string, epoch: string, claimStartedAt: number): Promise<void> {
    const lastSend = claimStartedAt + this.claimLeaseMs / 2 - this.policy.requestTimeoutMs;
    // Stalled since the claim: leave it to go stale and be taken over, rather than delete late.
    if (performance.now() >= lastSend) throw new Error(`chunk ${id}: delete claim too old to act on; it will be taken over after the lease`);
    let ambiguous = false;
    await this.objects.delete(id, {
      mayAttempt: () => performance.now() < lastSend,
      onFailure: (f) => void (ambiguous ||= f.ambiguous),
    });
    // On failure the claim stays: puts of this id wait, and take it over after the lease.
    if (ambiguous) await sleep(this.policy.requestTimeoutMs);
    await this.index.forget(this.namespace, id, epoch);
  }

  private release(ids: readonly string[]): void {
    for (const id of ids) {
      const n = (this.unsynced.get(id) ?? 0) - 1;
      if (n > 0) this.unsynced.set(id, n);
      else this.unsynced.delete(id);
    }
  }
}

/** Polling a delete in progress: quick at first (deletes take milliseconds), at most 1 s apart. */
function waitDelay(n: number): number {
  return 10 + backoffDelay({ ...DEFAULT_RETRY_POLICY, baseDelayMs: 20, maxDelayMs: 1000 }, n);
}

/**
 * One caller's puts. Every object is durable when its PUT resolves; `sync` makes their index rows
 * durable (ChunkIndex.sync), ends their "not yet synced" hold (which keeps this process's GC off
 * them) and resets `unsyncedBytes`. It rejects only when the index cannot sync (then every blob of
 * the batch is in doubt, and the caller retries the batch: puts are idempotent).
 */
class S3Writer implements ChunkWriter {
  private ids: string[] = [];
  private bytes = 0;

  constructor(
    private readonly storeBlob: (id: string, data: Buffer, verify: boolean) => Promise<{ stored: boolean; held: boolean }>,
    private readonly release: (ids: readonly string[]) => void,
    private readonly syncIndex: () => Promise<void>,
  ) {}

  get unsyncedBytes(): number {
    return this.bytes;
  }

  put(id: string, data: Buffer): Promise<boolean> {
    return this.track(id, data, true);
  }

  putHashed(id: string, data: Buffer): Promise<boolean> {
    return this.track(id, data, false);
  }

  async sync(): Promise<void> {
    const ids = this.ids;
    this.ids = [];
    this.bytes = 0;
    if (ids.length === 0) return;
    try {
      await this.syncIndex();
    } finally {
      this.release(ids);
    }
  }

  private async track(id: string, data: Buffer, verify: boolean): Promise<boolean> {
    const { stored, held } = await this.storeBlob(id, data, verify);
    if (held) {
      this.ids.push(id);
      this.bytes += data.length;
    }
    return stored;
  }
}
