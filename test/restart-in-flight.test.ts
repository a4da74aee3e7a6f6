/**
 * Invariant: after kill -9 everything resumes on restart and reaches its documented end state with
 * the right bytes (README "Shutdown", design.md "Write order and crash safety"): a disk being
 * created from a snapshot, a rollback, a snapshot being taken (of a disk not written since) and a
 * remote copy, all running at the moment of the kill, proven from the job rows the dead process
 * left behind.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { BceClient } from '../src/lib/bce-client.ts';
import { jobRows } from './helpers/region-db.ts';
import { sdkClient, send, until, waitSnapshot, waitVolume, type SdkClient } from './helpers/sdk.ts';
import { spawnServer, type SpawnedServer } from './helpers/spawned-server.ts';

const AK = 'inflight-access-key-00000';
const SK = 'inflight-secret-key-11111';
const MiB = 1 << 20;
const DATA_MIB = 256;

let server: SpawnedServer;
const sdk = (region: string): SdkClient => sdkClient(server.urls[region]!, AK, SK);
const http = (region: string): BceClient => new BceClient(server.urls[region]!, { accessKeyId: AK, secretAccessKey: SK });

before(async () => {
  server = await spawnServer({ regions: ['bj', 'hkg'], env: { SNAPFERRY_ACCESS_KEY_ID: AK, SNAPFERRY_SECRET_ACCESS_KEY: SK } });
});
after(async () => server?.dispose());

async function newDisk(region: string, body: Record<string, unknown> = { cdsSizeInGB: 1 }): Promise<string> {
  const [id] = (await send(sdk(region), 'POST', '/v2/volume', { body })).volumeIds;
  await waitVolume(sdk(region), id);
  return id;
}

async function fillRandom(volumeId: string): Promise<void> {
  const raw = http('bj');
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

/** sha256 of the first DATA_MIB MiB, after checking that the rest of the disk reads as zeros. */
async function content(region: string, volumeId: string): Promise<string> {
  const raw = http(region);
  try {
    const extents = (await raw.json({ method: 'GET', path: `/v2/volume/${volumeId}/extents` })).extents as Array<{ offset: number; length: number; zero: boolean }>;
    assert.deepEqual(extents.filter((e) => !e.zero && e.offset + e.length > DATA_MIB * MiB), [], `${region} ${volumeId} holds data past ${DATA_MIB} MiB`);
    const res = await raw.send({ method: 'GET', path: `/v2/volume/${volumeId}/data`, headers: { range: `bytes=0-${DATA_MIB * MiB - 1}` } });
    const hash = createHash('sha256');
    for await (const piece of res.body) hash.update(piece as Buffer);
    return hash.digest('hex');
  } finally {
    await raw.close();
  }
}

test('restart in flight: kill -9 with a disk fill from a snapshot, a rollback, a capture and a copy all running; after restart each reaches its end state with the right bytes', async () => {
  const bj = sdk('bj');
  // A: snapshot sa, then overwritten, so that rolling it back rewrites every chunk.
  const a = await newDisk('bj');
  await fillRandom(a);
  const saContent = await content('bj', a);
  const { snapshotId: sa } = await send(bj, 'POST', '/v2/snapshot', { body: { volumeId: a, snapshotName: 'sa' } });
  await waitSnapshot(bj, sa);
  await fillRandom(a);
  // C: the disk to capture; not written once the capture starts.
  const c = await newDisk('bj');
  await fillRandom(c);
  const cContent = await content('bj', c);

  const [created, , { snapshotId: sc }, copy] = await Promise.all([
    send(bj, 'POST', '/v2/volume', { body: { snapshotId: sa } }).then((r) => r.volumeIds[0] as string),
    send(bj, 'PUT', `/v2/volume/${a}`, { params: { rollback: '' }, body: { snapshotId: sa } }),
    send(bj, 'POST', '/v2/snapshot', { body: { volumeId: c, snapshotName: 'sc' } }),
    send(bj, 'PUT', `/v2/snapshot/remote_copy/${sa}`, { body: { destRegionInfos: [{ destRegion: 'hkg' }] } }).then((r) => r.result[0].snapshotId as string),
  ]);
  // The four jobs, by their keys.
  const keys = [`volume.create:${created}`, `volume.rollback:${a}:`, `snapshot.create:${sc}`, `copy:${sa}:hkg:${copy}`];
  const mine = () => keys.map((k) => jobRows(server.dataDir, 'bj').find((j) => j.key.startsWith(k)) ?? null);
  await until(async () => {
    const rows = mine();
    const finished = rows.filter((j) => j && (j.state === 'done' || j.state === 'failed'));
    assert.deepEqual(finished.map((j) => j!.key), [], 'a job ended before all four were seen running: the test needs more data');
    return rows.every((j) => j?.state === 'running');
  }, 60_000, 'all four jobs running');
  await server.crash();

  // What the dead process left: each of the four jobs running, on its first attempt.
  const atKill = mine();
  assert.deepEqual(atKill.map((j) => [j?.kind, j?.state, j?.attempts]), [
    ['volume.create', 'running', 1], ['volume.rollback', 'running', 1], ['snapshot.create', 'running', 1], ['snapshot.copy', 'running', 1],
  ]);

  await server.restart();
  const bj2 = sdk('bj');
  const hkg = sdk('hkg');
  await waitVolume(bj2, created, 120_000);
  await waitVolume(bj2, a, 120_000);
  await waitSnapshot(bj2, sc, 120_000);
  await waitSnapshot(hkg, copy, 120_000);
  assert.equal(await content('bj', created), saContent, 'the disk created from sa holds sa');
  assert.equal(await content('bj', a), saContent, 'the rolled-back disk holds sa');
  assert.equal(await content('bj', await newDisk('bj', { snapshotId: sc })), cContent, 'sc holds c as it was');
  assert.equal(await content('hkg', await newDisk('hkg', { snapshotId: copy })), saContent, 'the copy in hkg holds sa');
  for (const j of mine()) {
    assert.equal(j!.state, 'done', `${j!.kind} finished`);
    assert.ok(j!.attempts >= 2, `${j!.kind} ran again after the restart`);
  }
});
