/**
 * Invariant: copies beyond the per-destination cap wait, and start in the order they were
 * requested; never more than the cap run at once. Watched from the source region's job queue (read
 * straight from its database while the server runs) with a cap of 2, then checked end to end: every
 * copy completes and holds its snapshot's bytes.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BceClient } from '../src/lib/bce-client.ts';
import { jobRows } from './helpers/region-db.ts';
import { sdkClient, send, waitSnapshot, waitVolume, type SdkClient } from './helpers/sdk.ts';
import { spawnServer, type SpawnedServer } from './helpers/spawned-server.ts';

const AK = 'queue-access-key-00000000';
const SK = 'queue-secret-key-11111111';
const MiB = 1 << 20;
const CAP = 2;
const COPIES = 6;
const DATA = 24 * MiB;

let work: string;
let server: SpawnedServer;
const sdk = (region: string): SdkClient => sdkClient(server.urls[region]!, AK, SK);
const http = (region: string): BceClient => new BceClient(server.urls[region]!, { accessKeyId: AK, secretAccessKey: SK });

before(async () => {
  work = await mkdtemp(join(tmpdir(), 'snapferry-copy-queue-'));
  const config = join(work, 'config.json');
  await writeFile(config, JSON.stringify({ copyConcurrencyPerDestination: CAP }));
  server = await spawnServer({ regions: ['bj', 'hkg'], env: { SNAPFERRY_ACCESS_KEY_ID: AK, SNAPFERRY_SECRET_ACCESS_KEY: SK }, extraArgs: ['--config', config] });
});
after(async () => {
  await server?.dispose();
  if (work) await rm(work, { recursive: true, force: true });
});

async function firstBytesSha(region: string, volumeId: string): Promise<string> {
  const raw = http(region);
  try {
    const res = await raw.send({ method: 'GET', path: `/v2/volume/${volumeId}/data`, headers: { range: `bytes=0-${DATA - 1}` } });
    return createHash('sha256').update(Buffer.from(await res.body.arrayBuffer())).digest('hex');
  } finally {
    await raw.close();
  }
}

test(`copy queue: with a cap of ${CAP} per destination, ${COPIES} copies start in request order and never more than ${CAP} run at once`, async () => {
  const bj = sdk('bj');
  // One snapshot per copy, each of its own random data, so that no copy finds its chunks already sent.
  const snapshots: Array<{ id: string; sha: string }> = [];
  const raw = http('bj');
  for (let i = 0; i < COPIES; i++) {
    const [v] = (await send(bj, 'POST', '/v2/volume', { body: { cdsSizeInGB: 1 } })).volumeIds;
    await waitVolume(bj, v);
    const data = randomBytes(DATA);
    await raw.json({ method: 'PUT', path: `/v2/volume/${v}/data`, query: { offset: '0' }, body: data });
    const { snapshotId } = await send(bj, 'POST', '/v2/snapshot', { body: { volumeId: v, snapshotName: `q${i}` } });
    await waitSnapshot(bj, snapshotId);
    snapshots.push({ id: snapshotId, sha: createHash('sha256').update(data).digest('hex') });
  }
  await raw.close();

  const copies: string[] = [];
  for (const s of snapshots) {
    copies.push((await send(bj, 'PUT', `/v2/snapshot/remote_copy/${s.id}`, { body: { destRegionInfos: [{ destRegion: 'hkg' }] } })).result[0].snapshotId);
  }
  const copyJobs = () => jobRows(server.dataDir, 'bj').filter((j) => j.kind === 'snapshot.copy');
  const firstSeenRunning: number[] = [];
  const runningSets = new Set<string>();
  const deadline = Date.now() + 180_000;
  for (;;) {
    assert.ok(Date.now() < deadline, 'the copies did not all end within 3 minutes');
    const jobs = copyJobs();
    assert.equal(jobs.length, COPIES);
    const runningIds = jobs.filter((j) => j.state === 'running').map((j) => j.id);
    const waiting = jobs.filter((j) => j.state === 'queued').map((j) => j.id);
    assert.ok(runningIds.length <= CAP, `at most ${CAP} copies run at once: running ${runningIds.join(',')}`);
    if (runningIds.length && waiting.length) {
      assert.ok(Math.max(...runningIds) < Math.min(...waiting), `a copy runs while an older one waits: running ${runningIds.join(',')}, waiting ${waiting.join(',')}`);
    }
    for (const id of runningIds) if (!firstSeenRunning.includes(id)) firstSeenRunning.push(id);
    if (runningIds.length) runningSets.add(runningIds.join(','));
    if (jobs.every((j) => j.state === 'done' || j.state === 'failed')) break;
    await new Promise((r) => setTimeout(r, 10));
  }
  assert.deepEqual(copyJobs().map((j) => j.state), Array(COPIES).fill('done'));
  assert.deepEqual(firstSeenRunning, [...firstSeenRunning].sort((a, b) => a - b), 'copies started in request order');
  assert.ok(runningSets.size >= 3, `the queue was seen moving (${[...runningSets].join(' | ')})`);
  // Request order is job id order.
  assert.deepEqual(copyJobs().map((j) => j.payload.destSnapshotId), copies);

  const hkg = sdk('hkg');
  for (const [i, copy] of copies.entries()) {
    await waitSnapshot(hkg, copy);
    const [v] = (await send(hkg, 'POST', '/v2/volume', { body: { snapshotId: copy } })).volumeIds;
    await waitVolume(hkg, v);
    assert.equal(await firstBytesSha('hkg', v), snapshots[i]!.sha, `copy ${i} holds its snapshot's bytes`);
  }
});
