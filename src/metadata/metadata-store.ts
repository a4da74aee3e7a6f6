/**
 * Durable metadata of one region, one repository per aggregate. Implementations: SQLite (default,
 * `sqlite/`), PostgreSQL later. Every method is atomic on its own; where a rule spans a check and a
 * write (the snapshot quota, "insert if absent") the method does both in one statement or
 * transaction, so callers never need a cross-call transaction. All methods are async so a networked
 * database can implement them.
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
  lastError: string | null;
  /** Free-form progress the job keeps for itself across attempts (JSON). */
  progress: unknown;
  createdAt: number;
  updatedAt: number;
}

export interface JobRepository {
  /** Enqueues unless a job with this key exists; returns the job either way. */
  enqueue(job: { kind: string; key: string; group: string; payload: unknown; runAfter?: number }): Promise<JobRecord>;
  get(id: number): Promise<JobRecord | null>;
  getByKey(key: string): Promise<JobRecord | null>;
  /**
   * Claims the oldest runnable job of one of `kinds` (queued, runAfter <= now, or running with an
   * expired lease) whose group has fewer than `groupLimit(group)` running jobs. Sets state running,
   * the lease, and increments attempts.
   */
  claim(kinds: string[], owner: string, now: number, leaseMs: number, groupLimit: (group: string) => number): Promise<JobRecord | null>;
  renewLease(id: number, owner: string, until: number): Promise<boolean>;
  saveProgress(id: number, progress: unknown): Promise<void>;
  /** Back to queued after a transient failure. */
  retryLater(id: number, owner: string, runAfter: number, error: string): Promise<void>;
  finish(id: number, owner: string, state: 'done' | 'failed', error: string | null): Promise<void>;
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

export interface MetadataStore {
  readonly volumes: VolumeRepository;
  readonly snapshots: SnapshotRepository;
  readonly idempotency: IdempotencyRepository;
  readonly jobs: JobRepository;
  readonly diskBases: DiskBaseRepository;
  close(): Promise<void>;
}
