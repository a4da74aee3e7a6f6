/**
 * Captures at BCC's largest disk size (more chunks than a V8 Set holds), a capture that fails while
 * it begins, and the chunk map's unclean-open rule bounded by the segments that exist (crash =
 * writes, then the map is reopened without a clean close).
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, open, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DiskManager } from '../src/blockdev/disk-manager.ts';
import type { Disk } from '../src/blockdev/disk.ts';
import { segmentName } from '../src/blockdev/segmented-image.ts';

const MiB = 1 << 20;
const GiB = 1024 ** 3;
const LARGEST = 32765 * GiB;
let dir: string;

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'snapferry-capture-'));
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

const noSink = { preserve: async () => undefined };

/** Every chunk a capture on `base` would read, and the bytes it reads for `wanted`. */
async function captureOf(disk: Disk, base: number, wanted: number[] = []): Promise<{ changed: number[]; generation: number; bytes: Map<number, Buffer> }> {
  const capture = await disk.beginCapture(base, noSink);
  try {
    const changed = [...capture.changed];
    assert.equal(capture.changed.size, changed.length);
    const bytes = new Map<number, Buffer>();
    for (const i of wanted) bytes.set(i, (await capture.readChunk(i))!);
    return { changed, generation: capture.generation, bytes };
  } finally {
    capture.end();
  }
}

test('a 32765 GB disk: created instantly with nothing allocated; a capture with a few chunks written reads exactly those', async () => {
  const root = join(dir, 'largest');
  const disks = new DiskManager(root, MiB);
  await disks.init();
  const t0 = performance.now();
  await disks.create('v-big', LARGEST);
  const createMs = performance.now() - t0;
  assert.ok(createMs < 2000, `create took ${createMs} ms`);
  const map = await stat(join(root, 'v-big.map'));
  assert.equal(map.size, 32 + (LARGEST / MiB) * 4);
  assert.ok(map.blocks * 512 <= 64 * 1024, `the map allocates ${map.blocks * 512} bytes`);

  using held = await disks.acquire('v-big');
  const disk = held.disk;
  const chunks = LARGEST / MiB;
  assert.ok(chunks > 2 ** 24);
  const boundary = 2 ** 44; // 16 TiB: ext4's per-file limit, and chunk 2^24
  const writes: Array<[number, Buffer]> = [
    [0, randomBytes(MiB)],
    [boundary - MiB / 2, randomBytes(MiB)], // straddles chunks 2^24 - 1 and 2^24
    [LARGEST - MiB, randomBytes(MiB)],
  ];
  for (const [at, data] of writes) await disk.write(at, data, false);
  const expected = [0, 2 ** 24 - 1, 2 ** 24, chunks - 1];
  const { changed, bytes } = await captureOf(disk, 0, expected);
  assert.deepEqual(changed, expected);
  assert.ok(bytes.get(0)!.equals(writes[0]![1]));
  assert.ok(Buffer.concat([bytes.get(2 ** 24 - 1)!.subarray(MiB / 2), bytes.get(2 ** 24)!.subarray(0, MiB / 2)]).equals(writes[1]![1]));
  assert.ok(bytes.get(chunks - 1)!.equals(writes[2]![1]));
  // Segments exist only where written: four files for a 32 TiB disk.
  const { readdir } = await import('node:fs/promises');
  assert.deepEqual((await readdir(join(root, 'v-big.d'))).filter((n) => n.endsWith('.seg')).sort(), [0, 16383, 16384, 32764].map(segmentName));
  held.release();
  await disks.closeAll();
});

test('a capture that fails while it begins releases the disk: the next capture of it runs', async () => {
  const disks = new DiskManager(join(dir, 'queue'), MiB);
  await disks.init();
  await disks.create('v-q', GiB);
  using held = await disks.acquire('v-q');
  const disk = held.disk;
  await disk.write(0, Buffer.alloc(MiB, 1), false);
  const original = disk.map.changedSince.bind(disk.map);
  disk.map.changedSince = () => {
    throw new RangeError('Set maximum size exceeded'); // what a per-chunk Set did past 2^24 chunks
  };
  await assert.rejects(disk.beginCapture(0, noSink), /maximum size/);
  assert.equal(disk.capturing, false);
  disk.map.changedSince = original;
  // The failure also left no half capture behind: writes do not try to preserve into it.
  await disk.write(MiB, Buffer.alloc(MiB, 2), false);
  const next = await Promise.race([
    captureOf(disk, 0),
    new Promise<never>((_, reject) => setTimeout(() => reject(new Error('the second capture waited for a queue the failed one never released')), 5000).unref()),
  ]);
  assert.deepEqual(next.changed, [0, 1]);
  // And a failure of the map's durable generation step too.
  const advance = disk.map.advanceGeneration.bind(disk.map);
  disk.map.advanceGeneration = async () => {
    throw Object.assign(new Error('EIO: i/o error, fdatasync'), { code: 'EIO' });
  };
  await assert.rejects(disk.beginCapture(0, noSink), /EIO/);
  disk.map.advanceGeneration = advance;
  assert.deepEqual((await captureOf(disk, 0)).changed, [0, 1]);
  held.release();
  await disks.closeAll();
});

