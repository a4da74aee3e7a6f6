/**
 * Replication between separate processes (one region each, `--peer`), through a proxy that counts
 * the bytes on the wire and can damage, slow or watch chunk uploads: damage in transit, the copy
 * cap, and kill -9 of either side at half a copy, with exact counts of what was sent again.
 *
 * Every test writes fresh random data into a disk of its own, so no chunk of its copy can be found
 * at the destination from another test's copy. Kills are placed by the proxy: when the destination
 * has answered half of the copy's chunk uploads, and before the source learns of the last answer.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { appendFile, mkdtemp, open, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BceClient } from '../src/lib/bce-client.ts';
import { SENDS_PER_COPY } from '../src/replication/copy-job.ts';
import { SYNC_BATCH_BYTES } from '../src/services/incoming-copy-service.ts';
import { assertRestoredIdentical, httpDiskReader, MiB, sha } from './helpers/copy-fixtures.ts';
import { copyTo, durableChunks, freshChunks, snapshotOf } from './helpers/e2e-copy.ts';
import { startFaultProxy, type ChunkUpload, type FaultProxy } from './helpers/fault-proxy.ts';
import { metric } from './helpers/metrics.ts';
import { sdkClient, send, sendError, until, waitSnapshot, type SdkClient } from './helpers/sdk.ts';
import { spawnServer, type SpawnedServer } from './helpers/spawned-server.ts';

const AK = 'fault-access-key-00000000';
const SK = 'fault-secret-key-11111111';
const tenant = { ak: AK, sk: SK };
const keys = { SNAPFERRY_ACCESS_KEY_ID: AK, SNAPFERRY_SECRET_ACCESS_KEY: SK, SNAPFERRY_REGION_SECRET: 'shared-region-secret-for-tests' };
/** Chunks of a kill test: incompressible, so bytes on the wire are the data itself. */
const KILL_DISTINCT = 448;
const KILL_REPEATS = 64;
/** Per chunk upload: SENDS_PER_COPY (16) in flight make ~260 chunks a second, a copy of ~1.8 s. */
const KILL_DELAY_MS = 60;
/** Request headers, manifest, "which do you lack" lists, progress calls: generously. */
const OVERHEAD = 2 * MiB;

let work: string;
let hkg: SpawnedServer;
let bj: SpawnedServer;
let proxy: FaultProxy;

const bjSdk = (): SdkClient => sdkClient(bj.urls.bj!, AK, SK);
const hkgSdk = (): SdkClient => sdkClient(hkg.urls.hkg!, AK, SK);
const ok = (uploads: ChunkUpload[]): ChunkUpload[] => uploads.filter((u) => u.status === 200);

before(async () => {
  work = await mkdtemp(join(tmpdir(), 'snapferry-faults-'));
  hkg = await spawnServer({ regions: ['hkg'], env: keys });
  proxy = await startFaultProxy(hkg.port);
  const config = join(work, 'bj.json');
  await writeFile(config, JSON.stringify({ copyConcurrencyPerDestination: 1 }));
  bj = await spawnServer({ regions: ['bj'], env: keys, extraArgs: ['--peer', `hkg=${proxy.url}`, '--config', config] });
});
after(async () => {
  await bj?.dispose();
  await hkg?.dispose();
  await proxy?.close();
  if (work) await rm(work, { recursive: true, force: true });
});

async function assertCopyRestores(copyId: string, chunks: Buffer[]): Promise<void> {
  const reader = httpDiskReader(hkg.urls.hkg!, (check) => until(check, 60_000, 'restore'), tenant);
  try {
    await assertRestoredIdentical(reader, copyId, chunks, MiB);
  } finally {
    await reader.close();
  }
}

/** The destination's copy once it is no longer Creating. */
async function copyEnded(copyId: string): Promise<{ status: string }> {
  return until(async () => {
    const s = (await send(hkgSdk(), 'GET', `/v2/snapshot/${copyId}`)).snapshot;
    return s.status === 'Creating' ? null : s;
  }, 60_000, 'the copy to end');
}

/** The source's record of its copy of `snapshotId` once it has failed. */
async function sourceFailure(snapshotId: string): Promise<{ attempts: number; lastError: unknown }> {
  return until(async () => {
    const c = (await send(bjSdk(), 'GET', `/v2/snapshot/remote_copy/${snapshotId}`)).copies[0];
    return c.state === 'failed' ? c : null;
  }, 30_000, 'the source to record the failure');
}

