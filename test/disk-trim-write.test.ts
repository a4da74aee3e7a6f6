/**
 * DISK-1, deterministically: a write over a trimmed chunk makes the chunk's old bytes unreadable
 * before the map calls the chunk data, so a read that lands while the write's own bytes are still on
 * their way sees zeros (or the new bytes), never what the chunk held before the trim. The NBD command
 * fuzz found this with a read pipelined behind the write, which catches the window only when the
 * timing falls right; here the write's bytes are held at the image until the read has answered.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DiskManager } from '../src/blockdev/disk-manager.ts';

const MiB = 1 << 20;
let dir: string;
before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'snapferry-trim-write-'));
});
after(async () => rm(dir, { recursive: true, force: true }));

/** The image under a disk, with its `write` replaced: a seam for holding one write in flight. */
interface ImageSeam {
  write(data: Buffer, position: number): Promise<void>;
}

for (const shape of [
  { what: 'exactly the chunk', offset: 5 * MiB, length: MiB },
  { what: 'the chunk and parts of its neighbours', offset: 5 * MiB - 100, length: MiB + 200 },
]) {
  test(`a read while a write of ${shape.what} over a trimmed chunk is in flight never shows the bytes from before the trim`, async () => {
    const disks = new DiskManager(join(dir, shape.offset.toString()), MiB);
    await disks.init();
    await disks.create('v-trim', 64 * MiB);
    try {
      await writeOverTrimmed(disks, shape.offset, shape.length);
    } finally {
      await disks.closeAll();
    }
  });
}

async function writeOverTrimmed(disks: DiskManager, offset: number, length: number): Promise<void> {
  using held = await disks.acquire('v-trim');
  const disk = held.disk;
  await disk.write(4 * MiB, Buffer.alloc(3 * MiB, 0xaa), true); // chunk 5 and its neighbours hold data
  await disk.writeZeroes(5 * MiB, MiB, true); // chunk 5 trimmed: its file bytes are still 0xaa
  assert.ok((await disk.read(5 * MiB, MiB)).equals(Buffer.alloc(MiB)), 'the trimmed chunk reads as zeros');

  const image = (disk as unknown as { image: ImageSeam }).image;
  const write = image.write.bind(image);
  let arrived!: () => void;
  const newBytesArrived = new Promise<void>((resolve) => (arrived = resolve));
  let letThrough!: () => void;
  const gate = new Promise<void>((resolve) => (letThrough = resolve));
  image.write = async (data, position) => {
    if (data[0] === 0xbb) {
      arrived();
      await gate; // the write's own bytes wait here, after everything the disk does before them
    }
    return write(data, position);
  };
  const writing = disk.write(offset, Buffer.alloc(length, 0xbb), false);
  await newBytesArrived;
  const reading = disk.read(5 * MiB, MiB);
  // A read that waits for the write is as good (it then sees the new bytes): release the write
  // after a while rather than hang the test.
  await Promise.race([reading, new Promise((r) => setTimeout(r, 2000))]);
  letThrough();
  const during = await reading;
  await writing;
  const stale = [...during].filter((b) => b === 0xaa).length;
  assert.equal(stale, 0, `${stale} bytes of the chunk read as they were before the trim while the write was in flight`);
  const want = Buffer.alloc(MiB);
  want.fill(0xbb, Math.max(0, offset - 5 * MiB), Math.min(MiB, offset + length - 5 * MiB));
  assert.ok((await disk.read(5 * MiB, MiB)).equals(want), 'afterwards the chunk holds the write');
}
