/**
 * Garbage collection safety (docs/design.md, "Garbage collection", invariants GC-1..GC-4), in-process
 * on a real region (SQLite, chunk files, disks): a GC is forced at every named step of a capture, not
 * raced with sleeps, and every snapshot must still restore bit-identical afterwards.
 *
 * The data is chosen to be the dangerous case: the disk holds exactly the chunks of a snapshot that
 * was deleted, whose chunk files are old, so a capture finds them already stored (dedup) and would
 * otherwise rely on blobs that nothing names yet.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { readdir, utimes } from 'node:fs/promises';
import { join } from 'node:path';
import { startHarness, type Harness } from './helpers/region-harness.ts';
import { collectGarbage } from '../src/repository/garbage-collector.ts';
import { gcRoots } from '../src/services/region-recovery.ts';
import { Manifest } from '../src/repository/manifest.ts';

const MiB = 1 << 20;
let h: Harness;
/** When set, every step of a capture runs a full garbage collection before it continues. */
let gcAtEveryStep = false;
const stepsSeen: string[] = [];

before(async () => {
  h = await startHarness('bj', { gcGraceMs: 0 }, {
    steps: async (step) => {
      if (!gcAtEveryStep) return;
      stepsSeen.push(step);
      await h.gc();
    },
  });
});
after(async () => h?.close());

/** 12 chunks: 8 distinct random ones, two of them repeated, and zeros between. */
function dataset(): Buffer {
  const distinct = Array.from({ length: 8 }, () => randomBytes(MiB));
  return Buffer.concat([...distinct, distinct[0]!, Buffer.alloc(MiB), distinct[3]!, Buffer.alloc(MiB)]);
}

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

async function newVolume(fromSnapshot?: string): Promise<string> {
  const [id] = (await h.call('POST', '/v2/volume', { cdsSizeInGB: 1, ...(fromSnapshot ? { snapshotId: fromSnapshot } : {}) })).json.volumeIds;
  await h.waitFor(async () => {
    const v = (await h.call('GET', `/v2/volume/${id}`)).json.volume;
    if (v.status === 'Error') throw new Error(`volume ${id} failed: ${JSON.stringify(v)}`);
    return v.status === 'Available';
  }, 60_000);
  return id;
}

async function write(volumeId: string, data: Buffer): Promise<void> {
  const res = await h.call('PUT', `/v2/volume/${volumeId}/data?offset=0`, data, { headers: { 'content-type': 'application/octet-stream' } });
  assert.equal(res.status, 200, JSON.stringify(res.json));
}

async function read(volumeId: string, length: number): Promise<Buffer> {
  const res = await h.call('GET', `/v2/volume/${volumeId}/data`, undefined, { headers: { range: `bytes=0-${length - 1}` } });
  assert.equal(res.status, 206);
  return res.raw;
}

async function snapshot(volumeId: string): Promise<string> {
  const { snapshotId } = (await h.call('POST', '/v2/snapshot', { volumeId, snapshotName: `s${Date.now()}` })).json;
  await h.waitFor(async () => {
    const s = (await h.call('GET', `/v2/snapshot/${snapshotId}`)).json.snapshot;
    if (s.status === 'CreatedFailed') throw new Error(`snapshot failed: ${JSON.stringify(s)}`);
    return s.status === 'Available';
  }, 60_000);
  return snapshotId;
}

async function remove(kind: 'volume' | 'snapshot', id: string): Promise<void> {
  assert.equal((await h.call('DELETE', `/v2/${kind}/${id}`)).status, 200);
  if (kind === 'volume') await h.waitFor(async () => (await h.call('GET', `/v2/volume/${id}`)).status === 404);
}

/** Makes every stored blob (or only the chunks) look last used two hours ago. */
async function ageAllBlobs(namespaces: string[] = ['chunks', 'manifests']): Promise<number> {
  const old = (Date.now() - 2 * 3600_000) / 1000;
  let n = 0;
  for (const ns of namespaces) {
    const root = join(h.dir, 'bj', ns);
    for (const dir of await readdir(root)) {
      if (dir === '.tmp') continue;
      for (const f of await readdir(join(root, dir))) {
        await utimes(join(root, dir, f), old, old);
        n++;
      }
    }
  }
  return n;
}

/** Leaves the chunks of `data` stored, old, and named by nothing. */
async function orphanedCopyOf(data: Buffer): Promise<void> {
  const v = await newVolume();
  await write(v, data);
  const s = await snapshot(v);
  await remove('snapshot', s);
  await remove('volume', v);
  assert.ok((await ageAllBlobs()) > 0);
}

