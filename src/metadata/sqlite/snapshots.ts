import type { Snapshot, SnapshotStatus } from '../../domain/snapshot.ts';
import type { ListOptions, Page, SnapshotRepository } from '../metadata-store.ts';
import { guardedUpdate, placeholders, type Db } from './database.ts';
import { pageBySeq } from './paging.ts';

const COLUMNS: Record<string, string> = {
  name: 'name', desc: 'desc', volumeId: 'volume_id', sizeInGB: 'size_gb', createTime: 'create_time', status: 'status',
  createMethod: 'create_method', progress: 'progress', storageType: 'storage_type', retentionInDays: 'retention_days',
  tags: 'tags', sourceRegion: 'source_region', sourceSnapshotId: 'source_snapshot_id', manifestId: 'manifest_id', lastError: 'last_error',
};

interface Row {
  id: string; account_id: string; name: string; desc: string; volume_id: string; size_gb: number; create_time: number;
  status: string; create_method: string; progress: number; storage_type: string; retention_days: number | null; tags: string;
  source_region: string | null; source_snapshot_id: string | null; manifest_id: string | null; last_error: string | null;
}

const toSnapshot = (r: Row): Snapshot => ({
  id: r.id, accountId: r.account_id, name: r.name, desc: r.desc, volumeId: r.volume_id, sizeInGB: r.size_gb,
  createTime: r.create_time, status: r.status as SnapshotStatus, createMethod: r.create_method as Snapshot['createMethod'],
  progress: r.progress, storageType: r.storage_type, retentionInDays: r.retention_days, tags: JSON.parse(r.tags),
  sourceRegion: r.source_region, sourceSnapshotId: r.source_snapshot_id, manifestId: r.manifest_id, lastError: r.last_error,
});

export class SqliteSnapshotRepository implements SnapshotRepository {
  constructor(private readonly db: Db) {}

  async insertIfAbsent(s: Snapshot, maxPerVolume?: number): Promise<'inserted' | 'exists' | 'quota'> {
    return this.db.transaction((): 'inserted' | 'exists' | 'quota' => {
      if (this.db.prepare('SELECT 1 FROM snapshots WHERE id = ?').get(s.id)) return 'exists';
      if (maxPerVolume !== undefined && s.volumeId !== '') {
        const n = this.db
          .prepare("SELECT count(*) FROM snapshots WHERE volume_id = ? AND create_method = 'MANUAL' AND deleted_at IS NULL")
          .pluck()
          .get(s.volumeId) as number;
        if (n >= maxPerVolume) return 'quota';
      }
      this.db
        .prepare(
          `INSERT INTO snapshots (id, account_id, name, desc, volume_id, size_gb, create_time, status, create_method, progress,
             storage_type, retention_days, tags, source_region, source_snapshot_id, manifest_id, last_error)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
        )
        .run(s.id, s.accountId, s.name, s.desc, s.volumeId, s.sizeInGB, s.createTime, s.status, s.createMethod, s.progress,
          s.storageType, s.retentionInDays, JSON.stringify(s.tags), s.sourceRegion, s.sourceSnapshotId, s.manifestId, s.lastError);
      return 'inserted';
    }).immediate();
  }

  async get(accountId: string, id: string): Promise<Snapshot | null> {
    const row = this.db.prepare('SELECT * FROM snapshots WHERE id = ? AND account_id = ? AND deleted_at IS NULL').get(id, accountId) as Row | undefined;
    return row ? toSnapshot(row) : null;
  }

  async getAny(id: string): Promise<Snapshot | null> {
    const row = this.db.prepare('SELECT * FROM snapshots WHERE id = ? AND deleted_at IS NULL').get(id) as Row | undefined;
    return row ? toSnapshot(row) : null;
  }

  async list(accountId: string, filter: { volumeId?: string }, page: ListOptions): Promise<Page<Snapshot>> {
    const where = ['account_id = @accountId'];
    if (filter.volumeId) where.push('volume_id = @volumeId');
    const result = pageBySeq<Row>(this.db, 'snapshots', where.join(' AND '), { accountId, ...filter }, page);
    return { items: result.items.map(toSnapshot), nextMarker: result.nextMarker };
  }

  async listByStatus(statuses: SnapshotStatus[]): Promise<Snapshot[]> {
    const rows = this.db
      .prepare(`SELECT * FROM snapshots WHERE deleted_at IS NULL AND status IN (${placeholders(statuses.length)}) ORDER BY seq`)
      .all(...statuses) as Row[];
    return rows.map(toSnapshot);
  }

  async countByVolume(volumeId: string): Promise<number> {
    return this.db.prepare('SELECT count(*) FROM snapshots WHERE volume_id = ? AND deleted_at IS NULL').pluck().get(volumeId) as number;
  }

  async update(id: string, patch: Partial<Omit<Snapshot, 'id' | 'accountId'>>, fromStatuses?: SnapshotStatus[]): Promise<Snapshot | null> {
    return guardedUpdate(this.db, 'snapshots', id, patch, COLUMNS, fromStatuses) ? this.getAny(id) : null;
  }

  async publishUnderHold(id: string, patch: Partial<Omit<Snapshot, 'id' | 'accountId'>>, holdId: string, now: number): Promise<Snapshot | null> {
    // One transaction: the hold's liveness and the publication cannot be split by a GC reading holds.
    const published = this.db.transaction((): boolean => {
      const live = this.db.prepare('SELECT 1 FROM gc_holds WHERE id = ? AND closed = 0 AND lease_until > ?').get(holdId, now);
      return live !== undefined && guardedUpdate(this.db, 'snapshots', id, patch, COLUMNS, ['Creating']);
    }).immediate();
    return published ? this.getAny(id) : null;
  }

  async delete(id: string): Promise<void> {
    this.db.prepare('UPDATE snapshots SET deleted_at = ? WHERE id = ? AND deleted_at IS NULL').run(Date.now(), id);
  }

  async touch(id: string, at: number): Promise<void> {
    this.db.prepare('UPDATE snapshots SET touched_at = ? WHERE id = ?').run(at, id);
  }

  async listSilentIncoming(before: number): Promise<Snapshot[]> {
    const rows = this.db
      .prepare(
        `SELECT * FROM snapshots WHERE deleted_at IS NULL AND status = 'Creating' AND source_region IS NOT NULL
           AND coalesce(touched_at, create_time) < ? ORDER BY seq`,
      )
      .all(before) as Row[];
    return rows.map(toSnapshot);
  }

  async manifestIds(): Promise<string[]> {
    return this.db.prepare('SELECT DISTINCT manifest_id FROM snapshots WHERE deleted_at IS NULL AND manifest_id IS NOT NULL').pluck().all() as string[];
  }
}
