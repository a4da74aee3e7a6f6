/**
 * A scaled region beside the embedded default, on real spawned `snapferry serve` processes over
 * loopback HTTP. Scaled bj: metadata in PostgreSQL, chunks in an S3 bucket (Ceph RGW), one
 * `--role api,storage` process and two `--role worker` processes from one data dir, deployed as in
 * test/e2e-scaled-postgres-s3.test.ts. Embedded: SQLite + a local chunk dir, one process per region.
 *
 *  a. Copy throughput: one snapshot of --size MiB of fresh random (incompressible) data, timed from
 *     the remote-copy request to Available at the destination: embedded bj -> embedded hkg and back
 *     (the default layout's baseline), scaled bj -> embedded hkg ("out of RGW"), embedded hkg ->
 *     scaled bj ("into RGW"); and each source's first snapshot (disk -> chunk store).
 *  b. API requests per second, signed as the SDKs sign (BceClient, bce-auth-v1), against the
 *     embedded bj (SQLite) and the scaled bj's api,storage process (PostgreSQL), same requests:
 *     GET /v2/volume/{id}, GET /v2/snapshot?maxKeys=100 (with --snapshots snapshots in the account),
 *     POST /v2/snapshot and DELETE /v2/snapshot/{id}; 1 and 16 callers, --seconds each.
 *     Also CPU time: of the server side (the snapferry processes and the PostgreSQL started here,
 *     from /proc; not RGW, which other users of the machine may share) per GiB copied or
 *     snapshotted, and per request, so a figure squeezed by a busy machine can still be judged.
 *  c. This machine's limits in the same run: SHA-256 of 1 MiB chunks on one core; raw RGW
 *     PutObject/GetObject of 1 MiB objects, 8 at once (the SDK alone: no index, no hashing); a
 *     PostgreSQL round trip (SELECT 1) and durable one-row commits, PostgreSQL and SQLite (WAL,
 *     synchronous=FULL, as the store sets it), one writer, on the disk the data dirs are on.
 *
 *   node --import tsx bench/scaled.ts [--size 512] [--seconds 5] [--snapshots 200]
 *
 * PostgreSQL: a durable server (fsync, synchronous_commit on) started here on a free loopback port
 * and stopped at the end, or SNAPFERRY_BENCH_PG_URL (a user that may create databases). S3:
 * SNAPFERRY_TEST_S3_* like the tests (`scripts/with-rgw.sh npm run bench`); without them the S3 part
 * (the scaled copies, the RGW limits) is skipped and the PostgreSQL API figures come from bj on
 * PostgreSQL + a local chunk dir in one process. Prints markdown tables; writes
 * bench/results-scaled.json. Every process started here is stopped by its pid at the end, also on
 * failure or Ctrl-C.
 */
process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';
process.env.SNAPFERRY_LOG_LEVEL ??= 'warn';

import { CreateBucketCommand, DeleteBucketCommand, DeleteObjectsCommand, GetObjectCommand, ListObjectsV2Command, PutObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import Database from 'better-sqlite3';
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { cpus, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import pg from 'pg';
import { createS3Client } from '../src/chunkstore/s3-client.ts';
import { BceClient } from '../src/lib/bce-client.ts';
import { mapLimit } from '../src/lib/map-limit.ts';
import { freshDatabase, startPostgres, stopPostgresSync, type PgServer } from '../test/helpers/postgres-server.ts';
import { freePortRange, spawnServer, type SpawnedServer } from '../test/helpers/spawned-server.ts';
import { MiB, timed } from './common.ts';

const { values } = parseArgs({
  options: { size: { type: 'string', default: '512' }, seconds: { type: 'string', default: '5' }, snapshots: { type: 'string', default: '200' } },
  strict: false,
  allowPositionals: true,
});
const SIZE_MIB = Number(values.size);
const SECONDS = Number(values.seconds);
const LIST_SNAPSHOTS = Number(values.snapshots);
if (!(SIZE_MIB >= 4 && SIZE_MIB % 4 === 0) || !(SECONDS > 0) || !(LIST_SNAPSHOTS >= 0)) {
  console.error('usage: node --import tsx bench/scaled.ts [--size MiB, a multiple of 4] [--seconds S] [--snapshots N]');
  process.exit(2);
}
const SIZE = SIZE_MIB * MiB;
const DISK_GB = Math.max(1, Math.ceil(SIZE_MIB / 1024));
/** Disks the write path's snapshots are spread over (BCC allows 512 manual snapshots per disk). */
const API_VOLUMES = 32;
const WRITE_PIECE = 4 * MiB;

const s3 = {
  endpoint: process.env.SNAPFERRY_TEST_S3_ENDPOINT ?? '',
  accessKeyId: process.env.SNAPFERRY_TEST_S3_ACCESS_KEY ?? '',
  secretAccessKey: process.env.SNAPFERRY_TEST_S3_SECRET_KEY ?? '',
  region: process.env.SNAPFERRY_TEST_S3_REGION ?? 'us-east-1',
};
const AK = 'bench-scaled-key-0000000';
const SK = 'bench-scaled-secret-11111111';
const REGION_SECRET = 'bench-scaled-region-secret';

// ---------------------------------------------------------------------------------------------
// Processes: every one started here is stopped at the end, also on failure and on Ctrl-C.

const spawned: SpawnedServer[] = [];
let pgServer: PgServer | null = null;
process.once('exit', () => {
  for (const s of spawned) {
    const pid = s.child.pid;
    if (pid && s.child.exitCode === null && s.child.signalCode === null) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        /* already gone */
      }
    }
  }
  if (pgServer) stopPostgresSync(pgServer);
});
for (const sig of ['SIGINT', 'SIGTERM'] as const) process.once(sig, () => process.exit(130));

