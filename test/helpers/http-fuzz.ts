/**
 * Property-based fuzzing of a region's HTTP API over raw sockets (fast-check). Used by
 * `test/fuzz-http.test.ts` (a bounded run in `npm test`) and `scripts/fuzz.ts` (`npm run fuzz`).
 *
 * A case is one connection: a request built from a route of the API (every public route, the
 * internal `/internal/v1` ones, `/healthz`, `/metrics`) with hostile parts: any method, ids with
 * `../`, percent-encoded and raw unicode and NUL, odd queries, odd headers (too large, duplicated,
 * non-ASCII, conflicting), bodies mistyped, truncated, deeply nested, huge or not JSON at all,
 * framed honestly or not (chunked, a Content-Length too short, too long, absurd), signed well, badly,
 * with a stale clock, with another account's or the regions' key, or signed over other bytes, then
 * written in random pieces and ended by keeping the connection, a half-close or a reset. A family of
 * cases takes such a request and mutates its bytes; another sends raw garbage.
 *
 * Checked on every case (`runCase`): every answer is a final status below 500 with
 * `x-bce-request-id`; every error answer is exactly `{requestId, code, message}` with the header's
 * request id, a code of the catalog and the catalog's status; a success body never carries a
 * request id; a complete request on a kept connection is answered, and every connection answered
 * or closed, within `ANSWER_BOUND_MS`; a connection left open answers a follow-up `GET /healthz` (the stream is not
 * out of step); nothing is logged at level `error`. After every batch (`checkServing`): a third
 * account that the fuzzer never uses writes, reads back and lists through normal signed calls, and no
 * connection is left open on the server.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { createRequire } from 'node:module';
import { connect } from 'node:net';
import fc from 'fast-check';
import { Agent, request } from 'undici';
import { ERROR_CATALOG } from '../../src/domain/errors.ts';
import { formatTimestamp, parseRawQuery, sign, uriEncode } from '../../src/lib/bce-auth.ts';
import type { Account } from '../../src/config.ts';
import { ALICE, BOB } from './region-harness.ts';
import { startLiveRegion, type Answer, type LiveRegion } from './live-region.ts';
import { signedRequest } from './signed-request.ts';

const zstd = createRequire(import.meta.url)('zstd-napi') as { compress(b: Buffer): Buffer };

/** A complete request is answered, and every connection answered or closed, within this. */
export const ANSWER_BOUND_MS = 15_000;
/** Cases between two checks that the region still serves normal calls. */
export const BATCH = 50;

export const CAROL: Account = { accountId: 'carol', accessKeyId: 'carol-ak-0123456789abcdef', secretAccessKey: 'carol-secret-never-fuzzed' };

interface Keys {
  ak: string;
  sk: string;
}

export interface FuzzTarget {
  live: LiveRegion;
  port: number;
  alice: Keys;
  bob: Keys;
  carol: Keys;
  /** The regions' service key (what peer regions and the admin CLI sign with). */
  region: Keys;
  metricsToken: string;
  /** Ids the fuzzer aims at, refreshed after every batch (cases may delete them). */
  pool: { volumes: string[]; snapshots: string[] };
  canaryVolume: string;
  /** Error lines already seen (so each case reports only its own). */
  errorsSeen: number;
  stats: FuzzStats;
}

export interface FuzzStats {
  cases: number;
  byFamily: Record<string, number>;
  byStatus: Record<string, number>;
  byCode: Record<string, number>;
  /** `family code` (or `family status` for answers without a code) -> count. */
  byFamilyCode: Record<string, number>;
  answered: number;
  closedWithoutAnswer: number;
  resetByClient: number;
  followUps: number;
  slowestMs: number;
  slowestCase: string;
  /** Cases that took over 5 s (answered or closed that late), with their time. */
  slowCases: string[];
  rssStart: number;
  rssMax: number;
  batches: number;
}

// ---- the target -----------------------------------------------------------------------------------

const HOST = '127.0.0.1';

/** Normal calls use a connection each (no keep-alive), so the server's connection count can reach 0. */
const oneShot = new Agent({ pipelining: 0 });

/** A normal signed call (the official SDKs' signature, a fresh connection). */
export async function call(port: number, method: string, path: string, body?: string | Buffer | Record<string, unknown>, opts: { keys?: Keys; headers?: Record<string, string>; contentSha256?: boolean } = {}): Promise<Answer> {
  const keys = opts.keys ?? { ak: ALICE.accessKeyId, sk: ALICE.secretAccessKey };
  const signed = signedRequest({ method, url: path, body, keys, host: `${HOST}:${port}`, extraHeaders: opts.headers, contentSha256: opts.contentSha256 });
  const res = await request(`http://${HOST}:${port}${path}`, { method: method as 'GET', headers: signed.headers, body: signed.payload, dispatcher: oneShot });
  const raw = Buffer.from(await res.body.arrayBuffer());
  const type = String(res.headers['content-type'] ?? '');
  return { status: res.statusCode, headers: res.headers, raw, json: type.includes('json') && raw.length > 0 ? JSON.parse(raw.toString('utf8')) : null };
}

async function waitUntil<T>(fn: () => Promise<T | null | undefined | false>, ms: number, what: string): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

export async function startFuzzTarget(): Promise<FuzzTarget> {
  const live = await startLiveRegion({ accounts: [CAROL] });
  const alice = { ak: ALICE.accessKeyId, sk: ALICE.secretAccessKey };
  const bob = { ak: BOB.accessKeyId, sk: BOB.secretAccessKey };
  const carol = { ak: CAROL.accessKeyId, sk: CAROL.secretAccessKey };
  const t: FuzzTarget = {
    live, port: live.port, alice, bob, carol,
    region: { ak: 'snapferry-region-hkg', sk: live.config.regionSecret },
    metricsToken: live.config.metricsToken,
    pool: { volumes: [], snapshots: [] },
    canaryVolume: '',
    errorsSeen: 0,
    stats: {
      cases: 0, byFamily: {}, byStatus: {}, byCode: {}, byFamilyCode: {}, answered: 0, closedWithoutAnswer: 0, resetByClient: 0, followUps: 0,
      slowestMs: 0, slowestCase: '', slowCases: [], rssStart: process.memoryUsage().rss, rssMax: 0, batches: 0,
    },
  };
  // Each fuzzed account gets a disk with data and a snapshot of it; Carol's disk is the canary.
  for (const keys of [alice, bob, carol]) {
    const created = await call(live.port, 'POST', '/v2/volume', { cdsSizeInGB: 1, name: 'fuzz' }, { keys });
    assert.equal(created.status, 200, JSON.stringify(created.json));
    const id = created.json.volumeIds[0] as string;
    await waitUntil(async () => (await call(live.port, 'GET', `/v2/volume/${id}`, undefined, { keys })).json.volume.status === 'Available', 20_000, `${id} Available`);
    const w = await call(live.port, 'PUT', `/v2/volume/${id}/data?offset=0`, randomBytes(8192), { keys, headers: { 'content-type': 'application/octet-stream' } });
    assert.equal(w.status, 200);
    if (keys === carol) {
      t.canaryVolume = id;
      continue;
    }
    const snap = await call(live.port, 'POST', '/v2/snapshot', { volumeId: id, snapshotName: 'fuzz' }, { keys });
    assert.equal(snap.status, 200, JSON.stringify(snap.json));
    await waitUntil(async () => (await call(live.port, 'GET', `/v2/snapshot/${snap.json.snapshotId}`, undefined, { keys })).json.snapshot.status === 'Available', 20_000, 'snapshot Available');
  }
  await refreshPool(t);
  return t;
}

/** The newest ids of Alice's and Bob's disks and snapshots (cases create and delete them). */
async function refreshPool(t: FuzzTarget): Promise<void> {
  const volumes: string[] = [];
  const snapshots: string[] = [];
  for (const keys of [t.alice, t.bob]) {
    const v = await call(t.port, 'GET', '/v2/volume?maxKeys=1000', undefined, { keys });
    const s = await call(t.port, 'GET', '/v2/snapshot?maxKeys=1000', undefined, { keys });
    volumes.push(...v.json.volumes.slice(0, 3).map((x: any) => x.id), ...v.json.volumes.slice(-3).map((x: any) => x.id));
    snapshots.push(...s.json.snapshots.slice(0, 3).map((x: any) => x.id), ...s.json.snapshots.slice(-3).map((x: any) => x.id));
  }
  // Never empty: a made-up id of the right shape stands in for a deleted pool.
  t.pool = { volumes: volumes.length ? [...new Set(volumes)] : ['v-gone0000'], snapshots: snapshots.length ? [...new Set(snapshots)] : ['s-gone0000'] };
}

// ---- requests as data -----------------------------------------------------------------------------

