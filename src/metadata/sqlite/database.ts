import Database from 'better-sqlite3';
import { MIGRATIONS } from './migrations.ts';

export type Db = Database.Database;

/**
 * Opens (creating if needed) a region's database: WAL, synchronous=FULL so a committed status
 * survives power loss (the write-order rule depends on it), foreign writers wait up to 5 s.
 */
export function openDatabase(file: string): Db {
  const db = new Database(file);
  db.pragma('journal_mode = WAL');
  db.pragma('synchronous = FULL');
  db.pragma('busy_timeout = 5000');
  migrate(db);
  return db;
}

function migrate(db: Db): void {
  db.exec('CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)');
  const applied = new Set(db.prepare('SELECT version FROM schema_migrations').pluck().all() as number[]);
  const newest = Math.max(0, ...applied);
  const known = Math.max(...MIGRATIONS.map((m) => m.version));
  if (newest > known) {
    throw new Error(`database schema version ${newest} is newer than this program understands (${known}); upgrade snapferry`);
  }
  for (const m of MIGRATIONS) {
    if (applied.has(m.version)) continue;
    db.transaction(() => {
      db.exec(m.sql);
      db.prepare('INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)').run(m.version, Date.now());
    })();
  }
}

/** Builds `SET a = @a, b = @b` from a patch whose keys are mapped to column names. */
export function setClause(patch: Record<string, unknown>, columns: Record<string, string>): { sql: string; params: Record<string, unknown> } {
  const parts: string[] = [];
  const params: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(patch)) {
    const column = columns[key];
    if (!column) throw new Error(`unknown field ${key}`);
    if (value === undefined) continue;
    parts.push(`${column} = @p_${column}`);
    params[`p_${column}`] = typeof value === 'boolean' ? Number(value) : Array.isArray(value) ? JSON.stringify(value) : value;
  }
  return { sql: parts.join(', '), params };
}

/** `(?, ?, ?)` placeholders for an IN list. */
export const placeholders = (n: number): string => Array.from({ length: n }, () => '?').join(', ');

/**
 * `UPDATE table SET <patch> WHERE id = ? AND not deleted [AND status IN (...)]`; returns whether a
 * row changed (an empty patch counts as a match when the row exists).
 */
export function guardedUpdate(
  db: Db,
  table: 'volumes' | 'snapshots',
  id: string,
  patch: Record<string, unknown>,
  columns: Record<string, string>,
  fromStatuses?: readonly string[],
): boolean {
  const set = setClause(patch, columns);
  if (set.sql === '') return db.prepare(`SELECT 1 FROM ${table} WHERE id = ? AND deleted_at IS NULL`).get(id) !== undefined;
  const guard = fromStatuses ? ` AND status IN (${fromStatuses.map((_, i) => `@s${i}`).join(', ')})` : '';
  const guardParams = Object.fromEntries((fromStatuses ?? []).map((s, i) => [`s${i}`, s]));
  return db.prepare(`UPDATE ${table} SET ${set.sql} WHERE id = @id AND deleted_at IS NULL${guard}`).run({ ...set.params, ...guardParams, id }).changes > 0;
}
