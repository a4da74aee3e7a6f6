/**
 * Versioned schema of a region's PostgreSQL metadata, in PostgreSQL's dialect. Append-only: a
 * database is brought forward step by step, never rebuilt. Version 1 is the whole of SQLite's
 * versions 1-3 (there is no older PostgreSQL database to bring forward); version 2 is SQLite's 4,
 * version 3 SQLite's 5.
 *
 * Dialect choices:
 * - epoch-ms timestamps are BIGINT (an INTEGER ends in 1970 + 24 days); ids of jobs and the
 *   creation order of volumes and snapshots are identities (`GENERATED ALWAYS`: no separate
 *   sequence grants, and nothing can insert its own value by accident);
 * - JSON (tags, job payload and progress, clientToken results) is TEXT holding JSON.stringify's
 *   output: it comes back exactly as written, like SQLite's (key order, "\u0000" escapes), and
 *   nothing needs an index inside it. Rejected: JSONB, which reorders keys, refuses \u0000 in
 *   strings and costs a parse per write for queries we do not make (a query that needs one can
 *   cast, `payload::jsonb`);
 * - `desc` is a reserved word in PostgreSQL: the column is `description`;
 * - the job queue's own rules are CHECK constraints (a known state; running means leased), so no
 *   writer, ours or an operator's, can break them;
 * - `jobs.lease_token` counts claims: the fencing token of `JobRecord.leaseToken` (COORD-1).
 */
import type pg from 'pg';
import { withTransaction } from './connection.ts';

export const MIGRATIONS: ReadonlyArray<{ version: number; sql: string }> = [
  {
    version: 1,
    sql: `
      CREATE TABLE volumes (
        seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        account_id TEXT NOT NULL,
        name TEXT NOT NULL,
        description TEXT NOT NULL,
        size_gb INTEGER NOT NULL,
        storage_type TEXT NOT NULL,
        zone_name TEXT NOT NULL,
        create_time BIGINT NOT NULL,
        status TEXT NOT NULL,
        source_snapshot_id TEXT,
        tags TEXT NOT NULL,
        last_error TEXT,
        deleted_at BIGINT
      );
      CREATE INDEX volumes_account ON volumes (account_id, seq);
      CREATE INDEX volumes_status ON volumes (status) WHERE deleted_at IS NULL;

      CREATE TABLE snapshots (
        seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        account_id TEXT NOT NULL,
        name TEXT NOT NULL,
        description TEXT NOT NULL,
        volume_id TEXT NOT NULL,
        size_gb INTEGER NOT NULL,
        create_time BIGINT NOT NULL,
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
        deleted_at BIGINT,
        touched_at BIGINT
      );
      CREATE INDEX snapshots_account ON snapshots (account_id, seq);
      CREATE INDEX snapshots_volume ON snapshots (volume_id);
      CREATE INDEX snapshots_status ON snapshots (status) WHERE deleted_at IS NULL;

      CREATE TABLE idempotency (
        scope TEXT NOT NULL,
        token TEXT NOT NULL,
        params_hash TEXT NOT NULL,
        result TEXT NOT NULL,
        completed BOOLEAN NOT NULL,
        last_used_at BIGINT NOT NULL,
        PRIMARY KEY (scope, token)
      );
      CREATE INDEX idempotency_last_used ON idempotency (last_used_at);

      CREATE TABLE jobs (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        kind TEXT NOT NULL,
        key TEXT NOT NULL UNIQUE,
        grp TEXT NOT NULL,
        payload TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('queued', 'running', 'done', 'failed')),
        attempts INTEGER NOT NULL DEFAULT 0,
        run_after BIGINT NOT NULL,
        lease_owner TEXT,
        lease_until BIGINT,
        lease_token BIGINT NOT NULL DEFAULT 0,
        last_error TEXT,
        progress TEXT,
        created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL,
        progressed_at BIGINT,
        CONSTRAINT jobs_running_is_leased CHECK (state <> 'running' OR (lease_owner IS NOT NULL AND lease_until IS NOT NULL))
      );
      -- The claim walks runnable jobs in id order: over this index it skips only jobs that are not
      -- runnable yet, never the finished ones, which pile up until they are purged (measured: a
      -- (state, run_after, id) index made every claim scan all finished jobs by primary key).
      CREATE INDEX jobs_active ON jobs (id) WHERE state IN ('queued', 'running');
      CREATE INDEX jobs_running_group ON jobs (grp) WHERE state = 'running';

      CREATE TABLE disk_bases (
        volume_id TEXT PRIMARY KEY,
        manifest_id TEXT,
        generation BIGINT NOT NULL
      );

      CREATE TABLE gc_holds (
        id TEXT PRIMARY KEY,
        purpose TEXT NOT NULL,
        started_at BIGINT NOT NULL,
        lease_until BIGINT NOT NULL,
        closed BOOLEAN NOT NULL DEFAULT false
      );
      CREATE INDEX gc_holds_live ON gc_holds (lease_until) WHERE NOT closed;
    `,
  },
  {
    // The chunk index of an object-store chunk store (src/chunkstore/chunk-index.ts). `id > $after`
    // paging and the point lookups both use the primary key. No sync table: commits are durable.
    version: 2,
    sql: `
      CREATE TABLE chunk_index (
        namespace TEXT NOT NULL,
        id TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('storing', 'present', 'deleting')),
        size BIGINT NOT NULL,
        last_used BIGINT NOT NULL,
        claimed_at BIGINT,
        epoch TEXT NOT NULL,
        PRIMARY KEY (namespace, id)
      );
    `,
  },
  {
    // Coordination of the processes sharing the database (docs/design.md, "Coordination in the
    // database"): the storage process a job must run on and the one that owns each disk, the node
    // registry and named singleton leases. `ADD COLUMN` without a default rewrites nothing.
    version: 3,
    sql: `
      ALTER TABLE jobs ADD COLUMN node TEXT;
      ALTER TABLE volumes ADD COLUMN storage_node TEXT;
      CREATE TABLE nodes (
        id TEXT PRIMARY KEY,
        roles TEXT NOT NULL,
        url TEXT NOT NULL,
        nbd_address TEXT,
        started_at BIGINT NOT NULL,
        heartbeat_at BIGINT NOT NULL
      );
      CREATE TABLE locks (
        name TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        lease_until BIGINT NOT NULL
      );
    `,
  },
];

