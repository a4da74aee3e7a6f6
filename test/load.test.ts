/**
 * Load, against a real `snapferry serve` (regions bj and hkg in one process), memory measured as
 * the server process's peak RSS (VmHWM of /proc/<pid>/status, reset between phases through
 * /proc/<pid>/clear_refs):
 *
 * - 100 copies requested at once (100 distinct snapshots, through the official JavaScript SDK, all
 *   at the same moment): they queue (never more than the per-destination cap of 20 running, the rest
 *   `queued` and their destination records `Creating`), every one completes, and the copies hold the
 *   source's bytes; the server's peak RSS stays bounded.
 * - 10,000 snapshots page correctly: 1,000 made through the API (8 clients at once) and 9,000
 *   inserted through the region's metadata store while the server is stopped (its own repository
 *   code, `SnapshotRepository.insertIfAbsent`; the API makes ~100-200 a second here, see
 *   docs/reliability.md), then, with the server running again: every snapshot exactly once across
 *   the pages of a walk with maxKeys 1 (10,000 pages) and with 13 other sizes up to 1000, in one
 *   stable order (every walk the same, the store's inserts in insertion order), markers taken from
 *   anywhere starting their page there, a deleted snapshot's id still a marker, the volumeId filter
 *   paging its own subset.
 * - A mixed load: 6 clients of two accounts for LOAD_MIXED_SECONDS (default 30) create disks, write
 *   (with digests) and read back, snapshot, restore, copy to hkg, list, resize and delete, each on its
 *   own resources: not one error answer, no 5xx, every read equal to what was written, every copy
 *   `Available` in hkg at the end.
 *
 * Larger runs: LOAD_COPY_MIB (data per copied snapshot, default 2), LOAD_MIXED_SECONDS,
 * LOAD_API_SNAPSHOTS (how many of the 10,000 go through the API, default 1000); the figures of a
 * larger run are in docs/reliability.md (it takes longer than the runner's 10 minutes per file:
 * `node --import tsx --test --test-timeout=3600000 test/load.test.ts`). LOAD_STATS=1 prints the figures.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Agent, request } from 'undici';
import { newSnapshotId } from '../src/domain/ids.ts';
import { SqliteMetadataStore } from '../src/metadata/sqlite/sqlite-metadata-store.ts';
import { metric } from './helpers/metrics.ts';
import { sdkClient, send, until } from './helpers/sdk.ts';
import { signedRequest, type Keys } from './helpers/signed-request.ts';
import { spawnServer, type SpawnedServer } from './helpers/spawned-server.ts';

const account = (id: string) => ({ accountId: id, accessKeyId: `load-${id}-ak-0000000001`, secretAccessKey: `load-${id}-secret-${randomBytes(8).toString('hex')}` });
const ALICE = account('alice');
const BOB = account('bob');
const CAROL = account('carol');
const DAVE = account('dave');
const keysOf = (a: typeof ALICE): Keys => ({ ak: a.accessKeyId, sk: a.secretAccessKey });

const COPIES = 100;
const COPY_BYTES = Number(process.env.LOAD_COPY_MIB ?? 2) * 2 ** 20;
const SNAPSHOTS = 10_000;
const API_SNAPSHOTS = Number(process.env.LOAD_API_SNAPSHOTS ?? 1000);
const MIXED_MS = Number(process.env.LOAD_MIXED_SECONDS ?? 30) * 1000;
const STATS = process.env.LOAD_STATS === '1';
const MiB = 2 ** 20;

let dir: string;
let server: SpawnedServer;
const agent = new Agent({ connections: 32, keepAliveTimeout: 2000 });
const figures: Record<string, unknown> = {};

interface Reply {
  status: number;
  json: any;
  raw: Buffer;
}

async function call(keys: Keys, region: 'bj' | 'hkg', method: string, path: string, body?: unknown, headers: Record<string, string> = {}): Promise<Reply> {
  const base = server.urls[region]!;
  const signed = signedRequest({ method, url: path, body: body as Record<string, unknown> | Buffer | undefined, keys, host: new URL(base).host, extraHeaders: headers });
  const res = await request(`${base}${path}`, { method: method as 'GET', headers: signed.headers, body: signed.payload, dispatcher: agent });
  const raw = Buffer.from(await res.body.arrayBuffer());
  const type = String(res.headers['content-type'] ?? '');
  return { status: res.statusCode, raw, json: type.includes('json') && raw.length > 0 ? JSON.parse(raw.toString('utf8')) : null };
}

async function ok(keys: Keys, region: 'bj' | 'hkg', method: string, path: string, body?: unknown, headers?: Record<string, string>): Promise<Reply> {
  const r = await call(keys, region, method, path, body, headers);
  assert.ok(r.status >= 200 && r.status < 300, `${method} ${path}: ${r.status} ${r.raw.toString().slice(0, 300)}`);
  return r;
}

async function waitFor(keys: Keys, region: 'bj' | 'hkg', kind: 'volume' | 'snapshot', id: string, ms = 120_000): Promise<any> {
  return until(async () => {
    const r = (await ok(keys, region, 'GET', `/v2/${kind}/${id}`)).json[kind];
    if (r.status === 'Error' || r.status === 'CreatedFailed') throw new Error(`${kind} ${id} is ${r.status}`);
    return r.status === 'Available' ? r : null;
  }, ms, `${kind} ${id} Available`);
}

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');
const octets = (b: Buffer) => ({ 'content-type': 'application/octet-stream', 'x-bce-content-sha256': sha(b) });

/** The server's peak RSS since the last reset, in MiB. */
function peakRssMiB(): number {
  const status = readFileSync(`/proc/${server.child.pid}/status`, 'utf8');
  return Math.round(Number(/VmHWM:\s+(\d+) kB/.exec(status)![1]) / 1024);
}

