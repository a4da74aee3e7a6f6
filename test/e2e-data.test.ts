/**
 * Disk data and snapshot storage end to end: a spawned single-region server, the real CLI for
 * images, scrub and gc, the official SDK for BCC calls, and the chunk files on disk.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, open, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BceClient } from '../src/lib/bce-client.ts';
import { cliJson, runCli } from './helpers/cli.ts';
import { metric } from './helpers/metrics.ts';
import { sdkClient, send, waitSnapshot, waitVolume, until, type SdkClient } from './helpers/sdk.ts';
import { spawnServer, type SpawnedServer } from './helpers/spawned-server.ts';
import { makeImage, sha256Of, type TestImage } from './helpers/test-image.ts';

const AK = 'data-access-key-000000000';
const SK = 'data-secret-key-111111111';
const GiB = 1024 ** 3;
const MiB = 1 << 20;

let server: SpawnedServer;
let work: string;
let image: TestImage;
let imageSha: string;
let bj: SdkClient;
let env: Record<string, string>;
const state: { volumeId?: string; snapshotId?: string } = {};

before(async () => {
  work = await mkdtemp(join(tmpdir(), 'snapferry-data-'));
  const config = join(work, 'config.json');
  await writeFile(config, JSON.stringify({ gcGraceSeconds: 0, gcIntervalSeconds: 3600 }));
  server = await spawnServer({ regions: ['bj'], env: { SNAPFERRY_ACCESS_KEY_ID: AK, SNAPFERRY_SECRET_ACCESS_KEY: SK }, extraArgs: ['--config', config] });
  env = { SNAPFERRY_ACCESS_KEY_ID: AK, SNAPFERRY_SECRET_ACCESS_KEY: SK, SNAPFERRY_ENDPOINT: server.urls.bj! };
  bj = sdkClient(server.urls.bj!, AK, SK);
  image = await makeImage(join(work, 'disk.img'), GiB - 3 * 512 - 123);
  imageSha = await sha256Of(image.path, GiB);
});
after(async () => {
  await server?.dispose();
  if (work) await rm(work, { recursive: true, force: true });
});

async function newDisk(body: Record<string, unknown> = { cdsSizeInGB: 1 }): Promise<string> {
  const [id] = (await send(bj, 'POST', '/v2/volume', { body })).volumeIds;
  await waitVolume(bj, id);
  return id;
}

async function snapshot(volumeId: string, name: string): Promise<string> {
  const { snapshotId } = await send(bj, 'POST', '/v2/snapshot', { body: { volumeId, snapshotName: name } });
  await waitSnapshot(bj, snapshotId);
  return snapshotId;
}

async function exportSha(volumeId: string): Promise<string> {
  const out = join(work, `${volumeId}.img`);
  await cliJson(['volume', 'export', volumeId, out], env);
  const sha = await sha256Of(out, GiB);
  await rm(out);
  return sha;
}

const m = (name: string): Promise<number> => metric(server.urls.bj!, name);

test('a 1 GiB image (random, zero, text, unaligned tail) round-trips through a snapshot bit-identical', async () => {
  const volumeId = await newDisk();
  const imported = await cliJson(['volume', 'import', volumeId, image.path], env);
  assert.equal(imported.bytes, image.size);
  assert.ok(imported.bytesSent < image.size, 'zero ranges are not sent');
  const readBefore = await m('snapferry_snapshot_bytes_read_total');
  const snapshotId = await snapshot(volumeId, 'full');
  // A first snapshot reads only what was written, not the whole disk.
  const read = (await m('snapferry_snapshot_bytes_read_total')) - readBefore;
  assert.ok(read <= imported.bytesSent + MiB && read < 0.8 * GiB, `first snapshot read ${read} bytes`);
  const restored = await newDisk({ snapshotId });
  assert.equal(await exportSha(restored), imageSha);
  Object.assign(state, { volumeId, snapshotId });
});

test('a second snapshot of an unchanged disk reads nothing and stores no new chunk bytes', async () => {
  const read = await m('snapferry_snapshot_bytes_read_total');
  const written = await m('snapferry_chunk_bytes_written_total');
  await snapshot(state.volumeId!, 'unchanged');
  assert.equal((await m('snapferry_snapshot_bytes_read_total')) - read, 0);
  assert.equal((await m('snapferry_chunk_bytes_written_total')) - written, 0);
});

test('after changing 1% of the disk the next snapshot reads about 1%', async () => {
  const raw = new BceClient(server.urls.bj!, { accessKeyId: AK, secretAccessKey: SK });
  for (let i = 0; i < 10; i++) {
    await raw.json({ method: 'PUT', path: `/v2/volume/${state.volumeId}/data`, query: { offset: String((i * 101 + 7) * MiB) }, body: randomBytes(MiB) });
  }
  await raw.close();
  const read = await m('snapferry_snapshot_bytes_read_total');
  const written = await m('snapferry_chunk_bytes_written_total');
  const snapshotId = await snapshot(state.volumeId!, 'one-percent');
  assert.equal((await m('snapferry_snapshot_bytes_read_total')) - read, 10 * MiB);
  assert.equal((await m('snapferry_chunk_bytes_written_total')) - written, 10 * MiB);
  // And the new snapshot restores to the changed disk, bit for bit.
  const restored = await newDisk({ snapshotId });
  assert.equal(await exportSha(restored), await exportSha(state.volumeId!));
});

test('rollback restores the disk to its snapshot', async () => {
  await send(bj, 'PUT', `/v2/volume/${state.volumeId}`, { params: { rollback: '' }, body: { snapshotId: state.snapshotId } });
  await waitVolume(bj, state.volumeId!);
  assert.equal(await exportSha(state.volumeId!), imageSha);
});

// kill -9 during snapshot create: test/capture-crash.test.ts.

test('a damaged chunk file is detected on read (the restore fails, nothing wrong is served) and by scrub', async () => {
  // A disk of its own, so the damage touches no other test's snapshot.
  const volumeId = await newDisk();
  const block = randomBytes(MiB);
  const raw = new BceClient(server.urls.bj!, { accessKeyId: AK, secretAccessKey: SK });
  await raw.json({ method: 'PUT', path: `/v2/volume/${volumeId}/data`, query: { offset: String(5 * MiB) }, body: block });
  await raw.close();
  const snapshotId = await snapshot(volumeId, 'to-damage');
  const id = createHash('sha256').update(block).digest('hex');
  const victim = join(server.dataDir, 'bj', 'chunks', id.slice(0, 2), id);
  const fh = await open(victim, 'r+');
  const byte = Buffer.alloc(1);
  await fh.read(byte, 0, 1, 1000);
  byte[0] ^= 0xff;
  await fh.write(byte, 0, 1, 1000);
  await fh.close();

  const [restored] = (await send(bj, 'POST', '/v2/volume', { body: { snapshotId } })).volumeIds;
  const v = await until(async () => {
    const x = (await send(bj, 'GET', `/v2/volume/${restored}`)).volume;
    return x.status === 'Creating' ? null : x;
  }, 60_000);
  assert.equal(v.status, 'Error', 'a restore that meets a damaged chunk fails instead of writing bad bytes');

  const scrub = await runCli(['scrub', '--endpoint', server.urls.bj!, '--data-dir', server.dataDir, '--json'], {});
  assert.equal(scrub.code, 3, scrub.stderr);
  const report = JSON.parse(scrub.stdout);
  assert.deepEqual(report.damagedChunks, [id]);
  assert.ok(report.chunksChecked > 100);
  const clean = await runCli(['scrub', '--endpoint', server.urls.bj!, '--data-dir', server.dataDir, '--json'], {});
  assert.equal(clean.code, 0, 'the damaged chunk was removed, never kept');
});

test('garbage collection removes chunks no snapshot references and keeps the rest', async () => {
  const volumeId = await newDisk();
  const raw = new BceClient(server.urls.bj!, { accessKeyId: AK, secretAccessKey: SK });
  await raw.json({ method: 'PUT', path: `/v2/volume/${volumeId}/data`, query: { offset: '0' }, body: randomBytes(3 * MiB) });
  await raw.close();
  const doomed = await snapshot(volumeId, 'doomed');
  const keep = await snapshot(state.volumeId!, 'keep');
  await send(bj, 'DELETE', `/v2/snapshot/${doomed}`);
  await send(bj, 'DELETE', `/v2/volume/${volumeId}`);
  const gc = await runCli(['gc', '--endpoint', server.urls.bj!, '--data-dir', server.dataDir, '--json'], {});
  assert.equal(gc.code, 0, gc.stderr);
  const result = JSON.parse(gc.stdout);
  assert.equal(result.chunksDeleted, 3, JSON.stringify(result));
  assert.equal(result.bytesFreed, 3 * MiB);
  const restored = await newDisk({ snapshotId: keep });
  assert.equal(await exportSha(restored), await exportSha(state.volumeId!));
});

test('CLI: volume and snapshot create/list/show/delete with --json, and errors carry the server code', async () => {
  const created = await cliJson(['volume', 'create', '--size', '1', '--name', 'cli-disk', '--wait'], env);
  const id = created[0].id;
  assert.equal(created[0].status, 'Available');
  assert.ok((await cliJson(['volume', 'list'], env)).some((v: any) => v.id === id && v.name === 'cli-disk'));
  assert.equal((await cliJson(['volume', 'show', id], env)).diskSizeInGB, 1);
  const snap = await cliJson(['snapshot', 'create', id, '--name', 'cli-snap', '--wait'], env);
  assert.equal(snap.status, 'Available');
  assert.deepEqual((await cliJson(['snapshot', 'list', '--volume', id], env)).map((s: any) => s.id), [snap.id]);
  assert.equal((await cliJson(['snapshot', 'show', snap.id], env)).name, 'cli-snap');
  assert.deepEqual(await cliJson(['snapshot', 'delete', snap.id], env), { deleted: snap.id });
  assert.deepEqual(await cliJson(['volume', 'delete', id], env), { deleted: id });
  const missing = await runCli(['volume', 'show', id], env);
  assert.equal(missing.code, 1);
  assert.match(missing.stderr, /^error: NoSuchObject: .*\(request [0-9a-f-]{36}\)$/m);
  const noKeys = await runCli(['volume', 'list'], { SNAPFERRY_ENDPOINT: server.urls.bj!, SNAPFERRY_ACCESS_KEY_ID: '', SNAPFERRY_SECRET_ACCESS_KEY: '' });
  assert.equal(noKeys.code, 2);
  assert.match(noKeys.stderr, /set SNAPFERRY_ACCESS_KEY_ID/);
});