async function spawn(opts: Parameters<typeof spawnServer>[0]): Promise<SpawnedServer> {
  const s = await spawnServer(opts);
  spawned.push(s);
  return s;
}

const CLK_TCK = ((): number => {
  try {
    return Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
  } catch {
    return 100;
  }
})();

/** `/proc/PID/stat` after the command name: [state, ppid, ...]; utime and stime are [11] and [12]. */
function procStat(pid: number | string): string[] | null {
  try {
    return readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
  } catch {
    return null; // gone
  }
}

/**
 * CPU seconds (user + system) used so far by the server side running now: the snapferry processes
 * started here and, when it was started here, the PostgreSQL server (postmaster and its backends).
 */
function serverCpuSeconds(): number {
  const pids: Array<number | string> = spawned.map((s) => s.child.pid!);
  if (pgServer) {
    pids.push(pgServer.pid);
    for (const entry of readdirSync('/proc')) if (/^\d+$/.test(entry) && procStat(entry)?.[1] === String(pgServer.pid)) pids.push(entry);
  }
  let ticks = 0;
  for (const pid of pids) {
    const f = procStat(pid);
    if (f) ticks += Number(f[11]) + Number(f[12]);
  }
  return ticks / CLK_TCK;
}

async function stopAll(): Promise<void> {
  // Workers first, then the processes they talk to.
  for (const s of [...spawned].reverse()) await s.stop().catch(() => s.crash());
  spawned.length = 0;
}

// ---------------------------------------------------------------------------------------------
// Helpers

const client = (url: string, connections = 16): BceClient => new BceClient(url, { accessKeyId: AK, secretAccessKey: SK }, { connections });
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function waitStatus(c: BceClient, kind: 'volume' | 'snapshot', id: string, timeoutMs = 30 * 60_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const body = await c.json<any>({ method: 'GET', path: `/v2/${kind}/${id}` });
    const status = body[kind].status as string;
    if (status === 'Available') return;
    if (status === 'CreatedFailed' || status === 'Error') throw new Error(`${kind} ${id} is ${status}: ${JSON.stringify(body[kind].lastError ?? body[kind])}`);
    if (Date.now() > deadline) throw new Error(`${kind} ${id} still ${status} after ${timeoutMs / 1000} s`);
    await sleep(25);
  }
}

async function createVolume(c: BceClient, name: string, sizeGB = DISK_GB): Promise<string> {
  const { volumeIds } = await c.json<{ volumeIds: string[] }>({ method: 'POST', path: '/v2/volume', json: { cdsSizeInGB: sizeGB, name } });
  await waitStatus(c, 'volume', volumeIds[0]!);
  return volumeIds[0]!;
}

async function createSnapshot(c: BceClient, volumeId: string, name: string): Promise<string> {
  const { snapshotId } = await c.json<{ snapshotId: string }>({ method: 'POST', path: '/v2/snapshot', json: { volumeId, snapshotName: name } });
  return snapshotId;
}

interface SourceSnapshot {
  snapshotId: string;
  writeMs: number;
  snapshotMs: number;
  snapshotCpuS: number;
}

