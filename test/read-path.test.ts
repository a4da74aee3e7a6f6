/**
 * Reads that are read once (a capture): the chooser between buffered and direct reads
 * (src/blockdev/read-path.ts), and SegmentedImage's direct and chosen reads, which must answer
 * exactly what `read` answers whatever the way, the alignment or the file system.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdir, truncate } from 'node:fs/promises';
import { join } from 'node:path';
import { EXPLORE_EVERY, ReadPathChooser, SAMPLES, type ReadWay } from '../src/blockdev/read-path.ts';
import { SegmentedImage, segmentName } from '../src/blockdev/segmented-image.ts';
import { alignedSharedMemory } from '../src/lib/aligned-memory.ts';
import { directIoDirs } from './helpers/direct-io-dirs.ts';

const MiB = 1 << 20;
const dirs = directIoDirs('read-path');

/** The ways `n` reads take while every read the way `way` took `ms` per MiB. */
function drive(chooser: ReadPathChooser, n: number, msPerMiB: Record<ReadWay, number>): ReadWay[] {
  const ways: ReadWay[] = [];
  for (let i = 0; i < n; i++) {
    const way = chooser.next();
    ways.push(way);
    chooser.observe(way, 4 * MiB, 4 * msPerMiB[way]);
  }
  return ways;
}

test('the chooser keeps to the faster way, tries the other one read in EXPLORE_EVERY, and follows a change', () => {
  const chooser = new ReadPathChooser();
  // Cached bytes: buffered reads are fast, direct ones go to the device.
  const cached = drive(chooser, 8 * EXPLORE_EVERY, { buffered: 0.5, direct: 2 });
  assert.equal(cached[0], 'buffered', 'buffered until both ways are timed');
  assert.equal(cached.filter((w) => w === 'direct').length, 8, 'one read in EXPLORE_EVERY goes direct, no more');
  // The rest of the disk is not cached: buffered reads are now the slower way.
  const cold = drive(chooser, 8 * EXPLORE_EVERY, { buffered: 3, direct: 2 });
  const lastHalf = cold.slice(4 * EXPLORE_EVERY);
  assert.equal(lastHalf.filter((w) => w === 'buffered').length, 4, 'direct once buffered reads turned slower, probing buffered one in EXPLORE_EVERY');
  // Cached again: back to buffered within SAMPLES probes.
  const again = drive(chooser, (SAMPLES + 2) * EXPLORE_EVERY, { buffered: 0.5, direct: 2 });
  assert.equal(again.slice(-EXPLORE_EVERY).filter((w) => w === 'direct').length, 1, 'buffered again, direct only to explore');
});

test('one slow read among fast ones does not turn the chooser, and short reads say nothing', () => {
  const chooser = new ReadPathChooser();
  drive(chooser, 4 * EXPLORE_EVERY, { buffered: 0.5, direct: 2 });
  chooser.observe('buffered', 4 * MiB, 4 * 50); // a read that waited behind the thread pool
  for (let i = 0; i < 20; i++) chooser.observe('buffered', 4096, 1000); // tiny reads: not judged
  const ways = drive(chooser, EXPLORE_EVERY - 1, { buffered: 0.5, direct: 2 });
  assert.ok(ways.filter((w) => w === 'buffered').length >= EXPLORE_EVERY - 2, `still buffered: ${ways.join(',')}`);
});

test('direct and chosen reads answer exactly what buffered reads answer: segment boundaries, holes, file ends, unaligned ranges and memory, on each file system', async () => {
  const seg = 1 * MiB;
  for (const base of dirs) {
    const segDir = join(base, 'image');
    await mkdir(segDir);
    const image = new SegmentedImage(segDir, null, { sizeBytes: 8 * seg, segmentBytes: seg, legacyBytes: 0 });
    try {
      const data = randomBytes(3 * seg + 12345);
      await image.write(data, seg - 4096); // segments 0..4; segment 5 onwards missing
      await image.write(randomBytes(5000), 6 * seg); // segment 6: a file shorter than its segment
      await image.flush();
      await truncate(join(segDir, segmentName(6)), 5000 + 3); // its end is not block-aligned
      const cases: Array<[position: number, length: number]> = [
        [0, 8 * seg], // everything: data, a hole, a short file, missing segments
        [seg - 4096, 4 * MiB], // aligned, across three boundaries
        [6 * seg, 2 * seg], // the short file, then a missing segment
        [seg - 4096 + 1, 65536 - 7], // unaligned
        [4 * seg, 4096], // the end of the written bytes
      ];
      const aligned = Buffer.from(alignedSharedMemory(8 * seg), 0, 8 * seg);
      for (const [position, length] of cases) {
        const expected = Buffer.alloc(length, 0xee);
        await image.read(expected, 0, length, position);
        for (const [label, into] of [['aligned', aligned], ['plain', Buffer.alloc(8 * seg, 0xdd)]] as const) {
          into.fill(0xcc);
          await image.readDirect(into, 0, length, position);
          assert.ok(into.subarray(0, length).equals(expected), `${base}: readDirect ${position}+${length} into ${label} memory`);
          for (let i = 0; i < 2 * EXPLORE_EVERY; i++) {
            into.fill(0xbb);
            await image.readOnce(into, 0, length, position);
            assert.ok(into.subarray(0, length).equals(expected), `${base}: readOnce #${i} ${position}+${length} into ${label} memory`);
          }
        }
      }
    } finally {
      await image.close();
    }
  }
});
