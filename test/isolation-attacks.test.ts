/**
 * Isolation, tried the way an attacker with a second account would: Bob against Alice, on a real
 * `snapferry serve` (regions bj and hkg in one process, NBD over TLS-PSK required, debug logging),
 * with real clients: signed HTTP calls (the official SDKs' signature), the official JavaScript SDK,
 * libnbd's nbdinfo and nbdcopy with the key file `snapferry nbd-psk --output` wrote.
 *
 * Bob never sees (get, list, list filters, list markers, paging), copies, restores from (a disk from
 * her snapshot, in her region or from her copy in the other), deletes, resizes, rolls back, modifies,
 * snapshots, writes or reads (HTTP data and extents; NBD) or learns about Alice's disks and
 * snapshots: every answer is byte for byte the one for a missing id of the same length (the id and
 * the request id aside), and nothing of hers changes. A clientToken is the caller's own. Tenant keys
 * never open the internal endpoints (replication, admin gc/scrub/check); the regions' key never
 * opens tenant routes or NBD. Key files are 0600. And after all of it, including failures and bad
 * signatures, no secret (account secrets, the region secret, the metrics token, PSK hex, a request's
 * signature) appears anywhere in the server's stdout or stderr.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { request } from 'undici';
import * as C from '../src/blockdev/nbd/constants.ts';
import { nbdPskKey } from '../src/lib/nbd-psk.ts';
import { runCli } from './helpers/cli.ts';
import { TEST_METRICS_TOKEN } from './helpers/metrics.ts';
import { openSocket, rawExchange } from './helpers/live-region.ts';
import { killAllChildren, runTool } from './helpers/nbd-harness.ts';
import { RawNbdClient } from './helpers/nbd-raw-client.ts';
import { sdkClient, send, sendError as sdkError, until } from './helpers/sdk.ts';
import { signedRequest, type Keys } from './helpers/signed-request.ts';
import { spawnServer, type SpawnedServer } from './helpers/spawned-server.ts';

// Secrets unique to this run, so a scan of the logs finds them wherever they leak.
const secret = (who: string): string => `${who}-secret-${randomBytes(12).toString('hex')}`;
const ALICE = { accountId: 'alice', accessKeyId: 'iso-alice-ak-0000000001', secretAccessKey: secret('alice') };
const BOB = { accountId: 'bob', accessKeyId: 'iso-bob-ak-000000000001', secretAccessKey: secret('bob') };
const DEFAULT = { accessKeyId: 'iso-default-ak-00000001', secretAccessKey: secret('default') };
const alice: Keys = { ak: ALICE.accessKeyId, sk: ALICE.secretAccessKey };
const bob: Keys = { ak: BOB.accessKeyId, sk: BOB.secretAccessKey };
/** Ids that exist nowhere, of the same length as real ones (so answers can be compared byte for byte). */
const NO_VOLUME = 'v-zz000000';
const NO_SNAPSHOT = 's-zz000000';

let dir: string;
let server: SpawnedServer;
let regionSecret: string;
let aliceVolume: string;
let aliceSnapshot: string;
let aliceCopy: string; // her snapshot's copy in hkg
let bobVolume: string;
let bobSnapshot: string;
const aliceData = randomBytes(1 << 20);
/** Signatures of requests this test sent: replayable for their expiration, so never to be logged. */
const signatures: string[] = [];

interface Reply {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  raw: Buffer;
  json: any;
}

/** A signed call as the official SDKs sign it, over a real connection. */
async function callAs(keys: Keys, region: 'bj' | 'hkg', method: string, path: string, body?: unknown, headers: Record<string, string> = {}): Promise<Reply> {
  const base = server.urls[region]!;
  const signed = signedRequest({ method, url: path, body: body === undefined ? undefined : Buffer.isBuffer(body) ? body : (body as Record<string, unknown>), keys, host: new URL(base).host, extraHeaders: headers, contentSha256: path.startsWith('/internal/') || undefined });
  signatures.push(signed.headers.authorization!.split('/').at(-1)!);
  const res = await request(`${base}${path}`, { method: method as 'GET', headers: signed.headers, body: signed.payload });
  const raw = Buffer.from(await res.body.arrayBuffer());
  const type = String(res.headers['content-type'] ?? '');
  return { status: res.statusCode, headers: res.headers, raw, json: type.includes('json') && raw.length > 0 ? JSON.parse(raw.toString('utf8')) : null };
}

const asAlice = (method: string, path: string, body?: unknown, headers?: Record<string, string>, region: 'bj' | 'hkg' = 'bj') => callAs(alice, region, method, path, body, headers);
const asBob = (method: string, path: string, body?: unknown, headers?: Record<string, string>, region: 'bj' | 'hkg' = 'bj') => callAs(bob, region, method, path, body, headers);

