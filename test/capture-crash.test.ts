/**
 * Invariant: a snapshot interrupted by a crash while it is being taken completes after the restart
 * only if the disk was not written after the instant it froze, and then restores bit-identical;
 * otherwise it becomes CreatedFailed, never a later state under the earlier name
 * (services/snapshot-jobs.ts: the first attempt records the generation it froze).
 *
 * The kill lands inside the window that matters, and the test proves it from the database the dead
 * process left: the capture job is `running` with its frozen generation recorded, and the snapshot
 * is `Creating` with progress strictly between 0 and 100.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { BceClient } from '../src/lib/bce-client.ts';
import { jobByKey, snapshotRow, type JobRow } from './helpers/region-db.ts';
import { sdkClient, send, until, waitSnapshot, waitVolume, type SdkClient } from './helpers/sdk.ts';
import { spawnServer, type SpawnedServer } from './helpers/spawned-server.ts';

const AK = 'crash-access-key-00000000';
const SK = 'crash-secret-key-11111111';
const MiB = 1 << 20;
/** Random data in the first DATA_MIB MiB of each disk: 512 chunks the capture must read and store. */
const DATA_MIB = 512;

let server: SpawnedServer;
let bj: SdkClient;

before(async () => {
  server = await spawnServer({ regions: ['bj'], env: { SNAPFERRY_ACCESS_KEY_ID: AK, SNAPFERRY_SECRET_ACCESS_KEY: SK } });
  bj = sdkClient(server.urls.bj!, AK, SK);
});
after(async () => server?.dispose());

const http = (): BceClient => new BceClient(server.urls.bj!, { accessKeyId: AK, secretAccessKey: SK });

async function newDisk(body: Record<string, unknown> = { cdsSizeInGB: 1 }): Promise<string> {
  const [id] = (await send(bj, 'POST', '/v2/volume', { body })).volumeIds;
  await waitVolume(bj, id);
  return id;
}

/** Fills the first DATA_MIB MiB of a disk with random bytes over HTTP, 4 writes in flight. */
async function fillRandom(volumeId: string): Promise<void> {
  const raw = http();
  try {
    const piece = 8 * MiB;
    const count = (DATA_MIB * MiB) / piece;
    await Promise.all([0, 1, 2, 3].map(async (lane) => {
      for (let k = lane; k < count; k += 4) {
        await raw.json({ method: 'PUT', path: `/v2/volume/${volumeId}/data`, query: { offset: String(k * piece) }, body: randomBytes(piece) });
      }
    }));
  } finally {
    await raw.close();
  }
}

/**
 * What a disk holds, as a user can check it: the sha256 of the range that was ever written, and
 * proof that everything after it reads as zeros (the extents call reports it as zero).
 */
async function content(volumeId: string): Promise<string> {
  const raw = http();
  try {
    const res = await raw.send({ method: 'GET', path: `/v2/volume/${volumeId}/data`, headers: { range: `bytes=0-${DATA_MIB * MiB - 1}` } });
    const hash = createHash('sha256');
    for await (const piece of res.body) hash.update(piece as Buffer);
    const extents = (await raw.json({ method: 'GET', path: `/v2/volume/${volumeId}/extents` })).extents as Array<{ offset: number; length: number; zero: boolean }>;
    const nonZeroPastData = extents.filter((e) => !e.zero && e.offset + e.length > DATA_MIB * MiB);
    assert.deepEqual(nonZeroPastData, [], `${volumeId} has data past the first ${DATA_MIB} MiB`);
    return hash.digest('hex');
  } finally {
    await raw.close();
  }
}

async function readRange(volumeId: string, offset: number, length: number): Promise<Buffer> {
  const raw = http();
  try {
    const res = await raw.send({ method: 'GET', path: `/v2/volume/${volumeId}/data`, headers: { range: `bytes=${offset}-${offset + length - 1}` } });
    return Buffer.from(await res.body.arrayBuffer());
  } finally {
    await raw.close();
  }
}

