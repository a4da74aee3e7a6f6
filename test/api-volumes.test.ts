import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { startHarness, bobKeys, type Harness } from './helpers/region-harness.ts';
import { assertBceError } from './helpers/bce-assert.ts';
import { prng } from './helpers/block-records.ts';

let h: Harness;
before(async () => (h = await startHarness('bj')));
after(async () => h.close());

async function createVolume(body: Record<string, unknown> = { cdsSizeInGB: 1 }, query = ''): Promise<string[]> {
  const res = await h.call('POST', `/v2/volume${query}`, body);
  assert.equal(res.status, 200, JSON.stringify(res.json));
  return res.json.volumeIds;
}

async function waitStatus(id: string, status: string): Promise<any> {
  return h.waitFor(async () => {
    const res = await h.call('GET', `/v2/volume/${id}`);
    return res.json.volume?.status === status ? res.json.volume : null;
  });
}

test('create a disk: Creating then Available, with the BCC model', async () => {
  const [id] = await createVolume({ cdsSizeInGB: 2, name: 'data-1', description: 'first disk', storageType: 'ssd', zoneName: 'cn-bj-b' });
  assert.match(id!, /^v-[A-Za-z0-9]{8}$/);
  const v = await waitStatus(id!, 'Available');
  assert.deepEqual(v, {
    id, name: 'data-1', diskSizeInGB: 2, paymentTiming: 'Postpaid', createTime: v.createTime, expireTime: null, status: 'Available',
    type: 'Cds', storageType: 'ssd', desc: 'first disk', zoneName: 'cn-bj-b', regionId: 'bj', isSystemVolume: false, attachments: [],
    sourceSnapshotId: '', snapshotNum: '0', encrypted: false, tags: [],
  });
  assert.match(v.createTime, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/);
});

test('Go SDK quirks: nulls, empty strings and zeros mean "not given"; unknown fields are ignored', async () => {
  const [id] = await createVolume({
    cdsSizeInGB: 1, purchaseCount: 0, storageType: '', zoneName: '', name: null, tags: null, encryptKey: '', renewTime: 0,
    billing: { paymentTiming: 'Postpaid' }, somethingNew: { x: 1 },
  });
  const v = await waitStatus(id!, 'Available');
  assert.equal(v.storageType, 'hp1');
  assert.equal(v.zoneName, 'cn-bj-a');
});

test('purchaseCount creates several disks in one call', async () => {
  const ids = await createVolume({ cdsSizeInGB: 1, purchaseCount: 3 });
  assert.equal(ids.length, 3);
  assert.equal(new Set(ids).size, 3);
  for (const id of ids) await waitStatus(id, 'Available');
});

test('bad create parameters answer 400 with the right code', async () => {
  const cases: Array<[unknown, number, string]> = [
    [{ cdsSizeInGB: 0 }, 400, 'Volume.DiskSizeInvalid'],
    [{}, 400, 'Volume.DiskSizeInvalid'],
    [{ cdsSizeInGB: 32766 }, 400, 'Volume.DiskSizeInvalid'],
    [{ cdsSizeInGB: -5 }, 400, 'Volume.DiskSizeInvalid'],
    [{ cdsSizeInGB: 1.5 }, 400, 'InappropriateJSON'],
    [{ cdsSizeInGB: 'big' }, 400, 'InappropriateJSON'],
    [{ cdsSizeInGB: 1, purchaseCount: 6 }, 400, 'BadRequest'],
    [{ cdsSizeInGB: 1, storageType: 'floppy' }, 400, 'BadRequest'],
    [{ cdsSizeInGB: 1, zoneName: 'cn-gz-a' }, 400, 'BadRequest'],
    [{ cdsSizeInGB: 1, name: 7 }, 400, 'InappropriateJSON'],
    [{ cdsSizeInGB: 1, snapshotId: 's-nothere1' }, 404, 'NoSuchObject'],
    [[1, 2], 400, 'InappropriateJSON'],
    ['{"cdsSizeInGB": 1', 400, 'MalformedJSON'],
    ['', 400, 'MalformedJSON'],
  ];
  for (const [body, status, code] of cases) assertBceError(await h.call('POST', '/v2/volume', body), status, code);
});

