/**
 * Disk writes on the event loop or through the thread pool (src/blockdev/write-path.ts): the
 * chooser's back-off when an inline write is slow, and SegmentedImage writing the same bytes either
 * way, failing either way as a rejection.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { writeSync } from 'node:fs';
import { mkdir, mkdtemp, open, readdir, rm, symlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SegmentedImage, segmentName } from '../src/blockdev/segmented-image.ts';
import { BACKOFF_MAX_MS, BACKOFF_MIN_MS, INLINE_MAX_BYTES, SLOW_INLINE_MS, WritePathChooser, type WriteWay } from '../src/blockdev/write-path.ts';

const KiB = 1024;
let dir: string;

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'snapferry-write-path-'));
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

function clocked(): { chooser: WritePathChooser; advance(ms: number): void } {
  let now = 0;
  return { chooser: new WritePathChooser(() => now), advance: (ms) => (now += ms) };
}

test('fast inline writes stay inline; one slow write sends writes to the pool for a back-off, then one inline write tries again', () => {
  const { chooser, advance } = clocked();
  for (let i = 0; i < 100; i++) {
    assert.equal(chooser.next(256 * KiB), 'inline');
    chooser.observeInline(0.05);
  }
  chooser.observeInline(SLOW_INLINE_MS + 1); // throttled by the kernel, say
  assert.equal(chooser.next(256 * KiB), 'pool');
  assert.equal(chooser.backoff, BACKOFF_MIN_MS);
  advance(BACKOFF_MIN_MS - 1);
  assert.equal(chooser.next(64 * KiB), 'pool', 'still backing off');
  advance(1);
  assert.equal(chooser.next(64 * KiB), 'inline', 'the back-off is over: an inline write tries again');
  chooser.observeInline(SLOW_INLINE_MS); // at the limit is not slow
  assert.equal(chooser.next(64 * KiB), 'inline');
});

test('the back-off doubles while the trial writes stay slow, up to its cap, and a fast write resets it', () => {
  const { chooser, advance } = clocked();
  const seen: number[] = [];
  for (let i = 0; i < 10; i++) {
    assert.equal(chooser.next(KiB), 'inline');
    chooser.observeInline(50);
    seen.push(chooser.backoff);
    advance(chooser.backoff);
  }
  assert.deepEqual(seen.slice(0, 6), [1, 2, 4, 8, 16, 32].map((k) => k * BACKOFF_MIN_MS));
  assert.ok(seen.every((b) => b <= BACKOFF_MAX_MS));
  assert.equal(seen.at(-1), BACKOFF_MAX_MS, 'capped: a device that stays slow stalls the loop once per cap at most');
  chooser.observeInline(0.1);
  assert.equal(chooser.backoff, 0);
  chooser.observeInline(50);
  assert.equal(chooser.backoff, BACKOFF_MIN_MS, 'a fast write in between starts the back-off over');
});

test('writes larger than INLINE_MAX_BYTES always go through the pool', () => {
  const { chooser } = clocked();
  assert.equal(chooser.next(INLINE_MAX_BYTES), 'inline');
  assert.equal(chooser.next(INLINE_MAX_BYTES + 1), 'pool');
});

/** Answers one way always, and records what it was asked and told. */
class FixedWay extends WritePathChooser {
  readonly asked: number[] = [];
  readonly timed: number[] = [];
  constructor(private readonly way: WriteWay) {
    super();
  }
  override next(bytes: number): WriteWay {
    this.asked.push(bytes);
    return this.way;
  }
  override observeInline(ms: number): void {
    this.timed.push(ms);
  }
}

for (const way of ['inline', 'pool'] as const) {
  test(`${way} writes land the same bytes, split at segment boundaries, and read back whole`, async () => {
    const seg = 64 * KiB;
    const segDir = join(dir, `same-${way}`);
    await mkdir(segDir);
    const chooser = new FixedWay(way);
    const image = new SegmentedImage(segDir, null, { sizeBytes: 8 * seg, segmentBytes: seg, legacyBytes: 0 }, 64, chooser);
    const data = randomBytes(2 * seg + 777);
    await image.write(data, seg - 333); // segments 0..3
    assert.deepEqual(chooser.asked, [333, seg, seg, 444], 'one decision per segment piece');
    assert.equal(chooser.timed.length, way === 'inline' ? 4 : 0, 'every inline write is timed, no pool write is');
    assert.deepEqual((await readdir(segDir)).sort(), [0, 1, 2, 3].map(segmentName));
    const back = Buffer.alloc(data.length);
    await image.read(back, 0, back.length, seg - 333);
    assert.ok(back.equals(data));
    await image.flush();
    await image.close();
  });

  test(`a failing ${way} write rejects (no synchronous throw) with the device's error, and the image keeps working`, async () => {
    const seg = 64 * KiB;
    const segDir = join(dir, `fail-${way}`);
    await mkdir(segDir);
    // Segment 1 is /dev/full: it opens for writing, and every write to it fails with ENOSPC.
    await symlink('/dev/full', join(segDir, segmentName(1)));
    const image = new SegmentedImage(segDir, null, { sizeBytes: 4 * seg, segmentBytes: seg, legacyBytes: 0 }, 64, new FixedWay(way));
    let pending: Promise<void> | undefined;
    assert.doesNotThrow(() => {
      pending = image.write(Buffer.alloc(100, 7), seg);
    });
    await assert.rejects(pending!, { code: 'ENOSPC' });
    await image.write(Buffer.alloc(100, 8), 0);
    const back = Buffer.alloc(100);
    await image.read(back, 0, 100, 0);
    assert.ok(back.every((b) => b === 8));
    await image.close().catch(() => undefined); // /dev/full's own sync answer is not this test's business
  });
}

test('a FileHandle whose close has begun answers fd -1, so an inline write to it fails instead of writing to whatever file takes its number', async () => {
  const fh = await open(join(dir, 'closing'), 'w');
  assert.ok(fh.fd >= 0);
  const closing = fh.close();
  assert.equal(fh.fd, -1);
  assert.throws(() => writeSync(fh.fd, Buffer.alloc(1)), { code: 'ERR_OUT_OF_RANGE' }, 'Node refuses fd -1 before any syscall');
  await closing;
});
