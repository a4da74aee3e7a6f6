import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { startHarness, bobKeys, type Harness } from './helpers/region-harness.ts';
import { assertBceError } from './helpers/bce-assert.ts';
import { MAX_MANUAL_SNAPSHOTS_PER_VOLUME } from '../src/domain/snapshot.ts';

let h: Harness;
let volumeId: string;

before(async () => {
  h = await startHarness('gz');
  volumeId = (await h.call('POST', '/v2/volume', { cdsSizeInGB: 1, zoneName: 'cn-gz-a' })).json.volumeIds[0];
  await h.waitFor(async () => (await h.call('GET', `/v2/volume/${volumeId}`)).json.volume.status === 'Available');
});
after(async () => h.close());

async function snapshotOf(vol: string, name: string, extra: Record<string, unknown> = {}): Promise<string> {
  const res = await h.call('POST', '/v2/snapshot', { volumeId: vol, snapshotName: name, ...extra });
  assert.equal(res.status, 200, JSON.stringify(res.json));
  assert.match(res.json.snapshotId, /^s-[A-Za-z0-9]{8}$/);
  return res.json.snapshotId;
}

async function waitAvailable(id: string): Promise<any> {
  return h.waitFor(async () => {
    const s = (await h.call('GET', `/v2/snapshot/${id}`)).json.snapshot;
    return s.status === 'Available' ? s : null;
  });
}

test('create: Creating then Available, with the BCC model', async () => {
  const id = await snapshotOf(volumeId, 'nightly-1', { desc: 'before upgrade', retentionInDays: 7 });
  const s = await waitAvailable(id);
  assert.deepEqual(Object.keys(s).sort(), ['createMethod', 'createTime', 'desc', 'encrypted', 'expireTime', 'id', 'name', 'progress', 'sizeInGB', 'status', 'volumeId'].sort());
  assert.equal(s.name, 'nightly-1');
  assert.equal(s.sizeInGB, 1);
  assert.equal(s.createMethod, 'MANUAL');
  assert.equal(s.volumeId, volumeId);
  assert.equal(s.desc, 'before upgrade');
  assert.equal(s.progress, '100');
  assert.equal(s.encrypted, false);
  assert.equal(Date.parse(s.expireTime) - Date.parse(s.createTime), 7 * 86_400_000);
  const v = (await h.call('GET', `/v2/volume/${volumeId}`)).json.volume;
  assert.ok(Number(v.snapshotNum) >= 1);
});

test('snapshot names: 1-65 chars, a letter first, letters/digits/CJK and "-_ /." only', async () => {
  for (const ok of ['a', 'A-b_c d/e.f', '快照-1', 'x'.repeat(65)]) await snapshotOf(volumeId, ok);
  for (const bad of ['', '1abc', '-x', 'x'.repeat(66), 'a*b', 'a\nb', '_x']) {
    assertBceError(await h.call('POST', '/v2/snapshot', { volumeId, snapshotName: bad }), 400, 'Snapshot.SnapshotNameInvalid');
  }
});

test('create needs an existing disk in Available or InUse', async () => {
  assertBceError(await h.call('POST', '/v2/snapshot', { volumeId: 'v-nothere1', snapshotName: 'x' }), 404, 'NoSuchObject');
  assertBceError(await h.call('POST', '/v2/snapshot', { volumeId, snapshotName: 'x' }, { keys: bobKeys }), 404, 'NoSuchObject');
  assertBceError(await h.call('POST', '/v2/snapshot', { snapshotName: 'x' }), 400, 'InappropriateJSON');
  const fresh = (await h.call('POST', '/v2/volume', { cdsSizeInGB: 1, zoneName: 'cn-gz-a' })).json.volumeIds[0];
  await h.region.meta.volumes.update(fresh, { status: 'Creating' });
  assertBceError(await h.call('POST', '/v2/snapshot', { volumeId: fresh, snapshotName: 'x' }), 409, 'OperationDenied');
});

test(`at most ${MAX_MANUAL_SNAPSHOTS_PER_VOLUME} manual snapshots per disk: then 409 Instance.SnapshotLimitExceeded`, async () => {
  const vol = (await h.call('POST', '/v2/volume', { cdsSizeInGB: 1, zoneName: 'cn-gz-a' })).json.volumeIds[0];
  await h.waitFor(async () => (await h.call('GET', `/v2/volume/${vol}`)).json.volume.status === 'Available');
  // Fill the quota through the metadata store (a real insert each), leaving room for one.
  for (let i = 0; i < MAX_MANUAL_SNAPSHOTS_PER_VOLUME - 1; i++) {
    await h.region.meta.snapshots.insertIfAbsent({
      id: `s-q${String(i).padStart(7, '0')}`, accountId: 'alice', name: 'q', desc: '', volumeId: vol, sizeInGB: 1, createTime: Date.now(),
      status: 'Available', createMethod: 'MANUAL', progress: 100, storageType: 'hp1', retentionInDays: null, tags: [],
      sourceRegion: null, sourceSnapshotId: null, manifestId: null, lastError: null,
    });
  }
  await snapshotOf(vol, 'last-one');
  assertBceError(await h.call('POST', '/v2/snapshot', { volumeId: vol, snapshotName: 'one-too-many' }), 409, 'Instance.SnapshotLimitExceeded');
});

