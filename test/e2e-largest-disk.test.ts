/**
 * BCC's largest disk (32765 GB: past ext4's 16 TiB file limit and past 2^24 chunks) end to end on a
 * spawned `snapferry serve` with regions bj and hkg: the official JavaScript SDK for every BCC
 * call, qemu-io as the NBD client, the HTTP data route to read the copy back. Run three times: with
 * the data dir on the machine's temp dir, and on freshly made xfs and ext4 file systems (loop
 * mounts; needs root, as CI has: without it those two fail and say so, unless SNAPFERRY_SKIP_LOOP=1).
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { mkdir } from 'node:fs/promises';
import { BceClient } from '../src/lib/bce-client.ts';
import { sdkClient, send, until, waitSnapshot, waitVolume, type SdkClient } from './helpers/sdk.ts';
import { spawnServer, type SpawnedServer } from './helpers/spawned-server.ts';

const run = promisify(execFile);
const AK = 'largest-access-key-000000';
const SK = 'largest-secret-key-111111';
const MiB = 1 << 20;
const GiB = 1024 ** 3;
const SIZE_GB = 32765;
const SIZE = SIZE_GB * GiB;
const TiB16 = 2 ** 44;

let server: SpawnedServer;
let work: string;
const mounts: string[] = [];

before(async () => {
  work = await mkdtemp(join(tmpdir(), 'snapferry-largest-'));
});
after(async () => {
  await server?.dispose();
  for (const m of mounts) await run('umount', [m]).catch(() => undefined);
  if (work) await rm(work, { recursive: true, force: true });
});

/** A fresh file system of `type` on a sparse 4 GiB image file, loop-mounted under the work dir. */
async function freshFileSystem(type: 'xfs' | 'ext4'): Promise<string> {
  const image = join(work, `${type}.img`);
  const mountPoint = join(work, `${type}-mnt`);
  await run('truncate', ['-s', '4G', image]);
  await run(type === 'xfs' ? 'mkfs.xfs' : 'mkfs.ext4', type === 'xfs' ? ['-q', '-f', image] : ['-q', '-F', image]);
  await mkdir(mountPoint);
  await run('mount', ['-o', 'loop', image, mountPoint]);
  mounts.push(mountPoint);
  const { stdout } = await run('stat', ['-f', '-c', '%T', mountPoint]);
  assert.equal(stdout.trim(), type === 'xfs' ? 'xfs' : 'ext2/ext3', `mounted ${type}`);
  return mountPoint;
}

async function startOn(dataDir?: string): Promise<void> {
  await server?.dispose();
  server = await spawnServer({ regions: ['bj', 'hkg'], dataDir, env: { SNAPFERRY_ACCESS_KEY_ID: AK, SNAPFERRY_SECRET_ACCESS_KEY: SK } });
}

test('a 32765 GB disk end to end, data dir in the temp dir', async () => {
  await startOn();
  await largestDiskEndToEnd();
});

for (const type of ['xfs', 'ext4'] as const) {
  test(`a 32765 GB disk end to end, data dir on a fresh ${type} file system`, { skip: process.env.SNAPFERRY_SKIP_LOOP === '1' && 'SNAPFERRY_SKIP_LOOP=1' }, async () => {
    assert.equal(process.getuid?.(), 0, `this test mounts a ${type} file system and needs root (CI runs as root); set SNAPFERRY_SKIP_LOOP=1 to skip it visibly`);
    const root = await freshFileSystem(type);
    await startOn(join(root, 'data'));
    await largestDiskEndToEnd();
    await server.dispose();
  });
}

/** Peak resident memory of the server process (VmHWM), in MiB. */
async function serverPeakRssMiB(): Promise<number> {
  const status = await readFile(`/proc/${server.child.pid}/status`, 'utf8');
  return Number(/VmHWM:\s+(\d+) kB/.exec(status)![1]) / 1024;
}