async function waitStatus(region: 'bj' | 'hkg', kind: 'volume' | 'snapshot', id: string, keys: Keys, want = 'Available'): Promise<void> {
  await until(async () => (await callAs(keys, region, 'GET', `/v2/${kind}/${id}`)).json?.[kind]?.status === want, 120_000, `${kind} ${id} ${want}`);
}

/**
 * Bob's attempt on Alice's resource answers exactly as the same attempt on a missing id: status,
 * headers (names and values, the request id and date aside), body (the id and request id aside).
 */
async function sameAsMissing(what: string, attempt: (id: string) => Promise<Reply>, real: string, missing: string): Promise<Reply> {
  assert.equal(real.length, missing.length);
  const theirs = await attempt(real);
  const none = await attempt(missing);
  assert.equal(theirs.status, 404, `${what} on Alice's ${real}: ${theirs.status} ${theirs.raw.toString().slice(0, 300)}`);
  assert.equal(theirs.json?.code, 'NoSuchObject', what);
  const norm = (r: Reply, id: string) => ({
    status: r.status,
    headers: Object.fromEntries(Object.entries(r.headers).filter(([k]) => k !== 'date' && k !== 'x-bce-request-id').sort()),
    body: r.raw.toString('utf8').replaceAll(id, 'ID').replaceAll(String(r.headers['x-bce-request-id']), 'REQUEST-ID'),
  });
  assert.deepEqual(norm(theirs, real), norm(none, missing), `${what}: Bob can tell Alice's ${real} from a missing id`);
  return theirs;
}

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'snapferry-isolation-'));
  const config = join(dir, 'config.json');
  await writeFile(config, JSON.stringify({ accounts: [ALICE, BOB], gcGraceSeconds: 0 }), { mode: 0o600 });
  server = await spawnServer({
    regions: ['bj', 'hkg'],
    dataDir: join(dir, 'data'),
    extraArgs: ['--config', config, '--nbd-tls', 'require'],
    env: { SNAPFERRY_LOG_LEVEL: 'debug', SNAPFERRY_ACCESS_KEY_ID: DEFAULT.accessKeyId, SNAPFERRY_SECRET_ACCESS_KEY: DEFAULT.secretAccessKey },
  });
  regionSecret = JSON.parse(await readFile(join(dir, 'data', 'credentials.json'), 'utf8')).regionSecret;

  // Alice: a disk with data, a snapshot of it, its copy in hkg, a disk made with a clientToken.
  aliceVolume = (await asAlice('POST', '/v2/volume', { cdsSizeInGB: 1, name: 'shared-name' })).json.volumeIds[0];
  await waitStatus('bj', 'volume', aliceVolume, alice);
  assert.equal((await asAlice('PUT', `/v2/volume/${aliceVolume}/data?offset=0`, aliceData, { 'content-type': 'application/octet-stream', 'x-bce-content-sha256': createHash('sha256').update(aliceData).digest('hex') })).status, 200);
  aliceSnapshot = (await asAlice('POST', '/v2/snapshot', { volumeId: aliceVolume, snapshotName: 'alices' })).json.snapshotId;
  await waitStatus('bj', 'snapshot', aliceSnapshot, alice);
  const copy = await asAlice('PUT', `/v2/snapshot/remote_copy/${aliceSnapshot}`, { destRegionInfos: [{ destRegion: 'hkg' }] });
  assert.equal(copy.status, 200, copy.raw.toString());
  aliceCopy = copy.json.result[0].snapshotId;
  await waitStatus('hkg', 'snapshot', aliceCopy, alice);
  assert.equal((await asAlice('POST', '/v2/volume?clientToken=shared-token-1', { cdsSizeInGB: 2 })).status, 200);
  // Bob's come after hers: a marker or filter that found her rows would list his.
  bobVolume = (await asBob('POST', '/v2/volume', { cdsSizeInGB: 1, name: 'shared-name' })).json.volumeIds[0];
  await waitStatus('bj', 'volume', bobVolume, bob);
  bobSnapshot = (await asBob('POST', '/v2/snapshot', { volumeId: bobVolume, snapshotName: 'bobs' })).json.snapshotId;
  await waitStatus('bj', 'snapshot', bobSnapshot, bob);
});

after(async () => {
  await killAllChildren();
  await server?.dispose();
  if (dir) await rm(dir, { recursive: true, force: true });
});

