import { LeaseLostError, type JobRecord, type JobRepository, type JobState } from '../metadata-store.ts';
import { placeholders, type Db } from './database.ts';

interface Row {
  id: number; kind: string; key: string; grp: string; payload: string; state: string; attempts: number; run_after: number;
  lease_owner: string | null; lease_until: number | null; lease_token: number; node: string | null; last_error: string | null; progress: string | null;
  created_at: number; updated_at: number; progressed_at: number | null;
}

const toJob = (r: Row): JobRecord => ({
  id: r.id, kind: r.kind, key: r.key, group: r.grp, payload: JSON.parse(r.payload), state: r.state as JobState,
  attempts: r.attempts, runAfter: r.run_after, leaseOwner: r.lease_owner, leaseUntil: r.lease_until, leaseToken: r.lease_token, node: r.node, lastError: r.last_error,
  progress: r.progress === null ? null : JSON.parse(r.progress), createdAt: r.created_at, updatedAt: r.updated_at,
  progressedAt: r.progressed_at,
});

export class SqliteJobRepository implements JobRepository {
  constructor(private readonly db: Db) {}

  async enqueue(job: { kind: string; key: string; group: string; payload: unknown; runAfter?: number; node?: string | null }): Promise<JobRecord> {
    const now = Date.now();
    this.db
      .prepare(
        `INSERT INTO jobs (kind, key, grp, payload, state, run_after, node, created_at, updated_at)
         VALUES (?, ?, ?, ?, 'queued', ?, ?, ?, ?) ON CONFLICT(key) DO NOTHING`,
      )
      .run(job.kind, job.key, job.group, JSON.stringify(job.payload), job.runAfter ?? now, job.node ?? null, now, now);
    return (await this.getByKey(job.key))!;
  }

  async get(id: number): Promise<JobRecord | null> {
    const r = this.db.prepare('SELECT * FROM jobs WHERE id = ?').get(id) as Row | undefined;
    return r ? toJob(r) : null;
  }

  async getByKey(key: string): Promise<JobRecord | null> {
    const r = this.db.prepare('SELECT * FROM jobs WHERE key = ?').get(key) as Row | undefined;
    return r ? toJob(r) : null;
  }

  async claim(kinds: string[], owner: string, now: number, leaseMs: number, groupLimit: (group: string) => number, node: string | null): Promise<JobRecord | null> {
    // One IMMEDIATE transaction: the check of the group's running count and the claim cannot interleave
    // with another claimer (PostgreSQL does the same with FOR UPDATE SKIP LOCKED).
    return this.db.transaction((): JobRecord | null => {
      const running = new Map<string, number>();
      for (const r of this.db
        .prepare("SELECT grp, count(*) AS n FROM jobs WHERE state = 'running' AND lease_until > ? GROUP BY grp")
        .all(now) as Array<{ grp: string; n: number }>) {
        running.set(r.grp, r.n);
      }
      // Groups at their cap are excluded in the query itself, so a long queue for one busy group
      // never hides runnable jobs of another.
      const saturated = [...running.entries()].filter(([grp, n]) => n >= groupLimit(grp)).map(([grp]) => grp);
      const row = this.db
        .prepare(
          `SELECT * FROM jobs WHERE kind IN (${placeholders(kinds.length)})
             AND ((state = 'queued' AND run_after <= ?) OR (state = 'running' AND lease_until <= ?))
             AND (node IS NULL OR node = ?)
             ${saturated.length ? `AND grp NOT IN (${placeholders(saturated.length)})` : ''}
           ORDER BY id LIMIT 1`,
        )
        .get(...kinds, now, now, node, ...saturated) as Row | undefined;
      if (row && groupLimit(row.grp) > 0) {
        this.db
          .prepare(
            `UPDATE jobs SET state = 'running', lease_owner = ?, lease_until = ?, lease_token = lease_token + 1, attempts = attempts + 1,
               updated_at = ?, progressed_at = coalesce(progressed_at, ?) WHERE id = ?`,
          )
          .run(owner, now + leaseMs, now, now, row.id);
        return toJob({
          ...row, state: 'running', lease_owner: owner, lease_until: now + leaseMs, lease_token: row.lease_token + 1, attempts: row.attempts + 1,
          updated_at: now, progressed_at: row.progressed_at ?? now,
        });
      }
      return null;
    }).immediate();
  }

  // The fenced writes (COORD-1): one UPDATE each, guarded by state and token in its WHERE clause.
  async renewLease(id: number, token: number, until: number): Promise<boolean> {
    const info = this.db
      .prepare("UPDATE jobs SET lease_until = ?, updated_at = ? WHERE id = ? AND state = 'running' AND lease_token = ?")
      .run(until, Date.now(), id, token);
    return info.changes === 1;
  }

  async saveProgress(id: number, token: number, progress: unknown): Promise<void> {
    const now = Date.now();
    const info = this.db
      .prepare("UPDATE jobs SET progress = ?, updated_at = ?, progressed_at = ? WHERE id = ? AND state = 'running' AND lease_token = ?")
      .run(JSON.stringify(progress), now, now, id, token);
    if (info.changes !== 1) throw new LeaseLostError(id, token, 'saveProgress');
  }

  async retryLater(id: number, token: number, runAfter: number, error: string): Promise<void> {
    const info = this.db
      .prepare(
        `UPDATE jobs SET state = 'queued', run_after = ?, last_error = ?, lease_owner = NULL, lease_until = NULL, updated_at = ?
         WHERE id = ? AND state = 'running' AND lease_token = ?`,
      )
      .run(runAfter, error, Date.now(), id, token);
    if (info.changes !== 1) throw new LeaseLostError(id, token, 'retryLater');
  }

  async finish(id: number, token: number, state: 'done' | 'failed', error: string | null): Promise<void> {
    const info = this.db
      .prepare(
        `UPDATE jobs SET state = ?, last_error = ?, lease_owner = NULL, lease_until = NULL, updated_at = ?
         WHERE id = ? AND state = 'running' AND lease_token = ?`,
      )
      .run(state, error, Date.now(), id, token);
    if (info.changes !== 1) throw new LeaseLostError(id, token, 'finish');
  }

  async list(states: JobState[], kinds?: string[]): Promise<JobRecord[]> {
    const kindClause = kinds ? ` AND kind IN (${placeholders(kinds.length)})` : '';
    const rows = this.db
      .prepare(`SELECT * FROM jobs WHERE state IN (${placeholders(states.length)})${kindClause} ORDER BY id`)
      .all(...states, ...(kinds ?? [])) as Row[];
    return rows.map(toJob);
  }

  async releaseLeases(owner: string): Promise<number> {
    return this.db
      .prepare("UPDATE jobs SET state = 'queued', lease_owner = NULL, lease_until = NULL, updated_at = ? WHERE state = 'running' AND lease_owner = ?")
      .run(Date.now(), owner).changes;
  }

  async requeueAllRunning(): Promise<number> {
    return this.db
      .prepare("UPDATE jobs SET state = 'queued', lease_owner = NULL, lease_until = NULL, updated_at = ? WHERE state = 'running'")
      .run(Date.now()).changes;
  }

  async deleteFinishedBefore(cutoff: number): Promise<number> {
    return this.db.prepare("DELETE FROM jobs WHERE state IN ('done', 'failed') AND updated_at < ?").run(cutoff).changes;
  }
}