test('GC-2/GC-3: a GC at every step of a capture that reuses orphaned, old chunks loses nothing', async () => {
  const data = dataset();
  await orphanedCopyOf(data);
  const v = await newVolume();
  await write(v, data);
  stepsSeen.length = 0;
  gcAtEveryStep = true;
  let s: string;
  try {
    s = await snapshot(v);
  } finally {
    gcAtEveryStep = false;
  }
  for (const step of ['capture:hold-opened', 'capture:frozen', 'capture:chunk-stored', 'capture:manifest-stored', 'capture:published']) {
    assert.ok(stepsSeen.includes(step), `a GC ran at ${step} (saw ${[...new Set(stepsSeen)].join(', ')})`);
  }
  await h.gc();
  const restored = await newVolume(s);
  assert.equal(sha(await read(restored, data.length)), sha(data), 'the snapshot restores bit-identical');
});

test('GC-1: a disk base is a root: a snapshot of an unchanged disk whose last snapshot was deleted restores', async () => {
  const data = dataset();
  const v = await newVolume();
  await write(v, data);
  const first = await snapshot(v);
  await remove('snapshot', first);
  // Only the chunks look old: the base's manifest stays, so a next snapshot would inherit its ids
  // (a base whose manifest is gone is re-read whole, which would hide a lost base).
  await ageAllBlobs(['chunks']);
  const gc = await h.gc();
  assert.equal(gc.brokenRoots.length, 0);
  // Unchanged since `first`: this capture reads nothing and names the base's chunks. (Were the base
  // collected, the capture would have to read the whole disk again to stay correct.)
  const second = await snapshot(v);
  const created = h.logs().find((l) => l.msg === 'snapshot created' && l.snapshotId === second);
  assert.equal(created?.chunksRead, 0, 'the base survived the GC: nothing was read again');
  await ageAllBlobs();
  await h.gc();
  const restored = await newVolume(second);
  assert.equal(sha(await read(restored, data.length)), sha(data));
});

test('GC-1: garbage is collected: chunks of a deleted snapshot and disk go, shared ones stay', async () => {
  const shared = randomBytes(MiB);
  const a = await newVolume();
  await write(a, Buffer.concat([shared, randomBytes(MiB), randomBytes(MiB)]));
  const sa = await snapshot(a);
  const b = await newVolume();
  const bData = Buffer.concat([shared, randomBytes(MiB)]);
  await write(b, bData);
  const sb = await snapshot(b);
  await remove('snapshot', sa);
  await remove('volume', a);
  await ageAllBlobs();
  const gc = await h.gc();
  assert.ok(gc.chunksDeleted >= 2, `the two chunks only the deleted snapshot named are gone: ${JSON.stringify(gc)}`);
  const present = await h.region.repo.chunks.has([sha(shared)]);
  assert.ok(present.has(sha(shared)), 'a chunk another snapshot names stays');
  const restored = await newVolume(sb);
  assert.equal(sha(await read(restored, 2 * MiB)), sha(bData));
});

test('grace: a blob stored moments ago that nothing names yet survives a GC within the grace period', async () => {
  const m = Manifest.empty(4 * MiB, MiB);
  m.set(0, sha(randomBytes(32)));
  const bytes = m.encode();
  const id = sha(bytes);
  await h.region.repo.manifests.put(id, bytes);
  await h.region.repo.manifests.sync();
  const deps = { repo: h.region.repo, oldestHold: () => Promise.resolve(null), roots: () => gcRoots(h.region) };
  await collectGarbage({ ...deps, graceMs: 3600_000 });
  assert.ok((await h.region.repo.manifests.has([id])).has(id), 'kept within the grace period');
  await collectGarbage({ ...deps, graceMs: 0, now: () => Date.now() + 1000 });
  assert.ok(!(await h.region.repo.manifests.has([id])).has(id), 'collected once the grace period is over');
});

test('GC runs beside captures and restores: a GC paused mid-sweep blocks neither', async () => {
  const data = dataset();
  await orphanedCopyOf(data);
  let release!: () => void;
  const gate = new Promise<void>((r) => (release = r));
  let paused!: () => void;
  const reached = new Promise<void>((r) => (paused = r));
  const gc = collectGarbage({
    repo: h.region.repo, graceMs: 0,
    oldestHold: (now) => h.region.meta.gcHolds.oldestLiveStart(now),
    roots: () => gcRoots(h.region),
    onStep: async (step) => {
      if (step === 'marked') {
        paused();
        await gate;
      }
    },
  });
  await reached;
  // While that GC sits between its mark and its sweep, a capture of the orphaned data and a restore run.
  const v = await newVolume();
  await write(v, data);
  const s = await snapshot(v);
  const restored = await newVolume(s);
  release();
  const result = await gc;
  assert.equal(result.brokenRoots.length, 0);
  // The paused GC marked before the snapshot existed; the capture's hold and fresh last-used times kept it whole.
  const again = await newVolume(s);
  assert.equal(sha(await read(again, data.length)), sha(data));
  assert.equal(sha(await read(restored, data.length)), sha(data));
});