function resetPeakRss(): void {
  writeFileSync(`/proc/${server.child.pid}/clear_refs`, '5');
}

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'snapferry-load-'));
  const config = join(dir, 'config.json');
  await writeFile(config, JSON.stringify({ accounts: [ALICE, BOB, CAROL, DAVE] }));
  server = await spawnServer({ regions: ['bj', 'hkg'], dataDir: join(dir, 'data'), extraArgs: ['--config', config] });
  figures.startRssMiB = peakRssMiB();
});

after(async () => {
  if (STATS) console.error(JSON.stringify(figures, null, 2));
  await agent.close();
  await server?.dispose();
  if (dir) await rm(dir, { recursive: true, force: true });
});

test(`${COPIES} copies requested at once queue (at most 20 running) and all complete with the source's bytes; the server's peak RSS stays bounded`, async () => {
  const alice = keysOf(ALICE);
  const volume = (await ok(alice, 'bj', 'POST', '/v2/volume', { cdsSizeInGB: 1 })).json.volumeIds[0];
  await waitFor(alice, 'bj', 'volume', volume);
  // 100 snapshots, each of other bytes (COPY_BYTES of fresh random data over the same range).
  const snapshots: Array<{ id: string; digest: string }> = [];
  for (let i = 0; i < COPIES; i++) {
    const data = randomBytes(COPY_BYTES);
    for (let at = 0; at < data.length; at += 8 * MiB) {
      const piece = data.subarray(at, at + 8 * MiB);
      await ok(alice, 'bj', 'PUT', `/v2/volume/${volume}/data?offset=${at}`, piece, octets(piece));
    }
    const id = (await ok(alice, 'bj', 'POST', '/v2/snapshot', { volumeId: volume, snapshotName: `copy-${i}` })).json.snapshotId;
    await waitFor(alice, 'bj', 'snapshot', id);
    snapshots.push({ id, digest: sha(data) });
  }
  resetPeakRss();
  const sdk = sdkClient(server.urls.bj!, ALICE.accessKeyId, ALICE.secretAccessKey);
  let maxActive = 0;
  let maxQueued = 0;
  let sampling = true;
  const sampler = (async () => {
    while (sampling) {
      maxActive = Math.max(maxActive, await metric(server.urls.bj!, 'snapferry_replication_active_copies', { destination: 'hkg' }));
      maxQueued = Math.max(maxQueued, await metric(server.urls.bj!, 'snapferry_replication_queued_copies', { destination: 'hkg' }));
      await new Promise((r) => setTimeout(r, 100));
    }
  })();
  const started = Date.now();
  // All at once, through the official SDK.
  const answers = await Promise.all(snapshots.map((s) => send(sdk, 'PUT', `/v2/snapshot/remote_copy/${s.id}`, { body: { destRegionInfos: [{ destRegion: 'hkg', name: s.id.replace('s-', 'copy-of-') }] } })));
  const requestedMs = Date.now() - started;
  const copies = answers.map((a) => a.result[0].snapshotId as string);
  assert.equal(new Set(copies).size, COPIES);
  // Right after the request: every destination record exists (Creating or done), none failed.
  const states = await Promise.all(snapshots.map(async (s) => (await ok(alice, 'bj', 'GET', `/v2/snapshot/remote_copy/${s.id}`)).json.copies[0].state as string));
  assert.ok(states.every((x) => ['queued', 'running', 'done'].includes(x)), JSON.stringify(states));
  await until(async () => {
    const list = (await ok(alice, 'hkg', 'GET', '/v2/snapshot?maxKeys=1000')).json.snapshots as any[];
    const mine = list.filter((x) => copies.includes(x.id));
    if (mine.some((x) => x.status === 'CreatedFailed')) throw new Error('a copy failed');
    return mine.length === COPIES && mine.every((x) => x.status === 'Available');
  }, 600_000, `${COPIES} copies Available in hkg`);
  const allMs = Date.now() - started;
  sampling = false;
  await sampler;
  const peak = peakRssMiB();
  Object.assign(figures, { copies: COPIES, copyMiB: COPY_BYTES / MiB, copyRequestMs: requestedMs, copyAllMs: allMs, copyPeakRssMiB: peak, maxActiveCopies: maxActive, maxQueuedCopies: maxQueued, copyStatesAtRequest: Object.fromEntries(['queued', 'running', 'done'].map((k) => [k, states.filter((x) => x === k).length])) });
  assert.ok(maxActive <= 20, `${maxActive} copies ran at once (cap 20)`);
  assert.ok(states.filter((x) => x === 'queued').length > 0 || maxQueued > 0, 'no copy ever waited: the test did not load the queue');
  // Bounded by what runs at once, not by how many wait: 20 copies, each with up to 8 chunks of 1 MiB
  // in flight, read, sent, received, hashed and stored in this one process (source and destination),
  // plus garbage the GC has not collected yet. Measured: ~340 MiB with 2 MiB snapshots, ~1.07 GiB
  // with 32 MiB ones (docs/reliability.md).
  const bound = COPY_BYTES <= 4 * MiB ? 700 : 1280;
  assert.ok(peak < bound, `the server's peak RSS during the copies was ${peak} MiB (bound ${bound})`);
  // The copies hold the source's bytes: three of them restored in hkg and read back whole.
  for (const i of [0, 49, COPIES - 1]) {
    const restored = (await ok(alice, 'hkg', 'POST', '/v2/volume', { snapshotId: copies[i] })).json.volumeIds[0];
    await waitFor(alice, 'hkg', 'volume', restored);
    const back = await ok(alice, 'hkg', 'GET', `/v2/volume/${restored}/data`, undefined, { range: `bytes=0-${COPY_BYTES - 1}` });
    assert.equal(sha(back.raw), snapshots[i]!.digest, `copy ${i} holds other bytes`);
  }
});

