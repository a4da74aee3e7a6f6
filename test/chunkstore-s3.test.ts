/**
 * S3ChunkStore on a real S3 endpoint (Ceph RGW in CI: .ci/run starts it; by hand:
 * `scripts/with-rgw.sh npm test -- chunkstore-s3`), plus the chunk-index contract for the in-memory
 * test index and the SQLite one.
 *
 * Settings: SNAPFERRY_TEST_S3_ENDPOINT, SNAPFERRY_TEST_S3_ACCESS_KEY, SNAPFERRY_TEST_S3_SECRET_KEY,
 * optional SNAPFERRY_TEST_S3_REGION and SNAPFERRY_TEST_S3_BUCKET (an existing bucket to use under a
 * fresh prefix; otherwise this run creates its own bucket and removes it at the end). Without them
 * the S3 tests FAIL, unless SNAPFERRY_SKIP_S3=1 says to skip them.
 */
process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true'; // the pinned SDK nags about Node 20

import {
  AbortMultipartUploadCommand,
  CreateBucketCommand,
  CreateMultipartUploadCommand,
  DeleteBucketCommand,
  DeleteObjectCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListMultipartUploadsCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  type S3Client,
} from '@aws-sdk/client-s3';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, request, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it, test } from 'node:test';
import type { ChunkIndex, ChunkIndexEntry, ClaimOptions } from '../src/chunkstore/chunk-index.ts';
import { ChunkIntegrityError } from '../src/chunkstore/chunk-store.ts';
import { createS3Client, S3ConfigError } from '../src/chunkstore/s3-client.ts';
import { S3RequestError, type RetryPolicy } from '../src/chunkstore/s3-retry.ts';
import { S3ChunkStore, type S3ChunkStoreOptions } from '../src/chunkstore/s3-store.ts';
import type { ChunkIndexRepository } from '../src/metadata/metadata-store.ts';
import { SqliteMetadataStore } from '../src/metadata/sqlite/sqlite-metadata-store.ts';
import { chunkIndexContract } from './helpers/chunk-index-contract.ts';
import { blob, chunkStoreContract } from './helpers/chunkstore-contract.ts';

// ---- an in-memory ChunkIndex: every method's effect happens synchronously, hence atomically ----

type Row = { state: ChunkIndexEntry['state']; size: number; lastUsed: number; claimedAt: number | null; epoch: string };

class MemoryChunkIndex implements ChunkIndex {
  readonly rows = new Map<string, Row>();
  private k = (ns: string, id: string): string => `${ns}/${id}`;
  private epoch = (): string => randomBytes(8).toString('hex');

  async beginPut(ns: string, id: string, now: number): Promise<string | null> {
    const r = this.rows.get(this.k(ns, id));
    if (!r) {
      const epoch = this.epoch();
      this.rows.set(this.k(ns, id), { state: 'storing', size: 0, lastUsed: now, claimedAt: null, epoch });
      return epoch;
    }
    if (r.state === 'deleting') return null;
    r.lastUsed = Math.max(r.lastUsed, now);
    return r.epoch;
  }

  async markUsed(ns: string, id: string, epoch: string, size: number, now: number): Promise<boolean> {
    const r = this.rows.get(this.k(ns, id));
    if (!r || r.epoch !== epoch || r.state === 'deleting') return false;
    Object.assign(r, { state: 'present', size, lastUsed: Math.max(r.lastUsed, now) });
    return true;
  }

  async present(ns: string, ids: readonly string[], touchAt?: number): Promise<Set<string>> {
    const out = new Set<string>();
    for (const id of ids) {
      const r = this.rows.get(this.k(ns, id));
      if (r?.state !== 'present') continue;
      out.add(id);
      if (touchAt !== undefined) r.lastUsed = Math.max(r.lastUsed, touchAt);
    }
    return out;
  }

  async claimForDelete(ns: string, id: string, o: ClaimOptions): Promise<string | null> {
    const key = this.k(ns, id);
    const r = this.rows.get(key);
    const ok = !r
      ? o.force === true
      : r.state === 'deleting'
        ? r.claimedAt! < o.staleClaimBeforeMs
        : o.force === true || r.lastUsed < o.cutoffMs;
    if (!ok) return null;
    const epoch = this.epoch();
    this.rows.set(key, { state: 'deleting', size: r?.size ?? 0, lastUsed: r?.lastUsed ?? o.now, claimedAt: o.now, epoch });
    return epoch;
  }