test('clientToken: same token and body return the same ids without new disks; another body is 403 IdempotentParameterMismatch', async () => {
  const token = `tok-${Date.now()}`;
  const first = await createVolume({ cdsSizeInGB: 1, name: 'idem' }, `?clientToken=${token}`);
  const again = await createVolume({ name: 'idem', cdsSizeInGB: 1 }, `?clientToken=${token}`);
  assert.deepEqual(again, first);
  const all = await h.call('GET', '/v2/volume?name=idem');
  assert.equal(all.json.volumes.length, 1);
  assertBceError(await h.call('POST', `/v2/volume?clientToken=${token}`, { cdsSizeInGB: 2, name: 'idem' }), 403, 'IdempotentParameterMismatch');
  assertBceError(await h.call('POST', `/v2/volume?clientToken=${'x'.repeat(65)}`, { cdsSizeInGB: 1 }), 400, 'InappropriateJSON');
  assertBceError(await h.call('POST', `/v2/volume?clientToken=${encodeURIComponent('tök')}`, { cdsSizeInGB: 1 }), 400, 'InappropriateJSON');
  // The same token in another operation is another scope.
  await waitStatus(first[0]!, 'Available');
  const snap = await h.call('POST', `/v2/snapshot?clientToken=${token}`, { volumeId: first[0], snapshotName: 'idem' });
  assert.equal(snap.status, 200, JSON.stringify(snap.json));
});

test('list pages with marker (inclusive, creation order) and filters by zone and name', async () => {
  const ids = await createVolume({ cdsSizeInGB: 1, purchaseCount: 5, name: 'paged', zoneName: 'cn-bj-c' });
  const seen: string[] = [];
  let marker = '';
  for (let page = 0; page < 10; page++) {
    const res = await h.call('GET', `/v2/volume?zoneName=cn-bj-c&maxKeys=2${marker ? `&marker=${marker}` : ''}`);
    assert.equal(res.status, 200);
    assert.equal(res.json.maxKeys, 2);
    assert.equal(res.json.marker, marker);
    seen.push(...res.json.volumes.map((v: any) => v.id));
    if (!res.json.isTruncated) {
      assert.equal('nextMarker' in res.json, false);
      break;
    }
    marker = res.json.nextMarker;
    assert.equal(marker, ids[seen.length]);
  }
  assert.deepEqual(seen, ids);
  const byName = await h.call('GET', '/v2/volume?name=paged&maxKeys=1000');
  assert.equal(byName.json.volumes.length, 5);
  assertBceError(await h.call('GET', '/v2/volume?maxKeys=1001'), 400, 'BadRequest');
  assertBceError(await h.call('GET', '/v2/volume?maxKeys=abc'), 400, 'BadRequest');
});

test('another account sees none of it: 404 NoSuchObject exactly like a missing disk', async () => {
  const [id] = await createVolume({ cdsSizeInGB: 1 });
  await waitStatus(id!, 'Available');
  const theirs = await h.call('GET', `/v2/volume/${id}`, undefined, { keys: bobKeys });
  const missing = await h.call('GET', '/v2/volume/v-00000000', undefined, { keys: bobKeys });
  assertBceError(theirs, 404, 'NoSuchObject');
  assertBceError(missing, 404, 'NoSuchObject');
  assert.equal((await h.call('GET', '/v2/volume', undefined, { keys: bobKeys })).json.volumes.length, 0);
  assertBceError(await h.call('DELETE', `/v2/volume/${id}`, undefined, { keys: bobKeys }), 404, 'NoSuchObject');
});

