/**
 * Remote copy beside rsync, measured the way issue 10's table measures it: `snapferry serve` as its
 * own process in the default one-process layout (bj and hkg in one process, talking over loopback
 * HTTP as they would between machines), driven over its HTTP API, every copy timed from the
 * remote-copy request to `Available` at the destination; every peer followed by a `sync` of what it
 * wrote (a copy is durable when it turns Available).
 *
 *  - full copy of the mixed image (half random, a quarter text, a quarter zeros; bench/common.ts) at
 *    each --size, beside `rsync --whole-file` + `sync` of the same image file;
 *  - incremental copy after 1 % of the disk changed (scattered 1 MiB writes of fresh random data),
 *    beside rsync's delta transfer (`--no-whole-file --inplace`) of the changed image onto its
 *    previous copy + `sync`; and the bytes on the wire (the source's count of chunk and manifest bytes
 *    sent) against the bytes changed;
 *  - a copy of incompressible data (--random-size GiB of random bytes), MiB/s;
 *  - the server's peak RSS (the kernel's VmHWM of the server process) throughout: uploads, snapshots
 *    and copies.
 *
 * --runs N repeats each full copy (and its rsync) N times: before each repeat the server is stopped,
 * the destination region's directory removed and the server started again, so every full copy
 * finds an empty destination. `sync` runs before every timed step, so none pays for an earlier one's
 * dirty pages; --drop-caches also drops the page cache before each (the source then reads from the
 * disk; rsync likewise).
 *
 *   node --import tsx bench/replication.ts [--size 1,4] [--runs 1] [--random-size 1] [--drop-caches]
 *                                          [--cpu-prof DIR]   (profiles the server during the copies)
 *
 * Prints a markdown table and writes bench/results-replication.json.
 */
