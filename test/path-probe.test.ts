/**
 * The batched presence checks the chunk store's `has` and `touch` ride on (lib/path-probe.ts): the
 * worker path and the inline path give the same answers entry by entry (a large batch is split
 * over workers and put back in order), only regular files count, a touch sets the times of the
 * first alternative there and of nothing else, and a real error (not "absent") is never read as
 * "absent": it rejects.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, rm, stat, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PathProbe, PathProbeError } from '../src/lib/path-probe.ts';

async function fixture(): Promise<{ dir: string; entries: string[][]; expected: number[] }> {
  const dir = await mkdtemp(join(tmpdir(), 'snapferry-probe-'));
  const entries: string[][] = [];
  const expected: number[] = [];
  for (let i = 0; i < 300; i++) {
    const plain = join(dir, `c${i}`);
    const packed = `${plain}.zst`;
    // i % 4: 0 plain, 1 packed, 2 neither, 3 a directory where the plain file would be, then packed
    const kind = i % 4;
    if (kind === 0) await writeFile(plain, Buffer.alloc(i + 1));
    if (kind === 1 || kind === 3) await writeFile(packed, Buffer.alloc(i + 2));
    if (kind === 3) await mkdir(plain);
    entries.push([plain, packed]);
    expected.push(kind === 0 ? 0 : kind === 2 ? -1 : 1);
  }
  return { dir, entries, expected };
}

for (const [name, options] of [['workers', { size: 2, inlineBelow: 8 }], ['inline', { size: 1, inlineBelow: 100_000 }]] as const) {
  test(`statFirst answers, entry by entry, the first regular file of each entry (${name})`, async () => {
    const { dir, entries, expected } = await fixture();
    const probe = new PathProbe(options);
    try {
      const answer = await probe.statFirst(entries);
      assert.deepEqual([...answer.index], expected);
      for (const [i, k] of expected.entries()) {
        if (k < 0) continue;
        const st = await stat(entries[i]![k]!);
        assert.equal(answer.size[i], st.size, `size of entry ${i}`);
        assert.equal(answer.mtimeMs[i], st.mtimeMs, `mtime of entry ${i}`);
      }
    } finally {
      await probe.close();
      await rm(dir, { recursive: true, force: true });
    }
  });

  test(`touchFirst sets the times of the first alternative there, and of nothing else (${name})`, async () => {
    const { dir, entries, expected } = await fixture();
    const probe = new PathProbe(options);
    try {
      const old = new Date('2020-01-01T00:00:00Z');
      for (const e of entries) for (const p of e) await utimes(p, old, old).catch(() => undefined);
      const seconds = Math.floor(Date.now() / 1000);
      const touched = await probe.touchFirst(entries, seconds);
      // A directory at the plain path is "there" for a touch (utimes takes it): the store never
      // makes one, and its `has` (statFirst) does not count it.
      const expectedTouch = expected.map((k, i) => (i % 4 === 3 ? 0 : k));
      assert.deepEqual([...touched], expectedTouch);
      for (const [i, k] of expectedTouch.entries()) {
        for (const [j, p] of entries[i]!.entries()) {
          const st = await stat(p).catch(() => null);
          if (!st) continue;
          assert.equal(Math.floor(st.mtimeMs / 1000), j === k ? seconds : old.getTime() / 1000, `entry ${i} alternative ${j}`);
        }
      }
    } finally {
      await probe.close();
      await rm(dir, { recursive: true, force: true });
    }
  });

  test(`an error other than "absent" rejects, never reads as absent (${name})`, async () => {
    const probe = new PathProbe(options);
    try {
      const tooLong = join(tmpdir(), 'x'.repeat(300)); // ENAMETOOLONG: the file may well exist under a legal name
      const entries = Array.from({ length: 20 }, () => [tooLong]);
      await assert.rejects(probe.statFirst(entries), (e: NodeJS.ErrnoException) => e.code === 'ENAMETOOLONG');
      await assert.rejects(probe.touchFirst(entries, 0), (e: NodeJS.ErrnoException) => e.code === 'ENAMETOOLONG');
    } finally {
      await probe.close();
    }
  });
}

test('a probe whose workers are stopped mid-batch rejects that batch, and answers later ones', async () => {
  const { dir, entries, expected } = await fixture();
  const probe = new PathProbe({ size: 2, inlineBelow: 8 });
  try {
    const many = Array.from({ length: 200 }, () => entries).flat();
    const rejected = assert.rejects(probe.statFirst(many), PathProbeError);
    await probe.close();
    await rejected;
    assert.deepEqual([...(await probe.statFirst(entries)).index], expected, 'after close, probes run on the thread pool');
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
