import { randomUUID } from 'node:crypto';
import type { GcHoldRepository } from '../metadata-store.ts';
import type { Db } from './database.ts';

export class SqliteGcHoldRepository implements GcHoldRepository {
  constructor(private readonly db: Db) {}

  async open(purpose: string, now: number, leaseMs: number): Promise<{ id: string; startedAt: number }> {
    const id = randomUUID();
    this.db.prepare('INSERT INTO gc_holds (id, purpose, started_at, lease_until) VALUES (?, ?, ?, ?)').run(id, purpose, now, now + leaseMs);
    return { id, startedAt: now };
  }

  async renew(id: string, now: number, leaseMs: number): Promise<boolean> {
    // `lease_until > now`: a lapsed hold is never revived (a GC may already have ignored it).
    return this.db.prepare('UPDATE gc_holds SET lease_until = ? WHERE id = ? AND closed = 0 AND lease_until > ?').run(now + leaseMs, id, now).changes === 1;
  }

  async close(id: string): Promise<void> {
    this.db.prepare('UPDATE gc_holds SET closed = 1 WHERE id = ?').run(id);
  }

  async oldestLiveStart(now: number): Promise<number | null> {
    return (this.db.prepare('SELECT min(started_at) FROM gc_holds WHERE closed = 0 AND lease_until > ?').pluck().get(now) as number | null) ?? null;
  }

  async closeAll(): Promise<number> {
    return this.db.prepare('UPDATE gc_holds SET closed = 1 WHERE closed = 0').run().changes;
  }

  async purgeLapsedBefore(cutoff: number): Promise<number> {
    return this.db.prepare('DELETE FROM gc_holds WHERE closed = 1 OR lease_until < ?').run(cutoff).changes;
  }
}
