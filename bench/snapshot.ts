/**
 * Snapshot create, measured the way issue 10's table measures it: `snapferry serve` in its own
 * process (bj and hkg in one process, the default layout), driven over HTTP, every snapshot timed
 * from its create request to `Available`, beside its peer run on the same image in the same run and
 * followed by a `sync` of what it wrote, the page cache dropped before every timed step but the warm
 * one below (neither side reads from memory what the other reads from the disk; `--warm` keeps the
 * cache for every step, see WARM below):
 *
 *   full snapshot of the mixed image (per 16 MiB: 8 MiB random, 4 MiB text, 4 MiB zeros) at each
 *   `--size` (MiB, comma-separated; default 1024,4096)     vs  cp IMAGE COPY && sync COPY
 *   incremental snapshot after 1 % of the disk was rewritten in scattered 1 MiB writes
 *   the full snapshot again, warm: a second mixed disk (other bytes) snapshotted right after it was
 *   loaded, the page cache kept, vs the same cp + sync of its image, also cached (not with --warm)
 *   a new disk from the full snapshot (restore), request to Available  vs  the same cp + sync
 *   full snapshot of 1 GiB of incompressible data        vs  cp + sync
 *   a 1 TiB disk with 1 GiB of random data spread over it (1 MiB at every GiB): its first snapshot
 *   (vs cp + sync of the same sparse file) and its copy bj -> hkg: the cost follows the written GiB
 *
 * The copies of the mixed and incompressible images are bench/replication.ts's. The server's peak
 * RSS (kernel high-water mark) is taken over each whole scenario and per timed step. Images are
 * loaded with `snapferry volume import` (zeros sent as write-zeroes), as a user loads one.
 *
 *   node --import tsx bench/snapshot.ts [--size 1024,4096] [--runs 1] [--skip-random] [--skip-sparse] [--warm]
 *
 * Prints its figures; with BENCH_RESULTS_FILE set (bench/run.ts sets it, and builds the table) also writes
 * its results there as JSON.
 */
