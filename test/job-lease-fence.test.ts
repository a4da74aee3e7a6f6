/**
 * COORD-1 at the job runner: a runner that stalled past its lease (here: cut off from the database
 * while its handler runs, as a GC pause, SIGSTOP or a partition would) and whose job another runner
 * claimed cannot finish the job, requeue it, fail it for good or overwrite the new holder's
 * progress; it notices (warn 'job lease lost; another process holds it now') and lets go. Two
 * runners on one SQLite job queue, each with its own owner; every store call of the first one hangs
 * from the start of its handler until the "partition" heals.
 *
 * Also COORD-2 at the runner: a runner with a `node` runs the jobs bound to it, one without runs none.
 */
import { afterEach, beforeEach, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { JobRunner, PermanentJobError, type JobControl } from '../src/jobs/job-runner.ts';
import { LeaseLostError, type JobRecord, type JobRepository } from '../src/metadata/metadata-store.ts';
import { SqliteMetadataStore } from '../src/metadata/sqlite/sqlite-metadata-store.ts';

const LEASE_MS = 300;
const RETRY = { initialDelayMs: 10, maxDelayMs: 10, deadlineMs: 60_000 };

let dir: string;
let meta: SqliteMetadataStore;
const runners: JobRunner[] = [];
/** The runners' timers do not keep the process alive; this does while a test waits on them. */
let keepAlive: NodeJS.Timeout;

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'snapferry-fence-'));
  meta = new SqliteMetadataStore(join(dir, 'meta.db'));
  keepAlive = setInterval(() => undefined, 1000);
});
afterEach(async () => {
  clearInterval(keepAlive);
  await Promise.all(runners.splice(0).map((r) => r.stop()));
  await meta.close();
  await rm(dir, { recursive: true, force: true });
});

interface Logged { level: string; msg: string; fields?: Record<string, unknown> }

/**
 * The job queue as seen by a process that can be cut off: while cut, every call (or only those
 * named in `only`) waits for `heal()`.
 */
function partitionable(jobs: JobRepository, only?: ReadonlyArray<keyof JobRepository>): { jobs: JobRepository; cut: () => void; heal: () => void } {
  let gate: Promise<void> | null = null;
  let open = (): void => undefined;
  const view = new Proxy(jobs, {
    get(target, prop) {
      const value = Reflect.get(target, prop, target) as unknown;
      if (typeof value !== 'function') return value;
      if (only && !only.includes(prop as keyof JobRepository)) return value.bind(target);
      return async (...args: unknown[]) => {
        while (gate) await gate;
        return (value as (...a: unknown[]) => unknown).apply(target, args);
      };
    },
  });
  return {
    jobs: view,
    cut: () => {
      gate ??= new Promise<void>((resolve) => (open = resolve));
    },
    heal: () => {
      gate = null;
      open();
    },
  };
}

function runner(jobs: JobRepository, log: Logged[], node?: string | null): JobRunner {
  const r = new JobRunner({ jobs, concurrency: 4, leaseMs: LEASE_MS, pollMs: 20, node, log: (level, msg, fields) => log.push({ level, msg, fields }) });
  runners.push(r);
  return r;
}

function deferred<T = void>(): { promise: Promise<T>; resolve: (v: T) => void } {
  let resolve!: (v: T) => void;
  const promise = new Promise<T>((r) => (resolve = r));
  return { promise, resolve };
}

async function until(check: () => boolean | Promise<boolean>, what: string): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

/**
 * Runner A claims the job and is cut off; once its lease lapsed runner B claims the job, saves its
 * progress and holds it. Then `stale` runs as A's handler after the partition healed.
 */
