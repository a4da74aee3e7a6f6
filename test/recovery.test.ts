/**
 * Invariant: a region's start (services/region-recovery.ts, run after a clean stop or a crash,
 * before it serves) brings every record whose in-memory side is gone back to a truthful state:
 * InUse disks are Available again, a delete cut short is finished, disk files without a record are
 * removed (and no other disk's bytes are touched), a resize cut short leaves the disk Error, and
 * jobs that were running are run again at once (not when their lease runs out).
 *
 * Each state is set up as a crash leaves it: the rows and files of a stopped region are prepared
 * exactly as the code would have left them at the cut (through the database and the disk layer's own
 * API), and the region is then started. The same states reached by real kills -9 of a spawned server:
 * nbd-crash-mid-write.test.ts (a block client attached), restart-in-flight.test.ts and
 * capture-crash.test.ts (jobs running).
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { DiskManager } from '../src/blockdev/disk-manager.ts';
import { startHarness, type Harness } from './helpers/region-harness.ts';

const MiB = 1 << 20;
const dirs: string[] = [];
after(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

/** A region on a data dir of its own that survives closing it. */
async function stoppedRegion(): Promise<{ dataDir: string; open: () => Promise<Harness> }> {
  const dataDir = await mkdtemp(join(tmpdir(), 'snapferry-recovery-'));
  dirs.push(dataDir);
  return { dataDir, open: () => startHarness('bj', { dataDir }) };
}

/** Changes the rows of a stopped region, as a process cut short would have left them. */
function editDb(dataDir: string, edit: (db: Database.Database) => void): void {
  const db = new Database(join(dataDir, 'bj', 'meta.db'));
  try {
    edit(db);
  } finally {
    db.close();
  }
}

/** The disks of a stopped region, through the disk layer's own API (its file layout is its business). */
async function stoppedDisks(dataDir: string): Promise<DiskManager> {
  const disks = new DiskManager(join(dataDir, 'bj', 'disks'), MiB);
  await disks.init();
  return disks;
}

async function availableDisk(h: Harness, fill?: Buffer): Promise<string> {
  const [id] = (await h.call('POST', '/v2/volume', { cdsSizeInGB: 1 })).json.volumeIds;
  await h.waitFor(async () => (await h.call('GET', `/v2/volume/${id}`)).json.volume.status === 'Available');
  if (fill) {
    const res = await h.call('PUT', `/v2/volume/${id}/data?offset=0`, fill, { headers: { 'content-type': 'application/octet-stream' } });
    assert.equal(res.status, 200);
  }
  return id;
}

async function readBack(h: Harness, id: string, length: number): Promise<Buffer> {
  const res = await h.call('GET', `/v2/volume/${id}/data`, undefined, { headers: { range: `bytes=0-${length - 1}` } });
  assert.equal(res.status, 206, JSON.stringify(res.json));
  return res.raw;
}

test('recovery: a disk left InUse by a block client is Available at start, with its bytes, and takes writes again', async () => {
  // The real kill -9 with a block client attached: nbd-crash-mid-write.test.ts ("no block client
  // survives a restart"). Here the state it leaves: the record InUse, nobody attached.
  const region = await stoppedRegion();
  let h = await region.open();
  const id = await availableDisk(h, Buffer.alloc(MiB, 0x42));
  await h.close();
  editDb(region.dataDir, (db) => db.prepare("UPDATE volumes SET status = 'InUse' WHERE id = ?").run(id));
  h = await region.open();
  try {
    assert.equal((await h.call('GET', `/v2/volume/${id}`)).json.volume.status, 'Available', 'no block client survives a restart');
    assert.ok((await readBack(h, id, MiB)).equals(Buffer.alloc(MiB, 0x42)));
    const res = await h.call('PUT', `/v2/volume/${id}/data?offset=0`, Buffer.alloc(4096, 0x43), { headers: { 'content-type': 'application/octet-stream' } });
    assert.equal(res.status, 200, 'writes are accepted again');
  } finally {
    await h.close();
  }
});

test('recovery: a delete cut short after the disk was marked Deleting is finished at start: the disk, its files and its base are gone, its snapshots stay', async () => {
  const region = await stoppedRegion();
  let h = await region.open();
  const id = await availableDisk(h, Buffer.alloc(MiB, 0x17));
  const { snapshotId } = (await h.call('POST', '/v2/snapshot', { volumeId: id, snapshotName: 'keep' })).json;
  await h.waitFor(async () => (await h.call('GET', `/v2/snapshot/${snapshotId}`)).json.snapshot.status === 'Available');
  await h.close();
  // VolumeService.delete marks the disk Deleting first; the cut falls before the record goes.
  editDb(region.dataDir, (db) => db.prepare("UPDATE volumes SET status = 'Deleting' WHERE id = ?").run(id));
  assert.deepEqual(await (await stoppedDisks(region.dataDir)).list(), [id], 'the files are still there before the start');
  h = await region.open();
  try {
    assert.equal((await h.call('GET', `/v2/volume/${id}`)).status, 404);
    assert.deepEqual((await h.call('GET', '/v2/volume')).json.volumes.map((v: any) => v.id), []);
    assert.deepEqual(await h.region.disks.list(), [], 'its files are removed');
    assert.equal(await h.region.meta.diskBases.get(id), null, 'its base is removed');
    assert.equal((await h.call('GET', `/v2/snapshot/${snapshotId}`)).json.snapshot.status, 'Available');
  } finally {
    await h.close();
  }
});