  async forget(ns: string, id: string, epoch: string): Promise<void> {
    const r = this.rows.get(this.k(ns, id));
    if (r?.state === 'deleting' && r.epoch === epoch) this.rows.delete(this.k(ns, id));
  }

  /** Counts barriers (a test checks that writers sync the index). */
  syncs = 0;
  async sync(): Promise<void> {
    this.syncs++;
  }

  async *list(ns: string): AsyncIterable<ChunkIndexEntry> {
    const prefix = `${ns}/`;
    for (const [key, r] of [...this.rows]) {
      if (key.startsWith(prefix)) yield { id: key.slice(prefix.length), state: r.state, size: r.size, lastUsedMs: r.lastUsed, claimedAtMs: r.claimedAt };
    }
  }
}

/** Runs `hook(method, 'before' | 'after')` around each call of the wrapped index (to pause a put at an exact step). */
function gated(inner: ChunkIndex, hook: (method: keyof ChunkIndex, phase: 'before' | 'after') => Promise<void> | void): ChunkIndex {
  const around = async <T>(m: keyof ChunkIndex, call: () => Promise<T>): Promise<T> => {
    await hook(m, 'before');
    const out = await call();
    await hook(m, 'after');
    return out;
  };
  return {
    beginPut: (...a) => around('beginPut', () => inner.beginPut(...a)),
    markUsed: (...a) => around('markUsed', () => inner.markUsed(...a)),
    present: (...a) => around('present', () => inner.present(...a)),
    claimForDelete: (...a) => around('claimForDelete', () => inner.claimForDelete(...a)),
    forget: (...a) => around('forget', () => inner.forget(...a)),
    list: (ns) => inner.list(ns),
    sync: () => around('sync', () => inner.sync()),
  };
}

// Compile-time: the metadata layer's mirror and the chunk store's interface stay interchangeable.
const _toRepo: ChunkIndexRepository = new MemoryChunkIndex();
const _toIndex = (r: ChunkIndexRepository): ChunkIndex => r;
void _toRepo;
void _toIndex;

async function sqliteIndex(): Promise<{ index: ChunkIndex; cleanup(): Promise<void> }> {
  const dir = await mkdtemp(join(tmpdir(), 'snapferry-chunk-index-'));
  const meta = new SqliteMetadataStore(join(dir, 'meta.db'));
  return {
    index: meta.chunkIndex,
    cleanup: async () => {
      await meta.close();
      await rm(dir, { recursive: true, force: true });
    },
  };
}

chunkIndexContract('in memory (test double)', async () => ({ index: new MemoryChunkIndex(), cleanup: async () => undefined }));
chunkIndexContract('SQLite', sqliteIndex);

// ---- the S3 endpoint ----------------------------------------------------------------------------

const conn = {
  endpoint: process.env.SNAPFERRY_TEST_S3_ENDPOINT ?? '',
  accessKeyId: process.env.SNAPFERRY_TEST_S3_ACCESS_KEY ?? '',
  secretAccessKey: process.env.SNAPFERRY_TEST_S3_SECRET_KEY ?? '',
  region: process.env.SNAPFERRY_TEST_S3_REGION ?? 'us-east-1',
};
const HOW_TO = [
  'the S3 chunk store tests need an S3 endpoint, and SNAPFERRY_TEST_S3_ENDPOINT / _ACCESS_KEY / _SECRET_KEY are not set.',
  'Start a throwaway Ceph RGW and run them with it (as root):  scripts/with-rgw.sh npm test -- chunkstore-s3',
  '(or bash ../shared/ceph-rgw/start-rgw.sh, then export the values of /tmp/ceph-ci/s3.env as SNAPFERRY_TEST_S3_*).',
  'To skip them on purpose: SNAPFERRY_SKIP_S3=1.',
].join('\n');

if (!conn.endpoint || !conn.accessKeyId || !conn.secretAccessKey) {
  if (process.env.SNAPFERRY_SKIP_S3 === '1') test('S3 chunk store on a real endpoint', { skip: 'SNAPFERRY_SKIP_S3=1' }, () => undefined);
  else test('S3 chunk store on a real endpoint', () => assert.fail(HOW_TO));
} else {
  s3Suites();
}