/**
 * Starts a snapshot and kills the server with -9 once the capture is seen mid-way. `meanwhile` runs
 * after that and before the kill. Checks, from the database the dead process left, that the kill
 * landed in the window, then restarts the server.
 */
async function crashMidCapture(volumeId: string, name: string, meanwhile: () => Promise<void> = async () => {}): Promise<{ snapshotId: string; job: JobRow }> {
  const { snapshotId } = await send(bj, 'POST', '/v2/snapshot', { body: { volumeId, snapshotName: name } });
  await until(async () => {
    const s = (await send(bj, 'GET', `/v2/snapshot/${snapshotId}`)).snapshot;
    assert.equal(s.status, 'Creating', 'the capture ended before it was seen mid-way: the disk is too small for this machine');
    return Number(s.progress) > 0;
  }, 60_000, 'capture under way');
  await meanwhile();
  await server.crash();
  const job = jobByKey(server.dataDir, 'bj', `snapshot.create:${snapshotId}`)!;
  const row = snapshotRow(server.dataDir, 'bj', snapshotId)!;
  assert.equal(row.status, 'Creating', 'the capture had not finished at the kill');
  assert.ok(row.progress > 0 && row.progress < 100, `the kill landed mid-capture (progress ${row.progress})`);
  assert.equal(job.state, 'running', 'the capture job was running at the kill');
  assert.equal(job.attempts, 1);
  assert.equal(typeof (job.progress as { frozenAt?: unknown } | null)?.frozenAt, 'number', `the job had recorded the generation it froze: ${JSON.stringify(job.progress)}`);
  await server.restart();
  bj = sdkClient(server.urls.bj!, AK, SK);
  return { snapshotId, job };
}

async function settled(snapshotId: string): Promise<any> {
  return until(async () => {
    const s = (await send(bj, 'GET', `/v2/snapshot/${snapshotId}`)).snapshot;
    return s.status === 'Creating' ? null : s;
  }, 120_000, 'snapshot to settle');
}

test('capture crash: kill -9 mid-capture with the disk not written since the freeze; after restart the snapshot completes and restores bit-identical', async () => {
  const volumeId = await newDisk();
  await fillRandom(volumeId);
  const before = await content(volumeId);
  const { snapshotId, job } = await crashMidCapture(volumeId, 'crash-clean');
  const done = await settled(snapshotId);
  assert.equal(done.status, 'Available', 'nothing was written after the freeze: the rerun must reproduce that instant');
  assert.equal(done.progress, '100');
  assert.equal(jobByKey(server.dataDir, 'bj', job.key)!.attempts, 2, 'the capture ran again after the restart');
  assert.equal(await content(await newDisk({ snapshotId })), before);
});

test('capture crash: kill -9 mid-capture after the disk was written past the freeze; after restart the snapshot is CreatedFailed, never a later state under the earlier name', async () => {
  const volumeId = await newDisk();
  await fillRandom(volumeId);
  const late = randomBytes(64 * 1024);
  const lateOffset = (DATA_MIB - 2) * MiB; // a chunk the capture (ascending, 8 at a time) reads last
  const { snapshotId } = await crashMidCapture(volumeId, 'crash-written', async () => {
    const raw = http();
    await raw.json({ method: 'PUT', path: `/v2/volume/${volumeId}/data`, query: { offset: String(lateOffset) }, body: late });
    await raw.close();
  });
  const done = await settled(snapshotId);
  assert.equal(done.status, 'CreatedFailed', 'the disk changed after the freeze, and the bytes copy-on-write had kept died with the process');
  // The write itself survived the crash, and a new snapshot of the disk holds it.
  assert.ok((await readRange(volumeId, lateOffset, late.length)).equals(late), 'the acknowledged write survived');
  const { snapshotId: next } = await send(bj, 'POST', '/v2/snapshot', { body: { volumeId, snapshotName: 'after-crash' } });
  await waitSnapshot(bj, next);
  assert.ok((await readRange(await newDisk({ snapshotId: next }), lateOffset, late.length)).equals(late));
});
