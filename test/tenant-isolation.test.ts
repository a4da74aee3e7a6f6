/**
 * Invariant: each account sees only its own disks and snapshots, and another account's resource is
 * indistinguishable from a missing one: Bob cannot get, list, change, delete, read, write, copy or
 * build on Alice's disk or snapshot by its id, nor learn that it exists by using it as a list
 * marker. And nothing Bob tries changes Alice's resources.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { startHarness, bobKeys, type Harness } from './helpers/region-harness.ts';

let h: Harness;
let aliceVolume: string;
let aliceSnapshot: string;
let bobVolume: string;
let bobSnapshot: string;
const bob = { keys: bobKeys };
const MISSING_VOLUME = 'v-zz000000';
const MISSING_SNAPSHOT = 's-zz000000';

before(async () => {
  h = await startHarness('bj', { peers: { hkg: 'http://127.0.0.1:9' } });
  const available = async (id: string, opts = {}): Promise<void> => {
    await h.waitFor(async () => (await h.call('GET', `/v2/volume/${id}`, undefined, opts)).json.volume?.status === 'Available');
  };
  const snapshotted = async (id: string, opts = {}): Promise<void> => {
    await h.waitFor(async () => (await h.call('GET', `/v2/snapshot/${id}`, undefined, opts)).json.snapshot?.status === 'Available');
  };
  [aliceVolume] = (await h.call('POST', '/v2/volume', { cdsSizeInGB: 1, name: 'same-name' })).json.volumeIds;
  await available(aliceVolume);
  const write = await h.call('PUT', `/v2/volume/${aliceVolume}/data?offset=0`, Buffer.alloc(4096, 0xa1), { headers: { 'content-type': 'application/octet-stream' } });
  assert.equal(write.status, 200);
  aliceSnapshot = (await h.call('POST', '/v2/snapshot', { volumeId: aliceVolume, snapshotName: 'alices' })).json.snapshotId;
  await snapshotted(aliceSnapshot);
  // Bob's resources come after Alice's: a marker that found Alice's place would list them.
  [bobVolume] = (await h.call('POST', '/v2/volume', { cdsSizeInGB: 1, name: 'same-name' }, bob)).json.volumeIds;
  await available(bobVolume, bob);
  bobSnapshot = (await h.call('POST', '/v2/snapshot', { volumeId: bobVolume, snapshotName: 'bobs' }, bob)).json.snapshotId;
  await snapshotted(bobSnapshot, bob);
});
after(async () => h?.close());

/** The answer to a request for Alice's resource equals the answer for a missing one (status and code). */
async function sameAsMissing(method: string, url: (id: string) => string, real: string, missing: string, body?: (id: string) => unknown): Promise<void> {
  const theirs = await h.call(method, url(real), body?.(real), bob);
  const none = await h.call(method, url(missing), body?.(missing), bob);
  assert.equal(theirs.status, 404, `${method} ${url(real)} as Bob: ${theirs.status} ${JSON.stringify(theirs.json)}`);
  assert.equal(theirs.json?.code, 'NoSuchObject', `${method} ${url(real)}`);
  assert.deepEqual([theirs.status, theirs.json?.code], [none.status, none.json?.code], `${method} ${url(real)} differs from a missing id`);
  assert.equal(theirs.json.message.replaceAll(real, 'ID'), none.json.message.replaceAll(missing, 'ID'), 'the message tells nothing more');
}

test("isolation: Bob cannot get, change, delete, read or write Alice's disk by id; each answer equals a missing disk's", async () => {
  const v = (id: string) => `/v2/volume/${id}`;
  await sameAsMissing('GET', v, aliceVolume, MISSING_VOLUME);
  await sameAsMissing('DELETE', v, aliceVolume, MISSING_VOLUME);
  await sameAsMissing('PUT', (id) => `/v2/volume/${id}?resize`, aliceVolume, MISSING_VOLUME, () => ({ newCdsSizeInGB: 5 }));
  await sameAsMissing('PUT', (id) => `/v2/volume/${id}?rollback`, aliceVolume, MISSING_VOLUME, () => ({ snapshotId: bobSnapshot }));
  await sameAsMissing('GET', (id) => `/v2/volume/${id}/data`, aliceVolume, MISSING_VOLUME);
  await sameAsMissing('GET', (id) => `/v2/volume/${id}/extents`, aliceVolume, MISSING_VOLUME);
  const put = async (id: string) => h.call('PUT', `/v2/volume/${id}/data?offset=0`, Buffer.alloc(4096, 0xb0), { ...bob, headers: { 'content-type': 'application/octet-stream' } });
  const [theirs, none] = [await put(aliceVolume), await put(MISSING_VOLUME)];
  assert.deepEqual([theirs.status, theirs.json?.code], [404, 'NoSuchObject']);
  assert.deepEqual([none.status, none.json?.code], [404, 'NoSuchObject']);
  const zero = await h.call('PUT', `/v2/volume/${aliceVolume}/data?offset=0&zeroLength=4096`, undefined, bob);
  assert.deepEqual([zero.status, zero.json?.code], [404, 'NoSuchObject']);
  // A snapshot of Alice's disk, taken by Bob.
  await sameAsMissing('POST', () => '/v2/snapshot', aliceVolume, MISSING_VOLUME, (id) => ({ volumeId: id, snapshotName: 'stolen' }));
});