test("Bob sees nothing of Alice's: detail, every list, every filter, her ids as markers, paging one by one; in both regions", async () => {
  await sameAsMissing('GET volume', (id) => asBob('GET', `/v2/volume/${id}`), aliceVolume, NO_VOLUME);
  await sameAsMissing('GET snapshot', (id) => asBob('GET', `/v2/snapshot/${id}`), aliceSnapshot, NO_SNAPSHOT);
  await sameAsMissing('GET her copy in hkg', (id) => asBob('GET', `/v2/snapshot/${id}`, undefined, undefined, 'hkg'), aliceCopy, NO_SNAPSHOT);
  const ids = async (path: string, region: 'bj' | 'hkg' = 'bj'): Promise<string[]> => {
    const r = await asBob('GET', path, undefined, undefined, region);
    assert.equal(r.status, 200, `${path}: ${r.raw}`);
    return (r.json.volumes ?? r.json.snapshots).map((x: any) => x.id);
  };
  assert.deepEqual(await ids('/v2/volume'), [bobVolume]);
  assert.deepEqual(await ids('/v2/volume?name=shared-name'), [bobVolume]);
  assert.deepEqual(await ids('/v2/volume?zoneName=cn-bj-a'), [bobVolume]);
  assert.deepEqual(await ids(`/v2/volume?volumeIds=${aliceVolume}`), []);
  assert.deepEqual(await ids(`/v2/volume?volumeIds=${aliceVolume},${bobVolume}`), [bobVolume]);
  assert.deepEqual(await ids('/v2/snapshot'), [bobSnapshot]);
  assert.deepEqual(await ids(`/v2/snapshot?volumeId=${aliceVolume}`), []);
  assert.deepEqual(await ids('/v2/snapshot', 'hkg'), []);
  assert.deepEqual(await ids('/v2/volume', 'hkg'), []);
  // Her ids as markers: the page of an unknown marker, byte for byte.
  for (const [path, real, missing] of [['/v2/volume', aliceVolume, NO_VOLUME], ['/v2/snapshot', aliceSnapshot, NO_SNAPSHOT]] as const) {
    for (const maxKeys of ['1', '1000']) {
      const theirs = await asBob('GET', `${path}?marker=${real}&maxKeys=${maxKeys}`);
      const none = await asBob('GET', `${path}?marker=${missing}&maxKeys=${maxKeys}`);
      assert.equal(theirs.status, none.status);
      assert.equal(theirs.raw.toString().replaceAll(real, 'ID'), none.raw.toString().replaceAll(missing, 'ID'), `${path} marker ${real}`);
    }
  }
  // Paging his lists one by one walks exactly his own items.
  for (const [path, key, want] of [['/v2/volume', 'volumes', [bobVolume]], ['/v2/snapshot', 'snapshots', [bobSnapshot]]] as const) {
    const seen: string[] = [];
    let marker = '';
    for (let page = 0; page < 10; page++) {
      const r = await asBob('GET', `${path}?maxKeys=1${marker ? `&marker=${marker}` : ''}`);
      seen.push(...r.json[key].map((x: any) => x.id));
      if (!r.json.isTruncated) break;
      marker = r.json.nextMarker;
    }
    assert.deepEqual(seen, want);
  }
  // The official SDK gets the same.
  const sdk = sdkClient(server.urls.bj!, BOB.accessKeyId, BOB.secretAccessKey);
  assert.deepEqual((await send(sdk, 'GET', '/v2/volume')).volumes.map((v: any) => v.id), [bobVolume]);
  assert.deepEqual(await sdkError(sdk, 'GET', `/v2/volume/${aliceVolume}`), { status: 404, code: 'NoSuchObject' });
  assert.deepEqual(await sdkError(sdk, 'GET', `/v2/snapshot/${aliceSnapshot}`), { status: 404, code: 'NoSuchObject' });
});