test('list filters by volumeId and pages with an inclusive marker', async () => {
  const vol = (await h.call('POST', '/v2/volume', { cdsSizeInGB: 1, zoneName: 'cn-gz-a' })).json.volumeIds[0];
  await h.waitFor(async () => (await h.call('GET', `/v2/volume/${vol}`)).json.volume.status === 'Available');
  const ids = [];
  for (let i = 0; i < 5; i++) ids.push(await snapshotOf(vol, `p${i}`));
  const first = await h.call('GET', `/v2/snapshot?volumeId=${vol}&maxKeys=3`);
  assert.deepEqual(first.json.snapshots.map((s: any) => s.id), ids.slice(0, 3));
  assert.equal(first.json.isTruncated, true);
  assert.equal(first.json.nextMarker, ids[3]);
  const second = await h.call('GET', `/v2/snapshot?volumeId=${vol}&maxKeys=3&marker=${first.json.nextMarker}`);
  assert.deepEqual(second.json.snapshots.map((s: any) => s.id), ids.slice(3));
  assert.equal(second.json.isTruncated, false);
  assert.equal((await h.call('GET', '/v2/snapshot', undefined, { keys: bobKeys })).json.snapshots.length, 0);
});

test('modifyAttribute renames and re-describes; bad names are refused', async () => {
  const id = await snapshotOf(volumeId, 'before');
  assert.equal((await h.call('PUT', `/v2/snapshot/${id}?modifyAttribute`, { snapshotName: 'after', desc: 'renamed' })).status, 200);
  const s = (await h.call('GET', `/v2/snapshot/${id}`)).json.snapshot;
  assert.equal(s.name, 'after');
  assert.equal(s.desc, 'renamed');
  assertBceError(await h.call('PUT', `/v2/snapshot/${id}?modifyAttribute`, { snapshotName: '9lives' }), 400, 'Snapshot.SnapshotNameInvalid');
  assertBceError(await h.call('PUT', `/v2/snapshot/${id}`, { snapshotName: 'x' }), 400, 'BadRequest');
  assertBceError(await h.call('PUT', `/v2/snapshot/${id}?modifyAttribute`, { snapshotName: 'x' }, { keys: bobKeys }), 404, 'NoSuchObject');
});

test('delete: only Available or CreatedFailed (403 SnapshotOperationForbidden otherwise), then 404', async () => {
  const id = await snapshotOf(volumeId, 'to-delete');
  await waitAvailable(id);
  await h.region.meta.snapshots.update(id, { status: 'Creating' });
  assertBceError(await h.call('DELETE', `/v2/snapshot/${id}`), 403, 'SnapshotOperationForbidden');
  await h.region.meta.snapshots.update(id, { status: 'CreatedFailed' });
  assertBceError(await h.call('DELETE', `/v2/snapshot/${id}`, undefined, { keys: bobKeys }), 404, 'NoSuchObject');
  assert.equal((await h.call('DELETE', `/v2/snapshot/${id}`)).status, 200);
  assertBceError(await h.call('GET', `/v2/snapshot/${id}`), 404, 'NoSuchObject');
  assertBceError(await h.call('DELETE', `/v2/snapshot/${id}`), 404, 'NoSuchObject');
});

test('clientToken on snapshot create: same result, no second snapshot; another body is a mismatch', async () => {
  const token = 'snap-token-1';
  const a = (await h.call('POST', `/v2/snapshot?clientToken=${token}`, { volumeId, snapshotName: 'tokened' })).json.snapshotId;
  const b = (await h.call('POST', `/v2/snapshot?clientToken=${token}`, { volumeId, snapshotName: 'tokened' })).json.snapshotId;
  assert.equal(a, b);
  assertBceError(await h.call('POST', `/v2/snapshot?clientToken=${token}`, { volumeId, snapshotName: 'other' }), 403, 'IdempotentParameterMismatch');
  // Tokens are per account: Bob's identical token is his own.
  assertBceError(await h.call('POST', `/v2/snapshot?clientToken=${token}`, { volumeId, snapshotName: 'tokened' }, { keys: bobKeys }), 404, 'NoSuchObject');
});
