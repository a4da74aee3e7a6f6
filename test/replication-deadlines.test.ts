/**
 * Copy deadlines count from the last progress, on both sides (copyDeadlineSeconds = 5 s here, both
 * regions; housekeeping every 250 ms): a copy that keeps making progress for longer than the
 * deadline completes; copies waiting behind the cap of 20 per destination for longer than the
 * destination's deadline are kept alive by their source, and start in id order; a destination
 * whose source is gone for good still fails the copy after the deadline.
 * In-process regions over real HTTP, bj -> hkg through a fault proxy that can slow or hold uploads.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { SENDS_PER_COPY } from '../src/replication/copy-job.ts';
import { COPY_JOB, type CopyPayload } from '../src/replication/copy-payload.ts';
import { assertCopyIdentical, copyStatus, randomChunks, snapshotAt, startCopy, syntheticSnapshot, waitAvailable } from './helpers/copy-fixtures.ts';
import { startFaultProxy, type FaultProxy } from './helpers/fault-proxy.ts';
import { startRegions, type LiveRegion, type RegionSet } from './helpers/region-set.ts';

const DEADLINE_MS = 5000;
let set: RegionSet;
let proxy: FaultProxy;
let bj: LiveRegion;
let hkg: LiveRegion;

before(async () => {
  const overrides = { copyDeadlineMs: DEADLINE_MS, gcIntervalMs: 250, gcGraceMs: 60_000 };
  set = await startRegions(
    [{ name: 'bj', overrides }, { name: 'hkg', overrides }],
    async (from, to, port) => (from === 'bj' && to === 'hkg' ? (proxy = await startFaultProxy(port)).url : null),
  );
  ({ bj, hkg } = set.regions as Record<string, LiveRegion>);
});
after(async () => {
  proxy?.release();
  await set?.close();
  await proxy?.close();
});

/** Waits until `ms` have passed, checking `invariant` all along (a deadline test waits for time itself). */
async function holdsFor(ms: number, invariant: () => Promise<void>): Promise<void> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    await invariant();
    await new Promise((r) => setTimeout(r, 100));
  }
  await invariant();
}

test('a copy that keeps making progress for longer than the deadline completes, through a transient failure', async () => {
  // SENDS_PER_COPY uploads in flight, each held 600 ms: about 7 s for the copy, past the 5 s deadline.
  const chunks = randomChunks(SENDS_PER_COPY * 12);
  const src = await syntheticSnapshot(bj.built.region, chunks);
  proxy.resetCounts();
  proxy.setChunkDelay(600);
  // Once the deadline has passed since the enqueue, one upload fails: the attempt fails with it.
  let started = 0;
  let injectedAt = 0;
  proxy.onUpload(() => {
    if (!injectedAt && Date.now() - started > DEADLINE_MS * 1.1) {
      injectedAt = Date.now();
      proxy.failNextChunks(1, 503);
    }
  });
  try {
    started = Date.now();
    const copyId = await startCopy(bj, src.snapshotId, 'hkg');
    await waitAvailable(set, hkg, copyId, 60_000);
    assert.ok(injectedAt > 0 && proxy.uploads().some((u) => u.status === 503), 'the failure was injected after the deadline');
    const status = await copyStatus(bj, src.snapshotId, copyId);
    assert.equal(status.attempts, 2, 'the transient failure was retried, not final');
    await assertCopyIdentical(set, hkg, copyId, chunks);
  } finally {
    proxy.onUpload(null);
    proxy.setChunkDelay(0);
  }
});

test('copies queued behind the cap of 20 longer than the destination deadline are not failed; they start in id order', async () => {
  // One snapshot (of its own fresh chunk) per copy, so that every copy has an upload to hold.
  const sources = [];
  for (let i = 0; i < 25; i++) sources.push(await syntheticSnapshot(bj.built.region, randomChunks(1)));
  proxy.holdAll(true);
  const ids: string[] = [];
  try {
    await cappedCopies(sources, ids);
  } finally {
    proxy.release();
  }
  for (const id of ids) await waitAvailable(set, hkg, id);
  for (const [i, id] of ids.entries()) assert.equal((await copyStatus(bj, sources[i]!.snapshotId, id)).attempts, 1);
});

async function cappedCopies(sources: Array<{ snapshotId: string }>, ids: string[]): Promise<void> {
  for (const src of sources) ids.push(await startCopy(bj, src.snapshotId, 'hkg'));
  const jobs = async () => (await bj.built.region.meta.jobs.list(['queued', 'running'], [COPY_JOB])).filter((j) => ids.includes((j.payload as CopyPayload).destSnapshotId));
  await set.waitFor(async () => proxy.heldCopies().size === 20);
  const byState = async (state: string): Promise<string[]> => (await jobs()).filter((j) => j.state === state).map((j) => (j.payload as CopyPayload).destSnapshotId);
  assert.deepEqual(await byState('running'), ids.slice(0, 20), 'the first 20 by id run');
  assert.deepEqual(await byState('queued'), ids.slice(20), 'the 21st and later wait');
  assert.deepEqual([...proxy.startOrder()].filter((id) => ids.includes(id)).sort(), ids.slice(0, 20).sort());

  // Longer than the destination's deadline: queued or held, nothing is failed, nothing else starts.
  await holdsFor(DEADLINE_MS * 2, async () => {
    for (const id of ids) assert.equal((await snapshotAt(hkg, id)).status, 'Creating', `${id} is still Creating at the destination`);
    assert.equal(proxy.heldCopies().size, 20);
  });
  assert.deepEqual(await byState('queued'), ids.slice(20));
  const waited = (await snapshotAt(hkg, ids[24]!));
  assert.equal(waited.progress, '0');

  // Each freed slot goes to the lowest queued id.
  const started = (): string[] => proxy.startOrder().filter((id) => ids.includes(id));
  for (let k = 0; k < 5; k++) {
    proxy.release(ids[k]);
    await waitAvailable(set, hkg, ids[k]!);
    await set.waitFor(async () => started().length === 21 + k);
    assert.equal(started()[20 + k], ids[20 + k], `slot ${k + 1} went to the next id in order`);
  }
}

test('a destination whose source is gone for good still fails the copy after the deadline', async () => {
  const src = await syntheticSnapshot(bj.built.region, randomChunks(2));
  proxy.holdAll(true);
  const copyId = await startCopy(bj, src.snapshotId, 'hkg');
  await set.waitFor(async () => proxy.heldCopies().has(copyId));
  await bj.close(); // gone: no job, no keep-alive, nothing more from bj
  const gone = Date.now();
  proxy.release();
  const failed = await set.waitFor(async () => {
    const s = await snapshotAt(hkg, copyId);
    return s.status === 'CreatedFailed' ? s : null;
  }, DEADLINE_MS * 5);
  assert.ok(Date.now() - gone >= DEADLINE_MS - 1100, 'not before the deadline (less the 1 s touch throttle)');
  const record = await hkg.built.region.meta.snapshots.getAny(copyId);
  assert.match(record?.lastError ?? '', /no word from the source region bj/);
  assert.equal(failed.status, 'CreatedFailed');
  assert.equal((await hkg.call('DELETE', `/v2/snapshot/${copyId}`)).status, 200, 'and it can be deleted');
});