test('bytes damaged in transit are caught by the destination and exactly those are resent', async () => {
  const { chunks, distinct } = freshChunks(48, 0, randomBytes);
  const snapshotId = await snapshotOf(bj.urls.bj!, tenant, chunks, 'transit');
  const resentBefore = await metric(bj.urls.bj!, 'snapferry_replication_chunks_resent_total', { destination: 'hkg' });
  proxy.resetCounts();
  proxy.corruptNextChunks(3);
  const copyId = await copyTo(bj.urls.bj!, tenant, snapshotId, 'hkg');
  await waitSnapshot(hkgSdk(), copyId);
  assert.equal(proxy.corrupted(), 3);
  const uploads = proxy.uploads();
  assert.equal(uploads.filter((u) => u.status === 400).length, 3, 'three refused as damaged');
  assert.equal(ok(uploads).length, distinct.size, 'then every chunk arrived exactly once');
  assert.equal(new Set(ok(uploads).map((u) => u.chunkId)).size, distinct.size);
  assert.equal(await metric(bj.urls.bj!, 'snapferry_replication_chunks_resent_total', { destination: 'hkg' }) - resentBefore, 3);
  await assertCopyRestores(copyId, chunks);
});

test('a chunk damaged in the source\'s store is sent once, refused, never resent, and the copy fails as damaged', async () => {
  // The first send of a chunk takes its stored bytes without re-hashing them (the destination's hash
  // is the check); the resend after a refusal reads it verified, finds the damage and fails the copy
  // for good, instead of sending bad bytes again and again or retrying for a day.
  const { chunks } = freshChunks(8, 0, randomBytes);
  const snapshotId = await snapshotOf(bj.urls.bj!, tenant, chunks, 'damaged-at-source');
  const victimId = sha(chunks[3]!);
  const victim = join(bj.dataDir, 'bj', 'chunks', victimId.slice(0, 2), victimId);
  const fh = await open(victim, 'r+');
  try {
    const byte = Buffer.alloc(1);
    await fh.read(byte, 0, 1, 4096);
    byte[0]! ^= 0x01;
    await fh.write(byte, 0, 1, 4096);
  } finally {
    await fh.close();
  }
  proxy.resetCounts();
  const copyId = await copyTo(bj.urls.bj!, tenant, snapshotId, 'hkg');
  const failed = await copyEnded(copyId);
  assert.equal(failed.status, 'CreatedFailed');
  const ofVictim = proxy.uploads().filter((u) => u.chunkId === victimId);
  // Once (the unverified first send) or never (had the source checked first); refused either way.
  assert.ok(ofVictim.length <= 1 && ofVictim.every((u) => u.status === 400), `the damaged chunk went out at most once and was refused: ${JSON.stringify(ofVictim)}`);
  assert.ok(proxy.uploads().every((u) => u.chunkId === victimId || u.status === 200), 'every other chunk arrived');
  assert.equal(await durableChunks(hkg.dataDir, 'hkg', [victimId]), 0, 'nothing of the damaged chunk is kept');
  const source = await sourceFailure(snapshotId);
  assert.equal(source.attempts, 1, 'failed for good at once, not retried');
  assert.match(String(source.lastError), /damage|integrity|hash/i, `the source says why: ${source.lastError}`);
});

test('a chunk file grown past a chunk in the source\'s store fails the copy as damaged at once, not retried as a hiccup', async () => {
  // The first send reads into a chunk-sized pooled buffer, which a grown file does not fit; it is
  // then read verified, which finds the damage (it was once a RangeError, retried until the deadline).
  const { chunks } = freshChunks(8, 0, randomBytes);
  const snapshotId = await snapshotOf(bj.urls.bj!, tenant, chunks, 'grown-at-source');
  const victimId = sha(chunks[5]!);
  await appendFile(join(bj.dataDir, 'bj', 'chunks', victimId.slice(0, 2), victimId), Buffer.alloc(4096, 0xab));
  proxy.resetCounts();
  const copyId = await copyTo(bj.urls.bj!, tenant, snapshotId, 'hkg');
  const failed = await copyEnded(copyId);
  assert.equal(failed.status, 'CreatedFailed');
  assert.equal(proxy.uploads().filter((u) => u.chunkId === victimId).length, 0, 'the damaged chunk never went out');
  assert.equal(await durableChunks(hkg.dataDir, 'hkg', [victimId]), 0);
  const source = await sourceFailure(snapshotId);
  assert.equal(source.attempts, 1, 'failed for good at once, not retried');
  assert.match(String(source.lastError), /damage/i, `the source says why: ${source.lastError}`);
});