/** An id as the fuzzer names it: resolved against the live pool when the case runs. */
type IdSpec = { kind: 'volume' | 'snapshot'; pick: number } | { kind: 'literal'; text: string };

type AuthSpec =
  | { kind: 'none' }
  | { kind: 'signed'; who: 'alice' | 'bob' | 'carol-never' | 'region' | 'unknown' | 'region-wrong-secret' | 'region-unknown-name'; skewSec: number; expirationSec: number; signedHeaders: 'default' | 'explicit' | 'odd'; tamper: 'none' | 'signature' | 'ak-case' | 'timestamp' }
  | { kind: 'garbage'; value: string };

type DigestSpec = 'none' | 'sha256' | 'md5' | 'both' | 'wrong-sha256' | 'wrong-md5' | 'bad-sha256' | 'bad-md5' | 'sha256-unsigned' | 'sha256-of-other';

type Framing = 'exact' | 'chunked' | 'short' | 'long' | 'both' | 'bad-chunk' | 'huge-declared' | 'bare';

export interface HttpCase {
  family: string;
  method: string;
  /** Path template pieces: literal text, or an id to insert (percent-encoded unless `raw`). */
  path: Array<string | { id: IdSpec; raw: boolean }>;
  query: Array<[string, string | null]>;
  rawQuery: boolean;
  version: string;
  host: 'ok' | 'none' | 'dup' | 'empty' | 'other';
  headers: Array<[string, string]>;
  auth: AuthSpec;
  digest: DigestSpec;
  body: Buffer | null;
  framing: Framing;
  /** Where the bytes are cut into separate writes. */
  cuts: number[];
  ending: 'keep' | 'half-close' | 'reset';
  /** Mutations of the finished bytes (the `mutated` family). */
  mutations: Array<{ at: number; op: 'flip' | 'insert' | 'delete'; byte: number }>;
}

// ---- generators -----------------------------------------------------------------------------------

const HOSTILE_IDS = [
  '..', '../', '../..', '..%2F..%2Fcredentials.json', '..%2f..%2f..%2fetc%2fpasswd', '%2e%2e', '%2e%2e%2f%2e%2e%2finternal%2fv1%2fadmin%2fgc',
  '.', '%2F', '%00', 'v-%00', 'v-abc%00def', 's-%00%00', '%', '%zz', '%E2%82', '%C0%AE%C0%AE%2F', '%F0%9F%92%A5', '%EF%BF%BF', '%ED%A0%80',
  'v-%0d%0aX-Injected:%201', '%20', '+', '*', '%3F', '%23', 'v-' + 'a'.repeat(98), 'a'.repeat(101), 'v-' + 'b'.repeat(2000),
  "v-'%20OR%20'1'%3D'1", '%22%3E%3Cscript%3E', 'V-UPPER', 's-zz000000', 'v-zz000000', 's-', 'v-', '',
  'snapshots', 'admin', '..%5c..%5c', '%u002e%u002e', '%252e%252e%252f',
];

const idSpec: fc.Arbitrary<IdSpec> = fc.oneof(
  { weight: 5, arbitrary: fc.record({ kind: fc.constantFrom('volume' as const, 'snapshot' as const), pick: fc.nat() }) },
  { weight: 3, arbitrary: fc.constantFrom(...HOSTILE_IDS).map((text) => ({ kind: 'literal' as const, text })) },
  { weight: 1, arbitrary: fc.string({ unit: 'binary', maxLength: 24 }).map((s) => ({ kind: 'literal' as const, text: uriEncode(s) })) },
  { weight: 1, arbitrary: fc.string({ unit: 'grapheme', maxLength: 12 }).map((s) => ({ kind: 'literal' as const, text: uriEncode(s) })) },
);

const pathId = fc.record({ id: idSpec, raw: fc.oneof({ weight: 12, arbitrary: fc.constant(false) }, { weight: 1, arbitrary: fc.constant(true) }) });

const ODD_NUMBERS = [0, -1, 1, 2, 5, 6, 512, 1000, 1001, 4096, 32765, 32766, 1.5, 1e308, -1e308, 2 ** 53, 2 ** 53 + 2, 1e21, 0.1];
const ODD_NUMBER_STRINGS = ['0', '-1', '1', '01', ' 5', '1e3', '-0', '0x10', '99999999999999999999', '4096', '1073741824', '512', 'NaN', 'Infinity', ''];

/** A nested value of the given depth (arrays or objects), built as text so it can be deep. */
function deepText(depth: number, kind: 'array' | 'object', close: boolean): string {
  const open = kind === 'array' ? '[' : '{"a":';
  const end = kind === 'array' ? ']' : '}';
  return open.repeat(depth) + (kind === 'array' ? '' : '1') + (close ? end.repeat(depth) : '');
}

/** A JSON value for a field: the right kind mostly, else anything. Raw JSON text, so nesting can be deep. */
function field(good: fc.Arbitrary<unknown>): fc.Arbitrary<string> {
  return fc.oneof(
    { weight: 6, arbitrary: good.map((v) => JSON.stringify(v)) },
    { weight: 1, arbitrary: fc.jsonValue({ maxDepth: 3 }).map((v) => JSON.stringify(v)) },
    { weight: 1, arbitrary: fc.constantFrom(...ODD_NUMBERS).map((n) => JSON.stringify(n)) },
    { weight: 1, arbitrary: fc.constantFrom(...ODD_NUMBER_STRINGS).map((n) => JSON.stringify(n)) },
    { weight: 1, arbitrary: fc.constantFrom('null', '""', '0', 'true', '[]', '{}', '"\\u0000"', '"\\ud800"', JSON.stringify('x'.repeat(70)), JSON.stringify('é'.repeat(300)), '1' + '0'.repeat(400)) },
    { weight: 1, arbitrary: fc.record({ depth: fc.integer({ min: 50, max: 5000 }), kind: fc.constantFrom('array' as const, 'object' as const) }).map(({ depth, kind }) => deepText(depth, kind, true)) },
  );
}

/** A JSON object with some of `fields` (each maybe mistyped) and maybe extra keys, as text. */
function objectOf(fields: Record<string, fc.Arbitrary<unknown>>): fc.Arbitrary<string> {
  const entries = Object.entries(fields).map(([k, v]) => fc.option(field(v).map((text) => `${JSON.stringify(k)}:${text}`), { nil: undefined, freq: 3 }));
  const extra = fc.array(
    fc.tuple(fc.oneof(fc.constantFrom('__proto__', 'constructor', 'prototype', 'accountId', 'id', 'requestId', ''), fc.string({ maxLength: 8 })), fc.jsonValue({ maxDepth: 2 })),
    { maxLength: 2 },
  ).map((pairs) => pairs.map(([k, v]) => `${JSON.stringify(k)}:${JSON.stringify(v)}`));
  return fc.tuple(fc.tuple(...entries), extra).map(([parts, more]) => `{${[...parts.filter((p): p is string => p !== undefined), ...more].join(',')}}`);
}

const snapshotName = fc.oneof(fc.constantFrom('fuzz', 'a', 'A-b_c d/e.f', '名字', 'x'.repeat(65), 'x'.repeat(66), '1abc', '', ' '), fc.string({ maxLength: 12 }));
const tags = fc.array(fc.record({ tagKey: fc.oneof(fc.string({ maxLength: 6 }), fc.constant(7 as unknown as string)), tagValue: fc.option(fc.string({ maxLength: 6 })) }, { requiredKeys: [] }), { maxLength: 3 });
const volumeRef = fc.constantFrom('$volume', 'v-zz000000', '../x');
const snapshotRef = fc.constantFrom('$snapshot', 's-zz000000', '../x');
/** Disk sizes (GB): mostly small, sometimes the largest (each open disk keeps 4 bytes per 1 MiB chunk in memory). */
const diskSize = fc.oneof({ weight: 8, arbitrary: fc.integer({ min: 1, max: 64 }) }, { weight: 1, arbitrary: fc.integer({ min: 1, max: 32765 }) }, { weight: 1, arbitrary: fc.constantFrom(0, 32765, 32766, -1) });
const hex64 = fc.uint8Array({ minLength: 32, maxLength: 32 }).map((a) => Buffer.from(a).toString('hex'));

