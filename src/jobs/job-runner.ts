/**
 * Durable job mechanics: claim with a lease, run, retry with exponential backoff, fail for good
 * after a deadline or a permanent error, resume after a restart. Knows nothing of what a job does:
 * handlers bring the meaning (snapshot capture, disk fill, remote copy).
 *
 * Rejected alternative: an in-memory queue with state mirrored to the database. With the database as
 * the queue, a restart (or a second worker on PostgreSQL) resumes exactly what was persisted.
 */
import { randomUUID } from 'node:crypto';
import { LeaseLostError, type JobRecord, type JobRepository } from '../metadata/metadata-store.ts';

export interface JobControl {
  /** Aborted when the runner shuts down or the lease is lost; a handler stops soon after. */
  readonly signal: AbortSignal;
  /**
   * Persists the handler's own progress; the next attempt sees it in `job.progress`. Rejects with
   * `LeaseLostError` (and aborts `signal`) when another claim took the job meanwhile: the handler
   * stops; nothing it saves any more reaches the job (COORD-1).
   */
  saveProgress(progress: unknown): Promise<void>;
}

export interface RetryPolicy {
  /** First backoff; doubles per attempt up to maxDelayMs, with +-20 % jitter. */
  initialDelayMs: number;
  maxDelayMs: number;
  /**
   * A job that fails when it has made no progress for this long fails for good. Counted from the
   * job's last progress (`JobRecord.progressedAt`: its first claim, then every `saveProgress`), not
   * from the enqueue: a copy that runs for days while making progress is never failed by its first
   * transient error, and time spent queued behind a concurrency cap does not count. Handlers that
   * run long must `saveProgress` when they make progress (the copy job does at least every 30 s).
   */
  deadlineMs: number;
}

export interface JobHandler {
  readonly kind: string;
  readonly retry: RetryPolicy;
  run(job: JobRecord, control: JobControl): Promise<void>;
  /** Called once when the job fails for good; marks the affected resource failed. */
  onPermanentFailure(job: JobRecord, reason: string): Promise<void>;
}

/** Thrown by a handler when retrying cannot help (bad data, a resource that is gone). */
export class PermanentJobError extends Error {
  override name = 'PermanentJobError';
}

export interface JobRunnerOptions {
  jobs: JobRepository;
  /** At most this many jobs run at once in this runner. */
  concurrency: number;
  /** Cap of running jobs per group (e.g. copies to one region); Infinity when absent. */
  groupLimit?: (group: string) => number;
  /**
   * This process's id as a storage node: jobs enqueued for it (`node`) are claimed here, besides
   * the node-less ones. Null or absent: only node-less jobs.
   */
  node?: string | null;
  /**
   * The kinds this runner claims (default: every registered kind). A process may enqueue kinds it
   * does not run: an api process enqueues captures for storage processes and copies for workers.
   */
  runKinds?: readonly string[];
  /**
   * At most this many jobs of a kind run at once in this runner (default: no cap beyond
   * `concurrency`): with several workers sharing a queue, each takes its share instead of the first
   * one to poll taking everything.
   */
  kindLimit?: (kind: string) => number;
  /** Job lease (default 30 s), renewed every third of it. */
  leaseMs?: number;
  pollMs?: number;
  log: (level: 'info' | 'warn' | 'error', msg: string, fields?: Record<string, unknown>) => void;
  now?: () => number;
}

export class JobRunner {
  private readonly handlers = new Map<string, JobHandler>();
  /**
   * Attempts running here, by `${job id}/${lease token}`: when renewals failed long enough for the
   * lease to lapse, this runner may claim one of its own jobs again, and the old attempt (aborted,
   * its writes fenced) may still be winding down beside the new one.
   */
  private readonly running = new Map<string, { jobId: number; token: number; kind: string; abort: AbortController; done: Promise<void> }>();
  private readonly owner = `runner-${randomUUID()}`;
  private timer: NodeJS.Timeout | null = null;
  private stopped = true;
  private pumping = false;
  private pumpAgain = false;
  private readonly leaseMs: number;
  private readonly pollMs: number;
  private readonly now: () => number;