test('delete: only Available/Expired/Error; gone afterwards; its snapshots stay', async () => {
  const [id] = await createVolume({ cdsSizeInGB: 1 });
  const creating = await h.call('DELETE', `/v2/volume/${id}`);
  // Either still Creating (409) or already Available (200): both are legal outcomes of this race.
  if (creating.status !== 200) {
    assertBceError(creating, 409, 'Volume.DiskStatusCannotBeDeleted');
    await waitStatus(id!, 'Available');
    const snap = await h.call('POST', '/v2/snapshot', { volumeId: id, snapshotName: 'keep-me' });
    await h.waitFor(async () => (await h.call('GET', `/v2/snapshot/${snap.json.snapshotId}`)).json.snapshot.status === 'Available');
    assert.equal((await h.call('DELETE', `/v2/volume/${id}`)).status, 200);
    assert.equal((await h.call('GET', `/v2/snapshot/${snap.json.snapshotId}`)).json.snapshot.status, 'Available');
  }
  assertBceError(await h.call('GET', `/v2/volume/${id}`), 404, 'NoSuchObject');
  assertBceError(await h.call('DELETE', `/v2/volume/${id}`), 404, 'NoSuchObject');
});

test('resize grows an Available disk; smaller or equal sizes are refused', async () => {
  const [id] = await createVolume({ cdsSizeInGB: 1 });
  await waitStatus(id!, 'Available');
  const res = await h.call('PUT', `/v2/volume/${id}?resize`, { newCdsSizeInGB: 3 });
  assert.equal(res.status, 200);
  assert.deepEqual(res.json, {});
  assert.equal((await waitStatus(id!, 'Available')).diskSizeInGB, 3);
  assertBceError(await h.call('PUT', `/v2/volume/${id}?resize`, { newCdsSizeInGB: 2 }), 400, 'Volume.DiskSizeInvalid');
  assertBceError(await h.call('PUT', `/v2/volume/${id}?resize`, {}), 400, 'InappropriateJSON');
  assertBceError(await h.call('PUT', `/v2/volume/${id}?resize=`, { newCdsSizeInGB: 3 }), 400, 'Volume.DiskSizeInvalid');
  assertBceError(await h.call('PUT', `/v2/volume/${id}?frobnicate`, {}), 400, 'BadRequest');
});

test('rollback: with ?rollback and ?rollback=, only to a snapshot of this disk, only when Available', async () => {
  const [a, b] = await createVolume({ cdsSizeInGB: 1, purchaseCount: 2 });
  await waitStatus(a!, 'Available');
  await waitStatus(b!, 'Available');
  const snap = (await h.call('POST', '/v2/snapshot', { volumeId: a, snapshotName: 'rb' })).json.snapshotId;
  await h.waitFor(async () => (await h.call('GET', `/v2/snapshot/${snap}`)).json.snapshot.status === 'Available');
  assertBceError(await h.call('PUT', `/v2/volume/${b}?rollback`, { snapshotId: snap }), 404, 'NoSuchObject');
  assertBceError(await h.call('PUT', `/v2/volume/${a}?rollback`, {}), 400, 'InappropriateJSON');
  assertBceError(await h.call('PUT', `/v2/volume/${a}?rollback`, { snapshotId: 's-missing1' }), 404, 'NoSuchObject');
  for (const flag of ['', '=']) {
    const put = await h.call('PUT', `/v2/volume/${a}/data?offset=0`, Buffer.alloc(4096, 0x77), { headers: { 'content-type': 'application/octet-stream' } });
    assert.equal(put.status, 200);
    // Hold the rollback job, so that the disk is seen while the rollback is under way.
    await h.region.jobs.stop();
    try {
      assert.equal((await h.call('PUT', `/v2/volume/${a}?rollback${flag}`, { snapshotId: snap })).status, 200);
      assert.equal((await h.call('GET', `/v2/volume/${a}`)).json.volume.status, 'SnapshotProcessing');
      // While the rollback runs the disk is not Available: a second rollback is refused.
      assertBceError(await h.call('PUT', `/v2/volume/${a}?rollback`, { snapshotId: snap }), 409, 'OperationDenied');
    } finally {
      h.region.jobs.start();
    }
    await waitStatus(a!, 'Available');
    const back = await h.call('GET', `/v2/volume/${a}/data`, undefined, { headers: { range: 'bytes=0-4095' } });
    assert.ok(back.raw.equals(Buffer.alloc(4096)), 'the disk holds the snapshot again');
  }
});

