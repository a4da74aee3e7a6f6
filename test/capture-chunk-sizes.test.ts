/**
 * Captures at chunk sizes other than the default (a region may use 512 KiB to 64 MiB chunks): the
 * capture's read memory stays bounded whatever the chunk size (runs of chunks up to 4 MiB, fewer
 * runs in flight when one chunk is larger than that, never fewer than two), and a snapshot taken
 * with large chunks restores bit-identical, zero chunks included.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { readPlan } from '../src/repository/capture.ts';
import { startHarness, type Harness } from './helpers/region-harness.ts';

const MiB = 1 << 20;

test('the read memory of a capture is 12 MiB up to 4 MiB chunks and two chunks beyond, with reads overlapping stores', () => {
  for (let chunkSize = 512 * 1024; chunkSize <= 64 * MiB; chunkSize *= 2) {
    const { runChunks, readsInFlight } = readPlan(chunkSize);
    const memory = runChunks * chunkSize * readsInFlight;
    assert.ok(memory <= Math.max(12 * MiB, 2 * chunkSize), `${chunkSize / MiB} MiB chunks: ${memory / MiB} MiB of read buffers`);
    assert.ok(readsInFlight >= 2, `${chunkSize / MiB} MiB chunks: one run is read while another is stored`);
    assert.ok(runChunks * chunkSize <= Math.max(4 * MiB, chunkSize), 'a run is at most 4 MiB or one chunk');
  }
  assert.deepEqual(readPlan(MiB), { runChunks: 4, readsInFlight: 3 }, 'the default: 4 MiB runs, 3 in flight');
});

const CHUNK = 16 * MiB;
let h: Harness;
before(async () => {
  h = await startHarness('bj', { chunkSize: CHUNK });
});
after(async () => h?.close());

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

async function available(path: string, key: 'volume' | 'snapshot'): Promise<void> {
  await h.waitFor(async () => {
    const status = (await h.call('GET', path)).json[key].status;
    if (status === 'Error' || status === 'CreatedFailed') throw new Error(`${path} is ${status}`);
    return status === 'Available';
  }, 60_000);
}

async function readAll(volumeId: string, length: number): Promise<Buffer> {
  const res = await h.call('GET', `/v2/volume/${volumeId}/data`, undefined, { headers: { range: `bytes=0-${length - 1}` } });
  assert.equal(res.status, 206);
  return res.raw;
}

test('a snapshot of a disk in 16 MiB chunks (random, zero, text, a partial chunk) restores bit-identical', async () => {
  const text = Buffer.from('a disk of sixteen-mebibyte chunks; '.repeat(Math.ceil(CHUNK / 35))).subarray(0, CHUNK);
  // Five whole chunks, one of them zeros, then 3 MiB into a sixth (the rest of it reads as zeros).
  const image = Buffer.concat([randomBytes(CHUNK), Buffer.alloc(CHUNK), text, randomBytes(CHUNK), randomBytes(CHUNK), randomBytes(3 * MiB)]);
  const [volumeId] = (await h.call('POST', '/v2/volume', { cdsSizeInGB: 1 })).json.volumeIds;
  await available(`/v2/volume/${volumeId}`, 'volume');
  for (let at = 0; at < image.length; at += 4 * MiB) {
    const piece = image.subarray(at, Math.min(image.length, at + 4 * MiB));
    const res = await h.call('PUT', `/v2/volume/${volumeId}/data?offset=${at}`, piece, { headers: { 'content-type': 'application/octet-stream' } });
    assert.equal(res.status, 200);
  }
  const { snapshotId } = (await h.call('POST', '/v2/snapshot', { volumeId, snapshotName: 'large-chunks' })).json;
  await available(`/v2/snapshot/${snapshotId}`, 'snapshot');
  const [restored] = (await h.call('POST', '/v2/volume', { snapshotId })).json.volumeIds;
  await available(`/v2/volume/${restored}`, 'volume');
  const length = 6 * CHUNK;
  const want = Buffer.concat([image, Buffer.alloc(length - image.length)]);
  assert.equal(sha(await readAll(restored, length)), sha(want), 'the restored disk holds what was written, zeros elsewhere');
});
