/**
 * Direct writes (SegmentedImage.writeDirect, what a restore writes with): past the page cache where
 * the kernel takes them, through it where it does not, and in every case the same bytes in the same
 * places as buffered writes. Run on the test directory's file system and on tmpfs (/dev/shm),
 * where O_DIRECT may be refused.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { SegmentedImage } from '../src/blockdev/segmented-image.ts';
import { alignedSharedMemory } from '../src/lib/aligned-memory.ts';
import { directIoDirs } from './helpers/direct-io-dirs.ts';

const MiB = 1 << 20;
const SEG = MiB;
const SIZE = 8 * SEG;
const dirs = directIoDirs('write-direct');

const layout = { sizeBytes: SIZE, segmentBytes: SEG, legacyBytes: 0 };

async function readAll(image: SegmentedImage): Promise<Buffer> {
  const all = Buffer.alloc(SIZE, 0xee);
  await image.read(all, 0, SIZE, 0);
  return all;
}

test('direct writes land exactly what buffered writes land: segment boundaries, unaligned ranges and memory, over cached dirty pages and under later buffered writes, after a reopen too', async () => {
  for (const base of dirs) {
    const expectedDir = join(base, 'buffered');
    const directDir = join(base, 'direct');
    await mkdir(expectedDir);
    await mkdir(directDir);
    const expected = new SegmentedImage(expectedDir, null, layout);
    let direct = new SegmentedImage(directDir, null, layout);
    try {
      // Dirty pages in the cache first: a direct write over them must read back as its own bytes, before the flush and after it.
      const cached = randomBytes(3 * SEG);
      await expected.write(cached, SEG);
      await direct.write(cached, SEG);
      const aligned = Buffer.from(alignedSharedMemory(4 * MiB), 0, 4 * MiB);
      const writes: Array<[label: string, position: number, data: () => Buffer]> = [
        ['aligned, over the cached pages', SEG, () => aligned.subarray(0, MiB)],
        ['aligned, across two segment boundaries', 2 * SEG - 4096, () => aligned.subarray(0, 2 * MiB + 8192)],
        ['into a segment not yet created', 6 * SEG, () => aligned.subarray(0, 64 * 1024)],
        ['an unaligned position', 5 * SEG + 7, () => aligned.subarray(0, 70_000)],
        ['unaligned memory', 4 * SEG, () => aligned.subarray(1, 1 + 65536)],
        ['ordinary (unaligned) Buffer memory', 3 * SEG + 4096, () => randomBytes(2 * 65536)],
      ];
      for (const [label, position, data] of writes) {
        aligned.set(randomBytes(aligned.length));
        const bytes = data();
        await expected.write(Buffer.from(bytes), position);
        await direct.writeDirect(bytes, position);
        assert.ok((await readAll(direct)).equals(await readAll(expected)), `${base}: ${label}`);
      }
      // A buffered write over part of a directly written range: the later write wins.
      const later = randomBytes(5000);
      await expected.write(later, SEG + 100);
      await direct.write(later, SEG + 100);
      assert.ok((await readAll(direct)).equals(await readAll(expected)), `${base}: a buffered write after a direct one`);
      await direct.flush();
      await direct.close();
      direct = new SegmentedImage(directDir, null, layout);
      assert.ok((await readAll(direct)).equals(await readAll(expected)), `${base}: the same bytes after a reopen`);
    } finally {
      await expected.close();
      await direct.close();
    }
  }
});
