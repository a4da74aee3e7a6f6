/** Shared pieces of the benchmarks: timing, peers run as child processes, images, a spawned server. */
import { spawn } from 'node:child_process';
import { createCipheriv, createHash, randomBytes } from 'node:crypto';
import { mkdir, open, readFile, rm, stat, writeFile, type FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { BceClient } from '../src/lib/bce-client.ts';
import { spawnServer, type SpawnedServer } from '../test/helpers/spawned-server.ts';

export const MiB = 1 << 20;
export const GiB = 1024 * MiB;
export const BENCH_DIR = path.resolve('.bench-data');

export async function benchDir(name: string): Promise<string> {
  const dir = path.join(BENCH_DIR, name);
  await mkdir(dir, { recursive: true });
  return dir;
}

export async function timed<T>(fn: () => Promise<T>): Promise<{ ms: number; value: T }> {
  const start = process.hrtime.bigint();
  const value = await fn();
  return { ms: Number(process.hrtime.bigint() - start) / 1e6, value };
}

export function run(cmd: string, args: string[]): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    child.stderr.on('data', (d) => (err += d));
    child.once('error', reject);
    child.once('exit', (code) => (code === 0 ? resolve() : reject(new Error(`${cmd} ${args.join(' ')} exited ${code}: ${err}`))));
  });
}

/** Drops clean pages so a read measures the disk, not the page cache (best effort: needs root). */
export async function dropCaches(): Promise<void> {
  await run('sh', ['-c', 'sync; echo 3 > /proc/sys/vm/drop_caches']).catch(() => undefined);
}

export const mibps = (bytes: number, ms: number): string => `${((bytes / MiB) / (ms / 1000)).toFixed(0)} MiB/s`;
export const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

// ---------------------------------------------------------------------------------------------
// A real server and its peers, the way issue 10's table measures them: the server runs as its own
// process (`snapferry serve`, bj + hkg in one process, the default layout), driven over its HTTP
// API; every step is timed from the request to `Available`; every peer tool is followed by a
// `sync` of what it wrote; the server's peak RSS is its kernel high-water mark (VmHWM).
// ---------------------------------------------------------------------------------------------

/** `--name=value` or `--name value` from the command line, else `fallback`. */
export function argValue(name: string, fallback: string): string {
  const argv = process.argv.slice(2);
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === `--${name}` && i + 1 < argv.length && !argv[i + 1]!.startsWith('--')) return argv[i + 1]!;
    if (a.startsWith(`--${name}=`)) return a.slice(name.length + 3);
  }
  return fallback;
}
export const hasFlag = (name: string): boolean => process.argv.slice(2).includes(`--${name}`);

export interface BenchImage {
  path: string;
  size: number;
  /** Bytes that are not zero. */
  dataBytes: number;
  /** Distinct non-zero 1 MiB chunks (what a store must write). */
  distinctChunks: number;
}

/**
 * The mixed image of issue 10: per 16 MiB stripe, 8 MiB random, 4 MiB text, 4 MiB zeros (half
 * random, a quarter text, a quarter zeros). Every text MiB is different (its lines carry their
 * offset), so text compresses but does not dedup: every non-zero chunk is a chunk to store. Zero
 * ranges are holes in the file. Kept between runs (same size and seed: same bytes).
 */
export async function mixedImage(dir: string, size: number, seed = 'bench'): Promise<BenchImage> {
  return cachedImage(path.join(dir, `mixed-${size / MiB}m-${seed}.raw`), size, async (fh) => {
    let dataBytes = 0;
    for (let stripe = 0; stripe < size; stripe += 16 * MiB) {
      for (let i = 0; i < 16; i++) {
        const at = stripe + i * MiB;
        if (at >= size) break;
        const n = Math.min(MiB, size - at);
        let chunk: Buffer | null = null;
        if (i < 8) chunk = seededBytes(`${seed}:${at}`, n);
        else if (i >= 12) chunk = textBytes(seed, at, n);
        if (chunk) {
          await fh.write(chunk, 0, n, at);
          dataBytes += n;
        }
      }
    }
    return { dataBytes, distinctChunks: Math.ceil(dataBytes / MiB) };
  });
}

/** Incompressible data throughout (no zeros, no text). */
export async function randomImage(dir: string, size: number, seed = 'bench'): Promise<BenchImage> {
  return cachedImage(path.join(dir, `random-${size / MiB}m-${seed}.raw`), size, async (fh) => {
    for (let at = 0; at < size; at += 4 * MiB) await fh.write(seededBytes(`${seed}:${at}`, Math.min(4 * MiB, size - at)), 0, Math.min(4 * MiB, size - at), at);
    return { dataBytes: size, distinctChunks: Math.ceil(size / MiB) };
  });
}

