/**
 * Invariant: all-zero chunks are never stored (the manifest marks them), and identical chunks are
 * stored once: after snapshots of disks holding zeros written as data, zeros over old data, trimmed
 * data, partly-zero chunks and duplicates, the region's chunk store holds exactly one blob per
 * distinct non-zero chunk content, none of them all zero, and the snapshots still restore exactly.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { startHarness, type Harness } from './helpers/region-harness.ts';

const MiB = 1 << 20;
let h: Harness;

before(async () => (h = await startHarness('bj')));
after(async () => h?.close());

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

async function disk(): Promise<string> {
  const [id] = (await h.call('POST', '/v2/volume', { cdsSizeInGB: 1 })).json.volumeIds;
  await h.waitFor(async () => (await h.call('GET', `/v2/volume/${id}`)).json.volume.status === 'Available');
  return id;
}

async function put(id: string, offset: number, data: Buffer): Promise<void> {
  const res = await h.call('PUT', `/v2/volume/${id}/data?offset=${offset}`, data, { headers: { 'content-type': 'application/octet-stream' } });
  assert.equal(res.status, 200, JSON.stringify(res.json));
}

async function snapshot(id: string): Promise<string> {
  const { snapshotId } = (await h.call('POST', '/v2/snapshot', { volumeId: id, snapshotName: 'z' })).json;
  await h.waitFor(async () => (await h.call('GET', `/v2/snapshot/${snapshotId}`)).json.snapshot.status === 'Available');
  return snapshotId;
}

/** Every blob in the region's chunk store: id -> bytes (read back through the store, so re-hashed). */
async function storedChunks(): Promise<Map<string, Buffer>> {
  const out = new Map<string, Buffer>();
  for await (const blob of h.region.repo.chunks.list()) out.set(blob.id, await h.region.repo.chunks.get(blob.id));
  return out;
}

async function read(id: string, offset: number, length: number): Promise<Buffer> {
  return (await h.call('GET', `/v2/volume/${id}/data`, undefined, { headers: { range: `bytes=${offset}-${offset + length - 1}` } })).raw;
}

test('zero chunks: never stored, whatever way the zeros got there; the store holds exactly the distinct non-zero chunks', async () => {
  const id = await disk();
  const r1 = randomBytes(MiB);
  const r4 = randomBytes(MiB);
  const partly = Buffer.concat([Buffer.alloc(MiB / 2), randomBytes(MiB / 2)]);
  const small = randomBytes(4096);
  const withSmall = Buffer.alloc(MiB);
  small.copy(withSmall, 12288);
  await put(id, 0, r1); // chunk 0
  await put(id, MiB, r1); // chunk 1: the same bytes again
  await put(id, 2 * MiB, Buffer.alloc(MiB)); // chunk 2: zeros, written as data
  await put(id, 3 * MiB, randomBytes(MiB)); // chunk 3: data, then zeros over it
  await put(id, 3 * MiB, Buffer.alloc(MiB));
  await put(id, 4 * MiB, partly); // chunk 4: half zero
  await put(id, 5 * MiB + 12288, small); // chunk 5: one small write into a hole
  await put(id, 6 * MiB, randomBytes(MiB)); // chunk 6: data, then trimmed
  assert.equal((await h.call('PUT', `/v2/volume/${id}/data?offset=${6 * MiB}&zeroLength=${MiB}`)).status, 200);
  await put(id, 700 * MiB, r4); // chunk 700
  await put(id, 701 * MiB, Buffer.alloc(MiB)); // chunk 701: zeros written next to data
  const snapshotId = await snapshot(id);

  const expected = [r1, partly, withSmall, r4].map(sha).sort();
  const stored = await storedChunks();
  assert.deepEqual([...stored.keys()].sort(), expected, 'one blob per distinct non-zero chunk, nothing else');
  assert.equal(stored.has(sha(Buffer.alloc(MiB))), false, 'no all-zero chunk is stored');
  for (const [blobId, bytes] of stored) assert.ok(bytes.some((b) => b !== 0), `blob ${blobId} is all zero`);

  // The snapshot still holds the zeros: a disk restored from it reads them back.
  const [restored] = (await h.call('POST', '/v2/volume', { snapshotId })).json.volumeIds;
  await h.waitFor(async () => (await h.call('GET', `/v2/volume/${restored}`)).json.volume.status === 'Available');
  assert.ok((await read(restored, 0, 7 * MiB)).equals(Buffer.concat([r1, r1, Buffer.alloc(2 * MiB), partly, withSmall, Buffer.alloc(MiB)])));
  assert.ok((await read(restored, 700 * MiB, 2 * MiB)).equals(Buffer.concat([r4, Buffer.alloc(MiB)])));
});

test('zero chunks: a snapshot of a disk holding only zeros stores nothing', async () => {
  const before = [...(await storedChunks()).keys()].sort();
  const id = await disk();
  for (let i = 0; i < 8; i++) await put(id, i * 3 * MiB, Buffer.alloc(MiB));
  await put(id, 100 * MiB, Buffer.alloc(4096));
  const snapshotId = await snapshot(id);
  assert.deepEqual([...(await storedChunks()).keys()].sort(), before);
  const [restored] = (await h.call('POST', '/v2/volume', { snapshotId })).json.volumeIds;
  await h.waitFor(async () => (await h.call('GET', `/v2/volume/${restored}`)).json.volume.status === 'Available');
  assert.ok((await read(restored, 0, 24 * MiB)).equals(Buffer.alloc(24 * MiB)));
});
