/**
 * Versioned schema of a region's SQLite database. Migrations only ever append: an existing
 * database is brought forward step by step, never rebuilt, so old data stays readable.
 * Volumes and snapshots keep a row after deletion (`deleted_at`) so that a list marker that names a
 * since-deleted item still finds its place, and a clientToken retry still sees what it created.
 */
export const MIGRATIONS: ReadonlyArray<{ version: number; sql: string }> = [
  {
    version: 1,
    sql: `
      CREATE TABLE volumes (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        account_id TEXT NOT NULL,
        name TEXT NOT NULL,
        desc TEXT NOT NULL,
        size_gb INTEGER NOT NULL,
        storage_type TEXT NOT NULL,
        zone_name TEXT NOT NULL,
        create_time INTEGER NOT NULL,
        status TEXT NOT NULL,
        source_snapshot_id TEXT,
        tags TEXT NOT NULL,
        last_error TEXT,
        deleted_at INTEGER
      );
      CREATE INDEX volumes_account ON volumes(account_id, seq);

      CREATE TABLE snapshots (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        account_id TEXT NOT NULL,
        name TEXT NOT NULL,
        desc TEXT NOT NULL,
        volume_id TEXT NOT NULL,
        size_gb INTEGER NOT NULL,
        create_time INTEGER NOT NULL,
        status TEXT NOT NULL,
        create_method TEXT NOT NULL,
        progress INTEGER NOT NULL,
        storage_type TEXT NOT NULL,
        retention_days INTEGER,
        tags TEXT NOT NULL,
        source_region TEXT,
        source_snapshot_id TEXT,
        manifest_id TEXT,
        last_error TEXT,
        deleted_at INTEGER
      );
      CREATE INDEX snapshots_account ON snapshots(account_id, seq);
      CREATE INDEX snapshots_volume ON snapshots(volume_id);

      CREATE TABLE idempotency (
        scope TEXT NOT NULL,
        token TEXT NOT NULL,
        params_hash TEXT NOT NULL,
        result TEXT NOT NULL,
        completed INTEGER NOT NULL,
        last_used_at INTEGER NOT NULL,
        PRIMARY KEY (scope, token)
      );

      CREATE TABLE jobs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL,
        key TEXT NOT NULL UNIQUE,
        grp TEXT NOT NULL,
        payload TEXT NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        run_after INTEGER NOT NULL,
        lease_owner TEXT,
        lease_until INTEGER,
        last_error TEXT,
        progress TEXT,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
      );
      CREATE INDEX jobs_runnable ON jobs(state, run_after, id);

      CREATE TABLE disk_bases (
        volume_id TEXT PRIMARY KEY,
        manifest_id TEXT,
        generation INTEGER NOT NULL
      );
    `,
  },
  {
    // When an incoming copy last heard from its source: a copy silent for longer than the copy
    // deadline is failed by the destination itself (its source may be gone for good).
    version: 2,
    sql: `ALTER TABLE snapshots ADD COLUMN touched_at INTEGER;`,
  },
  {
    // GC holds (durable in-flight roots of captures, invariant GC-2) and the time a job last made
    // progress (retry deadlines count from there, not from the enqueue).
    version: 3,
    sql: `
      CREATE TABLE gc_holds (
        id TEXT PRIMARY KEY,
        purpose TEXT NOT NULL,
        started_at INTEGER NOT NULL,
        lease_until INTEGER NOT NULL,
        closed INTEGER NOT NULL DEFAULT 0
      );
      CREATE INDEX gc_holds_live ON gc_holds(closed, lease_until);
      ALTER TABLE jobs ADD COLUMN progressed_at INTEGER;
    `,
  },
  {
    // The chunk index of an object-store chunk store (src/chunkstore/chunk-index.ts): presence,
    // last-used time and delete claims per blob, which S3 cannot keep cheaply itself.
    version: 4,
    sql: `
      CREATE TABLE chunk_index (
        namespace TEXT NOT NULL,
        id TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('storing', 'present', 'deleting')),
        size INTEGER NOT NULL,
        last_used INTEGER NOT NULL,
        claimed_at INTEGER,
        epoch TEXT NOT NULL,
        PRIMARY KEY (namespace, id)
      ) WITHOUT ROWID;
      -- One row, written by the index's durability barrier (a commit with an fsync covers every
      -- earlier commit in the WAL).
      CREATE TABLE chunk_index_sync (id INTEGER PRIMARY KEY CHECK (id = 0), n INTEGER NOT NULL);
      INSERT INTO chunk_index_sync (id, n) VALUES (0, 0);
    `,
  },
  {
    // Coordination (docs/design.md, "Coordination in the database"): the jobs' fencing token and
    // the storage process a job must run on, the storage process that owns each disk, the node
    // registry and named singleton leases. The same schema as PostgreSQL's version 3.
    version: 5,
    sql: `
      ALTER TABLE jobs ADD COLUMN lease_token INTEGER NOT NULL DEFAULT 0;
      ALTER TABLE jobs ADD COLUMN node TEXT;
      ALTER TABLE volumes ADD COLUMN storage_node TEXT;
      CREATE TABLE nodes (
        id TEXT PRIMARY KEY,
        roles TEXT NOT NULL,
        url TEXT NOT NULL,
        nbd_address TEXT,
        started_at INTEGER NOT NULL,
        heartbeat_at INTEGER NOT NULL
      );
      CREATE TABLE locks (
        name TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        lease_until INTEGER NOT NULL
      );
    `,
  },
];