async function cachedImage(file: string, size: number, fill: (fh: FileHandle) => Promise<{ dataBytes: number; distinctChunks: number }>): Promise<BenchImage> {
  const meta = `${file}.json`;
  try {
    const m = JSON.parse(await readFile(meta, 'utf8')) as BenchImage;
    if ((await stat(file)).size === size && m.size === size) return { ...m, path: file };
  } catch {
    /* not made yet */
  }
  const fh = await open(file, 'w');
  let counts;
  try {
    await fh.truncate(size);
    counts = await fill(fh);
    await fh.sync();
  } finally {
    await fh.close();
  }
  const image = { path: file, size, ...counts };
  await writeFile(meta, JSON.stringify(image));
  return image;
}

/** Reproducible pseudo-random bytes (AES-CTR keyed by `label`: ~1 GiB/s, incompressible). */
function seededBytes(label: string, n: number): Buffer {
  const key = createHash('sha256').update(label).digest();
  return createCipheriv('aes-256-ctr', key, Buffer.alloc(16)).update(Buffer.alloc(n));
}

function textBytes(seed: string, at: number, n: number): Buffer {
  const lines: string[] = [];
  let len = 0;
  for (let i = 0; len < n; i++) {
    const line = `${seed} @${at}+${i}: the quick brown fox jumps over the lazy dog 0123456789\n`;
    lines.push(line);
    len += line.length;
  }
  return Buffer.from(lines.join('')).subarray(0, n);
}

export const CREDENTIALS = { accessKeyId: 'bench', secretAccessKey: 'bench-secret-0123456789abcdef' };
export const METRICS_TOKEN = 'bench-metrics-token-0123456789';

/** `snapferry serve` as a child process (bj + hkg), with clients for both regions. */
export interface BenchServer {
  server: SpawnedServer;
  pid: number;
  bj: BceClient;
  hkg: BceClient;
  /** The server's peak resident set since it started (or since the last resetPeakRss), bytes. */
  peakRss(): Promise<number>;
  /** Starts a new peak (the kernel's VmHWM is reset through clear_refs). */
  resetPeakRss(): Promise<void>;
  /** Bytes the server process read from and wrote to storage so far (/proc/<pid>/io). */
  io(): Promise<{ readBytes: number; writeBytes: number }>;
  /** bj's replication bytes sent to hkg so far (its metrics). */
  sentBytes(): Promise<number>;
  close(): Promise<void>;
}

export async function startBenchServer(dataDir: string, options: { nodeOptions?: string; extraArgs?: string[] } = {}): Promise<BenchServer> {
  await rm(dataDir, { recursive: true, force: true });
  await mkdir(dataDir, { recursive: true });
  const server = await spawnServer({
    regions: ['bj', 'hkg'],
    dataDir,
    extraArgs: options.extraArgs,
    env: {
      SNAPFERRY_ACCESS_KEY_ID: CREDENTIALS.accessKeyId,
      SNAPFERRY_SECRET_ACCESS_KEY: CREDENTIALS.secretAccessKey,
      SNAPFERRY_METRICS_TOKEN: METRICS_TOKEN,
      SNAPFERRY_LOG_LEVEL: process.env.SNAPFERRY_LOG_LEVEL ?? 'warn',
      ...(options.nodeOptions ? { NODE_OPTIONS: options.nodeOptions } : {}),
    },
  });
  const pid = server.child.pid!;
  const bj = new BceClient(server.urls.bj!, CREDENTIALS);
  const hkg = new BceClient(server.urls.hkg!, CREDENTIALS);
  const status = async (): Promise<string> => readFile(`/proc/${pid}/status`, 'utf8');
  return {
    server,
    pid,
    bj,
    hkg,
    async peakRss() {
      const m = /^VmHWM:\s+(\d+) kB/m.exec(await status());
      return m ? Number(m[1]) * 1024 : 0;
    },
    async resetPeakRss() {
      await writeFile(`/proc/${pid}/clear_refs`, '5').catch(() => undefined);
    },
    async io() {
      const text = await readFile(`/proc/${pid}/io`, 'utf8');
      const field = (k: string): number => Number(new RegExp(`^${k}: (\\d+)`, 'm').exec(text)?.[1] ?? 0);
      return { readBytes: field('read_bytes'), writeBytes: field('write_bytes') };
    },
    async sentBytes() {
      const res = await fetch(`${server.urls.bj}/metrics`, { headers: { authorization: `Bearer ${METRICS_TOKEN}` } });
      const m = /^snapferry_replication_bytes_sent_total\{destination="hkg"\} (\d+)/m.exec(await res.text());
      return m ? Number(m[1]) : 0;
    },
    async close() {
      await bj.close();
      await hkg.close();
      await server.stop();
    },
  };
}

