/**
 * `MetadataStore.integrityCheck` for SQLite: the database file's own consistency, then the
 * cross-row rules of docs/design.md that hold at every instant (after a crash too). Read-only, in
 * one read transaction, so it sees one state of the database even while the region is serving.
 * Each problem is one line naming the row, `metadata: ...`; none means [].
 */
import { VOLUME_STATUSES } from '../../domain/volume.ts';
import type { Db } from './database.ts';

const SNAPSHOT_STATUSES = ['Creating', 'Available', 'CreatedFailed', 'NotAvailable'];
const JOB_STATES = ['queued', 'running', 'done', 'failed'];
/** At most this many lines per rule: a badly broken database should not produce a million. */
const MAX_PER_RULE = 100;

const quoted = (values: readonly string[]): string => values.map((v) => `'${v.replace(/'/g, "''")}'`).join(', ');

export function checkDatabase(db: Db): string[] {
  return db.transaction((): string[] => {
    const problems: string[] = [];
    const rule = (sql: string, line: (row: any) => string): void => {
      const rows = db.prepare(`${sql} LIMIT ${MAX_PER_RULE + 1}`).all() as unknown[];
      for (const row of rows.slice(0, MAX_PER_RULE)) problems.push(`metadata: ${line(row)}`);
      if (rows.length > MAX_PER_RULE) problems.push(`metadata: (more of the above not listed)`);
    };

    // The file itself: b-trees, indexes, UNIQUE/NOT NULL constraints, then foreign keys.
    for (const r of db.pragma('integrity_check') as Array<{ integrity_check: string }>) {
      if (r.integrity_check !== 'ok') problems.push(`metadata: integrity_check: ${r.integrity_check}`);
    }
    for (const r of db.pragma('foreign_key_check') as Array<{ table: string; rowid: number; parent: string }>) {
      problems.push(`metadata: foreign_key_check: row ${r.rowid} of ${r.table} names a missing row of ${r.parent}`);
    }

    // States are the known ones.
    rule(`SELECT id, status FROM snapshots WHERE status NOT IN (${quoted(SNAPSHOT_STATUSES)})`, (r) => `snapshot ${r.id} has an unknown status ${JSON.stringify(r.status)}`);
    rule(`SELECT id, status FROM volumes WHERE status NOT IN (${quoted(VOLUME_STATUSES)})`, (r) => `volume ${r.id} has an unknown status ${JSON.stringify(r.status)}`);
    rule(`SELECT id, state FROM jobs WHERE state NOT IN (${quoted(JOB_STATES)})`, (r) => `job ${r.id} has an unknown state ${JSON.stringify(r.state)}`);

    // A snapshot is Available only once its manifest is durable, and names it (the write order).
    rule(
      "SELECT id FROM snapshots WHERE deleted_at IS NULL AND status = 'Available' AND manifest_id IS NULL ORDER BY seq",
      (r) => `snapshot ${r.id} is Available without a manifest id`,
    );
    rule(
      "SELECT id, progress FROM snapshots WHERE deleted_at IS NULL AND status = 'Available' AND progress <> 100 ORDER BY seq",
      (r) => `snapshot ${r.id} is Available with progress ${r.progress}, not 100`,
    );
    rule(
      "SELECT id, manifest_id FROM snapshots WHERE manifest_id IS NOT NULL AND (length(manifest_id) <> 64 OR manifest_id GLOB '*[^0-9a-f]*') ORDER BY seq",
      (r) => `snapshot ${r.id} names a malformed manifest id ${JSON.stringify(r.manifest_id)}`,
    );
    rule(
      "SELECT volume_id, manifest_id FROM disk_bases WHERE manifest_id IS NOT NULL AND (length(manifest_id) <> 64 OR manifest_id GLOB '*[^0-9a-f]*')",
      (r) => `the base of disk ${r.volume_id} names a malformed manifest id ${JSON.stringify(r.manifest_id)}`,
    );

    // A running job is leased (claim sets state and lease in one statement).
    rule(
      "SELECT id, kind, key FROM jobs WHERE state = 'running' AND (lease_owner IS NULL OR lease_until IS NULL) ORDER BY id",
      (r) => `job ${r.id} (${r.key}) is running without a lease`,
    );

    // A disk base belongs to a disk that exists: a leftover is a garbage-collection root for ever.
    rule(
      'SELECT b.volume_id FROM disk_bases b LEFT JOIN volumes v ON v.id = b.volume_id AND v.deleted_at IS NULL WHERE v.id IS NULL',
      (r) => `disk base of ${r.volume_id}, a disk that does not exist (a garbage-collection root that never goes away)`,
    );
    return problems;
  })();
}
