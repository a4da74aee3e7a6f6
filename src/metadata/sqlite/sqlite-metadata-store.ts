import type { MetadataStore } from '../metadata-store.ts';
import { openDatabase, type Db } from './database.ts';
import { SqliteChunkIndex } from './chunk-index.ts';
import { SqliteDiskBaseRepository } from './disk-bases.ts';
import { SqliteGcHoldRepository } from './gc-holds.ts';
import { SqliteIdempotencyRepository } from './idempotency.ts';
import { checkDatabase } from './integrity.ts';
import { SqliteJobRepository } from './jobs.ts';
import { SqliteLockRepository } from './locks.ts';
import { SqliteNodeRepository } from './nodes.ts';
import { SqliteSnapshotRepository } from './snapshots.ts';
import { SqliteVolumeRepository } from './volumes.ts';

/** A region's metadata in one SQLite file (WAL). */
export class SqliteMetadataStore implements MetadataStore {
  /** One process per data dir (kernel lock): nobody else uses this database. */
  readonly shared = false;
  readonly volumes;
  readonly snapshots;
  readonly idempotency;
  readonly jobs;
  readonly diskBases;
  readonly gcHolds;
  readonly nodes;
  readonly locks;
  readonly chunkIndex;
  private readonly db: Db;

  constructor(file: string) {
    this.db = openDatabase(file);
    this.volumes = new SqliteVolumeRepository(this.db);
    this.snapshots = new SqliteSnapshotRepository(this.db);
    this.idempotency = new SqliteIdempotencyRepository(this.db);
    this.jobs = new SqliteJobRepository(this.db);
    this.diskBases = new SqliteDiskBaseRepository(this.db);
    this.gcHolds = new SqliteGcHoldRepository(this.db);
    this.nodes = new SqliteNodeRepository(this.db);
    this.locks = new SqliteLockRepository(this.db);
    this.chunkIndex = new SqliteChunkIndex(this.db);
  }

  async integrityCheck(): Promise<string[]> {
    return checkDatabase(this.db);
  }

  async close(): Promise<void> {
    if (this.db.open) this.db.close();
  }
}