test('recovery: disk files without a record are removed at start, and the other disks keep their bytes', async () => {
  const region = await stoppedRegion();
  let h = await region.open();
  const kept = await availableDisk(h, Buffer.alloc(MiB, 0x33));
  const gone = await availableDisk(h, Buffer.alloc(MiB, 0x44));
  await h.close();
  // A delete cut short after its record went (the files are removed last), and a disk no record
  // ever named (a creation whose record was never committed).
  editDb(region.dataDir, (db) => db.prepare("UPDATE volumes SET deleted_at = ?, status = 'Deleted' WHERE id = ?").run(Date.now(), gone));
  const disks = await stoppedDisks(region.dataDir);
  await disks.create('v-orphan01', 1024 ** 3);
  await disks.closeAll();
  assert.deepEqual((await disks.list()).sort(), [kept, gone, 'v-orphan01'].sort());
  h = await region.open();
  try {
    assert.deepEqual(await h.region.disks.list(), [kept]);
    assert.ok((await readBack(h, kept, MiB)).equals(Buffer.alloc(MiB, 0x33)), 'the disk with a record keeps its bytes');
    assert.equal((await h.call('GET', `/v2/volume/${gone}`)).status, 404);
  } finally {
    await h.close();
  }
});

test('recovery: a resize cut short (record Scaling) leaves the disk Error at start, and it can be deleted', async () => {
  const region = await stoppedRegion();
  let h = await region.open();
  const id = await availableDisk(h);
  await h.close();
  // VolumeService.resize marks Scaling, then grows the file and the map, then the record: cut in between.
  editDb(region.dataDir, (db) => db.prepare("UPDATE volumes SET status = 'Scaling' WHERE id = ?").run(id));
  h = await region.open();
  try {
    const v = (await h.call('GET', `/v2/volume/${id}`)).json.volume;
    assert.deepEqual([v.status, v.diskSizeInGB], ['Error', 1]);
    assert.equal((await h.call('DELETE', `/v2/volume/${id}`)).status, 200, 'an Error disk can be deleted');
  } finally {
    await h.close();
  }
});

test('recovery: jobs left running by a dead process run again at start, at once, not when their lease runs out', async () => {
  const region = await stoppedRegion();
  let h = await region.open();
  const source = await availableDisk(h, Buffer.alloc(2 * MiB, 0x5c));
  const { snapshotId } = (await h.call('POST', '/v2/snapshot', { volumeId: source, snapshotName: 'src' })).json;
  await h.waitFor(async () => (await h.call('GET', `/v2/snapshot/${snapshotId}`)).json.snapshot.status === 'Available');
  await h.region.jobs.stop(); // the jobs below stay queued: their rows are turned into "running" next
  const [created] = (await h.call('POST', '/v2/volume', { snapshotId })).json.volumeIds;
  await h.close();
  // A claim by a process that then died: running, with an hour of lease left.
  editDb(region.dataDir, (db) =>
    db.prepare("UPDATE jobs SET state = 'running', lease_owner = 'runner-dead', lease_until = ?, attempts = 1 WHERE key = ?").run(Date.now() + 3600_000, `volume.create:${created}`),
  );
  const started = Date.now();
  h = await region.open();
  try {
    await h.waitFor(async () => (await h.call('GET', `/v2/volume/${created}`)).json.volume.status === 'Available', 20_000);
    assert.ok(Date.now() - started < 20_000);
    assert.ok((await readBack(h, created, 2 * MiB)).equals(Buffer.alloc(2 * MiB, 0x5c)), 'the rerun filled the disk from the snapshot');
  } finally {
    await h.close();
  }
});

test('recovery: a snapshot whose create was cut short between its record and its job is captured at start, not left Creating', async () => {
  const { dataDir, open } = await stoppedRegion();
  let h = await open();
  const data = Buffer.alloc(2 * MiB, 0x6b);
  const volumeId = await availableDisk(h, data);
  await h.close();
  // What a crash after the snapshot's insert and before its enqueue leaves: a Creating record, no job.
  editDb(dataDir, (db) => {
    db.prepare(
      `INSERT INTO snapshots (id, account_id, name, desc, volume_id, size_gb, create_time, status, create_method, progress, storage_type, tags)
       VALUES ('s-cutshort', 'alice', 'cut', '', ?, 1, ?, 'Creating', 'MANUAL', 0, 'hp1', '[]')`,
    ).run(volumeId, Date.now());
  });
  h = await open();
  try {
    await h.waitFor(async () => (await h.call('GET', '/v2/snapshot/s-cutshort')).json.snapshot.status === 'Available', 30_000);
    const [restored] = (await h.call('POST', '/v2/volume', { cdsSizeInGB: 1, snapshotId: 's-cutshort' })).json.volumeIds;
    await h.waitFor(async () => (await h.call('GET', `/v2/volume/${restored}`)).json.volume.status === 'Available', 30_000);
    assert.ok((await readBack(h, restored, data.length)).equals(data));
  } finally {
    await h.close();
  }
});