/** A fresh disk written with SIZE bytes of fresh random data from offset 0, then its first snapshot (timed). */
async function randomDiskSnapshot(c: BceClient, name: string): Promise<SourceSnapshot> {
  const volumeId = await createVolume(c, name);
  const write = await timed(async () => {
    for (let at = 0; at < SIZE; at += WRITE_PIECE) {
      await c.json({ method: 'PUT', path: `/v2/volume/${volumeId}/data`, query: { offset: String(at) }, body: randomBytes(WRITE_PIECE) });
    }
  });
  const cpu = serverCpuSeconds();
  const snap = await timed(async () => {
    const id = await createSnapshot(c, volumeId, name);
    await waitStatus(c, 'snapshot', id);
    return id;
  });
  return { snapshotId: snap.value, writeMs: write.ms, snapshotMs: snap.ms, snapshotCpuS: serverCpuSeconds() - cpu };
}

/** Remote copy from the request to Available at the destination. */
async function copyMs(src: BceClient, dst: BceClient, snapshotId: string, destRegion: string): Promise<number> {
  return (await timed(async () => {
    const { result } = await src.json<any>({ method: 'PUT', path: `/v2/snapshot/remote_copy/${snapshotId}`, json: { destRegionInfos: [{ destRegion }] } });
    await waitStatus(dst, 'snapshot', result[0].snapshotId);
  })).ms;
}

interface CopyRow {
  direction: string;
  layout: string;
  sourceSnapshotMs: number;
  sourceSnapshotMiBps: number;
  copyMs: number;
  copyMiBps: number;
  diskWriteMiBps: number;
  /** CPU seconds of the server side (every snapferry process of both regions, PostgreSQL) per GiB, during the snapshot and during the copy. */
  sourceSnapshotCpuSPerGiB: number;
  copyCpuSPerGiB: number;
}

const rate = (ms: number): number => SIZE_MIB / (ms / 1000);

async function copyCase(direction: string, layout: string, src: BceClient, dst: BceClient, destRegion: string): Promise<CopyRow> {
  const source = await randomDiskSnapshot(src, `bench-${destRegion}-${randomBytes(2).toString('hex')}`);
  const cpu = serverCpuSeconds();
  const ms = await copyMs(src, dst, source.snapshotId, destRegion);
  const perGiB = (cpuS: number): number => cpuS / (SIZE_MIB / 1024);
  const row = {
    direction, layout, sourceSnapshotMs: source.snapshotMs, sourceSnapshotMiBps: rate(source.snapshotMs),
    copyMs: ms, copyMiBps: rate(ms), diskWriteMiBps: rate(source.writeMs),
    sourceSnapshotCpuSPerGiB: perGiB(source.snapshotCpuS), copyCpuSPerGiB: perGiB(serverCpuSeconds() - cpu),
  };
  console.error(`${direction} (${layout}): first snapshot ${row.sourceSnapshotMs.toFixed(0)} ms, copy ${row.copyMs.toFixed(0)} ms = ${row.copyMiBps.toFixed(0)} MiB/s`);
  return row;
}

// ---------------------------------------------------------------------------------------------
// API load

interface ApiRow {
  backend: 'SQLite' | 'PostgreSQL';
  request: string;
  callers: number;
  requests: number;
  seconds: number;
  perSecond: number;
  p50Ms: number;
  p99Ms: number;
  errors: number;
  /** CPU of the region's processes (and of this client) per successful request, over the timed window. */
  serverCpuMsPerRequest: number;
  clientCpuMsPerRequest: number;
  /** POST /v2/snapshot: how long after the window the last capture turned Available. */
  drainSeconds?: number;
}

const pct = (sorted: number[], p: number): number => (sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))]! : NaN);

/** Calls `op` from `callers` loops for SECONDS (or until `limit` calls were started). */
async function drive(callers: number, op: (i: number) => Promise<unknown>, limit = Infinity): Promise<{ latencies: number[]; ms: number; errors: number; firstError: string | null; serverCpuS: number; clientCpuS: number }> {
  const latencies: number[] = [];
  const serverCpu = serverCpuSeconds();
  const clientCpu = process.cpuUsage();
  let next = 0;
  let errors = 0;
  let firstError: string | null = null;
  const start = performance.now();
  const until = start + SECONDS * 1000;
  await Promise.all(Array.from({ length: callers }, async () => {
    while (performance.now() < until) {
      const i = next++;
      if (i >= limit) return;
      const t = performance.now();
      try {
        await op(i);
        latencies.push(performance.now() - t);
      } catch (e) {
        errors++;
        firstError ??= (e as Error).message;
      }
    }
  }));
  const ms = performance.now() - start;
  const client = process.cpuUsage(clientCpu);
  return { latencies, ms, errors, firstError, serverCpuS: serverCpuSeconds() - serverCpu, clientCpuS: (client.user + client.system) / 1e6 };
}

