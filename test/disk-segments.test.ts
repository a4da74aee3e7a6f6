/**
 * Disk images as segment files (src/blockdev/segmented-image.ts) and the disk layouts the disk
 * manager reads: layout 2 (segments), layout 1 (the previous release's single sparse file, also
 * when grown into segments), and what a damaged or newer layout does.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, open, readdir, rm, stat, writeFile, readFile, type FileHandle } from 'node:fs/promises';
import { readlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BlockIoError } from '../src/blockdev/block-target.ts';
import { ChunkMap } from '../src/blockdev/chunk-map.ts';
import { DiskManager } from '../src/blockdev/disk-manager.ts';
import { DiskFormatError, SEGMENT_BYTES, SegmentedImage, segmentName } from '../src/blockdev/segmented-image.ts';
import { WritePathChooser, type WriteWay } from '../src/blockdev/write-path.ts';
import { alignedSharedMemory } from '../src/lib/aligned-memory.ts';

const MiB = 1 << 20;
const GiB = 1024 ** 3;
let dir: string;

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'snapferry-segments-'));
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** Records the paths of every FileHandle `datasync`/`sync` call while `fn` runs (Linux: /proc/self/fd). */
async function recordSyncs(fn: () => Promise<void>): Promise<{ datasync: string[]; sync: string[] }> {
  const probe = await open(join(dir, 'probe'), 'w');
  const proto = Object.getPrototypeOf(probe) as FileHandle;
  await probe.close();
  const seen = { datasync: [] as string[], sync: [] as string[] };
  const original = { datasync: proto.datasync, sync: proto.sync };
  for (const kind of ['datasync', 'sync'] as const) {
    (proto as any)[kind] = function (this: FileHandle) {
      seen[kind].push(readlinkSync(`/proc/self/fd/${this.fd}`));
      return original[kind].call(this);
    };
  }
  try {
    await fn();
  } finally {
    Object.assign(proto, original);
  }
  return seen;
}

async function freshImage(name: string, sizeBytes: number, segmentBytes: number, maxOpen = 64, writes?: WritePathChooser): Promise<{ image: SegmentedImage; segDir: string }> {
  const segDir = join(dir, name);
  await mkdir(segDir);
  return { image: new SegmentedImage(segDir, null, { sizeBytes, segmentBytes, legacyBytes: 0 }, maxOpen, writes), segDir };
}

/** Sends every write through the thread pool (FileHandle.write), which the tests below intercept. */
class PoolWrites extends WritePathChooser {
  override next(): WriteWay {
    return 'pool';
  }
}

test('writes across segment boundaries land in each segment and read back whole; missing segments read as zeros and create nothing', async () => {
  const seg = 64 * 1024;
  const { image, segDir } = await freshImage('boundaries', 10 * seg, seg);
  const data = randomBytes(3 * seg + 1000);
  await image.write(data, 2 * seg - 500); // segments 1..5
  assert.deepEqual((await readdir(segDir)).sort(), [1, 2, 3, 4, 5].map(segmentName));
  assert.equal((await stat(join(segDir, segmentName(1)))).size, seg, 'the first piece ends at its segment end');
  const back = Buffer.alloc(data.length);
  await image.read(back, 0, data.length, 2 * seg - 500);
  assert.ok(back.equals(data));
  // A read spanning written, missing and end-of-disk segments: zeros where nothing was written.
  const all = Buffer.alloc(10 * seg, 0xee);
  await image.read(all, 0, all.length, 0);
  assert.ok(all.subarray(0, 2 * seg - 500).every((b) => b === 0));
  assert.ok(all.subarray(2 * seg - 500, 2 * seg - 500 + data.length).equals(data));
  assert.ok(all.subarray(2 * seg - 500 + data.length).every((b) => b === 0));
  assert.equal((await readdir(segDir)).length, 5, 'reads create no segment');
  await image.close();
});

