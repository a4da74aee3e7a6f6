import type pg from 'pg';
import { LeaseLostError, type JobRecord, type JobRepository, type JobState } from '../metadata-store.ts';
import { lockKey, withTransaction } from './connection.ts';

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

type Attempt = { job: JobRecord } | { none: true } | { full: string };

/**
 * The durable job queue, shared by every worker process of a region.
 *
 * `claim` is where processes meet. Per attempt, one transaction:
 * 1. the oldest runnable job (of the kinds, outside groups known to be full), `FOR UPDATE SKIP
 *    LOCKED`: a job another claimer is taking right now is skipped, not waited for, so claimers
 *    never get the same job and never queue behind each other;
 * 2. its group's cap: `pg_advisory_xact_lock` on the group, held to COMMIT, then
 * 3. the claim, guarded by a count of the group's running jobs in the same statement (which starts
 *    after the lock was ours, so it sees every claim committed before): state, lease, attempts and
 *    `lease_token + 1` (the fencing token). So claims in one group count and claim one at a time
 *    across all processes.
 * A group found full ends the attempt (rollback frees the job and the group lock) and the next
 * attempt leaves that group out. So a transaction holds at most one group lock, and claimers
 * cannot deadlock on two groups taken in opposite orders. Groups without a cap (Infinity) skip
 * the lock. Rejected: counting every group's running jobs without a lock (two processes both see
 * 1 of 2 and both claim: 3 running), a table lock on jobs (every claim and every lease renewal of
 * the region in one line), and `pg_try_advisory_xact_lock` (a busy group would look full and a
 * claimer would sleep a poll interval with work waiting).
 *
 * After the claim, the job's writes are fenced by its token (COORD-1): each is one UPDATE whose
 * WHERE clause asks for `state = 'running' AND lease_token = $token`, re-checked on the newest
 * version of the row when a concurrent claim is waited for. A holder that stalled past its lease
 * and lost the job to another claim therefore changes nothing, whatever its clock says.
 */
export class PostgresJobRepository implements JobRepository {
  constructor(private readonly db: pg.Pool) {}

  async enqueue(job: { kind: string; key: string; group: string; payload: unknown; runAfter?: number; node?: string | null }): Promise<JobRecord> {
    const now = Date.now();
    const inserted = await this.db.query(
      `INSERT INTO jobs (kind, key, grp, payload, state, run_after, node, created_at, updated_at)
       VALUES ($1, $2, $3, $4, 'queued', $5, $7, $6, $6) ON CONFLICT (key) DO NOTHING RETURNING *`,
      [job.kind, job.key, job.group, JSON.stringify(job.payload), job.runAfter ?? now, now, job.node ?? null],
    );
    if (inserted.rows[0]) return toJob(inserted.rows[0]);
    // The key existed (or a concurrent enqueue of it committed first): a new statement sees it.
    return (await this.getByKey(job.key))!;
  }

  async get(id: number): Promise<JobRecord | null> {
    const { rows } = await this.db.query('SELECT * FROM jobs WHERE id = $1', [id]);
    return rows[0] ? toJob(rows[0]) : null;
  }

  async getByKey(key: string): Promise<JobRecord | null> {
    const { rows } = await this.db.query('SELECT * FROM jobs WHERE key = $1', [key]);
    return rows[0] ? toJob(rows[0]) : null;
  }