/** Waits until every snapshot in `ids` is Available (their captures run after the timed window). */
async function allAvailable(c: BceClient, ids: string[]): Promise<void> {
  let left = ids;
  const deadline = Date.now() + 30 * 60_000;
  while (left.length) {
    const still: string[] = [];
    await mapLimit(left, 8, async (id) => {
      const s = (await c.json<any>({ method: 'GET', path: `/v2/snapshot/${id}` })).snapshot;
      if (s.status === 'CreatedFailed') throw new Error(`snapshot ${id} failed: ${JSON.stringify(s.lastError)}`);
      if (s.status !== 'Available') still.push(id);
    });
    left = still;
    if (left.length && Date.now() > deadline) throw new Error(`${left.length} snapshots still not Available`);
    if (left.length) await sleep(200);
  }
}

async function apiBench(backend: ApiRow['backend'], url: string): Promise<ApiRow[]> {
  const c = client(url, 16);
  const rows: ApiRow[] = [];
  try {
    const vols: string[] = [];
    await mapLimit(Array.from({ length: API_VOLUMES }, (_, i) => i), 8, async (i) => void vols.push(await createVolume(c, `api-${i}`, 1)));
    const listed: string[] = [];
    await mapLimit(Array.from({ length: LIST_SNAPSHOTS }, (_, i) => i), 8, async (i) => void listed.push(await createSnapshot(c, vols[i % vols.length]!, `list-${i}`)));
    await allAvailable(c, listed);
    const total = (await c.json<any>({ method: 'GET', path: '/v2/snapshot', query: { maxKeys: '1000' } })).snapshots.length;
    results.accountSnapshots[backend] = total;
    console.error(`${backend}: ${vols.length} disks, ${total} snapshots in the account`);

    const record = (request: string, callers: number, r: Awaited<ReturnType<typeof drive>>): void => {
      const sorted = [...r.latencies].sort((a, b) => a - b);
      const row: ApiRow = {
        backend, request, callers, requests: sorted.length, seconds: r.ms / 1000, perSecond: sorted.length / (r.ms / 1000),
        p50Ms: pct(sorted, 0.5), p99Ms: pct(sorted, 0.99), errors: r.errors,
        serverCpuMsPerRequest: (r.serverCpuS * 1000) / sorted.length, clientCpuMsPerRequest: (r.clientCpuS * 1000) / sorted.length,
      };
      rows.push(row);
      console.error(`${backend}: ${request}, ${callers} caller(s): ${row.perSecond.toFixed(0)} req/s, p50 ${row.p50Ms.toFixed(1)} ms, p99 ${row.p99Ms.toFixed(1)} ms, `
        + `CPU per request: server ${row.serverCpuMsPerRequest.toFixed(2)} ms, client ${row.clientCpuMsPerRequest.toFixed(2)} ms` +
        `${r.errors ? `, ${r.errors} errors (${r.firstError})` : ''}`);
    };

    const getVolume = (i: number) => c.json({ method: 'GET', path: `/v2/volume/${vols[i % vols.length]}` });
    const listPage = () => c.json({ method: 'GET', path: '/v2/snapshot', query: { maxKeys: '100' } });
    // Warm-up (JIT, connection pools), not timed.
    await Promise.all(Array.from({ length: 200 }, (_, i) => (i % 2 ? getVolume(i) : listPage())));

    for (const callers of [1, 16]) record('GET /v2/volume/{id}', callers, await drive(callers, getVolume));
    for (const callers of [1, 16]) record('GET /v2/snapshot?maxKeys=100', callers, await drive(callers, listPage));
    for (const callers of [1, 16]) {
      const created: string[] = [];
      const cpu = serverCpuSeconds();
      record('POST /v2/snapshot', callers, await drive(callers, async (i) => {
        created.push(await createSnapshot(c, vols[i % vols.length]!, `w-${callers}-${i}`));
      }));
      const windowEnd = performance.now();
      // A snapshot can be deleted once Available. Its capture (a job) runs meanwhile and after the
      // window; the POST row's server CPU is counted until every capture is done, so it is the cost
      // of a snapshot of an unchanged disk, request and capture.
      await allAvailable(c, created);
      const post = rows[rows.length - 1]!;
      post.drainSeconds = (performance.now() - windowEnd) / 1000;
      post.serverCpuMsPerRequest = ((serverCpuSeconds() - cpu) * 1000) / post.requests;
      record('DELETE /v2/snapshot/{id}', callers, await drive(callers, (i) => c.json({ method: 'DELETE', path: `/v2/snapshot/${created[i]}` }), created.length));
    }
  } finally {
    await c.close();
  }
  return rows;
}

