/**
 * Replication between separate processes (one region each, `--peer`), through a proxy that damages
 * or slows chunk uploads; kill -9 of either side in the middle of a copy; the copy cap per
 * destination; deleting a snapshot that a copy is reading.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BceClient } from '../src/lib/bce-client.ts';
import { cliJson } from './helpers/cli.ts';
import { startFaultProxy, type FaultProxy } from './helpers/fault-proxy.ts';
import { metric } from './helpers/metrics.ts';
import { sdkClient, send, sendError, until, waitSnapshot, waitVolume, type SdkClient } from './helpers/sdk.ts';
import { spawnServer, type SpawnedServer } from './helpers/spawned-server.ts';
import { sha256Of } from './helpers/test-image.ts';

const AK = 'fault-access-key-00000000';
const SK = 'fault-secret-key-11111111';
const MiB = 1 << 20;
const GiB = 1024 ** 3;
const keys = { SNAPFERRY_ACCESS_KEY_ID: AK, SNAPFERRY_SECRET_ACCESS_KEY: SK, SNAPFERRY_REGION_SECRET: 'shared-region-secret-for-tests' };

let work: string;
let hkg: SpawnedServer;
let bj: SpawnedServer;
let proxy: FaultProxy;
let volumeId: string;

const sdk = (s: SpawnedServer, region: string): SdkClient => sdkClient(s.urls[region]!, AK, SK);
const bjSdk = (): SdkClient => sdk(bj, 'bj');
const hkgSdk = (): SdkClient => sdk(hkg, 'hkg');

before(async () => {
  work = await mkdtemp(join(tmpdir(), 'snapferry-faults-'));
  hkg = await spawnServer({ regions: ['hkg'], env: keys });
  proxy = await startFaultProxy(hkg.port);
  const config = join(work, 'bj.json');
  await writeFile(config, JSON.stringify({ copyConcurrencyPerDestination: 1 }));
  bj = await spawnServer({ regions: ['bj'], env: keys, extraArgs: ['--peer', `hkg=${proxy.url}`, '--config', config] });
  [volumeId] = (await send(bjSdk(), 'POST', '/v2/volume', { body: { cdsSizeInGB: 1 } })).volumeIds;
  await waitVolume(bjSdk(), volumeId);
});
after(async () => {
  await bj?.dispose();
  await hkg?.dispose();
  await proxy?.close();
  if (work) await rm(work, { recursive: true, force: true });
});

/** Fills [offset, offset+length) of the bj disk with fresh random data and snapshots it. */
async function writeAndSnapshot(offset: number, length: number, name: string): Promise<string> {
  const raw = new BceClient(bj.urls.bj!, { accessKeyId: AK, secretAccessKey: SK });
  for (let at = offset; at < offset + length; at += 4 * MiB) {
    await raw.json({ method: 'PUT', path: `/v2/volume/${volumeId}/data`, query: { offset: String(at) }, body: randomBytes(4 * MiB) });
  }
  await raw.close();
  const { snapshotId } = await send(bjSdk(), 'POST', '/v2/snapshot', { body: { volumeId, snapshotName: name } });
  await waitSnapshot(bjSdk(), snapshotId);
  return snapshotId;
}

async function copyToHkg(snapshotId: string): Promise<string> {
  const { result } = await send(bjSdk(), 'PUT', `/v2/snapshot/remote_copy/${snapshotId}`, { body: { destRegionInfos: [{ destRegion: 'hkg' }] } });
  return result[0].snapshotId;
}

/** Restores a snapshot into a new disk in `server`'s region and returns the disk's sha256. */
async function restoredSha(server: SpawnedServer, region: string, snapshotId: string): Promise<string> {
  const c = sdk(server, region);
  const [v] = (await send(c, 'POST', '/v2/volume', { body: { snapshotId } })).volumeIds;
  await waitVolume(c, v);
  const out = join(work, `${v}.img`);
  await cliJson(['volume', 'export', v, out], { ...keys, SNAPFERRY_ENDPOINT: server.urls[region]! });
  const sha = await sha256Of(out, GiB);
  await rm(out);
  return sha;
}

test('one region per process with --peer; bytes damaged in transit are caught by the destination and resent', async () => {
  const snapshotId = await writeAndSnapshot(0, 64 * MiB, 'transit');
  proxy.corruptNextChunks(3);
  const copyId = await copyToHkg(snapshotId);
  await waitSnapshot(hkgSdk(), copyId);
  assert.equal(proxy.corrupted(), 3);
  assert.equal(await metric(bj.urls.bj!, 'snapferry_replication_chunks_resent_total', { destination: 'hkg' }), 3);
  assert.equal(await restoredSha(hkg, 'hkg', copyId), await restoredSha(bj, 'bj', snapshotId));
});