const BODIES = {
  volumeCreate: objectOf({
    cdsSizeInGB: diskSize, snapshotId: snapshotRef, purchaseCount: fc.integer({ min: 1, max: 5 }),
    storageType: fc.constantFrom('hp1', 'cloud_hp1', 'ssd', 'local', 'local-ssd', 'elastic_ephemeral_disk', 'hdd', 'floppy'),
    zoneName: fc.constantFrom('cn-bj-a', 'cn-bj-d', 'cn-bj-e', 'cn-gz-a', ''), name: fc.string({ maxLength: 70 }), description: fc.string({ maxLength: 250 }), tags,
  }),
  snapshotCreate: objectOf({ volumeId: volumeRef, snapshotName, desc: fc.string({ maxLength: 210 }), retentionInDays: fc.integer({ min: 0, max: 70000 }), tags }),
  resize: objectOf({ newCdsSizeInGB: diskSize, newVolumeType: fc.constantFrom('hp1', 'ssd', 'local', 'premium_ssd', 'x') }),
  rollback: objectOf({ snapshotId: snapshotRef }),
  modify: objectOf({ snapshotName, desc: fc.string({ maxLength: 210 }), retentionInDays: fc.integer({ min: 0, max: 70000 }) }),
  copy: objectOf({
    destRegionInfos: fc.array(fc.record({ destRegion: fc.constantFrom('hkg', 'gz', 'bj', 'mars', ''), name: snapshotName }, { requiredKeys: [] }), { maxLength: 3 }),
  }),
  reserve: objectOf({
    accountId: fc.constantFrom('alice', 'bob', 'carol', 'nobody', ''), name: snapshotName, desc: fc.string({ maxLength: 20 }), sizeInGB: diskSize,
    storageType: fc.constantFrom('hp1', 'local'), sourceRegion: fc.constantFrom('hkg', 'gz', 'bj', 'mars'), sourceSnapshotId: fc.constantFrom('s-src00001', 's-src00002'),
  }),
  plan: objectOf({ manifestId: hex64, size: fc.integer({ min: 0, max: 1 << 26 }), parts: fc.array(hex64, { maxLength: 4 }) }),
  missing: objectOf({ ids: fc.array(fc.oneof(hex64, fc.string({ maxLength: 4 })), { maxLength: 20 }) }),
  progress: objectOf({ progress: fc.integer({ min: -10, max: 200 }) }),
  fail: objectOf({ reason: fc.string({ maxLength: 40 }) }),
} as const;

type BodyKind = keyof typeof BODIES | 'data' | 'raw' | 'none';

/** A body for a route: its own JSON (maybe broken), or anything else. */
function bodyFor(kind: BodyKind): fc.Arbitrary<Buffer | null> {
  const own: fc.Arbitrary<Buffer | null> =
    kind === 'none' ? fc.constant(null)
    : kind === 'data' ? fc.oneof(
        fc.integer({ min: 0, max: 16 }).map((k) => randomBytesSeeded(k * 512)),
        fc.integer({ min: 1, max: 3000 }).map((n) => randomBytesSeeded(n)),
      )
    : kind === 'raw' ? fc.oneof(
        fc.uint8Array({ maxLength: 4096 }).map((a) => Buffer.from(a)),
        fc.uint8Array({ maxLength: 2048 }).map((a) => zstd.compress(Buffer.from(a))),
        fc.constant(zstd.compress(Buffer.alloc(8 << 20))), // a "bomb": 8 MiB of zeros in a few hundred bytes
      )
    : BODIES[kind].map((text) => Buffer.from(text));
  const json = kind === 'none' || kind === 'data' || kind === 'raw' ? BODIES.volumeCreate : BODIES[kind];
  return fc.oneof(
    { weight: 12, arbitrary: own },
    { weight: 2, arbitrary: fc.constant(null) },
    { weight: 1, arbitrary: fc.jsonValue({ maxDepth: 4 }).map((v) => Buffer.from(JSON.stringify(v) ?? 'null')) },
    // Truncated JSON.
    { weight: 2, arbitrary: fc.tuple(json, fc.nat()).map(([text, cut]) => Buffer.from(text.slice(0, cut % Math.max(1, text.length)))) },
    // Deeply nested, closed or not.
    { weight: 1, arbitrary: fc.record({ depth: fc.integer({ min: 1000, max: 400_000 }), kind: fc.constantFrom('array' as const, 'object' as const), close: fc.boolean() }).map(({ depth, kind: k, close }) => Buffer.from(deepText(depth, k, close))) },
    { weight: 1, arbitrary: fc.uint8Array({ maxLength: 2048 }).map((a) => Buffer.from(a)) },
    // Not UTF-8, a BOM, NUL inside, a huge number, only whitespace.
    { weight: 1, arbitrary: fc.constantFrom(
      Buffer.from([0x7b, 0xff, 0xfe, 0x7d]), Buffer.from('\ufeff{"cdsSizeInGB":1}'), Buffer.from('{"name":"a\u0000b","cdsSizeInGB":1}'),
      Buffer.from(`{"cdsSizeInGB":1${'0'.repeat(100_000)}}`), Buffer.from(' \n\t '), Buffer.from('{"a":1}{"b":2}'), Buffer.from('{"a":1,}'), Buffer.from("{'a':1}"),
    ) },
    // Around the 1 MiB limit: just under (padded JSON), just over, well over.
    { weight: 1, arbitrary: fc.constantFrom((1 << 20) - 20, (1 << 20) + 1, (1 << 20) + 65_536, 3 << 20).map((n) => {
      const head = Buffer.from('{"cdsSizeInGB":1,"name":"');
      const tail = Buffer.from('"}');
      return Buffer.concat([head, Buffer.alloc(Math.max(0, n - head.length - tail.length), 0x61), tail]);
    }) },
  );
}

/** Deterministic filler bytes (fast-check already chose the length; the content does not matter). */
function randomBytesSeeded(n: number): Buffer {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = (i * 131 + 7) & 0xff;
  return b;
}

const LIST_KEYS = ['marker', 'maxKeys', 'volumeIds', 'volumeId', 'zoneName', 'name', 'instanceId', 'clusterId', 'chargeFilter', 'usageFilter'];
const ACTION_KEYS = ['rollback', 'resize', 'modifyAttribute', 'clientToken', 'offset', 'zeroLength'];

const queryValue = fc.oneof(
  fc.constant(null),
  fc.constantFrom(...ODD_NUMBER_STRINGS),
  fc.constantFrom('$volume', '$snapshot', '$volume,$volume', 'v-zz000000', 'cn-bj-a', 'prepay', 'system', 'postpay', 'x'.repeat(65), 'tok-1', 'tok-2', 'a\u0000b', '名字'),
  fc.string({ unit: 'binary', maxLength: 16 }),
);

const query = fc.array(
  fc.tuple(fc.oneof({ weight: 4, arbitrary: fc.constantFrom(...LIST_KEYS, ...ACTION_KEYS) }, { weight: 1, arbitrary: fc.string({ maxLength: 6 }) }), queryValue),
  { maxLength: 5 },
);

const CONTENT_TYPES = ['application/json', 'application/json; charset=utf-8', 'application/octet-stream', 'text/plain', 'multipart/form-data; boundary=x', 'not a type', '', ';;;', 'application/json; charset=ebcdic', 'application/x-www-form-urlencoded'];
const RANGES = ['bytes=0-4095', 'bytes=-1', 'bytes=0-', 'bytes=99999999999999-', 'bytes=5-1', 'bytes=0-1,2-3', 'items=0-1', 'bytes=abc', 'bytes=-0', 'bytes=1073741823-1073741824', 'bytes=-99999999999999999999', ''];

const header: fc.Arbitrary<Array<[string, string]>> = fc.oneof(
  { weight: 3, arbitrary: fc.constantFrom(...CONTENT_TYPES).map((v) => [['content-type', v]] as Array<[string, string]>) },
  { weight: 2, arbitrary: fc.constantFrom(...RANGES).map((v) => [['range', v]] as Array<[string, string]>) },
  { weight: 1, arbitrary: fc.constantFrom('100-continue', '100-continue', 'tea', '').map((v) => [['expect', v]] as Array<[string, string]>) },
  { weight: 4, arbitrary: fc.constantFrom<Array<[string, string]>>(
    [['x-bce-security-token', 'token']], [['x-snapferry-forwarded', 'yes']], [['x-snapferry-chunk-encoding', 'zstd']], [['x-snapferry-chunk-encoding', 'gzip']],
    [['x-snapferry-chunk-encoding', '']], [['connection', 'close']], [['connection', 'upgrade'], ['upgrade', 'websocket']], [['upgrade', 'h2c']],
    [['accept-encoding', 'gzip, br']], [['x-bce-date', 'yesterday']], [['x-bce-request-id', 'mine']], [['cookie', 'a=b']], [['x-forwarded-for', '10.0.0.1']],
    [['x-pad', 'a'.repeat(1000)]], [['x-pad', 'a'.repeat(15_500)]], Array.from({ length: 60 }, (_, i) => [`x-many-${i}`, String(i)] as [string, string]),
    [['x-utf8', Buffer.from('ünïcødé 💥', 'utf8').toString('latin1')]], [['content-encoding', 'gzip']], [['te', 'trailers']], [['trailer', 'x-bce-content-sha256']],
  ) },
  // Headers Node's parser refuses (400, 431).
  { weight: 1, arbitrary: fc.constantFrom<Array<[string, string]>>(
    [['x-pad', 'a'.repeat(17_000)]], [['x-nul', 'a\u0000b']], [['x-ctl', 'a\u0007b']], [['bad header', 'x']], [['', 'empty name']], [['transfer-encoding', 'identity']],
  ) },
  { weight: 2, arbitrary: fc.tuple(fc.stringMatching(/^[a-z][a-z0-9-]{0,10}$/), fc.string({ maxLength: 20 })).map(([k, v]) => [[k, v]] as Array<[string, string]>) },
);