// ---------------------------------------------------------------------------------------------
// The machine's limits

function sha256Limit(): number {
  const chunks = Array.from({ length: 64 }, () => randomBytes(MiB));
  const start = performance.now();
  let n = 0;
  while (performance.now() - start < 2000) for (const c of chunks) (createHash('sha256').update(c).digest(), n++);
  return n / ((performance.now() - start) / 1000);
}

/** Calls `op` for 2 s in a loop; calls per second and the median latency. */
async function loop(op: () => unknown): Promise<{ perSecond: number; p50Ms: number }> {
  const lat: number[] = [];
  const start = performance.now();
  while (performance.now() - start < 2000) {
    const t = performance.now();
    await op();
    lat.push(performance.now() - t);
  }
  return { perSecond: lat.length / ((performance.now() - start) / 1000), p50Ms: pct(lat.sort((a, b) => a - b), 0.5) };
}

async function pgLimits(url: string): Promise<{ roundTrip: { perSecond: number; p50Ms: number }; commit: { perSecond: number; p50Ms: number } }> {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    await c.query('CREATE TABLE bench_commit (id bigserial PRIMARY KEY, v text)');
    const roundTrip = await loop(() => c.query('SELECT 1'));
    const commit = await loop(() => c.query('INSERT INTO bench_commit (v) VALUES ($1)', ['x']));
    await c.query('DROP TABLE bench_commit');
    return { roundTrip, commit };
  } finally {
    await c.end();
  }
}

async function sqliteCommitLimit(dir: string): Promise<{ perSecond: number; p50Ms: number }> {
  const db = new Database(join(dir, 'commit.db'));
  try {
    db.pragma('journal_mode = WAL');
    db.pragma('synchronous = FULL');
    db.exec('CREATE TABLE bench_commit (id INTEGER PRIMARY KEY, v TEXT)');
    const insert = db.prepare('INSERT INTO bench_commit (v) VALUES (?)');
    return await loop(() => insert.run('x'));
  } finally {
    db.close();
  }
}

async function rgwLimits(s3c: S3Client, bucket: string): Promise<{ putMiBps: number; getMiBps: number }> {
  const count = 128;
  const objs = Array.from({ length: count }, (_, i) => ({ key: `raw/${i}`, data: randomBytes(MiB) }));
  const put = await timed(() => mapLimit(objs, 8, async (o) => void (await s3c.send(new PutObjectCommand({ Bucket: bucket, Key: o.key, Body: o.data })))));
  const get = await timed(() => mapLimit(objs, 8, async (o) => void (await (await s3c.send(new GetObjectCommand({ Bucket: bucket, Key: o.key }))).Body!.transformToByteArray())));
  await s3c.send(new DeleteObjectsCommand({ Bucket: bucket, Delete: { Objects: objs.map((o) => ({ Key: o.key })) } }));
  return { putMiBps: count / (put.ms / 1000), getMiBps: count / (get.ms / 1000) };
}

async function emptyAndDeleteBucket(s3c: S3Client, bucket: string): Promise<void> {
  for (;;) {
    const page = await s3c.send(new ListObjectsV2Command({ Bucket: bucket, MaxKeys: 1000 }));
    if (!page.Contents?.length) break;
    await s3c.send(new DeleteObjectsCommand({ Bucket: bucket, Delete: { Objects: page.Contents.map((o) => ({ Key: o.Key! })) } }));
  }
  await s3c.send(new DeleteBucketCommand({ Bucket: bucket }));
}

// ---------------------------------------------------------------------------------------------
// The run

const hasS3 = s3.endpoint !== '';
if (!hasS3) {
  console.log('S3 part skipped: SNAPFERRY_TEST_S3_ENDPOINT is not set. To include the copies into and out of Ceph RGW, run through '
    + '`scripts/with-rgw.sh npm run bench` (or `scripts/with-rgw.sh node --import tsx bench/scaled.ts`). Measuring the API on PostgreSQL only.');
}

