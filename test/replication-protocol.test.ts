/**
 * The copy protocol's rules, each a test named after it: in-process regions bj (source), hkg
 * (destination, reached through a counting fault proxy) and gz (a destination with another chunk
 * size), talking over real HTTP. Internal endpoints are driven by hand where a rule is about one
 * answer, and by real copy jobs where it is about what the source does with it.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { utimes } from 'node:fs/promises';
import { join } from 'node:path';
import { compress } from 'zstd-napi';
import { zstd } from '../src/lib/zstd.ts';
import { SENDS_ON_DAMAGE } from '../src/replication/copy-job.ts';
import { MANIFEST_PART_MAX_BYTES } from '../src/replication/peer-client.ts';
import { Manifest } from '../src/repository/manifest.ts';
import { maxManifestBytes } from '../src/services/incoming-copy-service.ts';
import { assertBceError } from './helpers/bce-assert.ts';
import {
  assertCopyIdentical, copyStatus, deliverManifest, GiB, MiB, planManifest, publishManifest, putChunk, putChunkBatch, putPart, randomChunks,
  reserveIncoming, sha, snapshotAt, startCopy, syntheticSnapshot, waitAvailable,
} from './helpers/copy-fixtures.ts';
import { startFaultProxy, type FaultProxy } from './helpers/fault-proxy.ts';
import { metric } from './helpers/metrics.ts';
import { startRegions, type LiveRegion, type RegionSet } from './helpers/region-set.ts';
import type { Keys } from './helpers/signed-request.ts';

let set: RegionSet;
let proxy: FaultProxy;
let bj: LiveRegion;
let hkg: LiveRegion;
let gz: LiveRegion;
let keys: Keys;
/** When set, every named step of an incoming copy at hkg runs a full garbage collection of hkg first. */
let gcAtSteps = false;
const stepsSeen = new Set<string>();

before(async () => {
  const steps = async (step: string): Promise<void> => {
    if (!gcAtSteps || !step.startsWith('incoming:')) return;
    stepsSeen.add(step);
    await hkg.built.gc();
  };
  set = await startRegions(
    [{ name: 'bj' }, { name: 'hkg', options: { steps } }, { name: 'gz', overrides: { chunkSize: 2 * MiB } }],
    async (from, to, port) => (from === 'bj' && to === 'hkg' ? (proxy = await startFaultProxy(port)).url : null),
  );
  ({ bj, hkg, gz } = set.regions as Record<string, LiveRegion>);
  keys = hkg.serviceKeys('bj');
});
after(async () => {
  await set?.close();
  await proxy?.close();
});