test("Bob cannot copy, restore from, delete, resize, roll back, modify, snapshot, write or read Alice's disks and snapshots: every answer is a missing id's", async () => {
  const json = { 'content-type': 'application/json; charset=utf-8' };
  const octets = { 'content-type': 'application/octet-stream' };
  const v = (id: string) => `/v2/volume/${id}`;
  await sameAsMissing('DELETE volume', (id) => asBob('DELETE', v(id)), aliceVolume, NO_VOLUME);
  await sameAsMissing('resize', (id) => asBob('PUT', `${v(id)}?resize`, { newCdsSizeInGB: 5 }, json), aliceVolume, NO_VOLUME);
  await sameAsMissing('resize with a clientToken', (id) => asBob('PUT', `${v(id)}?resize&clientToken=t-${id}`, { newCdsSizeInGB: 5 }, json), aliceVolume, NO_VOLUME);
  await sameAsMissing('rollback of her disk to his snapshot', (id) => asBob('PUT', `${v(id)}?rollback`, { snapshotId: bobSnapshot }, json), aliceVolume, NO_VOLUME);
  await sameAsMissing('rollback of his disk to her snapshot', (id) => asBob('PUT', `${v(bobVolume)}?rollback`, { snapshotId: id }, json), aliceSnapshot, NO_SNAPSHOT);
  await sameAsMissing('read data', (id) => asBob('GET', `${v(id)}/data`, undefined, { range: 'bytes=0-4095' }), aliceVolume, NO_VOLUME);
  await sameAsMissing('read the whole disk', (id) => asBob('GET', `${v(id)}/data`), aliceVolume, NO_VOLUME);
  await sameAsMissing('extents', (id) => asBob('GET', `${v(id)}/extents`), aliceVolume, NO_VOLUME);
  await sameAsMissing('write data', (id) => asBob('PUT', `${v(id)}/data?offset=0`, Buffer.alloc(4096, 0xbb), octets), aliceVolume, NO_VOLUME);
  await sameAsMissing('write data with a digest', (id) => asBob('PUT', `${v(id)}/data?offset=0`, Buffer.alloc(4096, 0xbb), { ...octets, 'x-bce-content-sha256': createHash('sha256').update(Buffer.alloc(4096, 0xbb)).digest('hex') }), aliceVolume, NO_VOLUME);
  await sameAsMissing('zero data', (id) => asBob('PUT', `${v(id)}/data?offset=0&zeroLength=1048576`), aliceVolume, NO_VOLUME);
  await sameAsMissing('snapshot of her disk', (id) => asBob('POST', '/v2/snapshot', { volumeId: id, snapshotName: 'stolen' }, json), aliceVolume, NO_VOLUME);
  const s = (id: string) => `/v2/snapshot/${id}`;
  await sameAsMissing('DELETE snapshot', (id) => asBob('DELETE', s(id)), aliceSnapshot, NO_SNAPSHOT);
  await sameAsMissing('modify snapshot', (id) => asBob('PUT', `${s(id)}?modifyAttribute`, { snapshotName: 'renamed' }, json), aliceSnapshot, NO_SNAPSHOT);
  await sameAsMissing('restore: a disk from her snapshot', (id) => asBob('POST', '/v2/volume', { snapshotId: id }, json), aliceSnapshot, NO_SNAPSHOT);
  await sameAsMissing('restore: a disk from her copy in hkg', (id) => asBob('POST', '/v2/volume', { snapshotId: id }, json, 'hkg'), aliceCopy, NO_SNAPSHOT);
  await sameAsMissing('DELETE her copy in hkg', (id) => asBob('DELETE', s(id), undefined, undefined, 'hkg'), aliceCopy, NO_SNAPSHOT);
  await sameAsMissing('copy her snapshot (PUT)', (id) => asBob('PUT', `/v2/snapshot/remote_copy/${id}`, { destRegionInfos: [{ destRegion: 'hkg' }] }, json), aliceSnapshot, NO_SNAPSHOT);
  await sameAsMissing('copy her snapshot (POST, clientToken)', (id) => asBob('POST', `/v2/snapshot/remote_copy/${id}?clientToken=c-${id}`, { destRegionInfos: [{ destRegion: 'hkg' }] }, json), aliceSnapshot, NO_SNAPSHOT);
  await sameAsMissing('copy her copy back', (id) => asBob('PUT', `/v2/snapshot/remote_copy/${id}`, { destRegionInfos: [{ destRegion: 'bj' }] }, json, 'hkg'), aliceCopy, NO_SNAPSHOT);
  await sameAsMissing('copy status', (id) => asBob('GET', `/v2/snapshot/remote_copy/${id}`), aliceSnapshot, NO_SNAPSHOT);
  // The official SDK, the same.
  const sdk = sdkClient(server.urls.bj!, BOB.accessKeyId, BOB.secretAccessKey);
  assert.deepEqual(await sdkError(sdk, 'DELETE', `/v2/volume/${aliceVolume}`), { status: 404, code: 'NoSuchObject' });
  assert.deepEqual(await sdkError(sdk, 'POST', '/v2/volume', { body: { snapshotId: aliceSnapshot } }), { status: 404, code: 'NoSuchObject' });
  assert.deepEqual(await sdkError(sdk, 'PUT', `/v2/snapshot/remote_copy/${aliceSnapshot}`, { body: { destRegionInfos: [{ destRegion: 'hkg' }] } }), { status: 404, code: 'NoSuchObject' });
});