  constructor(private readonly opts: JobRunnerOptions) {
    this.leaseMs = opts.leaseMs ?? 30_000;
    this.pollMs = opts.pollMs ?? 500;
    this.now = opts.now ?? Date.now;
  }

  register(handler: JobHandler): void {
    this.handlers.set(handler.kind, handler);
  }

  start(): void {
    this.stopped = false;
    this.schedule(0);
  }

  /** Enqueues (or finds, by key) a job and wakes the runner. */
  async enqueue(job: { kind: string; key: string; group: string; payload: unknown; runAfter?: number; node?: string | null }): Promise<JobRecord> {
    if (!this.handlers.has(job.kind)) throw new Error(`no handler for job kind ${job.kind}`);
    const record = await this.opts.jobs.enqueue(job);
    this.kick();
    return record;
  }

  /** Looks for runnable work now instead of at the next poll. */
  kick(): void {
    if (!this.stopped) this.schedule(0);
  }

  get activeCount(): number {
    return this.running.size;
  }

  /** Stops claiming, aborts running jobs, waits for them and gives their leases back. */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    for (const r of this.running.values()) r.abort.abort(new Error('job runner stopping'));
    await Promise.allSettled([...this.running.values()].map((r) => r.done));
    try {
      await this.opts.jobs.releaseLeases(this.owner);
    } catch (err) {
      // Leases expire on their own; a store that is already gone must not turn shutdown into a crash.
      this.opts.log('warn', 'could not release job leases at shutdown', { err: String(err) });
    }
  }

  private schedule(delayMs: number): void {
    if (this.stopped) return;
    if (this.timer) clearTimeout(this.timer);
    this.timer = setTimeout(() => void this.pump(), delayMs);
    this.timer.unref();
  }

  private async pump(): Promise<void> {
    if (this.pumping) {
      this.pumpAgain = true;
      return;
    }
    this.pumping = true;
    try {
      do {
        this.pumpAgain = false;
        while (!this.stopped && this.running.size < this.opts.concurrency) {
          const kinds = this.claimableKinds();
          if (kinds.length === 0) break;
          const job = await this.opts.jobs.claim(
            kinds, this.owner, this.now(), this.leaseMs, this.opts.groupLimit ?? (() => Infinity), this.opts.node ?? null,
          );
          if (!job) break;
          this.launch(job);
        }
      } while (this.pumpAgain && !this.stopped);
    } catch (err) {
      this.opts.log('error', 'job claim failed', { err: String(err) });
    } finally {
      this.pumping = false;
      this.schedule(this.pollMs);
    }
  }

  /** The kinds this runner runs whose own cap (kindLimit) is not reached. */
  private claimableKinds(): string[] {
    const runs = this.opts.runKinds ?? [...this.handlers.keys()];
    const limit = this.opts.kindLimit;
    if (!limit) return runs.filter((k) => this.handlers.has(k));
    const counts = new Map<string, number>();
    for (const r of this.running.values()) counts.set(r.kind, (counts.get(r.kind) ?? 0) + 1);
    return runs.filter((k) => this.handlers.has(k) && (counts.get(k) ?? 0) < limit(k));
  }

  private launch(job: JobRecord): void {
    const handler = this.handlers.get(job.kind)!;
    const abort = new AbortController();
    const token = job.leaseToken;
    const attempt = `${job.id}/${token}`;
    for (const r of this.running.values()) {
      if (r.jobId === job.id) r.abort.abort(new LeaseLostError(job.id, r.token, 'claim'));
    }
    const renew = setInterval(() => {
      void this.opts.jobs.renewLease(job.id, token, this.now() + this.leaseMs).then(
        (ok) => {
          if (!ok) abort.abort(new LeaseLostError(job.id, token, 'renewLease'));
        },
        // A store that is briefly unreachable must not crash the process (an unhandled rejection
        // ends Node 20); the next renewal tries again, and the lease protects the job meanwhile.
        (err) => this.opts.log('warn', 'could not renew a job lease', { jobId: job.id, err: String(err) }),
      );
    }, Math.max(10, this.leaseMs / 3));
    renew.unref();
    const control: JobControl = {
      signal: abort.signal,
      saveProgress: async (p) => {
        try {
          await this.opts.jobs.saveProgress(job.id, token, p);
        } catch (err) {
          if (err instanceof LeaseLostError) abort.abort(err);
          throw err;
        }
      },
    };
    const done = (async () => {
      try {
        try {
          await handler.run(job, control);
        } catch (err) {
          await this.settleFailure(handler, job, err, abort.signal);
          return;
        }
        try {
          await this.opts.jobs.finish(job.id, token, 'done', null);
        } catch (err) {
          // A lost lease is reported as such; another error (the store unreachable) fails the attempt.
          await this.settleFailure(handler, job, err, abort.signal);
        }
      } finally {
        clearInterval(renew);
        this.running.delete(attempt);
        this.kick();
      }
    })();
    this.running.set(attempt, { jobId: job.id, token, kind: job.kind, abort, done });
  }

  /**
   * The job's failure, recorded under its lease token. A job whose lease is lost (the handler met
   * `LeaseLostError`, a renewal was refused, or a fenced write below is) belongs to another process
   * now: nothing is recorded and `onPermanentFailure` is not called.
   */
  private async settleFailure(handler: JobHandler, job: JobRecord, err: unknown, signal: AbortSignal): Promise<void> {
    const reason = err instanceof Error ? err.message : String(err);
    const token = job.leaseToken;
    try {
      const lost = err instanceof LeaseLostError ? err : signal.reason instanceof LeaseLostError ? signal.reason : null;
      if (lost) {
        this.leaseLost(job, lost);
        return;
      }
      if (signal.aborted && !(err instanceof PermanentJobError)) {
        // Shutting down: not the job's fault; it resumes on the next start.
        return;
      }
      const pastDeadline = this.now() - (await this.lastProgress(job)) > handler.retry.deadlineMs;
      if (err instanceof PermanentJobError || pastDeadline) {
        // Still ours? `onPermanentFailure` marks a resource failed, which only the job's holder may
        // do. (A lease lost between this check and `finish` is reported by `finish` below.)
        if (!(await this.opts.jobs.renewLease(job.id, token, this.now() + this.leaseMs))) {
          this.leaseLost(job, new LeaseLostError(job.id, token, 'renewLease'));
          return;
        }
        this.opts.log('error', 'job failed for good', { jobId: job.id, kind: job.kind, key: job.key, attempts: job.attempts, reason });
        await handler.onPermanentFailure(job, reason);
        await this.opts.jobs.finish(job.id, token, 'failed', reason);
        return;
      }
      const delay = backoffDelay(handler.retry, job.attempts);
      this.opts.log('warn', 'job attempt failed; will retry', { jobId: job.id, kind: job.kind, key: job.key, attempts: job.attempts, retryInMs: delay, reason });
      await this.opts.jobs.retryLater(job.id, token, this.now() + delay, reason);
    } catch (settleErr) {
      if (settleErr instanceof LeaseLostError) this.leaseLost(job, settleErr);
      else this.opts.log('error', 'could not record job failure', { jobId: job.id, err: String(settleErr) });
    }
  }

  private leaseLost(job: JobRecord, err: LeaseLostError): void {
    this.opts.log('warn', 'job lease lost; another process holds it now', { jobId: job.id, kind: job.kind, key: job.key, leaseToken: job.leaseToken, err: err.message });
  }

  /** When the job last made progress, read back from the store (saveProgress moved it since the claim). */
  private async lastProgress(job: JobRecord): Promise<number> {
    const stored = await this.opts.jobs.get(job.id);
    return stored?.progressedAt ?? job.progressedAt ?? job.createdAt;
  }
}

export function backoffDelay(policy: RetryPolicy, attempts: number): number {
  const base = Math.min(policy.maxDelayMs, policy.initialDelayMs * 2 ** Math.max(0, attempts - 1));
  return Math.round(base * (0.8 + Math.random() * 0.4));
}