  async claim(kinds: string[], owner: string, now: number, leaseMs: number, groupLimit: (group: string) => number, node: string | null): Promise<JobRecord | null> {
    if (kinds.length === 0) return null;
    // Groups already at their cap, as a hint only (it may be stale at once; the guarded claim
    // decides): a full group at the head of the queue then costs no extra attempt per claim.
    const full = new Set<string>();
    const running = await this.db.query("SELECT grp, count(*) AS n FROM jobs WHERE state = 'running' AND lease_until > $1 GROUP BY grp", [now]);
    for (const r of running.rows as Array<{ grp: string; n: number }>) if (r.n >= groupLimit(r.grp)) full.add(r.grp);
    for (;;) {
      const attempt = await withTransaction(this.db, async (tx): Promise<Attempt> => {
        const { rows } = await tx.query(
          `SELECT id, grp FROM jobs WHERE state IN ('queued', 'running') AND kind = ANY($1)
             AND ((state = 'queued' AND run_after <= $2) OR (state = 'running' AND lease_until <= $2))
             AND NOT (grp = ANY($3))
             AND (node IS NULL OR node = $4::text)
           ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED`,
          [kinds, now, [...full], node],
        );
        const candidate = rows[0] as { id: number; grp: string } | undefined;
        if (!candidate) return { none: true };
        const limit = groupLimit(candidate.grp);
        if (!(limit > 0)) return { full: candidate.grp };
        const capped = limit !== Infinity;
        if (capped) await tx.query(`SELECT pg_advisory_xact_lock(${lockKey('job-group', '$1')})`, [candidate.grp]);
        // The cap is counted inside the claiming UPDATE: a statement that starts after the lock was
        // granted, so it sees every claim of the group committed before (one round trip less than
        // a separate count). The candidate is ours (locked above): no row back means the group is full.
        const claimed = await tx.query(
          `UPDATE jobs SET state = 'running', lease_owner = $2, lease_until = $3, lease_token = lease_token + 1, attempts = attempts + 1,
             updated_at = $4, progressed_at = coalesce(progressed_at, $4)
           WHERE id = $1${capped ? " AND (SELECT count(*) FROM jobs WHERE grp = $5 AND state = 'running' AND lease_until > $4) < $6::float8" : ''}
           RETURNING *`,
          capped ? [candidate.id, owner, now + leaseMs, now, candidate.grp, limit] : [candidate.id, owner, now + leaseMs, now],
        );
        if (claimed.rowCount !== 1) return { full: candidate.grp };
        return { job: toJob(claimed.rows[0]) };
      });
      if ('full' in attempt) {
        full.add(attempt.full);
        continue;
      }
      return 'job' in attempt ? attempt.job : null;
    }
  }

  async renewLease(id: number, token: number, until: number): Promise<boolean> {
    const { rowCount } = await this.db.query(
      "UPDATE jobs SET lease_until = $3, updated_at = $4 WHERE id = $1 AND state = 'running' AND lease_token = $2",
      [id, token, until, Date.now()],
    );
    return rowCount === 1;
  }

  async saveProgress(id: number, token: number, progress: unknown): Promise<void> {
    const now = Date.now();
    const { rowCount } = await this.db.query(
      "UPDATE jobs SET progress = $3, updated_at = $4, progressed_at = $4 WHERE id = $1 AND state = 'running' AND lease_token = $2",
      [id, token, JSON.stringify(progress), now],
    );
    if (rowCount !== 1) throw new LeaseLostError(id, token, 'saveProgress');
  }

  async retryLater(id: number, token: number, runAfter: number, error: string): Promise<void> {
    const { rowCount } = await this.db.query(
      `UPDATE jobs SET state = 'queued', run_after = $3, last_error = $4, lease_owner = NULL, lease_until = NULL, updated_at = $5
       WHERE id = $1 AND state = 'running' AND lease_token = $2`,
      [id, token, runAfter, error, Date.now()],
    );
    if (rowCount !== 1) throw new LeaseLostError(id, token, 'retryLater');
  }

  async finish(id: number, token: number, state: 'done' | 'failed', error: string | null): Promise<void> {
    const { rowCount } = await this.db.query(
      `UPDATE jobs SET state = $3, last_error = $4, lease_owner = NULL, lease_until = NULL, updated_at = $5
       WHERE id = $1 AND state = 'running' AND lease_token = $2`,
      [id, token, state, error, Date.now()],
    );
    if (rowCount !== 1) throw new LeaseLostError(id, token, 'finish');
  }

  async list(states: JobState[], kinds?: string[]): Promise<JobRecord[]> {
    const { rows } = kinds
      ? await this.db.query('SELECT * FROM jobs WHERE state = ANY($1) AND kind = ANY($2) ORDER BY id', [states, kinds])
      : await this.db.query('SELECT * FROM jobs WHERE state = ANY($1) ORDER BY id', [states]);
    return rows.map(toJob);
  }

  async releaseLeases(owner: string): Promise<number> {
    const { rowCount } = await this.db.query(
      "UPDATE jobs SET state = 'queued', lease_owner = NULL, lease_until = NULL, updated_at = $2 WHERE state = 'running' AND lease_owner = $1",
      [owner, Date.now()],
    );
    return rowCount ?? 0;
  }

  /**
   * As the interface says, only for a store one process uses alone: on a database that several
   * processes share it would requeue jobs that other processes are running. Region start-up on a
   * shared database must leave running jobs to their leases, which expire by themselves.
   */
  async requeueAllRunning(): Promise<number> {
    const { rowCount } = await this.db.query(
      "UPDATE jobs SET state = 'queued', lease_owner = NULL, lease_until = NULL, updated_at = $1 WHERE state = 'running'",
      [Date.now()],
    );
    return rowCount ?? 0;
  }

  async deleteFinishedBefore(cutoff: number): Promise<number> {
    return (await this.db.query("DELETE FROM jobs WHERE state IN ('done', 'failed') AND updated_at < $1", [cutoff])).rowCount ?? 0;
  }
}
