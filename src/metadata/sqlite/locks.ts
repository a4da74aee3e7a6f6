import type { LockRepository } from '../metadata-store.ts';
import type { Db } from './database.ts';

/** Named singleton leases (COORD-3). */
export class SqliteLockRepository implements LockRepository {
  constructor(private readonly db: Db) {}

  async tryAcquire(name: string, owner: string, now: number, leaseMs: number): Promise<boolean> {
    // One statement: the insert of a free lock, or the takeover of a lapsed one / extension of our
    // own, guarded by the DO UPDATE's WHERE. A lock held by another owner is left alone (0 changes).
    const info = this.db
      .prepare(
        `INSERT INTO locks (name, owner, lease_until) VALUES (?, ?, ?)
         ON CONFLICT(name) DO UPDATE SET owner = excluded.owner, lease_until = excluded.lease_until
           WHERE locks.lease_until <= ? OR locks.owner = excluded.owner`,
      )
      .run(name, owner, now + leaseMs, now);
    return info.changes === 1;
  }

  async release(name: string, owner: string): Promise<void> {
    this.db.prepare('DELETE FROM locks WHERE name = ? AND owner = ?').run(name, owner);
  }
}
