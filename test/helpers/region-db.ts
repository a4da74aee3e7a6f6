/**
 * Reads a region's SQLite database (`{dataDir}/{region}/meta.db`) from a test, read-only, to prove
 * which state a server was in: while it runs (WAL allows a concurrent reader) or after it was
 * killed (the database then holds exactly what the dead process had committed).
 */
import Database from 'better-sqlite3';
import { join } from 'node:path';

export interface JobRow {
  id: number;
  kind: string;
  key: string;
  grp: string;
  state: string;
  attempts: number;
  progress: unknown;
  payload: any;
  updated_at: number;
}

export function readRegionDb<T>(dataDir: string, region: string, read: (db: Database.Database) => T): T {
  const db = new Database(join(dataDir, region, 'meta.db'), { readonly: true, fileMustExist: true });
  try {
    db.pragma('busy_timeout = 5000');
    return read(db);
  } finally {
    db.close();
  }
}

const toJob = (r: any): JobRow => ({ ...r, progress: r.progress === null ? null : JSON.parse(r.progress), payload: JSON.parse(r.payload) });

/** Every job row of a region, in id order. */
export function jobRows(dataDir: string, region: string): JobRow[] {
  return readRegionDb(dataDir, region, (db) => (db.prepare('SELECT * FROM jobs ORDER BY id').all() as any[]).map(toJob));
}

export function jobByKey(dataDir: string, region: string, key: string): JobRow | null {
  return jobRows(dataDir, region).find((j) => j.key === key) ?? null;
}

export function snapshotRow(dataDir: string, region: string, id: string): { status: string; progress: number; manifest_id: string | null; deleted_at: number | null } | null {
  return readRegionDb(dataDir, region, (db) => (db.prepare('SELECT status, progress, manifest_id, deleted_at FROM snapshots WHERE id = ?').get(id) as any) ?? null);
}

export function volumeRow(dataDir: string, region: string, id: string): { status: string; size_gb: number; deleted_at: number | null } | null {
  return readRegionDb(dataDir, region, (db) => (db.prepare('SELECT status, size_gb, deleted_at FROM volumes WHERE id = ?').get(id) as any) ?? null);
}
