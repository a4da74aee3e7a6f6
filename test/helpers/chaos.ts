/**
 * The crash campaign (docs/reliability.md, "Crash campaign"): trials that each start real
 * `snapferry serve` processes (regions bj and hkg, in one process or one per region with `--peer`),
 * run one operation on fresh random data, kill -9 a process at a random moment of it, restart, and
 * check that nothing was lost. `scripts/chaos.ts` (`npm run chaos [N]`) runs N trials and prints a
 * table; `test/chaos.test.ts` runs a short seeded version inside `npm test`.
 *
 * A trial's seed decides everything but wall-clock timing: the operation and layout (seed % 10), the
 * data, the kill target and the kill point. `npm run chaos -- --trial SEED` replays one. Every trial
 * runs with garbage collection every second and no grace period (gcIntervalSeconds 1,
 * gcGraceSeconds 0), so whatever the operation does, a collection runs beside it; a quarter of the
 * trials are killed a second time while the first crash's recovery runs.
 *
 * What a trial checks after the restart (any failure fails the trial):
 * - data lost: a snapshot seen Available before the crash is gone or no longer Available; an
 *   Available snapshot does not restore, or restores to other bytes than the harness wrote before
 *   creating it; a write acknowledged before the crash is not on the disk; a chunk no write touched
 *   changed;
 * - checks failed: a snapshot or disk stuck in Creating (or a rollback stuck) past a bound; a copy
 *   that was in flight did not complete; a copy's bytes on the wire (both directions, counted by a
 *   TCP proxy between the regions, `--peer hkg=...` in both layouts) exceed 1.1x the bytes it had
 *   to send plus what each crash
 *   costs by design (see DEST_CRASH_ALLOWANCE; `strictWire`: 1.1x, no allowance); `snapferry gc` or
 *   `snapferry check` fails (check: exit 3 with its problems) in either region; a snapshot that
 *   nothing wrote after failed (CreatedFailed); an Available snapshot the harness never asked for.
 *
 * Disk contents are compared as "chunk digests": the sha256 of every non-zero 1 MiB chunk, by index
 * (equal iff the images are bit-identical). The whole disk is read back (readMode 'full'), or only
 * the chunks the disk reports as data plus every chunk expected to hold data plus a sample of holes
 * (readMode 'extents', for the short run inside `npm test`).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createCipheriv, createHash } from 'node:crypto';
import { mkdir, mkdtemp, open, rm, writeFile } from 'node:fs/promises';
import { createServer, connect, type Server, type Socket } from 'node:net';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { compress as zstd } from 'zstd-napi';
import { BceClient } from '../../src/lib/bce-client.ts';
import { runCli } from './cli.ts';
import { sdkClient, send, type SdkClient } from './sdk.ts';
import { freePortRange, spawnServer, type SpawnedServer } from './spawned-server.ts';

const MiB = 1 << 20;
const CHUNK = MiB;
const DISK_GB = 1;
const DISK_CHUNKS = (DISK_GB * 1024 ** 3) / CHUNK;
const AK = 'chaos-access-key-0000000';
const SK = 'chaos-secret-key-1111111';
const REGION_SECRET = 'chaos-region-secret-22222222';
const KEYS = { SNAPFERRY_ACCESS_KEY_ID: AK, SNAPFERRY_SECRET_ACCESS_KEY: SK, SNAPFERRY_REGION_SECRET: REGION_SECRET };
const BIN = new URL('../../bin/snapferry.js', import.meta.url).pathname;
/** A copy may put at most this many bytes on the wire per byte it had to send... */
export const WIRE_RATIO_LIMIT = 1.1;
/**
 * ...plus what a crash costs by design (unless `strictWire`): a crash of the source loses the
 * uploads in flight (8 per copy, replication/copy-job.ts SENDS_PER_COPY); a crash of the
 * destination also loses what it had received but not yet made durable, at most 32 MiB per copy
 * (services/incoming-copy-service.ts SYNC_BATCH_BYTES). Kept here as numbers, not imported, so
 * that a change of those bounds is a conscious change of the campaign too.
 */
const SOURCE_CRASH_ALLOWANCE = 8 * MiB;
const DEST_CRASH_ALLOWANCE = 32 * MiB + 8 * MiB;
/** Bounds: how long the harness waits for things that must happen after a restart. */
const SETTLE_MS = 120_000;
const TRIAL_MS = 8 * 60_000;

export const OPS = ['import', 'snapshot', 'copy', 'gc', 'restore'] as const;
export type OpKind = (typeof OPS)[number];
export type Layout = 'one' | 'two';
const LAYOUTS: Layout[] = ['one', 'two'];

/**
 * Operation and layout of a trial seed: seed % 10 walks all ten pairs; the next digit picks the
 * variant where an operation has a few (restore: create or rollback; copy with one process per
 * region: kill the source, the destination or both), so that consecutive seeds cover them all.
 */
export function trialShape(seed: number): { op: OpKind; layout: Layout; variant: number } {
  const k = ((seed % 10) + 10) % 10;
  return { op: OPS[k % 5]!, layout: LAYOUTS[k % 2]!, variant: Math.floor(Math.abs(seed) / 10) };
}

export interface Fault {
  /** e.g. import-http, copy-dest, gc */
  kind: string;
  /** Which process(es) got kill -9: bj, hkg, both, or the one process of the one-process layout. */
  target: string;
  /** ms after the operation started. */
  atMs: number;
  /** Whether the operation was still under way when the kill landed (null: a second kill, during the recovery). */
  mid: boolean | null;
  detail: string;
}

export interface TrialResult {
  index: number;
  seed: number;
  op: OpKind;
  layout: Layout;
  faults: Fault[];
  dataLost: string[];
  checksFailed: string[];
  snapshotsVerified: number;
  /** The measured copy: bytes on the wire, bytes it had to send, their ratio, and the bound applied. */
  wire: { bytes: number; needed: number; ratio: number; limit: number } | null;
  durationMs: number;
  notes: string[];
  /** Kept for a failed trial when `keep` is set. */
  dataDir: string | null;
}

export interface CampaignOptions {
  /** Trial seeds to run, in order. */
  seeds: number[];
  readMode?: 'full' | 'extents';
  /** Hold copies to 1.1x on the wire even across crashes (no allowance for what a crash costs by design). */
  strictWire?: boolean;
  /** Multiplies the data sizes (default 1; the run inside `npm test` uses less). */
  scale?: number;
  /** Keep the data dirs (and server logs) of failed trials. */
  keep?: boolean;
  log?: (line: string) => void;
  workDir?: string;
}

export interface CampaignResult {
  trials: TrialResult[];
  startedAt: Date;
  durationMs: number;
  machine: string;
}

/** Seeds of a campaign of `n` trials from a campaign seed. */
export const campaignSeeds = (base: number, n: number): number[] => Array.from({ length: n }, (_, i) => base * 1000 + i);

export async function runCampaign(opts: CampaignOptions): Promise<CampaignResult> {
  const log = opts.log ?? ((l: string) => process.stdout.write(l + '\n'));
  const startedAt = new Date();
  const work = opts.workDir ?? (await mkdtemp(join(tmpdir(), 'snapferry-chaos-')));
  const trials: TrialResult[] = [];
  try {
    for (const [index, seed] of opts.seeds.entries()) {
      const result = await runTrial(index, seed, { readMode: opts.readMode ?? 'full', strictWire: opts.strictWire ?? false, scale: opts.scale ?? 1, keep: opts.keep ?? false, work });
      trials.push(result);
      log(trialLine(result, opts.seeds.length));
      for (const line of [...result.dataLost.map((x) => `DATA LOST: ${x}`), ...result.checksFailed.map((x) => `CHECK FAILED: ${x}`), ...result.notes.map((x) => `note: ${x}`)]) log(`    ${line}`);
      if (result.dataDir) log(`    kept: ${result.dataDir}`);
    }
  } finally {
    if (!opts.workDir && !trials.some((t) => t.dataDir)) await rm(work, { recursive: true, force: true });
  }
  const cpu = cpus();
  return { trials, startedAt, durationMs: Date.now() - startedAt.getTime(), machine: `${cpu.length} x ${cpu[0]?.model ?? 'cpu'}, node ${process.version}` };
}

