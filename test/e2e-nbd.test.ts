/**
 * Disks as block devices: real NBD clients from Debian (qemu-img, qemu-io, nbdcopy, nbdinfo) against
 * disks of a spawned `snapferry serve`, with the BCC state rules around them.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { BceClient } from '../src/lib/bce-client.ts';
import { cliJson } from './helpers/cli.ts';
import { sdkClient, send, sendError, until, waitSnapshot, waitVolume, type SdkClient } from './helpers/sdk.ts';
import { spawnServer, type SpawnedServer } from './helpers/spawned-server.ts';
import { makeImage, sha256Of } from './helpers/test-image.ts';

const execFileP = promisify(execFile);
/** A client command, stopped after two minutes: a stuck client fails its test with its name, not the file. */
const run = (cmd: string, args: string[]) => execFileP(cmd, args, { timeout: 120_000 });
const AK = 'nbd-access-key-0000000000';
const SK = 'nbd-secret-key-1111111111';
const MiB = 1 << 20;
const GiB = 1024 ** 3;

let server: SpawnedServer;
let work: string;
let bj: SdkClient;
const env = (): Record<string, string> => ({ SNAPFERRY_ACCESS_KEY_ID: AK, SNAPFERRY_SECRET_ACCESS_KEY: SK, SNAPFERRY_ENDPOINT: server.urls.bj! });
const nbdUrl = (volumeId: string): string => `nbd://127.0.0.1:${server.nbdPort}/${volumeId}`;

before(async () => {
  work = await mkdtemp(join(tmpdir(), 'snapferry-nbd-'));
  server = await spawnServer({ regions: ['bj'], env: { SNAPFERRY_ACCESS_KEY_ID: AK, SNAPFERRY_SECRET_ACCESS_KEY: SK } });
  bj = sdkClient(server.urls.bj!, AK, SK);
});
after(async () => {
  await server?.dispose();
  if (work) await rm(work, { recursive: true, force: true });
});

async function newDisk(): Promise<string> {
  const [id] = (await send(bj, 'POST', '/v2/volume', { body: { cdsSizeInGB: 1 } })).volumeIds;
  await waitVolume(bj, id);
  return id;
}

/**
 * A child's exit, listened for from the moment it is spawned: a listener added later never hears an
 * exit that already happened, and the wait then hangs the file (it did in CI, for 600 s).
 */
function exitOf(child: ChildProcess): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
  return new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
}

async function status(id: string): Promise<string> {
  return (await send(bj, 'GET', `/v2/volume/${id}`)).volume.status;
}

test('qemu-img convert writes a raw image into a disk and nbdcopy reads it back bit-identical', async () => {
  const id = await newDisk();
  const image = await makeImage(join(work, 'in.img'), 256 * MiB - 4096);
  await run('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', image.path, nbdUrl(id)]);
  await until(async () => (await status(id)) === 'Available', 10_000, 'disk released');
  const out = join(work, 'out.img');
  await run('nbdcopy', [nbdUrl(id), out]);
  assert.equal(await sha256Of(out, 256 * MiB), await sha256Of(image.path, 256 * MiB));
  // And the HTTP export of the same disk agrees with what the block client wrote.
  await cliJson(['volume', 'export', id, join(work, 'http.img')], env());
  assert.equal(await sha256Of(join(work, 'http.img'), GiB), await sha256Of(image.path, GiB));
});

test('qemu-io writes at odd offsets and sizes read back exactly; nbdinfo --map shows holes where nothing was written', async () => {
  const id = await newDisk();
  await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5a 1234 7777', '-c', 'write -P 0xa5 3000001 1', '-c', 'write -P 0x33 536870911 513', nbdUrl(id)]);
  const { stdout } = await run('qemu-io', ['-f', 'raw', '-c', 'read -P 0x5a 1234 7777', '-c', 'read -P 0 0 1234', '-c', 'read -P 0 9011 100', '-c', 'read -P 0xa5 3000001 1', '-c', 'read -P 0x33 536870911 513', nbdUrl(id)]);
  assert.doesNotMatch(stdout, /Pattern verification failed/);
  assert.equal((stdout.match(/^read /gm) ?? []).length, 5, stdout);
  const raw = new BceClient(server.urls.bj!, { accessKeyId: AK, secretAccessKey: SK });
  const res = await raw.send({ method: 'GET', path: `/v2/volume/${id}/data`, headers: { range: 'bytes=1230-9020' } });
  const bytes = Buffer.from(await res.body.arrayBuffer());
  await raw.close();
  assert.equal(bytes.length, 7791);
  assert.ok(bytes.subarray(0, 4).equals(Buffer.alloc(4)) && bytes.subarray(4, 4 + 7777).every((b) => b === 0x5a));
  const map = JSON.parse((await run('nbdinfo', ['--map', '--json', nbdUrl(id)])).stdout);
  const holes = map.filter((e: any) => e.type & 1);
  const data = map.filter((e: any) => !(e.type & 1));
  assert.ok(holes.length >= 2, JSON.stringify(map));
  assert.ok(data.some((e: any) => e.offset <= 1234 && e.offset + e.length >= 1234 + 7777), 'written range shows as data');
  assert.ok(holes.some((e: any) => e.offset >= 4 * MiB && e.length >= 100 * MiB), 'a large never-written range shows as a hole');
});