import { randomBytes } from 'node:crypto';
import { open, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import {
  GiB, MiB, argValue, benchDir, createVolume, dropCaches, hasFlag, importImage, loadAverage, median, mixedImage, randomImage, run,
  startBenchServer, timedCopy, timedPeer, timedRestore, timedSnapshot, writeVolume, type BenchServer,
} from './common.ts';

export interface StepResult {
  ms: number;
  /** The server's peak RSS during the step, bytes. */
  peakRssBytes?: number;
  /** Bytes on the wire (copies). */
  wireBytes?: number;
  /** Storage bytes the server process read and wrote during the step (/proc/<pid>/io). */
  readBytes?: number;
  writeBytes?: number;
}

export interface MixedResult {
  sizeMiB: number;
  dataMiB: number;
  changedMiB: number;
  fullSnapshot: StepResult;
  cpSync: StepResult;
  incrementalSnapshot: StepResult;
  /** A new disk from the full snapshot, request to Available (beside the same `cp`+`sync`). */
  restore: StepResult;
  /**
   * The same first snapshot of a second disk of the same shape (other bytes: nothing dedups), just
   * loaded, timed with the page cache kept, beside `cp`+`sync` of its image, also still cached: a
   * user who snapshots a disk written a moment ago finds it so. Absent with --warm (every step is).
   */
  warm?: { fullSnapshot: StepResult; cpSync: StepResult };
  peakRssBytes: number;
  loadAverage: string;
}

export interface SnapshotBenchResults {
  mixed: MixedResult[];
  incompressible?: { sizeMiB: number; snapshot: StepResult; cpSync: StepResult; peakRssBytes: number; loadAverage: string };
  sparse?: { diskGiB: number; writtenMiB: number; snapshot: StepResult; copy?: StepResult; cpSync: StepResult; peakRssBytes: number; loadAverage: string };
}

const RUNS = Math.max(1, Number(argValue('runs', '1')));
const SKIP_COPY = hasFlag('skip-copy');
/**
 * --warm: keep the page cache before each timed step (only `sync`), as a user who just loaded a
 * disk and snapshots it finds it: the disk's bytes, and the image `cp` reads, may still be cached.
 */
const WARM = hasFlag('warm');
/** Before a timed step: `sync`, and the page cache dropped unless it is to be kept. */
const settle = async (keepCache = WARM): Promise<void> => (keepCache ? run('sync', []) : dropCaches());
const peerCp = (src: string, dst: string): string => `cp '${src}' '${dst}'`;

/** One timed step of the server, with its peak RSS and storage I/O. */
async function serverStep(srv: BenchServer, fn: () => Promise<{ ms: number }>, keepCache = WARM): Promise<StepResult> {
  await settle(keepCache);
  await srv.resetPeakRss();
  const io0 = await srv.io();
  const { ms } = await fn();
  const io1 = await srv.io();
  return { ms, peakRssBytes: await srv.peakRss(), readBytes: io1.readBytes - io0.readBytes, writeBytes: io1.writeBytes - io0.writeBytes };
}

/** `command` from `image` into `copy`, then `sync copy`, after `settle` (a cold page cache unless `keepCache`). */
async function peer(command: (src: string, dst: string) => string, image: string, copy: string, keepCache = WARM): Promise<StepResult> {
  await rm(copy, { force: true });
  await settle(keepCache);
  return { ms: await timedPeer(command(image, copy), copy) };
}


/** The pair (step, its peer) of the run whose ratio is the median. */
function pickPair(pairs: Array<{ fullSnapshot: StepResult; cpSync: StepResult }>): { fullSnapshot: StepResult; cpSync: StepResult } {
  const ratio = (p: { fullSnapshot: StepResult; cpSync: StepResult }): number => p.fullSnapshot.ms / p.cpSync.ms;
  return [...pairs].sort((a, b) => ratio(a) - ratio(b))[Math.floor(pairs.length / 2)]!;
}

function best(steps: StepResult[]): StepResult {
  const m = median(steps.map((s) => s.ms));
  return steps.find((s) => s.ms === m)!;
}

async function mixedScenario(dir: string, sizeMiB: number): Promise<MixedResult> {
  const size = sizeMiB * MiB;
  const image = await mixedImage(dir, size);
  const warmImage = WARM ? null : await mixedImage(dir, size, 'warm');
  const work = await benchDir(`snapshot/work-${sizeMiB}`);
  const copyPath = path.join(work, 'copy.raw');
  const runs: Array<Omit<MixedResult, 'sizeMiB' | 'dataMiB' | 'changedMiB' | 'loadAverage'>> = [];
  const changes = Math.max(1, Math.round(sizeMiB / 100));
  for (let r = 0; r < RUNS; r++) {
    const srv = await startBenchServer(path.join(work, 'data'));
    try {
      const vol = await createVolume(srv.bj, Math.ceil(size / GiB));
      await importImage(srv.server.urls.bj!, vol, image);
      let fullId = '';
      const fullSnapshot = await serverStep(srv, async () => {
        const snap = await timedSnapshot(srv.bj, vol, 'full');
        fullId = snap.snapshotId;
        return snap;
      });
      const cpSync = await peer(peerCp, image.path, copyPath);
      await rm(copyPath, { force: true });
      const restore = await serverStep(srv, () => timedRestore(srv.bj, fullId, Math.ceil(size / GiB)));
      // 1 % of the disk rewritten: scattered 1 MiB writes of fresh random bytes.
      for (let i = 0; i < changes; i++) await writeVolume(srv.bj, vol, ((i * 97 + 5) % sizeMiB) * MiB, randomBytes(MiB));
      const incrementalSnapshot = await serverStep(srv, () => timedSnapshot(srv.bj, vol, 'incremental'));
      let warm: MixedResult['warm'];
      if (warmImage) {
        const warmVol = await createVolume(srv.bj, Math.ceil(size / GiB));
        await importImage(srv.server.urls.bj!, warmVol, warmImage);
        const warmSnapshot = await serverStep(srv, () => timedSnapshot(srv.bj, warmVol, 'warm'), true);
        warm = { fullSnapshot: warmSnapshot, cpSync: await peer(peerCp, warmImage.path, copyPath, true) };
        await rm(copyPath, { force: true });
      }
      runs.push({ fullSnapshot, cpSync, incrementalSnapshot, restore, warm, peakRssBytes: await srv.peakRss() });
    } finally {
      await srv.close();
      await rm(work, { recursive: true, force: true });
    }
  }
  const pick = <K extends keyof (typeof runs)[number]>(k: K): StepResult | undefined => {
    const steps = runs.map((x) => x[k] as StepResult | undefined).filter((x): x is StepResult => !!x);
    return steps.length ? best(steps) : undefined;
  };
  return {
    sizeMiB,
    dataMiB: image.dataBytes / MiB,
    changedMiB: changes,
    fullSnapshot: pick('fullSnapshot')!,
    cpSync: pick('cpSync')!,
    incrementalSnapshot: pick('incrementalSnapshot')!,
    restore: pick('restore')!,
    warm: warmImage ? pickPair(runs.map((x) => x.warm!)) : undefined,
    peakRssBytes: Math.max(...runs.map((x) => x.peakRssBytes)),
    loadAverage: await loadAverage(),
  };
}


/** A 1 GiB disk of incompressible data: snapshot throughput. */
async function incompressibleScenario(dir: string): Promise<NonNullable<SnapshotBenchResults['incompressible']>> {
  const image = await randomImage(dir, GiB);
  const work = await benchDir('snapshot/work-random');
  try {
    const srv = await startBenchServer(path.join(work, 'data'));
    try {
      const vol = await createVolume(srv.bj, 1);
      await importImage(srv.server.urls.bj!, vol, image);
      const snapshot = await serverStep(srv, () => timedSnapshot(srv.bj, vol, 'random'));
      const cpSync = await peer(peerCp, image.path, path.join(work, 'copy.raw'));
      await rm(path.join(work, 'copy.raw'), { force: true });
      return { sizeMiB: 1024, snapshot, cpSync, peakRssBytes: await srv.peakRss(), loadAverage: await loadAverage() };
    } finally {
      await srv.close();
    }
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

/** A 1 TiB disk with 1 MiB of fresh random data at every GiB (1 GiB in all). */
async function sparseScenario(): Promise<NonNullable<SnapshotBenchResults['sparse']>> {
  const work = await benchDir('snapshot/work-sparse');
  const diskGiB = 1024;
  const sparseImage = path.join(work, 'sparse.raw');
  try {
    const srv = await startBenchServer(path.join(work, 'data'));
    try {
      const vol = await createVolume(srv.bj, diskGiB);
      const fh = await open(sparseImage, 'w');
      try {
        await fh.truncate(diskGiB * GiB);
        for (let g = 0; g < diskGiB; g++) {
          const data = randomBytes(MiB);
          const offset = g * GiB + (g % 1000) * MiB;
          await writeVolume(srv.bj, vol, offset, data);
          await fh.write(data, 0, MiB, offset);
        }
      } finally {
        await fh.close();
      }
      let id = '';
      const snapshot = await serverStep(srv, async () => {
        const s = await timedSnapshot(srv.bj, vol, 'sparse');
        id = s.snapshotId;
        return s;
      });
      // cp of the sparse file finds its data with SEEK_DATA: the peer's cost follows the data too.
      const cpSync = await peer(peerCp, sparseImage, path.join(work, 'copy.raw'));
      await rm(path.join(work, 'copy.raw'), { force: true });
      let copy: StepResult | undefined;
      if (!SKIP_COPY) {
        const sent0 = await srv.sentBytes();
        copy = await serverStep(srv, () => timedCopy(srv.bj, srv.hkg, id, 'hkg'));
        copy.wireBytes = (await srv.sentBytes()) - sent0;
      }
      return { diskGiB, writtenMiB: diskGiB, snapshot, copy, cpSync, peakRssBytes: await srv.peakRss(), loadAverage: await loadAverage() };
    } finally {
      await srv.close();
    }
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

export async function snapshotBench(): Promise<{ lines: string[]; results: SnapshotBenchResults }> {
  const dir = await benchDir('snapshot');
  const sizes = argValue('size', '1024,4096').split(',').map(Number).filter((n) => n > 0);
  const results: SnapshotBenchResults = { mixed: [] };
  const lines: string[] = [];
  const s = (ms: number): string => `${(ms / 1000).toFixed(2)} s`;
  const rss = (b: number | undefined): string => (b ? `${(b / MiB).toFixed(0)} MiB` : '?');
  for (const sizeMiB of sizes) {
    lines.push(`mixed image ${sizeMiB} MiB (load average before: ${await loadAverage()})`);
    const m = await mixedScenario(dir, sizeMiB);
    results.mixed.push(m);
    lines.push(`  full snapshot          ${s(m.fullSnapshot.ms)}  cp+sync ${s(m.cpSync.ms)}  ratio ${(m.fullSnapshot.ms / m.cpSync.ms).toFixed(2)}  (peak RSS ${rss(m.fullSnapshot.peakRssBytes)}, read ${((m.fullSnapshot.readBytes ?? 0) / MiB).toFixed(0)} MiB, wrote ${((m.fullSnapshot.writeBytes ?? 0) / MiB).toFixed(0)} MiB)`);
    lines.push(`  incremental snapshot   ${s(m.incrementalSnapshot.ms)}  after ${m.changedMiB} MiB changed (${((m.incrementalSnapshot.ms / m.fullSnapshot.ms) * 100).toFixed(1)} % of the full snapshot)`);
    lines.push(`  restore (new disk)     ${s(m.restore.ms)}  cp+sync ${s(m.cpSync.ms)}  ratio ${(m.restore.ms / m.cpSync.ms).toFixed(2)}  (read ${((m.restore.readBytes ?? 0) / MiB).toFixed(0)} MiB, wrote ${((m.restore.writeBytes ?? 0) / MiB).toFixed(0)} MiB)`);
    if (m.warm) lines.push(`  full snapshot, warm    ${s(m.warm.fullSnapshot.ms)}  cp+sync ${s(m.warm.cpSync.ms)}  ratio ${(m.warm.fullSnapshot.ms / m.warm.cpSync.ms).toFixed(2)}  (a second disk just loaded, page cache kept; read ${((m.warm.fullSnapshot.readBytes ?? 0) / MiB).toFixed(0)} MiB, wrote ${((m.warm.fullSnapshot.writeBytes ?? 0) / MiB).toFixed(0)} MiB)`);
    lines.push(`  server peak RSS        ${rss(m.peakRssBytes)} (whole scenario, imports included); load average after: ${m.loadAverage}`);
  }
  if (!hasFlag('skip-random')) {
    const r = await incompressibleScenario(dir);
    results.incompressible = r;
    lines.push(`incompressible 1 GiB: snapshot ${s(r.snapshot.ms)} (${(1024 / (r.snapshot.ms / 1000)).toFixed(0)} MiB/s; cp+sync ${s(r.cpSync.ms)}, ratio ${(r.snapshot.ms / r.cpSync.ms).toFixed(2)}); peak RSS ${rss(r.peakRssBytes)}; load ${r.loadAverage}`);
  }
  if (!hasFlag('skip-sparse')) {
    const r = await sparseScenario();
    results.sparse = r;
    lines.push(`1 TiB disk, 1 GiB written: snapshot ${s(r.snapshot.ms)} (${(r.writtenMiB / (r.snapshot.ms / 1000)).toFixed(0)} MiB/s of data; cp+sync of the sparse file ${s(r.cpSync.ms)})` +
      (r.copy ? `; copy ${s(r.copy.ms)} (${(r.writtenMiB / (r.copy.ms / 1000)).toFixed(0)} MiB/s)` : '') + `; peak RSS ${rss(r.peakRssBytes)}; load ${r.loadAverage}`);
  }
  return { lines, results };
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const { lines, results } = await snapshotBench();
  for (const l of lines) console.log(l);
  if (process.env.BENCH_RESULTS_FILE) await writeFile(process.env.BENCH_RESULTS_FILE, JSON.stringify(results, null, 2));
}
