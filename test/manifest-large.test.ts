/**
 * Manifests of BCC's largest disk (32765 GB, 33.5 M chunks): resizing, comparing and walking one
 * touches only its present ids (the id buffer is 1 GiB of lazily zeroed memory), and the cheap
 * per-chunk questions a restore asks (isZero, sameChunk, nonZeroIndexes) agree with chunkId.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { test } from 'node:test';
import { Manifest } from '../src/repository/manifest.ts';

const MiB = 1 << 20;
const GiB = 1024 ** 3;
const LARGEST = 32765 * GiB;
const id = (): string => randomBytes(32).toString('hex');

test('resized, clone and equals on a 32765 GB manifest with a few chunks do not page in its id buffer', () => {
  const m = Manifest.empty(LARGEST, MiB);
  const last = m.chunkCount - 1;
  const set = [0, 1, 7, 8, 9, 2 ** 24 - 1, 2 ** 24, last];
  for (const i of set) m.set(i, id());
  const rss0 = process.memoryUsage().rss;
  const grown = m.resized(LARGEST + GiB);
  const copy = m.clone();
  assert.ok(copy.equals(m));
  assert.ok(!grown.equals(m), 'another disk size');
  const rssGrowth = process.memoryUsage().rss - rss0;
  // Two more 1 GiB id buffers exist now; touching them whole would add 2 GiB of resident memory.
  assert.ok(rssGrowth < 256 * MiB, `RSS grew by ${(rssGrowth / MiB).toFixed(0)} MiB`);
  for (const i of set) {
    assert.equal(grown.chunkId(i), m.chunkId(i));
    assert.equal(copy.chunkId(i), m.chunkId(i));
  }
  assert.equal(grown.nonZeroCount, set.length);
  assert.equal(grown.chunkId(m.chunkCount), null, 'a new chunk is zero');
  assert.deepEqual([...m.nonZeroIndexes()], set);
});

test('equals finds a differing id inside a run and a differing presence bit; sameChunk and isZero agree with chunkId', () => {
  const a = Manifest.empty(100 * MiB + 123, MiB);
  for (let i = 3; i < 40; i++) a.set(i, id());
  a.set(100, id());
  const b = a.clone();
  assert.ok(a.equals(b));
  b.set(20, id());
  assert.ok(!a.equals(b), 'an id inside a run');
  assert.ok(!a.sameChunk(20, b));
  assert.ok(a.sameChunk(19, b));
  assert.ok(a.sameChunk(50, b), 'both zero');
  const c = a.clone();
  c.set(2, null);
  c.set(41, id());
  c.set(40, null);
  assert.ok(!a.equals(c), 'a presence bit');
  assert.ok(!a.sameChunk(41, c));
  for (let i = 0; i < a.chunkCount; i++) assert.equal(a.isZero(i), a.chunkId(i) === null, `chunk ${i}`);
  assert.throws(() => a.isZero(a.chunkCount), RangeError);
  assert.throws(() => a.sameChunk(a.chunkCount, b), RangeError);
  // resized keeps runs that start and end mid-byte of the presence bitmap, and shrinks into one.
  const shrunk = a.resized(30 * MiB);
  assert.deepEqual([...shrunk.nonZeroIndexes()], Array.from({ length: 27 }, (_, k) => k + 3));
  for (const i of shrunk.nonZeroIndexes()) assert.equal(shrunk.chunkId(i), a.chunkId(i));
});