test('list filters the SDKs send: volumeIds narrows; instanceId, clusterId, prepay and system-disk filters match nothing here', async () => {
  const ids = await createVolume({ cdsSizeInGB: 1, purchaseCount: 3, name: 'filtered' });
  const picked = await h.call('GET', `/v2/volume?volumeIds=${ids[0]},${ids[2]}`);
  assert.deepEqual(picked.json.volumes.map((v: any) => v.id), [ids[0], ids[2]]);
  for (const q of ['instanceId=i-abcdefgh', 'clusterId=c-1', 'chargeFilter=prepay', 'usageFilter=system']) {
    const res = await h.call('GET', `/v2/volume?name=filtered&${q}`);
    assert.equal(res.status, 200);
    assert.deepEqual(res.json.volumes, [], q);
  }
  assert.equal((await h.call('GET', '/v2/volume?name=filtered&chargeFilter=postpay&usageFilter=cds')).json.volumes.length, 3);
});

test('resize can change the storage type (with or without growing), but not into a local disk', async () => {
  const [id] = await createVolume({ cdsSizeInGB: 1, storageType: 'hp1' });
  await waitStatus(id!, 'Available');
  assert.equal((await h.call('PUT', `/v2/volume/${id}?resize`, { newVolumeType: 'ssd' })).status, 200);
  let v = await waitStatus(id!, 'Available');
  assert.deepEqual([v.storageType, v.diskSizeInGB], ['ssd', 1]);
  assert.equal((await h.call('PUT', `/v2/volume/${id}?resize`, { newCdsSizeInGB: 2, newVolumeType: 'premium_ssd' })).status, 200);
  v = await waitStatus(id!, 'Available');
  assert.deepEqual([v.storageType, v.diskSizeInGB], ['premium_ssd', 2]);
  assertBceError(await h.call('PUT', `/v2/volume/${id}?resize`, { newVolumeType: 'local-ssd' }), 400, 'BadRequest');
  assertBceError(await h.call('PUT', `/v2/volume/${id}?resize`, { newVolumeType: 'premium_ssd' }), 400, 'BadRequest');
  assertBceError(await h.call('PUT', `/v2/volume/${id}?resize`, { newVolumeType: 'tape' }), 400, 'BadRequest');
});

/**
 * Racing requests: a snapshot create and a rollback, resize or delete of the same disk, sent
 * together (the second 0..20 event-loop turns after the first, in both orders), many times. The rule
 * (design.md): each of rollback/resize/delete sets its own status first and then looks for a
 * Creating snapshot, while snapshot create inserts first and then re-reads the disk: of two racing
 * requests the second always sees the first. So they never both proceed (both may back off); a
 * refusal is 409 and leaves the disk and its snapshots as they were.
 *
 * With SQLite every store call completes synchronously, so one request's checks could never
 * interleave with another's and any order of checks would pass. The races below therefore run with
 * latency on the disk and snapshot stores (0-3 event-loop turns per call, seeded), as any networked
 * database has: the requests' steps then really interleave. The job runner is held during each race,
 * so an accepted snapshot or rollback is still in progress when the other request is judged.
 */
async function race(first: () => Promise<any>, second: () => Promise<any>, turns: number): Promise<[any, any]> {
  const later = async () => {
    for (let i = 0; i < turns; i++) await new Promise((r) => setImmediate(r));
    return second();
  };
  return Promise.all([first(), later()]);
}

/** Every call of a metadata repository takes 0-3 turns of the event loop before it runs. */
function withLatency<T extends object>(repo: T, rnd: () => number): T {
  return new Proxy(repo, {
    get(target, prop, receiver) {
      const value = Reflect.get(target, prop, receiver);
      if (typeof value !== 'function') return value;
      return async (...args: unknown[]) => {
        for (let i = Math.floor(rnd() * 4); i > 0; i--) await new Promise((r) => setImmediate(r));
        return value.apply(target, args);
      };
    },
  });
}