const signedAuth: fc.Arbitrary<AuthSpec> = fc.record({
  kind: fc.constant('signed' as const),
  who: fc.oneof(
    { weight: 6, arbitrary: fc.constant('alice' as const) },
    { weight: 2, arbitrary: fc.constant('bob' as const) },
    { weight: 1, arbitrary: fc.constantFrom('region' as const, 'unknown' as const, 'region-wrong-secret' as const, 'region-unknown-name' as const) },
  ),
  skewSec: fc.oneof({ weight: 8, arbitrary: fc.constant(0) }, { weight: 1, arbitrary: fc.constantFrom(-7200, -1801, -1799, 1799, 1801, 7200, -86_400 * 400) }),
  expirationSec: fc.oneof({ weight: 8, arbitrary: fc.constant(1800) }, { weight: 1, arbitrary: fc.constantFrom(0, 1, 60, 86_400 * 365) }),
  signedHeaders: fc.oneof({ weight: 6, arbitrary: fc.constant('default' as const) }, { weight: 2, arbitrary: fc.constant('explicit' as const) }, { weight: 1, arbitrary: fc.constant('odd' as const) }),
  tamper: fc.oneof({ weight: 10, arbitrary: fc.constant('none' as const) }, { weight: 1, arbitrary: fc.constantFrom('signature' as const, 'ak-case' as const, 'timestamp' as const) }),
});

const garbageAuth: fc.Arbitrary<AuthSpec> = fc.oneof(
  fc.constantFrom('bce-auth-v1/', 'bce-auth-v1', 'bce-auth-v1/ak/notatime/abc/host/sig', 'bce-auth-v1/ak/2020-01-01T00:00:00Z/1800/host/', 'Bearer x', 'Basic YTpi',
    'bce-auth-v1/alice-ak-0123456789abcdef/2099-01-01T00:00:00Z/-5//' + 'a'.repeat(64), 'bce-auth-v1/alice-ak-0123456789abcdef/2024-02-30T25:61:61Z/1800//' + '0'.repeat(64),
    'bce-auth-v1/a/b/c/d/e/f/g', 'bce-auth-v2/a/b/c/d/e', 'BCE-AUTH-V1/alice-ak-0123456789abcdef/x/1800//y', ' ', 'bce-auth-v1/' + 'x'.repeat(3000)),
  fc.string({ maxLength: 80 }),
).map((value) => ({ kind: 'garbage' as const, value }));

const auth: fc.Arbitrary<AuthSpec> = fc.oneof(
  { weight: 10, arbitrary: signedAuth },
  { weight: 1, arbitrary: fc.constant({ kind: 'none' as const }) },
  { weight: 1, arbitrary: garbageAuth },
);

const digest: fc.Arbitrary<DigestSpec> = fc.oneof(
  { weight: 8, arbitrary: fc.constant('none' as const) },
  { weight: 3, arbitrary: fc.constantFrom('sha256' as const, 'md5' as const, 'both' as const) },
  { weight: 2, arbitrary: fc.constantFrom('wrong-sha256' as const, 'wrong-md5' as const, 'bad-sha256' as const, 'bad-md5' as const, 'sha256-unsigned' as const, 'sha256-of-other' as const) },
);

const framing: fc.Arbitrary<Framing> = fc.oneof(
  { weight: 16, arbitrary: fc.constant('exact' as const) },
  { weight: 2, arbitrary: fc.constant('chunked' as const) },
  { weight: 1, arbitrary: fc.constantFrom('short' as const, 'long' as const, 'both' as const, 'bad-chunk' as const, 'huge-declared' as const, 'bare' as const) },
);

const METHODS = ['GET', 'PUT', 'POST', 'DELETE', 'HEAD', 'OPTIONS', 'PATCH', 'TRACE', 'PROPFIND', 'MKCOL', 'SEARCH', 'PURGE', 'QUERY', 'CONNECT', 'get', 'FOO', 'G\u00c9T', ''];

interface RouteShape {
  methods: string[];
  path: fc.Arbitrary<HttpCase['path']>;
  body: BodyKind;
  query?: fc.Arbitrary<Array<[string, string | null]>>;
  headers?: fc.Arbitrary<Array<[string, string]>>;
}

const lit = (...parts: Array<string | fc.Arbitrary<{ id: IdSpec; raw: boolean }>>): fc.Arbitrary<HttpCase['path']> =>
  fc.tuple(...parts.map((p) => (typeof p === 'string' ? fc.constant(p) : p))) as fc.Arbitrary<HttpCase['path']>;

const flag = (name: string): fc.Arbitrary<Array<[string, string | null]>> => fc.tuple(fc.constant<[string, string | null]>([name, null]), query).map(([f, rest]) => [f, ...rest]);

const PUBLIC_ROUTES: RouteShape[] = [
  { methods: ['POST'], path: lit('/v2/volume'), body: 'volumeCreate' },
  { methods: ['GET'], path: lit('/v2/volume'), body: 'none' },
  { methods: ['GET', 'DELETE'], path: lit('/v2/volume/', pathId), body: 'none' },
  { methods: ['PUT'], path: lit('/v2/volume/', pathId), body: 'resize', query: fc.oneof(flag('resize'), query) },
  { methods: ['PUT'], path: lit('/v2/volume/', pathId), body: 'rollback', query: fc.oneof(flag('rollback'), query) },
  { methods: ['GET'], path: lit('/v2/volume/', pathId, '/data'), body: 'none', headers: fc.constantFrom(...RANGES).map((r) => [['range', r]] as Array<[string, string]>) },
  { methods: ['PUT'], path: lit('/v2/volume/', pathId, '/data'), body: 'data', query: fc.record({ o: fc.constantFrom('0', '512', '4096', '1073741312', '1073741824', '-512', '1.5', '', 'x', '99999999999999999999'), z: fc.option(fc.constantFrom('512', '1048576', '0', '1073741824', 'x')) }).map(({ o, z }) => [['offset', o] as [string, string | null], ...(z === null ? [] : [['zeroLength', z] as [string, string | null]])]) },
  { methods: ['GET'], path: lit('/v2/volume/', pathId, '/extents'), body: 'none' },
  { methods: ['POST'], path: lit('/v2/snapshot'), body: 'snapshotCreate' },
  { methods: ['GET'], path: lit('/v2/snapshot'), body: 'none' },
  { methods: ['GET', 'DELETE'], path: lit('/v2/snapshot/', pathId), body: 'none' },
  { methods: ['PUT'], path: lit('/v2/snapshot/', pathId), body: 'modify', query: fc.oneof(flag('modifyAttribute'), query) },
  { methods: ['PUT', 'POST'], path: lit('/v2/snapshot/remote_copy/', pathId), body: 'copy' },
  { methods: ['GET'], path: lit('/v2/snapshot/remote_copy/', pathId), body: 'none' },
  { methods: ['GET'], path: lit('/healthz'), body: 'none' },
  { methods: ['GET'], path: lit('/metrics'), body: 'none', headers: fc.constantFrom('Bearer $metrics', 'Bearer wrong', 'bearer $metrics', 'Bearer  $metrics ', 'Bearer', '').map((v) => [['authorization', v]] as Array<[string, string]>) },
  // Paths around the routes.
  { methods: ['GET', 'POST'], path: fc.constantFrom('/', '/v1/volume', '/v3/snapshot', '/v2', '/v2/', '//v2//volume', '/v2/volume/x/y/z', '/v2/volume/x/data/y', '/v2/snapshot/remote_copy', '/v2/../internal/v1/admin/gc', '/%2e%2e/internal/v1/admin/gc', '/v2/volume/%2e%2e%2f%2e%2e%2finternal%2fv1%2fadmin%2fgc', '/healthz/..', '/metrics%00', '/v2/volume;x=1', '/V2/VOLUME', '/v2/volume?', '*', 'http://h/v2/volume', '/\u00e9').map((p) => [p]), body: 'none' },
];

