import type pg from 'pg';
import type { MetadataStore } from '../metadata-store.ts';
import { createPool, describeOpenError, type PoolOptions } from './connection.ts';
import { PostgresChunkIndex } from './chunk-index.ts';
import { PostgresDiskBaseRepository } from './disk-bases.ts';
import { PostgresGcHoldRepository } from './gc-holds.ts';
import { PostgresIdempotencyRepository } from './idempotency.ts';
import { checkDatabase } from './integrity.ts';
import { PostgresJobRepository } from './jobs.ts';
import { PostgresLockRepository } from './locks.ts';
import { PostgresNodeRepository } from './nodes.ts';
import { migrate } from './migrations.ts';
import { PostgresSnapshotRepository } from './snapshots.ts';
import { PostgresVolumeRepository } from './volumes.ts';

/**
 * A region's metadata in PostgreSQL, shareable by several processes (API nodes, workers): every
 * rule that SQLite got from having one writer is a lock or a single guarded statement here (see
 * each repository). Open with `PostgresMetadataStore.open(url)`.
 */
export class PostgresMetadataStore implements MetadataStore {
  /** Several processes may share it: start-up must leave other processes' jobs and holds to their leases. */
  readonly shared = true;
  readonly volumes;
  readonly snapshots;
  readonly idempotency;
  readonly jobs;
  readonly diskBases;
  readonly gcHolds;
  readonly nodes;
  readonly locks;
  readonly chunkIndex;
  private closed = false;

  private constructor(private readonly pool: pg.Pool, private readonly relaxedPool: pg.Pool) {
    this.volumes = new PostgresVolumeRepository(pool);
    this.snapshots = new PostgresSnapshotRepository(pool);
    this.idempotency = new PostgresIdempotencyRepository(pool);
    this.jobs = new PostgresJobRepository(pool);
    this.diskBases = new PostgresDiskBaseRepository(pool);
    this.gcHolds = new PostgresGcHoldRepository(pool);
    this.nodes = new PostgresNodeRepository(pool);
    this.locks = new PostgresLockRepository(pool);
    this.chunkIndex = new PostgresChunkIndex(pool, relaxedPool);
  }

  /**
   * Connects once, brings the schema forward (or refuses one newer than this program) and returns
   * the store. An unreachable server, refused credentials or a missing database fail here with a
   * `MetadataOpenError` saying what to fix, and nothing is left open. Later, a dropped connection
   * fails only the calls that used it (the caller, e.g. the job runner, retries; the pool
   * reconnects), and never crashes the process.
   */
  static async open(url: string, opts: PoolOptions = {}): Promise<PostgresMetadataStore> {
    const pool = createPool(url, opts);
    try {
      await migrate(pool, opts.schema ?? 'public');
    } catch (err) {
      await pool.end().catch(() => undefined);
      if (err instanceof Error && /schema version \d+ is newer/.test(err.message)) throw err;
      throw describeOpenError(err, url);
    }
    // Connects only when first used: a region without an object store never opens it.
    return new PostgresMetadataStore(pool, createPool(url, opts, true));
  }

  async integrityCheck(): Promise<string[]> {
    return await checkDatabase(this.pool);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await Promise.all([this.pool.end(), this.relaxedPool.end()]);
  }
}
