/**
 * A scaled region, as an operator deploys it: bj keeps its metadata in a real PostgreSQL and its
 * chunks in a real Ceph RGW bucket, and runs as three `snapferry serve` processes from one data dir
 * (one `--role api,storage`, two `--role worker`); hkg is the embedded default in a process of its
 * own. bj's way to hkg runs through a counting proxy, so the bytes on the wire are measured.
 *
 * What a user of the deployment would notice: copies are sent by the workers (never twice, spread
 * over both), a worker killed mid-copy hands the copy to the other without resending what arrived,
 * copies in both directions restore bit-identical, and the snapshots' chunks are objects in the
 * bucket. Also: a misconfigured region (no bucket, wrong keys, no database) fails its start with a
 * sentence saying what is wrong.
 *
 * Needs SNAPFERRY_TEST_PG_URL and SNAPFERRY_TEST_S3_*: `npm test` starts throwaway servers itself.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CreateBucketCommand, DeleteBucketCommand, DeleteObjectsCommand, HeadObjectCommand, ListObjectsV2Command, S3Client } from '@aws-sdk/client-s3';
import { SENDS_PER_COPY } from '../src/replication/copy-job.ts';
import { assertRestoredIdentical, httpDiskReader, MiB } from './helpers/copy-fixtures.ts';
import { copyTo, freshChunks, snapshotOf } from './helpers/e2e-copy.ts';
import { startFaultProxy, type FaultProxy } from './helpers/fault-proxy.ts';
import { metric } from './helpers/metrics.ts';
import { admin, freshDatabase, pgTestUrl } from './helpers/postgres-server.ts';
import { BceClient } from '../src/lib/bce-client.ts';
import { send, sdkClient, sendError, until, waitSnapshot, waitVolume } from './helpers/sdk.ts';
import { freePortRange, spawnServer, type SpawnedServer } from './helpers/spawned-server.ts';

const BIN = new URL('../bin/snapferry.js', import.meta.url).pathname;
const AK = 'scaled-tenant-key-000000';
const SK = 'scaled-tenant-secret-1111111';
const tenant = { ak: AK, sk: SK };
const s3 = {
  endpoint: process.env.SNAPFERRY_TEST_S3_ENDPOINT ?? '',
  accessKeyId: process.env.SNAPFERRY_TEST_S3_ACCESS_KEY ?? '',
  secretAccessKey: process.env.SNAPFERRY_TEST_S3_SECRET_KEY ?? '',
  region: process.env.SNAPFERRY_TEST_S3_REGION ?? 'us-east-1',
};
const skip =
  process.env.SNAPFERRY_SKIP_PG === '1' || process.env.SNAPFERRY_SKIP_S3 === '1'
    ? 'SNAPFERRY_SKIP_PG or SNAPFERRY_SKIP_S3 is set'
    : false;

describe('a region on PostgreSQL + Ceph RGW with api,storage and two worker processes', { skip }, () => {
  let pgUrl: string;
  let db: { url: string; drop(): Promise<void> };
  let bucket: string;
  let s3admin: S3Client;
  let dir: string;
  let configFile: string;
  let proxy: FaultProxy;
  let hkg: SpawnedServer;
  let api: SpawnedServer;
  /** A second api process without the storage role: disks' bytes reach it through forwarding. */
  let apiOnly: SpawnedServer;
  const workers: SpawnedServer[] = [];
  const bjEnv = (): Record<string, string> => ({ SNAPFERRY_BJ_S3_ACCESS_KEY_ID: s3.accessKeyId, SNAPFERRY_BJ_S3_SECRET_ACCESS_KEY: s3.secretAccessKey });

  before(async () => {
    if (!s3.endpoint) throw new Error('SNAPFERRY_TEST_S3_ENDPOINT is not set: run through npm test (it starts Ceph RGW), or set SNAPFERRY_SKIP_S3=1');
    pgUrl = pgTestUrl()!;
    db = await freshDatabase(pgUrl);
    bucket = `snapferry-scaled-${Date.now().toString(36)}-${randomBytes(3).toString('hex')}`;
    s3admin = new S3Client({ endpoint: s3.endpoint, region: s3.region, forcePathStyle: true, credentials: { accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey } });
    await s3admin.send(new CreateBucketCommand({ Bucket: bucket }));
    dir = await mkdtemp(join(tmpdir(), 'snapferry-scaled-'));
    const [hkgPort, bjPort] = [await freePortRange(1), await freePortRange(1)];
    proxy = await startFaultProxy(hkgPort);
    configFile = join(dir, 'snapferry.json');
    // The S3 keys come from the environment (SNAPFERRY_BJ_S3_*), not the file: as documented.
    await writeFile(configFile, JSON.stringify({
      regions: {
        bj: {
          metadata: { type: 'postgres', url: db.url },
          chunkStore: { type: 's3', endpoint: s3.endpoint, bucket, prefix: '', region: s3.region, forcePathStyle: true },
        },
        hkg: {},
      },
      accounts: [{ accountId: 'scaled-tenant', accessKeyId: AK, secretAccessKey: SK }],
      regionSecret: 'scaled-test-region-secret',
      jobLeaseSeconds: 3,
      // No grace and a round every second: GC-2 across processes rests on the holds and roots in the
      // database alone, and every test below runs beside a collection.
      gcGraceSeconds: 0,
      gcIntervalSeconds: 1,
    }));
    hkg = await spawnServer({ regions: ['hkg'], port: hkgPort, dataDir: join(dir, 'hkg-data'), extraArgs: ['--config', configFile, '--peer', `bj=http://127.0.0.1:${bjPort}`] });
    const bjArgs = (role: string): string[] => ['--config', configFile, '--role', role, '--peer', `hkg=${proxy.url}`];
    // All three bj processes run from one data dir: only the storage process owns something there.
    api = await spawnServer({ regions: ['bj'], port: bjPort, dataDir: join(dir, 'bj-data'), env: bjEnv(), extraArgs: bjArgs('api,storage') });
    // Its own data dir: nothing of a disk is reachable to it except through the storage process.
    apiOnly = await spawnServer({ regions: ['bj'], dataDir: join(dir, 'bj-api-data'), env: bjEnv(), extraArgs: bjArgs('api') });
    for (let i = 0; i < 2; i++) workers.push(await spawnServer({ regions: ['bj'], dataDir: join(dir, 'bj-data'), env: bjEnv(), extraArgs: bjArgs('worker') }));
  });

  after(async () => {
    for (const s of [...workers, apiOnly, api, hkg]) await s?.dispose();
    await proxy?.close();
    if (s3admin && bucket) {
      for (;;) {
        const page = await s3admin.send(new ListObjectsV2Command({ Bucket: bucket }));
        if (!page.Contents?.length) break;
        await s3admin.send(new DeleteObjectsCommand({ Bucket: bucket, Delete: { Objects: page.Contents.map((o) => ({ Key: o.Key! })) } }));
      }
      await s3admin.send(new DeleteBucketCommand({ Bucket: bucket })).catch(() => undefined);
      s3admin.destroy();
    }
    await db?.drop();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  const bjUrl = (): string => api.urls.bj!;
  const sentBy = async (s: SpawnedServer): Promise<number> => metric(s.urls.bj!, 'snapferry_replication_chunks_sent_total', { destination: 'hkg' });
  const copyJobs = async (): Promise<Array<{ key: string; attempts: number; state: string }>> =>
    (await admin(db.url, "SELECT key, attempts, state FROM jobs WHERE kind = 'snapshot.copy' ORDER BY id")).rows;

  /** The copy job's final record: the source records `done` a moment after the destination's commit. */
  async function finishedJob(copyId: string): Promise<{ key: string; attempts: number; state: string }> {
    return until(async () => (await copyJobs()).find((j) => j.key.endsWith(`:${copyId}`) && (j.state === 'done' || j.state === 'failed')), 30_000, `the copy job of ${copyId} to finish`);
  }

  async function inBucket(ids: Iterable<string>): Promise<number> {
    let n = 0;
    for (const id of ids) {
      try {
        await s3admin.send(new HeadObjectCommand({ Bucket: bucket, Key: `chunks/${id.slice(0, 2)}/${id}` }));
        n++;
      } catch {
        /* not there */
      }
    }
    return n;
  }

  async function assertRestores(url: string, snapshotId: string, chunks: Buffer[]): Promise<void> {
    const reader = httpDiskReader(url, (check) => until(check, 120_000, 'restore'), tenant);
    try {
      await assertRestoredIdentical(reader, snapshotId, chunks, MiB);
    } catch (e) {
      throw new Error(`${(e as Error).message}\n${await whyRestoresFailed()}`, { cause: e });
    } finally {
      await reader.close();
    }
  }

  /** What a failed restore leaves to read: the failed disks' reasons and every process's error lines. */
  async function whyRestoresFailed(): Promise<string> {
    const failed = (await admin(db.url, "SELECT id, last_error FROM volumes WHERE status = 'Error'")).rows;
    const processes: Array<[string, SpawnedServer]> = [['api,storage', api], ['api', apiOnly], ...workers.map((w, i): [string, SpawnedServer] => [`worker ${i}`, w]), ['hkg', hkg]];
    const lines = processes.flatMap(([name, s]) => s.stderr().split('\n').filter((l) => /"level":"(error|warn)"/.test(l)).slice(-20).map((l) => `${name}: ${l}`));
    return `disks in Error: ${JSON.stringify(failed)}\n${lines.join('\n')}`;
  }

  test('every process answers /healthz; the workers serve no BCC API', async () => {
    for (const s of [api, ...workers]) assert.equal((await fetch(`${s.urls.bj}/healthz`)).status, 200);
    const res = await fetch(`${workers[0]!.urls.bj}/v2/volume`);
    assert.equal(res.status, 404);
    const body = await res.json() as { code: string; requestId: string };
    assert.equal(body.code, 'NoSuchRoute');
    assert.ok(body.requestId);
  });

  test('housekeeping runs in one worker at a time', async () => {
    await until(async () => workers.some((w) => w.stderr().includes('"garbage collection done"')), 30_000, 'a housekeeping round');
    await new Promise((r) => setTimeout(r, 4000));
    const rounds = workers.map((w) => w.stderr().split('\n').filter((l) => l.includes('"garbage collection done"')).length);
    assert.ok(rounds.filter((n) => n > 0).length === 1 && Math.max(...rounds) >= 3, `rounds per worker: ${rounds.join(', ')}`);
    const idle = workers[rounds.indexOf(0)]!;
    assert.match(idle.stderr(), /housekeeping skipped: another process of the region runs it now/);
  });

  test('garbage collection in a worker, looping with no grace beside a snapshot and copies both ways: nothing is lost', async () => {
    const gcClient = new BceClient(workers[1]!.urls.bj!, { accessKeyId: 'snapferry-region-bj', secretAccessKey: 'scaled-test-region-secret' });
    let collecting = true;
    let runs = 0;
    const loop = (async () => {
      while (collecting) {
        await gcClient.json({ method: 'POST', path: '/internal/v1/admin/gc' });
        runs++;
      }
    })();
    try {
      const out = freshChunks(48, 4, randomBytes);
      const snapshotId = await snapshotOf(bjUrl(), tenant, out.chunks, 'gc-beside');
      const copyOut = await copyTo(bjUrl(), tenant, snapshotId, 'hkg');
      const inbound = freshChunks(32, 0, randomBytes);
      const hkgSnap = await snapshotOf(hkg.urls.hkg!, tenant, inbound.chunks, 'gc-inbound');
      const copyIn = await copyTo(hkg.urls.hkg!, tenant, hkgSnap, 'bj');
      await waitSnapshot(sdkClient(hkg.urls.hkg!, AK, SK), copyOut, 120_000);
      await waitSnapshot(sdkClient(bjUrl(), AK, SK), copyIn, 120_000);
      collecting = false;
      await loop;
      assert.ok(runs >= 3, `${runs} collections ran beside the work`);
      await assertRestores(bjUrl(), snapshotId, out.chunks);
      await assertRestores(hkg.urls.hkg!, copyOut, out.chunks);
      await assertRestores(bjUrl(), copyIn, inbound.chunks);
    } finally {
      collecting = false;
      await loop.catch(() => undefined);
      await gcClient.close();
    }
  });

  test('through an api process without disks: a disk is created, written, read and deleted on the storage process', async () => {
    const sdk = sdkClient(apiOnly.urls.bj!, AK, SK);
    const [volumeId] = (await send(sdk, 'POST', '/v2/volume', { body: { cdsSizeInGB: 1, name: 'forwarded' } })).volumeIds;
    await waitVolume(sdk, volumeId);
    const data = randomBytes(3 * MiB + 512);
    const viaApiOnly = new BceClient(apiOnly.urls.bj!, { accessKeyId: AK, secretAccessKey: SK });
    const viaStorage = new BceClient(bjUrl(), { accessKeyId: AK, secretAccessKey: SK });
    try {
      await viaApiOnly.json({ method: 'PUT', path: `/v2/volume/${volumeId}/data`, query: { offset: String(5 * MiB) }, body: data });
      for (const client of [viaApiOnly, viaStorage]) {
        const res = await client.send({ method: 'GET', path: `/v2/volume/${volumeId}/data`, headers: { range: `bytes=${5 * MiB}-${5 * MiB + data.length - 1}` } });
        assert.ok(Buffer.from(await res.body.arrayBuffer()).equals(data), 'the bytes written through one api process read back through both');
      }
      // Another account's view through the forwarding process: the disk does not exist.
      const other = await sendError(sdkClient(apiOnly.urls.bj!, 'scaled-other-key-0000000', 'scaled-other-secret-111111'), 'GET', `/v2/volume/${volumeId}/data`);
      assert.equal(other.status, 403, 'an unknown key is refused'); // (no second account is configured: InvalidAccessKeyId)
      await send(sdk, 'DELETE', `/v2/volume/${volumeId}`);
      await until(async () => (await sendError(sdk, 'GET', `/v2/volume/${volumeId}`)).status === 404, 30_000, 'the delete');
    } finally {
      await viaApiOnly.close();
      await viaStorage.close();
    }
  });

  test('the same clientToken sent to two api processes at once creates one disk', async () => {
    const token = `twice-${randomBytes(4).toString('hex')}`;
    const body = { cdsSizeInGB: 1, name: 'once' };
    const answers = await Promise.all([api, apiOnly].map((s) => send(sdkClient(s.urls.bj!, AK, SK), 'POST', `/v2/volume`, { body, params: { clientToken: token } })));
    assert.deepEqual(answers[0].volumeIds, answers[1].volumeIds);
    const named = (await admin(db.url, "SELECT count(*)::int AS n FROM volumes WHERE name = 'once'")).rows[0].n;
    assert.equal(named, 1);
    const jobs = (await admin(db.url, "SELECT count(*)::int AS n FROM jobs WHERE key = $1", [`volume.create:${answers[0].volumeIds[0]}`])).rows[0].n;
    assert.equal(jobs, 1);
    await waitVolume(sdkClient(bjUrl(), AK, SK), answers[0].volumeIds[0]);
  });

  test('a snapshot in bj is objects in the bucket; a worker copies it to hkg, where it restores bit-identical', async () => {
    const { chunks, distinct } = freshChunks(40, 8, randomBytes);
    const snapshotId = await snapshotOf(bjUrl(), tenant, chunks, 'scaled-out');
    assert.equal(await inBucket(distinct), distinct.size, 'every chunk of the snapshot is an object in the bucket');
    const before = await Promise.all(workers.map(sentBy));
    proxy.resetCounts();
    const copyId = await copyTo(bjUrl(), tenant, snapshotId, 'hkg');
    await waitSnapshot(sdkClient(hkg.urls.hkg!, AK, SK), copyId);
    const sent = (await Promise.all(workers.map(sentBy))).map((n, i) => n - before[i]!);
    assert.equal(sent[0]! + sent[1]!, distinct.size, `the workers sent each chunk once (${sent.join(' + ')})`);
    assert.equal(await sentBy(api), 0, 'the api,storage process runs no copy');
    await assertRestores(hkg.urls.hkg!, copyId, chunks);
  });

  test('eight copies requested at once run on both workers, none done twice', async () => {
    const snaps: Array<{ id: string; distinct: Set<string> }> = [];
    for (let i = 0; i < 8; i++) {
      const { chunks, distinct } = freshChunks(12, 0, randomBytes);
      snaps.push({ id: await snapshotOf(bjUrl(), tenant, chunks, `eight-${i}`), distinct });
    }
    const before = await Promise.all(workers.map(sentBy));
    proxy.resetCounts();
    const copies = await Promise.all(snaps.map((s) => copyTo(bjUrl(), tenant, s.id, 'hkg')));
    const hkgSdk = sdkClient(hkg.urls.hkg!, AK, SK);
    for (const c of copies) await waitSnapshot(hkgSdk, c);
    const sent = (await Promise.all(workers.map(sentBy))).map((n, i) => n - before[i]!);
    assert.ok(sent[0]! > 0 && sent[1]! > 0, `both workers sent copies (${sent.join(', ')} chunks)`);
    assert.equal(sent[0]! + sent[1]!, 8 * 12);
    // At the destination: every chunk of every copy arrived exactly once.
    const perCopy = new Map<string, string[]>();
    for (const u of proxy.uploads().filter((x) => x.status === 200)) perCopy.set(u.copyId, [...(perCopy.get(u.copyId) ?? []), u.chunkId]);
    for (const [i, c] of copies.entries()) {
      const got = perCopy.get(c) ?? [];
      assert.equal(got.length, 12, `copy ${i} received ${got.length} chunk uploads`);
      assert.deepEqual(new Set(got), snaps[i]!.distinct);
    }
    const jobs = await Promise.all(copies.map(finishedJob));
    assert.equal(jobs.length, 8);
    for (const j of jobs) assert.deepEqual([j.state, j.attempts], ['done', 1], `${j.key} was claimed once and done`);
  });

  test('kill -9 of the worker holding a copy: the other takes it over after the lease and resends only what was in flight', async (t) => {
    const { chunks, distinct } = freshChunks(160, 0, randomBytes);
    const n = distinct.size;
    const snapshotId = await snapshotOf(bjUrl(), tenant, chunks, 'handover');
    const before = await Promise.all(workers.map(sentBy));
    proxy.resetCounts();
    proxy.setChunkDelay(25);
    let victim: SpawnedServer | null = null;
    let killed: Promise<void> | null = null;
    let deciding = false;
    proxy.onUpload(async (_u, all) => {
      // Decided once, synchronously: the uploads in flight meanwhile must not ask a dead worker.
      if (deciding || all.filter((x) => x.status === 200).length < n / 2) return;
      deciding = true;
      const sent = (await Promise.all(workers.map(sentBy))).map((v, i) => v - before[i]!);
      victim = sent[0]! > sent[1]! ? workers[0]! : workers[1]!;
      killed = victim.crash();
    });
    try {
      const copyId = await copyTo(bjUrl(), tenant, snapshotId, 'hkg');
      await until(async () => killed !== null, 60_000, 'the kill');
      await killed;
      await waitSnapshot(sdkClient(hkg.urls.hkg!, AK, SK), copyId, 120_000);
      const uploads = proxy.uploads().filter((u) => u.status === 200);
      const resent = uploads.length - n;
      t.diagnostic(`kill at ${n / 2} of ${n} chunks: ${resent} resent, ${(proxy.bytesIn() / (n * MiB)).toFixed(3)}x the copy's bytes on the wire`);
      assert.ok(resent <= SENDS_PER_COPY, `${resent} chunks sent twice; at most the ${SENDS_PER_COPY} in flight at the kill may be`);
      assert.ok(proxy.bytesIn() <= 1.1 * n * MiB, `${(proxy.bytesIn() / (n * MiB)).toFixed(3)}x the copy's bytes on the wire`);
      const job = await finishedJob(copyId);
      assert.deepEqual([job.state, job.attempts], ['done', 2], 'claimed by the dead worker, then once more by the other');
      await assertRestores(hkg.urls.hkg!, copyId, chunks);
    } finally {
      proxy.onUpload(null);
      proxy.setChunkDelay(0);
      // The victim comes back for the tests after this one (same data dir, fresh id).
      if (victim) await (victim as SpawnedServer).restart();
    }
  });

  test('a storage process restarting mid-copy leaves the workers\' copy alone (no requeue on a shared database)', async () => {
    const { chunks, distinct } = freshChunks(96, 0, randomBytes);
    const snapshotId = await snapshotOf(bjUrl(), tenant, chunks, 'restart-beside');
    proxy.resetCounts();
    let restarted: Promise<void> | null = null;
    proxy.onUpload((_u, all) => {
      if (restarted || all.length < distinct.size / 4) return;
      // The copy waits (its uploads held) while the storage process dies and starts again, so
      // the restart's recovery sees the worker's job running.
      proxy.holdAll(true);
      restarted = api.crash().then(() => api.restart());
    });
    try {
      const copyId = await copyTo(bjUrl(), tenant, snapshotId, 'hkg');
      await until(async () => restarted !== null, 60_000, 'the restart');
      await restarted;
      proxy.holdAll(false);
      proxy.release();
      await waitSnapshot(sdkClient(hkg.urls.hkg!, AK, SK), copyId, 120_000);
      const job = await finishedJob(copyId);
      assert.deepEqual([job.state, job.attempts], ['done', 1], 'the copy ran once, in one worker');
      assert.equal(proxy.uploads().filter((u) => u.status === 200).length, distinct.size, 'no chunk was sent twice');
    } finally {
      proxy.onUpload(null);
      proxy.holdAll(false);
      proxy.release();
    }
  });

  test('a copy from hkg into bj restores bit-identical from the bucket', async () => {
    const { chunks, distinct } = freshChunks(24, 4, randomBytes);
    const snapshotId = await snapshotOf(hkg.urls.hkg!, tenant, chunks, 'inbound');
    const copyId = await copyTo(hkg.urls.hkg!, tenant, snapshotId, 'bj');
    await waitSnapshot(sdkClient(bjUrl(), AK, SK), copyId, 120_000);
    assert.equal(await inBucket(distinct), distinct.size, 'the copy\'s chunks are objects in bj\'s bucket');
    await assertRestores(bjUrl(), copyId, chunks);
  });

  /** Runs `snapferry serve` with a config, expecting it to refuse to start; answers its exit code and stderr. */
  async function refusedStart(config: unknown, env: Record<string, string> = {}): Promise<{ code: number | null; stderr: string; ms: number }> {
    const file = join(dir, `bad-${randomBytes(3).toString('hex')}.json`);
    await writeFile(file, JSON.stringify(config));
    const port = await freePortRange(1);
    const started = Date.now();
    const child = spawn(process.execPath, [BIN, 'serve', '--data-dir', join(dir, 'bad-data'), '--regions', 'bj', '--port', String(port), '--nbd-port', String(port + 1000), '--config', file], {
      env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stderr = '';
    child.stderr.on('data', (d) => (stderr += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), 60_000);
    const code = await new Promise<number | null>((resolve) => child.once('exit', resolve));
    clearTimeout(timer);
    return { code, stderr, ms: Date.now() - started };
  }

  const s3Store = (over: Record<string, unknown> = {}) => ({ type: 's3', endpoint: s3.endpoint, bucket, region: s3.region, accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey, ...over });

  test('a missing bucket, wrong S3 keys or an unreachable database: one clear sentence and exit code 2 at start', async () => {
    const missing = await refusedStart({ regions: { bj: { metadata: { type: 'postgres', url: db.url }, chunkStore: s3Store({ bucket: 'snapferry-no-such-bucket' }) } } });
    assert.equal(missing.code, 2);
    assert.match(missing.stderr, /region bj: .*bucket "snapferry-no-such-bucket".* does not exist/);
    const keys = await refusedStart({ regions: { bj: { metadata: { type: 'postgres', url: db.url }, chunkStore: s3Store({ secretAccessKey: 'wrong-secret' }) } } });
    assert.equal(keys.code, 2);
    assert.match(keys.stderr, /region bj: S3 refused access .*check the access key id and secret key/);
    const deadPort = await freePortRange(1);
    const nodb = await refusedStart({ regions: { bj: { metadata: { type: 'postgres', url: `postgres://postgres:pw@127.0.0.1:${deadPort}/x` }, chunkStore: s3Store() } } });
    assert.equal(nodb.code, 2);
    assert.match(nodb.stderr, /region bj: .*127\.0\.0\.1:\d+/);
    assert.doesNotMatch(nodb.stderr, /:pw@/, 'the password is not printed');
    for (const r of [missing, keys, nodb]) {
      assert.doesNotMatch(r.stderr, /\n\s+at /, 'no stack trace');
      assert.doesNotMatch(r.stderr, new RegExp(s3.secretAccessKey.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')), 'no secret in the message');
    }
  });
});