test('10,000 snapshots page correctly: every one exactly once with maxKeys 1..1000 and markers, in one stable order', async () => {
  const bob = keysOf(BOB);
  const volumes: string[] = [];
  for (let i = 0; i < 20; i++) volumes.push((await ok(bob, 'bj', 'POST', '/v2/volume', { cdsSizeInGB: 1, name: `pages-${i}` })).json.volumeIds[0]);
  for (const v of volumes) await waitFor(bob, 'bj', 'volume', v);
  // Through the API: 8 clients at once, each in order over its own volumes.
  const apiStarted = Date.now();
  const byClient: string[][] = Array.from({ length: 8 }, () => []);
  await Promise.all(byClient.map(async (mine, c) => {
    for (let i = c; i < API_SNAPSHOTS; i += 8) {
      mine.push((await ok(bob, 'bj', 'POST', '/v2/snapshot', { volumeId: volumes[i % 20], snapshotName: `api-${i}` })).json.snapshotId);
    }
  }));
  const apiMs = Date.now() - apiStarted;
  const apiIds = byClient.flat();
  // The rest through the store, with the server stopped (a graceful stop: captures still queued
  // resume at the next start; paging does not care about their state).
  await waitFor(bob, 'bj', 'snapshot', apiIds[0]!);
  const storeStarted = Date.now();
  const storeIds: string[] = [];
  if (API_SNAPSHOTS < SNAPSHOTS) {
    assert.equal(await server.stop(), 0);
    const meta = new SqliteMetadataStore(join(dir, 'data', 'bj', 'meta.db'));
    try {
      const source = (await meta.snapshots.getAny(apiIds[0]!))!;
      assert.equal(source.status, 'Available');
      for (let i = API_SNAPSHOTS; i < SNAPSHOTS; i++) {
        const id = newSnapshotId();
        const outcome = await meta.snapshots.insertIfAbsent({ ...source, id, name: `store-${i}`, volumeId: volumes[i % 20]!, createTime: Date.now() });
        assert.equal(outcome, 'inserted');
        storeIds.push(id);
      }
    } finally {
      await meta.close();
    }
    await server.restart();
  }
  const storeMs = Date.now() - storeStarted;

  type Page = { marker: string | null; isTruncated: boolean; nextMarker?: string; maxKeys: number; snapshots: Array<{ id: string; volumeId: string }> };
  const page = async (query: string): Promise<Page> => (await ok(bob, 'bj', 'GET', `/v2/snapshot?${query}`)).json;
  let requests = 0;
  const volumeOf = new Map<string, string>();
  const walk = async (maxKeys: number, extra = '', from?: string): Promise<string[]> => {
    const seen: string[] = [];
    let marker = from ?? '';
    for (let n = 0; n <= SNAPSHOTS + 1; n++) {
      const p = await page(`maxKeys=${maxKeys}${marker ? `&marker=${marker}` : ''}${extra}`);
      requests++;
      assert.equal(p.maxKeys, maxKeys);
      assert.ok(p.snapshots.length <= maxKeys);
      if (marker) assert.equal(p.snapshots[0]?.id, marker, `maxKeys ${maxKeys}: a page does not start at its marker`);
      for (const s of p.snapshots) {
        seen.push(s.id);
        volumeOf.set(s.id, s.volumeId);
      }
      if (!p.isTruncated) {
        assert.equal(p.nextMarker, undefined, 'the last page has no nextMarker');
        return seen;
      }
      assert.equal(p.snapshots.length, maxKeys, 'a truncated page is full');
      marker = p.nextMarker!;
    }
    assert.fail('paging did not end');
  };
  const pagingStarted = Date.now();
  const reference = await walk(1000);
  assert.equal(reference.length, SNAPSHOTS);
  assert.equal(new Set(reference).size, SNAPSHOTS, 'a snapshot on two pages');
  assert.deepEqual([...reference].sort(), [...apiIds, ...storeIds].sort(), 'exactly the snapshots made');
  // Creation order: the store's inserts after the API's, in insertion order; each API client's in its order.
  assert.deepEqual(reference.slice(API_SNAPSHOTS), storeIds);
  for (const mine of byClient) assert.deepEqual(reference.filter((id) => mine.includes(id)), mine);
  // Every other page size sees the same order.
  const sizes = [1, 7, 10, 17, 64, 99, 100, 101, 128, 333, 500, 512, 999, 1000];
  for (const maxKeys of sizes) assert.deepEqual(await walk(maxKeys), reference, `maxKeys ${maxKeys}`);
  // Markers from anywhere start their page there; the rest of the walk is the rest of the list.
  for (const at of [0, 1, 999, 1000, 1001, 4321, 9998, 9999]) {
    assert.deepEqual(await walk(250, '', reference[at]), reference.slice(at), `from the marker at ${at}`);
  }
  // A deleted snapshot's id is still a marker (deleted rows keep their place).
  const gone = reference[5000]!;
  assert.equal((await call(bob, 'bj', 'DELETE', `/v2/snapshot/${gone}`)).status, 200);
  const afterGone = await page(`maxKeys=3&marker=${gone}`);
  assert.deepEqual(afterGone.snapshots.map((s) => s.id), reference.slice(5001, 5004));
  // The volumeId filter pages its own subset in the same order.
  const one = volumes[7]!;
  const subset = (await walk(1000, `&volumeId=${one}`));
  assert.ok(subset.length >= 499 && subset.length <= 500, `${subset.length} snapshots of one volume`);
  assert.deepEqual(await walk(37, `&volumeId=${one}`), subset);
  assert.deepEqual(subset, reference.filter((id) => id !== gone && volumeOf.get(id) === one));
  // Alice sees none of Bob's 10,000, also with his ids as markers.
  assert.deepEqual((await ok(keysOf(ALICE), 'bj', 'GET', `/v2/snapshot?marker=${reference[10]}`)).json.snapshots, []);
  Object.assign(figures, { snapshots: SNAPSHOTS, apiSnapshots: API_SNAPSHOTS, apiSnapshotMs: apiMs, apiSnapshotsPerSecond: Math.round(API_SNAPSHOTS / (apiMs / 1000)), storeInsertMs: storeMs, pagingRequests: requests, pagingMs: Date.now() - pagingStarted, pageSizes: sizes.length + 1 });
});