function s3Suites(): void {
  const admin = createS3Client(conn);
  const ownBucket = !process.env.SNAPFERRY_TEST_S3_BUCKET;
  const bucket = process.env.SNAPFERRY_TEST_S3_BUCKET ?? `snapferry-test-${Date.now().toString(36)}-${randomBytes(3).toString('hex')}`;
  const runPrefix = `run-${randomBytes(4).toString('hex')}/`;
  let ready: Promise<void> | null = null;
  const bucketReady = (): Promise<void> => (ready ??= ownBucket ? admin.send(new CreateBucketCommand({ Bucket: bucket })).then(() => undefined) : Promise.resolve());
  let seq = 0;

  after(async () => {
    if (ready) {
      await emptyPrefix(runPrefix);
      if (ownBucket) await admin.send(new DeleteBucketCommand({ Bucket: bucket }));
    }
    admin.destroy();
  });

  async function emptyPrefix(prefix: string): Promise<void> {
    const uploads = await admin.send(new ListMultipartUploadsCommand({ Bucket: bucket, Prefix: prefix }));
    for (const u of uploads.Uploads ?? []) await admin.send(new AbortMultipartUploadCommand({ Bucket: bucket, Key: u.Key, UploadId: u.UploadId }));
    let token: string | undefined;
    do {
      const page = await admin.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: prefix, ContinuationToken: token }));
      await Promise.all((page.Contents ?? []).map((o) => admin.send(new DeleteObjectCommand({ Bucket: bucket, Key: o.Key }))));
      token = page.NextContinuationToken;
    } while (token);
  }

  async function rawGet(key: string): Promise<Buffer | null> {
    try {
      const res = await admin.send(new GetObjectCommand({ Bucket: bucket, Key: key }));
      return Buffer.from(await res.Body!.transformToByteArray());
    } catch (err) {
      if ((err as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode === 404) return null;
      throw err;
    }
  }

  /** A fresh store under its own prefix; `extra` may point it elsewhere (a proxy) or share an index. */
  async function openStore(extra: Partial<S3ChunkStoreOptions> = {}): Promise<{ store: S3ChunkStore; index: ChunkIndex; prefix: string }> {
    await bucketReady();
    const prefix = extra.prefix ?? `${runPrefix}${++seq}/`;
    const index = extra.index ?? new MemoryChunkIndex();
    const store = await S3ChunkStore.open({ ...conn, bucket, namespace: 'chunks', client: extra.endpoint ? undefined : admin, ...extra, prefix, index });
    return { store, index, prefix };
  }

  function fixture(makeIndex: () => Promise<{ index: ChunkIndex; cleanup(): Promise<void> }>) {
    return async () => {
      const ix = await makeIndex();
      const { store, prefix } = await openStore({ index: ix.index });
      return {
        store,
        cleanup: async () => {
          await emptyPrefix(prefix);
          await ix.cleanup();
        },
        corrupt: async (id: string) => {
          const bytes = (await rawGet(store.objectKey(id)))!;
          const bad = Buffer.from(bytes);
          if (bad.length === 0) return;
          bad[0]! ^= 0xff;
          await admin.send(new PutObjectCommand({ Bucket: bucket, Key: store.objectKey(id), Body: bad }));
        },
      };
    };
  }

  chunkStoreContract('S3 (real endpoint) + in-memory index', fixture(async () => ({ index: new MemoryChunkIndex(), cleanup: async () => undefined })));
  chunkStoreContract('S3 (real endpoint) + SQLite index', fixture(sqliteIndex));

  const FAST: RetryPolicy = { maxAttempts: 4, baseDelayMs: 5, maxDelayMs: 40, requestTimeoutMs: 400 };

  describe('S3ChunkStore specifics', () => {
    it('has and touch answer from the index: no S3 request per chunk', async () => {
      const { store, prefix } = await openStore();
      const blobs = Array.from({ length: 20 }, () => blob(100));
      for (const b of blobs) await store.put(b.id, b.data);
      const before = store.stats.requests;
      const ask = [...blobs.map((b) => b.id), ...Array.from({ length: 980 }, () => blob(1).id)];
      assert.equal((await store.has(ask)).size, 20);
      assert.equal((await store.touch(ask)).size, 20);
      assert.equal(store.stats.requests, before, 'no S3 request for has/touch');
      assert.equal(store.stats.requests, 20 + 1, 'one PUT per chunk (+ the HeadBucket at open)');
      await emptyPrefix(prefix);
    });

    it('a writer sync is a barrier of the index (its rows become durable); a writer with nothing new skips it', async () => {
      const { store, index, prefix } = await openStore();
      const ix = index as MemoryChunkIndex;
      const w = store.writer();
      const a = blob(100);
      await w.put(a.id, a.data);
      const before = ix.syncs;
      await w.sync();
      assert.equal(ix.syncs, before + 1);
      await w.sync();
      assert.equal(ix.syncs, before + 1, 'nothing put since: no barrier');
      assert.equal(await w.put(a.id, a.data), false);
      assert.equal(w.unsyncedBytes, 0, 'found long stored: nothing to sync');
      await emptyPrefix(prefix);
    });

    it('keys are {prefix}{namespace}/{ab}/{id}; the store verifies on read (a damaged object is never served)', async () => {
      const { store, prefix } = await openStore({ namespace: 'manifests' });
      const a = blob(5000);
      await store.put(a.id, a.data);
      assert.equal(store.objectKey(a.id), `${prefix}manifests/${a.id.slice(0, 2)}/${a.id}`);
      assert.deepEqual(await rawGet(store.objectKey(a.id)), a.data);
      const other = blob(5000).data; // same length, other bytes, behind the store's back
      await admin.send(new PutObjectCommand({ Bucket: bucket, Key: store.objectKey(a.id), Body: other }));
      await assert.rejects(store.get(a.id), (e: unknown) => e instanceof ChunkIntegrityError && e.id === a.id);
      assert.deepEqual(await store.has([a.id]), new Set([a.id]), 'presence is not integrity (scrub decides)');
      await emptyPrefix(prefix);
    });

    it('a manifest above the multipart threshold goes up in parts and round-trips', async () => {
      const MiB = 1024 * 1024;
      const { store, prefix } = await openStore({ namespace: 'manifests', multipartThresholdBytes: 5 * MiB, partSizeBytes: 5 * MiB });
      const big = blob(12 * MiB + 12345);
      const requestsBefore = store.stats.requests;
      assert.equal(await store.put(big.id, big.data), true);
      const head = await admin.send(new HeadObjectCommand({ Bucket: bucket, Key: store.objectKey(big.id) }));
      assert.match(head.ETag ?? '', /-3"$/, 'three parts');
      assert.equal(head.ContentLength, big.data.length);
      assert.equal(store.stats.requests - requestsBefore, 1 + 1 + 3 + 1, 'HEAD, create, 3 parts, complete');
      assert.deepEqual(await store.get(big.id), big.data);
      assert.equal(await store.put(big.id, big.data), false, 'found: not uploaded again');
      assert.deepEqual([...(await listAll(store))], [[big.id, big.data.length]]);
      const w = store.writer();
      const small = blob(1000);
      assert.equal(await w.put(small.id, small.data), true, 'below the threshold: a single PUT');
      await w.sync();
      assert.equal(await store.deleteIfUnusedSince(big.id, Date.now() + 1000), false, 'put and not yet synced');
      await store.sync();
      assert.equal(await store.deleteIfUnusedSince(big.id, Date.now() + 1000), true);
      assert.equal(await rawGet(store.objectKey(big.id)), null);
      await emptyPrefix(prefix);
    });

    it('open says what is wrong: bad credentials, a missing bucket, an unreachable endpoint (no retries for the first two)', async () => {
      await bucketReady();
      const proxy = await startS3Proxy(conn.endpoint);
      try {
        const index = new MemoryChunkIndex();
        const base = { ...conn, endpoint: proxy.url, namespace: 'chunks', index, retry: FAST, claimLeaseMs: 4 * FAST.requestTimeoutMs };
        await assert.rejects(S3ChunkStore.open({ ...base, bucket, secretAccessKey: 'not-the-secret' }), (e: unknown) => {
          assert.ok(e instanceof S3ConfigError);
          assert.equal(e.reason, 'credentials');
          assert.match(e.message, /refused access to bucket .* \(HTTP 403\): check the access key id and secret key/);
          return true;
        });
        assert.equal(proxy.requests.length, 1, '403 is permanent: one request');
        await assert.rejects(S3ChunkStore.open({ ...base, bucket: `${bucket}-missing` }), (e: unknown) => {
          assert.ok(e instanceof S3ConfigError);
          assert.equal(e.reason, 'no-bucket');
          assert.match(e.message, /does not exist \(HTTP 404\): create it first/);
          return true;
        });
        assert.equal(proxy.requests.length, 2, '404 is permanent: one request');
      } finally {
        await proxy.close();
      }
      const closedPort = await freePort();
      await assert.rejects(
        S3ChunkStore.open({ ...conn, endpoint: `http://127.0.0.1:${closedPort}`, bucket, namespace: 'chunks', index: new MemoryChunkIndex(), retry: FAST, claimLeaseMs: 4 * FAST.requestTimeoutMs }),
        (e: unknown) => e instanceof S3ConfigError && e.reason === 'unreachable' && /cannot reach S3 endpoint .*ECONNREFUSED/.test(e.message) && /after 4 attempt/.test(e.message),
      );
    });

    it('retries throttling (503 SlowDown), connection resets, timeouts and damaged uploads; bounded attempts; 4xx not retried', async () => {
      await bucketReady();
      const proxy = await startS3Proxy(conn.endpoint);
      const { store, prefix } = await openStore({ endpoint: proxy.url, retry: FAST, claimLeaseMs: 4 * FAST.requestTimeoutMs });
      try {
        const count = async (fn: () => Promise<unknown>): Promise<number> => {
          const before = proxy.requests.length;
          await fn();
          return proxy.requests.length - before;
        };
        const a = blob(300_000);
        proxy.fail(3, 'slowdown');
        assert.equal(await count(() => store.put(a.id, a.data)), 4, 'three 503 SlowDown, then the PUT');
        assert.deepEqual(await rawGet(store.objectKey(a.id)), a.data);
        proxy.fail(2, 'reset');
        assert.equal(await count(async () => assert.deepEqual(await store.get(a.id), a.data)), 3, 'two resets, then the GET');
        proxy.fail(1, 'stall');
        const t0 = performance.now();
        assert.equal(await count(async () => assert.deepEqual(await store.get(a.id), a.data)), 2, 'one attempt timed out');
        assert.ok(performance.now() - t0 >= FAST.requestTimeoutMs, 'the stalled attempt was abandoned at its deadline');
        const b = blob(200_000);
        proxy.fail(1, 'corrupt-request');
        assert.equal(await count(() => store.put(b.id, b.data)), 2, 'S3 refused the damaged upload (payload hash), the retry stored it');
        assert.deepEqual(await rawGet(store.objectKey(b.id)), b.data);
        proxy.fail(1, 'corrupt-response');
        assert.equal(await count(async () => assert.deepEqual(await store.get(b.id), b.data)), 2, 'a read damaged on the way is read again, not reported damaged');

        const c = blob(1000);
        proxy.fail(100, 'slowdown');
        const before = proxy.requests.length;
        await assert.rejects(store.put(c.id, c.data), (e: unknown) => e instanceof S3RequestError && e.attempts === FAST.maxAttempts && e.status === 503 && /SlowDown/.test(e.message));
        assert.equal(proxy.requests.length - before, FAST.maxAttempts, 'bounded');
        proxy.fail(0, 'slowdown');
        assert.deepEqual(await store.has([c.id]), new Set(), 'a failed put leaves nothing present');
        assert.equal(await store.put(c.id, c.data), true, 'and a later put works');

        const d = blob(1000);
        proxy.fail(1, 'forbidden');
        const before2 = proxy.requests.length;
        await assert.rejects(store.put(d.id, d.data), (e: unknown) => e instanceof S3RequestError && e.status === 403 && e.attempts === 1);
        assert.equal(proxy.requests.length - before2, 1, '403 is not retried');
      } finally {
        store.close();
        await proxy.close();
        await emptyPrefix(prefix);
      }
    });

    // The interleavings of the header of s3-store.ts: a second store on the same bucket prefix and
    // index is "another process" whose GC deletes the blob while the first one's put is paused
    // between beginPut and its PUT, or between its PUT and markUsed. (The second case, with the blob
    // already stored, is the one the first draft of the protocol lost: PUT 412, delete, markUsed.)
    for (const [label, method, phase] of [
      ['between beginPut and its PUT', 'beginPut', 'after'],
      ['between its PUT and markUsed', 'markUsed', 'before'],
    ] as const) {
      for (const existing of [true, false]) {
        it(`GC-2: a GC deletes while a put is paused ${label} (${existing ? 'blob already stored' : 'new blob'}): the put ends with the blob stored and indexed`, async () => {
          const shared = new MemoryChunkIndex();
          let armed = false;
          let reached!: () => void;
          const atStep = new Promise<void>((r) => (reached = r));
          let release!: () => void;
          const released = new Promise<void>((r) => (release = r));
          const putterIndex = gated(shared, async (m, p) => {
            if (armed && m === method && p === phase) {
              armed = false;
              reached();
              await released;
            }
          });
          const { store: putter, prefix } = await openStore({ index: putterIndex });
          const { store: gc } = await openStore({ index: shared, prefix });
          const a = blob(4096);
          if (existing) {
            await putter.put(a.id, a.data);
            await putter.sync();
          }
          armed = true;
          const put = putter.put(a.id, a.data);
          await atStep;
          // A GC whose cutoff is past this put's start (the put stalled longer than the grace).
          const deleted = await gc.deleteIfUnusedSince(a.id, Date.now() + 60_000);
          assert.equal(deleted, true, 'the GC deleted while the put was paused');
          assert.equal(await rawGet(putter.objectKey(a.id)), null);
          release();
          await put;
          await putter.sync();
          assert.deepEqual(await putter.has([a.id]), new Set([a.id]));
          assert.deepEqual(await rawGet(putter.objectKey(a.id)), a.data, 'the object a present row names exists');
          assert.deepEqual(await putter.get(a.id), a.data);
          await emptyPrefix(prefix);
        });
      }
    }

    it('a put waits for a delete in progress, and takes over a claim whose deleter died (after the lease)', async () => {
      const lease = 4 * FAST.requestTimeoutMs;
      const { store, index, prefix } = await openStore({ retry: FAST, claimLeaseMs: lease });
      const a = blob(2048);
      await store.put(a.id, a.data);
      await store.sync();
      const claim = await index.claimForDelete('chunks', a.id, { cutoffMs: Infinity, now: Date.now(), staleClaimBeforeMs: -Infinity });
      assert.ok(claim, 'a deleter claimed it, then died before deleting');
      assert.deepEqual(await store.has([a.id]), new Set(), 'being deleted: not reported present');
      const t0 = performance.now();
      assert.equal(typeof (await store.put(a.id, a.data)), 'boolean');
      const waited = performance.now() - t0;
      assert.ok(waited >= lease - 50 && waited < lease + 3000, `waited ${Math.round(waited)} ms for a ${lease} ms lease`);
      assert.deepEqual(await store.has([a.id]), new Set([a.id]));
      assert.deepEqual(await store.get(a.id), a.data);
      await index.forget('chunks', a.id, claim); // the dead deleter's forget is a no-op now
      assert.deepEqual(await store.has([a.id]), new Set([a.id]));
      await emptyPrefix(prefix);
    });

    it('sweepAbandoned reclaims a put that died between its PUT and markUsed, and a deleter that died', async () => {
      const lease = 4 * FAST.requestTimeoutMs;
      const { store, index, prefix } = await openStore({ retry: FAST, claimLeaseMs: lease });
      const orphan = blob(1000);
      assert.ok(await index.beginPut('chunks', orphan.id, Date.now() - 10_000));
      await admin.send(new PutObjectCommand({ Bucket: bucket, Key: store.objectKey(orphan.id), Body: orphan.data }));
      const dead = blob(1000);
      await store.put(dead.id, dead.data);
      await store.sync();
      assert.ok(await index.claimForDelete('chunks', dead.id, { cutoffMs: Infinity, now: Date.now() - 2 * lease, staleClaimBeforeMs: -Infinity }));
      const live = blob(1000);
      await store.put(live.id, live.data);
      await store.sync();
      assert.deepEqual(await store.has([orphan.id, dead.id, live.id]), new Set([live.id]));
      assert.deepEqual(await store.sweepAbandoned(Date.now() - 5000), { storing: 1, deleting: 1, multipartUploads: 0 });
      assert.equal(await rawGet(store.objectKey(orphan.id)), null);
      assert.equal(await rawGet(store.objectKey(dead.id)), null);
      assert.deepEqual(await store.get(live.id), live.data);
      assert.deepEqual([...(await listAll(store)).keys()], [live.id]);
      assert.equal([...(index as MemoryChunkIndex).rows.keys()].length, 1);
      await emptyPrefix(prefix);
    });

    it('sweepAbandoned aborts multipart uploads a dead process left under its prefix, and no one else\'s', async () => {
      const { store, prefix } = await openStore({ namespace: 'manifests', staleUploadMs: 0 });
      const left = await admin.send(new CreateMultipartUploadCommand({ Bucket: bucket, Key: store.objectKey(blob(10).id) }));
      const foreign = await admin.send(new CreateMultipartUploadCommand({ Bucket: bucket, Key: `elsewhere-${prefix}x` }));
      const uploads = async (): Promise<string[]> => ((await admin.send(new ListMultipartUploadsCommand({ Bucket: bucket }))).Uploads ?? []).map((u) => u.UploadId!);
      assert.ok((await uploads()).includes(left.UploadId!));
      await new Promise((r) => setTimeout(r, 1100)); // RGW's Initiated has whole seconds
      assert.equal((await store.sweepAbandoned(Date.now())).multipartUploads, 1);
      const after = await uploads();
      assert.ok(!after.includes(left.UploadId!), 'the abandoned upload is gone');
      assert.ok(after.includes(foreign.UploadId!), 'an upload outside the store\'s prefix is left alone');
      await admin.send(new AbortMultipartUploadCommand({ Bucket: bucket, Key: `elsewhere-${prefix}x`, UploadId: foreign.UploadId! }));
      await emptyPrefix(prefix);
    });
  });
}

async function listAll(store: S3ChunkStore): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  for await (const e of store.list()) out.set(e.id, e.size);
  return out;
}