const root = await mkdtemp(join(tmpdir(), 'snapferry-bench-scaled-'));
const results: {
  date: string; node: string; cpus: number; sizeMiB: number; secondsPerApiCase: number; listSnapshots: number; s3Endpoint: string | null;
  loadAverageAtStart: number[]; loadAverageAtEnd?: number[];
  limits: {
    sha256MiBpsOneCore: number; rgwPutMiBps?: number; rgwGetMiBps?: number;
    pgRoundTrip?: { perSecond: number; p50Ms: number }; pgCommit?: { perSecond: number; p50Ms: number }; sqliteCommit?: { perSecond: number; p50Ms: number };
  };
  copies: CopyRow[]; api: ApiRow[]; accountSnapshots: Record<string, number>;
} = {
  date: new Date().toISOString(), node: process.version, cpus: cpus().length, sizeMiB: SIZE_MIB, secondsPerApiCase: SECONDS, listSnapshots: LIST_SNAPSHOTS,
  s3Endpoint: hasS3 ? s3.endpoint : null, loadAverageAtStart: loadavg(), limits: { sha256MiBpsOneCore: 0 }, copies: [], api: [], accountSnapshots: {},
};
let s3c: S3Client | null = null;
let bucket: string | null = null;
let db: { url: string; drop(): Promise<void> } | null = null;