export function trialLine(r: TrialResult, total: number): string {
  const faults = r.faults.map((f) => `kill -9 ${f.target} at ${f.atMs} ms (${f.kind}, ${f.mid === null ? f.detail : f.mid ? 'mid-operation' : 'after it ended'})`).join('; ') || 'no fault';
  const wire = r.wire ? `, wire ${r.wire.ratio.toFixed(3)}x` : '';
  const verdict = r.dataLost.length > 0 ? 'DATA LOST' : r.checksFailed.length > 0 ? 'FAIL' : 'pass';
  return `trial ${String(r.index + 1).padStart(String(total).length)}/${total} seed ${r.seed} ${r.op}/${r.layout}: ${faults} -> ${verdict} (${r.snapshotsVerified} snapshots verified${wire}, ${(r.durationMs / 1000).toFixed(1)} s)`;
}

/** The summary table: trials, faults by kind, layouts, data lost, checks failed, wire ratios. */
export function summaryTable(c: CampaignResult): string {
  const t = c.trials;
  const rows: Array<[string, string]> = [];
  const count = <K extends string>(keys: K[]): Map<K, number> => {
    const m = new Map<K, number>();
    for (const k of keys) m.set(k, (m.get(k) ?? 0) + 1);
    return m;
  };
  const faults = t.flatMap((x) => x.faults);
  rows.push(['trials', String(t.length)]);
  rows.push(['layouts', [...count(t.map((x) => x.layout))].map(([k, n]) => `${k === 'one' ? 'one process' : 'one process per region'}: ${n}`).join(', ')]);
  rows.push(['operations', [...count(t.map((x) => x.op))].map(([k, n]) => `${k} ${n}`).join(', ')]);
  rows.push(['faults injected (kill -9)', String(faults.length)]);
  for (const [kind, n] of [...count(faults.map((f) => f.kind))].sort()) {
    const mid = faults.filter((f) => f.kind === kind && f.mid).length;
    rows.push([`  ${kind}`, kind === 'recovery' ? `${n} (a second kill while the first one's recovery ran)` : `${n} (${mid} mid-operation)`]);
  }
  const ratios = t.filter((x) => x.wire).map((x) => x.wire!.ratio);
  const over = t.filter((x) => x.wire && x.wire.ratio > WIRE_RATIO_LIMIT);
  rows.push(['copies measured on the wire', ratios.length ? `${ratios.length}, ratio max ${Math.max(...ratios).toFixed(3)}x, mean ${(ratios.reduce((a, b) => a + b, 0) / ratios.length).toFixed(3)}x` : '0']);
  if (ratios.length) {
    rows.push(['  above 1.1x', over.length ? `${over.length} (${over.map((x) => `seed ${x.seed} ${x.faults.map((f) => f.kind).join('+')} ${x.wire!.ratio.toFixed(3)}x`).join(', ')})` : '0']);
    rows.push(['  above the bound applied', String(t.filter((x) => x.wire && x.wire.bytes > x.wire.limit).length)]);
  }
  rows.push(['snapshots restored and compared', String(t.reduce((a, x) => a + x.snapshotsVerified, 0))]);
  rows.push(['trials with data lost', String(t.filter((x) => x.dataLost.length > 0).length)]);
  rows.push(['trials with failed checks', String(t.filter((x) => x.checksFailed.length > 0).length)]);
  rows.push(['duration', `${(c.durationMs / 1000).toFixed(0)} s`]);
  const w = Math.max(...rows.map((r) => r[0].length));
  return rows.map(([k, v]) => `${k.padEnd(w)}  ${v}`).join('\n');
}

export const campaignFailed = (c: CampaignResult): boolean => c.trials.some((t) => t.dataLost.length > 0 || t.checksFailed.length > 0);

// ---------------------------------------------------------------------------------------------
// Deterministic randomness