const INTERNAL_SNAPSHOT = fc.oneof(
  { weight: 4, arbitrary: fc.stringMatching(/^[a-z0-9]{1,10}$/).map((s) => ({ id: { kind: 'literal' as const, text: `s-fz${s}` }, raw: false })) },
  { weight: 2, arbitrary: fc.constant({ id: { kind: 'snapshot' as const, pick: 0 }, raw: false }) },
  { weight: 2, arbitrary: pathId },
);
const chunkOrPart = fc.oneof(hex64, fc.constant('$sha256'), fc.constantFrom('', 'x', 'A'.repeat(64), '0'.repeat(63), '..%2F..%2F' + '0'.repeat(60))).map((text) => ({ id: { kind: 'literal' as const, text }, raw: false }));

const INTERNAL_ROUTES: RouteShape[] = [
  { methods: ['PUT'], path: lit('/internal/v1/snapshots/', INTERNAL_SNAPSHOT), body: 'reserve' },
  { methods: ['POST'], path: lit('/internal/v1/snapshots/', INTERNAL_SNAPSHOT, '/manifest'), body: 'plan' },
  { methods: ['PUT'], path: lit('/internal/v1/snapshots/', INTERNAL_SNAPSHOT, '/manifest/parts/', chunkOrPart), body: 'raw' },
  { methods: ['POST'], path: lit('/internal/v1/snapshots/', INTERNAL_SNAPSHOT, '/chunks/missing'), body: 'missing' },
  { methods: ['PUT'], path: lit('/internal/v1/snapshots/', INTERNAL_SNAPSHOT, '/chunks/', chunkOrPart), body: 'raw', headers: fc.constantFrom('raw', 'zstd', 'gzip', '').map((e) => [['x-snapferry-chunk-encoding', e]] as Array<[string, string]>) },
  { methods: ['PUT'], path: lit('/internal/v1/snapshots/', INTERNAL_SNAPSHOT, '/progress'), body: 'progress' },
  { methods: ['POST'], path: lit('/internal/v1/snapshots/', INTERNAL_SNAPSHOT, '/commit'), body: 'none' },
  { methods: ['POST'], path: lit('/internal/v1/snapshots/', INTERNAL_SNAPSHOT, '/fail'), body: 'fail' },
  { methods: ['POST'], path: fc.constantFrom('/internal/v1/admin/gc', '/internal/v1/admin/check', '/internal/v1/admin/scrub').map((p) => [p]), body: 'none' },
  { methods: ['GET', 'POST', 'DELETE'], path: fc.constantFrom('/internal/v1', '/internal/v1/', '/internal/v1/admin', '/internal/v1/admin/', '/internal/v1/admin/../admin/gc', '/internal/v1/snapshots', '/internal/v2/admin/gc', '/internal/v1/admin/gc/').map((p) => [p]), body: 'none' },
];

function caseOf(family: string, routes: RouteShape[], authArb: fc.Arbitrary<AuthSpec>, digestArb: fc.Arbitrary<DigestSpec>): fc.Arbitrary<HttpCase> {
  return fc.constantFrom(...routes).chain((route) =>
    fc.record({
      family: fc.constant(family),
      method: fc.oneof({ weight: 12, arbitrary: fc.constantFrom(...route.methods) }, { weight: 1, arbitrary: fc.constantFrom(...METHODS) }),
      path: route.path,
      query: route.query ?? fc.oneof({ weight: 2, arbitrary: fc.constant<Array<[string, string | null]>>([]) }, { weight: 1, arbitrary: query }),
      rawQuery: fc.oneof({ weight: 15, arbitrary: fc.constant(false) }, { weight: 1, arbitrary: fc.constant(true) }),
      version: fc.oneof({ weight: 30, arbitrary: fc.constant('HTTP/1.1') }, { weight: 1, arbitrary: fc.constantFrom('HTTP/1.0', 'HTTP/2.0', 'HTTP/1.2', 'HTTPS/1.1', 'http/1.1', '') }),
      host: fc.oneof({ weight: 30, arbitrary: fc.constant('ok' as const) }, { weight: 1, arbitrary: fc.constantFrom('none' as const, 'dup' as const, 'empty' as const, 'other' as const) }),
      headers: fc.tuple(route.headers ?? fc.constant<Array<[string, string]>>([]), fc.oneof({ weight: 2, arbitrary: fc.constant([]) }, { weight: 3, arbitrary: fc.array(header, { maxLength: 3 }) })).map(([own, more]) => [...own, ...more.flat()]),
      auth: authArb,
      digest: digestArb,
      body: bodyFor(route.body),
      framing,
      cuts: fc.array(fc.nat({ max: 4000 }), { maxLength: 3 }),
      ending: fc.oneof({ weight: 14, arbitrary: fc.constant('keep' as const) }, { weight: 2, arbitrary: fc.constant('half-close' as const) }, { weight: 1, arbitrary: fc.constant('reset' as const) }),
      mutations: fc.constant<HttpCase['mutations']>([]),
    }),
  );
}

/** Every public route, with any signature. */
export const publicCase = caseOf('public', PUBLIC_ROUTES, auth, digest);

/** The internal endpoints: mostly the regions' key with a signed body digest, else tenants' keys and bad digests. */
export const internalCase = caseOf(
  'internal',
  INTERNAL_ROUTES,
  fc.oneof(
    { weight: 8, arbitrary: signedAuth.map((a) => (a.kind === 'signed' ? { ...a, who: 'region' as const } : a)) },
    { weight: 3, arbitrary: auth },
  ),
  fc.oneof({ weight: 8, arbitrary: fc.constant('sha256' as const) }, { weight: 2, arbitrary: digest }),
);

/** A request of either kind with some of its bytes flipped, inserted or deleted; always ended by a half-close. */
export const mutatedCase = fc
  .tuple(fc.oneof(publicCase, internalCase), fc.array(fc.record({ at: fc.nat(), op: fc.constantFrom('flip' as const, 'insert' as const, 'delete' as const), byte: fc.integer({ min: 0, max: 255 }) }), { minLength: 1, maxLength: 4 }))
  .map(([c, mutations]) => ({ ...c, family: 'mutated', mutations, ending: 'half-close' as const }));

/** Bytes that are not HTTP at all, or barely. */
export const garbageCase: fc.Arbitrary<{ family: 'garbage'; bytes: Buffer; cuts: number[]; ending: 'half-close' | 'keep' }> = fc.record({
  family: fc.constant('garbage' as const),
  bytes: fc.oneof(
    fc.uint8Array({ minLength: 1, maxLength: 2048 }).map((a) => Buffer.from(a)),
    fc.array(fc.string({ unit: 'binary-ascii', maxLength: 60 }), { minLength: 1, maxLength: 8 }).map((lines) => Buffer.from(lines.join('\r\n') + '\r\n\r\n', 'latin1')),
    fc.constantFrom(
      'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', '\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03', 'GET / HTTP/1.1\r\n\r\n', 'GET / HTTP/1.1\r\nHost: h\r\n\r\n'.repeat(50),
      'GET /healthz HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nGET /healthz HTTP/1.1\r\nHost: h\r\n\r\n', 'CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\n\r\n',
      'GET /v2/volume HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\n', 'POST /v2/volume HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5;' + 'e'.repeat(20_000) + '\r\nhello\r\n0\r\n\r\n',
      '\r\n\r\n\r\n\r\n', 'GET\r\n', ' GET / HTTP/1.1\r\nHost: h\r\n\r\n', 'GET /%%%% HTTP/1.1\r\nHost: h\r\n\r\n',
    ).map((s) => Buffer.from(s, 'latin1')),
  ),
  cuts: fc.array(fc.nat({ max: 2048 }), { maxLength: 3 }),
  ending: fc.constantFrom('half-close' as const, 'keep' as const),
});

// ---- building the bytes ---------------------------------------------------------------------------

function resolveId(t: FuzzTarget, id: IdSpec): string {
  if (id.kind === 'literal') return id.text;
  const list = id.kind === 'volume' ? t.pool.volumes : t.pool.snapshots;
  return list[id.pick % list.length]!;
}

/** `$volume` / `$snapshot` / `$metrics` / `$sha256` in generated text become live values. */
function substitute(t: FuzzTarget, text: string, body: Buffer | null): string {
  return text
    .replaceAll('$volume', t.pool.volumes[0]!)
    .replaceAll('$snapshot', t.pool.snapshots[0]!)
    .replaceAll('$metrics', t.metricsToken)
    .replaceAll('$sha256', createHash('sha256').update(body ?? Buffer.alloc(0)).digest('hex'));
}

function keysOf(t: FuzzTarget, who: Extract<AuthSpec, { kind: 'signed' }>['who']): Keys {
  switch (who) {
    case 'alice': return t.alice;
    case 'bob': return t.bob;
    case 'carol-never': return t.carol;
    case 'region': return t.region;
    case 'region-wrong-secret': return { ak: t.region.ak, sk: 'not-the-region-secret' };
    case 'region-unknown-name': return { ak: 'snapferry-region-mars', sk: t.region.sk };
    case 'unknown': return { ak: 'nobody-ak-0123456789abcdef', sk: 'nobody-secret' };
  }
}