test("a clientToken is the caller's own: Bob reusing Alice's token gets his own new disk, never hers nor a mismatch", async () => {
  const aliceFirst = (await asAlice('GET', '/v2/volume')).json.volumes.map((x: any) => x.id);
  const same = await asBob('POST', '/v2/volume?clientToken=shared-token-1', { cdsSizeInGB: 2 });
  const other = await asBob('POST', '/v2/volume?clientToken=shared-token-1', { cdsSizeInGB: 2 });
  assert.equal(same.status, 200);
  assert.deepEqual(other.json.volumeIds, same.json.volumeIds, 'his token, his idempotence');
  assert.ok(!aliceFirst.includes(same.json.volumeIds[0]), 'not her disk');
  const different = await asBob('POST', '/v2/volume?clientToken=shared-token-2', { cdsSizeInGB: 3 });
  assert.equal(different.status, 200, 'a token only Alice used before is free for Bob');
  await waitStatus('bj', 'volume', same.json.volumeIds[0], bob);
  assert.equal((await asBob('DELETE', `/v2/volume/${same.json.volumeIds[0]}`)).status, 200);
  await waitStatus('bj', 'volume', different.json.volumeIds[0], bob);
  assert.equal((await asBob('DELETE', `/v2/volume/${different.json.volumeIds[0]}`)).status, 200);
});

test("NBD over TLS-PSK with Bob's own key (nbd-psk --output, nbdinfo, nbdcopy): only his disks are listed and opened; Alice's answers like a missing disk; the regions' key opens nothing", async () => {
  const pskFile = async (who: { accessKeyId: string; secretAccessKey: string }, name: string): Promise<string> => {
    const file = join(dir, name);
    const r = await runCli(['nbd-psk', '--output', file], { SNAPFERRY_ACCESS_KEY_ID: who.accessKeyId, SNAPFERRY_SECRET_ACCESS_KEY: who.secretAccessKey });
    assert.equal(r.code, 0, r.stderr);
    return file;
  };
  const bobPsk = await pskFile(BOB, 'bob.psk');
  const uri = (identity: string, file: string, exportName: string) => `nbds://${identity}@127.0.0.1:${server.nbdPort}/${exportName}?tls-psk-file=${file}`;
  const listed = await runTool('nbdinfo', ['--list', '--json', uri(BOB.accessKeyId, bobPsk, '')]);
  assert.equal(listed.code, 0, listed.stderr);
  assert.deepEqual(JSON.parse(listed.stdout).exports.map((e: any) => e['export-name']), [bobVolume]);
  const foreign = await runTool('nbdinfo', [uri(BOB.accessKeyId, bobPsk, aliceVolume)]);
  const missing = await runTool('nbdinfo', [uri(BOB.accessKeyId, bobPsk, NO_VOLUME)]);
  assert.notEqual(foreign.code, 0);
  assert.deepEqual([foreign.code, foreign.stderr.replaceAll(aliceVolume, 'ID')], [missing.code, missing.stderr.replaceAll(NO_VOLUME, 'ID')]);
  // nbdcopy cannot write her disk...
  const junk = join(dir, 'junk.raw');
  await writeFile(junk, Buffer.alloc(1 << 20, 0xee));
  const write = await runTool('nbdcopy', [junk, uri(BOB.accessKeyId, bobPsk, aliceVolume)]);
  assert.notEqual(write.code, 0);
  // ...and writes his own (the key is right).
  const mine = await runTool('nbdcopy', [junk, uri(BOB.accessKeyId, bobPsk, bobVolume)]);
  assert.equal(mine.code, 0, mine.stderr);
  // Node's TLS client as Bob: INFO and GO of her disk get a missing disk's reply.
  const bobSession = await (await (async () => {
    const c = await RawNbdClient.connect(server.nbdPort);
    await c.start();
    return c;
  })()).startTls(BOB.accessKeyId, nbdPskKey(BOB.secretAccessKey));
  for (const option of [C.NBD_OPT_INFO, C.NBD_OPT_GO]) {
    const ask = async (name: string) => {
      bobSession.sendOption(option, RawNbdClient.goData(name, [C.NBD_INFO_NAME, C.NBD_INFO_DESCRIPTION]));
      const last = (await bobSession.readOptionReplies()).at(-1)!;
      return { type: last.type >>> 0, message: last.data.toString('utf8') };
    };
    const a = await ask(aliceVolume);
    const m = await ask(NO_VOLUME);
    assert.equal(a.type, C.NBD_REP_ERR_UNKNOWN >>> 0);
    assert.deepEqual({ ...a, message: a.message.replaceAll(aliceVolume, 'ID') }, { ...m, message: m.message.replaceAll(NO_VOLUME, 'ID') });
  }
  bobSession.destroy();
  // The regions' key as a PSK identity: refused like an unknown identity (the TLS handshake fails).
  const regionPsk = join(dir, 'region.psk');
  await writeFile(regionPsk, `snapferry-region-hkg:${nbdPskKey(regionSecret).toString('hex')}\n`, { mode: 0o600 });
  const asRegion = await runTool('nbdinfo', ['--list', uri('snapferry-region-hkg', regionPsk, '')]);
  const nobodyPsk = join(dir, 'nobody.psk');
  await writeFile(nobodyPsk, `nobody-ak-000000000001:${randomBytes(32).toString('hex')}\n`, { mode: 0o600 });
  const asNobody = await runTool('nbdinfo', ['--list', uri('nobody-ak-000000000001', nobodyPsk, '')]);
  assert.notEqual(asRegion.code, 0);
  assert.match(asRegion.stderr, /TLS|gnutls/i);
  assert.equal(asRegion.code, asNobody.code);
  // Plaintext is refused outright (require).
  assert.notEqual((await runTool('nbdinfo', [`nbd://127.0.0.1:${server.nbdPort}/${aliceVolume}`])).code, 0);
  // Alice's bytes are hers.
  const back = await asAlice('GET', `/v2/volume/${aliceVolume}/data`, undefined, { range: `bytes=0-${aliceData.length - 1}` });
  assert.ok(back.raw.equals(aliceData));
});

