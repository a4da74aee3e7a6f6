import type { Volume, VolumeStatus } from '../../domain/volume.ts';
import type { ListOptions, Page, VolumeFilter, VolumeRepository } from '../metadata-store.ts';
import type pg from 'pg';
import { guardedUpdate, pageBySeq } from './sql.ts';

const COLUMNS: Record<string, string> = {
  name: 'name', desc: 'description', diskSizeInGB: 'size_gb', storageType: 'storage_type', zoneName: 'zone_name',
  createTime: 'create_time', status: 'status', sourceSnapshotId: 'source_snapshot_id', tags: 'tags', lastError: 'last_error',
  storageNode: 'storage_node',
};

interface Row {
  id: string; account_id: string; name: string; description: string; size_gb: number; storage_type: string; zone_name: string;
  create_time: number; status: string; source_snapshot_id: string | null; tags: string; last_error: string | null; storage_node: string | null;
}

const toVolume = (r: Row): Volume => ({
  id: r.id, accountId: r.account_id, name: r.name, desc: r.description, diskSizeInGB: r.size_gb,
  storageType: r.storage_type as Volume['storageType'], zoneName: r.zone_name, createTime: r.create_time,
  status: r.status as VolumeStatus, sourceSnapshotId: r.source_snapshot_id, tags: JSON.parse(r.tags), lastError: r.last_error,
  // Only when set: a volume of a single-storage region reads back exactly as it was written.
  ...(r.storage_node !== null ? { storageNode: r.storage_node } : {}),
});

export class PostgresVolumeRepository implements VolumeRepository {
  constructor(private readonly db: pg.Pool) {}

  async insertIfAbsent(v: Volume): Promise<boolean> {
    // ON CONFLICT DO NOTHING: a concurrent insert of the same id is waited for, then this one is a no-op.
    const { rowCount } = await this.db.query(
      `INSERT INTO volumes (id, account_id, name, description, size_gb, storage_type, zone_name, create_time, status, source_snapshot_id, tags, last_error, storage_node)
       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) ON CONFLICT (id) DO NOTHING`,
      [v.id, v.accountId, v.name, v.desc, v.diskSizeInGB, v.storageType, v.zoneName, v.createTime, v.status, v.sourceSnapshotId, JSON.stringify(v.tags), v.lastError, v.storageNode ?? null],
    );
    return rowCount === 1;
  }

  async get(accountId: string, id: string): Promise<Volume | null> {
    const { rows } = await this.db.query('SELECT * FROM volumes WHERE id = $1 AND account_id = $2 AND deleted_at IS NULL', [id, accountId]);
    return rows[0] ? toVolume(rows[0]) : null;
  }

  async getAny(id: string): Promise<Volume | null> {
    const { rows } = await this.db.query('SELECT * FROM volumes WHERE id = $1 AND deleted_at IS NULL', [id]);
    return rows[0] ? toVolume(rows[0]) : null;
  }

  async list(accountId: string, filter: VolumeFilter, page: ListOptions): Promise<Page<Volume>> {
    const values: unknown[] = [accountId];
    const where = ['account_id = $1'];
    if (filter.zoneName) {
      values.push(filter.zoneName);
      where.push(`zone_name = $${values.length}`);
    }
    if (filter.name) {
      values.push(filter.name);
      where.push(`name = $${values.length}`);
    }
    if (filter.ids) {
      values.push(filter.ids);
      where.push(`id = ANY($${values.length})`);
    }
    const result = await pageBySeq<Row>(this.db, 'volumes', accountId, where.join(' AND '), values, page);
    return { items: result.items.map(toVolume), nextMarker: result.nextMarker };
  }

  async listByStatus(statuses: VolumeStatus[]): Promise<Volume[]> {
    const { rows } = await this.db.query('SELECT * FROM volumes WHERE deleted_at IS NULL AND status = ANY($1) ORDER BY seq', [statuses]);
    return rows.map(toVolume);
  }

  async update(id: string, patch: Partial<Omit<Volume, 'id' | 'accountId'>>, fromStatuses?: VolumeStatus[]): Promise<Volume | null> {
    const row = await guardedUpdate<Row>(this.db, 'volumes', id, patch, COLUMNS, fromStatuses);
    return row ? toVolume(row) : null;
  }

  async delete(id: string): Promise<void> {
    await this.db.query("UPDATE volumes SET deleted_at = $1, status = 'Deleted' WHERE id = $2 AND deleted_at IS NULL", [Date.now(), id]);
  }

  async countByNode(): Promise<Record<string, number>> {
    const { rows } = await this.db.query(
      "SELECT storage_node, count(*) AS n FROM volumes WHERE deleted_at IS NULL AND status <> 'Deleting' AND storage_node IS NOT NULL GROUP BY storage_node",
    );
    return Object.fromEntries((rows as Array<{ storage_node: string; n: number }>).map((r) => [r.storage_node, r.n]));
  }
}