export interface Materialized {
  bytes: Buffer;
  cuts: number[];
  ending: 'keep' | 'half-close' | 'reset';
  /** The request is complete and framed as declared: it must be answered. */
  complete: boolean;
  /** The first request is a HEAD (its answer has no body). */
  head: boolean;
  /** A follow-up request may be sent on the connection after the answer. */
  followUp: boolean;
  summary: string;
}

export function materialize(t: FuzzTarget, c: HttpCase): Materialized {
  // Internal bodies name chunks by the hash of what is sent; data and JSON bodies may name live ids.
  const body = c.body && c.body.length < 4096 ? Buffer.from(substitute(t, c.body.toString('latin1'), null), 'latin1') : c.body;
  const path = c.path.map((p) => (typeof p === 'string' ? p : p.raw ? resolveId(t, p.id) : (() => {
    const text = substitute(t, resolveId(t, p.id), body);
    // Literal hostile ids are already encoded as they should travel; live ids are plain.
    return p.id.kind === 'literal' ? text : uriEncode(text);
  })())).join('');
  const queryPairs = c.query.map(([k, v]) => [k, v === null ? null : substitute(t, v, body)] as [string, string | null]);
  const rawQuery = queryPairs.map(([k, v]) => (c.rawQuery ? `${k}${v === null ? '' : `=${v}`}` : `${uriEncode(k)}${v === null ? '' : `=${uriEncode(v)}`}`)).join('&');
  const target = rawQuery === '' ? path : `${path}?${rawQuery}`;

  const headers: Array<[string, string]> = [];
  const hostValue = `${HOST}:${t.port}`;
  if (c.host === 'ok' || c.host === 'dup') headers.push(['host', hostValue]);
  if (c.host === 'dup') headers.push(['host', 'evil.example']);
  if (c.host === 'empty') headers.push(['host', '']);
  if (c.host === 'other') headers.push(['host', 'evil.example:80']);
  headers.push(['x-bce-date', formatTimestamp(Date.now())]);
  const hasJsonType = c.headers.some(([k]) => k === 'content-type');
  if (!hasJsonType) headers.push(['content-type', 'application/json; charset=utf-8']);
  for (const [k, v] of c.headers) headers.push([k, substitute(t, v, body)]);

  const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');
  const md5 = (b: Buffer) => createHash('md5').update(b).digest('base64');
  const payload = body ?? Buffer.alloc(0);
  const other = Buffer.concat([payload, Buffer.from('x')]);
  switch (c.digest) {
    case 'sha256': case 'sha256-unsigned': headers.push(['x-bce-content-sha256', sha(payload)]); break;
    case 'md5': headers.push(['content-md5', md5(payload)]); break;
    case 'both': headers.push(['x-bce-content-sha256', sha(payload)], ['content-md5', md5(payload)]); break;
    case 'wrong-sha256': case 'sha256-of-other': headers.push(['x-bce-content-sha256', sha(other)]); break;
    case 'wrong-md5': headers.push(['content-md5', md5(other)]); break;
    case 'bad-sha256': headers.push(['x-bce-content-sha256', 'zz' + sha(payload).slice(2)]); break;
    case 'bad-md5': headers.push(['content-md5', 'not base64 at all']); break;
    case 'none': break;
  }

  // Framing headers (the body itself is added below).
  const hasBody = body !== null;
  let complete = true;
  let bodyBytes = payload;
  switch (c.framing) {
    case 'exact':
      if (hasBody) headers.push(['content-length', String(payload.length)]);
      break;
    case 'chunked': {
      headers.push(['transfer-encoding', 'chunked']);
      const parts: Buffer[] = [];
      for (let at = 0; at < payload.length; at += 1000) {
        const piece = payload.subarray(at, at + 1000);
        parts.push(Buffer.from(`${piece.length.toString(16)}\r\n`), piece, Buffer.from('\r\n'));
      }
      parts.push(Buffer.from('0\r\n\r\n'));
      bodyBytes = Buffer.concat(parts);
      break;
    }
    case 'short': // declares fewer bytes than follow: the rest is a second (garbage) request
      headers.push(['content-length', String(Math.max(0, payload.length - 3))]);
      break;
    case 'long': // declares more than is sent: the request never completes
      headers.push(['content-length', String(payload.length + 17)]);
      complete = false;
      break;
    case 'both':
      headers.push(['content-length', String(payload.length)], ['transfer-encoding', 'chunked']);
      break;
    case 'bad-chunk':
      headers.push(['transfer-encoding', 'chunked']);
      bodyBytes = Buffer.concat([Buffer.from('zz\r\n'), payload, Buffer.from('\r\n0\r\n\r\n')]);
      break;
    case 'huge-declared':
      headers.push(['content-length', String(5 * 1024 ** 3)]);
      complete = false;
      break;
    case 'bare': // a body without a length: the bytes read as a second request
      break;
  }

  // The signature, over the headers as sent (the digest header left unsigned or signed over other bytes when asked).
  if (c.auth.kind === 'garbage') headers.push(['authorization', c.auth.value]);
  if (c.auth.kind === 'signed') {
    const a = c.auth;
    const keys = keysOf(t, a.who);
    const at = Date.now() + a.skewSec * 1000;
    const timestamp = formatTimestamp(at);
    const lower: Record<string, string> = {};
    for (const [k, v] of headers) if (!(k.toLowerCase() in lower)) lower[k.toLowerCase()] = v;
    let signedHeaders: string[] | null = null;
    if (a.signedHeaders === 'explicit' || c.digest === 'sha256-unsigned') {
      signedHeaders = Object.keys(lower).filter((k) => k === 'host' || k === 'content-length' || (k.startsWith('x-bce-') && !(c.digest === 'sha256-unsigned' && k === 'x-bce-content-sha256'))).sort();
    } else if (a.signedHeaders === 'odd') {
      signedHeaders = ['host', 'x-missing', 'authorization', 'HOST'].filter((_, i) => i !== (at % 3));
    }
    let signPath: string;
    try {
      signPath = decodeURIComponent(path);
    } catch {
      signPath = path;
    }
    let signQuery: Array<[string, string | null]>;
    try {
      signQuery = parseRawQuery(rawQuery);
    } catch {
      signQuery = [];
    }
    let authorization = sign({
      method: c.method, path: signPath, query: signQuery, headers: lower, signedHeaders,
      accessKeyId: keys.ak, secretAccessKey: keys.sk, timestamp, expirationSeconds: a.expirationSec,
    });
    if (a.tamper === 'signature') authorization = authorization.slice(0, -1) + (authorization.endsWith('0') ? '1' : '0');
    if (a.tamper === 'ak-case') authorization = authorization.replace(keys.ak, keys.ak.toUpperCase());
    if (a.tamper === 'timestamp') authorization = authorization.replace(timestamp, formatTimestamp(at + 1000));
    headers.push(['authorization', authorization]);
  }

  // The request line as UTF-8 (a raw id may hold any character), the headers byte for byte.
  const requestLine = Buffer.from(`${c.method} ${target} ${c.version}\r\n`, 'utf8');
  const head = Buffer.from(`${headers.map(([k, v]) => `${k}: ${v}`).join('\r\n')}\r\n\r\n`, 'latin1');
  let bytes = Buffer.concat([requestLine, head, c.framing === 'huge-declared' ? payload.subarray(0, 1000) : bodyBytes]);
  for (const m of c.mutations) {
    const at = m.at % (bytes.length + 1);
    if (m.op === 'flip' && at < bytes.length) bytes[at] = bytes[at]! ^ (m.byte || 1);
    else if (m.op === 'insert') bytes = Buffer.concat([bytes.subarray(0, at), Buffer.from([m.byte]), bytes.subarray(at)]);
    else if (m.op === 'delete' && at < bytes.length) bytes = Buffer.concat([bytes.subarray(0, at), bytes.subarray(at + 1)]);
  }
  const exact = c.framing === 'exact' || c.framing === 'chunked';
  // With Connection: upgrade and Upgrade (no upgrade is served, so Node answers it as a plain request),
  // Node's parser reads a broken body leniently: it waits for more (until the request timeout)
  // instead of failing at once. Such a case is ended by the client.
  if (!exact && c.headers.some(([k]) => k.toLowerCase() === 'upgrade')) complete = false;
  const mutated = c.mutations.length > 0;
  // A request whose framing leaves the server waiting for more is ended by the client (half-close).
  const ending = !complete && c.ending === 'keep' ? 'half-close' : c.ending;
  return {
    bytes, cuts: c.cuts, ending,
    complete: complete && !mutated,
    head: c.method === 'HEAD',
    followUp: exact && !mutated && c.version === 'HTTP/1.1',
    summary: `${c.family} ${c.method} ${target.slice(0, 160)} ${c.version} auth=${c.auth.kind === 'signed' ? `${c.auth.who}${c.auth.skewSec ? `@${c.auth.skewSec}s` : ''}${c.auth.tamper !== 'none' ? `/${c.auth.tamper}` : ''}/${c.auth.signedHeaders}` : c.auth.kind} digest=${c.digest} framing=${c.framing} body=${c.body?.length ?? 'none'}${c.body && c.body.length < 120 ? ` ${JSON.stringify(c.body.toString('latin1'))}` : ''} headers=${JSON.stringify(c.headers.map(([k, v]) => `${k}: ${v.slice(0, 40)}`))} ending=${ending}${mutated ? ` mutations=${JSON.stringify(c.mutations)}` : ''}`,
  };
}

