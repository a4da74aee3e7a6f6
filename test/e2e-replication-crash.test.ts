/**
 * The default one-process layout (bj, gz and hkg in one `snapferry serve`), with bj's way to hkg
 * routed through a counting proxy (`--peer hkg=...`; the regions still talk only over HTTP):
 * kill -9 of the whole process, source and destination at once, at half a copy; a clean stop at
 * half a copy; and dedup counted exactly. Fresh random data per test.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { SENDS_PER_COPY } from '../src/replication/copy-job.ts';
import { SYNC_BATCH_BYTES } from '../src/services/incoming-copy-service.ts';
import { assertRestoredIdentical, httpDiskReader, MiB } from './helpers/copy-fixtures.ts';
import { copyTo, durableChunks, freshChunks, recordedCopyProgress, snapshotOf } from './helpers/e2e-copy.ts';
import { startFaultProxy, type ChunkUpload, type FaultProxy } from './helpers/fault-proxy.ts';
import { metric } from './helpers/metrics.ts';
import { sdkClient, until, waitSnapshot } from './helpers/sdk.ts';
import { freePortRange, spawnServer, type SpawnedServer } from './helpers/spawned-server.ts';

const AK = 'crash-access-key-0000000';
const SK = 'crash-secret-key-1111111';
const tenant = { ak: AK, sk: SK };
const OVERHEAD = 2 * MiB;

let server: SpawnedServer;
let proxy: FaultProxy;
const ok = (uploads: ChunkUpload[]): ChunkUpload[] => uploads.filter((u) => u.status === 200);
const hkgSdk = () => sdkClient(server.urls.hkg!, AK, SK);

before(async () => {
  const port = await freePortRange(3);
  proxy = await startFaultProxy(port + 2); // hkg is the third region of the process
  server = await spawnServer({ port, env: { SNAPFERRY_ACCESS_KEY_ID: AK, SNAPFERRY_SECRET_ACCESS_KEY: SK }, extraArgs: ['--peer', `hkg=${proxy.url}`] });
});
after(async () => {
  await server?.dispose();
  await proxy?.close();
});

async function assertCopyRestores(copyId: string, chunks: Buffer[]): Promise<void> {
  const reader = httpDiskReader(server.urls.hkg!, (check) => until(check, 60_000, 'restore'), tenant);
  try {
    await assertRestoredIdentical(reader, copyId, chunks, MiB);
  } finally {
    await reader.close();
  }
}

test('kill -9 of the one-process server (source and destination at once) at half a copy: resumes, resends at most one batch', async (t) => {
  const { chunks, distinct } = freshChunks(448, 64, randomBytes);
  const n = distinct.size;
  const snapshotId = await snapshotOf(server.urls.bj!, tenant, chunks, 'both-crash');
  proxy.resetCounts();
  proxy.setChunkDelay(60);
  let killed: Promise<void> | null = null;
  proxy.onUpload((_u, all) => {
    if (!killed && ok(all).length === n / 2) killed = server.crash();
  });
  try {
    const copyId = await copyTo(server.urls.bj!, tenant, snapshotId, 'hkg');
    await until(async () => killed !== null, 60_000, 'the kill');
    await killed;
    await until(async () => proxy.inflight() === 0, 10_000, 'uploads in flight to settle');
    // Where the kill landed, from what each side recorded durably.
    const recorded = recordedCopyProgress(server.dataDir, 'bj', copyId);
    assert.ok(recorded && recorded.percent >= 40 && recorded.percent <= 70, `the copy job's recorded progress at the kill: ${JSON.stringify(recorded)}`);
    const acknowledged = ok(proxy.uploads()).length;
    const durable = await durableChunks(server.dataDir, 'hkg', distinct);
    assert.ok(durable >= 0.4 * n && durable <= 0.7 * n, `durable at the destination: ${durable} of ${n}`);
    const lost = acknowledged - durable;
    assert.ok(lost >= 0 && lost * MiB <= SYNC_BATCH_BYTES + SENDS_PER_COPY * MiB, `acknowledged but not durable: ${lost}`);

    proxy.setChunkDelay(0);
    const before = proxy.uploads().length;
    await server.restart();
    await waitSnapshot(hkgSdk(), copyId, 120_000);
    assert.equal(ok(proxy.uploads().slice(before)).length, n - durable, 'after the restart exactly the chunks not durable were sent');
    const wire = proxy.bytesIn();
    t.diagnostic(`one-process kill: ${n} MiB snapshot, kill at ${acknowledged} acknowledged / ${durable} durable chunks (recorded progress ${recorded!.percent} %), ${lost} chunks resent, ${wire} bytes on the wire (${(wire / (n * MiB)).toFixed(3)}x)`);
    assert.ok(wire <= n * MiB + SYNC_BATCH_BYTES + SENDS_PER_COPY * MiB + OVERHEAD, `${wire} bytes on the wire`);
    assert.ok(wire <= 1.1 * n * MiB, `${wire} bytes on the wire: at most 1.1x`);
    await assertCopyRestores(copyId, chunks);
  } finally {
    proxy.onUpload(null);
    proxy.setChunkDelay(0);
  }
});

test('a clean stop (SIGTERM) at half a copy loses nothing: after the restart only the rest is sent', async () => {
  const { chunks, distinct } = freshChunks(64, 0, randomBytes);
  const n = distinct.size;
  const snapshotId = await snapshotOf(server.urls.bj!, tenant, chunks, 'clean-stop');
  proxy.resetCounts();
  proxy.setChunkDelay(60);
  let stopped: Promise<number | null> | null = null;
  proxy.onUpload((_u, all) => {
    if (!stopped && ok(all).length === n / 2) stopped = server.stop('SIGTERM');
  });
  try {
    const copyId = await copyTo(server.urls.bj!, tenant, snapshotId, 'hkg');
    await until(async () => stopped !== null, 60_000, 'the stop');
    assert.equal(await stopped, 0);
    await until(async () => proxy.inflight() === 0, 10_000, 'uploads in flight to settle');
    const acknowledged = ok(proxy.uploads()).length;
    assert.equal(await durableChunks(server.dataDir, 'hkg', distinct), acknowledged, 'everything acknowledged was synced at shutdown');
    proxy.setChunkDelay(0);
    const before = proxy.uploads().length;
    await server.restart();
    await waitSnapshot(hkgSdk(), copyId, 120_000);
    assert.equal(ok(proxy.uploads().slice(before)).length, n - acknowledged, 'nothing was sent twice');
    await assertCopyRestores(copyId, chunks);
  } finally {
    proxy.onUpload(null);
    proxy.setChunkDelay(0);
  }
});

test('dedup is exact: 32 distinct chunks each appearing 4 times send exactly 32 chunks', async () => {
  const distinctChunks = Array.from({ length: 32 }, () => randomBytes(MiB));
  // Each chunk at four places, 32 MiB apart: 128 chunk positions, 32 distinct.
  const chunks = [0, 1, 2, 3].flatMap(() => distinctChunks);
  const snapshotId = await snapshotOf(server.urls.bj!, tenant, chunks, 'dedup');
  const sentBefore = await metric(server.urls.bj!, 'snapferry_replication_chunks_sent_total', { destination: 'hkg' });
  const storedBefore = await metric(server.urls.hkg!, 'snapferry_incoming_chunks_received_total', { result: 'stored' });
  proxy.resetCounts();
  const copyId = await copyTo(server.urls.bj!, tenant, snapshotId, 'hkg');
  const done = await waitSnapshot(hkgSdk(), copyId, 120_000);
  assert.equal(done.progress, '100');
  assert.equal(proxy.uploads().length, 32, 'chunk uploads on the wire');
  assert.equal(new Set(proxy.uploads().map((u) => u.chunkId)).size, 32);
  assert.equal(await metric(server.urls.bj!, 'snapferry_replication_chunks_sent_total', { destination: 'hkg' }) - sentBefore, 32);
  assert.equal(await metric(server.urls.hkg!, 'snapferry_incoming_chunks_received_total', { result: 'stored' }) - storedBefore, 32);
  assert.ok(proxy.bytesIn() <= 32 * MiB + OVERHEAD, `${proxy.bytesIn()} bytes on the wire`);
  await assertCopyRestores(copyId, chunks);
});
