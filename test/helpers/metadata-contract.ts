/**
 * The MetadataStore contract, as one suite that every implementation runs (SQLite today,
 * PostgreSQL next): atomic inserts, guarded updates, paging, the snapshot quota, clientToken
 * records, and the job queue's claim/lease/retry rules.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { Snapshot } from '../../src/domain/snapshot.ts';
import type { Volume } from '../../src/domain/volume.ts';
import type { MetadataStore } from '../../src/metadata/metadata-store.ts';

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
      const first = await m.jobs.claim(['k'], 'w1', now, 30_000, cap);
      assert.deepEqual([first?.key, first?.state, first?.attempts, (first?.payload as { n: number }).n], ['a', 'running', 1, 1]);
      const second = await m.jobs.claim(['k'], 'w1', now, 30_000, cap);
      assert.equal(second?.key, 'c', 'g1 is at its cap, so the next claim skips to another group');
      assert.equal(await m.jobs.claim(['k'], 'w1', now, 30_000, cap), null, 'b waits for g1; later waits for its time');
      assert.equal(await m.jobs.claim(['other-kind'], 'w1', now, 30_000, cap), null);
      await m.jobs.finish(first!.id, 'w1', 'done', null);
      assert.equal((await m.jobs.claim(['k'], 'w1', now, 30_000, cap))?.key, 'b');
    }));

    it('jobs: leases expire and are taken over; retry and finish need the lease holder; progress persists', withStore(async (m) => {
      await m.jobs.enqueue({ kind: 'k', key: 'x', group: 'g', payload: {} });
      const now = Date.now();
      const job = (await m.jobs.claim(['k'], 'w1', now, 1000, () => 5))!;
      assert.equal(await m.jobs.claim(['k'], 'w2', now + 500, 1000, () => 5), null);
      assert.equal(await m.jobs.renewLease(job.id, 'w2', now + 5000), false);
      const taken = (await m.jobs.claim(['k'], 'w2', now + 1500, 1000, () => 5))!;
      assert.deepEqual([taken.id, taken.leaseOwner, taken.attempts], [job.id, 'w2', 2]);
      await m.jobs.saveProgress(job.id, { percent: 40 });
      await m.jobs.retryLater(job.id, 'w1', now, 'stale owner');
      assert.equal((await m.jobs.get(job.id))?.state, 'running', 'a stale owner cannot requeue');
      await m.jobs.retryLater(job.id, 'w2', now + 10_000, 'boom');
      const queued = (await m.jobs.get(job.id))!;
      assert.deepEqual([queued.state, queued.lastError, queued.progress], ['queued', 'boom', { percent: 40 }]);
      assert.equal(await m.jobs.claim(['k'], 'w2', now + 2000, 1000, () => 5), null, 'backoff: not before run-after');
      const again = (await m.jobs.claim(['k'], 'w3', now + 10_000, 1000, () => 5))!;
      await m.jobs.finish(again.id, 'w3', 'failed', 'gave up');
      assert.deepEqual((await m.jobs.list(['failed'])).map((j) => [j.key, j.lastError]), [['x', 'gave up']]);
      assert.equal(await m.jobs.deleteFinishedBefore(Date.now() + 1000), 1);
    }));

    it('jobs: a restart requeues what was running; releaseLeases frees one owner', withStore(async (m) => {
      await m.jobs.enqueue({ kind: 'k', key: 'r1', group: 'g', payload: {} });
      await m.jobs.enqueue({ kind: 'k', key: 'r2', group: 'g', payload: {} });
      const now = Date.now();
      await m.jobs.claim(['k'], 'w1', now, 60_000, () => 5);
      await m.jobs.claim(['k'], 'w2', now, 60_000, () => 5);
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
      const claimed = await m.jobs.claim(['k'], 'w', Date.now(), 30_000, () => Infinity);
      assert.ok(claimed && claimed.progressedAt !== null);
      await new Promise((r) => setTimeout(r, 5));
      await m.jobs.saveProgress(job.id, { x: 1 });
      const after = await m.jobs.get(job.id);
      assert.ok(after!.progressedAt! > claimed!.progressedAt!);
    }));
  });
}