export async function until(fn: () => Promise<boolean>, pollMs = 20): Promise<void> {
  while (!(await fn())) await new Promise((r) => setTimeout(r, pollMs));
}

/** Creates a disk of `sizeGiB` and waits until it is Available. */
export async function createVolume(client: BceClient, sizeGiB: number): Promise<string> {
  const { volumeIds } = await client.json<{ volumeIds: string[] }>({ method: 'POST', path: '/v2/volume', json: { cdsSizeInGB: sizeGiB } });
  const id = volumeIds[0]!;
  await until(async () => (await client.json<any>({ method: 'GET', path: `/v2/volume/${id}` })).volume.status === 'Available');
  return id;
}

/** Writes `data` at `offset` of a disk through the data route. */
export async function writeVolume(client: BceClient, volumeId: string, offset: number, data: Buffer): Promise<void> {
  await client.json({ method: 'PUT', path: `/v2/volume/${volumeId}/data`, query: { offset: String(offset) }, body: data });
}

/**
 * Loads an image the way a user does, with `snapferry volume import` (a child process): all-zero
 * chunks are sent as write-zeroes, so the disk holds them as trimmed chunks (no blocks), as a
 * sparse-aware client (nbdcopy, qemu-img) leaves them too.
 */
export async function importImage(endpoint: string, volumeId: string, image: BenchImage): Promise<void> {
  const bin = path.resolve('bin/snapferry.js');
  await new Promise<void>((resolve, reject) => {
    const child = spawn(process.execPath, [bin, 'volume', 'import', volumeId, image.path, '--json'], {
      stdio: ['ignore', 'ignore', 'pipe'],
      env: { ...process.env, SNAPFERRY_ENDPOINT: endpoint, SNAPFERRY_ACCESS_KEY_ID: CREDENTIALS.accessKeyId, SNAPFERRY_SECRET_ACCESS_KEY: CREDENTIALS.secretAccessKey },
    });
    let err = '';
    child.stderr.on('data', (d) => (err += d));
    child.once('error', reject);
    child.once('exit', (code) => (code === 0 ? resolve() : reject(new Error(`volume import exited ${code}: ${err}`))));
  });
}

/** Writes the whole image onto a disk (zero ranges included, as a guest copying it with dd would), 4 MiB per request, 4 in flight. */
export async function uploadImage(client: BceClient, volumeId: string, image: BenchImage): Promise<void> {
  const fh = await open(image.path, 'r');
  try {
    let next = 0;
    await Promise.all(Array.from({ length: 4 }, async () => {
      while (next < image.size) {
        const at = next;
        next += 4 * MiB;
        const n = Math.min(4 * MiB, image.size - at);
        const buf = Buffer.allocUnsafe(n);
        await fh.read(buf, 0, n, at);
        await writeVolume(client, volumeId, at, buf);
      }
    }));
  } finally {
    await fh.close();
  }
}

/** Timed from the create request to `Available`. */
export async function timedSnapshot(client: BceClient, volumeId: string, name: string): Promise<{ ms: number; snapshotId: string }> {
  const start = process.hrtime.bigint();
  const { snapshotId } = await client.json<{ snapshotId: string }>({ method: 'POST', path: '/v2/snapshot', json: { volumeId, snapshotName: name } });
  await until(async () => {
    const { snapshot } = await client.json<any>({ method: 'GET', path: `/v2/snapshot/${snapshotId}` });
    if (snapshot.status === 'CreatedFailed') throw new Error(`snapshot ${snapshotId} failed`);
    return snapshot.status === 'Available';
  });
  return { ms: Number(process.hrtime.bigint() - start) / 1e6, snapshotId };
}

/** A new disk of `sizeGiB` from `snapshotId`, timed from the create request to `Available`. */
export async function timedRestore(client: BceClient, snapshotId: string, sizeGiB: number): Promise<{ ms: number; volumeId: string }> {
  const start = process.hrtime.bigint();
  const { volumeIds } = await client.json<{ volumeIds: string[] }>({ method: 'POST', path: '/v2/volume', json: { cdsSizeInGB: sizeGiB, snapshotId } });
  const id = volumeIds[0]!;
  await until(async () => {
    const { volume } = await client.json<any>({ method: 'GET', path: `/v2/volume/${id}` });
    if (volume.status === 'Error') throw new Error(`restore into ${id} failed`);
    return volume.status === 'Available';
  });
  return { ms: Number(process.hrtime.bigint() - start) / 1e6, volumeId: id };
}

