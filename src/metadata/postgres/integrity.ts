/**
 * `MetadataStore.integrityCheck` for PostgreSQL: the database's own consistency as far as SQL can
 * see it, then the same cross-row rules as `sqlite/integrity.ts`. Read-only, in one REPEATABLE
 * READ transaction, so it sees one state of the database while other processes keep writing.
 * Each problem is one line naming the row, `metadata: ...`; none means [].
 *
 * PostgreSQL has no `PRAGMA integrity_check`: a page checksum failure surfaces as an error of the
 * query that reads the page. What SQL can check: the schema version, indexes left invalid (an
 * interrupted `CREATE INDEX CONCURRENTLY`), constraints never validated, and, where the `amcheck`
 * extension is installed (`CREATE EXTENSION amcheck`, shipped with the server), every B-tree index
 * of the schema against its own invariants.
 */
import type pg from 'pg';
import { VOLUME_STATUSES } from '../../domain/volume.ts';
import { withTransaction } from './connection.ts';
import { SCHEMA_VERSION } from './migrations.ts';

const SNAPSHOT_STATUSES = ['Creating', 'Available', 'CreatedFailed', 'NotAvailable'];
const JOB_STATES = ['queued', 'running', 'done', 'failed'];
/** At most this many lines per rule: a badly broken database should not produce a million. */
const MAX_PER_RULE = 100;
const MANIFEST_ID = '^[0-9a-f]{64}$';

export async function checkDatabase(pool: pg.Pool): Promise<string[]> {
  return await withTransaction(pool, async (db) => {
    await db.query('SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY');
    const problems: string[] = [];
    const rule = async (sql: string, values: unknown[], line: (row: any) => string): Promise<void> => {
      const { rows } = await db.query(`${sql} LIMIT ${MAX_PER_RULE + 1}`, values);
      for (const row of rows.slice(0, MAX_PER_RULE)) problems.push(`metadata: ${line(row)}`);
      if (rows.length > MAX_PER_RULE) problems.push('metadata: (more of the above not listed)');
    };

    // The database itself.
    const version = (await db.query('SELECT max(version) AS v FROM schema_migrations')).rows[0].v as number | null;
    if (version !== SCHEMA_VERSION) problems.push(`metadata: schema version ${version} where this program expects ${SCHEMA_VERSION}`);
    await rule(
      `SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
         WHERE c.relnamespace = current_schema()::regnamespace AND NOT (i.indisvalid AND i.indisready)`,
      [],
      (r) => `index ${r.relname} is not valid (rebuild it: REINDEX INDEX ${r.relname})`,
    );
    await rule(
      `SELECT conname, conrelid::regclass AS tbl FROM pg_constraint WHERE connamespace = current_schema()::regnamespace AND NOT convalidated`,
      [],
      (r) => `constraint ${r.conname} of ${r.tbl} was never validated`,
    );
    const amcheck = (await db.query("SELECT 1 FROM pg_extension WHERE extname = 'amcheck'")).rowCount === 1;
    if (amcheck) {
      const { rows } = await db.query(
        `SELECT c.oid, c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am a ON a.oid = c.relam
           WHERE c.relnamespace = current_schema()::regnamespace AND a.amname = 'btree' AND i.indisvalid ORDER BY c.relname`,
      );
      for (const r of rows as Array<{ oid: number; relname: string }>) {
        try {
          await db.query('SAVEPOINT amcheck');
          await db.query('SELECT bt_index_check($1::regclass, true)', [r.oid]);
          await db.query('RELEASE SAVEPOINT amcheck');
        } catch (err) {
          await db.query('ROLLBACK TO SAVEPOINT amcheck');
          problems.push(`metadata: amcheck: index ${r.relname}: ${(err as Error).message}`);
        }
      }
    }

    // States are the known ones.
    await rule('SELECT id, status FROM snapshots WHERE NOT (status = ANY($1)) ORDER BY seq', [SNAPSHOT_STATUSES], (r) => `snapshot ${r.id} has an unknown status ${JSON.stringify(r.status)}`);
    await rule('SELECT id, status FROM volumes WHERE NOT (status = ANY($1)) ORDER BY seq', [[...VOLUME_STATUSES]], (r) => `volume ${r.id} has an unknown status ${JSON.stringify(r.status)}`);
    await rule('SELECT id, state FROM jobs WHERE NOT (state = ANY($1)) ORDER BY id', [JOB_STATES], (r) => `job ${r.id} has an unknown state ${JSON.stringify(r.state)}`);

    // A snapshot is Available only once its manifest is durable, and names it (the write order).
    await rule(
      "SELECT id FROM snapshots WHERE deleted_at IS NULL AND status = 'Available' AND manifest_id IS NULL ORDER BY seq",
      [],
      (r) => `snapshot ${r.id} is Available without a manifest id`,
    );
    await rule(
      "SELECT id, progress FROM snapshots WHERE deleted_at IS NULL AND status = 'Available' AND progress <> 100 ORDER BY seq",
      [],
      (r) => `snapshot ${r.id} is Available with progress ${r.progress}, not 100`,
    );
    await rule(
      'SELECT id, manifest_id FROM snapshots WHERE manifest_id IS NOT NULL AND manifest_id !~ $1 ORDER BY seq',
      [MANIFEST_ID],
      (r) => `snapshot ${r.id} names a malformed manifest id ${JSON.stringify(r.manifest_id)}`,
    );
    await rule(
      'SELECT volume_id, manifest_id FROM disk_bases WHERE manifest_id IS NOT NULL AND manifest_id !~ $1 ORDER BY volume_id',
      [MANIFEST_ID],
      (r) => `the base of disk ${r.volume_id} names a malformed manifest id ${JSON.stringify(r.manifest_id)}`,
    );

    // A running job is leased (also a CHECK constraint here; kept for a schema altered by hand).
    await rule(
      "SELECT id, key FROM jobs WHERE state = 'running' AND (lease_owner IS NULL OR lease_until IS NULL) ORDER BY id",
      [],
      (r) => `job ${r.id} (${r.key}) is running without a lease`,
    );

    // A disk base belongs to a disk that exists: a leftover is a garbage-collection root for ever.
    await rule(
      'SELECT b.volume_id FROM disk_bases b LEFT JOIN volumes v ON v.id = b.volume_id AND v.deleted_at IS NULL WHERE v.id IS NULL ORDER BY b.volume_id',
      [],
      (r) => `disk base of ${r.volume_id}, a disk that does not exist (a garbage-collection root that never goes away)`,
    );
    return problems;
  });
}
