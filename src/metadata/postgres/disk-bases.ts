import type pg from 'pg';
import type { DiskBaseRepository } from '../metadata-store.ts';

export class PostgresDiskBaseRepository implements DiskBaseRepository {
  constructor(private readonly db: pg.Pool) {}

  async set(volumeId: string, manifestId: string | null, generation: number): Promise<void> {
    await this.db.query(
      `INSERT INTO disk_bases (volume_id, manifest_id, generation) VALUES ($1, $2, $3)
       ON CONFLICT (volume_id) DO UPDATE SET manifest_id = excluded.manifest_id, generation = excluded.generation`,
      [volumeId, manifestId, generation],
    );
  }

  async get(volumeId: string): Promise<{ manifestId: string | null; generation: number } | null> {
    const { rows } = await this.db.query('SELECT manifest_id, generation FROM disk_bases WHERE volume_id = $1', [volumeId]);
    return rows[0] ? { manifestId: rows[0].manifest_id, generation: rows[0].generation } : null;
  }

  async delete(volumeId: string): Promise<void> {
    await this.db.query('DELETE FROM disk_bases WHERE volume_id = $1', [volumeId]);
  }

  async manifestIds(): Promise<string[]> {
    const { rows } = await this.db.query('SELECT DISTINCT manifest_id FROM disk_bases WHERE manifest_id IS NOT NULL');
    return rows.map((r: { manifest_id: string }) => r.manifest_id);
  }
}