class Rng {
  private state: number;
  private streams = 0;
  constructor(private readonly seed: number) {
    this.state = (createHash('sha256').update(`chaos:${seed}`).digest().readUInt32LE(0) || 1) >>> 0;
  }
  /** mulberry32 */
  next(): number {
    let t = (this.state = (this.state + 0x6d2b79f5) >>> 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  int(lo: number, hi: number): number {
    return lo + Math.floor(this.next() * (hi - lo + 1));
  }
  chance(p: number): boolean {
    return this.next() < p;
  }
  pick<T>(items: readonly T[]): T {
    return items[Math.floor(this.next() * items.length)]!;
  }
  shuffle<T>(items: T[]): T[] {
    for (let i = items.length - 1; i > 0; i--) {
      const j = Math.floor(this.next() * (i + 1));
      [items[i], items[j]] = [items[j]!, items[i]!];
    }
    return items;
  }
  /** A chunk of text lines unique to this seed and stream: compresses ~50x, so it is stored packed (CS-4). */
  text(n: number): Buffer {
    return Buffer.alloc(n, `chaos text ${this.seed}:${this.streams++} the quick brown fox jumps over the lazy dog\n`);
  }
  /** Pseudo-random bytes (AES-128-CTR keyed by the seed and a stream counter): fast, reproducible, incompressible. */
  bytes(n: number): Buffer {
    const key = createHash('sha256').update(`chaos-bytes:${this.seed}:${this.streams++}`).digest().subarray(0, 16);
    return createCipheriv('aes-128-ctr', key, Buffer.alloc(16)).update(Buffer.alloc(n));
  }
}

// ---------------------------------------------------------------------------------------------
// Disk images as the harness knows them

type Digest = Map<number, string>; // chunk index -> sha256 of its bytes, for non-zero chunks only

const sha256 = (b: Buffer): string => createHash('sha256').update(b).digest('hex');
const ZERO_CHUNK = Buffer.alloc(CHUNK);
const isZero = (b: Buffer): boolean => b.length === CHUNK ? b.equals(ZERO_CHUNK) : b.equals(ZERO_CHUNK.subarray(0, b.length));

class Image {
  readonly chunks = new Map<number, Buffer>();
  clone(): Image {
    const c = new Image();
    for (const [i, b] of this.chunks) c.chunks.set(i, b);
    return c;
  }
  set(i: number, data: Buffer | null): void {
    if (data === null || isZero(data)) this.chunks.delete(i);
    else this.chunks.set(i, data);
  }
  get(i: number): Buffer | null {
    return this.chunks.get(i) ?? null;
  }
  digest(): Digest {
    const d: Digest = new Map();
    for (const [i, b] of [...this.chunks].sort((a, b) => a[0] - b[0])) d.set(i, chunkSha(b));
    return d;
  }
}

const shaCache = new WeakMap<Buffer, string>();
function chunkSha(b: Buffer): string {
  let s = shaCache.get(b);
  if (!s) shaCache.set(b, (s = sha256(b)));
  return s;
}

const digestKey = (d: Digest): string => sha256(Buffer.from([...d].sort((a, b) => a[0] - b[0]).map(([i, s]) => `${i}:${s}`).join('\n')));

function digestDiff(actual: Digest, expected: Digest): string {
  const differ: number[] = [];
  for (const i of new Set([...actual.keys(), ...expected.keys()])) if (actual.get(i) !== expected.get(i)) differ.push(i);
  differ.sort((a, b) => a - b);
  return `${differ.length} chunk(s) differ (${differ.slice(0, 8).map((i) => `#${i} ${expected.has(i) ? 'data' : 'zero'} expected, ${actual.has(i) ? 'data' : 'zero'} read`).join('; ')}${differ.length > 8 ? '; ...' : ''})`;
}

/**
 * Bytes a copy has to send at least: each distinct non-zero chunk of `image` the destination does
 * not hold, at the size the sender's rule puts it on the wire (zstd level 1 when that saves 10 %,
 * docs/design.md), so the wire ratio is not flattered by compressible chunks.
 */
function bytesToSend(image: Image, held: Set<string>): number {
  const chunks = new Map<string, Buffer>();
  for (const b of image.chunks.values()) chunks.set(chunkSha(b), b);
  let total = 0;
  for (const [id, b] of chunks) {
    if (held.has(id)) continue;
    const packed = zstd(b, { compressionLevel: 1 }).length;
    total += packed < b.length * 0.9 ? packed : b.length;
  }
  return total;
}

/** One write the harness sends; a chunk-aligned 1 MiB data write, a whole-chunk zero write, or 4 KiB inside a chunk. */
interface Write {
  chunk: number;
  offset: number;
  data: Buffer | null;
  zeroLength: number;
}

/**
 * Plans writes that turn `base` into a new image: fresh random chunks, chunks repeating another
 * chunk's bytes (dedup), zeroed chunks that held data, and 4 KiB writes inside chunks. Each chunk
 * is touched at most once per plan.
 */
function planWrites(rng: Rng, base: Image, n: { fresh: number; repeat: number; zero: number; partial: number }): { writes: Write[]; image: Image } {
  const image = base.clone();
  const writes: Write[] = [];
  const used = new Set<number>();
  const freeIndex = (): number => {
    for (;;) {
      const i = rng.int(0, DISK_CHUNKS - 1);
      if (!used.has(i)) {
        used.add(i);
        return i;
      }
    }
  };
  const data = (i: number, buf: Buffer): void => {
    writes.push({ chunk: i, offset: i * CHUNK, data: buf, zeroLength: 0 });
    image.set(i, buf);
  };
  // A third of the fresh chunks compress (stored as zstd frames at rest, sent as stored), the rest do not.
  for (let k = 0; k < n.fresh; k++) data(freeIndex(), rng.chance(1 / 3) ? rng.text(CHUNK) : rng.bytes(CHUNK));
  const pool = () => [...image.chunks.values()];
  for (let k = 0; k < n.repeat && pool().length > 0; k++) data(freeIndex(), rng.pick(pool()));
  const withData = rng.shuffle([...image.chunks.keys()].filter((i) => !used.has(i)));
  for (const i of withData.slice(0, n.zero)) {
    used.add(i);
    writes.push({ chunk: i, offset: i * CHUNK, data: null, zeroLength: CHUNK });
    image.set(i, null);
  }
  for (let k = 0; k < n.partial; k++) {
    // Half into a chunk with data, half into a hole.
    const candidates = [...image.chunks.keys()].filter((i) => !used.has(i));
    const i = candidates.length > 0 && rng.chance(0.5) ? rng.pick(candidates) : freeIndex();
    used.add(i);
    const at = rng.int(0, CHUNK / 4096 - 1) * 4096;
    const patch = rng.bytes(4096);
    const next = Buffer.from(image.get(i) ?? ZERO_CHUNK);
    patch.copy(next, at);
    writes.push({ chunk: i, offset: i * CHUNK + at, data: patch, zeroLength: 0 });
    image.set(i, next);
  }
  return { writes: rng.shuffle(writes), image };
}

// ---------------------------------------------------------------------------------------------
// A TCP proxy between the regions that counts every byte (both directions) and can throttle

interface CountingProxy {
  url: string;
  bytes(): number;
  reset(): void;
  /** Bytes per second through the proxy (both directions together); 0 = unlimited. */
  setRate(bytesPerSecond: number): void;
  close(): Promise<void>;
}

async function startCountingProxy(targetPort: number): Promise<CountingProxy> {
  let total = 0;
  let rate = 0;
  let budgetStart = Date.now();
  let budgetBytes = 0;
  const sockets = new Set<Socket>();
  const pump = (from: Socket, to: Socket): void => {
    from.on('data', (d: Buffer) => {
      total += d.length;
      const ok = to.write(d);
      let wait = 0;
      if (rate > 0) {
        budgetBytes += d.length;
        wait = budgetStart + (budgetBytes / rate) * 1000 - Date.now();
      }
      if (!ok || wait > 0) {
        from.pause();
        let pending = (ok ? 0 : 1) + (wait > 0 ? 1 : 0);
        const resume = (): void => {
          if (--pending === 0 && !from.destroyed) from.resume();
        };
        if (!ok) to.once('drain', resume);
        if (wait > 0) setTimeout(resume, wait).unref();
      }
    });
    from.on('end', () => to.end());
  };
  const server: Server = createServer((client) => {
    const upstream = connect(targetPort, '127.0.0.1');
    sockets.add(client);
    sockets.add(upstream);
    const kill = (): void => {
      client.destroy();
      upstream.destroy();
      sockets.delete(client);
      sockets.delete(upstream);
    };
    client.on('error', kill).on('close', kill);
    upstream.on('error', kill).on('close', kill);
    pump(client, upstream);
    pump(upstream, client);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as { port: number }).port;
  return {
    url: `http://127.0.0.1:${port}`,
    bytes: () => total,
    reset: () => {
      total = 0;
    },
    setRate: (r) => {
      rate = r;
      budgetStart = Date.now();
      budgetBytes = 0;
    },
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}

// ---------------------------------------------------------------------------------------------
// The processes of a trial

type Region = 'bj' | 'hkg';

/** Everything a campaign started, so an interrupted campaign can stop it (by pid) on its way out. */
const liveWorlds = new Set<World>();
const liveChildren = new Set<ChildProcess>();

/** SIGKILLs every server and CLI child still running (for a campaign stopped by a signal). */
export function killEverything(): void {
  for (const w of liveWorlds) w.killNow();
  for (const c of liveChildren) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
}

class World {
  private clients = new Map<Region, { sdk: SdkClient; raw: BceClient }>();
  private constructor(
    readonly layout: Layout,
    /** Between bj and hkg (bj reaches hkg through it, `--peer hkg=...`), in both layouts. */
    readonly proxy: CountingProxy | null,
    private readonly servers: { bj: SpawnedServer; hkg: SpawnedServer },
  ) {}

  /**
   * Starts the processes of a trial. spawnServer picks the HTTP and NBD ports independently, so
   * now and then they collide ("overlap", "in use"): such a start is tried again on other ports.
   */
  static async start(layout: Layout, dir: string, gcIntervalSeconds: number): Promise<World> {
    for (let attempt = 1; ; attempt++) {
      try {
        return await World.startOnce(layout, dir, gcIntervalSeconds);
      } catch (e) {
        const portClash = /overlap|port is in use|EADDRINUSE/.test(String((e as Error).message));
        if (!portClash || attempt >= 3) throw e;
        await rm(join(dir, 'data'), { recursive: true, force: true });
        await rm(join(dir, 'data-bj'), { recursive: true, force: true });
        await rm(join(dir, 'data-hkg'), { recursive: true, force: true });
      }
    }
  }

  private static async startOnce(layout: Layout, dir: string, gcIntervalSeconds: number): Promise<World> {
    const config = join(dir, 'config.json');
    await writeFile(config, JSON.stringify({ gcGraceSeconds: 0, gcIntervalSeconds }));
    const env = { ...KEYS, SNAPFERRY_LOG_LEVEL: 'warn' };
    const started: Array<{ dispose(): Promise<void> }> = [];
    try {
      if (layout === 'one') {
        // `--peer` naming a region of the same process routes its neighbours to it through the proxy.
        const port = await freePortRange(2);
        const proxy = await startCountingProxy(port + 1);
        started.push({ dispose: () => proxy.close() });
        const server = await spawnServer({
          regions: ['bj', 'hkg'], port, env, dataDir: join(dir, 'data'),
          extraArgs: ['--config', config, '--peer', `hkg=${proxy.url}`],
        });
        return World.track(new World(layout, proxy, { bj: server, hkg: server }));
      }
      const hkg = await spawnServer({ regions: ['hkg'], env, dataDir: join(dir, 'data-hkg'), extraArgs: ['--config', config] });
      started.push(hkg);
      const proxy = await startCountingProxy(hkg.port);
      started.push({ dispose: () => proxy.close() });
      const bj = await spawnServer({ regions: ['bj'], env, dataDir: join(dir, 'data-bj'), extraArgs: ['--config', config, '--peer', `hkg=${proxy.url}`] });
      return World.track(new World(layout, proxy, { bj, hkg }));
    } catch (e) {
      for (const s of started.reverse()) await s.dispose().catch(() => {});
      throw e;
    }
  }

  private static track(w: World): World {
    liveWorlds.add(w);
    return w;
  }
  killNow(): void {
    for (const s of new Set([this.servers.bj, this.servers.hkg])) {
      if (s.child.exitCode === null && s.child.signalCode === null) s.child.kill('SIGKILL');
    }
  }

  url(region: Region): string {
    return this.servers[region].urls[region]!;
  }
  private client(region: Region): { sdk: SdkClient; raw: BceClient } {
    let c = this.clients.get(region);
    if (!c) {
      c = { sdk: sdkClient(this.url(region), AK, SK), raw: new BceClient(this.url(region), { accessKeyId: AK, secretAccessKey: SK }, { connections: 4 }) };
      this.clients.set(region, c);
    }
    return c;
  }
  sdk(region: Region): SdkClient {
    return this.client(region).sdk;
  }
  raw(region: Region): BceClient {
    return this.client(region).raw;
  }
  cliEnv(region: Region): Record<string, string> {
    return { ...KEYS, SNAPFERRY_ENDPOINT: this.url(region) };
  }

  /** The processes that `target` names: in the one-process layout every target is the one process. */
  private targets(target: Region | 'both'): SpawnedServer[] {
    if (this.layout === 'one') return [this.servers.bj];
    return target === 'both' ? [this.servers.bj, this.servers.hkg] : [this.servers[target]];
  }
  async kill(target: Region | 'both'): Promise<void> {
    await Promise.all(this.targets(target).map((s) => s.crash()));
  }
  async restart(target: Region | 'both', rng: Rng): Promise<void> {
    await this.dropClients();
    const order = rng.shuffle(this.targets(target));
    for (const s of order) await s.restart();
  }
  private async dropClients(): Promise<void> {
    const old = [...this.clients.values()];
    this.clients.clear();
    await Promise.allSettled(old.map((c) => c.raw.close()));
  }
  logs(): string {
    const uniq = [...new Set([this.servers.bj, this.servers.hkg])];
    return uniq.map((s) => s.stderr()).join('\n');
  }
  async dispose(): Promise<void> {
    await this.dropClients();
    await Promise.allSettled([...new Set([this.servers.bj, this.servers.hkg])].map((s) => s.dispose()));
    await this.proxy?.close();
    liveWorlds.delete(this);
  }
}

// ---------------------------------------------------------------------------------------------
// A trial

interface Expectation {
  region: Region;
  label: string;
  /** What the snapshot may restore to (more than one when a write raced it). */
  candidates: Digest[];
  /** A snapshot nothing wrote after (or a copy) must end Available, not CreatedFailed. */
  mustSucceed: boolean;
  /** Seen Available before the crash: it must still be there and Available afterwards. */
  published: boolean;
  /** Its deletion was asked for: it may be gone. */
  mayVanish: boolean;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
let tokenCounter = 0;
const newToken = (): string => `chaos-${process.pid}-${Date.now().toString(36)}-${tokenCounter++}`;

class Trial {
  readonly expect = new Map<string, Expectation>();
  readonly copies: Array<{ sourceId: string; destId: string; label: string }> = [];
  readonly result: TrialResult;
  wireNeeded: number | null = null;
  private opStart = 0;

  constructor(
    readonly rng: Rng,
    readonly world: World,
    readonly dir: string,
    readonly readMode: 'full' | 'extents',
    readonly strictWire: boolean,
    readonly scale: number,
    readonly variant: number,
    result: TrialResult,
  ) {
    this.result = result;
    this.doubleFault = rng.chance(0.25);
  }

  /** A data size (in chunks) scaled for a shorter run. */
  scaled(chunks: number): number {
    return Math.max(4, Math.round(chunks * this.scale));
  }

  private phaseAt = Date.now();
  /** With CHAOS_DEBUG set, prints how long each phase of a trial took. */
  phase(name: string): void {
    if (process.env.CHAOS_DEBUG) process.stderr.write(`  [${this.result.seed}] ${name}: ${Date.now() - this.phaseAt} ms\n`);
    this.phaseAt = Date.now();
  }

  lost(msg: string): void {
    this.result.dataLost.push(msg);
  }
  failed(msg: string): void {
    this.result.checksFailed.push(msg);
  }
  note(msg: string): void {
    this.result.notes.push(msg);
  }
  startOp(): void {
    this.opStart = Date.now();
  }
  get opStartedAt(): number {
    return this.opStart;
  }
  /** kill -9, recorded as a fault. */
  async kill(kind: string, target: Region | 'both', mid: boolean | null, detail = ''): Promise<void> {
    const atMs = Date.now() - this.opStart;
    await this.world.kill(target);
    this.result.faults.push({ kind, target: this.world.layout === 'one' ? 'process' : target, atMs, mid, detail });
  }
  /** A quarter of the trials crash twice: again while the restarted region recovers (jobs resuming). */
  private doubleFault = false;
  private doubled = false;
  async restart(target: Region | 'both', maxDelayMs = 500): Promise<void> {
    await sleep(this.rng.int(0, maxDelayMs));
    await this.world.restart(target, this.rng);
    if (this.doubleFault && !this.doubled) {
      this.doubled = true;
      const after = this.rng.int(50, 1500);
      await sleep(after);
      await this.kill('recovery', target, null, `${after} ms into the recovery`);
      await sleep(this.rng.int(0, maxDelayMs));
      await this.world.restart(target, this.rng);
    }
  }

  // --- BCC calls through the official SDK

  async newVolume(region: Region, body: Record<string, unknown> = { cdsSizeInGB: DISK_GB }, token = newToken()): Promise<string> {
    const [id] = (await send(this.world.sdk(region), 'POST', '/v2/volume', { body, params: { clientToken: token } })).volumeIds;
    return id;
  }
  async volume(region: Region, id: string): Promise<any> {
    return (await send(this.world.sdk(region), 'GET', `/v2/volume/${id}`)).volume;
  }
  async snapshot(region: Region, id: string): Promise<any | null> {
    try {
      return (await send(this.world.sdk(region), 'GET', `/v2/snapshot/${id}`)).snapshot;
    } catch (e: any) {
      if (e?.status_code === 404) return null;
      throw e;
    }
  }
  async listSnapshots(region: Region): Promise<any[]> {
    const all: any[] = [];
    let marker: string | undefined;
    do {
      const page = await send(this.world.sdk(region), 'GET', '/v2/snapshot', { params: { maxKeys: '1000', ...(marker ? { marker } : {}) } });
      all.push(...page.snapshots);
      marker = page.nextMarker;
    } while (marker);
    return all;
  }
  async listVolumes(region: Region): Promise<any[]> {
    const all: any[] = [];
    let marker: string | undefined;
    do {
      const page = await send(this.world.sdk(region), 'GET', '/v2/volume', { params: { maxKeys: '1000', ...(marker ? { marker } : {}) } });
      all.push(...page.volumes);
      marker = page.nextMarker;
    } while (marker);
    return all;
  }
  async createSnapshot(region: Region, volumeId: string, name: string, token: string): Promise<string> {
    return (await send(this.world.sdk(region), 'POST', '/v2/snapshot', { body: { volumeId, snapshotName: name }, params: { clientToken: token } })).snapshotId;
  }
  async remoteCopy(sourceId: string, token: string): Promise<string> {
    const { result } = await send(this.world.sdk('bj'), 'PUT', `/v2/snapshot/remote_copy/${sourceId}`, {
      body: { destRegionInfos: [{ destRegion: 'hkg' }] }, params: { clientToken: token },
    });
    return result[0].snapshotId;
  }

  /** Waits (bounded) until `fn` returns a value; null on timeout. */
  async until<T>(fn: () => Promise<T | null | undefined | false>, ms = SETTLE_MS, every = 100): Promise<T | null> {
    const deadline = Date.now() + ms;
    for (;;) {
      try {
        const v = await fn();
        if (v) return v;
      } catch {
        // a region restarting: ask again
      }
      if (Date.now() > deadline) return null;
      await sleep(every);
    }
  }
  async settledSnapshot(region: Region, id: string, ms = SETTLE_MS): Promise<any | null> {
    return this.until(async () => {
      const s = await this.snapshot(region, id);
      return s && s.status !== 'Creating' ? s : null;
    }, ms);
  }
  async settledVolume(region: Region, id: string, ms = SETTLE_MS): Promise<any | null> {
    return this.until(async () => {
      const v = await this.volume(region, id);
      return v && !['Creating', 'SnapshotProcessing', 'Scaling', 'Deleting'].includes(v.status) ? v : null;
    }, ms);
  }
  /** Retries a call that a crash may have cut, until it answers (the same clientToken makes it idempotent). */
  async retrying<T>(fn: () => Promise<T>, what: string, ms = 30_000): Promise<T> {
    const deadline = Date.now() + ms;
    for (;;) {
      try {
        return await fn();
      } catch (e: any) {
        if (e?.status_code >= 400 && e.status_code < 500) throw new Error(`${what}: ${e.status_code} ${e.code}: ${e.message}`);
        if (Date.now() > deadline) throw new Error(`${what}: ${e?.message ?? e}`);
        await sleep(200);
      }
    }
  }

  // --- data

  async write(region: Region, volumeId: string, writes: Write[], parallel = 4, onAck?: (w: Write) => void): Promise<void> {
    const raw = this.world.raw(region);
    let next = 0;
    let failure: unknown = null;
    const worker = async (): Promise<void> => {
      while (failure === null && next < writes.length) {
        const w = writes[next++]!;
        try {
          if (w.data) await raw.json({ method: 'PUT', path: `/v2/volume/${volumeId}/data`, query: { offset: String(w.offset) }, body: w.data, headers: { 'content-type': 'application/octet-stream' } });
          else await raw.json({ method: 'PUT', path: `/v2/volume/${volumeId}/data`, query: { offset: String(w.offset), zeroLength: String(w.zeroLength) } });
          onAck?.(w);
        } catch (e) {
          failure ??= e;
        }
      }
    };
    await Promise.all(Array.from({ length: parallel }, worker));
    if (failure !== null) throw failure;
  }

  /** The chunk digest of a disk as the region serves it. `mustRead` chunks are read in 'extents' mode too. */
  async readDigest(region: Region, volumeId: string, mustRead: Iterable<number> = []): Promise<Digest> {
    const raw = this.world.raw(region);
    const digest: Digest = new Map();
    if (this.readMode === 'full') {
      const res = await raw.send({ method: 'GET', path: `/v2/volume/${volumeId}/data` });
      let pending: Buffer[] = [];
      let pendingBytes = 0;
      let index = 0;
      const flush = (buf: Buffer): void => {
        if (!isZero(buf)) digest.set(index, sha256(buf));
        index++;
      };
      for await (const part of res.body as AsyncIterable<Buffer>) {
        pending.push(part);
        pendingBytes += part.length;
        while (pendingBytes >= CHUNK) {
          const all = Buffer.concat(pending, pendingBytes);
          flush(all.subarray(0, CHUNK));
          pending = [all.subarray(CHUNK)];
          pendingBytes -= CHUNK;
        }
      }
      if (pendingBytes > 0) flush(Buffer.concat(pending, pendingBytes));
      if (index !== DISK_CHUNKS) throw new Error(`read ${index} chunks of ${volumeId}, the disk has ${DISK_CHUNKS}`);
      return digest;
    }
    const { extents } = await raw.json<{ extents: Array<{ offset: number; length: number; hole: boolean }> }>({ method: 'GET', path: `/v2/volume/${volumeId}/extents` });
    const wanted = new Set<number>(mustRead);
    for (const e of extents) {
      if (e.hole) continue;
      for (let i = Math.floor(e.offset / CHUNK); i * CHUNK < e.offset + e.length; i++) wanted.add(i);
    }
    for (let k = 0; k < 8; k++) wanted.add(this.rng.int(0, DISK_CHUNKS - 1)); // a sample of holes
    const list = [...wanted];
    let next = 0;
    await Promise.all(Array.from({ length: 4 }, async () => {
      while (next < list.length) {
        const i = list[next++]!;
        const res = await raw.send({ method: 'GET', path: `/v2/volume/${volumeId}/data`, headers: { range: `bytes=${i * CHUNK}-${(i + 1) * CHUNK - 1}` } });
        const buf = Buffer.from(await res.body.arrayBuffer());
        if (buf.length !== CHUNK) throw new Error(`short read of chunk ${i} of ${volumeId}: ${buf.length} bytes`);
        if (!isZero(buf)) digest.set(i, sha256(buf));
      }
    }));
    return new Map([...digest].sort((a, b) => a[0] - b[0]));
  }

  /** A volume in `region` holding `image`: created, written, Available. */
  async diskWith(region: Region, image: Image): Promise<string> {
    const id = await this.newVolume(region);
    await this.waitAvailable(region, id);
    await this.write(region, id, [...image.chunks].map(([i, b]) => ({ chunk: i, offset: i * CHUNK, data: b, zeroLength: 0 })));
    return id;
  }
  async waitAvailable(region: Region, volumeId: string): Promise<void> {
    const v = await this.settledVolume(region, volumeId);
    if (v?.status !== 'Available') throw new Error(`volume ${volumeId} did not become Available (${v?.status ?? 'timeout'})`);
  }

  /** Takes a snapshot without any fault and records what it must restore to. */
  /** How long the last clean snapshot took to become Available (a yardstick for kill times). */
  lastSnapshotMs = 0;

  async cleanSnapshot(region: Region, volumeId: string, image: Image, label: string): Promise<string> {
    const started = Date.now();
    const id = await this.createSnapshot(region, volumeId, label, newToken());
    this.expect.set(id, { region, label, candidates: [image.digest()], mustSucceed: true, published: false, mayVanish: false });
    const s = await this.settledSnapshot(region, id);
    if (s?.status !== 'Available') throw new Error(`setup snapshot ${label} (${id}) ended ${s?.status ?? 'Creating (timeout)'}`);
    this.lastSnapshotMs = Date.now() - started;
    this.expect.get(id)!.published = true;
    return id;
  }

  /** Polls a disk every 10 ms until it is Available; returns how long that took (a yardstick for kill times). */
  async timeUntilAvailable(region: Region, volumeId: string, since: number): Promise<number> {
    const v = await this.until(async () => {
      const x = await this.volume(region, volumeId);
      return x && !['Creating', 'SnapshotProcessing'].includes(x.status) ? x : null;
    }, SETTLE_MS, 10);
    if (v?.status !== 'Available') throw new Error(`calibration: disk ${volumeId} ended ${v?.status ?? 'Creating (timeout)'}`);
    return Date.now() - since;
  }

  /** A copy without any fault (setup of an incremental copy). */
  async cleanCopy(sourceId: string, label: string): Promise<string> {
    const destId = await this.remoteCopy(sourceId, newToken());
    const src = this.expect.get(sourceId)!;
    this.expect.set(destId, { region: 'hkg', label: `${label} (copy of ${sourceId})`, candidates: src.candidates, mustSucceed: true, published: false, mayVanish: false });
    const s = await this.settledSnapshot('hkg', destId);
    if (s?.status !== 'Available') throw new Error(`setup copy ${label} (${destId}) ended ${s?.status ?? 'Creating (timeout)'}`);
    this.expect.get(destId)!.published = true;
    return destId;
  }

  // --- the checks after the restart

  async verify(): Promise<void> {
    const regions: Region[] = ['bj', 'hkg'];
    this.phase('operation, kill and restart');
    // 1. Nothing stays in Creating (snapshots) or in a transient disk state.
    for (const region of regions) {
      const settled = await this.until(async () => {
        const creating = (await this.listSnapshots(region)).filter((s) => s.status === 'Creating');
        return creating.length === 0 ? true : null;
      }, SETTLE_MS, 250);
      if (!settled) {
        const stuck = (await this.listSnapshots(region).catch(() => [])).filter((s) => s.status === 'Creating');
        for (const s of stuck) this.failed(`snapshot ${s.id} in ${region} is stuck in Creating (progress ${s.progress}) after ${SETTLE_MS / 1000} s`);
      }
      const disks = await this.until(async () => {
        const busy = (await this.listVolumes(region)).filter((v) => ['Creating', 'SnapshotProcessing', 'Scaling', 'Deleting'].includes(v.status));
        return busy.length === 0 ? true : null;
      }, SETTLE_MS, 250);
      if (!disks) {
        for (const v of (await this.listVolumes(region).catch(() => [])).filter((x) => ['Creating', 'SnapshotProcessing', 'Scaling', 'Deleting'].includes(x.status))) {
          this.failed(`disk ${v.id} in ${region} is stuck in ${v.status}`);
        }
      }
    }
    // 2. Copies that were in flight completed, within the wire budget.
    for (const c of this.copies) {
      const s = await this.snapshot('hkg', c.destId).catch(() => null);
      if (s?.status !== 'Available') this.failed(`the copy ${c.destId} of ${c.sourceId} (${c.label}) did not complete: ${s?.status ?? 'missing'}`);
    }
    if (this.wireNeeded !== null && this.world.proxy) {
      const bytes = this.world.proxy.bytes();
      const ratio = bytes / Math.max(1, this.wireNeeded);
      let allowance = 0;
      if (!this.strictWire) {
        for (const f of this.result.faults) allowance += f.target === 'bj' ? SOURCE_CRASH_ALLOWANCE : DEST_CRASH_ALLOWANCE;
      }
      const limit = WIRE_RATIO_LIMIT * this.wireNeeded + allowance;
      this.result.wire = { bytes, needed: this.wireNeeded, ratio, limit };
      if (ratio > WIRE_RATIO_LIMIT) this.note(`the copy put ${ratio.toFixed(3)}x the bytes it had to send on the wire`);
      if (bytes > limit) {
        this.failed(`the copy put ${bytes} bytes on the wire for ${this.wireNeeded} bytes it had to send (${ratio.toFixed(3)}x; bound ${WIRE_RATIO_LIMIT}x${allowance ? ` + ${allowance >> 20} MiB for the crashes` : ''})`);
      }
    }
    this.world.proxy?.setRate(0);
    this.phase('settle');
    // 3. Garbage collection, then the integrity check, in both regions: after a GC nothing an
    //    Available snapshot, a disk or a job names may be missing.
    //    The GC is the call `snapferry gc` makes (signed with the region secret); the check is the CLI.
    for (const region of regions) {
      const admin = new BceClient(this.world.url(region), { accessKeyId: `snapferry-region-${region}`, secretAccessKey: REGION_SECRET }, { headersTimeoutMs: 300_000 });
      try {
        await admin.json({ method: 'POST', path: '/internal/v1/admin/gc' });
      } catch (e) {
        this.failed(`garbage collection in ${region} failed: ${(e as Error).message}`);
      } finally {
        await admin.close();
      }
    }
    await Promise.all(regions.map(async (region) => {
      const check = await runCli(['check', '--endpoint', this.world.url(region), '--json'], KEYS, 300_000);
      if (check.code !== 0) {
        let problems: string[] = [];
        try {
          problems = JSON.parse(check.stdout).problems;
        } catch {
          problems = [check.stderr.trim()];
        }
        this.failed(`snapferry check in ${region} exited ${check.code}: ${problems.join(' | ')}`);
      }
    }));
    this.phase('gc and check');
    // 4. Every snapshot: the published ones are still there; every Available one restores to what
    //    was written before it was created.
    const listed = new Map<string, any>();
    for (const region of regions) for (const s of await this.listSnapshots(region)) listed.set(s.id, { ...s, region });
    for (const [id, e] of this.expect) {
      const s = listed.get(id);
      if (e.published && (!s || s.status !== 'Available') && !(e.mayVanish && !s)) {
        this.lost(`snapshot ${id} (${e.label}) was Available before the crash and is now ${s?.status ?? 'gone'}`);
      }
      if (s && s.status === 'CreatedFailed' && e.mustSucceed) {
        this.failed(`snapshot ${id} (${e.label}) ended CreatedFailed although nothing was written after it was asked for`);
      }
    }
    for (const s of listed.values()) {
      if (s.status !== 'Available') continue;
      const e = this.expect.get(s.id);
      if (!e) {
        this.failed(`snapshot ${s.id} in ${s.region} (${s.name}) is Available but the harness never asked for it`);
        continue;
      }
      await this.verifyRestore(s.region, s.id, e);
      this.phase(`restore ${s.id}`);
    }
  }

  /** Restores a snapshot into a new disk and compares what the disk reads with what was expected. */
  async verifyRestore(region: Region, snapshotId: string, e: Expectation): Promise<void> {
    const volumeId = await this.retrying(() => this.newVolume(region, { snapshotId }), `restore ${snapshotId}`);
    const v = await this.settledVolume(region, volumeId);
    if (v?.status !== 'Available') {
      this.lost(`snapshot ${snapshotId} (${e.label}) does not restore: the disk ${volumeId} ended ${v?.status ?? 'Creating (timeout)'}`);
      return;
    }
    const actual = await this.readDigest(region, volumeId, new Set(e.candidates.flatMap((c) => [...c.keys()])));
    const key = digestKey(actual);
    if (!e.candidates.some((c) => digestKey(c) === key)) {
      this.lost(`snapshot ${snapshotId} (${e.label}) restores to other bytes than were written: ${digestDiff(actual, e.candidates[0]!)}`);
    }
    this.result.snapshotsVerified++;
    await send(this.world.sdk(region), 'DELETE', `/v2/volume/${volumeId}`).catch(() => {});
  }
}

// ---------------------------------------------------------------------------------------------
// The operations. Each sets up, runs its operation, kills at a random point, restarts, and records
// what must hold; Trial.verify checks the rest.

const mixedImage = (rng: Rng, chunks: number): Image =>
  planWrites(rng, new Image(), { fresh: Math.ceil(chunks * 0.7), repeat: Math.floor(chunks * 0.2), zero: 0, partial: Math.max(1, Math.floor(chunks * 0.1)) }).image;

/** Writes an image into a disk with `Trial.write`, as a list of whole-chunk writes. */
const imageWrites = (image: Image): Write[] => [...image.chunks].map(([i, b]) => ({ chunk: i, offset: i * CHUNK, data: b, zeroLength: 0 }));

const operations: Record<OpKind, (t: Trial) => Promise<void>> = {
  /** kill -9 while an image is written into a disk: by `snapferry volume import` or by HTTP PUTs. */
  async import(t) {
    const { rng } = t;
    const a = mixedImage(rng, t.scaled(rng.int(16, 40)));
    const volumeId = await t.diskWith('bj', a);
    await t.cleanSnapshot('bj', volumeId, a, 'before-import');
    const plan = planWrites(rng, a, { fresh: rng.int(8, 32), repeat: rng.int(2, 8), zero: rng.int(2, 8), partial: rng.int(1, 6) });
    const b = plan.image;
    const acked = new Set<number>();
    let mode: 'http' | 'cli';
    if (rng.chance(0.5)) {
      mode = 'http';
      const killAfter = rng.int(0, plan.writes.length - 1);
      t.startOp();
      let done = false;
      const writing = t.write('bj', volumeId, plan.writes, 2, (w) => acked.add(w.chunk)).then(() => (done = true), () => {});
      await t.until(async () => acked.size >= killAfter || done, 60_000, 2);
      await t.kill('import-http', 'bj', !done, `after ${acked.size} of ${plan.writes.length} writes acknowledged`);
      await writing;
    } else {
      mode = 'cli';
      const file = join(t.dir, 'image.raw');
      const fh = await open(file, 'w');
      await fh.truncate(DISK_GB * 1024 ** 3);
      for (const [i, buf] of b.chunks) await fh.write(buf, 0, CHUNK, i * CHUNK);
      await fh.close();
      t.startOp();
      const child: ChildProcess = spawn(process.execPath, [BIN, 'volume', 'import', volumeId, file, '--json'], { env: { ...process.env, ...t.world.cliEnv('bj') }, stdio: 'ignore' });
      liveChildren.add(child);
      const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
      void exited.then(() => liveChildren.delete(child));
      let code: number | null | undefined;
      void exited.then((c) => (code = c));
      await Promise.race([sleep(rng.int(400, 2500)), exited]);
      await t.kill('import-cli', 'bj', code === undefined, code === undefined ? 'snapferry volume import running' : `snapferry volume import had exited ${code}`);
      const stopped = await Promise.race([exited, sleep(30_000).then(() => 'timeout' as const)]);
      if (stopped === 'timeout') child.kill('SIGKILL');
      await rm(file, { force: true });
    }
    await t.restart('bj');
    // The disk after the crash: chunks no write touched are as before, acknowledged writes are there,
    // a write in flight left its chunk old or new (a torn 1 MiB write is allowed: nothing promised it).
    await t.waitAvailable('bj', volumeId);
    const touched = new Set(plan.writes.map((w) => w.chunk));
    const da = a.digest();
    const db = b.digest();
    const actual = await t.readDigest('bj', volumeId, new Set([...da.keys(), ...db.keys()]));
    let torn = 0;
    for (let i = 0; i < DISK_CHUNKS; i++) {
      const got = actual.get(i);
      if (!touched.has(i) || (mode === 'cli' && da.get(i) === db.get(i))) {
        if (got !== da.get(i)) t.lost(`chunk #${i} of ${volumeId}, which no write changed, changed across the crash`);
      } else if (acked.has(i)) {
        if (got !== db.get(i)) t.lost(`chunk #${i} of ${volumeId}: an acknowledged write is not on the disk after the crash`);
      } else if (got !== da.get(i) && got !== db.get(i)) torn++;
    }
    if (torn > 0) t.note(`${torn} chunk(s) torn by writes in flight`);
    // A snapshot of the disk as it is now must restore to exactly this (the chunk map's crash rule:
    // the disk was not closed cleanly, so the snapshot must not trust its base).
    const id = await t.createSnapshot('bj', volumeId, 'after-import-crash', newToken());
    t.expect.set(id, { region: 'bj', label: 'after-import-crash', candidates: [actual], mustSucceed: true, published: false, mayVanish: false });
  },

  /** kill -9 while a snapshot is being taken (or while it is being asked for). */
  async snapshot(t) {
    const { rng } = t;
    let image = mixedImage(rng, t.scaled(rng.int(64, 160)));
    const volumeId = await t.diskWith('bj', image);
    let yardstick = 0;
    if (rng.chance(0.5)) {
      // An incremental snapshot: one before, then changes.
      await t.cleanSnapshot('bj', volumeId, image, 'base');
      yardstick = t.lastSnapshotMs;
      const plan = planWrites(rng, image, { fresh: t.scaled(rng.int(48, 120)), repeat: rng.int(0, 4), zero: rng.int(0, 6), partial: rng.int(0, 4) });
      await t.write('bj', volumeId, plan.writes);
      image = plan.image;
    }
    if (rng.chance(0.4)) {
      // The disk was not closed cleanly: its snapshot may not trust the chunk map and reads whatever
      // may have been written (the chunk map's crash rule); an interrupted capture of that resumes
      // from its last checkpoint, if it got that far.
      t.startOp();
      await t.kill('unclean-disk', 'bj', false, 'after the writes, before the snapshot');
      await t.world.restart('bj', rng);
      yardstick = 0;
    }
    const racing = rng.chance(0.3); // a 4 KiB write right after the request: either cut is fine
    const byRequest = rng.chance(0.2); // kill while the create call itself is in flight
    const token = newToken();
    const candidates = [image.digest()];
    t.startOp();
    let id: string | null = null;
    if (byRequest) {
      const call = t.createSnapshot('bj', volumeId, 'crashed', token).then((x) => (id = x), () => {});
      await sleep(rng.int(0, 40));
      await t.kill('snapshot', 'bj', id === null, 'during the create call');
      await call;
    } else {
      id = await t.createSnapshot('bj', volumeId, 'crashed', token);
      if (racing) {
        const plan = planWrites(rng, image, { fresh: 0, repeat: 0, zero: 0, partial: 1 });
        await t.write('bj', volumeId, plan.writes);
        candidates.push(plan.image.digest());
      }
      // Kill at a progress mark, or (when a base snapshot gave a yardstick) at a moment within its duration.
      const p = rng.int(0, 90);
      const at = yardstick > 0 && rng.chance(0.5) ? rng.int(0, yardstick) : -1;
      let available = false;
      await t.until(async () => {
        const s = await t.snapshot('bj', id!);
        available = s?.status === 'Available';
        return available || (at < 0 ? Number(s?.progress ?? 0) >= p : Date.now() - t.opStartedAt >= at);
      }, 60_000, 5);
      await t.kill('snapshot', 'bj', !available, `${at < 0 ? `at progress >= ${p}` : `${at} ms in`}${racing ? ', a write raced it' : ''}`);
    }
    await t.restart('bj');
    id ??= await t.retrying(() => t.createSnapshot('bj', volumeId, 'crashed', token), 'snapshot create retried with its clientToken');
    t.expect.set(id, { region: 'bj', label: 'crashed', candidates, mustSucceed: !racing, published: false, mayVanish: false });
    const settled = await t.settledSnapshot('bj', id);
    t.note(`the interrupted snapshot ended ${settled?.status ?? 'Creating (timeout)'}${racing ? ' (a write raced it)' : ''}`);
  },

  /** kill -9 of the source, the destination or both while a snapshot is copied bj -> hkg. */
  async copy(t) {
    const { rng } = t;
    let image = mixedImage(rng, t.scaled(rng.int(48, 128)));
    const volumeId = await t.diskWith('bj', image);
    let source = await t.cleanSnapshot('bj', volumeId, image, 'copied');
    const held = new Set<string>();
    if (rng.chance(0.4)) {
      // An incremental copy: the destination holds an earlier copy.
      await t.cleanCopy(source, 'earlier');
      for (const b of image.chunks.values()) held.add(chunkSha(b));
      const plan = planWrites(rng, image, { fresh: rng.int(12, 40), repeat: rng.int(0, 4), zero: rng.int(0, 8), partial: rng.int(0, 4) });
      await t.write('bj', volumeId, plan.writes);
      image = plan.image;
      source = await t.cleanSnapshot('bj', volumeId, image, 'copied-incremental');
    }
    t.wireNeeded = bytesToSend(image, held);
    const target: Region | 'both' = t.world.layout === 'one' ? 'both' : (['bj', 'hkg', 'both'] as const)[t.variant % 3]!;
    const kind = t.world.layout === 'one' ? 'copy-process' : target === 'bj' ? 'copy-source' : target === 'hkg' ? 'copy-dest' : 'copy-both';
    const byRequest = rng.chance(0.15);
    const token = newToken();
    // Slowed down a little so that the kill lands mid-copy; counted from here on.
    t.world.proxy?.reset();
    t.world.proxy?.setRate(rng.int(48, 160) * MiB);
    t.startOp();
    let destId: string | null = null;
    if (byRequest) {
      const call = t.remoteCopy(source, token).then((x) => (destId = x), () => {});
      await sleep(rng.int(0, 40));
      await t.kill(kind, target, true, 'during the remote_copy call');
      await call;
    } else {
      destId = await t.remoteCopy(source, token);
      // Through the throttled proxy a copy takes a second or more: kill at a progress mark (reported
      // every 250 ms), or at a moment within the time the source snapshot took.
      const p = rng.int(0, 95);
      const at = rng.chance(0.6) ? -1 : rng.int(0, t.lastSnapshotMs);
      let done = false;
      await t.until(async () => {
        const s = await t.snapshot('hkg', destId!);
        done = s?.status === 'Available';
        return done || (at < 0 ? Number(s?.progress ?? 0) >= p : Date.now() - t.opStartedAt >= at);
      }, 120_000, 5);
      await t.kill(kind, target, !done, at < 0 ? `at progress >= ${p}` : `${at} ms in`);
    }
    await t.restart(target, 1000);
    destId ??= await t.retrying(() => t.remoteCopy(source, token), 'remote copy retried with its clientToken');
    const src = t.expect.get(source)!;
    t.expect.set(destId, { region: 'hkg', label: `copy of ${source}`, candidates: src.candidates, mustSucceed: true, published: false, mayVanish: false });
    t.copies.push({ sourceId: source, destId, label: kind });
    // The copy must complete (bounded); its bytes on the wire are compared in verify().
    await t.settledSnapshot('hkg', destId, 180_000);
  },

  /**
   * kill -9 while garbage collection runs (`snapferry gc`, and the housekeeping timer every second)
   * and at the same time snapshots are deleted, new ones are taken of the same data, a disk is
   * restored and another written and snapshotted.
   */
  async gc(t) {
    const { rng } = t;
    const a1 = mixedImage(rng, t.scaled(rng.int(24, 48)));
    const v1 = await t.diskWith('bj', a1);
    const s1 = await t.cleanSnapshot('bj', v1, a1, 'g1');
    const p2 = planWrites(rng, a1, { fresh: rng.int(6, 16), repeat: 2, zero: rng.int(2, 6), partial: 2 });
    await t.write('bj', v1, p2.writes);
    const s2 = await t.cleanSnapshot('bj', v1, p2.image, 'g2');
    const p3 = planWrites(rng, p2.image, { fresh: rng.int(6, 16), repeat: 2, zero: rng.int(2, 6), partial: 2 });
    await t.write('bj', v1, p3.writes);
    const s3 = await t.cleanSnapshot('bj', v1, p3.image, 'g3');
    // A second disk with the bytes of g1: its snapshot names exactly the chunks g1's deletion frees.
    const v2 = await t.diskWith('bj', a1);
    const p4 = planWrites(rng, p3.image, { fresh: rng.int(4, 12), repeat: 2, zero: 2, partial: 1 });

    const tokens = { s4: newToken(), s5: newToken(), w: newToken() };
    const ids: { s4?: string; s5?: string; w?: string } = {};
    let p4written = false;
    for (const s of [s1, s2]) t.expect.get(s)!.mayVanish = true;
    t.startOp();
    const work = [
      (async () => {
        for (const s of rng.shuffle([s1, s2])) await send(t.world.sdk('bj'), 'DELETE', `/v2/snapshot/${s}`);
      })(),
      (async () => {
        for (let k = rng.int(1, 3); k > 0; k--) await runCli(['gc', '--endpoint', t.world.url('bj'), '--json'], KEYS, 60_000);
      })(),
      (async () => {
        ids.s4 = await t.createSnapshot('bj', v2, 'g4-same-bytes-as-g1', tokens.s4);
      })(),
      (async () => {
        ids.w = await t.newVolume('bj', { snapshotId: s3 }, tokens.w);
      })(),
      (async () => {
        await t.write('bj', v1, p4.writes);
        p4written = true;
        ids.s5 = await t.createSnapshot('bj', v1, 'g5', tokens.s5);
      })(),
    ].map((p) => p.then(() => true, () => false));
    let finished = false;
    const all = Promise.all(work).then(() => (finished = true));
    await Promise.race([sleep(rng.int(0, 1500)), all]);
    await t.kill('gc', 'bj', !finished, 'gc with deletes, snapshots of the same data and a restore');
    await all;
    await t.restart('bj');
    // Whatever the crash cut short is asked for again (clientTokens make it idempotent).
    ids.s4 ??= await t.retrying(() => t.createSnapshot('bj', v2, 'g4-same-bytes-as-g1', tokens.s4), 'snapshot g4 retried');
    t.expect.set(ids.s4, { region: 'bj', label: 'g4-same-bytes-as-g1', candidates: [a1.digest()], mustSucceed: true, published: false, mayVanish: false });
    if (!ids.s5) {
      // Writes cut by the crash are written again (the same bytes); the snapshot is asked for again
      // with its clientToken (it may exist already, taken after all the writes).
      if (!p4written) await t.write('bj', v1, p4.writes);
      ids.s5 = await t.retrying(() => t.createSnapshot('bj', v1, 'g5', tokens.s5), 'snapshot g5 retried');
    }
    t.expect.set(ids.s5, { region: 'bj', label: 'g5', candidates: [p4.image.digest()], mustSucceed: true, published: false, mayVanish: false });
    ids.w ??= await t.retrying(() => t.newVolume('bj', { snapshotId: s3 }, tokens.w), 'restore of g3 retried');
    const w = await t.settledVolume('bj', ids.w);
    if (w?.status !== 'Available') t.lost(`the disk ${ids.w} restored from g3 (${s3}) ended ${w?.status ?? 'Creating (timeout)'}`);
    else {
      const d = await t.readDigest('bj', ids.w, p3.image.digest().keys());
      if (digestKey(d) !== digestKey(p3.image.digest())) t.lost(`the disk ${ids.w} restored from g3 (${s3}) across the crash holds other bytes: ${digestDiff(d, p3.image.digest())}`);
    }
  },

  /** kill -9 while a disk is created from a snapshot, or rolled back to one. */
  async restore(t) {
    const { rng } = t;
    const a = mixedImage(rng, t.scaled(rng.int(32, 96)));
    const volumeId = await t.diskWith('bj', a);
    const snap = await t.cleanSnapshot('bj', volumeId, a, 'restored');
    // Yardstick: one clean restore of the same snapshot (verified like any other disk); the kill
    // then lands at a uniform moment within 70 % of that duration (a second restore is faster).
    const calibration = Date.now();
    const clean = await t.newVolume('bj', { snapshotId: snap });
    const restoreMs = await t.timeUntilAvailable('bj', clean, calibration);
    const cleanDigest = await t.readDigest('bj', clean, a.digest().keys());
    if (digestKey(cleanDigest) !== digestKey(a.digest())) t.lost(`a restore of ${snap} without any fault holds other bytes: ${digestDiff(cleanDigest, a.digest())}`);
    await send(t.world.sdk('bj'), 'DELETE', `/v2/volume/${clean}`).catch(() => {});
    const rollback = t.variant % 2 === 1;
    // Sometimes the snapshot is deleted as soon as the restore was accepted: the restore's own
    // reference must keep its manifest and chunks from garbage collection until it is done.
    const deleteSource = rng.chance(0.4);
    const deleteAfterAck = (): void => {
      if (!deleteSource) return;
      t.expect.get(snap)!.mayVanish = true;
      void send(t.world.sdk('bj'), 'DELETE', `/v2/snapshot/${snap}`).catch(() => {});
    };
    let target: string;
    if (rollback) {
      // Every chunk of the snapshot is zeroed (and a few new ones written), so that the rollback has
      // about as much to write as the restore.
      const plan = planWrites(rng, a, { fresh: rng.int(4, 12), repeat: 2, zero: a.chunks.size, partial: 2 });
      await t.write('bj', volumeId, plan.writes);
      target = volumeId;
      t.startOp();
      let acked = false;
      const call = send(t.world.sdk('bj'), 'PUT', `/v2/volume/${volumeId}`, { params: { rollback: '' }, body: { snapshotId: snap } }).then(() => {
        acked = true;
        deleteAfterAck();
      }, () => {});
      // Mostly once the rollback was accepted (its job runs then), sometimes while it is asked for.
      if (rng.chance(0.7)) {
        await call;
        await sleep(rng.int(0, Math.round(0.3 * restoreMs)));
      } else {
        await sleep(rng.int(0, Math.round(0.7 * restoreMs)));
      }
      const v = await t.volume('bj', volumeId).catch(() => null);
      await t.kill('restore-rollback', 'bj', v?.status !== 'Available' || !acked, v ? `disk ${v.status}` : '');
      await call;
      await t.restart('bj');
      const after = await t.settledVolume('bj', volumeId);
      if (after?.status === 'Available') {
        const d = await t.readDigest('bj', volumeId, [...a.digest().keys(), ...plan.image.digest().keys()]);
        if (digestKey(d) !== digestKey(a.digest())) {
          // Only a rollback that was never acknowledged may not have happened.
          if (acked) t.lost(`an acknowledged rollback of ${volumeId} did not happen: ${digestDiff(d, a.digest())}`);
          else if (digestKey(d) !== digestKey(plan.image.digest())) t.lost(`the disk ${volumeId} holds neither its rollback target nor what it held: ${digestDiff(d, a.digest())}`);
          else {
            await t.retrying(() => send(t.world.sdk('bj'), 'PUT', `/v2/volume/${volumeId}`, { params: { rollback: '' }, body: { snapshotId: snap } }), 'rollback retried');
          }
        }
      }
    } else {
      const token = newToken();
      t.startOp();
      let id: string | null = null;
      const call = t.newVolume('bj', { snapshotId: snap }, token).then((x) => {
        id = x;
        deleteAfterAck();
      }, () => {});
      await sleep(rng.int(0, Math.round(0.7 * restoreMs)));
      const v = id ? await t.volume('bj', id).catch(() => null) : null;
      await t.kill('restore-create', 'bj', v?.status !== 'Available', v ? `disk ${v.status}` : 'during the create call');
      await call;
      await t.restart('bj');
      id ??= await t.retrying(() => t.newVolume('bj', { snapshotId: snap }, token), 'volume create retried with its clientToken');
      target = id;
    }
    const v = await t.settledVolume('bj', target);
    if (v?.status !== 'Available') {
      t.lost(`the disk ${target} ${rollback ? 'rolled back to' : 'restored from'} ${snap} ended ${v?.status ?? 'Creating (timeout)'}`);
      return;
    }
    const d = await t.readDigest('bj', target, a.digest().keys());
    if (digestKey(d) !== digestKey(a.digest())) t.lost(`the disk ${target} ${rollback ? 'rolled back to' : 'restored from'} ${snap} across a crash holds other bytes: ${digestDiff(d, a.digest())}`);
    // Then a little more data and a snapshot: the disk's base after a restore cut by a crash must
    // not make that snapshot miss a chunk.
    const more = planWrites(rng, a, { fresh: rng.int(1, 6), repeat: 1, zero: rng.int(0, 3), partial: 1 });
    await t.write('bj', target, more.writes);
    const id = await t.createSnapshot('bj', target, 'after-restore', newToken());
    t.expect.set(id, { region: 'bj', label: 'after-restore', candidates: [more.image.digest()], mustSucceed: true, published: false, mayVanish: false });
  },
};

async function runTrial(index: number, seed: number, opts: { readMode: 'full' | 'extents'; strictWire: boolean; scale: number; keep: boolean; work: string }): Promise<TrialResult> {
  const { op, layout } = trialShape(seed);
  const started = Date.now();
  const result: TrialResult = { index, seed, op, layout, faults: [], dataLost: [], checksFailed: [], snapshotsVerified: 0, wire: null, durationMs: 0, notes: [], dataDir: null };
  const dir = join(opts.work, `trial-${seed}`);
  await rm(dir, { recursive: true, force: true });
  await mkdir(dir, { recursive: true });
  let world: World | null = null;
  let timer: NodeJS.Timeout | undefined;
  try {
    // Garbage collection every second with no grace, in every trial: whatever runs, runs beside it.
    world = await World.start(layout, dir, 1);
    const trial = new Trial(new Rng(seed), world, dir, opts.readMode, opts.strictWire, opts.scale, trialShape(seed).variant, result);
    trial.phase('start');
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`the trial did not finish in ${TRIAL_MS / 1000} s`)), TRIAL_MS);
    });
    await Promise.race([
      (async () => {
        // An operation that fails still gets the checks: they tell what the failure left behind.
        try {
          await operations[op](trial);
        } catch (e) {
          result.checksFailed.push(`harness: ${op}: ${(e as Error).message ?? e}`);
        }
        await trial.verify();
      })(),
      timeout,
    ]);
  } catch (e) {
    result.checksFailed.push(`harness: ${(e as Error).stack ?? e}`);
  } finally {
    clearTimeout(timer);
    const failed = result.dataLost.length > 0 || result.checksFailed.length > 0;
    if (failed && world) {
      await writeFile(join(dir, 'server-stderr.log'), world.logs()).catch(() => {});
    }
    await world?.dispose().catch(() => {});
    if (failed && opts.keep) result.dataDir = dir;
    else await rm(dir, { recursive: true, force: true });
    result.durationMs = Date.now() - started;
  }
  return result;
}
