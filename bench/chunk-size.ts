/**
 * Chunk size: what storing a disk image into LocalDirChunkStore costs at 256 KiB, 1 MiB and 4 MiB
 * chunks, plus the SHA-256 throughput it rests on and how much an incremental copy resends.
 *
 *   node --import tsx bench/chunk-size.ts [--size-mib=1024] [--runs=2] [--sizes-kib=256,1024,4096]
 *                                         [--concurrency=8] [--skip-hash] [--skip-store] [--keep]
 *
 * 1. Hash throughput on 1 MiB buffers: node:crypto on the main thread vs Sha256Pool (all cores).
 * 2. Store: for each image ("random": every byte random; "mixed": random data with zero extents of
 *    64 KiB..16 MiB covering about 30%) and chunk size, into a fresh store under .bench-data/:
 *    zero chunks are skipped, every other chunk is hashed on the pool (as ChunkRepository does), put
 *    (the store verifies the hash again, also on the pool) with `concurrency` chunks in flight,
 *    then one grouped sync(). Reported: wall time of put phase and sync, MiB/s of the image's
 *    logical size over the total, files created.
 * 3. Incremental copies: for a few write patterns on the image, the bytes a copy has to resend
 *    (every chunk touched by a write is resent whole). Seeded, so the numbers are reproducible.
 *
 * The page cache is flushed (`sync`) before every timed run so one run's writeback does not land in
 * the next.
 */
import { execFileSync } from 'node:child_process';
import { createHash, randomFillSync } from 'node:crypto';
import { mkdir, readdir, rm } from 'node:fs/promises';
import { availableParallelism, loadavg } from 'node:os';
import path from 'node:path';
import { LocalDirChunkStore } from '../src/chunkstore/local-dir-store.ts';
import { isAllZero } from '../src/lib/all-zero.ts';
import { Sha256Pool } from '../src/lib/sha256-pool.ts';

const KiB = 1024;
const MiB = 1024 * KiB;
const args = new Map(
  process.argv.slice(2).map((a) => {
    const [k, v] = a.replace(/^--/, '').split('=');
    return [k!, v ?? 'true'] as const;
  }),
);
const SIZE = Number(args.get('size-mib') ?? 1024) * MiB;
const RUNS = Number(args.get('runs') ?? 2);
const CHUNK_SIZES = (args.get('sizes-kib') ?? '256,1024,4096').split(',').map((s) => Number(s) * KiB);
const CONCURRENCY = Number(args.get('concurrency') ?? 8);
const DIR = path.resolve('.bench-data/chunk-size');

function fmt(n: number, digits = 0): string {
  return n.toFixed(digits);
}

/** Deterministic PRNG (mulberry32) for the image layout and the write patterns. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

async function mapLimit<T>(items: T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(limit, items.length) }, async () => {
      while (next < items.length) await fn(items[next++]!);
    }),
  );
}

/** CPU seconds (user + system, every thread of this process) since `start`. */
function cpuSeconds(start: NodeJS.CpuUsage): number {
  const d = process.cpuUsage(start);
  return (d.user + d.system) / 1e6;
}

// --- 1. hash throughput -------------------------------------------------------------------------

async function benchHash(): Promise<void> {
  const bufs = Array.from({ length: 32 }, () => randomFillSync(Buffer.allocUnsafe(MiB)));
  const N = 3072;
  console.log(`\n## SHA-256 of 1 MiB buffers (${N} buffers = ${N} MiB per measurement)\n`);
  console.log('| hasher | in flight | MiB/s (wall) | MiB per CPU-second (all threads) |');
  console.log('| --- | --- | --- | --- |');
  for (let rep = 0; rep < 2; rep++) {
    const t = performance.now();
    const c = process.cpuUsage();
    for (let i = 0; i < N; i++) createHash('sha256').update(bufs[i % 32]!).digest('hex');
    console.log(`| main thread, node:crypto | 1 | ${fmt(N / ((performance.now() - t) / 1000))} | ${fmt(N / cpuSeconds(c))} |`);
  }
  const pool = new Sha256Pool();
  await Promise.all(bufs.map((b) => pool.hash(b))); // start the workers
  for (const inFlight of [1, 2, 4, 8, 16]) {
    const t = performance.now();
    const c = process.cpuUsage();
    let next = 0;
    await Promise.all(
      Array.from({ length: inFlight }, async () => {
        while (next < N) await pool.hash(bufs[next++ % 32]!);
      }),
    );
    console.log(`| Sha256Pool (${pool.size} workers) | ${inFlight} | ${fmt(N / ((performance.now() - t) / 1000))} | ${fmt(N / cpuSeconds(c))} |`);
  }
  // Inputs in SharedArrayBuffer memory: hashed in place by the workers, no copy.
  const shared = bufs.map((b) => {
    const s = Buffer.from(new SharedArrayBuffer(b.length));
    b.copy(s);
    return s;
  });
  for (const inFlight of [2, 8]) {
    const t = performance.now();
    const c = process.cpuUsage();
    let next = 0;
    await Promise.all(
      Array.from({ length: inFlight }, async () => {
        while (next < N) await pool.hash(shared[next++ % 32]!);
      }),
    );
    console.log(`| Sha256Pool (${pool.size} workers), SharedArrayBuffer input | ${inFlight} | ${fmt(N / ((performance.now() - t) / 1000))} | ${fmt(N / cpuSeconds(c))} |`);
  }
  await pool.close();
}

// --- 2. store ------------------------------------------------------------------------------------