// ---- reading answers ------------------------------------------------------------------------------

export interface WireResponse {
  status: number;
  headers: Record<string, string>;
  body: Buffer;
  /** We stopped reading a large body (a disk's bytes). */
  cutShort: boolean;
}

/** Largest response body read whole; above it only the head is checked (a disk's data). */
const MAX_READ_BODY = 256 * 1024;

/** Parses one response from `buf`; null while incomplete. */
function parseResponse(buf: Buffer, head: boolean, closed: boolean): { res: WireResponse; used: number } | null {
  const end = buf.indexOf('\r\n\r\n');
  if (end < 0) return null;
  const lines = buf.subarray(0, end).toString('latin1').split('\r\n');
  const status = Number(/^HTTP\/1\.[01] (\d{3})/.exec(lines[0]!)?.[1] ?? NaN);
  const headers: Record<string, string> = {};
  for (const line of lines.slice(1)) {
    const colon = line.indexOf(':');
    const name = line.slice(0, colon).trim().toLowerCase();
    const value = line.slice(colon + 1).trim();
    headers[name] = name in headers ? `${headers[name]}, ${value}` : value;
  }
  let at = end + 4;
  if (head || (status >= 100 && status < 200) || status === 204 || status === 304) return { res: { status, headers, body: Buffer.alloc(0), cutShort: false }, used: at };
  if (/chunked/i.test(headers['transfer-encoding'] ?? '')) {
    const parts: Buffer[] = [];
    for (;;) {
      const lineEnd = buf.indexOf('\r\n', at);
      if (lineEnd < 0) return null;
      const size = parseInt(buf.subarray(at, lineEnd).toString('latin1'), 16);
      if (!Number.isFinite(size)) throw new Error(`bad chunk size in a response: ${JSON.stringify(buf.subarray(at, lineEnd).toString('latin1'))}`);
      if (buf.length < lineEnd + 2 + size + 2) return null;
      parts.push(buf.subarray(lineEnd + 2, lineEnd + 2 + size));
      at = lineEnd + 2 + size + 2;
      if (size === 0) {
        const trailerEnd = buf.indexOf('\r\n', at - 2);
        return { res: { status, headers, body: Buffer.concat(parts), cutShort: false }, used: Math.max(at, trailerEnd + 2) };
      }
      if (Buffer.concat(parts).length > MAX_READ_BODY) return { res: { status, headers, body: Buffer.concat(parts), cutShort: true }, used: buf.length };
    }
  }
  if (headers['content-length'] !== undefined) {
    const length = Number(headers['content-length']);
    if (length > MAX_READ_BODY) return { res: { status, headers, body: buf.subarray(at), cutShort: true }, used: buf.length };
    if (buf.length < at + length) return null;
    return { res: { status, headers, body: buf.subarray(at, at + length), cutShort: false }, used: at + length };
  }
  // No length: the body runs to the close.
  if (!closed) return null;
  return { res: { status, headers, body: buf.subarray(at), cutShort: false }, used: buf.length };
}

const CATALOG = ERROR_CATALOG as Record<string, { status: number; message: string }>;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/** The properties every answer has; throws with what is wrong. */
export function checkAnswer(r: WireResponse, headRequest: boolean, what: string): void {
  const fail = (why: string): never => assert.fail(`${why}\n  case: ${what}\n  answer: ${r.status} ${JSON.stringify(r.headers)} ${JSON.stringify(r.body.subarray(0, 400).toString('latin1'))}`);
  if (!(r.status >= 200 && r.status < 600)) fail('not a final HTTP status');
  if (r.status >= 500) fail('a 5xx answer');
  const requestId = r.headers['x-bce-request-id'];
  if (!requestId || !UUID.test(requestId)) fail('no x-bce-request-id (or not one id)');
  const type = r.headers['content-type'] ?? '';
  if (r.status >= 400) {
    if (!type.startsWith('application/json')) fail('an error answer that is not JSON');
    if (headRequest || r.cutShort) return;
    let json: any;
    try {
      json = JSON.parse(r.body.toString('utf8'));
    } catch {
      fail('an error body that does not parse');
    }
    if (JSON.stringify(Object.keys(json ?? {}).sort()) !== '["code","message","requestId"]') fail('an error body that is not exactly {requestId, code, message}');
    if (json.requestId !== requestId) fail('the body\'s requestId differs from x-bce-request-id');
    if (!(json.code in CATALOG)) fail(`code ${json.code} is not in the catalog`);
    if (CATALOG[json.code]!.status !== r.status) fail(`code ${json.code} answered with ${r.status}, the catalog says ${CATALOG[json.code]!.status}`);
    if (typeof json.message !== 'string' || json.message.length === 0) fail('an empty message');
    if (json.message.length > 2000) fail('a message over 2000 characters (the request echoed back?)');
    return;
  }
  if (type.startsWith('application/json') && !headRequest && !r.cutShort && r.body.length > 0) {
    let json: any;
    try {
      json = JSON.parse(r.body.toString('utf8'));
    } catch {
      fail('a success body that does not parse');
    }
    if (json && typeof json === 'object' && 'requestId' in json) fail('a success body with a requestId');
  }
}

// ---- running a case -------------------------------------------------------------------------------

export interface CaseOutcome {
  responses: WireResponse[];
  /** The server closed the connection. */
  closed: boolean;
  ms: number;
}

const tick = (ms = 0) => new Promise((r) => setTimeout(r, ms));

/** Plays bytes on one connection and reads what comes back, within the bound. */
export async function play(port: number, m: Pick<Materialized, 'bytes' | 'cuts' | 'ending' | 'complete' | 'head' | 'followUp'>, waitMs = ANSWER_BOUND_MS): Promise<CaseOutcome & { resetByUs: boolean }> {
  const socket = connect(port, HOST);
  socket.on('error', () => {});
  let buf = Buffer.alloc(0);
  let closed = false;
  let wake: (() => void) | null = null;
  const poke = () => {
    wake?.();
    wake = null;
  };
  socket.on('data', (d) => {
    buf = Buffer.concat([buf, d]);
    poke();
  });
  socket.once('close', () => {
    closed = true;
    poke();
  });
  await new Promise<void>((resolve, reject) => socket.once('connect', resolve).once('error', reject));
  const started = Date.now();
  const deadline = started + waitMs;
  const responses: WireResponse[] = [];
  let headNext = m.head;
  const readUntil = async (enough: () => boolean): Promise<void> => {
    for (;;) {
      for (;;) {
        let parsed: ReturnType<typeof parseResponse>;
        parsed = parseResponse(buf, headNext, closed);
        if (!parsed) break;
        buf = buf.subarray(parsed.used);
        if (parsed.res.status >= 100 && parsed.res.status < 200) continue;
        responses.push(parsed.res);
        headNext = false;
        if (parsed.res.cutShort) {
          socket.destroy();
          closed = true;
          break;
        }
      }
      if (enough() || closed || Date.now() > deadline) return;
      await new Promise<void>((resolve) => {
        wake = resolve;
        setTimeout(resolve, Math.max(1, deadline - Date.now())).unref();
      });
    }
  };
  try {
    let from = 0;
    for (const cut of [...new Set(m.cuts)].sort((a, b) => a - b)) {
      if (cut <= from || cut >= m.bytes.length) continue;
      if (!socket.writable) break;
      socket.write(m.bytes.subarray(from, cut));
      from = cut;
      await tick(0);
    }
    if (socket.writable) socket.write(m.bytes.subarray(from));
    if (m.ending === 'reset') {
      await tick(Math.floor(Math.random() * 3));
      socket.resetAndDestroy();
      return { responses, closed: false, ms: Date.now() - started, resetByUs: true };
    }
    if (m.ending === 'half-close') socket.end();
    await readUntil(() => m.ending === 'keep' && responses.length >= 1);
    const first = responses[0];
    if (m.followUp && m.ending === 'keep' && first && !closed && !/close/i.test(first.headers.connection ?? '') && !first.cutShort) {
      socket.write(`GET /healthz HTTP/1.1\r\nHost: ${HOST}\r\n\r\n`);
      await readUntil(() => responses.length >= 2);
      const second = responses[1];
      assert.ok(second, `no answer to a GET /healthz sent on the same connection after ${first.status}`);
      assert.equal(second.status, 200, `GET /healthz on the same connection answered ${second.status} ${second.body.toString('latin1').slice(0, 200)}`);
      assert.equal(JSON.parse(second.body.toString('utf8')).status, 'ok');
    }
    return { responses, closed, ms: Date.now() - started, resetByUs: false };
  } finally {
    socket.destroy();
  }
}