test('a snapshot cannot be deleted while a copy reads it; copies beyond the cap wait in order with progress 0', async () => {
  const { chunks } = freshChunks(16, 0, randomBytes);
  const snapshotId = await snapshotOf(bj.urls.bj!, tenant, chunks, 'capped');
  proxy.setChunkDelay(100);
  try {
    const first = await copyTo(bj.urls.bj!, tenant, snapshotId, 'hkg');
    const second = await copyTo(bj.urls.bj!, tenant, snapshotId, 'hkg');
    assert.deepEqual(await sendError(bjSdk(), 'DELETE', `/v2/snapshot/${snapshotId}`), { status: 403, code: 'SnapshotOperationForbidden' });
    await until(async () => (await metric(bj.urls.bj!, 'snapferry_replication_active_copies', { destination: 'hkg' })) === 1, 10_000, 'one active copy');
    assert.equal(await metric(bj.urls.bj!, 'snapferry_replication_queued_copies', { destination: 'hkg' }), 1);
    const waiting = (await send(hkgSdk(), 'GET', `/v2/snapshot/${second}`)).snapshot;
    assert.equal(waiting.status, 'Creating');
    assert.equal(waiting.progress, '0');
    proxy.setChunkDelay(0);
    await waitSnapshot(hkgSdk(), first);
    await waitSnapshot(hkgSdk(), second);
  } finally {
    proxy.setChunkDelay(0);
  }
  await send(bjSdk(), 'DELETE', `/v2/snapshot/${snapshotId}`); // allowed once no copy reads it
});

test('kill -9 of the destination at half a copy: after its restart the copy resends at most one batch and is exact', async (t) => {
  const { chunks, distinct } = freshChunks(KILL_DISTINCT, KILL_REPEATS, randomBytes);
  const n = distinct.size;
  const snapshotId = await snapshotOf(bj.urls.bj!, tenant, chunks, 'dest-crash');
  proxy.resetCounts();
  proxy.setChunkDelay(KILL_DELAY_MS);
  let killed: Promise<void> | null = null;
  proxy.onUpload((_u, all) => {
    if (!killed && ok(all).length === n / 2) killed = hkg.crash(); // SIGKILL now, before the source sees this answer
  });
  try {
    const copyId = await copyTo(bj.urls.bj!, tenant, snapshotId, 'hkg');
    await until(async () => killed !== null, 60_000, 'the kill');
    await killed;
    // Where the kill landed: the source's recorded progress, and what the destination holds durably.
    const atKill = (await send(bjSdk(), 'GET', `/v2/snapshot/remote_copy/${snapshotId}`)).copies[0];
    assert.ok(atKill.progress >= 40 && atKill.progress <= 70, `recorded progress at the kill: ${atKill.progress} %`);
    await until(async () => proxy.inflight() === 0, 10_000, 'uploads in flight to settle');
    const acknowledged = ok(proxy.uploads()).length;
    const durable = await durableChunks(hkg.dataDir, 'hkg', distinct);
    const lost = acknowledged - durable;
    assert.ok(durable >= 0.4 * n && durable <= 0.7 * n, `durable at the destination at the kill: ${durable} of ${n}`);
    assert.ok(lost >= 0 && lost * MiB <= SYNC_BATCH_BYTES + SENDS_PER_COPY * MiB, `acknowledged but not yet durable: ${lost} chunks`);

    proxy.setChunkDelay(0);
    const before = proxy.uploads().length;
    await hkg.restart();
    const done = await waitSnapshot(hkgSdk(), copyId, 120_000);
    assert.equal(done.progress, '100');
    const afterRestart = ok(proxy.uploads().slice(before));
    assert.equal(afterRestart.length, n - durable, 'after the restart exactly the chunks that were not durable were sent');
    const wire = proxy.bytesIn();
    t.diagnostic(`destination kill: ${n} MiB snapshot, kill at ${acknowledged} acknowledged / ${durable} durable chunks (source progress ${atKill.progress} %), ${lost} chunks resent, ${wire} bytes on the wire (${(wire / (n * MiB)).toFixed(3)}x)`);
    assert.ok(wire <= n * MiB + SYNC_BATCH_BYTES + SENDS_PER_COPY * MiB + OVERHEAD, `${wire} bytes on the wire`);
    assert.ok(wire <= 1.1 * n * MiB, `${wire} bytes on the wire: at most 1.1x`);
    await assertCopyRestores(copyId, chunks);
  } finally {
    proxy.onUpload(null);
    proxy.setChunkDelay(0);
  }
});

