/**
 * Invariant: a create with a clientToken runs at most once per (account, operation, token). A retry,
 * sequential or concurrent, and also after a restart, answers the first call's ids and creates
 * nothing: checked by listing what exists, not only by comparing the ids answered.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startHarness, bobKeys, type Harness } from './helpers/region-harness.ts';
import { assertBceError } from './helpers/bce-assert.ts';

let dataDir: string;
let h: Harness;
// hkg is a peer nothing listens on: copies to it are accepted and then keep retrying.
const overrides = () => ({ dataDir, peers: { hkg: 'http://127.0.0.1:9' }, copyDeadlineMs: 3600_000 });

before(async () => {
  dataDir = await mkdtemp(join(tmpdir(), 'snapferry-token-'));
  h = await startHarness('bj', overrides());
});
after(async () => {
  await h?.close();
  await rm(dataDir, { recursive: true, force: true });
});

async function ok(method: string, url: string, body?: unknown, opts = {}): Promise<any> {
  const res = await h.call(method, url, body, opts);
  assert.equal(res.status, 200, `${method} ${url}: ${res.status} ${JSON.stringify(res.json)}`);
  return res.json;
}

async function volumesNamed(name: string, opts = {}): Promise<string[]> {
  return (await ok('GET', `/v2/volume?name=${name}&maxKeys=1000`, undefined, opts)).volumes.map((v: any) => v.id);
}

async function availableVolume(name: string): Promise<string> {
  const [id] = (await ok('POST', '/v2/volume', { cdsSizeInGB: 1, name })).volumeIds;
  await h.waitFor(async () => (await h.call('GET', `/v2/volume/${id}`)).json.volume.status === 'Available');
  return id;
}

test('clientToken: volume create retried (in sequence and concurrently) answers the same ids and creates the disks once', async () => {
  const body = { cdsSizeInGB: 1, purchaseCount: 2, name: 'tok-vol' };
  const first = (await ok('POST', '/v2/volume?clientToken=vol-token-1', body)).volumeIds;
  assert.equal(first.length, 2);
  const again = (await ok('POST', '/v2/volume?clientToken=vol-token-1', { name: 'tok-vol', purchaseCount: 2, cdsSizeInGB: 1 })).volumeIds;
  assert.deepEqual(again, first);
  const concurrent = await Promise.all([1, 2, 3].map(() => ok('POST', '/v2/volume?clientToken=vol-token-2', { ...body, name: 'tok-vol-2' })));
  for (const r of concurrent) assert.deepEqual(r.volumeIds, concurrent[0].volumeIds);
  assert.deepEqual((await volumesNamed('tok-vol')).sort(), [...first].sort(), 'exactly the two disks of the first call exist');
  assert.deepEqual((await volumesNamed('tok-vol-2')).sort(), [...concurrent[0].volumeIds].sort());
  // The same body under another token is another request.
  const other = (await ok('POST', '/v2/volume?clientToken=vol-token-3', body)).volumeIds;
  assert.equal(other.filter((id: string) => first.includes(id)).length, 0);
  assert.equal((await volumesNamed('tok-vol')).length, 4);
  assertBceError(await h.call('POST', '/v2/volume?clientToken=vol-token-1', { ...body, purchaseCount: 1 }), 403, 'IdempotentParameterMismatch');
  assert.equal((await volumesNamed('tok-vol')).length, 4, 'a mismatch creates nothing');
});

test('clientToken: snapshot create retried answers the same id and the disk has exactly one snapshot', async () => {
  const volumeId = await availableVolume('tok-snap-disk');
  const body = { volumeId, snapshotName: 'tokened' };
  const first = (await ok('POST', '/v2/snapshot?clientToken=snap-token-1', body)).snapshotId;
  const concurrent = await Promise.all([1, 2, 3].map(() => ok('POST', '/v2/snapshot?clientToken=snap-token-1', body)));
  for (const r of concurrent) assert.equal(r.snapshotId, first);
  await h.waitFor(async () => (await h.call('GET', `/v2/snapshot/${first}`)).json.snapshot.status === 'Available');
  assert.equal((await ok('POST', '/v2/snapshot?clientToken=snap-token-1', body)).snapshotId, first, 'also once it completed');
  const listed = (await ok('GET', `/v2/snapshot?volumeId=${volumeId}`)).snapshots.map((s: any) => s.id);
  assert.deepEqual(listed, [first]);
  assert.equal((await ok('GET', `/v2/volume/${volumeId}`)).volume.snapshotNum, '1');
  assertBceError(await h.call('POST', '/v2/snapshot?clientToken=snap-token-1', { ...body, snapshotName: 'other' }), 403, 'IdempotentParameterMismatch');
});

test('clientToken: a resize retried after it succeeded answers 200 again and grows the disk once', async () => {
  const id = await availableVolume('tok-resize');
  assert.deepEqual(await ok('PUT', `/v2/volume/${id}?resize&clientToken=resize-1`, { newCdsSizeInGB: 2 }), {});
  assert.deepEqual(await ok('PUT', `/v2/volume/${id}?resize&clientToken=resize-1`, { newCdsSizeInGB: 2 }), {});
  assert.equal((await ok('GET', `/v2/volume/${id}`)).volume.diskSizeInGB, 2);
  // Without the token the same request is a new one, and growing to the current size is refused.
  assertBceError(await h.call('PUT', `/v2/volume/${id}?resize`, { newCdsSizeInGB: 2 }), 400, 'Volume.DiskSizeInvalid');
});

test('clientToken: a remote copy retried answers the same destination ids and starts one copy per destination', async () => {
  const volumeId = await availableVolume('tok-copy-disk');
  const { snapshotId } = await ok('POST', '/v2/snapshot', { volumeId, snapshotName: 'to-copy' });
  await h.waitFor(async () => (await h.call('GET', `/v2/snapshot/${snapshotId}`)).json.snapshot.status === 'Available');
  const body = { destRegionInfos: [{ destRegion: 'hkg', name: 'far' }] };
  const first = (await ok('PUT', `/v2/snapshot/remote_copy/${snapshotId}?clientToken=copy-1`, body)).result;
  const again = (await ok('PUT', `/v2/snapshot/remote_copy/${snapshotId}?clientToken=copy-1`, body)).result;
  assert.deepEqual(again, first);
  const copies = (await ok('GET', `/v2/snapshot/remote_copy/${snapshotId}`)).copies;
  assert.deepEqual(copies.map((c: any) => c.snapshotId), [first[0].snapshotId], 'one copy job, under the id first answered');
});

test('clientToken: tokens are per account, and survive a restart of the region', async () => {
  const body = { cdsSizeInGB: 1, name: 'tok-restart' };
  const alice = (await ok('POST', '/v2/volume?clientToken=shared-token', body)).volumeIds;
  const bob = (await ok('POST', '/v2/volume?clientToken=shared-token', body, { keys: bobKeys })).volumeIds;
  assert.notDeepEqual(bob, alice, "Bob's token is his own");
  assert.deepEqual(await volumesNamed('tok-restart', { keys: bobKeys }), bob);
  await h.close();
  h = await startHarness('bj', overrides());
  assert.deepEqual((await ok('POST', '/v2/volume?clientToken=shared-token', body)).volumeIds, alice);
  assert.deepEqual((await ok('POST', '/v2/volume?clientToken=shared-token', body, { keys: bobKeys })).volumeIds, bob);
  assert.deepEqual(await volumesNamed('tok-restart'), alice);
  assert.deepEqual(await volumesNamed('tok-restart', { keys: bobKeys }), bob);
});
