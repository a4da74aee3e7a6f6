/**
 * A chunk that scrub removes (its file was damaged) must not spread into later snapshots: a capture
 * keeps an unchanged chunk's id from the disk's base, so a base that names a removed chunk is
 * distrusted and the next snapshot reads the disk again and stores the chunk afresh (the disk still
 * holds the bytes). Found by the crash campaign's probe.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { open } from 'node:fs/promises';
import { join } from 'node:path';
import { startHarness, type Harness } from './helpers/region-harness.ts';

const MiB = 1 << 20;
let h: Harness;
before(async () => {
  h = await startHarness('bj');
});
after(async () => h?.close());

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

async function snapshotOf(volumeId: string): Promise<string> {
  const { snapshotId } = (await h.call('POST', '/v2/snapshot', { volumeId, snapshotName: `s${Date.now()}` })).json;
  await h.waitFor(async () => (await h.call('GET', `/v2/snapshot/${snapshotId}`)).json.snapshot.status === 'Available');
  return snapshotId;
}

test('scrub removes a damaged chunk; the next snapshot of the unchanged disk re-reads it and restores bit-identical', async () => {
  const data = Buffer.concat([randomBytes(MiB), randomBytes(MiB), randomBytes(MiB)]);
  const [v] = (await h.call('POST', '/v2/volume', { cdsSizeInGB: 1 })).json.volumeIds;
  await h.waitFor(async () => (await h.call('GET', `/v2/volume/${v}`)).json.volume.status === 'Available');
  assert.equal((await h.call('PUT', `/v2/volume/${v}/data?offset=0`, data, { headers: { 'content-type': 'application/octet-stream' } })).status, 200);
  await snapshotOf(v);
  // Damage the middle chunk's file at rest; scrub finds it and removes it.
  const victim = sha(data.subarray(MiB, 2 * MiB));
  const fh = await open(join(h.dir, 'bj', 'chunks', victim.slice(0, 2), victim), 'r+');
  await fh.write(Buffer.from([0x5a]), 0, 1, 4096);
  await fh.close();
  const scrub = await h.call('POST', '/internal/v1/admin/scrub', undefined, { keys: { ak: 'snapferry-region-bj', sk: h.config.regionSecret } });
  assert.equal(scrub.status, 200, JSON.stringify(scrub.json));
  assert.deepEqual(scrub.json.damagedChunks, [victim]);
  assert.deepEqual(scrub.json.disksToReread, [v], 'the disk whose base named the chunk will be read again');
  // The disk was not written: without the reset this snapshot would name the removed chunk.
  const second = await snapshotOf(v);
  const [restored] = (await h.call('POST', '/v2/volume', { cdsSizeInGB: 1, snapshotId: second })).json.volumeIds;
  await h.waitFor(async () => {
    const s = (await h.call('GET', `/v2/volume/${restored}`)).json.volume.status;
    if (s === 'Error') throw new Error('the restore failed: the snapshot names a chunk that is gone');
    return s === 'Available';
  });
  const back = await h.call('GET', `/v2/volume/${restored}/data`, undefined, { headers: { range: `bytes=0-${data.length - 1}` } });
  assert.equal(sha(back.raw), sha(data));
});
