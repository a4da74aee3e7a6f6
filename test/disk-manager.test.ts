/**
 * The disk manager: idle disks are closed (never one that is held or being captured), creation is
 * durable, and list/delete see both disk layouts and the remains of half-done ones.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { readlinkSync } from 'node:fs';
import { mkdir, mkdtemp, open, readdir, rm, writeFile, type FileHandle } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ChunkMap } from '../src/blockdev/chunk-map.ts';
import { DiskManager } from '../src/blockdev/disk-manager.ts';

const MiB = 1 << 20;
const GiB = 1024 ** 3;
const TiB = 1024 * GiB;
let dir: string;

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'snapferry-diskmgr-'));
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function until(check: () => boolean, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await sleep(10);
  }
}

test('disks nobody holds are closed after the idle time: 32 disks of 1 TiB touched once fall back to none open', async () => {
  const disks = new DiskManager(join(dir, 'idle'), MiB, { idleCloseMs: 1500 });
  await disks.init();
  for (let i = 0; i < 32; i++) await disks.create(`v-${i}`, TiB);
  const rssBefore = process.memoryUsage().rss;
  for (let i = 0; i < 32; i++) {
    using held = await disks.acquire(`v-${i}`);
    await held.disk.write(i * GiB, Buffer.alloc(4096, i + 1), false);
  }
  assert.equal(disks.openCount, 32);
  const rssOpen = process.memoryUsage().rss;
  await until(() => disks.openCount === 0);
  // What they wrote was saved on close: a reopened disk reads it and knows the chunk is allocated.
  using held = await disks.acquire('v-7');
  assert.ok((await held.disk.read(7 * GiB, 4096)).every((b) => b === 8));
  assert.ok(held.disk.map.isAllocated((7 * GiB) / MiB));
  held.release();
  console.log(`# rss: ${(rssBefore / MiB).toFixed(0)} MiB before, ${(rssOpen / MiB).toFixed(0)} MiB with 32 disks of 1 TiB open`);
  await disks.closeAll();
});

test('a held disk is never closed under its holder, whatever the idle time; releasing twice counts once', async () => {
  const disks = new DiskManager(join(dir, 'held'), MiB, { idleCloseMs: 30 });
  await disks.init();
  await disks.create('v-held', GiB);
  const a = await disks.acquire('v-held');
  const b = await disks.acquire('v-held');
  assert.equal(a.disk, b.disk, 'one Disk object per volume');
  b.release();
  b.release();
  await sleep(150);
  assert.equal(disks.openCount, 1);
  await a.disk.write(0, Buffer.alloc(512, 3), false); // still usable: no file was closed under it
  assert.ok((await a.disk.read(0, 512)).every((x) => x === 3));
  a.release();
  await until(() => disks.openCount === 0);
  await disks.closeAll();
});

test('a disk with a capture running or waiting stays open after its handle is released; it closes once the capture ends', async () => {
  const disks = new DiskManager(join(dir, 'capturing'), MiB, { idleCloseMs: 30 });
  await disks.init();
  await disks.create('v-cap', GiB);
  const held = await disks.acquire('v-cap');
  await held.disk.write(0, Buffer.alloc(MiB, 1), false);
  const capture = await held.disk.beginCapture(0, { preserve: async () => undefined });
  held.release();
  await sleep(150);
  assert.equal(disks.openCount, 1);
  assert.ok((await capture.readChunk(0))!.every((x) => x === 1));
  capture.end();
  await until(() => disks.openCount === 0);
  await disks.closeAll();
});

test('an acquire while an idle close is in progress waits for it and gets a fresh disk with everything written before', async () => {
  const disks = new DiskManager(join(dir, 'reopen'), MiB, { idleCloseMs: 1 });
  await disks.init();
  await disks.create('v-re', GiB);
  for (let round = 0; round < 20; round++) {
    const held = await disks.acquire('v-re');
    await held.disk.write(round * MiB, Buffer.alloc(4096, round + 1), false);
    held.release();
    await sleep(round % 3); // lands before, during or after the close
  }
  using held = await disks.acquire('v-re');
  for (let round = 0; round < 20; round++) {
    assert.ok((await held.disk.read(round * MiB, 4096)).every((x) => x === round + 1), `round ${round}`);
    assert.ok(held.disk.map.isAllocated(round));
  }
  held.release();
  await disks.closeAll();
});

test('create fsyncs the disks directory; list and delete see both layouts and the remains of half-done ones', async () => {
  const root = join(dir, 'layouts');
  const disks = new DiskManager(root, MiB);
  await disks.init();
  const probe = await open(join(dir, 'probe'), 'w');
  const proto = Object.getPrototypeOf(probe) as FileHandle;
  await probe.close();
  const synced: string[] = [];
  const sync = proto.sync;
  proto.sync = function (this: FileHandle) {
    synced.push(readlinkSync(`/proc/self/fd/${this.fd}`));
    return sync.call(this);
  };
  try {
    await disks.create('v-new', 10 * GiB);
  } finally {
    proto.sync = sync;
  }
  assert.ok(synced.includes(root), `synced: ${synced.join(', ')}`);
  assert.ok(synced.includes(join(root, 'v-new.d')), 'the segment directory (layout file) too');
  // A layout-1 disk, and leftovers: a map alone, a segment directory alone, an image alone.
  const fh = await open(join(root, 'v-old.img'), 'w');
  await fh.truncate(GiB);
  await fh.close();
  await (await ChunkMap.create(join(root, 'v-old.map'), MiB, 1024)).close();
  await (await ChunkMap.create(join(root, 'v-maponly.map'), MiB, 1024)).close();
  await mkdir(join(root, 'v-dironly.d'));
  await writeFile(join(root, 'v-dironly.d', '00000000.seg'), 'x');
  await writeFile(join(root, 'v-imgonly.img'), '');
  assert.deepEqual((await disks.list()).sort(), ['v-dironly', 'v-imgonly', 'v-maponly', 'v-new', 'v-old']);
  await disks.use('v-new', async (disk) => disk.write(3 * GiB, Buffer.alloc(MiB, 1), false));
  await disks.use('v-old', async (disk) => disk.write(0, Buffer.alloc(MiB, 1), false));
  for (const id of await disks.list()) await disks.delete(id);
  assert.deepEqual(await readdir(root), []);
  assert.equal(disks.openCount, 0);
  // Creating again over a deleted id starts from an empty disk.
  await disks.create('v-new', GiB);
  await disks.use('v-new', async (disk) => assert.ok((await disk.read(0, MiB)).every((x) => x === 0)));
  await disks.closeAll();
});

test('create over an existing disk (a retried creation) starts clean, even while the old one is open', async () => {
  const disks = new DiskManager(join(dir, 'recreate'), MiB);
  await disks.init();
  await disks.create('v-r', 2 * GiB);
  const held = await disks.acquire('v-r');
  await held.disk.write(GiB, Buffer.alloc(MiB, 5), true);
  held.release();
  await disks.create('v-r', 2 * GiB);
  await disks.use('v-r', async (disk) => {
    assert.ok(!disk.map.isAllocated(1024));
    assert.ok((await disk.read(GiB, MiB)).every((x) => x === 0));
  });
  assert.deepEqual((await readdir(join(dir, 'recreate', 'v-r.d'))).sort(), ['layout.json']);
  await disks.closeAll();
});

test('a failed close of an idle disk is reported to onCloseError, and the disk can be opened again', async () => {
  const failures: string[] = [];
  const disks = new DiskManager(join(dir, 'close-fail'), MiB, { idleCloseMs: 20, onCloseError: (id, e) => failures.push(`${id}: ${(e as Error).message}`) });
  await disks.init();
  await disks.create('v-cf', GiB);
  const held = await disks.acquire('v-cf');
  const realClose = held.disk.close.bind(held.disk);
  held.disk.close = async () => {
    await realClose();
    throw new Error('EIO: i/o error, fdatasync');
  };
  held.release();
  await until(() => failures.length === 1);
  assert.deepEqual(failures, ['v-cf: EIO: i/o error, fdatasync']);
  assert.equal(disks.openCount, 0);
  await disks.use('v-cf', async (disk) => assert.equal(disk.size, GiB));
  await disks.closeAll();
});

test('an acquire issued while a close is starting waits for it: the reopened map is clean, not taken for a crash', async () => {
  const disks = new DiskManager(join(dir, 'close-race'), MiB);
  await disks.init();
  await disks.create('v-race', 2 * GiB);
  for (let round = 0; round < 3; round++) {
    const held = await disks.acquire('v-race');
    await held.disk.write(5 * MiB, Buffer.alloc(4096, 1), false); // entry in memory only
    const old = held.disk;
    held.release();
    const closing = disks.closeAll();
    const again = await disks.acquire('v-race'); // same tick as the close began
    await closing;
    assert.notEqual(again.disk, old);
    const capture = await again.disk.beginCapture(0, { preserve: async () => undefined });
    // A reopen racing the close would find the map "in use" and take all 1024 chunks of segment 0 as written.
    assert.deepEqual([...capture.changed], [5]);
    capture.end();
    again.release();
    await disks.closeAll();
  }
});
