import type { DiskBaseRepository } from '../metadata-store.ts';
import type { Db } from './database.ts';

export class SqliteDiskBaseRepository implements DiskBaseRepository {
  constructor(private readonly db: Db) {}

  async set(volumeId: string, manifestId: string | null, generation: number): Promise<void> {
    this.db
      .prepare('INSERT INTO disk_bases (volume_id, manifest_id, generation) VALUES (?, ?, ?) ON CONFLICT(volume_id) DO UPDATE SET manifest_id = excluded.manifest_id, generation = excluded.generation')
      .run(volumeId, manifestId, generation);
  }

  async get(volumeId: string): Promise<{ manifestId: string | null; generation: number } | null> {
    const r = this.db.prepare('SELECT manifest_id, generation FROM disk_bases WHERE volume_id = ?').get(volumeId) as
      | { manifest_id: string | null; generation: number }
      | undefined;
    return r ? { manifestId: r.manifest_id, generation: r.generation } : null;
  }

  async delete(volumeId: string): Promise<void> {
    this.db.prepare('DELETE FROM disk_bases WHERE volume_id = ?').run(volumeId);
  }

  async manifestIds(): Promise<string[]> {
    return this.db.prepare('SELECT DISTINCT manifest_id FROM disk_bases WHERE manifest_id IS NOT NULL').pluck().all() as string[];
  }
}