/** Runs one case and checks every property of an answer; updates the stats. */
export async function runCase(t: FuzzTarget, m: Materialized, family: string): Promise<void> {
  const out = await play(t.port, m);
  const s = t.stats;
  s.cases++;
  s.byFamily[family] = (s.byFamily[family] ?? 0) + 1;
  if (out.resetByUs) s.resetByClient++;
  for (const [i, r] of out.responses.entries()) {
    checkAnswer(r, i === 0 && m.head, m.summary);
    s.byStatus[r.status] = (s.byStatus[r.status] ?? 0) + 1;
    let key = String(r.status);
    if (r.status >= 400 && !(i === 0 && m.head) && !r.cutShort) {
      const code = JSON.parse(r.body.toString('utf8')).code as string;
      s.byCode[code] = (s.byCode[code] ?? 0) + 1;
      key = code;
    }
    if (i === 0) s.byFamilyCode[`${family} ${key}`] = (s.byFamilyCode[`${family} ${key}`] ?? 0) + 1;
  }
  if (out.responses.length > 1) s.followUps++;
  if (!out.resetByUs) {
    if (out.responses.length > 0) s.answered++;
    else s.closedWithoutAnswer++;
    if (out.ms > 5000 && s.slowCases.length < 50) s.slowCases.push(`${out.ms} ms, ${out.responses.length} answers (${out.responses.map((r) => r.status).join(' ')}), ${out.closed ? 'closed' : 'open'}: ${m.summary.slice(0, 400)}`);
    if (out.ms > s.slowestMs) {
      s.slowestMs = out.ms;
      s.slowestCase = m.summary.slice(0, 300);
    }
    // No hang: a complete request is answered, every connection answered or closed, within the bound.
    // (A client that half-closes may see the connection closed instead: Node's server ends a
    // half-closed connection, also with an answer pending, so only a kept connection must be answered.)
    if (m.complete && m.ending === 'keep') assert.ok(out.responses.length > 0, `a complete request got no answer within ${ANSWER_BOUND_MS} ms (${out.closed ? 'the server closed the connection' : 'still open'}):\n  ${m.summary}`);
    else assert.ok(out.responses.length > 0 || out.closed, `the connection was neither answered nor closed within ${ANSWER_BOUND_MS} ms:\n  ${m.summary}`);
  }
  // Nothing unexpected logged (an InternalError, a crash of a handler).
  const logs = t.live.logs();
  const errors = logs.filter((l) => l.level === 'error');
  if (errors.length > t.errorsSeen) {
    const fresh = errors.slice(t.errorsSeen);
    t.errorsSeen = errors.length;
    assert.fail(`the server logged an error:\n  ${fresh.map((l) => JSON.stringify(l).slice(0, 1500)).join('\n  ')}\n  case: ${m.summary}`);
  }
}

/** A raw garbage case: answered in BCE's format or closed, within the bound. */
export async function runGarbage(t: FuzzTarget, g: { bytes: Buffer; cuts: number[]; ending: 'half-close' | 'keep' }): Promise<void> {
  const m: Materialized = { bytes: g.bytes, cuts: g.cuts, ending: g.ending, complete: false, head: false, followUp: false, summary: `garbage ${JSON.stringify(g.bytes.subarray(0, 200).toString('latin1'))} ending=${g.ending}` };
  if (g.ending === 'keep') {
    // Nothing says when garbage ends: wait for an answer or a close, and give up (reset) after a moment
    // if the server is still waiting for the rest of a request that looked valid.
    const out = await play(t.port, { ...m, ending: 'keep' }, 500);
    for (const r of out.responses) checkAnswer(r, false, m.summary);
    t.stats.cases++;
    t.stats.byFamily.garbage = (t.stats.byFamily.garbage ?? 0) + 1;
    return;
  }
  await runCase(t, m, 'garbage');
}

/**
 * The region still serves normal signed calls (Carol's, never fuzzed): a write, its read-back, a
 * list; no connection is left open on the server; RSS is recorded. Also refreshes the id pool.
 */
export async function checkServing(t: FuzzTarget): Promise<void> {
  // Every fuzz connection is gone on the server side too (the client closed or reset each).
  await waitUntil(async () => (await serverConnections(t)) === 0, 20_000, 'every connection closed on the server');
  const carol = { keys: t.carol };
  const data = randomBytes(4096);
  const w = await call(t.port, 'PUT', `/v2/volume/${t.canaryVolume}/data?offset=4096`, data, { ...carol, headers: { 'content-type': 'application/octet-stream' }, contentSha256: true });
  assert.equal(w.status, 200, `canary write: ${w.status} ${w.raw.toString().slice(0, 300)}`);
  const r = await call(t.port, 'GET', `/v2/volume/${t.canaryVolume}/data`, undefined, { ...carol, headers: { range: 'bytes=4096-8191' } });
  assert.equal(r.status, 206);
  assert.ok(r.raw.equals(data), 'the canary reads back what was written');
  const list = await call(t.port, 'GET', '/v2/volume', undefined, carol);
  assert.deepEqual(list.json.volumes.map((v: any) => v.id), [t.canaryVolume], 'Carol\'s list is hers alone');
  const health = await call(t.port, 'GET', '/healthz');
  assert.equal(health.status, 200);
  t.stats.rssMax = Math.max(t.stats.rssMax, process.memoryUsage().rss);
  t.stats.batches++;
  await refreshPool(t);
}

export function serverConnections(t: FuzzTarget): Promise<number> {
  return new Promise<number>((resolve) => t.live.app.server.getConnections((_e, count) => resolve(count)));
}

export interface FuzzRunOptions {
  seed: number;
  /** Cases per family. */
  runs: { public: number; internal: number; mutated: number; garbage: number };
  /** Stop a family after this long (its cases so far count). */
  timeLimitMs?: number;
  progress?: (line: string) => void;
  /** Run every family even after one failed; the failures are thrown together at the end. */
  keepGoing?: boolean;
}

/** Runs every family against the target; throws on the first property that fails (shrunk by fast-check). */
export async function runHttpFuzz(t: FuzzTarget, o: FuzzRunOptions): Promise<void> {
  const families: Array<[keyof FuzzRunOptions['runs'], fc.Arbitrary<any>]> = [
    ['public', publicCase], ['internal', internalCase], ['mutated', mutatedCase], ['garbage', garbageCase],
  ];
  const failures: string[] = [];
  for (const [i, [name, arb]] of families.entries()) {
    const runs = o.runs[name];
    if (runs <= 0) continue;
    const started = Date.now();
    let n = 0;
    try {
      await fc.assert(
        fc.asyncProperty(arb, async (c) => {
          if (name === 'garbage') await runGarbage(t, c);
          else await runCase(t, materialize(t, c), name);
          if (++n % BATCH === 0) {
            await checkServing(t);
            o.progress?.(`  ${name}: ${n} cases, rss ${Math.round(process.memoryUsage().rss / 2 ** 20)} MiB, slowest ${t.stats.slowestMs} ms`);
          }
        }),
        {
          numRuns: runs, seed: o.seed + i, interruptAfterTimeLimit: o.timeLimitMs, markInterruptAsFailure: false,
          // The case's own summary (in the assertion's message) says more than fast-check's dump of its buffers.
          reporter: (d) => {
            if (!d.failed) return;
            const why = d.errorInstance instanceof Error ? d.errorInstance.message : String(d.errorInstance);
            throw new Error(`HTTP fuzz family "${name}" failed after ${d.numRuns} cases (seed ${d.seed}, path ${d.counterexamplePath}, ${d.numShrinks} shrinks; replay: HTTP_FUZZ_SEED=${o.seed}):\n${why}`);
          },
        },
      );
    } catch (e) {
      if (!o.keepGoing) throw e;
      failures.push((e as Error).message);
      o.progress?.(`${name}: FAILED after ${n} cases: ${(e as Error).message.split('\n').slice(0, 3).join(' / ')}`);
    }
    await checkServing(t);
    o.progress?.(`${name}: ${n} cases in ${((Date.now() - started) / 1000).toFixed(1)} s (seed ${o.seed + i})`);
  }
  if (failures.length > 0) throw new Error(failures.join('\n\n'));
}