function makeImage(kind: 'random' | 'mixed'): Buffer {
  const img = Buffer.allocUnsafe(SIZE);
  randomFillSync(img);
  if (kind === 'mixed') {
    const rnd = prng(42);
    let zeroed = 0;
    while (zeroed < SIZE * 0.3) {
      const len = Math.min(SIZE, (1 + Math.floor(rnd() * 256)) * 64 * KiB); // 64 KiB .. 16 MiB
      const at = Math.floor(rnd() * ((SIZE - len) / (64 * KiB))) * 64 * KiB;
      img.fill(0, at, at + len);
      zeroed += len;
    }
  }
  return img;
}

async function countFiles(root: string): Promise<number> {
  let n = 0;
  for (const d of await readdir(root)) {
    if (!/^[0-9a-f]{2}$/.test(d)) continue;
    n += (await readdir(path.join(root, d))).length;
  }
  return n;
}

interface StoreResult {
  chunkSize: number;
  putMs: number;
  syncMs: number;
  files: number;
  zeroChunks: number;
  storedBytes: number;
}

async function storeOnce(img: Buffer, chunkSize: number, pool: Sha256Pool): Promise<StoreResult> {
  const root = path.join(DIR, `store-${chunkSize / KiB}k`);
  await rm(root, { recursive: true, force: true });
  execFileSync('sync');
  const store = await LocalDirChunkStore.open(root, { hasher: (b) => pool.hash(b) });
  const count = Math.ceil(img.length / chunkSize);
  const indices = Array.from({ length: count }, (_, i) => i);
  let zeroChunks = 0;
  let storedBytes = 0;
  const t0 = performance.now();
  await mapLimit(indices, CONCURRENCY, async (i) => {
    const chunk = img.subarray(i * chunkSize, Math.min(img.length, (i + 1) * chunkSize));
    if (isAllZero(chunk)) {
      zeroChunks++;
      return;
    }
    const id = await pool.hash(chunk);
    await store.put(id, chunk);
    storedBytes += chunk.length;
  });
  const t1 = performance.now();
  await store.sync();
  const t2 = performance.now();
  const files = await countFiles(root);
  if (!args.has('keep')) await rm(root, { recursive: true, force: true });
  return { chunkSize, putMs: t1 - t0, syncMs: t2 - t1, files, zeroChunks, storedBytes };
}

async function benchStore(): Promise<void> {
  await mkdir(DIR, { recursive: true });
  const pool = new Sha256Pool();
  console.log(`\n## Storing a ${SIZE / MiB} MiB image (hash + put, ${CONCURRENCY} chunks in flight, one sync at the end)\n`);
  console.log('| image | chunk | run | put phase s | sync s | total s | MiB/s (image) | MiB/s (stored) | files | zero chunks skipped |');
  console.log('| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |');
  for (const kind of ['random', 'mixed'] as const) {
    const img = makeImage(kind);
    for (const chunkSize of CHUNK_SIZES) {
      for (let run = 1; run <= RUNS; run++) {
        const r = await storeOnce(img, chunkSize, pool);
        const total = (r.putMs + r.syncMs) / 1000;
        console.log(
          `| ${kind} | ${chunkSize / KiB} KiB | ${run} | ${fmt(r.putMs / 1000, 2)} | ${fmt(r.syncMs / 1000, 2)} | ${fmt(total, 2)} | ${fmt(SIZE / MiB / total)} | ${fmt(r.storedBytes / MiB / total)} | ${r.files} | ${r.zeroChunks} |`,
        );
      }
    }
  }
  await pool.close();
}

// --- 3. incremental copies ----------------------------------------------------------------------

function benchIncremental(): void {
  const patterns: Array<{ name: string; writes: (rnd: () => number) => Array<[number, number]> }> = [
    { name: '100 random 4 KiB writes', writes: (rnd) => randomWrites(rnd, 100, 4 * KiB) },
    { name: '1,000 random 4 KiB writes', writes: (rnd) => randomWrites(rnd, 1000, 4 * KiB) },
    { name: '10,000 random 4 KiB writes', writes: (rnd) => randomWrites(rnd, 10_000, 4 * KiB) },
    { name: '100 random 64 KiB writes', writes: (rnd) => randomWrites(rnd, 100, 64 * KiB) },
    { name: 'one sequential 64 MiB write', writes: (rnd) => [[Math.floor(rnd() * (SIZE - 64 * MiB) / 4096) * 4096, 64 * MiB]] },
  ];
  console.log(`\n## Incremental copy of a ${SIZE / MiB} MiB disk: bytes resent after a write pattern\n`);
  console.log(`| pattern | bytes written | ${CHUNK_SIZES.map((c) => `resent @ ${c / KiB} KiB`).join(' | ')} |`);
  console.log(`| --- | --- | ${CHUNK_SIZES.map(() => '---').join(' | ')} |`);
  for (const p of patterns) {
    const writes = p.writes(prng(7));
    const written = writes.reduce((s, [, len]) => s + len, 0);
    const cells = CHUNK_SIZES.map((cs) => {
      const touched = new Set<number>();
      for (const [off, len] of writes) for (let c = Math.floor(off / cs); c <= Math.floor((off + len - 1) / cs); c++) touched.add(c);
      const bytes = touched.size * cs;
      return `${fmt(bytes / MiB, 1)} MiB (${touched.size} chunks)`;
    });
    console.log(`| ${p.name} | ${fmt(written / MiB, 1)} MiB | ${cells.join(' | ')} |`);
  }
}

function randomWrites(rnd: () => number, n: number, len: number): Array<[number, number]> {
  return Array.from({ length: n }, () => [Math.floor((rnd() * (SIZE - len)) / 4096) * 4096, len] as [number, number]);
}

console.log(`load average at start: ${loadavg().map((l) => l.toFixed(2)).join(' ')} (${availableParallelism()} cores)`);
if (!args.has('skip-hash')) await benchHash();
if (!args.has('skip-store')) await benchStore();
benchIncremental();