try {
  results.limits.sha256MiBpsOneCore = sha256Limit();
  console.error(`SHA-256, one core: ${results.limits.sha256MiBpsOneCore.toFixed(0)} MiB/s`);
  pgServer = process.env.SNAPFERRY_BENCH_PG_URL ? null : await startPostgres({ durable: true });
  db = await freshDatabase(process.env.SNAPFERRY_BENCH_PG_URL ?? pgServer!.url);
  const pgl = await pgLimits(db.url);
  results.limits.pgRoundTrip = pgl.roundTrip;
  results.limits.pgCommit = pgl.commit;
  results.limits.sqliteCommit = await sqliteCommitLimit(root);
  console.error(`PostgreSQL SELECT 1: ${pgl.roundTrip.perSecond.toFixed(0)}/s; durable commit: PostgreSQL ${pgl.commit.perSecond.toFixed(0)}/s, SQLite ${results.limits.sqliteCommit.perSecond.toFixed(0)}/s`);
  if (hasS3) {
    s3c = createS3Client(s3);
    bucket = `snapferry-bench-scaled-${Date.now().toString(36)}-${randomBytes(2).toString('hex')}`;
    await s3c.send(new CreateBucketCommand({ Bucket: bucket }));
    const l = await rgwLimits(s3c, bucket);
    results.limits.rgwPutMiBps = l.putMiBps;
    results.limits.rgwGetMiBps = l.getMiBps;
    console.error(`RGW raw, 1 MiB objects, 8 at once: PUT ${l.putMiBps.toFixed(0)} MiB/s, GET ${l.getMiBps.toFixed(0)} MiB/s`);
  }

  const accounts = [{ accountId: 'bench', accessKeyId: AK, secretAccessKey: SK }];
  const pair = async (): Promise<[number, number]> => {
    const a = await freePortRange(1);
    let b = await freePortRange(1);
    while (b === a) b = await freePortRange(1);
    return [a, b];
  };

  // Phase 1: the embedded default, bj and hkg each in a process of its own.
  {
    const dir = join(root, 'embedded');
    await mkdir(dir, { recursive: true });
    const config = join(dir, 'snapferry.json');
    await writeFile(config, JSON.stringify({ regions: { bj: {}, hkg: {} }, accounts, regionSecret: REGION_SECRET }));
    const [bjPort, hkgPort] = await pair();
    const hkg = await spawn({ regions: ['hkg'], port: hkgPort, dataDir: join(dir, 'hkg-data'), extraArgs: ['--config', config, '--peer', `bj=http://127.0.0.1:${bjPort}`] });
    const bj = await spawn({ regions: ['bj'], port: bjPort, dataDir: join(dir, 'bj-data'), extraArgs: ['--config', config, '--peer', `hkg=${hkg.urls.hkg}`] });
    const [bjc, hkgc] = [client(bj.urls.bj!), client(hkg.urls.hkg!)];
    try {
      results.copies.push(await copyCase('bj -> hkg', 'embedded -> embedded', bjc, hkgc, 'hkg'));
      results.copies.push(await copyCase('hkg -> bj', 'embedded -> embedded', hkgc, bjc, 'bj'));
    } finally {
      await bjc.close();
      await hkgc.close();
    }
    results.api.push(...(await apiBench('SQLite', bj.urls.bj!)));
    await stopAll();
  }

  // Phase 2: bj on PostgreSQL (+ RGW when there is one), hkg embedded.
  {
    const dir = join(root, 'scaled');
    await mkdir(dir, { recursive: true });
    const config = join(dir, 'snapferry.json');
    const chunkStore = hasS3 ? { type: 's3', endpoint: s3.endpoint, bucket, prefix: '', region: s3.region, forcePathStyle: true } : { type: 'local' };
    await writeFile(config, JSON.stringify({
      regions: { bj: { metadata: { type: 'postgres', url: db!.url }, chunkStore }, hkg: {} },
      accounts, regionSecret: REGION_SECRET,
    }));
    // The S3 keys come from the environment, as documented.
    const bjEnv = { SNAPFERRY_BJ_S3_ACCESS_KEY_ID: s3.accessKeyId, SNAPFERRY_BJ_S3_SECRET_ACCESS_KEY: s3.secretAccessKey };
    if (hasS3) {
      const [bjPort, hkgPort] = await pair();
      const hkg = await spawn({ regions: ['hkg'], port: hkgPort, dataDir: join(dir, 'hkg-data'), extraArgs: ['--config', config, '--peer', `bj=http://127.0.0.1:${bjPort}`] });
      const bjArgs = (role: string): string[] => ['--config', config, '--role', role, '--peer', `hkg=${hkg.urls.hkg}`];
      const api = await spawn({ regions: ['bj'], port: bjPort, dataDir: join(dir, 'bj-data'), env: bjEnv, extraArgs: bjArgs('api,storage') });
      for (let i = 0; i < 2; i++) await spawn({ regions: ['bj'], dataDir: join(dir, 'bj-data'), env: bjEnv, extraArgs: bjArgs('worker') });
      const [bjc, hkgc] = [client(api.urls.bj!), client(hkg.urls.hkg!)];
      try {
        results.copies.push(await copyCase('bj -> hkg, out of RGW', 'scaled (PG + RGW, api,storage + 2 workers) -> embedded', bjc, hkgc, 'hkg'));
        results.copies.push(await copyCase('hkg -> bj, into RGW', 'embedded -> scaled (PG + RGW)', hkgc, bjc, 'bj'));
      } finally {
        await bjc.close();
        await hkgc.close();
      }
      results.api.push(...(await apiBench('PostgreSQL', api.urls.bj!)));
    } else {
      // No bucket: PostgreSQL with a local chunk dir, which runs only as one process with every role.
      const bj = await spawn({ regions: ['bj'], dataDir: join(dir, 'bj-data'), extraArgs: ['--config', config] });
      results.api.push(...(await apiBench('PostgreSQL', bj.urls.bj!)));
    }
    await stopAll();
  }
} finally {
  await stopAll();
  if (s3c && bucket) await emptyAndDeleteBucket(s3c, bucket).catch((e) => console.error(`could not remove bucket ${bucket}: ${(e as Error).message}`));
  s3c?.destroy();
  await db?.drop().catch(() => undefined);
  await pgServer?.stop();
  pgServer = null;
  await rm(root, { recursive: true, force: true });
}

results.loadAverageAtEnd = loadavg();
await writeFile(new URL('./results-scaled.json', import.meta.url), `${JSON.stringify(results, null, 2)}\n`);

// ---------------------------------------------------------------------------------------------
// Tables

const f0 = (x: number | undefined): string => (x === undefined || Number.isNaN(x) ? '-' : x.toFixed(0));
const f1 = (x: number): string => (Number.isNaN(x) ? '-' : x < 10 ? x.toFixed(2) : x.toFixed(1));
const load = (l: number[]): string => l.map((x) => x.toFixed(1)).join(' ');
console.log(`\n${SIZE_MIB} MiB of fresh random data per snapshot; ${cpus().length} cores, Node ${process.version}${hasS3 ? `, S3 ${s3.endpoint}` : ''}; `
  + `load average ${load(results.loadAverageAtStart)} at start, ${load(results.loadAverageAtEnd)} at the end\n`);