import { randomBytes } from 'node:crypto';
import { copyFile, mkdir, open, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { BceClient } from '../src/lib/bce-client.ts';
import { spawnServer, type SpawnedServer } from '../test/helpers/spawned-server.ts';
import {
  argValue, benchDir, createVolume, dropCaches, GiB, hasFlag, loadAverage, median, MiB, mixedImage, randomImage, run, timedCopy, timedPeer,
  timedSnapshot, uploadImage, writeVolume, type BenchImage,
} from './common.ts';

const SIZES = argValue('size', '1,4').split(',').map(Number).filter((n) => n > 0);
const RUNS = Math.max(1, Number(argValue('runs', '1')));
const RANDOM_GIB = Number(argValue('random-size', '1'));
const DROP = hasFlag('drop-caches');
const CPU_PROF = argValue('cpu-prof', '');
const THREADS = hasFlag('threads');

const CREDENTIALS = { accessKeyId: 'bench', secretAccessKey: 'bench-secret-0123456789abcdef' };
const METRICS_TOKEN = 'bench-metrics-token-0123456789';

/** The server process, restartable, with what the bench reads of it. */
class Server {
  bj!: BceClient;
  hkg!: BceClient;
  private peak = 0;

  /** `env` is the very object spawnServer reads at each (re)start, so a restart can change NODE_OPTIONS. */
  private constructor(readonly spawned: SpawnedServer, private readonly env: Record<string, string>) {
    this.connect();
  }

  static async start(dataDir: string): Promise<Server> {
    await rm(dataDir, { recursive: true, force: true });
    await mkdir(dataDir, { recursive: true });
    const env: Record<string, string> = {
      SNAPFERRY_ACCESS_KEY_ID: CREDENTIALS.accessKeyId,
      SNAPFERRY_SECRET_ACCESS_KEY: CREDENTIALS.secretAccessKey,
      SNAPFERRY_METRICS_TOKEN: METRICS_TOKEN,
      SNAPFERRY_LOG_LEVEL: process.env.SNAPFERRY_LOG_LEVEL ?? 'warn',
    };
    const spawned = await spawnServer({ regions: ['bj', 'hkg'], dataDir, env });
    return new Server(spawned, env);
  }

  private connect(): void {
    this.bj = new BceClient(this.spawned.urls.bj!, CREDENTIALS);
    this.hkg = new BceClient(this.spawned.urls.hkg!, CREDENTIALS);
  }

  get pid(): number {
    return this.spawned.child.pid!;
  }

  /** Stops the server, runs `between` (e.g. removes a region's directory), starts it again (optionally with NODE_OPTIONS). */
  async restart(between: () => Promise<void> = async () => undefined, nodeOptions = ''): Promise<void> {
    await this.samplePeak();
    await this.bj.close();
    await this.hkg.close();
    await this.spawned.stop();
    await between();
    if (nodeOptions) this.env.NODE_OPTIONS = nodeOptions;
    else delete this.env.NODE_OPTIONS;
    await this.spawned.restart();
    this.connect();
  }

  /** Folds the running process's VmHWM into the peak over all its lives. */
  async samplePeak(): Promise<number> {
    try {
      const m = /^VmHWM:\s+(\d+) kB/m.exec(await readFile(`/proc/${this.pid}/status`, 'utf8'));
      if (m) this.peak = Math.max(this.peak, Number(m[1]) * 1024);
    } catch {
      /* exited */
    }
    return this.peak;
  }

  /** CPU seconds (user + system) the server process has used so far, its threads included. */
  async cpuSeconds(): Promise<number> {
    try {
      const fields = (await readFile(`/proc/${this.pid}/stat`, 'utf8')).split(') ')[1]!.split(' ');
      return (Number(fields[11]) + Number(fields[12])) / 100; // utime, stime in clock ticks (USER_HZ = 100)
    } catch {
      return 0;
    }
  }

  /** CPU seconds per thread name (user, system) so far: where a copy's CPU goes (main thread, libuv pool, hashing workers). */
  async threadCpu(): Promise<Map<string, { user: number; sys: number }>> {
    const out = new Map<string, { user: number; sys: number }>();
    const tasks = await import('node:fs/promises').then((fs) => fs.readdir(`/proc/${this.pid}/task`)).catch(() => [] as string[]);
    for (const tid of tasks) {
      try {
        const text = await readFile(`/proc/${this.pid}/task/${tid}/stat`, 'utf8');
        const name = `${text.slice(text.indexOf('(') + 1, text.lastIndexOf(')'))}${tid === String(this.pid) ? ' (main)' : `/${tid}`}`;
        const f = text.slice(text.lastIndexOf(') ') + 2).split(' ');
        const e = out.get(name) ?? { user: 0, sys: 0 };
        e.user += Number(f[11]) / 100;
        e.sys += Number(f[12]) / 100;
        out.set(name, e);
      } catch {
        /* gone */
      }
    }
    return out;
  }

  /** bj's count of replication bytes sent to hkg (chunk bodies after compression, manifest parts). */
  async sentBytes(): Promise<number> {
    const res = await fetch(`${this.spawned.urls.bj}/metrics`, { headers: { authorization: `Bearer ${METRICS_TOKEN}` } });
    const m = /^snapferry_replication_bytes_sent_total\{destination="hkg"\} (\d+)/m.exec(await res.text());
    return m ? Number(m[1]) : 0;
  }

  async close(): Promise<void> {
    if (THREADS) await writeFile('/tmp/bench-server-stdout.txt', this.spawned.stdout());
    await this.samplePeak();
    await this.bj.close();
    await this.hkg.close();
    await this.spawned.stop();
  }
}

interface CopyRun {
  ms: number;
  wireBytes: number;
  /** CPU seconds the server used during the copy (both regions: they share the process). */
  cpuS: number;
  rsyncMs: number;
}

/** One copy, timed from the request to Available, with the bytes it put on the wire and the server's CPU. */
async function measuredCopy(server: Server, snapshotId: string): Promise<{ ms: number; wireBytes: number; cpuS: number }> {
  const sentBefore = await server.sentBytes();
  const cpuBefore = await server.cpuSeconds();
  const threadsBefore = THREADS ? await server.threadCpu() : null;
  const gcFile = `/tmp/gcstats-${server.pid}-0.json`;
  const gcBefore = THREADS ? await readFile(gcFile, 'utf8').catch(() => '') : '';
  const copy = await timedCopy(server.bj, server.hkg, snapshotId, 'hkg');
  const cpuS = (await server.cpuSeconds()) - cpuBefore;
  if (threadsBefore) {
    for (const [name, t] of await server.threadCpu()) {
      const b = threadsBefore.get(name) ?? { user: 0, sys: 0 };
      if (t.user + t.sys - b.user - b.sys >= 0.05) console.error(`    thread ${name.padEnd(16)} user ${(t.user - b.user).toFixed(2)} s  sys ${(t.sys - b.sys).toFixed(2)} s`);
    }
    await new Promise((r) => setTimeout(r, 1100));
    console.error(`    gc before ${gcBefore}\n    gc after  ${await readFile(gcFile, 'utf8').catch(() => '')}`);
  }
  const wireBytes = (await server.sentBytes()) - sentBefore;
  await server.samplePeak();
  return { ms: copy.ms, wireBytes, cpuS };
}

interface SizeResult {
  sizeGiB: number;
  dataBytes: number;
  snapshotMs: number;
  full: CopyRun[];
  incremental: { changedBytes: number; ms: number; wireBytes: number; cpuS: number; rsyncDeltaMs: number };
  loadBefore: string;
  loadAfter: string;
}

/**
 * A module preloaded into the server (NODE_OPTIONS refuses --cpu-prof) that profiles it with the
 * inspector from its start and writes a .cpuprofile into CPU_PROF when it exits.
 */
async function profilerPreload(dir: string): Promise<string> {
  const file = path.join(dir, 'cpu-prof-preload.mjs');
  await writeFile(file, `import { Session } from 'node:inspector';
import { writeFileSync } from 'node:fs';
const session = new Session();
session.connect();
session.post('Profiler.enable');
session.post('Profiler.setSamplingInterval', { interval: 500 });
session.post('Profiler.start');
process.on('exit', () => {
  session.post('Profiler.stop', (err, res) => {
    if (!err) writeFileSync(${JSON.stringify(CPU_PROF)} + '/server-' + process.pid + '-' + Date.now() + '.cpuprofile', JSON.stringify(res.profile));
  });
});
`);
  return file;
}

async function settle(): Promise<void> {
  if (DROP) await dropCaches();
  else await run('sync', []);
}

/** Full copies (RUNS of them, each into an empty destination), then the incremental one. */
async function benchSize(dir: string, sizeGiB: number): Promise<{ result: SizeResult; server: Server }> {
  const loadBefore = await loadAverage();
  const image = await mixedImage(dir, sizeGiB * GiB);
  const dataDir = path.join(dir, 'data');
  const server = await Server.start(dataDir);
  const volumeId = await createVolume(server.bj, sizeGiB);
  await uploadImage(server.bj, volumeId, image);
  await settle();
  const snap = await timedSnapshot(server.bj, volumeId, 'full');
  const rsyncDest = path.join(dir, 'rsync-copy.raw');
  const full: CopyRun[] = [];
  for (let r = 0; r < RUNS; r++) {
    if (r > 0 || CPU_PROF || process.env.BENCH_PRELOAD) {
      // An empty destination again (and, when profiling, a profiled process for the copy only).
      await server.restart(() => rm(path.join(dataDir, 'hkg'), { recursive: true, force: true }), CPU_PROF ? `--import=${await profilerPreload(dir)}` : process.env.BENCH_PRELOAD ? `--import=${process.env.BENCH_PRELOAD}` : '');
    }
    await settle();
    const copy = await measuredCopy(server, snap.snapshotId);
    await rm(rsyncDest, { force: true });
    await settle();
    const rsyncMs = await timedPeer(`rsync --whole-file '${image.path}' '${rsyncDest}'`, rsyncDest);
    full.push({ ...copy, rsyncMs });
    console.error(`  ${sizeGiB} GiB full copy ${r + 1}/${RUNS}: ${copy.ms.toFixed(0)} ms (${copy.cpuS.toFixed(1)} CPU s), rsync ${rsyncMs.toFixed(0)} ms, load ${await loadAverage()}`);
  }

  // 1 % of the disk's chunks rewritten with fresh random data, the same bytes into a copy of the image.
  const changed = path.join(dir, 'changed.raw');
  await copyFile(image.path, changed);
  const chunks = (sizeGiB * GiB) / MiB;
  const n = Math.max(1, Math.round(chunks / 100));
  const fh = await open(changed, 'r+');
  try {
    for (let i = 0; i < n; i++) {
      const offset = ((i * 97 + 5) % chunks) * MiB;
      const data = randomBytes(MiB);
      await writeVolume(server.bj, volumeId, offset, data);
      await fh.write(data, 0, data.length, offset);
    }
  } finally {
    await fh.close();
  }
  const next = await timedSnapshot(server.bj, volumeId, 'incremental');
  await settle();
  const inc = await measuredCopy(server, next.snapshotId);
  await settle();
  const rsyncDeltaMs = await timedPeer(`rsync --no-whole-file --inplace '${changed}' '${rsyncDest}'`, rsyncDest);
  await rm(changed, { force: true });
  await rm(rsyncDest, { force: true });
  const result: SizeResult = {
    sizeGiB, dataBytes: image.dataBytes, snapshotMs: snap.ms, full,
    incremental: { changedBytes: n * MiB, ms: inc.ms, wireBytes: inc.wireBytes, cpuS: inc.cpuS, rsyncDeltaMs }, loadBefore, loadAfter: await loadAverage(),
  };
  return { result, server };
}

/** A fresh volume of random data on the running server, snapshotted, then copied: MiB/s of data. */
async function benchIncompressible(dir: string, server: Server): Promise<{ bytes: number; ms: number; wireBytes: number; cpuS: number; load: string }> {
  const image: BenchImage = await randomImage(dir, RANDOM_GIB * GiB, `random-${Date.now()}`);
  try {
    const volumeId = await createVolume(server.bj, RANDOM_GIB);
    await uploadImage(server.bj, volumeId, image);
    const snap = await timedSnapshot(server.bj, volumeId, 'random');
    // A profiled (or preloaded) server profiles this copy in a process of its own too.
    if (CPU_PROF || process.env.BENCH_PRELOAD) await server.restart(async () => undefined, CPU_PROF ? `--import=${await profilerPreload(dir)}` : `--import=${process.env.BENCH_PRELOAD}`);
    await settle();
    const copy = await measuredCopy(server, snap.snapshotId);
    return { bytes: image.dataBytes, ...copy, load: await loadAverage() };
  } finally {
    await rm(image.path, { force: true });
    await rm(`${image.path}.json`, { force: true });
  }
}

export async function replicationBench(): Promise<string[]> {
  const dir = await benchDir('replication');
  if (CPU_PROF) await mkdir(CPU_PROF, { recursive: true });
  const results: SizeResult[] = [];
  let server: Server | null = null;
  let incompressible: Awaited<ReturnType<typeof benchIncompressible>> | null = null;
  try {
    for (const [i, size] of SIZES.entries()) {
      const out = await benchSize(dir, size);
      results.push(out.result);
      if (i < SIZES.length - 1) await out.server.close();
      else server = out.server;
    }
    if (RANDOM_GIB > 0) {
      server ??= await Server.start(path.join(dir, 'data'));
      incompressible = await benchIncompressible(dir, server);
    }
  } finally {
    await server?.close();
  }
  const peakRss = server ? await server.samplePeak() : 0;

  const s = (ms: number): string => `${(ms / 1000).toFixed(2)} s`;
  const lines: string[] = [];
  lines.push(`Mixed image (half random, a quarter text, a quarter zeros), bj -> hkg in one \`snapferry serve\` (loopback HTTP); ${RUNS} full run(s) per size${DROP ? ', page cache dropped before each timed step' : ''}.`);
  lines.push('');
  lines.push('| | ' + results.map((r) => `${r.sizeGiB} GiB image`).join(' | ') + ' |');
  lines.push('|---|' + results.map(() => '---|').join(''));
  const fullMs = (r: SizeResult): number => median(r.full.map((f) => f.ms));
  const rsMs = (r: SizeResult): number => median(r.full.map((f) => f.rsyncMs));
  lines.push('| full copy, time / `rsync --whole-file`+`sync` | ' + results.map((r) => `**${(fullMs(r) / rsMs(r)).toFixed(2)}** (${s(fullMs(r))} vs ${s(rsMs(r))})`).join(' | ') + ' |');
  lines.push('| full copy, each run (ours / rsync) | ' + results.map((r) => r.full.map((f) => `${s(f.ms)} / ${s(f.rsyncMs)}`).join(', ')).join(' | ') + ' |');
  lines.push('| full copy, MiB/s of non-zero data; on the wire | ' + results.map((r) => `${((r.dataBytes / MiB) / (fullMs(r) / 1000)).toFixed(0)} MiB/s; ${(median(r.full.map((f) => f.wireBytes)) / MiB).toFixed(0)} MiB of ${(r.dataBytes / MiB).toFixed(0)}`).join(' | ') + ' |');
  lines.push('| full copy, server CPU s per GiB of non-zero data | ' + results.map((r) => `${(median(r.full.map((f) => f.cpuS)) / (r.dataBytes / GiB)).toFixed(1)}`).join(' | ') + ' |');
  lines.push('| incremental copy after 1 %, time / rsync\'s delta + `sync` | ' + results.map((r) => `**${(r.incremental.ms / r.incremental.rsyncDeltaMs).toFixed(3)}** (${s(r.incremental.ms)} vs ${s(r.incremental.rsyncDeltaMs)})`).join(' | ') + ' |');
  lines.push('| incremental: on the wire / changed | ' + results.map((r) => `**${(r.incremental.wireBytes / r.incremental.changedBytes).toFixed(3)}x** (${(r.incremental.wireBytes / MiB).toFixed(1)} of ${(r.incremental.changedBytes / MiB).toFixed(0)} MiB)`).join(' | ') + ' |');
  lines.push('| load average (1, 5, 15 min) before / after | ' + results.map((r) => `${r.loadBefore} / ${r.loadAfter}`).join(' | ') + ' |');
  lines.push('');
  if (incompressible) {
    lines.push(`Incompressible: ${(incompressible.bytes / MiB).toFixed(0)} MiB of random data copied in ${s(incompressible.ms)}: **${((incompressible.bytes / MiB) / (incompressible.ms / 1000)).toFixed(0)} MiB/s** (${(incompressible.wireBytes / MiB).toFixed(0)} MiB on the wire; server CPU ${(incompressible.cpuS / (incompressible.bytes / GiB)).toFixed(1)} s per GiB; load ${incompressible.load}).`);
  }
  lines.push(`Server peak RSS (VmHWM, uploads, snapshots and copies included): **${(peakRss / MiB).toFixed(0)} MiB**.`);
  await writeFile(path.join('bench', 'results-replication.json'), `${JSON.stringify({ date: new Date().toISOString(), runs: RUNS, dropCaches: DROP, sizes: results, incompressible, peakRssBytes: peakRss }, null, 2)}\n`);
  return lines;
}

if (import.meta.url === `file://${process.argv[1]}`) {
  for (const l of await replicationBench()) console.log(l);
}
