/**
 * Garbage collection racing snapshots of reused data, end to end, as a user would hit it: a spawned
 * server, the official SDK, the CLI for images, and garbage collections requested back to back (the
 * operator's `POST /internal/v1/admin/gc`, signed with the region secret) while a snapshot is taken
 * of a disk that holds exactly the chunks of a deleted snapshot. Before invariants GC-2/GC-3 this lost
 * data 3 of 3 times: the snapshot turned Available without its chunks and a restore ended in Error.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BceClient } from '../src/lib/bce-client.ts';
import { cliJson } from './helpers/cli.ts';
import { sdkClient, send, until, waitSnapshot, waitVolume, type SdkClient } from './helpers/sdk.ts';
import { spawnServer, type SpawnedServer } from './helpers/spawned-server.ts';
import { makeImage, sha256Of, type TestImage } from './helpers/test-image.ts';

const AK = 'gcrace-access-key-0000000';
const SK = 'gcrace-secret-key-1111111';
const GiB = 1024 ** 3;
const MiB = 1 << 20;

let server: SpawnedServer;
let work: string;
let bj: SdkClient;
let admin: BceClient;
let env: Record<string, string>;

before(async () => {
  work = await mkdtemp(join(tmpdir(), 'snapferry-gcrace-'));
  const config = join(work, 'config.json');
  await writeFile(config, JSON.stringify({ gcGraceSeconds: 0, gcIntervalSeconds: 3600 }));
  server = await spawnServer({ regions: ['bj'], env: { SNAPFERRY_ACCESS_KEY_ID: AK, SNAPFERRY_SECRET_ACCESS_KEY: SK }, extraArgs: ['--config', config] });
  env = { SNAPFERRY_ACCESS_KEY_ID: AK, SNAPFERRY_SECRET_ACCESS_KEY: SK, SNAPFERRY_ENDPOINT: server.urls.bj! };
  bj = sdkClient(server.urls.bj!, AK, SK);
  const { regionSecret } = JSON.parse(await readFile(join(server.dataDir, 'credentials.json'), 'utf8'));
  admin = new BceClient(server.urls.bj!, { accessKeyId: 'snapferry-region-bj', secretAccessKey: regionSecret });
});
after(async () => {
  await admin?.close();
  await server?.dispose();
  if (work) await rm(work, { recursive: true, force: true });
});

async function newDisk(body: Record<string, unknown>): Promise<string> {
  const [id] = (await send(bj, 'POST', '/v2/volume', { body })).volumeIds;
  await waitVolume(bj, id);
  return id;
}

async function gone(kind: 'volume' | 'snapshot', id: string): Promise<void> {
  await send(bj, 'DELETE', `/v2/${kind}/${id}`);
  await until(async () => {
    try {
      await send(bj, 'GET', `/v2/${kind}/${id}`);
      return false;
    } catch (e: any) {
      return e.status_code === 404;
    }
  }, 30_000, `${kind} ${id} deleted`);
}

test('GC-2/GC-3 end to end: garbage collections back to back during snapshots of reused data lose nothing (3 rounds)', async () => {
  for (let round = 0; round < 3; round++) {
    const image: TestImage = await makeImage(join(work, `r${round}.img`), 256 * MiB, `round-${round}-${Date.now()}`);
    const want = await sha256Of(image.path, GiB);
    // Its chunks stored, then orphaned: the snapshot and the disk are deleted.
    const first = await newDisk({ cdsSizeInGB: 1 });
    await cliJson(['volume', 'import', first, image.path], env);
    const { snapshotId: orphan } = await send(bj, 'POST', '/v2/snapshot', { body: { volumeId: first, snapshotName: 'orphan' } });
    await waitSnapshot(bj, orphan);
    await gone('snapshot', orphan);
    await gone('volume', first);

    // The same bytes on a new disk, snapshotted while GCs run back to back.
    const second = await newDisk({ cdsSizeInGB: 1 });
    await cliJson(['volume', 'import', second, image.path], env);
    // The capture starts at once; the GCs start right behind it, while it finds the old chunks stored.
    const { snapshotId } = await send(bj, 'POST', '/v2/snapshot', { body: { volumeId: second, snapshotName: 'reused' } });
    let racing = true;
    let gcs = 0;
    let duringCapture = 0;
    let deleted = 0;
    const loop = (async () => {
      while (racing) {
        const creating = (await send(bj, 'GET', `/v2/snapshot/${snapshotId}`)).snapshot.status === 'Creating';
        const r = await admin.json<{ chunksDeleted: number }>({ method: 'POST', path: '/internal/v1/admin/gc' });
        gcs++;
        if (creating) duringCapture++;
        deleted += r.chunksDeleted;
      }
    })();
    try {
      await waitSnapshot(bj, snapshotId);
    } finally {
      racing = false;
      await loop;
    }
    assert.ok(duringCapture >= 1, `a GC started while the snapshot was being taken (${gcs} GCs, ${duringCapture} during the capture)`);
    await admin.json({ method: 'POST', path: '/internal/v1/admin/gc' });
    const restored = await newDisk({ snapshotId });
    const out = join(work, `r${round}.out`);
    await cliJson(['volume', 'export', restored, out], env);
    assert.equal(await sha256Of(out, GiB), want, `round ${round}: the snapshot restores bit-identical (GCs run: ${gcs}, chunks they deleted: ${deleted})`);
    for (const id of [second, restored]) await gone('volume', id);
    await gone('snapshot', snapshotId);
    await rm(out);
    await rm(image.path);
  }
});
