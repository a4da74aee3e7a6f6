import type pg from 'pg';
import type { LockRepository } from '../metadata-store.ts';

/**
 * Named singleton leases shared by the processes of a region (COORD-3). `tryAcquire` is one
 * `INSERT ... ON CONFLICT DO UPDATE ... WHERE`: PostgreSQL makes its outcome atomic under READ
 * COMMITTED (two sessions inserting a free name at once: the second waits for the first and then
 * evaluates the WHERE clause on the row the first committed), so exactly one owner gets the lock.
 * Rejected: a session-level advisory lock, which is held by a connection (a pool hands those out
 * and a dropped one frees the lock silently) and cannot lapse while its holder stalls.
 */
export class PostgresLockRepository implements LockRepository {
  constructor(private readonly db: pg.Pool) {}

  async tryAcquire(name: string, owner: string, now: number, leaseMs: number): Promise<boolean> {
    const { rowCount } = await this.db.query(
      `INSERT INTO locks (name, owner, lease_until) VALUES ($1, $2, $3)
       ON CONFLICT (name) DO UPDATE SET owner = EXCLUDED.owner, lease_until = EXCLUDED.lease_until
         WHERE locks.lease_until <= $4 OR locks.owner = $2
       RETURNING owner`,
      [name, owner, now + leaseMs, now],
    );
    return rowCount === 1;
  }

  async release(name: string, owner: string): Promise<void> {
    await this.db.query('DELETE FROM locks WHERE name = $1 AND owner = $2', [name, owner]);
  }
}
