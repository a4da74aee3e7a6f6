/**
 * Failure isolation (docs/design.md, CS-3) at the level a user sees: a failed fsync fails only the
 * snapshot whose bytes it touched, never another snapshot of the region, and never a later one.
 * A real region in-process, with the chunk store's file-system fault hook failing the fsync of one
 * chunk's temp file.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { startHarness, type Harness } from './helpers/region-harness.ts';

const MiB = 1 << 20;
let h: Harness;
/** Chunk ids whose temp-file fsync fails (EIO) while listed. */
const failing = new Set<string>();
let faultsInjected = 0;

before(async () => {
  h = await startHarness('bj', {}, {
    chunkFaults: (op, path) => {
      if (op !== 'fsync') return;
      for (const id of failing) {
        if (path.includes(id)) {
          faultsInjected++;
          throw Object.assign(new Error(`injected EIO on ${path}`), { code: 'EIO' });
        }
      }
    },
  });
});
after(async () => h?.close());

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

async function volumeWith(data: Buffer): Promise<string> {
  const [id] = (await h.call('POST', '/v2/volume', { cdsSizeInGB: 1 })).json.volumeIds;
  await h.waitFor(async () => (await h.call('GET', `/v2/volume/${id}`)).json.volume.status === 'Available');
  assert.equal((await h.call('PUT', `/v2/volume/${id}/data?offset=0`, data, { headers: { 'content-type': 'application/octet-stream' } })).status, 200);
  return id;
}

async function snapshotStatus(id: string): Promise<any> {
  return (await h.call('GET', `/v2/snapshot/${id}`)).json.snapshot;
}

test('CS-3: a failed fsync fails only the capture that wrote the chunk; the other snapshot and later ones succeed', async () => {
  const bad = randomBytes(MiB);
  const a = await volumeWith(Buffer.concat([bad, randomBytes(MiB)]));
  const b = await volumeWith(Buffer.concat([randomBytes(MiB), randomBytes(MiB)]));
  failing.add(sha(bad));
  const sa = (await h.call('POST', '/v2/snapshot', { volumeId: a, snapshotName: 'a' })).json.snapshotId;
  const sb = (await h.call('POST', '/v2/snapshot', { volumeId: b, snapshotName: 'b' })).json.snapshotId;
  // b's capture never touched the failing chunk: it completes while a's keeps failing.
  await h.waitFor(async () => (await snapshotStatus(sb)).status === 'Available', 30_000);
  await h.waitFor(async () => faultsInjected >= 1, 30_000);
  assert.equal((await snapshotStatus(sa)).status, 'Creating', 'the snapshot whose chunk could not be made durable is not Available');
  // A later snapshot on another disk is unaffected (no region-wide "lost chunks" state).
  const c = await volumeWith(randomBytes(MiB));
  const sc = (await h.call('POST', '/v2/snapshot', { volumeId: c, snapshotName: 'c' })).json.snapshotId;
  await h.waitFor(async () => (await snapshotStatus(sc)).status === 'Available', 30_000);
  // Once the disk behaves, a's capture is retried and stores the chunk afresh.
  failing.clear();
  await h.waitFor(async () => (await snapshotStatus(sa)).status === 'Available', 60_000);
  const [restored] = (await h.call('POST', '/v2/volume', { cdsSizeInGB: 1, snapshotId: sa })).json.volumeIds;
  await h.waitFor(async () => (await h.call('GET', `/v2/volume/${restored}`)).json.volume.status === 'Available', 30_000);
  const back = await h.call('GET', `/v2/volume/${restored}/data`, undefined, { headers: { range: `bytes=0-${MiB - 1}` } });
  assert.equal(sha(back.raw), sha(bad));
});

test('CS-3 at the destination: a failed fsync of a received chunk keeps the copy Creating; once the disk behaves the copy completes exactly', async () => {
  const { startRegions } = await import('./helpers/region-set.ts');
  const { syntheticSnapshot, randomChunks, startCopy, snapshotAt, waitAvailable, assertCopyIdentical } = await import('./helpers/copy-fixtures.ts');
  const chunks = randomChunks(6);
  const badId = sha(chunks[2]!);
  let destFaults = 0;
  let failDest = true;
  const set = await startRegions([
    { name: 'bj' },
    {
      name: 'hkg',
      options: {
        chunkFaults: (op, path) => {
          if (failDest && op === 'fsync' && path.includes(badId)) {
            destFaults++;
            throw Object.assign(new Error(`injected EIO on ${path}`), { code: 'EIO' });
          }
        },
      },
    },
  ]);
  try {
    const bj = set.regions.bj!;
    const hkg = set.regions.hkg!;
    const snap = await syntheticSnapshot(bj.built.region, chunks);
    const copyId = await startCopy(bj, snap.snapshotId, 'hkg');
    await set.waitFor(async () => destFaults >= 2, 60_000);
    // The chunk could not be made durable: the copy is not Available (commit finds it missing).
    assert.equal((await snapshotAt(hkg, copyId)).status, 'Creating');
    failDest = false;
    await waitAvailable(set, hkg, copyId, 120_000);
    await assertCopyIdentical(set, hkg, copyId, chunks);
  } finally {
    await set.close();
  }
});