test('a snapshot cannot be deleted while a copy reads it; copies beyond the cap wait in order with progress 0', async () => {
  const snapshotId = await writeAndSnapshot(64 * MiB, 32 * MiB, 'capped');
  proxy.setChunkDelay(30);
  const first = await copyToHkg(snapshotId);
  const second = await copyToHkg(snapshotId);
  assert.deepEqual(await sendError(bjSdk(), 'DELETE', `/v2/snapshot/${snapshotId}`), { status: 403, code: 'SnapshotOperationForbidden' });
  await until(async () => (await metric(bj.urls.bj!, 'snapferry_replication_active_copies', { destination: 'hkg' })) === 1, 10_000, 'one active copy');
  assert.equal(await metric(bj.urls.bj!, 'snapferry_replication_queued_copies', { destination: 'hkg' }), 1);
  const waiting = (await send(hkgSdk(), 'GET', `/v2/snapshot/${second}`)).snapshot;
  assert.equal(waiting.status, 'Creating');
  assert.equal(waiting.progress, '0');
  proxy.setChunkDelay(0);
  await waitSnapshot(hkgSdk(), first);
  await waitSnapshot(hkgSdk(), second);
  await send(bjSdk(), 'DELETE', `/v2/snapshot/${snapshotId}`); // allowed once no copy reads it
});

test('kill -9 of the destination mid-copy: the copy resumes when it is back, skips what arrived, and is exact', async () => {
  const snapshotId = await writeAndSnapshot(128 * MiB, 192 * MiB, 'dest-crash');
  proxy.setChunkDelay(5);
  const copyId = await copyToHkg(snapshotId);
  await until(async () => Number((await send(hkgSdk(), 'GET', `/v2/snapshot/${copyId}`)).snapshot.progress) >= 20, 60_000, 'progress 20%');
  await hkg.crash();
  proxy.setChunkDelay(0);
  const skippedBefore = await metric(bj.urls.bj!, 'snapferry_replication_chunks_skipped_total', { destination: 'hkg' });
  await new Promise((r) => setTimeout(r, 1000));
  await hkg.restart();
  const done = await waitSnapshot(hkgSdk(), copyId, 180_000);
  assert.equal(done.progress, '100');
  const skipped = (await metric(bj.urls.bj!, 'snapferry_replication_chunks_skipped_total', { destination: 'hkg' })) - skippedBefore;
  assert.ok(skipped >= 20, `chunks that had arrived before the crash were skipped (${skipped})`);
  assert.equal(await restoredSha(hkg, 'hkg', copyId), await restoredSha(bj, 'bj', snapshotId));
});

test('kill -9 of the source mid-copy: the copy resumes on restart without resending what arrived', async () => {
  const snapshotId = await writeAndSnapshot(320 * MiB, 192 * MiB, 'source-crash');
  proxy.setChunkDelay(5);
  const copyId = await copyToHkg(snapshotId);
  await until(async () => Number((await send(hkgSdk(), 'GET', `/v2/snapshot/${copyId}`)).snapshot.progress) >= 20, 60_000, 'progress 20%');
  await bj.crash();
  proxy.setChunkDelay(0);
  await bj.restart();
  await waitSnapshot(hkgSdk(), copyId, 180_000);
  // Counters start again with the new process: what it skipped is what had arrived before the crash.
  assert.ok((await metric(bj.urls.bj!, 'snapferry_replication_chunks_skipped_total', { destination: 'hkg' })) >= 20);
  assert.ok((await metric(bj.urls.bj!, 'snapferry_replication_chunks_sent_total', { destination: 'hkg' })) < 192);
  assert.equal(await restoredSha(hkg, 'hkg', copyId), await restoredSha(bj, 'bj', snapshotId));
});

test('internal endpoints refuse a tenant\'s keys', async () => {
  const tenant = new BceClient(hkg.urls.hkg!, { accessKeyId: AK, secretAccessKey: SK });
  await assert.rejects(tenant.json({ method: 'POST', path: '/internal/v1/chunks/missing', json: { ids: [] } }), (e: any) => e.status === 403 && e.code === 'InvalidAccessKeyId');
  await assert.rejects(tenant.json({ method: 'POST', path: '/internal/v1/admin/gc' }), (e: any) => e.status === 403);
  await tenant.close();
});
