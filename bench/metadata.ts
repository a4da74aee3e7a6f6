/**
 * Metadata operation rates, SQLite vs PostgreSQL, on this machine: the calls the API and the
 * workers make most (snapshot insert/get/list, job enqueue/claim, chunk-index puts and
 * "which do you lack" touches).
 *
 *   node --import tsx bench/metadata.ts [--seconds 2]
 *
 * Both are durable as deployed: SQLite with synchronous=FULL (the store's setting) in .bench-data/,
 * PostgreSQL with fsync and synchronous_commit on (a server started here on a free loopback port
 * and stopped at the end, data on the same disk; or SNAPFERRY_BENCH_PG_URL, whose user may create
 * databases). Each operation runs for a fixed time with 1 caller, then with 16 at once: SQLite's
 * calls are synchronous, so its 16 callers take turns; PostgreSQL's overlap on 16 connections.
 */
import { mkdir, rm } from 'node:fs/promises';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { randomBytes } from 'node:crypto';
import { SqliteMetadataStore } from '../src/metadata/sqlite/sqlite-metadata-store.ts';
import { PostgresMetadataStore } from '../src/metadata/postgres/postgres-metadata-store.ts';
import type { MetadataStore } from '../src/metadata/metadata-store.ts';
import type { Snapshot } from '../src/domain/snapshot.ts';
import { BENCH_DIR } from './common.ts';
import { freshDatabase, startPostgres } from '../test/helpers/postgres-server.ts';

const { values } = parseArgs({ options: { seconds: { type: 'string', default: '2' } } });
const SECONDS = Number(values.seconds);

let n = 0;
const snap = (over: Partial<Snapshot> = {}): Snapshot => ({
  id: `s-${(++n).toString(36).padStart(8, '0')}${randomBytes(3).toString('hex')}`, accountId: 'acct', name: 'snap', desc: '', volumeId: `v-${n % 100}`,
  sizeInGB: 40, createTime: Date.now(), status: 'Available', createMethod: 'MANUAL', progress: 100, storageType: 'hp1', retentionInDays: null,
  tags: [{ tagKey: 'env', tagValue: 'bench' }], sourceRegion: null, sourceSnapshotId: null, manifestId: randomBytes(32).toString('hex'), lastError: null, ...over,
});

/** Calls `op` from `callers` loops for SECONDS; ops per second. */
async function rate(callers: number, op: (i: number) => Promise<unknown>): Promise<number> {
  const until = performance.now() + SECONDS * 1000;
  let done = 0;
  const start = performance.now();
  await Promise.all(Array.from({ length: callers }, async () => {
    while (performance.now() < until) await op(done++);
  }));
  return done / ((performance.now() - start) / 1000);
}

interface Case {
  name: string;
  /** Called once per store before timing. */
  setup?: (m: MetadataStore) => Promise<void>;
  op: (m: MetadataStore, i: number) => Promise<unknown>;
}

const listIds: string[] = [];
const chunkIds = Array.from({ length: 20_000 }, () => randomBytes(32).toString('hex'));

const cases: Case[] = [
  { name: 'snapshot insert (quota-checked)', op: (m) => m.snapshots.insertIfAbsent(snap(), 1_000_000) },
  {
    name: 'snapshot get',
    setup: async (m) => {
      listIds.length = 0;
      for (let i = 0; i < 2000; i++) {
        const s = snap({ accountId: 'lister' });
        await m.snapshots.insertIfAbsent(s);
        listIds.push(s.id);
      }
    },
    op: (m, i) => m.snapshots.get('lister', listIds[i % listIds.length]!),
  },
  { name: 'snapshot list (page of 50)', op: (m, i) => m.snapshots.list('lister', {}, { marker: listIds[(i * 37) % 1900]!, maxKeys: 50 }) },
  { name: 'job enqueue', op: (m, i) => m.jobs.enqueue({ kind: 'copy', key: `k${n}-${i}-${randomBytes(4).toString('hex')}`, group: `copy:${['gz', 'hkg'][i % 2]}`, payload: { snapshotId: 's-x', to: 'gz' } }) },
  {
    name: 'job claim + finish (cap 20 per group)',
    op: async (m, i) => {
      const job = await m.jobs.claim(['copy'], `w${i % 16}`, Date.now(), 60_000, () => 20, null);
      if (job) await m.jobs.finish(job.id, job.leaseToken, 'done', null);
    },
  },
  {
    name: 'chunk index put (beginPut + markUsed)',
    op: async (m, i) => {
      const id = chunkIds[i % chunkIds.length]!;
      const epoch = await m.chunkIndex!.beginPut('chunks', id, Date.now());
      if (epoch) await m.chunkIndex!.markUsed('chunks', id, epoch, 1 << 20, Date.now());
    },
  },
  { name: 'chunk index present+touch (1,024 ids)', op: (m, i) => m.chunkIndex!.present('chunks', chunkIds.slice((i * 1024) % 18_000, ((i * 1024) % 18_000) + 1024), Date.now()) },
];

async function measure(label: string, m: MetadataStore): Promise<Map<string, [number, number]>> {
  const out = new Map<string, [number, number]>();
  for (const c of cases) {
    if (c.name.startsWith('chunk') && !m.chunkIndex) continue;
    await c.setup?.(m);
    const one = await rate(1, (i) => c.op(m, i));
    const many = await rate(16, (i) => c.op(m, i));
    out.set(c.name, [one, many]);
    console.error(`${label}: ${c.name}: ${one.toFixed(0)}/s, ${many.toFixed(0)}/s with 16 callers`);
  }
  return out;
}

const dir = path.join(BENCH_DIR, 'metadata');
await rm(dir, { recursive: true, force: true });
await mkdir(dir, { recursive: true });
const sqlite = new SqliteMetadataStore(path.join(dir, 'meta.db'));
const sqliteRates = await measure('SQLite', sqlite);
await sqlite.close();

const server = process.env.SNAPFERRY_BENCH_PG_URL ? null : await startPostgres({ durable: true });
let pgRates: Map<string, [number, number]>;
try {
  const db = await freshDatabase(process.env.SNAPFERRY_BENCH_PG_URL ?? server!.url);
  const pg = await PostgresMetadataStore.open(db.url, { maxConnections: 16 });
  try {
    pgRates = await measure('PostgreSQL', pg);
  } finally {
    await pg.close();
    await db.drop();
  }
} finally {
  await server?.stop();
}
await rm(dir, { recursive: true, force: true });

const fmt = (x: number | undefined): string => (x === undefined ? '-' : x >= 100 ? x.toFixed(0) : x.toFixed(1));
console.log(`| operation (ops/s, ${SECONDS} s each) | SQLite, 1 caller | SQLite, 16 callers | PostgreSQL, 1 caller | PostgreSQL, 16 callers |`);
console.log('|---|---:|---:|---:|---:|');
for (const c of cases) {
  const s = sqliteRates.get(c.name);
  const p = pgRates!.get(c.name);
  console.log(`| ${c.name} | ${fmt(s?.[0])} | ${fmt(s?.[1])} | ${fmt(p?.[0])} | ${fmt(p?.[1])} |`);
}
