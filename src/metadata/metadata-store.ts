/**
 * Durable metadata of one region, one repository per aggregate. Implementations: SQLite (default,
 * `sqlite/`, one process) and PostgreSQL (`postgres/`, shared by the processes of a region). Every
 * method is atomic on its own; where a rule spans a check and a write (the snapshot quota, "insert
 * if absent", a fenced job write) the method does both in one statement or transaction, so callers
 * never need a cross-call transaction. All methods are async so a networked database can
 * implement them.
 *
 * `test/helpers/metadata-contract.ts` is the one suite every implementation runs (test/metadata-*.test.ts).
 */
import type { Snapshot, SnapshotStatus } from '../domain/snapshot.ts';
import type { Volume, VolumeStatus } from '../domain/volume.ts';

export interface Page<T> {
  items: T[];
  /** Id of the first item of the next page, or null when this page is the last. */
  nextMarker: string | null;
}

export interface ListOptions {
  /** Id of the first item of the page (inclusive); null for the first page. */
  marker: string | null;
  maxKeys: number;
}

export interface VolumeFilter {
  zoneName?: string;
  name?: string;
  /** Only these ids. */
  ids?: string[];
}

export interface VolumeRepository {
  /** Inserts; false (and no change) when a volume with this id already exists. */
  insertIfAbsent(volume: Volume): Promise<boolean>;
  /** The volume, or null; never another account's (null then, exactly like a missing one). */
  get(accountId: string, id: string): Promise<Volume | null>;
  /** For workers that act for the region, not for a tenant. */
  getAny(id: string): Promise<Volume | null>;
  list(accountId: string, filter: VolumeFilter, page: ListOptions): Promise<Page<Volume>>;
  /** Every volume of the region in one of the given states (recovery after a restart). */
  listByStatus(statuses: VolumeStatus[]): Promise<Volume[]>;
  /**
   * Sets fields when the current status is one of `fromStatuses` (or always, when omitted).
   * Returns the updated volume, or null when it does not exist or the status did not match.
   */
  update(id: string, patch: Partial<Omit<Volume, 'id' | 'accountId'>>, fromStatuses?: VolumeStatus[]): Promise<Volume | null>;
  delete(id: string): Promise<void>;
  /**
   * Live volumes (not deleted, not `Deleting`) per storage process, keyed by `storageNode`, for
   * placing a new disk on the least loaded one. Volumes without a storage node (the region's only,
   * embedded storage process) are not counted; a node with no volume has no key.
   */
  countByNode(): Promise<Record<string, number>>;
}

export interface SnapshotRepository {
  /**
   * Inserts; returns 'exists' when the id is taken (nothing changes) and 'quota' when the volume
   * already has `maxPerVolume` manual snapshots.
   */
  insertIfAbsent(snapshot: Snapshot, maxPerVolume?: number): Promise<'inserted' | 'exists' | 'quota'>;
  get(accountId: string, id: string): Promise<Snapshot | null>;
  getAny(id: string): Promise<Snapshot | null>;
  list(accountId: string, filter: { volumeId?: string }, page: ListOptions): Promise<Page<Snapshot>>;
  listByStatus(statuses: SnapshotStatus[]): Promise<Snapshot[]>;
  /** Number of snapshots taken of a volume (the volume model's `snapshotNum`). */
  countByVolume(volumeId: string): Promise<number>;
  update(id: string, patch: Partial<Omit<Snapshot, 'id' | 'accountId'>>, fromStatuses?: SnapshotStatus[]): Promise<Snapshot | null>;
  delete(id: string): Promise<void>;
  /** Every manifest id a snapshot record points at (a garbage-collection root). */
  manifestIds(): Promise<string[]>;
  /**
   * `update(id, patch, ['Creating'])` that takes effect only while the GC hold `holdId` is live at
   * `now`, checked in the same transaction (invariant GC-3: a writer whose hold lapsed, and which a
   * garbage collection may therefore have ignored, can never publish what it wrote).
   * Returns the updated snapshot, or null (not Creating, or the hold lapsed).
   */
  publishUnderHold(id: string, patch: Partial<Omit<Snapshot, 'id' | 'accountId'>>, holdId: string, now: number): Promise<Snapshot | null>;
  /** Records that an incoming copy heard from its source at `at`. */
  touch(id: string, at: number): Promise<void>;
  /** Incoming copies (sourceRegion set) still Creating whose last sign of life is older than `before`. */
  listSilentIncoming(before: number): Promise<Snapshot[]>;
}