test('while a block client holds a disk it is InUse: a second client, HTTP writes, rollback and delete are refused', async () => {
  const id = await newDisk();
  const { snapshotId } = await send(bj, 'POST', '/v2/snapshot', { body: { volumeId: id, snapshotName: 'before' } });
  await waitSnapshot(bj, snapshotId);
  // The holder sleeps far longer than the checks take and is stopped at their end: a fixed short sleep
  // let a slow machine's checks run past the moment the disk was released.
  const holder = spawn('qemu-io', ['-f', 'raw', '-c', 'write -P 0x11 0 4096', '-c', 'sleep 120000', nbdUrl(id)], { stdio: 'ignore' });
  const holderExit = exitOf(holder);
  try {
    await until(async () => (await status(id)) === 'InUse', 10_000, 'InUse');
    await assert.rejects(run('qemu-img', ['info', nbdUrl(id)]), /busy|block client|refused|Requested export not available|policy/i);
    // Asking about exports never takes a disk: listing works while one is held.
    const list = await run('nbdinfo', ['--list', '--json', `nbd://127.0.0.1:${server.nbdPort}`]);
    assert.ok(JSON.parse(list.stdout).exports.some((e: any) => e['export-name'] === id && e['export-size'] === GiB), list.stdout);
    const raw = new BceClient(server.urls.bj!, { accessKeyId: AK, secretAccessKey: SK });
    await assert.rejects(raw.json({ method: 'PUT', path: `/v2/volume/${id}/data`, query: { offset: '0' }, body: Buffer.alloc(512) }), (e: any) => e.code === 'OperationDenied');
    await raw.close();
    assert.deepEqual(await sendError(bj, 'PUT', `/v2/volume/${id}`, { params: { rollback: '' }, body: { snapshotId } }), { status: 409, code: 'OperationDenied' });
    assert.deepEqual(await sendError(bj, 'DELETE', `/v2/volume/${id}`), { status: 409, code: 'Volume.DiskStatusCannotBeDeleted' });
    // A snapshot of an InUse disk is allowed.
    const inUse = await send(bj, 'POST', '/v2/snapshot', { body: { volumeId: id, snapshotName: 'while-attached' } });
    await waitSnapshot(bj, inUse.snapshotId);
  } finally {
    holder.kill('SIGTERM');
    await holderExit;
  }
  await until(async () => (await status(id)) === 'Available', 10_000, 'Available after disconnect');
});

// Point-in-time snapshots under writes: test/point-in-time.test.ts. Kill -9 of the server mid-write:
// test/nbd-crash-mid-write.test.ts.

test('a client killed in the middle of a write leaves the disk usable and the server up', async () => {
  const id = await newDisk();
  // nbdcopy streams from a pipe that this test feeds: it cannot finish before the kill (from a file it
  // copied 192 MiB faster than the test could kill it), and it dies with a write in flight.
  const copier = spawn('nbdcopy', ['-', nbdUrl(id)], { stdio: ['pipe', 'ignore', 'ignore'] });
  const copierExit = exitOf(copier);
  copier.stdin!.on('error', () => {}); // EPIPE once it is killed
  await until(async () => (await status(id)) === 'InUse', 10_000, 'InUse');
  for (let i = 0; i < 48; i++) {
    if (!copier.stdin!.write(randomBytes(MiB))) await new Promise((r) => copier.stdin!.once('drain', r));
  }
  copier.stdin!.write(randomBytes(100 * 1024)); // part of a request: nbdcopy waits for the rest
  await new Promise((r) => setTimeout(r, 150));
  copier.kill('SIGKILL');
  assert.equal((await copierExit).signal, 'SIGKILL', 'the client was killed, it did not finish');
  await until(async () => (await status(id)) === 'Available', 15_000, 'released after the client died');
  assert.equal((await fetch(`${server.urls.bj}/healthz`)).status, 200);
  // The disk still works for the next client, and for snapshots.
  await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x77 0 65536', '-c', 'read -P 0x77 0 65536', nbdUrl(id)]);
  const { snapshotId } = await send(bj, 'POST', '/v2/snapshot', { body: { volumeId: id, snapshotName: 'after-kill' } });
  await waitSnapshot(bj, snapshotId);
});
