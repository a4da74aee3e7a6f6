/**
 * Invariant: jobs of one group beyond the group's cap wait, and start in id (enqueue) order as
 * running ones end, whichever ends first; a saturated group never holds up another group. This is
 * what "at most 20 copies run per destination, the rest wait in id order" rests on (the job runner
 * over the real SQLite job queue; copies themselves: copy-queue-order.test.ts).
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { JobRunner } from '../src/jobs/job-runner.ts';
import { SqliteMetadataStore } from '../src/metadata/sqlite/sqlite-metadata-store.ts';
import { permutation } from './helpers/block-records.ts';

let dir: string;
let meta: SqliteMetadataStore;
let runner: JobRunner;
const CAP = 20;
/** Jobs that started, in the order they started: [group, n]. */
const starts: Array<[string, number]> = [];
const running = new Map<string, Set<number>>();
let maxRunning = 0;
const release = new Map<string, () => void>();

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'snapferry-queue-'));
  meta = new SqliteMetadataStore(join(dir, 'meta.db'));
  runner = new JobRunner({ jobs: meta.jobs, concurrency: 64, groupLimit: (g) => (g.startsWith('copy:') ? CAP : 4), pollMs: 20, log: () => {} });
  runner.register({
    kind: 'test.hold',
    retry: { initialDelayMs: 10, maxDelayMs: 10, deadlineMs: 60_000 },
    async run(job) {
      const { n } = job.payload as { n: number };
      const set = running.get(job.group) ?? new Set<number>();
      running.set(job.group, set);
      set.add(n);
      if (job.group === 'copy:hkg') maxRunning = Math.max(maxRunning, set.size);
      starts.push([job.group, n]);
      await new Promise<void>((resolve) => release.set(`${job.group}/${n}`, resolve));
      set.delete(n);
    },
    async onPermanentFailure() {},
  });
  runner.start();
});
after(async () => {
  for (const r of release.values()) r();
  await runner?.stop();
  await meta?.close();
  await rm(dir, { recursive: true, force: true });
});

async function until(check: () => boolean, what: string): Promise<void> {
  const deadline = Date.now() + 20_000;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}; started: ${JSON.stringify(starts)}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

test(`queue order: ${CAP + 15} jobs in one group with a cap of ${CAP} start in id order as slots free, never more than ${CAP} at once; another group is not held up`, async () => {
  const total = CAP + 15;
  for (let n = 0; n < total; n++) await runner.enqueue({ kind: 'test.hold', key: `hkg-${n}`, group: 'copy:hkg', payload: { n } });
  for (let n = 0; n < 3; n++) await runner.enqueue({ kind: 'test.hold', key: `gz-${n}`, group: 'copy:gz', payload: { n } });
  await until(() => (running.get('copy:hkg')?.size ?? 0) === CAP && (running.get('copy:gz')?.size ?? 0) === 3, 'the first jobs of both groups');
  const hkg = () => starts.filter(([g]) => g === 'copy:hkg').map(([, n]) => n);
  assert.deepEqual([...running.get('copy:hkg')!].sort((a, b) => a - b), Array.from({ length: CAP }, (_, i) => i), `the ${CAP} oldest run`);
  assert.deepEqual(starts.filter(([g]) => g === 'copy:gz').map(([, n]) => n), [0, 1, 2], 'the other group runs beside the saturated one');
  // Free the slots in a scrambled order: each time the oldest waiting job, and only it, starts next.
  let next = CAP;
  for (const k of permutation(total, 7)) {
    const n = Number(k);
    if (!running.get('copy:hkg')!.has(n)) continue;
    const before = hkg().length;
    release.get(`copy:hkg/${n}`)!();
    if (next < total) {
      await until(() => hkg().length === before + 1, `a job to start after ${n} ended`);
      assert.equal(hkg().at(-1), next, `after job ${n} ended, job ${next} (the oldest waiting) started`);
      next++;
    }
    assert.ok(maxRunning <= CAP, `at most ${CAP} ran at once (saw ${maxRunning})`);
  }
  // Whatever is still running (the last ones to start) ends too.
  while (running.get('copy:hkg')!.size > 0) {
    for (const n of [...running.get('copy:hkg')!]) release.get(`copy:hkg/${n}`)!();
    await until(() => running.get('copy:hkg')!.size === 0 || hkg().length === total, 'the rest');
  }
  assert.deepEqual(hkg(), Array.from({ length: total }, (_, i) => i), 'start order is id order');
  assert.equal(maxRunning, CAP);
  for (let n = 0; n < 3; n++) release.get(`copy:gz/${n}`)!();
  await until(() => runner.activeCount === 0, 'all jobs done');
  const rows = await meta.jobs.list(['done']);
  assert.equal(rows.length, total + 3);
});