export const SCHEMA_VERSION = Math.max(...MIGRATIONS.map((m) => m.version));

/**
 * Brings the schema forward, in one transaction under an advisory lock, so that processes starting
 * at once migrate one after the other (the second finds the work done) and a failure leaves the
 * schema as it was (PostgreSQL's DDL is transactional). Refuses a schema newer than this program.
 * The lock is taken before anything else: even `CREATE ... IF NOT EXISTS` run by two sessions at
 * once can fail on the catalog's unique index. Rejected: a session-level lock held across several
 * transactions, which a crash between them could leave half-applied.
 */
export async function migrate(pool: pg.Pool, schema: string): Promise<void> {
  await withTransaction(pool, async (db) => {
    // Keyed by the schema's name, not current_schema(), which is null until the schema exists.
    await db.query("SELECT pg_advisory_xact_lock(hashtextextended('snapferry:migrate:' || $1, 0))", [schema]);
    await db.query(`CREATE SCHEMA IF NOT EXISTS ${schema}`);
    await db.query('CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at BIGINT NOT NULL)');
    const applied = new Set((await db.query('SELECT version FROM schema_migrations')).rows.map((r: { version: number }) => r.version));
    const newest = Math.max(0, ...applied);
    if (newest > SCHEMA_VERSION) {
      throw new Error(`database schema version ${newest} is newer than this program understands (${SCHEMA_VERSION}); upgrade snapferry`);
    }
    for (const m of MIGRATIONS) {
      if (applied.has(m.version)) continue;
      await db.query(m.sql);
      await db.query('INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)', [m.version, Date.now()]);
    }
  });
}