/** A clientToken's memory: what it was used for, and the result that the first call produced. */
export interface IdempotencyRecord {
  scope: string;
  token: string;
  paramsHash: string;
  /** The result the caller is answered with (JSON), planned before any work starts. */
  result: unknown;
  /** True once the work was carried out; a retry of an incomplete record finishes the work. */
  completed: boolean;
  lastUsedAt: number;
}

export interface IdempotencyRepository {
  get(scope: string, token: string): Promise<IdempotencyRecord | null>;
  /** Inserts; false when (scope, token) exists already (the caller then reads it). */
  insertIfAbsent(record: IdempotencyRecord): Promise<boolean>;
  markCompleted(scope: string, token: string): Promise<void>;
  touch(scope: string, token: string, at: number): Promise<void>;
  /** Forgets records last used before `cutoff`; returns how many. */
  purgeOlderThan(cutoff: number): Promise<number>;
}

export type JobState = 'queued' | 'running' | 'done' | 'failed';

/**
 * A fenced job write (`saveProgress`, `retryLater`, `finish`) found the job no longer running under
 * the caller's lease token: its lease lapsed and another claim took the job (or it was requeued).
 * Nothing was changed. The caller stops working on the job; it is someone else's now (COORD-1).
 */
export class LeaseLostError extends Error {
  override name = 'LeaseLostError';
  readonly jobId: number;
  readonly leaseToken: number;

  constructor(jobId: number, leaseToken: number, operation: string) {
    super(`job ${jobId}: lease token ${leaseToken} no longer holds the job (${operation} refused)`);
    this.jobId = jobId;
    this.leaseToken = leaseToken;
  }
}

export interface JobRecord {
  id: number;
  kind: string;
  /** Unique per logical job: enqueueing the same key twice yields one job. */
  key: string;
  /** Jobs of one group share a concurrency cap (e.g. copies to one destination region). */
  group: string;
  payload: unknown;
  state: JobState;
  attempts: number;
  runAfter: number;
  leaseOwner: string | null;
  leaseUntil: number | null;
  /**
   * The fencing token: incremented by every claim, kept after the lease ends. A running job's
   * writes carry the token of the claim they work under and take effect only while it is still
   * the job's (COORD-1).
   */
  leaseToken: number;
  /** The storage process that must run the job (it owns the disk); null: any process with a handler for the kind. */
  node: string | null;
  lastError: string | null;
  /** Free-form progress the job keeps for itself across attempts (JSON). */
  progress: unknown;
  createdAt: number;
  updatedAt: number;
  /**
   * When the job last made progress: its first claim, then every `saveProgress`. Retry deadlines
   * count from here, not from the enqueue (a long copy fails only after a deadline without progress).
   */
  progressedAt: number | null;
}