test(`a mixed load of 6 clients of two accounts (${MIXED_MS / 1000} s): creates, writes, reads, snapshots, restores, copies, lists, resizes, deletes; not one error, no 5xx, every read what was written`, async () => {
  resetPeakRss();
  const stats = { requests: 0, errors: [] as string[], byOp: {} as Record<string, number>, latencies: [] as number[] };
  const copies: Array<{ keys: Keys; id: string }> = [];
  const deadline = Date.now() + MIXED_MS;
  const timed = async (keys: Keys, region: 'bj' | 'hkg', method: string, path: string, body?: unknown, headers?: Record<string, string>): Promise<Reply> => {
    const t0 = Date.now();
    const r = await call(keys, region, method, path, body, headers);
    stats.requests++;
    stats.latencies.push(Date.now() - t0);
    if (r.status >= 300) stats.errors.push(`${method} ${path}: ${r.status} ${r.raw.toString().slice(0, 200)}`);
    return r;
  };
  const waitState = async (keys: Keys, kind: 'volume' | 'snapshot', id: string): Promise<void> => {
    for (;;) {
      const r = await timed(keys, 'bj', 'GET', `/v2/${kind}/${id}`);
      const status = r.json?.[kind]?.status;
      if (status === 'Available') return;
      if (r.status !== 200 || status === 'Error' || status === 'CreatedFailed') throw new Error(`${kind} ${id}: ${r.status} ${status}`);
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
  };
  interface Disk { id: string; size: number; model: Map<number, Buffer> }
  const worker = async (keys: Keys, seed: number): Promise<void> => {
    let rnd = seed >>> 0;
    // mulberry32: every bit random (a power-of-two LCG's low bits cycle, and `% n` reads them).
    const rand = (n: number): number => {
      rnd = (rnd + 0x6d2b79f5) >>> 0;
      let x = Math.imul(rnd ^ (rnd >>> 15), rnd | 1);
      x ^= x + Math.imul(x ^ (x >>> 7), x | 61);
      return (((x ^ (x >>> 14)) >>> 0) % n);
    };
    const disks: Disk[] = [];
    const snaps: Array<{ id: string; disk: Disk; model: Map<number, Buffer>; copied: boolean }> = [];
    const newDisk = async (body: Record<string, unknown>, model = new Map<number, Buffer>()): Promise<void> => {
      const r = await timed(keys, 'bj', 'POST', '/v2/volume', body);
      if (r.status !== 200) return;
      const d = { id: r.json.volumeIds[0], size: Number(body.cdsSizeInGB ?? 1), model: new Map(model) };
      await waitState(keys, 'volume', d.id);
      disks.push(d);
    };
    const check = async (d: Disk): Promise<void> => {
      for (const [offset, bytes] of [...d.model].slice(-3)) {
        const r = await timed(keys, 'bj', 'GET', `/v2/volume/${d.id}/data`, undefined, { range: `bytes=${offset}-${offset + bytes.length - 1}` });
        if (r.status === 206 && !r.raw.equals(bytes)) stats.errors.push(`read of ${d.id} at ${offset}: other bytes than written`);
      }
    };
    await newDisk({ cdsSizeInGB: 1 });
    while (Date.now() < deadline) {
      const op = rand(100);
      const d = disks[rand(disks.length)];
      const count = (name: string) => (stats.byOp[name] = (stats.byOp[name] ?? 0) + 1);
      if (!d || (op < 8 && disks.length < 4)) {
        count('create');
        await newDisk({ cdsSizeInGB: 1 + rand(2), name: `mixed-${seed}` });
      } else if (op < 40) {
        count('write');
        const offset = rand(256) * 4096 * 16;
        const bytes = randomBytes(4096 * (1 + rand(16)));
        const r = await timed(keys, 'bj', 'PUT', `/v2/volume/${d.id}/data?offset=${offset}`, bytes, octets(bytes));
        if (r.status === 200) {
          for (const [o, b] of [...d.model]) if (o < offset + bytes.length && offset < o + b.length) d.model.delete(o);
          d.model.set(offset, bytes);
        }
      } else if (op < 55) {
        count('read');
        await check(d);
      } else if (op < 63) {
        count('snapshot');
        const r = await timed(keys, 'bj', 'POST', '/v2/snapshot', { volumeId: d.id, snapshotName: `mixed-${seed}` });
        if (r.status === 200) {
          await waitState(keys, 'snapshot', r.json.snapshotId);
          snaps.push({ id: r.json.snapshotId, disk: d, model: new Map(d.model), copied: false });
        }
      } else if (op < 67 && snaps.length > 0) {
        count('restore');
        const s = snaps[rand(snaps.length)]!;
        await newDisk({ snapshotId: s.id, cdsSizeInGB: s.disk.size }, s.model);
        if (disks.length > 0) await check(disks[disks.length - 1]!);
      } else if (op < 71 && snaps.length > 0) {
        count('copy');
        const s = snaps[rand(snaps.length)]!;
        const r = await timed(keys, 'bj', 'PUT', `/v2/snapshot/remote_copy/${s.id}`, { destRegionInfos: [{ destRegion: 'hkg' }] });
        if (r.status === 200) {
          s.copied = true;
          copies.push({ keys, id: r.json.result[0].snapshotId });
        }
      } else if (op < 85) {
        count('list');
        const v = await timed(keys, 'bj', 'GET', '/v2/volume?maxKeys=100');
        const mine = new Set((v.json?.volumes ?? []).map((x: any) => x.id));
        if (disks.some((x) => !mine.has(x.id)) && v.json?.isTruncated === false) stats.errors.push('a disk of mine missing from my list');
        await timed(keys, 'bj', 'GET', '/v2/snapshot?maxKeys=100');
        await timed(keys, 'bj', 'GET', `/v2/volume/${d.id}`);
      } else if (op < 89) {
        count('extents');
        await timed(keys, 'bj', 'GET', `/v2/volume/${d.id}/extents`);
      } else if (op < 92) {
        count('resize');
        const r = await timed(keys, 'bj', 'PUT', `/v2/volume/${d.id}?resize`, { newCdsSizeInGB: d.size + 1 });
        if (r.status === 200) {
          d.size++;
          await waitState(keys, 'volume', d.id);
        }
      } else if (op < 96) {
        const free = snaps.findIndex((s) => !s.copied);
        if (free < 0) continue;
        count('delete snapshot');
        await timed(keys, 'bj', 'DELETE', `/v2/snapshot/${snaps[free]!.id}`);
        snaps.splice(free, 1);
      } else if (disks.length > 1) {
        count('delete disk');
        await check(d);
        await timed(keys, 'bj', 'DELETE', `/v2/volume/${d.id}`);
        disks.splice(disks.indexOf(d), 1);
      }
    }
    for (const d of disks) await check(d);
  };
  const started = Date.now();
  await Promise.all([CAROL, CAROL, CAROL, DAVE, DAVE, DAVE].map((a, i) => worker(keysOf(a), 7919 * (i + 1))));
  const ms = Date.now() - started;
  // Every copy made under load arrives.
  for (const c of copies) await waitFor(c.keys, 'hkg', 'snapshot', c.id, 300_000);
  const sorted = [...stats.latencies].sort((a, b) => a - b);
  const pct = (p: number) => sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))];
  Object.assign(figures, { mixedMs: ms, mixedRequests: stats.requests, mixedErrors: stats.errors.length, mixedByOp: stats.byOp, mixedCopies: copies.length, mixedLatencyMs: { p50: pct(0.5), p99: pct(0.99), max: sorted.at(-1) }, mixedPeakRssMiB: peakRssMiB() });
  assert.deepEqual(stats.errors, [], 'error answers under load');
  assert.ok(stats.requests > 500, `only ${stats.requests} requests`);
  for (const op of ['create', 'write', 'read', 'snapshot', 'restore', 'copy', 'list', 'extents', 'resize', 'delete snapshot', 'delete disk']) assert.ok((stats.byOp[op] ?? 0) > 0, `no ${op} ran`);
  // The server logged no error through all of it.
  const errors = server.stderr().split('\n').filter((l) => l.includes('"level":"error"'));
  assert.deepEqual(errors, []);
});