test('flush fdatasyncs exactly the segments written since the last flush and fsyncs the directory when segments were created', async () => {
  const seg = 64 * 1024;
  const { image, segDir } = await freshImage('flush', 8 * seg, seg);
  await image.write(Buffer.alloc(100, 1), 0);
  await image.write(Buffer.alloc(100, 2), 3 * seg);
  const first = await recordSyncs(() => image.flush());
  assert.deepEqual(first.datasync.sort(), [join(segDir, segmentName(0)), join(segDir, segmentName(3))]);
  assert.deepEqual(first.sync, [segDir]);
  const idle = await recordSyncs(() => image.flush());
  assert.deepEqual(idle, { datasync: [], sync: [] }, 'nothing written: nothing synced');
  await image.write(Buffer.alloc(100, 3), 3 * seg + 100); // an existing segment: no directory sync
  assert.deepEqual(await recordSyncs(() => image.flush()), { datasync: [join(segDir, segmentName(3))], sync: [] });
  await image.close();
});

test('direct writes (a restore\'s) are synced by the next flush like any write: their segments fdatasynced, the directory fsynced for a new one', async () => {
  const seg = MiB;
  const { image, segDir } = await freshImage('flush-direct', 4 * seg, seg);
  const aligned = Buffer.from(alignedSharedMemory(seg), 0, seg);
  aligned.set(randomBytes(seg));
  await image.writeDirect(aligned, 0);
  await image.writeDirect(aligned.subarray(0, 65536), 2 * seg);
  const first = await recordSyncs(() => image.flush());
  assert.deepEqual(first.datasync.sort(), [join(segDir, segmentName(0)), join(segDir, segmentName(2))]);
  assert.deepEqual(first.sync, [segDir], 'the segments were created: their directory is synced');
  await image.writeDirect(aligned.subarray(0, 65536), 2 * seg + 65536); // an existing segment
  assert.deepEqual(await recordSyncs(() => image.flush()), { datasync: [join(segDir, segmentName(2))], sync: [] });
  const back = Buffer.alloc(seg);
  await image.read(back, 0, seg, 0);
  assert.ok(back.equals(aligned));
  await image.close();
});

test('flushRange fdatasyncs only the dirty segments of its range; the others stay dirty for the next flush', async () => {
  const seg = 64 * 1024;
  const { image, segDir } = await freshImage('flush-range', 8 * seg, seg);
  for (const k of [0, 2, 3, 6]) await image.write(Buffer.alloc(100, k + 1), k * seg + 10);
  // [2 seg - 1, 4 seg): touches segments 1 (not dirty), 2 and 3; a new segment also syncs the directory.
  const ranged = await recordSyncs(() => image.flushRange(2 * seg - 1, 2 * seg + 1));
  assert.deepEqual(ranged.datasync.sort(), [join(segDir, segmentName(2)), join(segDir, segmentName(3))]);
  assert.deepEqual(ranged.sync, [segDir]);
  const rest = await recordSyncs(() => image.flush());
  assert.deepEqual(rest.datasync.sort(), [join(segDir, segmentName(0)), join(segDir, segmentName(6))], 'what the range left out, the next flush syncs');
  assert.deepEqual(rest.sync, []);
  await image.close();
});

test('the handle LRU stays bounded; an evicted dirty segment is fdatasynced before it is closed, so flush still covers it', async () => {
  const seg = 64 * 1024;
  const { image, segDir } = await freshImage('lru', 20 * seg, seg, 4);
  const synced = await recordSyncs(async () => {
    for (let k = 0; k < 20; k++) await image.write(Buffer.alloc(10, k + 1), k * seg);
    assert.ok(image.openHandles <= 4, `open handles ${image.openHandles}`);
    await image.flush();
  });
  assert.deepEqual([...new Set(synced.datasync)].sort(), Array.from({ length: 20 }, (_, k) => join(segDir, segmentName(k))));
  for (let k = 0; k < 20; k++) {
    const b = Buffer.alloc(10);
    await image.read(b, 0, 10, k * seg);
    assert.ok(b.every((x) => x === k + 1));
  }
  assert.ok(image.openHandles <= 4);
  await image.close();
});