/** Runs `body` with latency on the disk and snapshot stores and the job runner held. */
async function racing(seed: number, body: () => Promise<void>): Promise<void> {
  const meta = h.region.meta as unknown as Record<'volumes' | 'snapshots', object>;
  const saved = { volumes: meta.volumes, snapshots: meta.snapshots };
  const rnd = prng(seed);
  meta.volumes = withLatency(saved.volumes, rnd);
  meta.snapshots = withLatency(saved.snapshots, rnd);
  await h.region.jobs.stop();
  try {
    await body();
  } finally {
    Object.assign(meta, saved);
    h.region.jobs.start();
  }
}

/**
 * Schedules: which request goes first, and how many turns later the other one follows. 48 rather
 * than 24: with 24 the break suite's `snapshot-create-no-second-look` survived about one run in
 * three (the HTTP and SQLite timings around the turns vary); with 48 it was killed 10 times in 10.
 */
const schedules = Array.from({ length: 48 }, (_, i) => ({ snapshotFirst: i % 2 === 0, turns: [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 4, 4, 5, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17][i >> 1]! }));

async function creatingSnapshots(volumeId: string): Promise<any[]> {
  return (await h.call('GET', `/v2/snapshot?volumeId=${volumeId}&maxKeys=1000`)).json.snapshots.filter((s: any) => s.status === 'Creating');
}

async function settle(volumeId: string | null, snapshotId: string | null): Promise<void> {
  h.region.jobs.start();
  if (snapshotId) await h.waitFor(async () => (await h.call('GET', `/v2/snapshot/${snapshotId}`)).json.snapshot.status === 'Available');
  if (volumeId) await waitStatus(volumeId, 'Available');
  await h.region.jobs.stop();
}

async function racingSnapshot(volumeId: string, other: () => Promise<any>, snapshotFirst: boolean, turns: number): Promise<{ snap: any; res: any }> {
  const snapshot = () => h.call('POST', '/v2/snapshot', { volumeId, snapshotName: 'racer' });
  const [a, b] = await race(snapshotFirst ? snapshot : other, snapshotFirst ? other : snapshot, turns);
  return snapshotFirst ? { snap: a, res: b } : { snap: b, res: a };
}

test('racing requests: snapshot create against rollback, many times: never both proceed, a refusal leaves everything as it was', async () => {
  const [id] = await createVolume({ cdsSizeInGB: 1 });
  await waitStatus(id!, 'Available');
  const base = (await h.call('POST', '/v2/snapshot', { volumeId: id, snapshotName: 'base' })).json.snapshotId;
  await h.waitFor(async () => (await h.call('GET', `/v2/snapshot/${base}`)).json.snapshot.status === 'Available');
  const outcomes = new Map<string, number>();
  await racing(1, async () => {
    for (const { snapshotFirst, turns } of schedules) {
      const { snap, res } = await racingSnapshot(id!, () => h.call('PUT', `/v2/volume/${id}?rollback`, { snapshotId: base }), snapshotFirst, turns);
      const outcome = `snapshot ${snap.status} / rollback ${res.status}`;
      outcomes.set(outcome, (outcomes.get(outcome) ?? 0) + 1);
      assert.ok(!(snap.status === 200 && res.status === 200), `both proceeded (${snapshotFirst ? 'snapshot' : 'rollback'} first, ${turns} turns)`);
      if (snap.status !== 200) assertBceError(snap, 409, 'OperationDenied');
      if (res.status !== 200) assertBceError(res, 409, 'OperationDenied');
      const volume = (await h.call('GET', `/v2/volume/${id}`)).json.volume;
      assert.equal(volume.status, res.status === 200 ? 'SnapshotProcessing' : 'Available', outcome);
      assert.deepEqual((await creatingSnapshots(id!)).map((s: any) => s.id), snap.status === 200 ? [snap.json.snapshotId] : [], outcome);
      await settle(id!, snap.status === 200 ? snap.json.snapshotId : null);
    }
  });
  if (process.env.RACE_LOG) console.error(JSON.stringify([...outcomes]));
  assert.ok(outcomes.size >= 2, `the schedules produced more than one outcome: ${JSON.stringify([...outcomes])}`);
});

