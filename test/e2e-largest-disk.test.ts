/**
 * BCC's largest disk (32765 GB: past ext4's 16 TiB file limit and past 2^24 chunks) end to end on a
 * spawned `snapferry serve` with regions bj and hkg: the official JavaScript SDK for every BCC
 * call, qemu-io as the NBD client, the HTTP data route to read the copy back.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
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

before(async () => {
  work = await mkdtemp(join(tmpdir(), 'snapferry-largest-'));
  server = await spawnServer({ regions: ['bj', 'hkg'], env: { SNAPFERRY_ACCESS_KEY_ID: AK, SNAPFERRY_SECRET_ACCESS_KEY: SK } });
});
after(async () => {
  await server?.dispose();
  if (work) await rm(work, { recursive: true, force: true });
});

/** Peak resident memory of the server process (VmHWM), in MiB. */
async function serverPeakRssMiB(): Promise<number> {
  const status = await readFile(`/proc/${server.child.pid}/status`, 'utf8');
  return Number(/VmHWM:\s+(\d+) kB/.exec(status)![1]) / 1024;
}

test('a 32765 GB disk: NBD writes at its start, across 16 TiB and at its end survive a snapshot, a copy bj -> hkg and a restore there', async () => {
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
});