/** Timed from the copy request to `Available` in the destination. */
export async function timedCopy(source: BceClient, destination: BceClient, snapshotId: string, destRegion: string): Promise<{ ms: number; snapshotId: string }> {
  const start = process.hrtime.bigint();
  const { result } = await source.json<any>({ method: 'PUT', path: `/v2/snapshot/remote_copy/${snapshotId}`, json: { destRegionInfos: [{ destRegion }] } });
  const id = result[0].snapshotId as string;
  await until(async () => {
    const { snapshot } = await destination.json<any>({ method: 'GET', path: `/v2/snapshot/${id}` });
    if (snapshot.status === 'CreatedFailed') throw new Error(`copy ${id} failed`);
    return snapshot.status === 'Available';
  });
  return { ms: Number(process.hrtime.bigint() - start) / 1e6, snapshotId: id };
}

/** `sh -c` of a peer command followed by `sync FILE` (an fsync of what it wrote), timed. */
export async function timedPeer(command: string, wrote: string): Promise<number> {
  return (await timed(() => run('sh', ['-c', `${command} && sync '${wrote}'`]))).ms;
}

/** Load average (1, 5, 15 min) now. */
export async function loadAverage(): Promise<string> {
  return (await readFile('/proc/loadavg', 'utf8')).split(' ').slice(0, 3).join(' ');
}

/** What this machine's disk and CPU deliver, measured now (the limits beside the benchmark's figures). */
export interface MachineLimits {
  /**
   * `dd` of 1 GiB of random data (from the page cache) to a new file with `conv=fsync`: MiB/s.
   * Through the page cache, so on this kind of VM mostly its first-touch cost, not the disk's
   * (docs/benchmarks.md, 2026-12-04): `diskDirectWriteMiBps` is the device.
   */
  diskWriteMiBps: number;
  /** `dd` of the same file from a cold page cache, one 4 MiB read at a time: MiB/s. */
  diskReadMiBps: number;
  /** The same `dd` past the page cache (`oflag=direct`, 4 MiB writes, `conv=fsync`): the device itself, MiB/s. */
  diskDirectWriteMiBps: number;
  /**
   * 4 GiB of zeros `dd`'d into a new file's page cache (no sync), twice, after 30 s idle and
   * again right after the first file was removed: MiB/s of each. On this kind of VM pages the guest
   * freed go back to the host within seconds and cost a fault on their next first touch, so the
   * first fill is what a fresh or idle machine gives, the second what pages just freed give
   * (docs/benchmarks.md, 2026-12-04; 4 GiB because a smaller fill finds enough pages freed lately).
   * Every page-cache write of a peer or of ours pays one or the other.
   */
  pageCacheFillMiBps: [first: number, again: number];
  /** SHA-256 on one core (Node's crypto, 1 MiB inputs): MiB/s. */
  sha256MiBpsPerCore: number;
  cores: number;
  loadAverage: string;
}

export async function machineLimits(dir: string): Promise<MachineLimits> {
  const { availableParallelism } = await import('node:os');
  const source = await randomImage(dir, GiB, 'limits');
  const out = path.join(dir, 'dd-out.raw');
  await run('sh', ['-c', `cat '${source.path}' > /dev/null`]);
  await rm(out, { force: true });
  // The source's own write-back must not run during the timed writes.
  await run('sync', []);
  const write = await timed(() => run('dd', [`if=${source.path}`, `of=${out}`, 'bs=4M', 'conv=fsync', 'status=none']));
  await rm(out, { force: true });
  const direct = await timed(() => run('dd', [`if=${source.path}`, `of=${out}`, 'bs=4M', 'oflag=direct', 'conv=fsync', 'status=none']));
  await rm(out, { force: true });
  const fill = async (): Promise<number> => {
    const ms = (await timed(() => run('dd', ['if=/dev/zero', `of=${out}`, 'bs=1M', 'count=4096', 'status=none']))).ms;
    await rm(out, { force: true });
    return 4096 / (ms / 1000);
  };
  // Idle first: freed pages go back to the host within ~20 s (seen on 2026-12-04), so this fill is a fresh machine's.
  await new Promise((r) => setTimeout(r, 30_000));
  const firstFill = await fill();
  const againFill = await fill();
  await run('sync', []);
  await dropCaches();
  const read = await timed(() => run('dd', [`if=${source.path}`, 'of=/dev/null', 'bs=4M', 'status=none']));
  const buf = randomBytes(MiB);
  let n = 0;
  const start = process.hrtime.bigint();
  while (Number(process.hrtime.bigint() - start) < 1e9) {
    createHash('sha256').update(buf).digest();
    n++;
  }
  const hashS = Number(process.hrtime.bigint() - start) / 1e9;
  return {
    diskWriteMiBps: 1024 / (write.ms / 1000),
    diskDirectWriteMiBps: 1024 / (direct.ms / 1000),
    pageCacheFillMiBps: [firstFill, againFill],
    diskReadMiBps: 1024 / (read.ms / 1000),
    sha256MiBpsPerCore: n / hashS,
    cores: availableParallelism(),
    loadAverage: await loadAverage(),
  };
}