export interface JobRepository {
  /**
   * Enqueues unless a job with this key exists; returns the job either way (an existing job keeps
   * its own fields, `node` included). `node`: the storage process that must run it (default null: any).
   */
  enqueue(job: { kind: string; key: string; group: string; payload: unknown; runAfter?: number; node?: string | null }): Promise<JobRecord>;
  get(id: number): Promise<JobRecord | null>;
  getByKey(key: string): Promise<JobRecord | null>;
  /**
   * Claims the oldest runnable job of one of `kinds` (queued, runAfter <= now, or running with an
   * expired lease) whose group has fewer than `groupLimit(group)` running jobs, and whose `node` is
   * null or equals `node` (a claimer with `node` null takes only node-less jobs). Sets state running,
   * the lease (`owner`, `now + leaseMs`), increments attempts and the lease token, in one step.
   */
  claim(kinds: string[], owner: string, now: number, leaseMs: number, groupLimit: (group: string) => number, node: string | null): Promise<JobRecord | null>;
  /**
   * The writes of a running job are fenced by its lease token (COORD-1), not by the owner: each
   * takes effect only while the job is `running` with `lease_token = token`. A holder that stalled
   * past its lease, and whose job another claim took, can no longer touch it.
   * `renewLease` answers false when the fence fails; the three others throw `LeaseLostError` and
   * change nothing.
   */
  renewLease(id: number, token: number, until: number): Promise<boolean>;
  /** Persists the job's own progress and sets `progressedAt` to now. */
  saveProgress(id: number, token: number, progress: unknown): Promise<void>;
  /** Back to queued after a transient failure. */
  retryLater(id: number, token: number, runAfter: number, error: string): Promise<void>;
  finish(id: number, token: number, state: 'done' | 'failed', error: string | null): Promise<void>;
  /** Jobs in the given states (for gauges and GC roots). */
  list(states: JobState[], kinds?: string[]): Promise<JobRecord[]>;
  /** Releases every lease held by `owner` (a runner that stops). */
  releaseLeases(owner: string): Promise<number>;
  /**
   * Requeues every running job, whoever holds it. Only for a store that one process uses alone
   * (SQLite): at its start, no job can really be running.
   */
  requeueAllRunning(): Promise<number>;
  deleteFinishedBefore(cutoff: number): Promise<number>;
}

/** Extra manifest roots kept by disks (the manifest of what a disk held at its last snapshot). */
export interface DiskBaseRepository {
  set(volumeId: string, manifestId: string | null, generation: number): Promise<void>;
  get(volumeId: string): Promise<{ manifestId: string | null; generation: number } | null>;
  delete(volumeId: string): Promise<void>;
  manifestIds(): Promise<string[]>;
}

/**
 * GC holds: the durable in-flight roots of writers whose manifest is not known until they finish (a
 * snapshot capture). While a hold is live, garbage collection deletes no blob last used after the
 * hold's start minus the grace period (invariant GC-2). A hold is leased: its owner renews it; one
 * that lapsed is dead for good (renew refuses), and its owner can no longer publish (GC-3).
 * Rules live here, in the metadata store, so they hold across processes sharing a region.
 */
export interface GcHoldRepository {
  /** Opens a hold that lives until `now + leaseMs` unless renewed. `startedAt` is `now`. */
  open(purpose: string, now: number, leaseMs: number): Promise<{ id: string; startedAt: number }>;
  /** Extends a live hold to `now + leaseMs`; false (and no change) when it has lapsed or is closed. */
  renew(id: string, now: number, leaseMs: number): Promise<boolean>;
  close(id: string): Promise<void>;
  /** Start of the oldest hold live at `now`, or null when none is. */
  oldestLiveStart(now: number): Promise<number | null>;
  /** Forgets holds that lapsed before `cutoff`. */
  purgeLapsedBefore(cutoff: number): Promise<number>;
  /**
   * Closes every hold, whoever opened it. Only for a store that one process uses alone (SQLite): at
   * its start no writer of an earlier life can still be running. Elsewhere holds lapse by lease.
   */
  closeAll(): Promise<number>;
}

/**
 * The chunk index of an object-store chunk store: one row per (namespace, blob id) with a state, a
 * last-used time and an epoch token. The contract, and the protocol that makes it safe, are in
 * src/chunkstore/chunk-index.ts (`ChunkIndex`) and src/chunkstore/s3-store.ts; this is the same
 * interface, declared again because metadata may not import chunkstore (test/chunkstore-s3.test.ts
 * checks at compile time that the two stay interchangeable). Every method is one atomic step.
 */