test('tenant keys never open internal endpoints (replication, admin gc/scrub/check); the regions\' key never opens tenant routes', async () => {
  const internal: Array<[string, string, unknown]> = [
    ['PUT', `/internal/v1/snapshots/s-fz000001`, { accountId: 'alice', name: 'x', desc: '', sizeInGB: 1, storageType: 'hp1', sourceRegion: 'bj', sourceSnapshotId: aliceSnapshot }],
    ['POST', `/internal/v1/snapshots/${aliceCopy}/manifest`, { manifestId: '0'.repeat(64), size: 100, parts: ['0'.repeat(64)] }],
    ['PUT', `/internal/v1/snapshots/${aliceCopy}/manifest/parts/${'0'.repeat(64)}`, Buffer.alloc(64)],
    ['POST', `/internal/v1/snapshots/${aliceCopy}/chunks/missing`, { ids: ['0'.repeat(64)] }],
    ['PUT', `/internal/v1/snapshots/${aliceCopy}/chunks/${createHash('sha256').update(Buffer.alloc(4096, 1)).digest('hex')}`, Buffer.alloc(4096, 1)],
    ['PUT', `/internal/v1/snapshots/${aliceCopy}/chunks`, Buffer.alloc(4096, 1)],
    ['PUT', `/internal/v1/snapshots/${aliceCopy}/progress`, { progress: 50 }],
    ['POST', `/internal/v1/snapshots/${aliceCopy}/commit`, undefined],
    ['POST', `/internal/v1/snapshots/${aliceCopy}/fail`, { reason: 'bob says so' }],
    ['POST', '/internal/v1/admin/gc', undefined],
    ['POST', '/internal/v1/admin/scrub', undefined],
    ['POST', '/internal/v1/admin/check', undefined],
  ];
  for (const region of ['bj', 'hkg'] as const) {
    for (const keys of [alice, bob, { ak: DEFAULT.accessKeyId, sk: DEFAULT.secretAccessKey }]) {
      for (const [method, path, body] of internal) {
        const r = await callAs(keys, region, method, path, body);
        assert.deepEqual([r.status, r.json?.code], [403, 'InvalidAccessKeyId'], `${keys.ak} ${method} ${path} in ${region}: ${r.raw}`);
      }
    }
  }
  // A tenant's access key id with the regions' secret, or the region key id with a tenant's secret: no.
  const mixed = await callAs({ ak: 'snapferry-region-hkg', sk: ALICE.secretAccessKey }, 'bj', 'POST', '/internal/v1/admin/gc');
  assert.deepEqual([mixed.status, mixed.json?.code], [400, 'SignatureDoesNotMatch']);
  // The admin CLI with a tenant's secret as the region secret.
  const cli = await runCli(['gc', '--endpoint', server.urls.bj!], { SNAPFERRY_REGION_SECRET: ALICE.secretAccessKey });
  assert.notEqual(cli.code, 0);
  // Nothing of hers changed through those calls: her copy is still Available in hkg.
  assert.equal((await asAlice('GET', `/v2/snapshot/${aliceCopy}`, undefined, undefined, 'hkg')).json.snapshot.status, 'Available');
  // The regions' key on tenant routes, in both regions and with every region name.
  for (const region of ['bj', 'hkg'] as const) {
    for (const name of ['bj', 'hkg']) {
      const regionKeys = { ak: `snapferry-region-${name}`, sk: regionSecret };
      for (const [method, path, body] of [['GET', '/v2/volume'], ['GET', '/v2/snapshot'], ['POST', '/v2/volume', { cdsSizeInGB: 1 }], ['GET', `/v2/volume/${aliceVolume}/data`], ['DELETE', `/v2/snapshot/${aliceSnapshot}`], ['PUT', `/v2/snapshot/remote_copy/${aliceSnapshot}`, { destRegionInfos: [{ destRegion: 'hkg' }] }]] as Array<[string, string, unknown?]>) {
        const r = await callAs(regionKeys, region, method, path, body);
        assert.deepEqual([r.status, r.json?.code], [403, 'InvalidAccessKeyId'], `region key ${method} ${path} in ${region}`);
      }
    }
  }
  // And the right key does open the admin calls (the test above is not vacuous).
  assert.equal((await callAs({ ak: 'snapferry-region-bj', sk: regionSecret }, 'bj', 'POST', '/internal/v1/admin/check')).status, 200);
});

