/**
 * Invariant: a snapshot is one point in time, even under writes (design.md "Point-in-time snapshots
 * under writes": the capture freezes the changed chunks; a write to a frozen chunk not yet read first
 * hands its old bytes to the capture, copy-on-write).
 *
 * A real NBD client writes numbered records to random blocks (a seeded permutation), one write at a
 * time, fast, while a snapshot is taken. From the restored snapshot alone the test tells which writes
 * it holds: they must be exactly writes 0..k-1 for one k (a clean cut), with k no earlier than the
 * writes acknowledged before the snapshot was requested and no later than the writes sent after the
 * capture was seen running.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { BLOCK, classify, oldBlock, oldRange, permutation, recordBlock } from './helpers/block-records.ts';
import { NbdBlockClient } from './helpers/nbd-block-client.ts';
import { send, until, waitSnapshot, waitVolume } from './helpers/sdk.ts';
import { useOneRegion } from './helpers/one-region.ts';

const AK = 'pit-access-key-0000000000';
const SK = 'pit-secret-key-1111111111';

const MiB = 1 << 20;
const region = useOneRegion(AK, SK);
const { newDisk, readData } = region;
const status = (id: string): Promise<string> => region.volumeStatus(id);

test('point in time: a snapshot under a fast stream of writes in random order holds exactly the writes before one instant, and that instant lies between the request and the capture', async () => {
  // The first 512 MiB of the disk hold data, so the first snapshot must read 512 chunks: the capture
  // takes long enough for hundreds of writes to land while it runs (256 MiB were once enough; a
  // pipelined capture reads them in a fraction of a second). The writes stay in that range.
  const id = await newDisk();
  const span = 512 * MiB;
  const blocks = span / BLOCK;
  const client = await NbdBlockClient.open(region.server.nbdPort, id);
  const order = permutation(blocks, 0x5eed);
  let started = 0;
  let completed = 0;
  let stop = false;
  let writer: Promise<void> = Promise.resolve();
  let snapshotId = '';
  const seen = { completedBeforeRequest: -1, startedAfterFreeze: -1, startedAtAvailable: -1, progressSeen: '' };
  try {
    for (let first = 0; first < blocks; first += 8 * 256) {
      await Promise.all([0, 1, 2, 3, 4, 5, 6, 7].map((k) => client.write((first + k * 256) * BLOCK, oldRange(first + k * 256, 256))));
    }
    // Write i puts record i on block order[i]: one write at a time, each acknowledged before the next
    // is sent, so "write i happened before write j" is exactly i < j.
    writer = (async () => {
      while (!stop && started < blocks) {
        const i = started++;
        await client.write(order[i]! * BLOCK, recordBlock(i, order[i]!));
        completed = i + 1;
      }
    })();
    await until(async () => completed >= 2000 || started >= blocks, 60_000, 'writer under way');
    seen.completedBeforeRequest = completed;
    snapshotId = (await send(region.bj, 'POST', '/v2/snapshot', { body: { volumeId: id, snapshotName: 'under-writes' } })).snapshotId;
    // Progress above 0 means the capture has frozen the disk and read chunks: every write sent from
    // now on started after the instant the snapshot describes.
    const mid = await until(async () => {
      const s = (await send(region.bj, 'GET', `/v2/snapshot/${snapshotId}`)).snapshot;
      if (s.status === 'Creating' && Number(s.progress) === 0) return null;
      seen.startedAfterFreeze = started;
      return s;
    }, 60_000, 'capture under way');
    seen.progressSeen = `${mid.status} ${mid.progress}`;
    assert.equal(mid.status, 'Creating', `the capture was over before it was seen running (${JSON.stringify(seen)}): the test proves nothing`);
    await waitSnapshot(region.bj, snapshotId);
    seen.startedAtAvailable = started;
    stop = true;
    await writer;
  } finally {
    stop = true;
    await writer.catch(() => undefined);
    await client.disconnect().catch(() => client.destroy());
  }
  assert.ok(started < blocks, `the writer ran out of blocks before the snapshot was done (${JSON.stringify(seen)})`);
  assert.ok(seen.startedAtAvailable - seen.startedAfterFreeze >= 100, `writes landed while the capture ran (${JSON.stringify(seen)})`);

  const [restored] = (await send(region.bj, 'POST', '/v2/volume', { body: { snapshotId } })).volumeIds;
  await waitVolume(region.bj, restored);
  const bytes = await readData(restored, 0, span);
  // Which writes does the snapshot hold? Each block was written at most once, so its bytes name the write.
  const included = new Uint8Array(started);
  for (let i = 0; i < blocks; i++) {
    const b = order[i]!;
    const c = classify(bytes.subarray(b * BLOCK, (b + 1) * BLOCK), b);
    if (c.kind === 'garbage') assert.fail(`block ${b} holds neither its old bytes nor write ${i} (a torn or foreign block)`);
    if (c.kind === 'record') {
      assert.equal(c.seq, i);
      assert.ok(i < started, `block ${b} holds write ${i}, which was never sent`);
      included[i] = 1;
    }
  }
  let cut = 0;
  while (cut < started && included[cut]) cut++;
  const after = included.indexOf(1, cut);
  assert.equal(after, -1, `not one instant: write ${after} is in the snapshot but write ${cut} is not (${JSON.stringify(seen)})`);
  assert.ok(cut >= seen.completedBeforeRequest, `the snapshot lacks write ${cut}, acknowledged before the snapshot was requested (${JSON.stringify(seen)})`);
  assert.ok(cut <= seen.startedAfterFreeze, `the snapshot holds write ${cut - 1}, sent after the capture was seen running (${JSON.stringify(seen)})`);
});