test('racing requests: snapshot create against resize, many times: never both in progress, a refusal leaves the size as it was', async () => {
  const [id] = await createVolume({ cdsSizeInGB: 1 });
  await waitStatus(id!, 'Available');
  const outcomes = new Map<string, number>();
  let size = 1;
  await racing(2, async () => {
    for (const { snapshotFirst, turns } of schedules) {
      const { snap, res } = await racingSnapshot(id!, () => h.call('PUT', `/v2/volume/${id}?resize`, { newCdsSizeInGB: size + 1 }), snapshotFirst, turns);
      const outcome = `snapshot ${snap.status} / resize ${res.status}`;
      outcomes.set(outcome, (outcomes.get(outcome) ?? 0) + 1);
      if (snap.status !== 200) assertBceError(snap, 409, 'OperationDenied');
      if (res.status !== 200) assertBceError(res, 409, 'OperationDenied');
      if (res.status === 200) size++;
      const volume = (await h.call('GET', `/v2/volume/${id}`)).json.volume;
      assert.deepEqual([volume.status, volume.diskSizeInGB], ['Available', size], outcome);
      if (snap.status === 200) {
        // Both may succeed only one after the other: the resize was over before the snapshot was
        // taken, so the snapshot has the new size. A snapshot of the old size means they overlapped.
        const s = (await h.call('GET', `/v2/snapshot/${snap.json.snapshotId}`)).json.snapshot;
        assert.equal(s.sizeInGB, size, `the snapshot and the resize overlapped (${outcome}, ${snapshotFirst ? 'snapshot' : 'resize'} first, ${turns} turns)`);
      }
      assert.deepEqual((await creatingSnapshots(id!)).map((s: any) => s.id), snap.status === 200 ? [snap.json.snapshotId] : [], outcome);
      await settle(null, snap.status === 200 ? snap.json.snapshotId : null);
    }
  });
  if (process.env.RACE_LOG) console.error(JSON.stringify([...outcomes]));
  assert.ok(outcomes.size >= 2, `the schedules produced more than one outcome: ${JSON.stringify([...outcomes])}`);
});

test('racing requests: snapshot create against delete, many times: never both proceed, a refused delete leaves the disk Available', async () => {
  const ids: string[] = [];
  while (ids.length < schedules.length) ids.push(...(await createVolume({ cdsSizeInGB: 1, purchaseCount: 5 })));
  for (const id of ids) await waitStatus(id, 'Available');
  const outcomes = new Map<string, number>();
  await racing(3, async () => {
    for (const [i, { snapshotFirst, turns }] of schedules.entries()) {
      const id = ids[i]!;
      const { snap, res } = await racingSnapshot(id, () => h.call('DELETE', `/v2/volume/${id}`), snapshotFirst, turns);
      const outcome = `snapshot ${snap.status} / delete ${res.status}`;
      outcomes.set(outcome, (outcomes.get(outcome) ?? 0) + 1);
      assert.ok(!(snap.status === 200 && res.status === 200), `both proceeded (${snapshotFirst ? 'snapshot' : 'delete'} first, ${turns} turns)`);
      if (res.status !== 200) assertBceError(res, 409, 'Volume.DiskStatusCannotBeDeleted');
      if (snap.status !== 200) assert.ok([404, 409].includes(snap.status), `${snap.status} ${JSON.stringify(snap.json)}`);
      const volume = await h.call('GET', `/v2/volume/${id}`);
      if (res.status === 200) assert.equal(volume.status, 404);
      else assert.equal(volume.json.volume.status, 'Available');
      assert.deepEqual((await creatingSnapshots(id)).map((s: any) => s.id), snap.status === 200 ? [snap.json.snapshotId] : [], outcome);
      await settle(null, snap.status === 200 ? snap.json.snapshotId : null);
    }
  });
  if (process.env.RACE_LOG) console.error(JSON.stringify([...outcomes]));
  assert.ok(outcomes.size >= 2, `the schedules produced more than one outcome: ${JSON.stringify([...outcomes])}`);
});