async function stolenLease(stale: (job: JobRecord, control: JobControl) => Promise<void>) {
  const logA: Logged[] = [];
  const logB: Logged[] = [];
  const net = partitionable(meta.jobs);
  const a = runner(net.jobs, logA);
  const b = runner(meta.jobs, logB);
  const aStarted = deferred();
  const aDone = deferred();
  const bHolds = deferred<JobRecord>();
  const bRelease = deferred();
  const permanentFailures: string[] = [];
  a.register({
    kind: 't',
    retry: RETRY,
    run: async (job, control) => {
      net.cut();
      aStarted.resolve();
      await aDone.promise;
      await stale(job, control);
    },
    onPermanentFailure: async (_job, reason) => void permanentFailures.push(`A: ${reason}`),
  });
  b.register({
    kind: 't',
    retry: RETRY,
    run: async (job, control) => {
      await control.saveProgress({ by: 'B' });
      bHolds.resolve(job);
      await bRelease.promise;
    },
    onPermanentFailure: async (_job, reason) => void permanentFailures.push(`B: ${reason}`),
  });
  a.start();
  const enqueued = await a.enqueue({ kind: 't', key: 'job-1', group: 'g', payload: {} });
  await aStarted.promise;
  b.start();
  const held = await bHolds.promise;
  assert.deepEqual([held.id, held.leaseToken, held.attempts], [enqueued.id, 2, 2], 'B claimed the job once A\'s lease lapsed');
  const asBLeftIt = await meta.jobs.get(enqueued.id);
  // A wakes up: its renewals reach the database again, its handler goes on.
  net.heal();
  aDone.resolve();
  await until(() => a.activeCount === 0, "A's attempt to end");
  const afterA = await meta.jobs.get(enqueued.id);
  return { id: enqueued.id, logA, logB, asBLeftIt, afterA, permanentFailures, b, bRelease };
}

const lostLeaseWarnings = (log: Logged[]) => log.filter((l) => l.level === 'warn' && l.msg === 'job lease lost; another process holds it now');

test('COORD-1: a runner whose lease was stolen cannot finish the job; the new holder does', async () => {
  const r = await stolenLease(async () => {
    // The handler ends normally, unaware: the runner's own finish is refused.
  });
  assert.equal(lostLeaseWarnings(r.logA).length, 1, JSON.stringify(r.logA));
  assert.deepEqual(r.afterA, r.asBLeftIt, 'A changed nothing');
  assert.deepEqual([r.afterA?.state, r.afterA?.leaseToken, r.afterA?.progress, r.afterA?.lastError], ['running', 2, { by: 'B' }, null]);
  assert.deepEqual(r.permanentFailures, []);
  assert.equal(r.logA.filter((l) => l.level === 'error').length, 0, JSON.stringify(r.logA));
  r.bRelease.resolve();
  await until(async () => (await meta.jobs.get(r.id))?.state === 'done', 'B to finish the job');
  assert.deepEqual((await meta.jobs.get(r.id))?.progress, { by: 'B' });
  assert.deepEqual(lostLeaseWarnings(r.logB), []);
});

test("COORD-1: the stale handler's saveProgress is refused (LeaseLostError, signal aborted); its permanent failure is not recorded", async () => {
  let caught: unknown;
  let abortedAfter = false;
  const r = await stolenLease(async (_job, control) => {
    try {
      await control.saveProgress({ by: 'A' });
    } catch (err) {
      caught = err;
      abortedAfter = control.signal.aborted;
      // A handler that would now mark its resource failed: the runner must not let it.
      throw new PermanentJobError('A gives up');
    }
  });
  assert.ok(caught instanceof LeaseLostError, String(caught));
  assert.equal((caught as Error).name, 'LeaseLostError');
  assert.equal(abortedAfter, true, 'the runner aborts the handler whose lease is lost');
  assert.deepEqual(r.permanentFailures, [], 'onPermanentFailure is not called for a job another process holds');
  assert.equal(lostLeaseWarnings(r.logA).length, 1, JSON.stringify(r.logA));
  assert.deepEqual(r.afterA, r.asBLeftIt, "B's progress stands; A neither failed nor requeued the job");
  r.bRelease.resolve();
  await until(async () => (await meta.jobs.get(r.id))?.state === 'done', 'B to finish the job');
});