async function freePort(): Promise<number> {
  const srv = createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const { port } = srv.address() as AddressInfo;
  await new Promise<void>((r) => srv.close(() => r()));
  return port;
}

// ---- a fault-injecting HTTP proxy in front of the S3 endpoint --------------------------------------

type Fault = 'slowdown' | 'reset' | 'stall' | 'forbidden' | 'corrupt-request' | 'corrupt-response';

interface S3Proxy {
  url: string;
  /** Every request that reached the proxy (attempts), in order. */
  requests: Array<{ method: string; path: string; fault: Fault | null }>;
  /** The next `n` requests get `fault` (replacing what was armed). */
  fail(n: number, fault: Fault): void;
  close(): Promise<void>;
}

async function startS3Proxy(target: string): Promise<S3Proxy> {
  const up = new URL(target);
  let left = 0;
  let kind: Fault = 'slowdown';
  const requests: S3Proxy['requests'] = [];
  const sockets = new Set<Socket>();
  const stalled = new Set<ServerResponse>();
  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    const parts: Buffer[] = [];
    req.on('data', (d: Buffer) => parts.push(d));
    req.on('end', () => {
      let body = Buffer.concat(parts);
      const fault = left > 0 ? kind : null;
      if (left > 0) left--;
      requests.push({ method: req.method ?? '', path: req.url ?? '', fault });
      if (fault === 'reset') return void req.socket.resetAndDestroy();
      if (fault === 'stall') return void stalled.add(res);
      if (fault === 'slowdown' || fault === 'forbidden') {
        const [status, code] = fault === 'slowdown' ? [503, 'SlowDown'] : [403, 'AccessDenied'];
        res.writeHead(status, { 'content-type': 'application/xml' });
        return void res.end(`<?xml version="1.0" encoding="UTF-8"?><Error><Code>${code}</Code><Message>injected</Message></Error>`);
      }
      if (fault === 'corrupt-request' && body.length > 0) {
        body = Buffer.from(body);
        body[body.length >> 1]! ^= 0x10;
      }
      const fwd = request({ host: up.hostname, port: up.port, method: req.method, path: req.url, headers: req.headers }, (answer) => {
        const back: Buffer[] = [];
        answer.on('data', (d: Buffer) => back.push(d));
        answer.on('end', () => {
          let out = Buffer.concat(back);
          if (fault === 'corrupt-response' && out.length > 0) {
            out = Buffer.from(out);
            out[out.length >> 1]! ^= 0x10;
          }
          const headers = { ...answer.headers };
          delete headers['transfer-encoding'];
          if (req.method !== 'HEAD') headers['content-length'] = String(out.length);
          res.writeHead(answer.statusCode ?? 502, headers);
          res.end(out);
        });
      });
      fwd.on('error', () => res.destroy());
      fwd.end(body);
    });
  });
  server.on('connection', (s: Socket) => {
    sockets.add(s);
    s.once('close', () => sockets.delete(s));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    requests,
    fail: (n, f) => {
      left = n;
      kind = f;
    },
    close: () =>
      new Promise<void>((resolve) => {
        for (const r of stalled) r.destroy();
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}