const lim = results.limits;
const perS = (x: { perSecond: number; p50Ms: number } | undefined): string => (x ? `${f0(x.perSecond)}/s (p50 ${f1(x.p50Ms)} ms)` : '-');
console.log('| machine limit, same run | |');
console.log('|---|---:|');
console.log(`| SHA-256 of 1 MiB chunks, one core | ${f0(lim.sha256MiBpsOneCore)} MiB/s |`);
if (hasS3) {
  console.log(`| RGW PutObject, 1 MiB objects, 8 at once (raw SDK) | ${f0(lim.rgwPutMiBps)} MiB/s |`);
  console.log(`| RGW GetObject, 1 MiB objects, 8 at once (raw SDK) | ${f0(lim.rgwGetMiBps)} MiB/s |`);
}
console.log(`| PostgreSQL round trip (SELECT 1), 1 client | ${perS(lim.pgRoundTrip)} |`);
console.log(`| durable one-row commit, 1 writer: PostgreSQL (fsync on) | ${perS(lim.pgCommit)} |`);
console.log(`| durable one-row commit, 1 writer: SQLite (WAL, synchronous=FULL) | ${perS(lim.sqliteCommit)} |`);
console.log('\n| copy | layout | first snapshot at the source (disk -> chunk store) | remote copy, request to Available | server CPU s per GiB (snapferry + PostgreSQL): snapshot / copy |');
console.log('|---|---|---:|---:|---:|');
for (const r of results.copies) {
  console.log(`| ${r.direction} | ${r.layout} | ${f0(r.sourceSnapshotMs)} ms, ${f0(r.sourceSnapshotMiBps)} MiB/s | ${f0(r.copyMs)} ms, **${f0(r.copyMiBps)} MiB/s** | `
    + `${f1(r.sourceSnapshotCpuSPerGiB)} / ${f1(r.copyCpuSPerGiB)} |`);
}
const cell = (backend: string, request: string, callers: number): string => {
  const r = results.api.find((x) => x.backend === backend && x.request === request && x.callers === callers);
  return r ? `${f0(r.perSecond)} (${f1(r.p50Ms)} / ${f1(r.p99Ms)})${r.errors ? `, ${r.errors} errors` : ''}` : '-';
};
console.log(`\n| request (req/s, p50 / p99 ms; ${SECONDS} s each) | SQLite, 1 caller | SQLite, 16 callers | PostgreSQL, 1 caller | PostgreSQL, 16 callers |`);
console.log('|---|---:|---:|---:|---:|');
for (const request of [...new Set(results.api.map((r) => r.request))]) {
  console.log(`| ${request} | ${cell('SQLite', request, 1)} | ${cell('SQLite', request, 16)} | ${cell('PostgreSQL', request, 1)} | ${cell('PostgreSQL', request, 16)} |`);
}
const cpuCell = (backend: string, request: string, callers: number): string => {
  const r = results.api.find((x) => x.backend === backend && x.request === request && x.callers === callers);
  return r ? `${f1(r.serverCpuMsPerRequest)} / ${f1(r.clientCpuMsPerRequest)}` : '-';
};
console.log('\n| CPU ms per request: server (snapferry + PostgreSQL) / this client | SQLite, 1 caller | SQLite, 16 callers | PostgreSQL, 1 caller | PostgreSQL, 16 callers |');
console.log('|---|---:|---:|---:|---:|');
for (const request of [...new Set(results.api.map((r) => r.request))]) {
  console.log(`| ${request} | ${cpuCell('SQLite', request, 1)} | ${cpuCell('SQLite', request, 16)} | ${cpuCell('PostgreSQL', request, 1)} | ${cpuCell('PostgreSQL', request, 16)} |`);
}
const deletes = results.api.filter((r) => r.request.startsWith('DELETE'));
const posts = results.api.filter((r) => r.request.startsWith('POST'));
console.log(`\nPOST /v2/snapshot: unchanged empty disks (${API_VOLUMES}, round robin); their captures run meanwhile, in the storage process; `
  + `the last was Available ${posts.map((r) => `${f1(r.drainSeconds ?? NaN)} s`).join(', ')} after the window (server CPU counted until then). `
  + `DELETE: the snapshots the POST row just created, once Available, until none is left (${deletes.map((r) => `${r.requests} in ${r.seconds.toFixed(1)} s`).join(', ')}). `
  + `Snapshots in the account for the list: ${Object.entries(results.accountSnapshots).map(([k, v]) => `${k} ${v}`).join(', ')}.`);