test('a failed fdatasync of an evicted segment is reported by the next flush, and only once', async () => {
  const seg = 64 * 1024;
  const { image } = await freshImage('evict-fail', 4 * seg, seg, 1);
  await image.write(Buffer.alloc(10, 1), 0);
  const probe = await open(join(dir, 'probe2'), 'w');
  const proto = Object.getPrototypeOf(probe) as FileHandle;
  await probe.close();
  const original = proto.datasync;
  proto.datasync = async () => {
    throw Object.assign(new Error('EIO: i/o error, fdatasync'), { code: 'EIO' });
  };
  try {
    await image.write(Buffer.alloc(10, 2), seg); // evicts segment 0, whose sync fails
    await new Promise((r) => setTimeout(r, 20));
  } finally {
    proto.datasync = original;
  }
  await assert.rejects(image.flush(), /EIO/);
  await image.flush();
  await image.close();
});

test('a write whose segment cannot be created fails as a block I/O error, and works once the directory is back', async () => {
  const disks = new DiskManager(join(dir, 'no-segdir'), MiB);
  await disks.init();
  await disks.create('v-nodir', 4 * GiB);
  const held = await disks.acquire('v-nodir');
  await rm(join(dir, 'no-segdir', 'v-nodir.d'), { recursive: true });
  await assert.rejects(held.disk.write(GiB, Buffer.alloc(4096, 7), false), BlockIoError);
  await mkdir(join(dir, 'no-segdir', 'v-nodir.d'));
  await held.disk.write(GiB, Buffer.alloc(4096, 7), false);
  assert.ok((await held.disk.read(GiB, 4096)).every((b) => b === 7));
  held.release();
  await disks.closeAll();
});

test('a new disk: segments appear only where written, a write straddling a 1 GiB boundary splits, grow keeps data and persists', async () => {
  const disks = new DiskManager(join(dir, 'grow'), MiB);
  await disks.init();
  await disks.create('v-grow', 3 * GiB);
  const segDir = join(dir, 'grow', 'v-grow.d');
  assert.deepEqual(await readdir(segDir), ['layout.json']);
  const data = randomBytes(2 * MiB);
  {
    using held = await disks.acquire('v-grow');
    await held.disk.write(GiB - MiB, data, true);
    assert.deepEqual((await readdir(segDir)).filter((n) => n.endsWith('.seg')).sort(), [segmentName(0), segmentName(1)]);
    await held.disk.grow(5 * GiB);
    assert.equal(held.disk.size, 5 * GiB);
    assert.equal(held.disk.chunkCount, 5 * 1024);
    assert.ok((await held.disk.read(4 * GiB, MiB)).every((b) => b === 0));
    await held.disk.write(5 * GiB - 4096, Buffer.alloc(4096, 9), false);
  }
  await disks.closeAll();
  const again = new DiskManager(join(dir, 'grow'), MiB);
  {
    using held = await again.acquire('v-grow');
    assert.equal(held.disk.size, 5 * GiB);
    assert.ok((await held.disk.read(GiB - MiB, 2 * MiB)).equals(data));
    assert.ok((await held.disk.read(5 * GiB - 4096, 4096)).every((b) => b === 9));
  }
  await again.closeAll();
});

/** A disk exactly as the previous release left it: `{id}.img` (sparse, disk-sized) and `{id}.map`. */
async function legacyDisk(root: string, id: string, size: number, writes: Array<[number, Buffer]>): Promise<void> {
  await mkdir(root, { recursive: true });
  const fh = await open(join(root, `${id}.img`), 'w');
  await fh.truncate(size);
  for (const [at, bytes] of writes) await fh.write(bytes, 0, bytes.length, at);
  await fh.close();
  const map = await ChunkMap.create(join(root, `${id}.map`), MiB, Math.ceil(size / MiB));
  for (const [at, bytes] of writes) await map.recordWrite(Math.floor(at / MiB), Math.floor((at + bytes.length - 1) / MiB), 'data');
  await map.close();
}

