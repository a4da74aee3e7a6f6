import type pg from 'pg';
import type { Snapshot, SnapshotStatus } from '../../domain/snapshot.ts';
import type { ListOptions, Page, SnapshotRepository } from '../metadata-store.ts';
import { lockKey, withTransaction } from './connection.ts';
import { guardedUpdate, pageBySeq } from './sql.ts';

const COLUMNS: Record<string, string> = {
  name: 'name', desc: 'description', volumeId: 'volume_id', sizeInGB: 'size_gb', createTime: 'create_time', status: 'status',
  createMethod: 'create_method', progress: 'progress', storageType: 'storage_type', retentionInDays: 'retention_days',
  tags: 'tags', sourceRegion: 'source_region', sourceSnapshotId: 'source_snapshot_id', manifestId: 'manifest_id', lastError: 'last_error',
};

interface Row {
  id: string; account_id: string; name: string; description: string; volume_id: string; size_gb: number; create_time: number;
  status: string; create_method: string; progress: number; storage_type: string; retention_days: number | null; tags: string;
  source_region: string | null; source_snapshot_id: string | null; manifest_id: string | null; last_error: string | null;
}

const toSnapshot = (r: Row): Snapshot => ({
  id: r.id, accountId: r.account_id, name: r.name, desc: r.description, volumeId: r.volume_id, sizeInGB: r.size_gb,
  createTime: r.create_time, status: r.status as SnapshotStatus, createMethod: r.create_method as Snapshot['createMethod'],
  progress: r.progress, storageType: r.storage_type, retentionInDays: r.retention_days, tags: JSON.parse(r.tags),
  sourceRegion: r.source_region, sourceSnapshotId: r.source_snapshot_id, manifestId: r.manifest_id, lastError: r.last_error,
});

const INSERT = `INSERT INTO snapshots (id, account_id, name, description, volume_id, size_gb, create_time, status, create_method, progress,
    storage_type, retention_days, tags, source_region, source_snapshot_id, manifest_id, last_error)
  VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17) ON CONFLICT (id) DO NOTHING`;

const insertValues = (s: Snapshot): unknown[] => [
  s.id, s.accountId, s.name, s.desc, s.volumeId, s.sizeInGB, s.createTime, s.status, s.createMethod, s.progress,
  s.storageType, s.retentionInDays, JSON.stringify(s.tags), s.sourceRegion, s.sourceSnapshotId, s.manifestId, s.lastError,
];

export class PostgresSnapshotRepository implements SnapshotRepository {
  constructor(private readonly db: pg.Pool) {}

  async insertIfAbsent(s: Snapshot, maxPerVolume?: number): Promise<'inserted' | 'exists' | 'quota'> {
    if (maxPerVolume === undefined || s.volumeId === '') {
      return (await this.db.query(INSERT, insertValues(s))).rowCount === 1 ? 'inserted' : 'exists';
    }
    // The quota: every quota-checked insert for a volume takes the volume's advisory lock, then
    // counts in a later statement (READ COMMITTED: that statement sees every insert whose holder
    // committed before we got the lock), then inserts; the lock is held to COMMIT. So inserts for
    // one volume count and insert one at a time, in every process. Rejected: `SELECT ... FOR
    // UPDATE` on the volume's row, which does not exist for every volume id a snapshot names (a
    // volume deleted meanwhile, the contract's bare ids), and SERIALIZABLE, whose failures every
    // caller would have to retry.
    return await withTransaction(this.db, async (tx) => {
      await tx.query(`SELECT pg_advisory_xact_lock(${lockKey('volume-snapshots', '$1')})`, [s.volumeId]);
      const { rows } = await tx.query(
        `SELECT EXISTS (SELECT 1 FROM snapshots WHERE id = $1) AS taken,
                (SELECT count(*) FROM snapshots WHERE volume_id = $2 AND create_method = 'MANUAL' AND deleted_at IS NULL) AS n`,
        [s.id, s.volumeId],
      );
      if (rows[0].taken) return 'exists';
      if (rows[0].n >= maxPerVolume) return 'quota';
      return (await tx.query(INSERT, insertValues(s))).rowCount === 1 ? 'inserted' : 'exists';
    });
  }