test('COORD-1: a refused lease renewal aborts the handler; a transient failure it then reports requeues nothing', async () => {
  let reason: unknown;
  const r = await stolenLease(async (_job, control) => {
    if (!control.signal.aborted) await new Promise((resolve) => control.signal.addEventListener('abort', resolve, { once: true }));
    reason = control.signal.reason;
    throw new Error('stopped: lease lost');
  });
  assert.ok(reason instanceof LeaseLostError, String(reason));
  assert.equal(lostLeaseWarnings(r.logA).length, 1, JSON.stringify(r.logA));
  assert.equal(r.logA.filter((l) => l.msg.includes('will retry')).length, 0, 'no retryLater for a job that is not ours');
  assert.deepEqual(r.afterA, r.asBLeftIt);
  r.bRelease.resolve();
  await until(async () => (await meta.jobs.get(r.id))?.state === 'done', 'B to finish the job');
});

test('COORD-2: a runner with a node runs the jobs bound to it; a runner without one runs none of them', async () => {
  const log: Logged[] = [];
  const ran: string[] = [];
  const plain = runner(meta.jobs, log, null);
  const storageA = runner(meta.jobs, log, 'storage-a');
  for (const [name, r] of [['plain', plain], ['storage-a', storageA]] as const) {
    r.register({ kind: 't', retry: RETRY, run: async (job) => void ran.push(`${job.key}@${name}`), onPermanentFailure: async () => undefined });
  }
  plain.start();
  await plain.enqueue({ kind: 't', key: 'for-a', group: 'g', payload: {}, node: 'storage-a' });
  await plain.enqueue({ kind: 't', key: 'for-b', group: 'g', payload: {}, node: 'storage-b' });
  await until(async () => (await meta.jobs.list(['queued'])).length === 2, 'the jobs to be queued');
  await new Promise((r) => setTimeout(r, 100));
  assert.deepEqual(ran, [], 'no runner of storage-a or storage-b yet');
  storageA.start();
  await until(async () => (await meta.jobs.getByKey('for-a'))?.state === 'done', 'storage-a to run its job');
  assert.deepEqual(ran, ['for-a@storage-a']);
  assert.equal((await meta.jobs.getByKey('for-b'))?.state, 'queued');
});

test('COORD-1: a runner whose renewals failed and that claims its own job again aborts the old attempt; one finish counts', async () => {
  const log: Logged[] = [];
  const net = partitionable(meta.jobs, ['renewLease']);
  const r = runner(net.jobs, log);
  const reasons: unknown[] = [];
  const secondDone = deferred();
  r.register({
    kind: 't',
    retry: RETRY,
    run: async (job, control) => {
      if (job.attempts === 1) {
        net.cut(); // renewals hang: the lease lapses and this runner's next poll claims the job again
        await new Promise((resolve) => control.signal.addEventListener('abort', resolve, { once: true }));
        reasons.push(control.signal.reason);
        net.heal();
        await secondDone.promise;
        await control.saveProgress({ attempt: 1 }); // refused: rejects, and the attempt ends
        return;
      }
      await control.saveProgress({ attempt: job.attempts });
      secondDone.resolve();
    },
    onPermanentFailure: async () => undefined,
  });
  r.start();
  const job = await r.enqueue({ kind: 't', key: 'self', group: 'g', payload: {} });
  await until(async () => (await meta.jobs.get(job.id))?.state === 'done' && r.activeCount === 0, 'both attempts to end');
  assert.ok(reasons[0] instanceof LeaseLostError, String(reasons[0]));
  const row = (await meta.jobs.get(job.id))!;
  assert.deepEqual([row.attempts, row.leaseToken, row.progress], [2, 2, { attempt: 2 }]);
  assert.equal(lostLeaseWarnings(log).length, 1, JSON.stringify(log));
});
