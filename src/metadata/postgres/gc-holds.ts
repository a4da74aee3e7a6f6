import { randomUUID } from 'node:crypto';
import type pg from 'pg';
import type { GcHoldRepository } from '../metadata-store.ts';

/**
 * GC holds shared by every process of a region. Each method is one statement or, for
 * `oldestLiveStart`, two in a fixed order; the rules hold whichever processes call them at once.
 */
export class PostgresGcHoldRepository implements GcHoldRepository {
  constructor(private readonly db: pg.Pool) {}

  async open(purpose: string, now: number, leaseMs: number): Promise<{ id: string; startedAt: number }> {
    const id = randomUUID();
    await this.db.query('INSERT INTO gc_holds (id, purpose, started_at, lease_until) VALUES ($1, $2, $3, $4)', [id, purpose, now, now + leaseMs]);
    return { id, startedAt: now };
  }

  async renew(id: string, now: number, leaseMs: number): Promise<boolean> {
    // One UPDATE whose guard is re-checked on the newest version of the row (a concurrent close or
    // publication is waited for): a lapsed or closed hold is never revived.
    const { rowCount } = await this.db.query('UPDATE gc_holds SET lease_until = $3 WHERE id = $1 AND NOT closed AND lease_until > $2', [id, now, now + leaseMs]);
    return rowCount === 1;
  }

  async close(id: string): Promise<void> {
    await this.db.query('UPDATE gc_holds SET closed = true WHERE id = $1', [id]);
  }

  /**
   * A garbage collection's read of the holds. First it closes, for good, every hold lapsed at its
   * `now`; then it reads the oldest start among the rest. Why close: processes' clocks differ. A
   * hold that this collection ignores because it lapsed by this clock could otherwise still be
   * renewed (or published under) by a writer whose clock is behind, which would revive it
   * precisely for the writer this collection did not protect. Once closed, `renew` and
   * `publishUnderHold` refuse it whatever their clock says. Two statements, in this order, so
   * that every hold is either closed by the first or seen live by the second (which reads after
   * the first committed; a single statement would read the holds as of before a renewal it
   * then waited for). Rejected: trusting all clocks to agree within the lease.
   */
  async oldestLiveStart(now: number): Promise<number | null> {
    await this.db.query('UPDATE gc_holds SET closed = true WHERE NOT closed AND lease_until <= $1', [now]);
    const { rows } = await this.db.query('SELECT min(started_at) AS oldest FROM gc_holds WHERE NOT closed AND lease_until > $1', [now]);
    return rows[0].oldest ?? null;
  }

  /**
   * As the interface says, only for a store one process uses alone. On a shared database it would
   * close other processes' live holds: safe (their captures cannot publish and retry under new
   * holds) but wasteful, so region start-up there must leave holds to their leases.
   */
  async closeAll(): Promise<number> {
    return (await this.db.query('UPDATE gc_holds SET closed = true WHERE NOT closed')).rowCount ?? 0;
  }

  async purgeLapsedBefore(cutoff: number): Promise<number> {
    return (await this.db.query('DELETE FROM gc_holds WHERE closed OR lease_until < $1', [cutoff])).rowCount ?? 0;
  }
}