test('key files are 0600: credentials.json, and the PSK file of `snapferry nbd-psk --output` whatever the umask, also over an existing 0644 file', async () => {
  assert.equal((await stat(join(dir, 'data', 'credentials.json'))).mode & 0o777, 0o600);
  const fresh = join(dir, 'umask0.psk');
  const existing = join(dir, 'existing.psk');
  await writeFile(existing, 'old\n', { mode: 0o644 });
  const bin = new URL('../bin/snapferry.js', import.meta.url).pathname;
  for (const file of [fresh, existing]) {
    const r = await runTool('sh', ['-c', `umask 000; exec "${process.execPath}" "${bin}" nbd-psk --output "${file}"`], 30_000, { SNAPFERRY_ACCESS_KEY_ID: ALICE.accessKeyId, SNAPFERRY_SECRET_ACCESS_KEY: ALICE.secretAccessKey });
    assert.equal(r.code, 0, r.stderr);
    assert.equal((await stat(file)).mode & 0o777, 0o600, file);
    assert.equal(await readFile(file, 'utf8'), `${ALICE.accessKeyId}:${nbdPskKey(ALICE.secretAccessKey).toString('hex')}\n`);
  }
});

test('no secret in any log line: after the scenario (creates, writes, snapshots, a copy, NBD, failures, bad signatures), at debug level', async () => {
  // More failures, on purpose: a wrong secret, an expired and a tampered signature, a body swapped
  // after signing, a wrong metrics token, the right one, NBD with a wrong key, a request cut short.
  assert.equal((await callAs({ ak: ALICE.accessKeyId, sk: 'not-her-secret' }, 'bj', 'GET', '/v2/volume')).json.code, 'SignatureDoesNotMatch');
  const expired = signedRequest({ method: 'GET', url: '/v2/volume', keys: alice, host: new URL(server.urls.bj!).host, at: Date.now() - 3_600_000 });
  signatures.push(expired.headers.authorization!.split('/').at(-1)!);
  assert.equal((await request(`${server.urls.bj}/v2/volume`, { headers: expired.headers })).statusCode, 400);
  const swapped = signedRequest({ method: 'PUT', url: `/v2/volume/${aliceVolume}/data?offset=0`, body: Buffer.alloc(4096, 1), keys: alice, host: new URL(server.urls.bj!).host, contentSha256: true, extraHeaders: { 'content-type': 'application/octet-stream' } });
  signatures.push(swapped.headers.authorization!.split('/').at(-1)!);
  const swap = await request(`${server.urls.bj}/v2/volume/${aliceVolume}/data?offset=0`, { method: 'PUT', headers: swapped.headers, body: Buffer.alloc(4096, 2) });
  assert.equal(swap.statusCode, 400);
  await swap.body.dump();
  const tampered = signedRequest({ method: 'GET', url: '/v2/snapshot', keys: bob, host: new URL(server.urls.bj!).host });
  const bad = tampered.headers.authorization!.replace(/.$/, (c) => (c === '0' ? '1' : '0'));
  assert.equal((await request(`${server.urls.bj}/v2/snapshot`, { headers: { ...tampered.headers, authorization: bad } })).statusCode, 400);
  assert.equal((await request(`${server.urls.bj}/metrics`, { headers: { authorization: 'Bearer wrong-token-0123456789' } })).statusCode, 401);
  assert.equal((await request(`${server.urls.bj}/metrics`, { headers: { authorization: `Bearer ${TEST_METRICS_TOKEN}` } })).statusCode, 200);
  const wrongPsk = join(dir, 'wrong.psk');
  await writeFile(wrongPsk, `${ALICE.accessKeyId}:${randomBytes(32).toString('hex')}\n`, { mode: 0o600 });
  assert.notEqual((await runTool('nbdinfo', [`nbds://${ALICE.accessKeyId}@127.0.0.1:${server.nbdPort}/${aliceVolume}?tls-psk-file=${wrongPsk}`])).code, 0);
  const alicePsk = join(dir, 'alice.psk');
  assert.equal((await runCli(['nbd-psk', '--output', alicePsk], { SNAPFERRY_ACCESS_KEY_ID: ALICE.accessKeyId, SNAPFERRY_SECRET_ACCESS_KEY: ALICE.secretAccessKey })).code, 0);
  const info = await runTool('nbdinfo', ['--json', `nbds://${ALICE.accessKeyId}@127.0.0.1:${server.nbdPort}/${aliceVolume}?tls-psk-file=${alicePsk}`]);
  assert.equal(info.code, 0, info.stderr);
  await waitStatus('bj', 'volume', aliceVolume, alice);
  // Requests that end up in the debug log: a signed one that is not valid HTTP after its
  // Authorization header, and a signed write cut off mid-body.
  const port = Number(new URL(server.urls.bj!).port);
  const broken = signedRequest({ method: 'GET', url: '/v2/volume', keys: alice, host: `127.0.0.1:${port}` });
  signatures.push(broken.headers.authorization!.split('/').at(-1)!);
  await rawExchange(port, [`GET /v2/volume HTTP/1.1\r\n${Object.entries(broken.headers).map(([k, v]) => `${k}: ${v}`).join('\r\n')}\r\nbad header\r\n\r\n`], { waitMs: 2000 });
  const cut = signedRequest({ method: 'PUT', url: `/v2/volume/${aliceVolume}/data?offset=0`, body: Buffer.alloc(1 << 20, 3), keys: alice, host: `127.0.0.1:${port}`, extraHeaders: { 'content-type': 'application/octet-stream' } });
  signatures.push(cut.headers.authorization!.split('/').at(-1)!);
  const socket = await openSocket(port);
  socket.write(`PUT /v2/volume/${aliceVolume}/data?offset=0 HTTP/1.1\r\n${Object.entries(cut.headers).map(([k, v]) => `${k}: ${v}`).join('\r\n')}\r\n\r\n`);
  socket.write(Buffer.alloc(4096, 3));
  await new Promise((r) => setTimeout(r, 200));
  socket.destroy();
  await until(async () => server.stderr().includes('request aborted by the client'), 10_000, 'the abort logged');
  await waitStatus('bj', 'volume', aliceVolume, alice);
  // A graceful stop logs the shutdown too.
  assert.equal(await server.stop(), 0);

  const out = server.stdout();
  const err = server.stderr();
  const everything = `${out}\n${err}`;
  const stored = JSON.parse(await readFile(join(dir, 'data', 'credentials.json'), 'utf8'));
  const secrets: Record<string, string> = {
    'Alice\'s secret': ALICE.secretAccessKey,
    'Bob\'s secret': BOB.secretAccessKey,
    'the default account\'s secret (env)': DEFAULT.secretAccessKey,
    'the generated default secret in credentials.json': stored.defaultAccount.secretAccessKey,
    'the region secret': regionSecret,
    'the metrics token': TEST_METRICS_TOKEN,
    'the metrics token in credentials.json': stored.metricsToken,
  };
  for (const [who, s] of [['Alice', ALICE.secretAccessKey], ['Bob', BOB.secretAccessKey], ['default', DEFAULT.secretAccessKey], ['region', regionSecret]]) {
    secrets[`${who}'s NBD PSK (hex)`] = nbdPskKey(s!).toString('hex');
    secrets[`${who}'s NBD PSK (HEX)`] = nbdPskKey(s!).toString('hex').toUpperCase();
  }
  for (const [what, value] of Object.entries(secrets)) {
    assert.ok(value.length >= 16, what);
    assert.ok(!everything.includes(value), `${what} appears in the server's output:\n${everything.split('\n').filter((l) => l.includes(value)).slice(0, 3).join('\n')}`);
  }
  for (const sig of signatures) assert.ok(!everything.includes(sig), `a request signature (replayable until it expires) appears in the server's output: ${sig}`);
  // The scan means something: debug lines were written, and the failures above were logged.
  const lines = err.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l));
  assert.ok(lines.length > 50, `only ${lines.length} log lines`);
  assert.ok(lines.some((l) => l.level === 'debug'), 'no debug line: SNAPFERRY_LOG_LEVEL=debug did not take');
  for (const msg of ['nbd tls handshake failed', 'incoming copy available', 'client error', 'request aborted by the client']) assert.ok(lines.some((l) => l.msg === msg), `"${msg}" was not logged`);
  assert.deepEqual(lines.filter((l) => l.level === 'error'), [], 'errors logged');
});
