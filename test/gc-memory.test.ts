/**
 * Garbage collection's memory stays bounded at any number of chunks (docs/design.md, "Garbage
 * collection"): live ids are marked in a Bloom filter, never a Set of every id.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { startHarness, type Harness } from './helpers/region-harness.ts';
import { collectGarbage } from '../src/repository/garbage-collector.ts';
import { gcRoots } from '../src/services/region-recovery.ts';
import { Manifest } from '../src/repository/manifest.ts';
import { BloomFilter } from '../src/lib/bloom-filter.ts';

const MiB = 1 << 20;
let h: Harness;
before(async () => {
  h = await startHarness('bj', { gcGraceMs: 0 });
});
after(async () => h?.close());

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

test('GC memory is bounded: marking two million live chunk ids stays far below a Set of them', async () => {
  // A 2 TiB disk whose every chunk has data: its manifest names 2 Mi ids (64 MiB); none is stored.
  const count = 2 * 1024 * 1024;
  const m = Manifest.empty(count * MiB, MiB);
  const seed = randomBytes(32);
  for (let i = 0; i < count; i++) {
    seed.writeUInt32LE(i, 0);
    m.set(i, createHash('sha256').update(seed).digest('hex'));
  }
  const bytes = m.encode();
  const id = sha(bytes);
  await h.region.repo.manifests.put(id, bytes);
  await h.region.repo.manifests.sync();
  global.gc?.();
  const before = process.memoryUsage();
  let peak = 0;
  const result = await collectGarbage({
    repo: h.region.repo, graceMs: 0,
    oldestHold: () => Promise.resolve(null),
    roots: async () => [...(await gcRoots(h.region)), id],
    onStep: (step) => {
      if (step === 'marked') peak = process.memoryUsage().heapUsed + process.memoryUsage().arrayBuffers;
    },
  });
  assert.equal(result.brokenRoots.length, 0);
  const grew = peak - (before.heapUsed + before.arrayBuffers);
  // A Set of 2 Mi hex ids costs > 200 MiB; the filter is ~2.4 MiB plus one decoded manifest (64 MiB).
  console.log(`marking 2 Mi live ids grew heap + array buffers by ${Math.round(grew / MiB)} MiB`);
  assert.ok(grew < 120 * MiB, `marking grew the heap by ${Math.round(grew / MiB)} MiB`);
  await h.region.repo.manifests.delete(id);
});

test('the mark filter never forgets a live id (no false negatives) and rarely keeps garbage', async () => {
  const filter = BloomFilter.forCount(200_000);
  const ids = Array.from({ length: 200_000 }, () => randomBytes(32).toString('hex'));
  for (const id of ids) filter.add(id);
  for (const id of ids) assert.ok(filter.mightContain(id), `live id ${id} reported absent`);
  let falsePositives = 0;
  for (let i = 0; i < 100_000; i++) if (filter.mightContain(randomBytes(32).toString('hex'))) falsePositives++;
  assert.ok(falsePositives < 2000, `${falsePositives} of 100000 garbage ids kept`);
});