test('a disk of the previous release (one sparse .img) stays readable and writable, and grows into segments without copying', async () => {
  const root = join(dir, 'legacy');
  const a = randomBytes(3 * MiB);
  const b = randomBytes(4096);
  await legacyDisk(root, 'v-old', 2 * GiB, [[5 * MiB + 17, a], [2 * GiB - 4096, b]]);
  const disks = new DiskManager(root, MiB);
  assert.deepEqual(await disks.list(), ['v-old']);
  {
    using held = await disks.acquire('v-old');
    const disk = held.disk;
    assert.equal(disk.size, 2 * GiB);
    assert.ok((await disk.read(5 * MiB + 17, a.length)).equals(a));
    assert.ok((await disk.read(2 * GiB - 4096, 4096)).equals(b));
    await disk.write(GiB, Buffer.alloc(MiB, 0x44), true);
    await disk.grow(4 * GiB);
    // The new bytes live in segments 2 and 3; the old file keeps its size.
    await disk.write(2 * GiB - MiB, Buffer.alloc(2 * MiB, 0x55), true); // straddles the legacy end
    assert.equal((await stat(join(root, 'v-old.img'))).size, 2 * GiB);
    assert.deepEqual((await readdir(join(root, 'v-old.d'))).sort(), ['00000002.seg', 'layout.json']);
    const layout = JSON.parse(await readFile(join(root, 'v-old.d', 'layout.json'), 'utf8'));
    assert.deepEqual(layout, { format: 'snapferry-disk-layout', version: 2, sizeBytes: 4 * GiB, segmentBytes: SEGMENT_BYTES, legacyBytes: 2 * GiB });
  }
  await disks.closeAll();
  const again = new DiskManager(root, MiB);
  {
    using held = await again.acquire('v-old');
    const disk = held.disk;
    assert.equal(disk.size, 4 * GiB);
    assert.ok((await disk.read(5 * MiB + 17, a.length)).equals(a));
    assert.ok((await disk.read(GiB, MiB)).every((x) => x === 0x44));
    assert.ok((await disk.read(2 * GiB - MiB, 2 * MiB)).every((x) => x === 0x55));
    assert.ok((await disk.read(3 * GiB, MiB)).every((x) => x === 0));
  }
  await again.delete('v-old');
  assert.deepEqual(await readdir(root), []);
});

test('a grow cut short between the layout and the map is finished at the next open; a map larger than its layout is refused', async () => {
  const root = join(dir, 'cut-grow');
  const disks = new DiskManager(root, MiB);
  await disks.init();
  await disks.create('v-cut', 2 * GiB);
  const layoutPath = join(root, 'v-cut.d', 'layout.json');
  const layout = JSON.parse(await readFile(layoutPath, 'utf8'));
  await writeFile(layoutPath, JSON.stringify({ ...layout, sizeBytes: 3 * GiB }));
  {
    using held = await disks.acquire('v-cut');
    assert.equal(held.disk.size, 3 * GiB);
    assert.equal(held.disk.chunkCount, 3 * 1024);
  }
  await disks.closeAll();
  await writeFile(layoutPath, JSON.stringify({ ...layout, sizeBytes: GiB }));
  await assert.rejects(disks.acquire('v-cut'), DiskFormatError);
  assert.equal(disks.openCount, 0, 'a failed open leaves nothing open');
});

test('a layout of a newer version, or a damaged one, is refused rather than guessed at', async () => {
  const root = join(dir, 'versions');
  const disks = new DiskManager(root, MiB);
  await disks.init();
  await disks.create('v-new', GiB);
  const layoutPath = join(root, 'v-new.d', 'layout.json');
  const layout = JSON.parse(await readFile(layoutPath, 'utf8'));
  await writeFile(layoutPath, JSON.stringify({ ...layout, version: 3 }));
  await assert.rejects(disks.acquire('v-new'), (e: Error) => e instanceof DiskFormatError && /version 3/.test(e.message));
  await writeFile(layoutPath, '{"format":"snapferry-disk-layout","version":2,"sizeBytes":-1');
  await assert.rejects(disks.acquire('v-new'), DiskFormatError);
  await writeFile(layoutPath, JSON.stringify({ ...layout, sizeBytes: 'big' }));
  await assert.rejects(disks.acquire('v-new'), DiskFormatError);
  await assert.rejects(disks.acquire('v-none'), (e: NodeJS.ErrnoException) => e.code === 'ENOENT');
});