  async get(accountId: string, id: string): Promise<Snapshot | null> {
    const { rows } = await this.db.query('SELECT * FROM snapshots WHERE id = $1 AND account_id = $2 AND deleted_at IS NULL', [id, accountId]);
    return rows[0] ? toSnapshot(rows[0]) : null;
  }

  async getAny(id: string): Promise<Snapshot | null> {
    const { rows } = await this.db.query('SELECT * FROM snapshots WHERE id = $1 AND deleted_at IS NULL', [id]);
    return rows[0] ? toSnapshot(rows[0]) : null;
  }

  async list(accountId: string, filter: { volumeId?: string }, page: ListOptions): Promise<Page<Snapshot>> {
    const values: unknown[] = [accountId];
    let where = 'account_id = $1';
    if (filter.volumeId) {
      values.push(filter.volumeId);
      where += ' AND volume_id = $2';
    }
    const result = await pageBySeq<Row>(this.db, 'snapshots', accountId, where, values, page);
    return { items: result.items.map(toSnapshot), nextMarker: result.nextMarker };
  }

  async listByStatus(statuses: SnapshotStatus[]): Promise<Snapshot[]> {
    const { rows } = await this.db.query('SELECT * FROM snapshots WHERE deleted_at IS NULL AND status = ANY($1) ORDER BY seq', [statuses]);
    return rows.map(toSnapshot);
  }

  async countByVolume(volumeId: string): Promise<number> {
    return (await this.db.query('SELECT count(*) AS n FROM snapshots WHERE volume_id = $1 AND deleted_at IS NULL', [volumeId])).rows[0].n;
  }

  async update(id: string, patch: Partial<Omit<Snapshot, 'id' | 'accountId'>>, fromStatuses?: SnapshotStatus[]): Promise<Snapshot | null> {
    const row = await guardedUpdate<Row>(this.db, 'snapshots', id, patch, COLUMNS, fromStatuses);
    return row ? toSnapshot(row) : null;
  }

  async publishUnderHold(id: string, patch: Partial<Omit<Snapshot, 'id' | 'accountId'>>, holdId: string, now: number): Promise<Snapshot | null> {
    // GC-3 in one transaction: the hold's row is locked (FOR UPDATE) while it is found live, so no
    // close, purge, or a garbage collection's marking of lapsed holds (gc-holds.ts) can change it
    // before this publication commits; a change committed just before is waited for and the
    // liveness re-checked on its result. A collection that read the holds before this commit and
    // counted the hold keeps what the writer used; one that found it lapsed has closed it, and
    // then this finds no live hold.
    return await withTransaction(this.db, async (tx) => {
      const live = await tx.query('SELECT 1 FROM gc_holds WHERE id = $1 AND NOT closed AND lease_until > $2 FOR UPDATE', [holdId, now]);
      if (live.rowCount !== 1) return null;
      const row = await guardedUpdate<Row>(tx, 'snapshots', id, patch, COLUMNS, ['Creating']);
      return row ? toSnapshot(row) : null;
    });
  }

  async delete(id: string): Promise<void> {
    await this.db.query('UPDATE snapshots SET deleted_at = $1 WHERE id = $2 AND deleted_at IS NULL', [Date.now(), id]);
  }

  async touch(id: string, at: number): Promise<void> {
    await this.db.query('UPDATE snapshots SET touched_at = $1 WHERE id = $2', [at, id]);
  }

  async listSilentIncoming(before: number): Promise<Snapshot[]> {
    const { rows } = await this.db.query(
      `SELECT * FROM snapshots WHERE deleted_at IS NULL AND status = 'Creating' AND source_region IS NOT NULL
         AND coalesce(touched_at, create_time) < $1 ORDER BY seq`,
      [before],
    );
    return rows.map(toSnapshot);
  }

  async manifestIds(): Promise<string[]> {
    const { rows } = await this.db.query('SELECT DISTINCT manifest_id FROM snapshots WHERE deleted_at IS NULL AND manifest_id IS NOT NULL');
    return rows.map((r: { manifest_id: string }) => r.manifest_id);
  }
}
