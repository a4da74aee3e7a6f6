/**
 * 1 MiB chunk PUT and GET throughput through S3ChunkStore at concurrency 8, beside the raw SDK
 * (PutObject/GetObject of the same bytes, no index, no hashing) on the same endpoint in the same run.
 * Needs SNAPFERRY_TEST_S3_* like the tests: `scripts/with-rgw.sh node --import tsx bench/s3-store.ts [COUNT]`.
 * Creates its own bucket and removes it.
 */
process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';

import { CreateBucketCommand, DeleteBucketCommand, DeleteObjectCommand, GetObjectCommand, ListObjectsV2Command, PutObjectCommand } from '@aws-sdk/client-s3';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createS3Client } from '../src/chunkstore/s3-client.ts';
import { S3ChunkStore } from '../src/chunkstore/s3-store.ts';
import type { ChunkIndex } from '../src/chunkstore/chunk-index.ts';
import { mapLimit } from '../src/lib/map-limit.ts';
import { SqliteMetadataStore } from '../src/metadata/sqlite/sqlite-metadata-store.ts';
import { MiB, mibps, median, timed } from './common.ts';

const conn = {
  endpoint: process.env.SNAPFERRY_TEST_S3_ENDPOINT ?? '',
  accessKeyId: process.env.SNAPFERRY_TEST_S3_ACCESS_KEY ?? '',
  secretAccessKey: process.env.SNAPFERRY_TEST_S3_SECRET_KEY ?? '',
  region: process.env.SNAPFERRY_TEST_S3_REGION ?? 'us-east-1',
};
if (!conn.endpoint) {
  console.error('set SNAPFERRY_TEST_S3_* (scripts/with-rgw.sh node --import tsx bench/s3-store.ts)');
  process.exit(2);
}
const COUNT = Number(process.argv[2] ?? 256);
const CONCURRENCY = 8;
const ROUNDS = 3;
const client = createS3Client(conn);
const bucket = `snapferry-bench-${Date.now().toString(36)}`;
await client.send(new CreateBucketCommand({ Bucket: bucket }));

/** A trivial in-memory index: measures the S3 path alone. */
async function memoryIndex(): Promise<{ index: ChunkIndex; close(): Promise<void> }> {
  const rows = new Map<string, { state: 'storing' | 'present' | 'deleting'; size: number; lastUsed: number; epoch: string }>();
  const index: ChunkIndex = {
    async beginPut(ns, id, now) {
      const r = rows.get(ns + id);
      if (!r) rows.set(ns + id, { state: 'storing', size: 0, lastUsed: now, epoch: 'e' });
      return r?.state === 'deleting' ? null : 'e';
    },
    async markUsed(ns, id, _e, size, now) {
      rows.set(ns + id, { state: 'present', size, lastUsed: now, epoch: 'e' });
      return true;
    },
    async present(ns, ids) {
      return new Set(ids.filter((id) => rows.get(ns + id)?.state === 'present'));
    },
    async claimForDelete() {
      return null;
    },
    async forget() {},
    async *list() {},
    async sync() {},
  };
  return { index, close: async () => undefined };
}

async function sqliteIndex(): Promise<{ index: ChunkIndex; close(): Promise<void> }> {
  const dir = await mkdtemp(join(tmpdir(), 'snapferry-bench-s3-'));
  const meta = new SqliteMetadataStore(join(dir, 'meta.db'));
  return { index: meta.chunkIndex, close: async () => (await meta.close(), await rm(dir, { recursive: true, force: true })) };
}

const chunks = Array.from({ length: COUNT }, () => {
  const data = randomBytes(MiB);
  return { id: createHash('sha256').update(data).digest('hex'), data };
});
const bytes = COUNT * MiB;

async function emptyBucket(): Promise<void> {
  let token: string | undefined;
  do {
    const page = await client.send(new ListObjectsV2Command({ Bucket: bucket, ContinuationToken: token }));
    await mapLimit(page.Contents ?? [], 16, async (o) => void (await client.send(new DeleteObjectCommand({ Bucket: bucket, Key: o.Key }))));
    token = page.NextContinuationToken;
  } while (token);
}

const results: Record<string, { put: number[]; get: number[] }> = {};
const record = (name: string, kind: 'put' | 'get', ms: number): void => void (results[name] ??= { put: [], get: [] })[kind].push(ms);

for (let round = 0; round < ROUNDS; round++) {
  // Raw SDK: the peer, same bytes, same concurrency, same client settings.
  const raw = `raw/${round}/`;
  record('raw SDK', 'put', (await timed(() => mapLimit(chunks, CONCURRENCY, async (c) => void (await client.send(new PutObjectCommand({ Bucket: bucket, Key: raw + c.id, Body: c.data })))))).ms);
  record('raw SDK', 'get', (await timed(() => mapLimit(chunks, CONCURRENCY, async (c) => {
    const res = await client.send(new GetObjectCommand({ Bucket: bucket, Key: raw + c.id }));
    await res.Body!.transformToByteArray();
  }))).ms);
  for (const [name, make] of [['S3ChunkStore + memory index', memoryIndex], ['S3ChunkStore + SQLite index', sqliteIndex]] as const) {
    const ix = await make();
    const store = await S3ChunkStore.open({ ...conn, client, bucket, prefix: `${name.includes('SQLite') ? 'sqlite' : 'mem'}/${round}/`, namespace: 'chunks', index: ix.index });
    record(name, 'put', (await timed(async () => {
      const w = store.writer();
      await mapLimit(chunks, CONCURRENCY, async (c) => void (await w.put(c.id, c.data)));
      await w.sync();
    })).ms);
    record(name, 'get', (await timed(() => mapLimit(chunks, CONCURRENCY, async (c) => void (await store.get(c.id))))).ms);
    await ix.close();
  }
  await emptyBucket();
}
await client.send(new DeleteBucketCommand({ Bucket: bucket }));
client.destroy();

console.log(`${COUNT} x 1 MiB chunks, concurrency ${CONCURRENCY}, median of ${ROUNDS} rounds (${conn.endpoint})\n`);
console.log('| path | PUT | GET |');
console.log('|---|---|---|');
for (const [name, r] of Object.entries(results)) {
  console.log(`| ${name} | ${mibps(bytes, median(r.put))} | ${mibps(bytes, median(r.get))} |`);
}