test('kill -9 of the source at half a copy: on restart it sends exactly the chunks that had not arrived', async (t) => {
  const { chunks, distinct } = freshChunks(KILL_DISTINCT, KILL_REPEATS, randomBytes);
  const n = distinct.size;
  const snapshotId = await snapshotOf(bj.urls.bj!, tenant, chunks, 'source-crash');
  const presentBefore = await metric(hkg.urls.hkg!, 'snapferry_incoming_chunks_received_total', { result: 'present' });
  proxy.resetCounts();
  proxy.setChunkDelay(KILL_DELAY_MS);
  let killed: Promise<void> | null = null;
  proxy.onUpload((_u, all) => {
    if (!killed && ok(all).length === n / 2) killed = bj.crash();
  });
  try {
    const copyId = await copyTo(bj.urls.bj!, tenant, snapshotId, 'hkg');
    await until(async () => killed !== null, 60_000, 'the kill');
    await killed;
    await until(async () => proxy.inflight() === 0, 10_000, 'uploads in flight to settle');
    const arrived = ok(proxy.uploads()).length;
    const atKill = (await send(hkgSdk(), 'GET', `/v2/snapshot/${copyId}`)).snapshot;
    assert.equal(atKill.status, 'Creating');
    assert.ok(Number(atKill.progress) >= 40 && Number(atKill.progress) <= 70, `destination progress at the kill: ${atKill.progress} %`);
    assert.ok(arrived >= 0.4 * n && arrived <= 0.7 * n, `${arrived} of ${n} chunks had arrived`);

    proxy.setChunkDelay(0);
    const before = proxy.uploads().length;
    await bj.restart();
    await waitSnapshot(hkgSdk(), copyId, 120_000);
    const afterRestart = ok(proxy.uploads().slice(before));
    assert.equal(afterRestart.length, n - arrived, 'the restarted source sent exactly the chunks that had not arrived');
    const all = ok(proxy.uploads());
    assert.equal(new Set(all.map((u) => u.chunkId)).size, all.length, 'no chunk arrived twice');
    assert.equal(await metric(hkg.urls.hkg!, 'snapferry_incoming_chunks_received_total', { result: 'present' }) - presentBefore, 0);
    const wire = proxy.bytesIn();
    t.diagnostic(`source kill: ${n} MiB snapshot, kill at ${arrived} arrived chunks (destination progress ${atKill.progress} %), ${n - arrived} sent after the restart, ${wire} bytes on the wire (${(wire / (n * MiB)).toFixed(3)}x)`);
    assert.ok(wire <= n * MiB + SENDS_PER_COPY * MiB + OVERHEAD, `${wire} bytes on the wire`);
    assert.ok(wire <= 1.1 * n * MiB);
    await assertCopyRestores(copyId, chunks);
  } finally {
    proxy.onUpload(null);
    proxy.setChunkDelay(0);
  }
});

test('internal endpoints refuse a tenant\'s keys', async () => {
  const tenantClient = new BceClient(hkg.urls.hkg!, { accessKeyId: AK, secretAccessKey: SK });
  await assert.rejects(tenantClient.json({ method: 'POST', path: '/internal/v1/snapshots/s-whatever/chunks/missing', json: { ids: [] } }), (e: any) => e.status === 403 && e.code === 'InvalidAccessKeyId');
  await assert.rejects(tenantClient.json({ method: 'POST', path: '/internal/v1/admin/gc' }), (e: any) => e.status === 403);
  await tenantClient.close();
});
