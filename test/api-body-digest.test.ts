/**
 * Body integrity (bcc-api.md §8): a request with `x-bce-content-sha256` or `Content-MD5` whose body
 * does not match answers 400 BadDigest and nothing of it is applied: not a data write (also the part
 * that arrived before the mismatch could be known), not a create, not a delete whose handler never
 * reads its body. A malformed header is 400 InvalidDigest. Signed, the header makes a replay of a
 * signed request with other bytes fail. Region-to-region calls always send and sign the header, and
 * the internal endpoints refuse a body without it (MissingDigest). Real sockets, a real region.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { createServer, type IncomingMessage } from 'node:http';
import type { AddressInfo } from 'node:net';
import { isTransient, PeerClient } from '../src/replication/peer-client.ts';
import { VERIFIED_WRITE_MAX_BYTES } from '../src/services/volume-data-service.ts';
import { rawExchange, startLiveRegion, type Answer, type LiveRegion } from './helpers/live-region.ts';
import { signedRequest, type Keys } from './helpers/signed-request.ts';
import { aliceKeys } from './helpers/region-harness.ts';

const MiB = 1 << 20;
const sha256 = (b: Buffer | string): string => createHash('sha256').update(b).digest('hex');
const md5 = (b: Buffer | string): string => createHash('md5').update(b).digest('base64');
const octets = { 'content-type': 'application/octet-stream' };

let live: LiveRegion;
let volumeId: string;
let service: Keys;

before(async () => {
  live = await startLiveRegion();
  service = { ak: 'snapferry-region-gz', sk: live.config.regionSecret };
  volumeId = (await live.call('POST', '/v2/volume', { cdsSizeInGB: 1 })).json.volumeIds[0];
  for (;;) {
    if ((await live.call('GET', `/v2/volume/${volumeId}`)).json.volume.status === 'Available') break;
    await new Promise((r) => setTimeout(r, 25));
  }
});
after(async () => live?.close());

function assertBce(res: Answer, status: number, code: string): void {
  assert.equal(res.status, status, `expected ${status} ${code}, got ${res.status} ${res.raw.toString().slice(0, 300)}`);
  assert.equal(res.json.code, code);
  assert.deepEqual(Object.keys(res.json).sort(), ['code', 'message', 'requestId']);
  assert.equal(res.headers['x-bce-request-id'], res.json.requestId);
}

async function readDisk(offset: number, length: number): Promise<Buffer> {
  const res = await live.call('GET', `/v2/volume/${volumeId}/data`, undefined, { headers: { range: `bytes=${offset}-${offset + length - 1}` } });
  assert.equal(res.status, 206);
  return res.raw;
}

test('a signed data write replayed with other bytes answers 400 BadDigest; the disk keeps the old bytes', async () => {
  const old = randomBytes(64 * 1024);
  assert.equal((await live.call('PUT', `/v2/volume/${volumeId}/data?offset=0`, old, { headers: octets, contentSha256: true })).status, 200);
  assert.deepEqual(await readDisk(0, old.length), old);
  // x-bce-content-sha256, signed with the default header set (as the JS SDK signs x-bce-* headers).
  const fresh = randomBytes(old.length);
  const replay = await live.call('PUT', `/v2/volume/${volumeId}/data?offset=0`, fresh, { headers: octets, contentSha256: true, replayWith: randomBytes(old.length) });
  assertBce(replay, 400, 'BadDigest');
  assert.deepEqual(await readDisk(0, old.length), old, 'nothing of the replayed body was written');
  // Content-MD5, signed the Go SDK's way.
  const goReplay = await live.call('PUT', `/v2/volume/${volumeId}/data?offset=0`, fresh, { style: 'go', headers: octets, replayWith: randomBytes(old.length) });
  assertBce(goReplay, 400, 'BadDigest');
  assert.deepEqual(await readDisk(0, old.length), old);
  // The genuine request goes through, in either form.
  assert.equal((await live.call('PUT', `/v2/volume/${volumeId}/data?offset=0`, fresh, { style: 'go', headers: octets })).status, 200);
  assert.deepEqual(await readDisk(0, fresh.length), fresh);
});

test('an 8 MiB write damaged in its last byte writes none of its first 8 MiB (staged and verified, then applied)', async () => {
  const at = 16 * MiB;
  const old = randomBytes(8 * MiB);
  assert.equal((await live.call('PUT', `/v2/volume/${volumeId}/data?offset=${at}`, old, { headers: octets })).status, 200);
  const next = randomBytes(8 * MiB);
  const damaged = Buffer.from(next);
  damaged[damaged.length - 1]! ^= 0x01;
  assertBce(await live.call('PUT', `/v2/volume/${volumeId}/data?offset=${at}`, next, { headers: octets, contentSha256: true, replayWith: damaged }), 400, 'BadDigest');
  assert.ok((await readDisk(at, old.length)).equals(old), 'the disk reads as before the write');
  // Above the staging bound a write with a digest is refused before its body is read.
  const big = VERIFIED_WRITE_MAX_BYTES + MiB;
  const req = signedRequest({ method: 'PUT', url: `/v2/volume/${volumeId}/data?offset=0`, keys: aliceKeys, host: `127.0.0.1:${live.port}`, extraHeaders: { ...octets, 'content-length': String(big), 'x-bce-content-sha256': sha256('whatever') } });
  const head = `PUT /v2/volume/${volumeId}/data?offset=0 HTTP/1.1\r\n${Object.entries(req.headers).map(([k, v]) => `${k}: ${v}`).join('\r\n')}\r\n\r\n`;
  const res = await rawExchange(live.port, [head], { waitMs: 3000 });
  assert.equal(res.status, 413, res.text.slice(0, 300));
  assert.equal(res.json.code, 'EntityTooLarge');
  assert.match(res.json.message, /split it/);
});

test('malformed digest headers answer 400 InvalidDigest and write nothing', async () => {
  const before = await readDisk(0, 4096);
  const body = randomBytes(4096);
  const malformed: Array<Record<string, string>> = [
    { 'x-bce-content-sha256': 'abc' },
    { 'x-bce-content-sha256': 'z'.repeat(64) },
    { 'content-md5': md5(body).slice(0, 20) },
    { 'content-md5': createHash('md5').update(body).digest('hex') },
  ];
  for (const headers of malformed) {
    assertBce(await live.call('PUT', `/v2/volume/${volumeId}/data?offset=0`, body, { headers: { ...octets, ...headers } }), 400, 'InvalidDigest');
  }
  assertBce(await live.call('POST', '/v2/volume', { cdsSizeInGB: 1 }, { headers: { 'x-bce-content-sha256': 'nothex' } }), 400, 'InvalidDigest');
  assert.deepEqual(await readDisk(0, 4096), before);
});

test('JSON calls: a create or a change whose body fails its digest is not applied; a delete with a failing body deletes nothing', async () => {
  const count = async (): Promise<number> => (await live.call('GET', '/v2/volume')).json.volumes.length;
  const n = await count();
  const signed = JSON.stringify({ cdsSizeInGB: 1, name: 'aaaa' });
  const swapped = Buffer.from(JSON.stringify({ cdsSizeInGB: 2, name: 'bbbb' }));
  assertBce(await live.call('POST', '/v2/volume', signed, { contentSha256: true, replayWith: swapped }), 400, 'BadDigest');
  assertBce(await live.call('POST', '/v2/volume', signed, { style: 'go', replayWith: swapped }), 400, 'BadDigest');
  assert.equal(await count(), n, 'no disk was created');
  // The handler of a delete never reads its body: the body is still verified before it runs.
  assertBce(await live.call('DELETE', `/v2/volume/${volumeId}`, '{"x":1}', { contentSha256: true, replayWith: Buffer.from('{"y":2}') }), 400, 'BadDigest');
  assert.equal((await live.call('GET', `/v2/volume/${volumeId}`)).status, 200, 'the disk is still there');
  // A matching digest is simply accepted, whichever header carries it.
  const ok = await live.call('POST', '/v2/volume', signed, { style: 'go', contentSha256: true });
  assert.equal(ok.status, 200, ok.raw.toString());
  assert.equal(await count(), n + 1);
});

test('internal endpoints: a body without a signed x-bce-content-sha256 is MissingDigest; one that fails it is BadDigest and stores nothing', async () => {
  const copyId = `s-${randomBytes(4).toString('hex')}`;
  const reserve = { accountId: 'alice', name: 'incoming', desc: '', sizeInGB: 1, storageType: 'hp1', sourceRegion: 'gz', sourceSnapshotId: 's-source01' };
  const chunk = randomBytes(MiB);
  const calls: Array<[string, string, Buffer | Record<string, unknown>, Record<string, string>?]> = [
    ['PUT', `/internal/v1/snapshots/${copyId}`, reserve],
    ['POST', `/internal/v1/snapshots/${copyId}/manifest`, { manifestId: sha256('m'), size: 100, parts: [sha256('p')] }],
    ['PUT', `/internal/v1/snapshots/${copyId}/manifest/parts/${sha256('p')}`, Buffer.from('p'), octets],
    ['POST', `/internal/v1/snapshots/${copyId}/chunks/missing`, { ids: [sha256(chunk)] }],
    ['PUT', `/internal/v1/snapshots/${copyId}/chunks/${sha256(chunk)}`, chunk, { ...octets, 'x-snapferry-chunk-encoding': 'raw' }],
    ['PUT', `/internal/v1/snapshots/${copyId}/chunks`, chunk, { ...octets, 'x-snapferry-chunk-batch': `${sha256(chunk)}:raw:${MiB}:${sha256(chunk)}` }],
    ['PUT', `/internal/v1/snapshots/${copyId}/progress`, { progress: 5 }],
    ['POST', `/internal/v1/snapshots/${copyId}/fail`, { reason: 'x' }],
  ];
  for (const [method, path, body, headers] of calls) {
    assertBce(await live.call(method, path, body, { keys: service, headers, contentSha256: false }), 400, 'MissingDigest');
    // Present but not signed (the Go SDK's explicit list leaves x-bce-* headers out).
    const payload = Buffer.isBuffer(body) ? body : JSON.stringify(body);
    assertBce(await live.call(method, path, body, { keys: service, style: 'go', headers: { ...headers, 'x-bce-content-sha256': sha256(payload) }, contentSha256: false }), 400, 'MissingDigest');
  }
  assert.equal((await live.call('PUT', `/internal/v1/snapshots/${copyId}`, reserve, { keys: service })).status, 200, 'with the header, the reserve goes through');
  const damaged = Buffer.from(chunk);
  damaged[12345]! ^= 0x10;
  const res = await live.call('PUT', `/internal/v1/snapshots/${copyId}/chunks/${sha256(chunk)}`, chunk, { keys: service, headers: { ...octets, 'x-snapferry-chunk-encoding': 'raw' }, replayWith: damaged });
  assertBce(res, 400, 'BadDigest');
  assert.equal((await live.built.region.repo.chunks.has([sha256(chunk)])).size, 0, 'the damaged chunk was not stored');
  // No body, no header needed: a commit is judged on its own (here: chunks are missing, or the like), never MissingDigest.
  const commit = await live.call('POST', `/internal/v1/snapshots/${copyId}/commit`, undefined, { keys: service });
  assert.notEqual(commit.json?.code, 'MissingDigest');
  assert.equal((await live.call('POST', `/internal/v1/snapshots/${copyId}/fail`, { reason: 'done' }, { keys: service })).status, 200);
});

test('the peer client sends and signs x-bce-content-sha256 with every body, and takes BadDigest on a chunk for damage in transit', async () => {
  const seen: Array<{ method: string; url: string; headers: IncomingMessage['headers']; body: Buffer }> = [];
  let answerBadDigest = false;
  const server = createServer((req, res) => {
    const parts: Buffer[] = [];
    req.on('data', (d: Buffer) => parts.push(d));
    req.on('end', () => {
      seen.push({ method: req.method!, url: req.url!, headers: req.headers, body: Buffer.concat(parts) });
      if (answerBadDigest) {
        res.writeHead(400, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ requestId: 'r', code: 'BadDigest', message: 'The body does not hash to its x-bce-content-sha256.' }));
        return;
      }
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ manifestId: 'm', missingParts: [], missing: [], results: [{ status: 200 }, { status: 400, code: 'ChunkDigestMismatch', message: 'no' }] }));
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const peer = new PeerClient('hkg', `http://127.0.0.1:${(server.address() as AddressInfo).port}`, 'bj', 'secret');
  try {
    const id = 's-dest0001';
    await peer.reserve(id, { accountId: 'a', name: 'n', desc: '', sizeInGB: 1, storageType: 'hp1', sourceRegion: 'bj', sourceSnapshotId: 's-src00001' });
    await peer.planManifest(id, sha256('m'), 10, [sha256('p')]);
    await peer.putManifestPart(id, sha256('p'), Buffer.from('part bytes'));
    await peer.missing(id, [sha256('c')]);
    await peer.putChunk(id, sha256('c'), randomBytes(4096), 'raw');
    await peer.progress(id, 50);
    await peer.commit(id);
    await peer.fail(id, 'reason');
    assert.equal(seen.length, 8);
    for (const r of seen) {
      assert.equal(r.headers['x-bce-content-sha256'], sha256(r.body), `${r.method} ${r.url} carries the SHA-256 of its body`);
      const signedHeaders = String(r.headers.authorization).split('/')[4]!.split(';');
      assert.ok(signedHeaders.includes('x-bce-content-sha256'), `${r.method} ${r.url} signs it (${signedHeaders.join(';')})`);
    }
    // A chunk batch signs the SHA-256 of its part list (each part's digest is in it), not of the body.
    const [a, b] = [randomBytes(4096), randomBytes(100)];
    const results = await peer.putChunkBatch(id, [{ id: sha256(a), encoding: 'raw', body: a, sha256: sha256(a) }, { id: sha256('z'), encoding: 'zstd', body: b, sha256: sha256(b) }]);
    assert.deepEqual(results?.map((r) => r.status), [200, 400], 'each part answered on its own');
    const batch = seen.at(-1)!;
    const listed = `${sha256(a)}:raw:4096:${sha256(a)},${sha256('z')}:zstd:100:${sha256(b)}`;
    assert.equal(batch.url, `/internal/v1/snapshots/${id}/chunks`);
    assert.equal(batch.headers['x-snapferry-chunk-batch'], listed);
    assert.ok(batch.body.equals(Buffer.concat([a, b])), 'the parts back to back');
    assert.equal(batch.headers['x-bce-content-sha256'], sha256(listed));
    assert.ok(String(batch.headers.authorization).split('/')[4]!.split(';').includes('x-bce-content-sha256'), 'signed');
    answerBadDigest = true;
    const refused = await peer.putChunkBatch(id, [{ id: sha256(a), encoding: 'raw', body: a, sha256: sha256(a) }, { id: sha256(b), encoding: 'raw', body: b, sha256: sha256(b) }]);
    assert.deepEqual(refused?.map((r) => [r.status, r.code]), [[400, 'BadDigest'], [400, 'BadDigest']], 'a batch refused as damaged: every part is damaged in transit, to be resent');
    const err = await peer.putChunk(id, sha256('c'), randomBytes(4096), 'raw').catch((e: unknown) => e);
    assert.equal((err as { code?: string }).code, 'ChunkDigestMismatch', 'resent by the copy job like any chunk damaged in transit');
    assert.ok(isTransient(err));
  } finally {
    await peer.close();
    await new Promise((r) => server.close(r));
  }
});