/** NBD writes at the start, across 16 TiB and at the end of a 32765 GB disk survive a snapshot, a copy bj -> hkg and a restore there. */
async function largestDiskEndToEnd(): Promise<void> {
  const started = Date.now();
  const bj: SdkClient = sdkClient(server.urls.bj!, AK, SK);
  const hkg: SdkClient = sdkClient(server.urls.hkg!, AK, SK);
  const [volumeId] = (await send(bj, 'POST', '/v2/volume', { body: { cdsSizeInGB: SIZE_GB, name: 'largest' } })).volumeIds;
  const created = await waitVolume(bj, volumeId, 30_000);
  assert.equal(created.diskSizeInGB, SIZE_GB);
  const tCreate = Date.now() - started;

  // Distinct random data: the first MiB, one MiB straddling 16 TiB (two chunks, two segments), the last MiB.
  const ranges = [
    { offset: 0, data: randomBytes(MiB) },
    { offset: TiB16 - MiB / 2, data: randomBytes(MiB) },
    { offset: SIZE - MiB, data: randomBytes(MiB) },
  ];
  const script: string[] = [];
  for (const [i, r] of ranges.entries()) {
    const file = join(work, `range-${i}.bin`);
    await writeFile(file, r.data);
    script.push('-c', `write -s ${file} ${r.offset} ${r.data.length}`);
  }
  const nbd = `nbd://127.0.0.1:${server.nbdPort}/${volumeId}`;
  const { stdout } = await run('qemu-io', ['-f', 'raw', ...script, '-c', 'flush', nbd]);
  assert.equal((stdout.match(/^wrote 1048576\/1048576 bytes/gm) ?? []).length, 3, stdout);
  await until(async () => (await send(bj, 'GET', `/v2/volume/${volumeId}`)).volume.status === 'Available', 10_000, 'block client released');
  const tWrite = Date.now() - started;

  const { snapshotId } = await send(bj, 'POST', '/v2/snapshot', { body: { volumeId, snapshotName: 'largest-1' } });
  const snap = await waitSnapshot(bj, snapshotId, 60_000);
  assert.equal(snap.sizeInGB, SIZE_GB);
  const tSnapshot = Date.now() - started;
  // The capture read the four chunks written, not the 33.5 million chunks of the disk.
  const logged = server.stderr().split('\n').filter((l) => l.includes('"snapshot created"')).map((l) => JSON.parse(l));
  assert.equal(logged.find((l) => l.snapshotId === snapshotId)?.chunksRead, 4, server.stderr());

  const { result } = await send(bj, 'PUT', `/v2/snapshot/remote_copy/${snapshotId}`, { body: { destRegionInfos: [{ destRegion: 'hkg' }] } });
  const copyId = result[0].snapshotId;
  const copy = await waitSnapshot(hkg, copyId, 60_000);
  assert.equal(copy.sizeInGB, SIZE_GB);
  const tCopy = Date.now() - started;

  const [restored] = (await send(hkg, 'POST', '/v2/volume', { body: { snapshotId: copyId } })).volumeIds;
  const v = await waitVolume(hkg, restored, 60_000);
  assert.equal(v.diskSizeInGB, SIZE_GB);
  const tRestore = Date.now() - started;

  const raw = new BceClient(server.urls.hkg!, { accessKeyId: AK, secretAccessKey: SK });
  try {
    const readRange = async (offset: number, length: number): Promise<Buffer> => {
      const res = await raw.send({ method: 'GET', path: `/v2/volume/${restored}/data`, headers: { range: `bytes=${offset}-${offset + length - 1}` } });
      assert.equal(res.statusCode, 206);
      return Buffer.from(await res.body.arrayBuffer());
    };
    for (const r of ranges) {
      const back = await readRange(r.offset, r.data.length);
      assert.ok(back.equals(r.data), `bytes at ${r.offset} differ after snapshot, copy and restore`);
    }
    // Around the written ranges, and far from them, the disk reads as zeros.
    for (const at of [MiB, TiB16 + MiB / 2, TiB16 - 2 * MiB, 8 * 1024 * GiB, SIZE - 2 * MiB]) {
      assert.ok((await readRange(at, MiB)).every((b) => b === 0), `zeros expected at ${at}`);
    }
  } finally {
    await raw.close();
  }
  const total = Date.now() - started;
  const peak = await serverPeakRssMiB();
  console.log(`# create ${tCreate} ms, writes ${tWrite} ms, snapshot ${tSnapshot} ms, copy ${tCopy} ms, restore ${tRestore} ms, all ${total} ms; server peak RSS ${peak.toFixed(0)} MiB`);
  // Nothing per chunk of the disk beyond typed arrays: the maps (128 MiB each, two disks) and the
  // manifests' lazily zeroed id buffers account for the peak.
  assert.ok(peak < 1024, `server peak RSS ${peak} MiB`);
}
