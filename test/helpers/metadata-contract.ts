/**
 * The MetadataStore contract, as one suite that every implementation runs (SQLite and
 * PostgreSQL): atomic inserts, guarded updates, paging, the snapshot quota, clientToken records,
 * the job queue's claim/lease/retry rules, and the coordination of processes (COORD-1..4 of
 * docs/design.md: fencing tokens, jobs bound to a node, the node registry, singleton locks).
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { Snapshot } from '../../src/domain/snapshot.ts';
import type { Volume } from '../../src/domain/volume.ts';
import { LeaseLostError, type MetadataStore } from '../../src/metadata/metadata-store.ts';

export interface MetadataFixture {
  store: MetadataStore;
  cleanup(): Promise<void>;
}

let seq = 0;
const id = (prefix: 'v' | 's'): string => `${prefix}-${String(++seq).padStart(8, '0')}`;

export function volume(over: Partial<Volume> = {}): Volume {
  return {
    id: id('v'), accountId: 'acct', name: 'disk', desc: '', diskSizeInGB: 1, storageType: 'hp1', zoneName: 'cn-bj-a',
    createTime: Date.now(), status: 'Available', sourceSnapshotId: null, tags: [], lastError: null, ...over,
  };
}

export function snapshot(over: Partial<Snapshot> = {}): Snapshot {
  return {
    id: id('s'), accountId: 'acct', name: 'snap', desc: '', volumeId: 'v-x', sizeInGB: 1, createTime: Date.now(),
    status: 'Creating', createMethod: 'MANUAL', progress: 0, storageType: 'hp1', retentionInDays: null, tags: [],
    sourceRegion: null, sourceSnapshotId: null, manifestId: null, lastError: null, ...over,
  };
}

export function metadataContract(name: string, make: () => Promise<MetadataFixture>): void {
  const withStore = (fn: (s: MetadataStore) => Promise<void>) => async () => {
    const f = await make();
    try {
      await fn(f.store);
    } finally {
      await f.cleanup();
    }
  };

  describe(`MetadataStore contract: ${name}`, () => {
    it('volumes: insertIfAbsent is atomic and idempotent; other accounts see nothing', withStore(async (m) => {
      const v = volume({ tags: [{ tagKey: 'k', tagValue: 'v' }] });
      assert.equal(await m.volumes.insertIfAbsent(v), true);
      assert.equal(await m.volumes.insertIfAbsent({ ...v, name: 'other' }), false);
      assert.deepEqual(await m.volumes.get('acct', v.id), v);
      assert.equal(await m.volumes.get('someone-else', v.id), null);
      assert.deepEqual(await m.volumes.getAny(v.id), v);
    }));

    it('volumes: update with a status guard changes only a matching record', withStore(async (m) => {
      const v = volume({ status: 'Creating' });
      await m.volumes.insertIfAbsent(v);
      assert.equal(await m.volumes.update(v.id, { status: 'InUse' }, ['Available']), null);
      assert.equal((await m.volumes.update(v.id, { status: 'Available', diskSizeInGB: 5 }, ['Creating']))?.diskSizeInGB, 5);
      assert.equal((await m.volumes.getAny(v.id))?.status, 'Available');
      assert.equal(await m.volumes.update('v-missing0', { status: 'Error' }), null);
      assert.deepEqual((await m.volumes.listByStatus(['Available'])).map((x) => x.id), [v.id]);
    }));

    it('volumes: list pages in creation order with an inclusive marker, filters, and survives deletes', withStore(async (m) => {
      const vs = [volume(), volume({ zoneName: 'cn-bj-b' }), volume(), volume({ name: 'x' }), volume()];
      for (const v of vs) await m.volumes.insertIfAbsent(v);
      const p1 = await m.volumes.list('acct', {}, { marker: null, maxKeys: 2 });
      assert.deepEqual(p1.items.map((v) => v.id), [vs[0]!.id, vs[1]!.id]);
      assert.equal(p1.nextMarker, vs[2]!.id);
      await m.volumes.delete(vs[2]!.id);
      const p2 = await m.volumes.list('acct', {}, { marker: p1.nextMarker, maxKeys: 2 });
      assert.deepEqual(p2.items.map((v) => v.id), [vs[3]!.id, vs[4]!.id], 'a marker naming a deleted record still finds its place');
      assert.equal(p2.nextMarker, null);
      assert.deepEqual((await m.volumes.list('acct', { zoneName: 'cn-bj-b' }, { marker: null, maxKeys: 10 })).items.map((v) => v.id), [vs[1]!.id]);
      assert.deepEqual((await m.volumes.list('acct', { name: 'x' }, { marker: null, maxKeys: 10 })).items.map((v) => v.id), [vs[3]!.id]);
      assert.deepEqual((await m.volumes.list('acct', { ids: [vs[4]!.id, vs[0]!.id] }, { marker: null, maxKeys: 10 })).items.map((v) => v.id), [vs[0]!.id, vs[4]!.id]);
      assert.deepEqual((await m.volumes.list('acct', { ids: [] }, { marker: null, maxKeys: 10 })).items, []);
      assert.deepEqual((await m.volumes.list('nobody', {}, { marker: null, maxKeys: 10 })).items, []);
      assert.deepEqual((await m.volumes.list('acct', {}, { marker: 'v-unknown0', maxKeys: 10 })).items, []);
      assert.equal(await m.volumes.getAny(vs[2]!.id), null);
    }));

    it('snapshots: the per-volume quota is checked in the same step as the insert', withStore(async (m) => {
      assert.equal(await m.snapshots.insertIfAbsent(snapshot({ volumeId: 'v-q' }), 2), 'inserted');
      const second = snapshot({ volumeId: 'v-q' });
      assert.equal(await m.snapshots.insertIfAbsent(second, 2), 'inserted');
      assert.equal(await m.snapshots.insertIfAbsent(second, 2), 'exists');
      assert.equal(await m.snapshots.insertIfAbsent(snapshot({ volumeId: 'v-q' }), 2), 'quota');
      const copies = await Promise.all([1, 2, 3].map(() => m.snapshots.insertIfAbsent(snapshot({ volumeId: 'v-r' }), 2)));
      assert.equal(copies.filter((c) => c === 'inserted').length, 2, 'concurrent inserts cannot exceed the quota');
      assert.equal(await m.snapshots.countByVolume('v-q'), 2);
    }));

    it('snapshots: list by volume, guarded updates, manifest roots, soft delete', withStore(async (m) => {
      const a = snapshot({ volumeId: 'v-a', status: 'Available', manifestId: 'm1' });
      const b = snapshot({ volumeId: 'v-b', manifestId: 'm2' });
      const c = snapshot({ volumeId: 'v-a', sourceRegion: 'gz', sourceSnapshotId: 's-src00001' });
      for (const s of [a, b, c]) await m.snapshots.insertIfAbsent(s);
      assert.deepEqual((await m.snapshots.list('acct', { volumeId: 'v-a' }, { marker: null, maxKeys: 10 })).items.map((s) => s.id), [a.id, c.id]);
      assert.deepEqual(await m.snapshots.get('acct', c.id), c);
      assert.equal(await m.snapshots.update(b.id, { status: 'Available' }, ['CreatedFailed']), null);
      assert.equal((await m.snapshots.update(b.id, { status: 'Available', progress: 100 }, ['Creating']))?.progress, 100);
      assert.deepEqual((await m.snapshots.manifestIds()).sort(), ['m1', 'm2']);
      await m.snapshots.delete(a.id);
      assert.equal(await m.snapshots.get('acct', a.id), null);
      assert.deepEqual(await m.snapshots.manifestIds(), ['m2']);
      assert.deepEqual((await m.snapshots.listByStatus(['Creating'])).map((s) => s.id), [c.id]);
    }));

    it('snapshots: incoming copies that went silent are found by their last sign of life', withStore(async (m) => {
      const now = Date.now();
      const quiet = snapshot({ sourceRegion: 'gz', sourceSnapshotId: 's-a0000001', createTime: now - 10_000 });
      const talking = snapshot({ sourceRegion: 'gz', sourceSnapshotId: 's-a0000002', createTime: now - 10_000 });
      const local = snapshot({ createTime: now - 10_000 });
      const done = snapshot({ sourceRegion: 'gz', sourceSnapshotId: 's-a0000003', createTime: now - 10_000, status: 'Available' });
      for (const s of [quiet, talking, local, done]) await m.snapshots.insertIfAbsent(s);
      await m.snapshots.touch(talking.id, now);
      assert.deepEqual((await m.snapshots.listSilentIncoming(now - 5000)).map((s) => s.id), [quiet.id]);
      assert.deepEqual(await m.snapshots.listSilentIncoming(now - 20_000), []);
    }));

    it('idempotency records: insert once, read back, complete, touch, purge', withStore(async (m) => {
      const rec = { scope: 'acct/bj/op', token: 't1', paramsHash: 'h', result: { ids: ['v-1'] }, completed: false, lastUsedAt: 1000 };
      assert.equal(await m.idempotency.insertIfAbsent(rec), true);
      assert.equal(await m.idempotency.insertIfAbsent({ ...rec, paramsHash: 'other' }), false);
      assert.deepEqual(await m.idempotency.get('acct/bj/op', 't1'), rec);
      await m.idempotency.markCompleted('acct/bj/op', 't1');
      await m.idempotency.touch('acct/bj/op', 't1', 5000);
      assert.deepEqual(await m.idempotency.get('acct/bj/op', 't1'), { ...rec, completed: true, lastUsedAt: 5000 });
      assert.equal(await m.idempotency.get('acct/bj/other', 't1'), null);
      assert.equal(await m.idempotency.purgeOlderThan(4000), 0);
      assert.equal(await m.idempotency.purgeOlderThan(6000), 1);
      assert.equal(await m.idempotency.get('acct/bj/op', 't1'), null);
    }));

    it('jobs: enqueue is unique by key; claims go oldest first, honour run-after and group caps', withStore(async (m) => {
      const j1 = await m.jobs.enqueue({ kind: 'k', key: 'a', group: 'g1', payload: { n: 1 } });
      assert.equal((await m.jobs.enqueue({ kind: 'k', key: 'a', group: 'g1', payload: { n: 99 } })).id, j1.id);
      await m.jobs.enqueue({ kind: 'k', key: 'b', group: 'g1', payload: { n: 2 } });
      await m.jobs.enqueue({ kind: 'k', key: 'c', group: 'g2', payload: { n: 3 } });
      await m.jobs.enqueue({ kind: 'k', key: 'later', group: 'g3', payload: {}, runAfter: Date.now() + 60_000 });
      const cap = (g: string): number => (g === 'g1' ? 1 : 10);
      const now = Date.now();
      const first = await m.jobs.claim(['k'], 'w1', now, 30_000, cap, null);
      assert.deepEqual([first?.key, first?.state, first?.attempts, (first?.payload as { n: number }).n], ['a', 'running', 1, 1]);
      const second = await m.jobs.claim(['k'], 'w1', now, 30_000, cap, null);
      assert.equal(second?.key, 'c', 'g1 is at its cap, so the next claim skips to another group');
      assert.equal(await m.jobs.claim(['k'], 'w1', now, 30_000, cap, null), null, 'b waits for g1; later waits for its time');
      assert.equal(await m.jobs.claim(['other-kind'], 'w1', now, 30_000, cap, null), null);
      await m.jobs.finish(first!.id, first!.leaseToken, 'done', null);
      assert.equal((await m.jobs.claim(['k'], 'w1', now, 30_000, cap, null))?.key, 'b');
    }));

    it('jobs: leases expire and are taken over; retry and finish need the current lease token; progress persists', withStore(async (m) => {
      await m.jobs.enqueue({ kind: 'k', key: 'x', group: 'g', payload: {} });
      const now = Date.now();
      const job = (await m.jobs.claim(['k'], 'w1', now, 1000, () => 5, null))!;
      assert.equal(await m.jobs.claim(['k'], 'w2', now + 500, 1000, () => 5, null), null);
      assert.equal(await m.jobs.renewLease(job.id, job.leaseToken + 1, now + 5000), false, 'a token that was never issued renews nothing');
      const taken = (await m.jobs.claim(['k'], 'w2', now + 1500, 1000, () => 5, null))!;
      assert.deepEqual([taken.id, taken.leaseOwner, taken.attempts], [job.id, 'w2', 2]);
      await m.jobs.saveProgress(job.id, taken.leaseToken, { percent: 40 });
      await assert.rejects(m.jobs.retryLater(job.id, job.leaseToken, now, 'stale holder'), LeaseLostError);
      assert.equal((await m.jobs.get(job.id))?.state, 'running', 'a stale holder cannot requeue');
      await m.jobs.retryLater(job.id, taken.leaseToken, now + 10_000, 'boom');
      const queued = (await m.jobs.get(job.id))!;
      assert.deepEqual([queued.state, queued.lastError, queued.progress], ['queued', 'boom', { percent: 40 }]);
      await assert.rejects(m.jobs.saveProgress(job.id, taken.leaseToken, { percent: 50 }), LeaseLostError, 'a queued job takes no progress');
      assert.equal(await m.jobs.claim(['k'], 'w2', now + 2000, 1000, () => 5, null), null, 'backoff: not before run-after');
      const again = (await m.jobs.claim(['k'], 'w3', now + 10_000, 1000, () => 5, null))!;
      await m.jobs.finish(again.id, again.leaseToken, 'failed', 'gave up');
      await assert.rejects(m.jobs.finish(again.id, again.leaseToken, 'done', null), LeaseLostError, 'a finished job stays finished');
      assert.deepEqual((await m.jobs.list(['failed'])).map((j) => [j.key, j.lastError]), [['x', 'gave up']]);
      assert.equal(await m.jobs.deleteFinishedBefore(Date.now() + 1000), 1);
    }));

    it('COORD-1: a holder whose lease lapsed and was claimed again changes nothing; tokens increase with every claim', withStore(async (m) => {
      const enqueued = await m.jobs.enqueue({ kind: 'k', key: 'fence', group: 'g', payload: {} });
      assert.equal(enqueued.leaseToken, 0);
      const t = Date.now();
      const stale = (await m.jobs.claim(['k'], 'w1', t, 1000, () => 5, null))!;
      await m.jobs.saveProgress(stale.id, stale.leaseToken, { step: 1 });
      // w1 stalls past its lease (a GC pause, SIGSTOP, a partition); w2 claims the job again.
      const holder = (await m.jobs.claim(['k'], 'w2', t + 1001, 60_000, () => 5, null))!;
      assert.equal(holder.id, stale.id);
      assert.ok(holder.leaseToken > stale.leaseToken, `token ${holder.leaseToken} after ${stale.leaseToken}`);
      await m.jobs.saveProgress(holder.id, holder.leaseToken, { step: 2 });
      const asLeft = await m.jobs.get(holder.id);
      assert.deepEqual([asLeft?.state, asLeft?.leaseOwner, asLeft?.leaseToken, asLeft?.progress], ['running', 'w2', holder.leaseToken, { step: 2 }]);
      // w1 wakes up: every write it tries is refused and leaves the row exactly as w2 left it.
      assert.equal(await m.jobs.renewLease(stale.id, stale.leaseToken, t + 120_000), false);
      await assert.rejects(m.jobs.saveProgress(stale.id, stale.leaseToken, { step: 99 }), (err: Error) => {
        assert.ok(err instanceof LeaseLostError);
        assert.equal(err.name, 'LeaseLostError');
        return true;
      });
      await assert.rejects(m.jobs.retryLater(stale.id, stale.leaseToken, t, 'stale'), LeaseLostError);
      await assert.rejects(m.jobs.finish(stale.id, stale.leaseToken, 'done', null), LeaseLostError);
      await assert.rejects(m.jobs.finish(stale.id, stale.leaseToken, 'failed', 'stale'), LeaseLostError);
      assert.deepEqual(await m.jobs.get(holder.id), asLeft, 'the stale holder changed nothing');
      // The same owner name does not help: the fence is the token (a restarted process may reuse its name).
      const sameName = (await m.jobs.claim(['k'], 'w1', t + 120_001, 1000, () => 5, null))!;
      assert.equal(sameName.leaseOwner, 'w1');
      assert.equal(sameName.leaseToken, holder.leaseToken + 1);
      await assert.rejects(m.jobs.finish(stale.id, stale.leaseToken, 'done', null), LeaseLostError);
      assert.equal(await m.jobs.renewLease(sameName.id, sameName.leaseToken, t + 130_000), true);
      await m.jobs.finish(sameName.id, sameName.leaseToken, 'done', null);
      const done = (await m.jobs.get(sameName.id))!;
      assert.deepEqual([done.state, done.leaseToken, done.attempts, done.progress], ['done', sameName.leaseToken, 3, { step: 2 }]);
      // After a requeue (retry or release) the next claim's token is higher again.
      await m.jobs.enqueue({ kind: 'k', key: 'fence-2', group: 'g', payload: {} });
      const t2 = Date.now();
      const a = (await m.jobs.claim(['k'], 'w1', t2, 60_000, () => 5, null))!;
      await m.jobs.retryLater(a.id, a.leaseToken, t2, 'again');
      const b = (await m.jobs.claim(['k'], 'w1', t2, 60_000, () => 5, null))!;
      assert.equal(b.leaseToken, a.leaseToken + 1);
      assert.equal(await m.jobs.releaseLeases('w1'), 1);
      const c = (await m.jobs.claim(['k'], 'w1', t2, 60_000, () => 5, null))!;
      assert.equal(c.leaseToken, b.leaseToken + 1);
      await assert.rejects(m.jobs.saveProgress(b.id, b.leaseToken, {}), LeaseLostError, 'released, then claimed again: the old token is dead');
    }));

    it('COORD-2: a job bound to a node is claimed only by that node; node-less jobs by anyone', withStore(async (m) => {
      const anyone = await m.jobs.enqueue({ kind: 'k', key: 'any', group: 'g', payload: {} });
      const forA = await m.jobs.enqueue({ kind: 'k', key: 'on-a', group: 'g', payload: {}, node: 'storage-a' });
      const forB = await m.jobs.enqueue({ kind: 'k', key: 'on-b', group: 'g', payload: {}, node: 'storage-b' });
      assert.deepEqual([anyone.node, forA.node, forB.node], [null, 'storage-a', 'storage-b']);
      assert.equal((await m.jobs.enqueue({ kind: 'k', key: 'on-a', group: 'g', payload: {}, node: 'storage-b' })).node, 'storage-a', 'an existing job keeps its node');
      const now = Date.now();
      const claim = (node: string | null) => m.jobs.claim(['k'], `w-${node}`, now, 60_000, () => 10, node);
      assert.equal((await claim('storage-b'))?.key, 'any', 'the oldest job any node may run');
      assert.equal((await claim('storage-b'))?.key, 'on-b');
      assert.equal(await claim('storage-b'), null, "storage-a's job is not storage-b's");
      assert.equal(await claim(null), null, 'a process that is no storage node runs node-less jobs only');
      assert.equal(await claim('storage-c'), null);
      const a = (await claim('storage-a'))!;
      assert.deepEqual([a.key, a.node, a.state], ['on-a', 'storage-a', 'running']);
      // An expired lease is taken over by the same node only.
      const later = now + 120_000;
      assert.equal((await m.jobs.claim(['k'], 'w-x', later, 60_000, () => 10, 'storage-x'))?.key, 'any', 'a lapsed node-less job goes to anyone');
      assert.equal(await m.jobs.claim(['k'], 'w-x', later, 60_000, () => 10, 'storage-x'), null, "storage-a's and storage-b's lapsed jobs are not taken over elsewhere");
      assert.equal(await m.jobs.claim(['k'], 'w-none', later, 60_000, () => 10, null), null);
      assert.equal((await m.jobs.claim(['k'], 'w-a2', later, 60_000, () => 10, 'storage-a'))?.key, 'on-a', 'only by their own node');
      assert.equal((await m.jobs.get(forA.id))?.leaseToken, 2);
    }));

    it('jobs: a restart requeues what was running; releaseLeases frees one owner', withStore(async (m) => {
      await m.jobs.enqueue({ kind: 'k', key: 'r1', group: 'g', payload: {} });
      await m.jobs.enqueue({ kind: 'k', key: 'r2', group: 'g', payload: {} });
      const now = Date.now();
      await m.jobs.claim(['k'], 'w1', now, 60_000, () => 5, null);
      await m.jobs.claim(['k'], 'w2', now, 60_000, () => 5, null);
      assert.equal(await m.jobs.releaseLeases('w1'), 1);
      assert.equal(await m.jobs.requeueAllRunning(), 1);
      assert.deepEqual((await m.jobs.list(['queued'])).map((j) => j.key).sort(), ['r1', 'r2']);
    }));

    it('disk bases: set, replace, read, roots, delete', withStore(async (m) => {
      await m.diskBases.set('v-1', 'm1', 3);
      await m.diskBases.set('v-2', null, 0);
      await m.diskBases.set('v-1', 'm9', 7);
      assert.deepEqual(await m.diskBases.get('v-1'), { manifestId: 'm9', generation: 7 });
      assert.deepEqual(await m.diskBases.manifestIds(), ['m9']);
      await m.diskBases.delete('v-1');
      assert.equal(await m.diskBases.get('v-1'), null);
    }));

    it("lists: another account's id used as a marker answers like an unknown marker (an empty page)", withStore(async (m) => {
      const mine = volume({ accountId: 'bob' });
      const theirs = volume({ accountId: 'alice' });
      await m.volumes.insertIfAbsent(mine);
      await m.volumes.insertIfAbsent(theirs);
      assert.deepEqual((await m.volumes.list('bob', {}, { marker: theirs.id, maxKeys: 10 })).items, []);
      assert.deepEqual((await m.volumes.list('bob', {}, { marker: 'v-unknown0', maxKeys: 10 })).items, []);
      assert.deepEqual((await m.volumes.list('bob', {}, { marker: mine.id, maxKeys: 10 })).items.map((v) => v.id), [mine.id]);
      const s1 = snapshot({ accountId: 'alice' });
      await m.snapshots.insertIfAbsent(s1);
      assert.deepEqual((await m.snapshots.list('bob', {}, { marker: s1.id, maxKeys: 10 })).items, []);
    }));

    it('GC-2: gc holds: the oldest live hold counts; closed and lapsed ones do not; a lapsed hold never revives', withStore(async (m) => {
      const t = 1_000_000;
      assert.equal(await m.gcHolds.oldestLiveStart(t), null);
      const a = await m.gcHolds.open('capture a', t, 60_000);
      const b = await m.gcHolds.open('capture b', t + 10, 60_000);
      assert.equal(a.startedAt, t);
      assert.equal(await m.gcHolds.oldestLiveStart(t + 20), t);
      await m.gcHolds.close(a.id);
      assert.equal(await m.gcHolds.oldestLiveStart(t + 20), t + 10);
      assert.equal(await m.gcHolds.renew(b.id, t + 50_000, 60_000), true, 'renewed while live');
      assert.equal(await m.gcHolds.oldestLiveStart(t + 100_000), t + 10, 'renewal extends the lease');
      assert.equal(await m.gcHolds.oldestLiveStart(t + 200_000), null, 'lapsed: no longer counts');
      assert.equal(await m.gcHolds.renew(b.id, t + 200_000, 60_000), false, 'a lapsed hold cannot be renewed');
      assert.equal(await m.gcHolds.oldestLiveStart(t + 200_001), null);
      assert.equal(await m.gcHolds.renew(a.id, t + 30, 60_000), false, 'a closed hold cannot be renewed');
      assert.ok((await m.gcHolds.purgeLapsedBefore(t + 300_000)) >= 2);
      const c = await m.gcHolds.open('capture c', t, 60_000);
      assert.equal(await m.gcHolds.closeAll(), 1);
      assert.equal(await m.gcHolds.oldestLiveStart(t + 1), null);
      assert.equal(await m.gcHolds.renew(c.id, t + 2, 60_000), false);
    }));

    it('GC-3: publishUnderHold publishes only while the hold is live, in one step', withStore(async (m) => {
      const t = 2_000_000;
      const live = await m.gcHolds.open('capture', t, 60_000);
      const s1 = snapshot();
      await m.snapshots.insertIfAbsent(s1);
      const published = await m.snapshots.publishUnderHold(s1.id, { status: 'Available', manifestId: 'm1', progress: 100 }, live.id, t + 1000);
      assert.equal(published?.status, 'Available');
      assert.equal(published?.manifestId, 'm1');
      const s2 = snapshot();
      await m.snapshots.insertIfAbsent(s2);
      assert.equal(await m.snapshots.publishUnderHold(s2.id, { status: 'Available', manifestId: 'm2' }, live.id, t + 61_000), null, 'lapsed hold: refused');
      assert.equal((await m.snapshots.getAny(s2.id))?.status, 'Creating');
      await m.gcHolds.close(live.id);
      assert.equal(await m.snapshots.publishUnderHold(s2.id, { status: 'Available', manifestId: 'm2' }, live.id, t + 2000), null, 'closed hold: refused');
      const other = await m.gcHolds.open('capture', t, 60_000);
      assert.equal(await m.snapshots.publishUnderHold(s1.id, { status: 'Available' }, other.id, t + 10), null, 'only a Creating snapshot is published');
    }));

    it('jobs: progressedAt is set by the first claim and by saveProgress, not by the enqueue', withStore(async (m) => {
      const job = await m.jobs.enqueue({ kind: 'k', key: `p-${Date.now()}`, group: 'g', payload: {} });
      assert.equal(job.progressedAt, null);
      const claimed = await m.jobs.claim(['k'], 'w', Date.now(), 30_000, () => Infinity, null);
      assert.ok(claimed && claimed.progressedAt !== null);
      await new Promise((r) => setTimeout(r, 5));
      await m.jobs.saveProgress(job.id, claimed.leaseToken, { x: 1 });
      const after = await m.jobs.get(job.id);
      assert.ok(after!.progressedAt! > claimed!.progressedAt!);
    }));

    it('volumes: the storage node is kept, updated, and counted per node (COORD-2 placement)', withStore(async (m) => {
      const a1 = volume({ storageNode: 'storage-a' });
      const a2 = volume({ storageNode: 'storage-a', status: 'Creating' });
      const b1 = volume({ storageNode: 'storage-b' });
      const local = volume();
      const leaving = volume({ storageNode: 'storage-b', status: 'Deleting' });
      const gone = volume({ storageNode: 'storage-c' });
      for (const v of [a1, a2, b1, local, leaving, gone]) await m.volumes.insertIfAbsent(v);
      await m.volumes.delete(gone.id);
      assert.deepEqual(await m.volumes.get('acct', a1.id), a1);
      assert.deepEqual(await m.volumes.getAny(b1.id), b1);
      assert.deepEqual(await m.volumes.getAny(local.id), local, 'no storage node: read back without one');
      assert.equal((await m.volumes.getAny(local.id))?.storageNode ?? null, null);
      const listed = (await m.volumes.list('acct', { ids: [a1.id, local.id] }, { marker: null, maxKeys: 10 })).items;
      assert.deepEqual(listed.map((v) => v.storageNode ?? null), ['storage-a', null]);
      assert.deepEqual(await m.volumes.countByNode(), { 'storage-a': 2, 'storage-b': 1 }, 'Deleting, deleted and node-less volumes do not count');
      assert.equal((await m.volumes.update(local.id, { storageNode: 'storage-b' }, ['Available']))?.storageNode, 'storage-b');
      assert.equal((await m.volumes.update(a2.id, { storageNode: null }))?.storageNode ?? null, null);
      assert.deepEqual(await m.volumes.countByNode(), { 'storage-a': 1, 'storage-b': 2 });
      assert.equal((await m.volumes.update(a1.id, { status: 'Deleting' }))?.storageNode, 'storage-a', 'another patch keeps the node');
      assert.deepEqual(await m.volumes.countByNode(), { 'storage-b': 2 });
    }));

    it('COORD-4: node registry: heartbeats upsert; only recent ones are live, ordered by id', withStore(async (m) => {
      const t = 50_000_000;
      const storage = { id: 'storage-b', roles: ['storage'], url: 'http://10.0.0.2:8080', nbdAddress: '10.0.0.2:10809', startedAt: t };
      const api = { id: 'api-a', roles: ['api', 'worker'], url: 'http://10.0.0.1:8080', nbdAddress: null, startedAt: t };
      assert.equal(await m.nodes.get('storage-b'), null);
      await m.nodes.heartbeat(storage, t);
      await m.nodes.heartbeat(api, t + 1000);
      assert.deepEqual(await m.nodes.get('storage-b'), { ...storage, heartbeatAt: t });
      assert.deepEqual(await m.nodes.listLive(t + 1000, 5000), [{ ...api, heartbeatAt: t + 1000 }, { ...storage, heartbeatAt: t }]);
      assert.deepEqual((await m.nodes.listLive(t + 5000, 5000)).map((n) => n.id), ['api-a', 'storage-b'], 'a heartbeat exactly maxAgeMs old is live');
      assert.deepEqual((await m.nodes.listLive(t + 5001, 5000)).map((n) => n.id), ['api-a'], 'one a millisecond older is not');
      // A restart of storage-b: the same id, a new start, a new address; the row is replaced.
      const restarted = { ...storage, url: 'http://10.0.0.3:8080', nbdAddress: '10.0.0.3:10809', startedAt: t + 9000 };
      await m.nodes.heartbeat(restarted, t + 9500);
      assert.deepEqual(await m.nodes.get('storage-b'), { ...restarted, heartbeatAt: t + 9500 });
      assert.deepEqual((await m.nodes.listLive(t + 9500, 5000)).map((n) => n.id), ['storage-b']);
      await m.nodes.remove('storage-b');
      await m.nodes.remove('never-was');
      assert.equal(await m.nodes.get('storage-b'), null);
      assert.deepEqual((await m.nodes.listLive(t + 1000, 5000)).map((n) => n.id), ['api-a']);
    }));

    it('COORD-3: locks: one owner at a time; the owner extends; a lapsed lock is taken over; only the owner releases', withStore(async (m) => {
      const t = 70_000_000;
      assert.equal(await m.locks.tryAcquire('gc', 'p1', t, 10_000), true, 'free');
      assert.equal(await m.locks.tryAcquire('gc', 'p2', t + 1, 10_000), false, 'held by p1');
      assert.equal(await m.locks.tryAcquire('housekeeping', 'p2', t + 1, 10_000), true, 'locks are independent by name');
      assert.equal(await m.locks.tryAcquire('gc', 'p1', t + 8000, 10_000), true, 'the owner extends to now + leaseMs');
      assert.equal(await m.locks.tryAcquire('gc', 'p2', t + 12_000, 10_000), false, 'still held: the extension counts from t + 8000');
      assert.equal(await m.locks.tryAcquire('gc', 'p2', t + 18_000, 10_000), true, 'lapsed at exactly its lease_until: taken over');
      assert.equal(await m.locks.tryAcquire('gc', 'p1', t + 18_001, 10_000), false, 'the former owner is locked out');
      await m.locks.release('gc', 'p1');
      assert.equal(await m.locks.tryAcquire('gc', 'p3', t + 18_002, 10_000), false, 'a release by a non-owner does nothing');
      await m.locks.release('gc', 'p2');
      assert.equal(await m.locks.tryAcquire('gc', 'p3', t + 18_003, 10_000), true, 'released by its owner: free at once');
      assert.equal(await m.locks.tryAcquire('housekeeping', 'p1', t + 10_000, 10_000), false, "p2's, live until t + 10_001");
      assert.equal(await m.locks.tryAcquire('housekeeping', 'p1', t + 10_001, 10_000), true, 'lapsed, never extended');
      await m.locks.release('nothing', 'p1');
    }));
  });
}