export interface ChunkIndexRepository {
  beginPut(namespace: string, id: string, now: number): Promise<string | null>;
  markUsed(namespace: string, id: string, epoch: string, size: number, now: number): Promise<boolean>;
  present(namespace: string, ids: readonly string[], touchAt?: number): Promise<Set<string>>;
  claimForDelete(namespace: string, id: string, options: { cutoffMs: number; now: number; staleClaimBeforeMs: number; force?: boolean }): Promise<string | null>;
  forget(namespace: string, id: string, epoch: string): Promise<void>;
  list(namespace: string): AsyncIterable<ChunkIndexRow>;
  sync(): Promise<void>;
}

export interface ChunkIndexRow {
  id: string;
  state: 'storing' | 'present' | 'deleting';
  size: number;
  lastUsedMs: number;
  claimedAtMs: number | null;
}

/** A process of a region, as it announces itself (the node registry). Times are epoch ms. */
export interface NodeRecord {
  id: string;
  /** What the process does: 'api', 'storage', 'worker'. */
  roles: string[];
  /** Where its HTTP endpoint is reached by the other processes. */
  url: string;
  /** host:port of its NBD server (a storage process), or null. */
  nbdAddress: string | null;
  startedAt: number;
  heartbeatAt: number;
}

/**
 * The processes of a region. Each live process heartbeats its record; a record whose heartbeat is
 * older than the caller's tolerance is a process presumed gone (COORD-4).
 */
export interface NodeRepository {
  /** Inserts or replaces the node's record, with `heartbeatAt = now`. */
  heartbeat(node: Omit<NodeRecord, 'heartbeatAt'>, now: number): Promise<void>;
  get(id: string): Promise<NodeRecord | null>;
  /** Nodes whose heartbeat is at or after `now - maxAgeMs`, ordered by id. */
  listLive(now: number, maxAgeMs: number): Promise<NodeRecord[]>;
  remove(id: string): Promise<void>;
}

/**
 * Named singleton leases: at most one owner at a time runs what the name stands for (housekeeping,
 * garbage collection, policy runs) (COORD-3). A lease is held until `leaseUntil`; its owner renews
 * it by acquiring again. There is no fencing token: a holder that stalls past its lease may
 * overlap its successor, so what runs under a lock must be safe to run twice at once (garbage
 * collection is, by GC-1..GC-4); the lock saves the duplicate work.
 */
export interface LockRepository {
  /**
   * Takes the lock when it is free, lapsed (`leaseUntil <= now`) or already `owner`'s, setting
   * `leaseUntil = now + leaseMs`; false (and no change) while another owner holds it. One atomic
   * step across processes.
   */
  tryAcquire(name: string, owner: string, now: number, leaseMs: number): Promise<boolean>;
  /** Frees the lock if `owner` holds it; otherwise nothing. */
  release(name: string, owner: string): Promise<void>;
}

export interface MetadataStore {
  /**
   * True when several processes share the store (PostgreSQL), false when one process owns it
   * (SQLite, kernel-locked data dir). Only a store that is not shared may, at start-up, treat every
   * running job and live GC hold as left over from an earlier life (`requeueAllRunning`, `closeAll`).
   */
  readonly shared: boolean;
  readonly volumes: VolumeRepository;
  readonly snapshots: SnapshotRepository;
  readonly idempotency: IdempotencyRepository;
  readonly jobs: JobRepository;
  readonly diskBases: DiskBaseRepository;
  readonly gcHolds: GcHoldRepository;
  readonly nodes: NodeRepository;
  readonly locks: LockRepository;
  /** For a region whose chunks live in an object store (S3); absent where the store does not keep one. */
  readonly chunkIndex?: ChunkIndexRepository;
  /**
   * The store's own consistency (SQLite: `PRAGMA integrity_check` and `foreign_key_check`) and the
   * cross-row rules that hold at every instant, crash or not: an Available snapshot names a manifest,
   * a running job is leased, a disk base belongs to an existing disk... One line per problem; [] when
   * sound. Read-only; safe while the region serves (services/region-integrity.ts adds the rules that
   * need the chunk store and the disks).
   */
  integrityCheck(): Promise<string[]>;
  close(): Promise<void>;
}
