import type { Volume, VolumeStatus } from '../../domain/volume.ts';
import type { ListOptions, Page, VolumeFilter, VolumeRepository } from '../metadata-store.ts';
import { guardedUpdate, placeholders, type Db } from './database.ts';
import { pageBySeq } from './paging.ts';

const COLUMNS: Record<string, string> = {
  name: 'name', desc: 'desc', diskSizeInGB: 'size_gb', storageType: 'storage_type', zoneName: 'zone_name',
  createTime: 'create_time', status: 'status', sourceSnapshotId: 'source_snapshot_id', tags: 'tags', lastError: 'last_error',
  storageNode: 'storage_node',
};

interface Row {
  id: string; account_id: string; name: string; desc: string; size_gb: number; storage_type: string; zone_name: string;
  create_time: number; status: string; source_snapshot_id: string | null; tags: string; last_error: string | null; storage_node: string | null;
}

const toVolume = (r: Row): Volume => ({
  id: r.id, accountId: r.account_id, name: r.name, desc: r.desc, diskSizeInGB: r.size_gb,
  storageType: r.storage_type as Volume['storageType'], zoneName: r.zone_name, createTime: r.create_time,
  status: r.status as VolumeStatus, sourceSnapshotId: r.source_snapshot_id, tags: JSON.parse(r.tags), lastError: r.last_error,
  // Only when set: a volume of a single-storage region reads back exactly as it was written.
  ...(r.storage_node !== null ? { storageNode: r.storage_node } : {}),
});

export class SqliteVolumeRepository implements VolumeRepository {
  constructor(private readonly db: Db) {}

  async insertIfAbsent(v: Volume): Promise<boolean> {
    const info = this.db
      .prepare(
        `INSERT INTO volumes (id, account_id, name, desc, size_gb, storage_type, zone_name, create_time, status, source_snapshot_id, tags, last_error, storage_node)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO NOTHING`,
      )
      .run(v.id, v.accountId, v.name, v.desc, v.diskSizeInGB, v.storageType, v.zoneName, v.createTime, v.status, v.sourceSnapshotId, JSON.stringify(v.tags), v.lastError, v.storageNode ?? null);
    return info.changes === 1;
  }

  async get(accountId: string, id: string): Promise<Volume | null> {
    const row = this.db.prepare('SELECT * FROM volumes WHERE id = ? AND account_id = ? AND deleted_at IS NULL').get(id, accountId) as Row | undefined;
    return row ? toVolume(row) : null;
  }

  async getAny(id: string): Promise<Volume | null> {
    const row = this.db.prepare('SELECT * FROM volumes WHERE id = ? AND deleted_at IS NULL').get(id) as Row | undefined;
    return row ? toVolume(row) : null;
  }

  async list(accountId: string, filter: VolumeFilter, page: ListOptions): Promise<Page<Volume>> {
    const where = ['account_id = @accountId'];
    const params: Record<string, unknown> = { accountId };
    if (filter.zoneName) {
      where.push('zone_name = @zoneName');
      params.zoneName = filter.zoneName;
    }
    if (filter.name) {
      where.push('name = @name');
      params.name = filter.name;
    }
    if (filter.ids) {
      where.push(`id IN (${filter.ids.map((_, i) => `@id${i}`).join(', ') || 'NULL'})`);
      filter.ids.forEach((id, i) => (params[`id${i}`] = id));
    }
    const result = pageBySeq<Row>(this.db, 'volumes', where.join(' AND '), params, page);
    return { items: result.items.map(toVolume), nextMarker: result.nextMarker };
  }

  async listByStatus(statuses: VolumeStatus[]): Promise<Volume[]> {
    const rows = this.db
      .prepare(`SELECT * FROM volumes WHERE deleted_at IS NULL AND status IN (${placeholders(statuses.length)}) ORDER BY seq`)
      .all(...statuses) as Row[];
    return rows.map(toVolume);
  }

  async update(id: string, patch: Partial<Omit<Volume, 'id' | 'accountId'>>, fromStatuses?: VolumeStatus[]): Promise<Volume | null> {
    return guardedUpdate(this.db, 'volumes', id, patch, COLUMNS, fromStatuses) ? this.getAny(id) : null;
  }

  async delete(id: string): Promise<void> {
    this.db.prepare('UPDATE volumes SET deleted_at = ?, status = ? WHERE id = ? AND deleted_at IS NULL').run(Date.now(), 'Deleted', id);
  }

  async countByNode(): Promise<Record<string, number>> {
    const rows = this.db
      .prepare("SELECT storage_node, count(*) AS n FROM volumes WHERE deleted_at IS NULL AND status <> 'Deleting' AND storage_node IS NOT NULL GROUP BY storage_node")
      .all() as Array<{ storage_node: string; n: number }>;
    return Object.fromEntries(rows.map((r) => [r.storage_node, r.n]));
  }
}