test('more refusals: a layout of another format or with a zero segment size, legacy bytes without a legacy file', async () => {
  const root = join(dir, 'refusals');
  const disks = new DiskManager(root, MiB);
  await disks.init();
  await disks.create('v-ref', GiB);
  const layoutPath = join(root, 'v-ref.d', 'layout.json');
  const layout = JSON.parse(await readFile(layoutPath, 'utf8'));
  await writeFile(layoutPath, JSON.stringify({ ...layout, format: 'something-else' }));
  await assert.rejects(disks.acquire('v-ref'), /not a disk layout file/);
  await writeFile(layoutPath, JSON.stringify({ ...layout, segmentBytes: 0 }));
  await assert.rejects(disks.acquire('v-ref'), /segmentBytes is 0/);
  assert.throws(() => new SegmentedImage(join(root, 'x.d'), null, { sizeBytes: GiB, segmentBytes: GiB, legacyBytes: GiB }), DiskFormatError);
});

test('a grown layout-1 disk whose old file went missing fails its reads of the old range as block I/O errors, not as zeros', async () => {
  const root = join(dir, 'legacy-missing');
  await legacyDisk(root, 'v-gone', GiB, [[0, Buffer.alloc(4096, 1)]]);
  const disks = new DiskManager(root, MiB);
  await disks.use('v-gone', (disk) => disk.grow(2 * GiB));
  await disks.closeAll();
  await rm(join(root, 'v-gone.img'));
  using held = await disks.acquire('v-gone');
  await assert.rejects(held.disk.read(0, 4096), BlockIoError);
  assert.ok((await held.disk.read(GiB, 4096)).every((b) => b === 0), 'the segment range still reads');
  held.release();
  await disks.closeAll();
});

test('a failed fdatasync or directory fsync in flush fails that flush and is retried by the next one', async () => {
  const seg = 64 * 1024;
  const { image, segDir } = await freshImage('flush-fail', 4 * seg, seg);
  await image.write(Buffer.alloc(10, 1), seg);
  const probe = await open(join(dir, 'probe3'), 'w');
  const proto = Object.getPrototypeOf(probe) as FileHandle;
  await probe.close();
  const original = { datasync: proto.datasync, sync: proto.sync };
  const eio = async (): Promise<void> => {
    throw Object.assign(new Error('EIO: i/o error'), { code: 'EIO' });
  };
  proto.datasync = eio;
  try {
    await assert.rejects(image.flush(), /EIO/);
  } finally {
    proto.datasync = original.datasync;
  }
  proto.sync = eio;
  try {
    await assert.rejects(image.flush(), /EIO/); // the segment syncs now, the directory does not
  } finally {
    proto.sync = original.sync;
  }
  const retried = await recordSyncs(() => image.flush());
  assert.deepEqual(retried, { datasync: [], sync: [segDir] }, 'the directory sync is owed, the segment is done');
  await image.close();
});

test('a write still in flight when a flush starts is synced by the next flush', async () => {
  const seg = 64 * 1024;
  const { image, segDir } = await freshImage('inflight', 2 * seg, seg, 64, new PoolWrites());
  await image.write(Buffer.alloc(10, 1), 0);
  await image.flush();
  const probe = await open(join(dir, 'probe4'), 'w');
  const proto = Object.getPrototypeOf(probe) as FileHandle;
  await probe.close();
  const write = proto.write;
  let letGo!: () => void;
  const gate = new Promise<void>((r) => (letGo = r));
  proto.write = async function (this: FileHandle, ...args: unknown[]) {
    await gate;
    return (write as any).apply(this, args);
  } as typeof write;
  let inFlight: Promise<void>;
  try {
    inFlight = image.write(Buffer.alloc(10, 2), 100);
    await new Promise((r) => setTimeout(r, 10));
    const during = image.flush();
    letGo();
    await inFlight;
    await during;
  } finally {
    proto.write = write;
  }
  const next = await recordSyncs(() => image.flush());
  assert.deepEqual(next.datasync, [join(segDir, segmentName(0))]);
  await image.close();
});