test("isolation: Bob cannot get, change, delete, copy or restore Alice's snapshot by id; each answer equals a missing snapshot's", async () => {
  await sameAsMissing('GET', (id) => `/v2/snapshot/${id}`, aliceSnapshot, MISSING_SNAPSHOT);
  await sameAsMissing('DELETE', (id) => `/v2/snapshot/${id}`, aliceSnapshot, MISSING_SNAPSHOT);
  await sameAsMissing('PUT', (id) => `/v2/snapshot/${id}?modifyAttribute`, aliceSnapshot, MISSING_SNAPSHOT, () => ({ snapshotName: 'renamed' }));
  await sameAsMissing('PUT', (id) => `/v2/snapshot/remote_copy/${id}`, aliceSnapshot, MISSING_SNAPSHOT, () => ({ destRegionInfos: [{ destRegion: 'hkg' }] }));
  await sameAsMissing('GET', (id) => `/v2/snapshot/remote_copy/${id}`, aliceSnapshot, MISSING_SNAPSHOT);
  await sameAsMissing('POST', () => '/v2/volume', aliceSnapshot, MISSING_SNAPSHOT, (id) => ({ snapshotId: id }));
  // Rolling his own disk back to her snapshot.
  await sameAsMissing('PUT', () => `/v2/volume/${bobVolume}?rollback`, aliceSnapshot, MISSING_SNAPSHOT, (id) => ({ snapshotId: id }));
});

test("isolation: Bob's lists show only his own disks and snapshots, whatever the filter", async () => {
  const volumes = async (q: string) => (await h.call('GET', `/v2/volume${q}`, undefined, bob)).json.volumes.map((x: any) => x.id);
  const snapshots = async (q: string) => (await h.call('GET', `/v2/snapshot${q}`, undefined, bob)).json.snapshots.map((x: any) => x.id);
  assert.deepEqual(await volumes(''), [bobVolume]);
  assert.deepEqual(await volumes('?name=same-name'), [bobVolume]);
  assert.deepEqual(await volumes('?zoneName=cn-bj-a'), [bobVolume]);
  assert.deepEqual(await volumes(`?volumeIds=${aliceVolume}`), []);
  assert.deepEqual(await volumes(`?volumeIds=${aliceVolume},${bobVolume}`), [bobVolume]);
  assert.deepEqual(await snapshots(''), [bobSnapshot]);
  assert.deepEqual(await snapshots(`?volumeId=${aliceVolume}`), []);
  assert.deepEqual(await snapshots(`?volumeId=${bobVolume}`), [bobSnapshot]);
});

test("isolation: Alice's id used as a list marker answers exactly as an unknown marker", async () => {
  for (const [kind, real, missing] of [['volume', aliceVolume, MISSING_VOLUME], ['snapshot', aliceSnapshot, MISSING_SNAPSHOT]] as const) {
    const theirs = await h.call('GET', `/v2/${kind}?marker=${real}&maxKeys=10`, undefined, bob);
    const none = await h.call('GET', `/v2/${kind}?marker=${missing}&maxKeys=10`, undefined, bob);
    assert.equal(theirs.status, none.status);
    const list = kind === 'volume' ? 'volumes' : 'snapshots';
    assert.deepEqual(theirs.json[list], none.json[list], `${kind} marker ${real} finds a place in Bob's list`);
    assert.equal(theirs.json.isTruncated, none.json.isTruncated);
    assert.equal(theirs.json.nextMarker, none.json.nextMarker);
  }
  // His own ids work as markers.
  assert.deepEqual((await h.call('GET', `/v2/volume?marker=${bobVolume}`, undefined, bob)).json.volumes.map((x: any) => x.id), [bobVolume]);
});

test("isolation: after all of Bob's attempts Alice's disk and snapshot are unchanged", async () => {
  const v = (await h.call('GET', `/v2/volume/${aliceVolume}`)).json.volume;
  assert.deepEqual([v.status, v.diskSizeInGB, v.name, v.snapshotNum], ['Available', 1, 'same-name', '1']);
  const s = (await h.call('GET', `/v2/snapshot/${aliceSnapshot}`)).json.snapshot;
  assert.deepEqual([s.status, s.name], ['Available', 'alices']);
  const data = await h.call('GET', `/v2/volume/${aliceVolume}/data`, undefined, { headers: { range: 'bytes=0-4095' } });
  assert.ok(data.raw.equals(Buffer.alloc(4096, 0xa1)), 'her bytes are hers');
  assert.deepEqual((await h.call('GET', `/v2/snapshot/remote_copy/${aliceSnapshot}`)).json.copies, [], 'no copy was started');
  assert.deepEqual((await h.call('GET', '/v2/volume')).json.volumes.map((x: any) => x.id), [aliceVolume]);
  assert.deepEqual((await h.call('GET', '/v2/snapshot')).json.snapshots.map((x: any) => x.id), [aliceSnapshot]);
});