test('unclean open: chunks of segments that exist are taken as written, untouched segments keep their entries; the next capture reads the written chunks', async () => {
  const root = join(dir, 'crash');
  const segChunks = 1024;
  const first = new DiskManager(root, MiB);
  await first.init();
  await first.create('v-crash', 8 * GiB);
  const disk = (await first.acquire('v-crash')).disk; // never released nor closed: the process "crashes"
  const before = randomBytes(MiB);
  await disk.write(3 * MiB, before, false); // segment 0
  await disk.write(3 * GiB + 5 * MiB, randomBytes(MiB), false); // segment 3
  await disk.write(4 * GiB, Buffer.alloc(MiB, 0x77), false); // segment 4, trimmed below
  await disk.writeZeroes(4 * GiB, MiB, false);
  const base = await captureOf(disk, 0);
  assert.deepEqual(base.changed, [3, 3 * segChunks + 5, 4 * segChunks]);
  // After the snapshot: a write into an existing segment, one into a new segment, and one that
  // reaches the new segment's file without the map ever hearing of it. None of it is in the saved map.
  const afterExisting = randomBytes(MiB);
  const afterNew = randomBytes(MiB);
  const behindTheMap = randomBytes(MiB);
  await disk.write(3 * GiB + 9 * MiB, afterExisting, false);
  await disk.write(5 * GiB + 2 * MiB, afterNew, false);
  const fh = await open(join(root, 'v-crash.d', segmentName(6)), 'w');
  await fh.write(behindTheMap, 0, MiB, 7 * MiB);
  await fh.close();

  const second = new DiskManager(root, MiB);
  using held = await second.acquire('v-crash');
  const reopened = held.disk;
  // Trimmed survives the crash: it still reads as zeros, not as the 0x77 bytes in the file.
  assert.ok(reopened.map.isTrimmed(4 * segChunks));
  assert.ok((await reopened.read(4 * GiB, MiB)).every((b) => b === 0));
  const wanted = [3 * segChunks + 9, 5 * segChunks + 2, 6 * segChunks + 7, 3];
  const next = await captureOf(reopened, base.generation, wanted);
  // Segments 0, 3, 4, 5 and 6 exist: every chunk of theirs is read, except segment 4's trimmed
  // chunk (trimmed is saved before it takes effect). Segments 1, 2 and 7 do not: nothing of theirs.
  const perSegment = new Map<number, number>();
  for (const i of next.changed) perSegment.set(Math.floor(i / segChunks), (perSegment.get(Math.floor(i / segChunks)) ?? 0) + 1);
  assert.deepEqual([...perSegment], [[0, segChunks], [3, segChunks], [4, segChunks - 1], [5, segChunks], [6, segChunks]]);
  assert.ok(!next.changed.includes(4 * segChunks));
  assert.ok(next.bytes.get(3 * segChunks + 9)!.equals(afterExisting));
  assert.ok(next.bytes.get(5 * segChunks + 2)!.equals(afterNew));
  assert.ok(next.bytes.get(6 * segChunks + 7)!.equals(behindTheMap));
  assert.ok(next.bytes.get(3)!.equals(before));
  // An interrupted capture frozen at the base generation sees that the disk was written since.
  let writtenAfter = false;
  for (let i = 0; i < reopened.chunkCount; i++) if (reopened.map.generationOf(i) > base.generation) writtenAfter = true;
  assert.ok(writtenAfter);
  held.release();
  await second.closeAll();
});

test('unclean open with no write since the last snapshot: the next capture reads nothing', async () => {
  const root = join(dir, 'crash-quiet');
  const first = new DiskManager(root, MiB);
  await first.init();
  await first.create('v-quiet', 4 * GiB);
  const disk = (await first.acquire('v-quiet')).disk; // abandoned without close
  await disk.write(GiB + 3 * MiB, randomBytes(4096), false);
  const base = await captureOf(disk, 0);
  const second = new DiskManager(root, MiB);
  using held = await second.acquire('v-quiet');
  assert.deepEqual((await captureOf(held.disk, base.generation)).changed, []);
  held.release();
  await second.closeAll();
});

test('a map write that fails when a capture begins loses no entry: it is saved by the next write-out', async () => {
  const root = join(dir, 'map-write-fail');
  const disks = new DiskManager(root, MiB);
  await disks.init();
  await disks.create('v-mw', 2 * GiB);
  const held = await disks.acquire('v-mw');
  await held.disk.write(GiB + 5 * MiB, Buffer.alloc(MiB, 3), false);
  const probe = await open(join(dir, 'probe-mw'), 'w');
  const proto = Object.getPrototypeOf(probe) as import('node:fs/promises').FileHandle;
  await probe.close();
  const write = proto.write;
  proto.write = async function () {
    throw Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC' });
  } as typeof write;
  try {
    await assert.rejects(held.disk.beginCapture(0, noSink), /ENOSPC/);
  } finally {
    proto.write = write;
  }
  held.release();
  await disks.closeAll(); // clean close: the entry must be in the saved map now
  const again = new DiskManager(root, MiB);
  await again.use('v-mw', async (disk) => {
    assert.ok(disk.map.isAllocated(1024 + 5));
    assert.deepEqual((await captureOf(disk, 0)).changed, [1024 + 5]);
  });
  await again.closeAll();
});

test('a truncated chunk map is refused at open', async () => {
  const root = join(dir, 'truncated');
  const disks = new DiskManager(root, MiB);
  await disks.init();
  await disks.create('v-tr', GiB);
  const fh = await open(join(root, 'v-tr.map'), 'r+');
  await fh.truncate(32 + 100 * 4);
  await fh.close();
  await assert.rejects(disks.acquire('v-tr'), /truncated chunk map/);
});
