/**
 * End to end with the official JavaScript SDK (@baiducloud/sdk): `snapferry serve` runs as a real
 * process with three regions; BceBaseClient.sendRequest signs and sends each BCC call over HTTP.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnServer, type SpawnedServer } from './helpers/spawned-server.ts';
import { sdkClient, send, sendError, until, type SdkClient } from './helpers/sdk.ts';

const AK = 'e2e-access-key-0123456789';
const SK = 'e2e-secret-key-abcdefghij';
const OTHER = { accountId: 'other', accessKeyId: 'other-ak-00000000000000', secretAccessKey: 'other-sk' };

let server: SpawnedServer;

before(async () => {
  const { writeFile, mkdtemp } = await import('node:fs/promises');
  const { tmpdir } = await import('node:os');
  const { join } = await import('node:path');
  const configFile = join(await mkdtemp(join(tmpdir(), 'snapferry-cfg-')), 'config.json');
  await writeFile(configFile, JSON.stringify({ accounts: [OTHER] }));
  server = await spawnServer({ env: { SNAPFERRY_ACCESS_KEY_ID: AK, SNAPFERRY_SECRET_ACCESS_KEY: SK }, extraArgs: ['--config', configFile] });
});
after(async () => server?.dispose());

const client = (region: string, ak = AK, sk = SK): SdkClient => sdkClient(server.urls[region]!, ak, sk);

test('the server prints one ready line per region and answers healthz on each port', async () => {
  for (const r of ['bj', 'gz', 'hkg']) {
    assert.match(server.stdout(), new RegExp(`region ${r} ready on http://127\\.0\\.0\\.1:\\d+`));
    const res = await fetch(`${server.urls[r]}/healthz`);
    assert.equal(res.status, 200);
  }
});

test('disks and snapshots through the official SDK: create, detail, list, delete', async () => {
  const bj = client('bj');
  const created = await send(bj, 'POST', '/v2/volume', { body: { cdsSizeInGB: 1, name: 'sdk-disk', purchaseCount: 1 }, params: { clientToken: 'sdk-create-1' } });
  const [volumeId] = created.volumeIds;
  const volume = await until(async () => {
    const v = (await send(bj, 'GET', `/v2/volume/${volumeId}`)).volume;
    return v.status === 'Available' ? v : null;
  });
  assert.equal(volume.name, 'sdk-disk');
  assert.equal(volume.regionId, 'bj');
  const listed = await send(bj, 'GET', '/v2/volume', { params: { maxKeys: '10' } });
  assert.ok(listed.volumes.some((v: any) => v.id === volumeId));

  const { snapshotId } = await send(bj, 'POST', '/v2/snapshot', { body: { volumeId, snapshotName: 'sdk-snap', desc: 'via sdk' } });
  const snap = await until(async () => {
    const s = (await send(bj, 'GET', `/v2/snapshot/${snapshotId}`)).snapshot;
    return s.status === 'Available' ? s : null;
  });
  assert.equal(snap.volumeId, volumeId);
  const snaps = await send(bj, 'GET', '/v2/snapshot', { params: { volumeId } });
  assert.deepEqual(snaps.snapshots.map((s: any) => s.id), [snapshotId]);

  // The other regions are separate: the disk does not exist in gz.
  assert.deepEqual(await sendError(client('gz'), 'GET', `/v2/volume/${volumeId}`), { status: 404, code: 'NoSuchObject' });

  await send(bj, 'DELETE', `/v2/snapshot/${snapshotId}`);
  await send(bj, 'DELETE', `/v2/volume/${volumeId}`);
  assert.deepEqual(await sendError(bj, 'GET', `/v2/snapshot/${snapshotId}`), { status: 404, code: 'NoSuchObject' });
  assert.deepEqual(await sendError(bj, 'GET', `/v2/volume/${volumeId}`), { status: 404, code: 'NoSuchObject' });
});

test('wrong secret, unsigned, expired, another account, reused clientToken: each answers its BCE error', async () => {
  const bj = client('bj');
  assert.deepEqual(await sendError(client('bj', AK, 'not-the-secret'), 'GET', '/v2/volume'), { status: 400, code: 'SignatureDoesNotMatch' });

  const unsigned = await fetch(`${server.urls.bj}/v2/volume`);
  assert.equal(unsigned.status, 403);
  const body = await unsigned.json();
  assert.equal(body.code, 'AccessDenied');
  assert.equal(body.requestId, unsigned.headers.get('x-bce-request-id'));

  // Expired: the SDK signs with its own clock; shift it an hour back (timeOffset is the SDK's own knob).
  const expired = client('bj');
  expired.timeOffset = -3600_000;
  assert.deepEqual(await sendError(expired, 'GET', '/v2/volume'), { status: 400, code: 'RequestExpired' });

  const { volumeIds } = await send(bj, 'POST', '/v2/volume', { body: { cdsSizeInGB: 1 } });
  await until(async () => (await send(bj, 'GET', `/v2/volume/${volumeIds[0]}`)).volume.status === 'Available');
  const { snapshotId } = await send(bj, 'POST', '/v2/snapshot', { body: { volumeId: volumeIds[0], snapshotName: 'mine' } });
  const other = client('bj', OTHER.accessKeyId, OTHER.secretAccessKey);
  assert.deepEqual(await sendError(other, 'GET', `/v2/snapshot/${snapshotId}`), { status: 404, code: 'NoSuchObject' });
  assert.deepEqual(await sendError(other, 'DELETE', `/v2/snapshot/${snapshotId}`), { status: 404, code: 'NoSuchObject' });

  const token = 'reused-token-1';
  const first = await send(bj, 'POST', '/v2/snapshot', { body: { volumeId: volumeIds[0], snapshotName: 'a' }, params: { clientToken: token } });
  const again = await send(bj, 'POST', '/v2/snapshot', { body: { volumeId: volumeIds[0], snapshotName: 'a' }, params: { clientToken: token } });
  assert.equal(again.snapshotId, first.snapshotId);
  assert.deepEqual(
    await sendError(bj, 'POST', '/v2/snapshot', { body: { volumeId: volumeIds[0], snapshotName: 'b' }, params: { clientToken: token } }),
    { status: 403, code: 'IdempotentParameterMismatch' },
  );
});

test('state survives a restart: records and clientTokens are persisted', async () => {
  const bj = client('bj');
  const token = 'survives-restart';
  const { volumeIds } = await send(bj, 'POST', '/v2/volume', { body: { cdsSizeInGB: 1, name: 'persisted' }, params: { clientToken: token } });
  await until(async () => (await send(bj, 'GET', `/v2/volume/${volumeIds[0]}`)).volume.status === 'Available');
  assert.equal(await server.stop(), 0, 'SIGTERM exits 0');
  await server.restart();
  const v = (await send(client('bj'), 'GET', `/v2/volume/${volumeIds[0]}`)).volume;
  assert.equal(v.name, 'persisted');
  const again = await send(client('bj'), 'POST', '/v2/volume', { body: { cdsSizeInGB: 1, name: 'persisted' }, params: { clientToken: token } });
  assert.deepEqual(again.volumeIds, volumeIds);
});