test('InvalidManifest: bad bytes, wrong chunk size, bigger than the snapshot, a declared size beyond the bound, a wrong hash', async () => {
  const copyId = await reserveIncoming(hkg, keys, 1);
  const expectInvalid = async (res: { status: number; json: any }, message: RegExp): Promise<void> => {
    assert.equal(res.status, 400, JSON.stringify(res.json));
    assert.equal(res.json.code, 'InvalidManifest');
    assert.match(res.json.message, message);
  };
  await expectInvalid(await deliverManifest(hkg, keys, copyId, randomBytes(100)), /cannot be decoded/);
  await expectInvalid(await deliverManifest(hkg, keys, copyId, Manifest.empty(GiB, 2 * MiB).encode()), /2097152-byte chunks; this region uses 1048576/);
  await expectInvalid(await deliverManifest(hkg, keys, copyId, Manifest.empty(2 * GiB, MiB).encode()), /more than the snapshot's 1 GB/);
  // The declared size is checked against the largest manifest a 1 GB disk can have before anything is allocated.
  const good = Manifest.empty(GiB, MiB);
  for (let i = 0; i < 1024; i += 2) good.set(i, sha(Buffer.from(String(i))));
  const bytes = good.encode();
  await expectInvalid((await planManifest(hkg, keys, copyId, bytes, 4096, { size: maxManifestBytes(1, MiB) + 1 })), /a manifest of a 1 GB disk has 56 to/);
  await expectInvalid((await planManifest(hkg, keys, copyId, bytes, 4096, { size: 2 ** 53 })), /declares/);
  await expectInvalid((await planManifest(hkg, keys, copyId, bytes, 4096, { size: 10 })), /declares 10 bytes/);
  // Parts that are all there but do not make the declared manifest.
  const parts = await planManifest(hkg, keys, copyId, bytes, 4096);
  for (const p of parts.parts) assert.equal((await putPart(hkg, keys, copyId, p)).status, 200);
  await expectInvalid(await planManifest(hkg, keys, copyId, bytes, 4096, { manifestId: sha(Buffer.from('another')) }), /hashes to/);
  await expectInvalid(await planManifest(hkg, keys, copyId, bytes, 4096, { size: bytes.length + 1 }), /hold \d+ bytes, not the declared/);
  // Shapes: each a clear 4xx.
  const post = (body: unknown, id = copyId) => hkg.call('POST', `/internal/v1/snapshots/${id}/manifest`, body, { keys });
  assertBceError(await post({ manifestId: sha(bytes), size: bytes.length, parts: 'x' }), 400, 'InappropriateJSON');
  assertBceError(await post({ manifestId: sha(bytes), size: '12', parts: [] }), 400, 'InappropriateJSON');
  assertBceError(await post({ manifestId: 'NOTHEX', size: bytes.length, parts: [sha(bytes)] }), 400, 'InvalidManifest');
  assertBceError(await post({ manifestId: sha(bytes), size: bytes.length, parts: [] }), 400, 'InvalidManifest');
  assertBceError(await post({ manifestId: sha(bytes), size: bytes.length, parts: [sha(bytes)] }, 's-nothere9'), 404, 'NoSuchObject');
  assertBceError(await post({ manifestId: sha(bytes), size: bytes.length, parts: [sha(bytes)] }, 'not-a-snapshot'), 400, 'BadRequest');
  assertBceError(await putPart(hkg, keys, copyId, Buffer.from('part'), sha(Buffer.from('other'))), 400, 'ChunkDigestMismatch');
  assertBceError(await putPart(hkg, keys, copyId, Buffer.alloc(MANIFEST_PART_MAX_BYTES + 1)), 413, 'EntityTooLarge');
  // None of that broke the copy: the good manifest is accepted and recorded.
  const ok = await planManifest(hkg, keys, copyId, bytes, 4096);
  assert.deepEqual(ok.json, { manifestId: sha(bytes), missingParts: [] });
  assert.equal((await hkg.built.region.meta.snapshots.getAny(copyId))?.manifestId, sha(bytes));
});

test('manifests arrive in content-addressed parts: resumable, idempotent, and a recorded manifest that is gone is stored again', async () => {
  const copyId = await reserveIncoming(hkg, keys, 1);
  const m = Manifest.empty(GiB, MiB);
  for (let i = 0; i < 1024; i++) m.set(i, sha(Buffer.from(`chunk ${i}`)));
  const bytes = m.encode(); // 32 KiB + 60 bytes: 9 parts of 4 KiB
  const first = await planManifest(hkg, keys, copyId, bytes, 4096);
  assert.deepEqual(first.json.missingParts, [0, 1, 2, 3, 4, 5, 6, 7, 8]);
  for (const i of [0, 1, 2, 3, 4]) assert.equal((await putPart(hkg, keys, copyId, first.parts[i]!)).status, 200);
  assert.deepEqual((await planManifest(hkg, keys, copyId, bytes, 4096)).json.missingParts, [5, 6, 7, 8], 'after a break, only the rest is asked for');
  for (const i of [5, 2, 6, 7, 8, 8]) assert.equal((await putPart(hkg, keys, copyId, first.parts[i]!)).status, 200); // resends are no-ops
  assert.deepEqual((await planManifest(hkg, keys, copyId, bytes, 4096)).json, { manifestId: sha(bytes), missingParts: [] });
  assert.deepEqual((await planManifest(hkg, keys, copyId, bytes, 4096)).json.missingParts, [], 'a recorded manifest needs no parts');

  // The record alone is not trusted: a manifest blob that is gone is assembled again from the parts...
  const manifests = hkg.built.region.repo.manifests;
  await manifests.delete(sha(bytes));
  assert.deepEqual((await planManifest(hkg, keys, copyId, bytes, 4096)).json.missingParts, []);
  assert.ok((await manifests.has([sha(bytes)])).has(sha(bytes)), 'stored again');
  // ...or, when the parts are gone too, asked for again; meanwhile commit answers ManifestMissing.
  await manifests.delete(sha(bytes));
  for (const p of first.parts) await manifests.delete(sha(p));
  assertBceError(await hkg.call('POST', `/internal/v1/snapshots/${copyId}/commit`, undefined, { keys }), 409, 'ManifestMissing');
  assert.deepEqual((await planManifest(hkg, keys, copyId, bytes, 4096)).json.missingParts, [0, 1, 2, 3, 4, 5, 6, 7, 8]);
  assert.equal((await deliverManifest(hkg, keys, copyId, bytes, 4096)).json.missingParts.length, 0);
  // Past the manifest now: what commit lacks is chunks (these ids name nothing).
  assertBceError(await hkg.call('POST', `/internal/v1/snapshots/${copyId}/commit`, undefined, { keys }), 409, 'ChunksMissing');
});

test('ManifestMissing at commit: the copy job sends the manifest again and completes', async () => {
  const chunks = randomChunks(4);
  const src = await syntheticSnapshot(bj.built.region, chunks);
  // When the last chunk upload is answered, the destination loses the manifest it recorded.
  proxy.onUpload(async (_u, all) => {
    if (all.filter((u) => u.status === 200).length === 4) await hkg.built.region.repo.manifests.delete(src.manifestId);
  });
  proxy.resetCounts();
  try {
    const copyId = await startCopy(bj, src.snapshotId, 'hkg');
    await waitAvailable(set, hkg, copyId);
    const status = await copyStatus(bj, src.snapshotId, copyId);
    assert.equal(status.attempts, 1, 'within the same attempt');
    assert.ok((await hkg.built.region.repo.manifests.has([src.manifestId])).has(src.manifestId));
    assert.ok(bj.logs().some((l) => l.msg.startsWith('commit refused') && l.code === 'ManifestMissing'));
    await assertCopyIdentical(set, hkg, copyId, chunks);
  } finally {
    proxy.onUpload(null);
  }
});

test('a manifest over 256 MiB (an 8400 GB snapshot) is copied in 32 MiB parts', async () => {
  const region = bj.built.region;
  const chunk = randomBytes(MiB);
  const id = sha(chunk);
  const w = region.repo.chunks.writer();
  await w.put(id, chunk);
  await w.sync();
  // Every chunk the same: one data run of 8.6 million ids (262.5 MiB of manifest), one chunk of data.
  // Encoded directly (format version 1, docs/design.md): a Manifest.set per chunk would take seconds.
  const sizeInGB = 8400;
  const count = (sizeInGB * GiB) / MiB;
  const header = Buffer.alloc(24);
  Buffer.from([0x89, 0x53, 0x46, 0x4d, 0x0d, 0x0a, 0x1a, 0x0a]).copy(header);
  header.writeUInt16LE(1, 8);
  header.writeUInt32LE(MiB, 12);
  header.writeBigUInt64LE(BigInt(sizeInGB * GiB), 16);
  const varint: number[] = [];
  for (let v = count * 2 + 1; ; v = Math.floor(v / 128)) {
    if (v < 128) {
      varint.push(v);
      break;
    }
    varint.push((v % 128) | 0x80);
  }
  const body = Buffer.concat([header, Buffer.from(varint), Buffer.alloc(count * 32).fill(Buffer.from(id, 'hex'))]);
  const encoded = Buffer.concat([body, createHash('sha256').update(body).digest()]);
  const src = await publishManifest(region, encoded, sizeInGB, 'huge', [id]);
  assert.equal(src.manifestId, sha(encoded));
  assert.ok(src.manifestBytes.length > 256 * MiB, `${src.manifestBytes.length} bytes`);
  proxy.resetCounts();
  const partsBefore = await metric(hkg.url, 'snapferry_incoming_manifest_parts_received_total');
  const copyId = await startCopy(bj, src.snapshotId, 'hkg');
  const done = await waitAvailable(set, hkg, copyId, 180_000);
  assert.equal(done.sizeInGB, sizeInGB);
  assert.equal((await hkg.built.region.meta.snapshots.getAny(copyId))?.manifestId, src.manifestId);
  assert.equal(proxy.uploads().length, 1, 'one chunk sent for 8.6 million chunk positions');
  // 9 parts of 32 MiB; the uniform run makes the middle ones identical, and those travel once.
  const parts = new Set<string>();
  for (let at = 0; at < encoded.length; at += MANIFEST_PART_MAX_BYTES) parts.add(sha(encoded.subarray(at, at + MANIFEST_PART_MAX_BYTES)));
  assert.equal(Math.ceil(encoded.length / MANIFEST_PART_MAX_BYTES), 9);
  assert.equal(await metric(hkg.url, 'snapferry_incoming_manifest_parts_received_total') - partsBefore, parts.size);
  assert.ok(proxy.bytesIn() < parts.size * MANIFEST_PART_MAX_BYTES + 2 * MiB, `${proxy.bytesIn()} bytes on the wire: each distinct part once`);
  // Gone again, so that later collections here do not read a 262 MiB root each time.
  assert.equal((await hkg.call('DELETE', `/v2/snapshot/${copyId}`)).status, 200);
  assert.equal((await bj.call('DELETE', `/v2/snapshot/${src.snapshotId}`)).status, 200);
});

test('ChunksMissing at commit: the destination names how many; sending them and committing again completes', async () => {
  const chunks = randomChunks(3);
  const copyId = await reserveIncoming(hkg, keys, 1);
  const m = Manifest.empty(GiB, MiB);
  chunks.forEach((c, i) => m.set(i * 7, sha(c)));
  assert.deepEqual((await deliverManifest(hkg, keys, copyId, m.encode())).json.missingParts, []);
  const ask = async (): Promise<string[]> => (await hkg.call('POST', `/internal/v1/snapshots/${copyId}/chunks/missing`, { ids: chunks.map(sha) }, { keys })).json.missing;
  assert.deepEqual(await ask(), chunks.map(sha));
  for (const c of chunks.slice(0, 2)) assert.equal((await putChunk(hkg, keys, copyId, c)).status, 200);
  assert.deepEqual(await ask(), [sha(chunks[2]!)]);
  const refused = await hkg.call('POST', `/internal/v1/snapshots/${copyId}/commit`, undefined, { keys });
  assertBceError(refused, 409, 'ChunksMissing');
  assert.match(refused.json.message, /^1 chunks have not arrived/);
  assert.equal((await snapshotAt(hkg, copyId)).status, 'Creating');
  assert.equal((await putChunk(hkg, keys, copyId, chunks[2]!)).status, 200);
  assert.equal((await hkg.call('POST', `/internal/v1/snapshots/${copyId}/commit`, undefined, { keys })).status, 200);
  const done = await snapshotAt(hkg, copyId);
  assert.deepEqual([done.status, done.progress], ['Available', '100']);
  assert.equal((await hkg.call('POST', `/internal/v1/snapshots/${copyId}/commit`, undefined, { keys })).status, 200, 'commit again: a no-op');
  // And the copy job does the same on its own: a chunk lost after it was sent is sent again before the commit succeeds.
  const more = randomChunks(6);
  const src = await syntheticSnapshot(bj.built.region, more);
  let lostOne = false;
  proxy.onUpload(async (u, all) => {
    if (!lostOne && all.filter((x) => x.status === 200).length === 6) {
      lostOne = true;
      await hkg.built.region.repo.chunks.delete(u.chunkId);
    }
  });
  proxy.resetCounts();
  try {
    const job = await startCopy(bj, src.snapshotId, 'hkg');
    await waitAvailable(set, hkg, job);
    assert.equal((await copyStatus(bj, src.snapshotId, job)).attempts, 1, 'resumed within the attempt');
    assert.equal(proxy.uploads().filter((u) => u.status === 200).length, 7, 'six chunks, and the lost one again');
    await assertCopyIdentical(set, hkg, job, more);
  } finally {
    proxy.onUpload(null);
  }
});

test('ChunkTooLarge and the other chunk upload errors are clear 4xx answers', async () => {
  const copyId = await reserveIncoming(hkg, keys, 1);
  const tooBig = randomBytes(MiB + 1);
  assertBceError(await putChunk(hkg, keys, copyId, tooBig), 413, 'ChunkTooLarge');
  // zstd that expands past a chunk is refused without expanding it.
  const bomb = compress(Buffer.alloc(64 * MiB));
  assertBceError(await putChunk(hkg, keys, copyId, bomb, { id: sha(Buffer.alloc(64 * MiB)), encoding: 'zstd' }), 413, 'ChunkTooLarge');
  // ...also when its header does not say how large it decodes (only the decoder finds out: this
  // pins lib/zstd.ts's reading of zstd's "destination buffer is too small" as too large, not damage).
  const undeclared = frameWithoutContentSize(Buffer.alloc(4 * MiB, 7));
  assertBceError(await putChunk(hkg, keys, copyId, undeclared, { id: sha(Buffer.alloc(4 * MiB, 7)), encoding: 'zstd' }), 413, 'ChunkTooLarge');
  assertBceError(await putChunk(hkg, keys, copyId, Buffer.alloc(MiB + 69 * 1024)), 413, 'EntityTooLarge');
  const good = randomBytes(MiB);
  assertBceError(await putChunk(hkg, keys, copyId, good, { id: sha(Buffer.from('other')) }), 400, 'ChunkDigestMismatch');
  assertBceError(await putChunk(hkg, keys, copyId, randomBytes(1000), { id: sha(good), encoding: 'zstd' }), 400, 'ChunkDigestMismatch');
  assertBceError(await putChunk(hkg, keys, copyId, good, { encoding: 'gzip' }), 400, 'BadRequest');
  assertBceError(await putChunk(hkg, keys, copyId, good, { id: 'ABC' }), 400, 'BadRequest');
  assertBceError(await putChunk(hkg, keys, 's-nothere8', good), 404, 'NoSuchObject');
  assertBceError(await hkg.call('POST', `/internal/v1/snapshots/${copyId}/chunks/missing`, { ids: ['nothex'] }, { keys }), 400, 'BadRequest');
  assertBceError(await hkg.call('POST', `/internal/v1/snapshots/${copyId}/chunks/missing`, { ids: 'x' }, { keys }), 400, 'InappropriateJSON');
  assertBceError(await hkg.call('PUT', `/internal/v1/snapshots/${copyId}/progress`, { progress: 'x' }, { keys }), 400, 'InappropriateJSON');
  assertBceError(await hkg.call('PUT', `/internal/v1/snapshots/${copyId}`, { accountId: 'alice', sizeInGB: 40000 }, { keys }), 400, 'InappropriateJSON');
  // A good chunk still goes in, and a failed copy takes nothing more.
  assert.equal((await putChunk(hkg, keys, copyId, good)).status, 200);
  assert.equal((await hkg.call('POST', `/internal/v1/snapshots/${copyId}/fail`, { reason: 'test' }, { keys })).status, 200);
  assertBceError(await putChunk(hkg, keys, copyId, randomBytes(MiB)), 409, 'OperationDenied');
  assertBceError(await hkg.call('POST', `/internal/v1/snapshots/${copyId}/commit`, undefined, { keys }), 409, 'OperationDenied');
});

test('a chunk batch: each part is received and answered on its own, as its single upload would be', async () => {
  const copyId = await reserveIncoming(hkg, keys, 1);
  const [a, b, c] = randomChunks(3) as Buffer[];
  const text = Buffer.alloc(MiB, 'snapferry batch ');
  const packed = compress(text);
  const other = sha(Buffer.from('other'));
  const res = await putChunkBatch(hkg, keys, copyId, [
    { data: a! },
    { data: b!, id: other }, // raw, listed with its bytes' digest under another chunk's id
    { data: packed, id: sha(text), encoding: 'zstd', sha256: sha(packed) },
    { data: c!, sha256: sha(Buffer.from('not c')) }, // a raw part whose listed digest is not its id: hashed, refused
  ]);
  assert.equal(res.status, 200);
  assert.deepEqual(res.json.results.map((r: { status: number; code?: string }) => [r.status, r.code]), [[200, undefined], [400, 'ChunkDigestMismatch'], [200, undefined], [400, 'BadDigest']]);
  const asked = [sha(a!), other, sha(text), sha(c!)];
  const { json } = await hkg.call('POST', `/internal/v1/snapshots/${copyId}/chunks/missing`, { ids: asked }, { keys });
  assert.deepEqual(json.missing, [other, sha(c!)], 'the parts answered 200 are kept, the refused ones are not');
  // A part that decodes to other bytes than its id says is ChunkDigestMismatch, as a single upload's.
  const wrong = await putChunkBatch(hkg, keys, copyId, [{ data: packed, id: other, encoding: 'zstd', sha256: sha(packed) }, { data: c! }]);
  assert.deepEqual(wrong.json.results.map((r: { status: number; code?: string }) => [r.status, r.code]), [[400, 'ChunkDigestMismatch'], [200, undefined]]);
  // A copy that is no longer Creating takes nothing: every part says so.
  assert.equal((await hkg.call('POST', `/internal/v1/snapshots/${copyId}/fail`, { reason: 'test' }, { keys })).status, 200);
  const late = await putChunkBatch(hkg, keys, copyId, [{ data: a! }, { data: b! }]);
  assert.deepEqual(late.json.results.map((r: { status: number; code?: string }) => [r.status, r.code]), [[409, 'OperationDenied'], [409, 'OperationDenied']]);
});

test('a malformed chunk batch is a clear 4xx and nothing of it is applied', async () => {
  const copyId = await reserveIncoming(hkg, keys, 1);
  const [a, b] = randomChunks(2) as Buffer[];
  const listed = `${sha(a!)}:raw:${MiB}:${sha(a!)},${sha(b!)}:raw:${MiB}:${sha(b!)}`;
  const refused: Array<[string, Awaited<ReturnType<typeof putChunkBatch>>, number, string]> = [
    ['no part list', await putChunkBatch(hkg, keys, copyId, [{ data: a! }], { header: '' }), 400, 'BadRequest'],
    ['a part that is not id:encoding:bytes:sha256', await putChunkBatch(hkg, keys, copyId, [{ data: a! }], { header: `${sha(a!)}:raw:${MiB}` }), 400, 'BadRequest'],
    ['an id that is not hex', await putChunkBatch(hkg, keys, copyId, [{ data: a!, id: 'Z'.repeat(64) }]), 400, 'BadRequest'],
    ['an unknown encoding', await putChunkBatch(hkg, keys, copyId, [{ data: a!, encoding: 'gzip' }]), 400, 'BadRequest'],
    ['a part of no bytes', await putChunkBatch(hkg, keys, copyId, [{ data: Buffer.alloc(0) }, { data: a! }]), 400, 'BadRequest'],
    ['a part longer than a chunk may be', await putChunkBatch(hkg, keys, copyId, [{ data: Buffer.concat([a!, b!]) }]), 400, 'BadRequest'],
    ['more parts than a batch carries', await putChunkBatch(hkg, keys, copyId, Array.from({ length: 17 }, (_, i) => ({ data: Buffer.alloc(64, i + 1) }))), 400, 'BadRequest'],
    ['parts that do not add up to the body', await putChunkBatch(hkg, keys, copyId, [{ data: a! }], { header: listed }), 400, 'BadRequest'],
    ['a signed digest that is not the list\'s', await putChunkBatch(hkg, keys, copyId, [{ data: a! }, { data: b! }], { listDigest: sha(Buffer.concat([a!, b!])) }), 400, 'BadDigest'],
    ['a Content-MD5', await putChunkBatch(hkg, keys, copyId, [{ data: a! }], { headers: { 'content-md5': createHash('md5').update(a!).digest('base64') } }), 400, 'BadRequest'],
  ];
  for (const [what, res, status, code] of refused) {
    assert.equal(res.status, status, what);
    assertBceError(res, status, code);
  }
  const { json } = await hkg.call('POST', `/internal/v1/snapshots/${copyId}/chunks/missing`, { ids: [sha(a!), sha(b!)] }, { keys });
  assert.deepEqual(json.missing, [sha(a!), sha(b!)], 'nothing of a refused batch was kept');
});

test('a copy sends its chunks in batches, one request per four chunks, and the copy is exact', async () => {
  const chunks = randomChunks(10);
  const src = await syntheticSnapshot(bj.built.region, chunks);
  proxy.resetCounts();
  const copyId = await startCopy(bj, src.snapshotId, 'hkg');
  await waitAvailable(set, hkg, copyId);
  // The batches go out at once (several sends per copy), so they may arrive in any order.
  const requests = proxy.requests().map((r) => [r.chunks, r.batch] as const).sort((a, b) => b[0] - a[0]);
  assert.deepEqual(requests, [[4, true], [4, true], [2, true]]);
  assert.equal(proxy.uploads().filter((u) => u.status === 200).length, 10);
  await assertCopyIdentical(set, hkg, copyId, chunks);
});

test('a 2xx batch answer that is no answer (not one result per part) fails the attempt as InvalidAnswer; the retry completes the copy', async () => {
  const chunks = randomChunks(4);
  const src = await syntheticSnapshot(bj.built.region, chunks);
  proxy.resetCounts();
  proxy.garbleNextBatchAnswers(1);
  const copyId = await startCopy(bj, src.snapshotId, 'hkg');
  await waitAvailable(set, hkg, copyId);
  const status = await copyStatus(bj, src.snapshotId, copyId);
  assert.equal(status.attempts, 2, 'the garbled answer failed the first attempt, the retry completed');
  assert.ok(bj.logs().some((l) => l.msg === 'job attempt failed; will retry' && /InvalidAnswer|no result per chunk/.test(l.reason)), 'the failed attempt names the answer');
  // The destination had stored the parts: the retry asks what it lacks and sends none of them again.
  assert.deepEqual(proxy.requests().map((r) => r.chunks), [4]);
  await assertCopyIdentical(set, hkg, copyId, chunks);
});

test('damaged in transit: a chunk is resent; past the resend limit the attempt fails and the job retries', async () => {
  const chunks = randomChunks(1);
  const src = await syntheticSnapshot(bj.built.region, chunks);
  const resentBefore = await metric(bj.url, 'snapferry_replication_chunks_resent_total', { destination: 'hkg' });
  proxy.resetCounts();
  proxy.corruptNextChunks(SENDS_ON_DAMAGE + 1);
  const copyId = await startCopy(bj, src.snapshotId, 'hkg');
  await waitAvailable(set, hkg, copyId);
  assert.deepEqual(proxy.uploads().map((u) => u.status), [...Array(SENDS_ON_DAMAGE + 1).fill(400), 200]);
  const status = await copyStatus(bj, src.snapshotId, copyId);
  assert.equal(status.attempts, 2, 'the first attempt failed after its sends, the retry completed');
  assert.ok(bj.logs().some((l) => l.msg === 'job attempt failed; will retry' && /ChunkDigestMismatch|hash/.test(l.reason)), 'the failed attempt says why');
  assert.equal(await metric(bj.url, 'snapferry_replication_chunks_resent_total', { destination: 'hkg' }) - resentBefore, SENDS_ON_DAMAGE);
  await assertCopyIdentical(set, hkg, copyId, chunks);
});

test('a permanent 4xx ends the destination CreatedFailed and the source copy failed (gz uses 2 MiB chunks)', async () => {
  const src = await syntheticSnapshot(bj.built.region, randomChunks(2));
  const copyId = await startCopy(bj, src.snapshotId, 'gz');
  const failed = await set.waitFor(async () => {
    const s = await copyStatus(bj, src.snapshotId, copyId);
    return s?.state === 'failed' ? s : null;
  });
  assert.equal(failed.attempts, 1, 'not retried');
  assert.match(failed.lastError, /gz refused the copy: .*1048576-byte chunks; this region uses 2097152/);
  const dest = await set.waitFor(async () => {
    const s = await snapshotAt(gz, copyId);
    return s?.status === 'CreatedFailed' ? s : null;
  });
  assert.equal(dest.status, 'CreatedFailed');
  assert.equal((await bj.call('DELETE', `/v2/snapshot/${src.snapshotId}`)).status, 200, 'no copy reads the source any more');
  assert.equal((await gz.call('DELETE', `/v2/snapshot/${copyId}`)).status, 200, 'the failed copy can be deleted');
});

test('garbage collection at every step of an incoming copy (grace 0) keeps what the copy relies on', async () => {
  const chunks = randomChunks(6);
  // hkg already holds half of them, old and named by nothing: the copy is told not to send those.
  const repo = hkg.built.region.repo;
  const w = repo.chunks.writer();
  for (const c of chunks.slice(0, 3)) await w.put(sha(c), c);
  await w.sync();
  const old = (Date.now() - 2 * 3600_000) / 1000;
  for (const c of chunks.slice(0, 3)) await utimes(join(set.dir, 'hkg', 'chunks', sha(c).slice(0, 2), sha(c)), old, old);
  const src = await syntheticSnapshot(bj.built.region, chunks);
  proxy.resetCounts();
  stepsSeen.clear();
  gcAtSteps = true;
  let copyId: string;
  try {
    copyId = await startCopy(bj, src.snapshotId, 'hkg');
    await waitAvailable(set, hkg, copyId);
    assert.deepEqual([...stepsSeen].sort(), ['incoming:chunk-received', 'incoming:commit-checked', 'incoming:manifest-recorded', 'incoming:missing-answered']);
    assert.equal(proxy.uploads().length, 3, 'the three it held were not sent');
    assert.equal((await copyStatus(bj, src.snapshotId, copyId)).attempts, 1);
  } finally {
    gcAtSteps = false;
  }
  await hkg.built.gc(); // and once more after the copy: it is a root now
  await assertCopyIdentical(set, hkg, copyId, chunks);
});

// Regions of its own: the source's client then sends single uploads only, for a while (peer-client.ts),
// which would change what the other tests see.
test('a destination that takes no chunk batches (an older version) gets every chunk on its own, and the copy completes', async () => {
  let oldProxy: FaultProxy | undefined;
  const old = await startRegions([{ name: 'bj' }, { name: 'hkg' }], async (from, to, port) => (from === 'bj' && to === 'hkg' ? (oldProxy = await startFaultProxy(port)).url : null));
  try {
    const [source, destination] = [old.regions.bj!, old.regions.hkg!];
    oldProxy!.refuseBatches(true);
    const chunks = randomChunks(6);
    const src = await syntheticSnapshot(source.built.region, chunks);
    const copyId = await startCopy(source, src.snapshotId, 'hkg');
    await waitAvailable(old, destination, copyId);
    const requests = oldProxy!.requests();
    // The batches already on their way when the first refusal came back are refused too.
    assert.equal(requests.filter((r) => r.batch).reduce((n, r) => n + r.chunks, 0), 6, 'the batches were tried, and refused');
    assert.deepEqual(requests.filter((r) => !r.batch).map((r) => r.chunks), [1, 1, 1, 1, 1, 1], 'then every chunk on its own');
    assert.equal((await copyStatus(source, src.snapshotId, copyId)).attempts, 1, 'the refusal is no failure');
    await assertCopyIdentical(old, destination, copyId, chunks);
  } finally {
    await old.close();
    await oldProxy?.close();
  }
});

/** A zstd frame of `data` whose header leaves out the content size (as a streaming encoder writes them). */
function frameWithoutContentSize(data: Buffer): Buffer {
  const cctx = new zstd.CCtx();
  cctx.setParameter(zstd.CParameter.contentSizeFlag, 0);
  const out = Buffer.alloc(data.length + 1024);
  const frame = out.subarray(0, cctx.compress2(out, data));
  assert.equal(zstd.getFrameContentSize(frame), null, 'the frame declares no size');
  return frame;
}
