/**
 * Wire compatibility with Baidu's official Go SDK (bce-sdk-go, services/bcc) and Python SDK
 * (bce-sdk-python, baidubce/services/bcc/bcc_client.py). Neither can run here, so each call is
 * replayed byte for byte as that SDK sends it (test/helpers/sdk-wire.ts: raw socket, the SDK's
 * headers, signed-header set, query encoding, JSON body bytes and auto clientToken) against a real
 * `snapferry serve` with regions bj, gz, hkg. Every answer is checked the way the SDK consumes it:
 * Go decodes into typed structs (a JSON number where the struct has int, a string where it has
 * string; a mismatch fails the call), Python needs `{code, message, requestId}` in every error body.
 *
 * Run: node --import tsx --test test/sdk-wire-compat.test.ts
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { until } from './helpers/sdk.ts';
import { spawnServer, type SpawnedServer } from './helpers/spawned-server.ts';
import {
  GO_CONTENT_TYPE, GO_TYPES, goDecodeErrors, goJson, goSend, goStruct, pyClientToken, pyJsonDumps, pyParse, pySend,
  RawConnection, type Endpoint, type GoType, type WireExchange,
} from './helpers/sdk-wire.ts';

const AK = 'wire-access-key-0123456789';
const SK = 'wire-secret-key-abcdefghij';

let server: SpawnedServer;
before(async () => {
  server = await spawnServer({ regions: ['bj', 'gz', 'hkg'], env: { SNAPFERRY_ACCESS_KEY_ID: AK, SNAPFERRY_SECRET_ACCESS_KEY: SK } });
});
after(async () => server?.dispose());

const ep = (region: string, keys: Partial<Endpoint> = {}): Endpoint => ({ url: server.urls[region]!, ak: AK, sk: SK, ...keys });

// ---------------------------------------------------------------------------------------------
// Checks shared by every call

/** 2xx, the request id header both SDKs read, and our SDK-style signature equal to the project's. */
function accepted(x: WireExchange, what: string): void {
  assert.ok(x.status >= 200 && x.status < 300, `${x.sdk} ${what}: HTTP ${x.status} ${x.text}\n--- request ---\n${x.head}`);
  assert.equal(x.signature, x.projectSignature, `${x.sdk} ${what}: SDK-style signature differs from src/lib/bce-auth.ts`);
  assert.ok(x.headers['x-bce-request-id'], `${x.sdk} ${what}: no x-bce-request-id header`);
}

/** A Go call that ends in resp.ParseJsonBody(&T{}): the body must be a JSON object T decodes without error. */
function goParsed(x: WireExchange, t: GoType, what: string): any {
  accepted(x, what);
  assert.ok(x.json !== undefined && typeof x.json === 'object' && !Array.isArray(x.json), `go ${what}: Go decodes the body, it must be a JSON object (an empty body is io.EOF); got ${JSON.stringify(x.text)}`);
  assert.deepEqual(goDecodeErrors(t, x.json), [], `go ${what}: json.Unmarshal would fail`);
  return x.json;
}

/** A Python call through handler.parse_json: an empty body is fine, otherwise a JSON object. */
function pyParsed(x: WireExchange, what: string): any {
  accepted(x, what);
  if (x.text.trim() === '') return {};
  assert.ok(x.json && typeof x.json === 'object' && !Array.isArray(x.json), `python ${what}: body is not a JSON object: ${x.text}`);
  return pyParse(x.json);
}

/** Fields the flow reads must be present (not null) with the JSON type the SDK model has. */
function present(obj: Record<string, unknown>, spec: Record<string, 'string' | 'number' | 'boolean' | 'array'>, what: string): void {
  for (const [field, type] of Object.entries(spec)) {
    const v = obj[field];
    assert.ok(v !== undefined && v !== null, `${what}: field ${field} missing in ${JSON.stringify(obj)}`);
    if (type === 'array') assert.ok(Array.isArray(v), `${what}: ${field} should be an array`);
    else assert.equal(typeof v, type, `${what}: ${field} should be a JSON ${type}, is ${JSON.stringify(v)}`);
  }
}

/** An error answer as both SDKs parse it: Go json-decodes into BceServiceError; Python indexes d['message'], d['code'], d['requestId']. */
function sdkError(x: WireExchange, status: number, code: string, what: string): void {
  assert.equal(x.status, status, `${x.sdk} ${what}: expected ${status} ${code}, got ${x.status} ${x.text}`);
  assert.ok(x.json && typeof x.json === 'object', `${x.sdk} ${what}: error body is not JSON: ${x.text}`);
  for (const k of ['code', 'message', 'requestId']) assert.equal(typeof x.json[k], 'string', `${x.sdk} ${what}: error body lacks ${k}`);
  assert.equal(x.json.code, code);
  assert.equal(x.json.requestId, x.headers['x-bce-request-id']);
  if (x.sdk === 'go') assert.deepEqual(goDecodeErrors(GO_TYPES.BceServiceError, x.json), []);
}

const VOLUME_FIELDS = { id: 'string', name: 'string', status: 'string', diskSizeInGB: 'number', storageType: 'string', zoneName: 'string', createTime: 'string', snapshotNum: 'string', paymentTiming: 'string', type: 'string', regionId: 'string', attachments: 'array', isSystemVolume: 'boolean', sourceSnapshotId: 'string', desc: 'string' } as const;
const SNAPSHOT_FIELDS = { id: 'string', name: 'string', status: 'string', sizeInGB: 'number', createTime: 'string', progress: 'string', createMethod: 'string', volumeId: 'string', desc: 'string' } as const;
const LIST_FIELDS = { marker: 'string', isTruncated: 'boolean', maxKeys: 'number' } as const;

// ---------------------------------------------------------------------------------------------
// Go SDK calls (bce-sdk-go, services/bcc/client.go -> services/bcc/api/*.go). Request bodies are
// json.Marshal of the args structs in services/bcc/api/model.go: declaration order, zero values of
// non-omitempty fields included. No call generates a clientToken; it is sent only when set.

interface GoCreateArgs {
  name?: string; description?: string; snapshotId?: string; zoneName?: string; purchaseCount?: number;
  cdsSizeInGB?: number; storageType?: string; billing?: Record<string, unknown> | null; clientToken?: string;
}
const goBilling = (paymentTiming: string): Record<string, unknown> =>
  goStruct([['paymentTiming', 'string', paymentTiming, 'omitempty'], ['reservation', 'ptr', undefined, 'omitempty']]);

const go = {
  /** CreateCDSVolume: POST /v2/volume[?clientToken] — services/bcc/api/cds.go */
  createCDSVolume: (e: Endpoint, a: GoCreateArgs) => goSend(e, {
    method: 'POST', path: '/v2/volume', params: a.clientToken ? [['clientToken', a.clientToken]] : [],
    body: goJson(goStruct([
      ['name', 'string', a.name, 'omitempty'], ['description', 'string', a.description, 'omitempty'],
      ['snapshotId', 'string', a.snapshotId, 'omitempty'], ['zoneName', 'string', a.zoneName, 'omitempty'],
      ['purchaseCount', 'int', a.purchaseCount, 'omitempty'], ['cdsSizeInGB', 'int', a.cdsSizeInGB, 'omitempty'],
      ['storageType', 'string', a.storageType, 'omitempty'], ['billing', 'ptr', a.billing ?? null],
      ['encryptKey', 'string', undefined], ['renewTimeUnit', 'string', undefined], ['renewTime', 'int', undefined],
      ['instanceId', 'string', undefined], ['clusterId', 'string', undefined], ['tags', 'slice', undefined],
      ['resGroupId', 'string', undefined, 'omitempty'], ['autoSnapshotPolicy', 'slice', undefined],
      ['chargeType', 'string', undefined], ['cdsExtraIo', 'int', undefined], ['shareSnapshotId', 'string', undefined],
      ['relationTag', 'ptr', undefined], ['enableDeleteProtection', 'bool', undefined],
    ])),
  }),
  /** GetCDSVolumeDetail: GET /v2/volume/{id} — services/bcc/api/cds.go */
  getCDSVolumeDetail: (e: Endpoint, id: string) => goSend(e, { method: 'GET', path: `/v2/volume/${id}` }),
  /** ListCDSVolume: GET /v2/volume, maxKeys=1000 when MaxKeys is 0 — services/bcc/api/cds.go */
  listCDSVolume: (e: Endpoint, a: { marker?: string; maxKeys?: number; zoneName?: string } = {}) => {
    const params: Array<[string, string]> = [];
    if (a.zoneName) params.push(['zoneName', a.zoneName]);
    if (a.marker) params.push(['marker', a.marker]);
    params.push(['maxKeys', String(a.maxKeys || 1000)]);
    return goSend(e, { method: 'GET', path: '/v2/volume', params });
  },
  /** DeleteCDSVolume: DELETE /v2/volume/{id}, response body not read — services/bcc/api/cds.go */
  deleteCDSVolume: (e: Endpoint, id: string) => goSend(e, { method: 'DELETE', path: `/v2/volume/${id}` }),
  /** ResizeCDSVolume: PUT /v2/volume/{id}?resize[&clientToken], decodes ResizeCDSVolumeResult — services/bcc/api/cds.go */
  resizeCDSVolume: (e: Endpoint, id: string, a: { newCdsSizeInGB: number; newVolumeType?: string; clientToken?: string }) => goSend(e, {
    method: 'PUT', path: `/v2/volume/${id}`,
    params: [...(a.clientToken ? [['clientToken', a.clientToken] as [string, string]] : []), ['resize', '']],
    body: goJson(goStruct([['newCdsSizeInGB', 'int', a.newCdsSizeInGB, 'omitempty'], ['newExtraIO', 'ptr', undefined, 'omitempty'], ['newVolumeType', 'string', a.newVolumeType, 'omitempty']])),
  }),
  /** RollbackCDSVolume: PUT /v2/volume/{id}?rollback, response body not read — services/bcc/api/cds.go */
  rollbackCDSVolume: (e: Endpoint, id: string, snapshotId: string) => goSend(e, {
    method: 'PUT', path: `/v2/volume/${id}`, params: [['rollback', '']], body: goJson(goStruct([['snapshotId', 'string', snapshotId]])),
  }),
  /** CreateSnapshot: POST /v2/snapshot[?clientToken] — services/bcc/api/snapshot.go */
  createSnapshot: (e: Endpoint, a: { volumeId: string; snapshotName: string; desc?: string; retentionInDays?: number; clientToken?: string }) => goSend(e, {
    method: 'POST', path: '/v2/snapshot', params: a.clientToken ? [['clientToken', a.clientToken]] : [],
    body: goJson(goStruct([
      ['volumeId', 'string', a.volumeId], ['snapshotName', 'string', a.snapshotName], ['desc', 'string', a.desc, 'omitempty'],
      ['tags', 'slice', undefined], ['retentionInDays', 'int', a.retentionInDays, 'omitempty'],
    ])),
  }),
  /** ListSnapshot: GET /v2/snapshot?[marker&]maxKeys (VolumeId of the args is never sent) — services/bcc/api/snapshot.go */
  listSnapshot: (e: Endpoint, a: { marker?: string; maxKeys?: number } = {}) => goSend(e, {
    method: 'GET', path: '/v2/snapshot', params: [...(a.marker ? [['marker', a.marker] as [string, string]] : []), ['maxKeys', String(a.maxKeys || 1000)]],
  }),
  /** GetSnapshotDetail: GET /v2/snapshot/{id} — services/bcc/api/snapshot.go */
  getSnapshotDetail: (e: Endpoint, id: string) => goSend(e, { method: 'GET', path: `/v2/snapshot/${id}` }),
  /** DeleteSnapshot: DELETE /v2/snapshot/{id} — services/bcc/api/snapshot.go */
  deleteSnapshot: (e: Endpoint, id: string) => goSend(e, { method: 'DELETE', path: `/v2/snapshot/${id}` }),
  /** ModifySnapshotAttribute: PUT /v2/snapshot/{id}?modifyAttribute, response not read — services/bcc/api/cds.go */
  modifySnapshotAttribute: (e: Endpoint, id: string, a: { snapshotName?: string; desc?: string; retentionInDays?: number }) => goSend(e, {
    method: 'PUT', path: `/v2/snapshot/${id}`, params: [['modifyAttribute', '']],
    body: goJson(goStruct([['snapshotName', 'string', a.snapshotName, 'omitempty'], ['desc', 'string', a.desc, 'omitempty'], ['retentionInDays', 'int', a.retentionInDays, 'omitempty']])),
  }),
  /** CreateRemoteCopySnapshot: PUT /v2/snapshot/remote_copy/{id}[?clientToken] — services/bcc/api/snapshot.go */
  createRemoteCopySnapshot: (e: Endpoint, id: string, dest: Array<{ name?: string; destRegion: string }>, clientToken?: string) => goSend(e, {
    method: 'PUT', path: `/v2/snapshot/remote_copy/${id}`, params: clientToken ? [['clientToken', clientToken]] : [],
    body: goJson(goStruct([['destRegionInfos', 'slice', dest.map((d) => goStruct([['name', 'string', d.name], ['destRegion', 'string', d.destRegion]]))]])),
  }),
};

// ---------------------------------------------------------------------------------------------
// Python SDK calls (bce-sdk-python, baidubce/services/bcc/bcc_client.py). Bodies are json.dumps of
// the dicts the functions build, in their insertion order; creates, resize and remote copy put a
// fresh uuid4 clientToken in the query when the caller gives none.

const PY_DEFAULT_BILLING = { paymentTiming: 'Postpaid', reservation: { reservationLength: 1, reservationTimeUnit: 'Month' } };

const py = {
  /** create_volume_with_cds_size(cds_size_in_gb, ...) with its defaults: POST /v2/volume?clientToken=<uuid4> */
  createVolumeWithCdsSize: (e: Endpoint, cdsSizeInGB: number, o: { zoneName?: string; name?: string; description?: string; clientToken?: string } = {}) => {
    const body: Record<string, unknown> = { cdsSizeInGB, billing: PY_DEFAULT_BILLING, purchaseCount: 1, storageType: 'hp1' };
    if (o.zoneName !== undefined) body.zoneName = o.zoneName;
    body.relationTag = false;
    if (o.name !== undefined) body.name = o.name;
    if (o.description !== undefined) body.description = o.description;
    return pySend(e, { method: 'POST', path: '/v2/volume', params: [['clientToken', o.clientToken ?? pyClientToken()]], body: pyJsonDumps(body) });
  },
  /** create_volume_with_snapshot_id(snapshot_id, ...) with its defaults: POST /v2/volume?clientToken=<uuid4> */
  createVolumeWithSnapshotId: (e: Endpoint, snapshotId: string, o: { name?: string; clientToken?: string } = {}) => {
    const body: Record<string, unknown> = { snapshotId, billing: PY_DEFAULT_BILLING, purchaseCount: 1, storageType: 'hp1', relationTag: false };
    if (o.name !== undefined) body.name = o.name;
    return pySend(e, { method: 'POST', path: '/v2/volume', params: [['clientToken', o.clientToken ?? pyClientToken()]], body: pyJsonDumps(body) });
  },
  /** get_volume(volume_id): GET /v2/volume/{id} */
  getVolume: (e: Endpoint, id: string) => pySend(e, { method: 'GET', path: `/v2/volume/${id}` }),
  /** list_volumes(instance_id, zone_name, marker, max_keys, ...): GET /v2/volume, only the given params */
  listVolumes: (e: Endpoint, o: { zoneName?: string; marker?: string; maxKeys?: number } = {}) => {
    const params: Array<[string, string | number]> = [];
    if (o.zoneName !== undefined) params.push(['zoneName', o.zoneName]);
    if (o.marker !== undefined) params.push(['marker', o.marker]);
    if (o.maxKeys !== undefined) params.push(['maxKeys', o.maxKeys]);
    return pySend(e, { method: 'GET', path: '/v2/volume', params });
  },
  /** release_volume(volume_id): DELETE /v2/volume/{id} */
  releaseVolume: (e: Endpoint, id: string) => pySend(e, { method: 'DELETE', path: `/v2/volume/${id}` }),
  /** resize_volume(volume_id, new_cds_size, new_volume_type): PUT /v2/volume/{id}?clientToken=<uuid4>&resize= */
  resizeVolume: (e: Endpoint, id: string, newCdsSize: number, newVolumeType: string | null, clientToken?: string) => {
    const body: Record<string, unknown> = { newCdsSizeInGB: newCdsSize };
    if (newVolumeType !== null) body.newVolumeType = newVolumeType;
    return pySend(e, { method: 'PUT', path: `/v2/volume/${id}`, params: [['resize', null], ['clientToken', clientToken ?? pyClientToken()]], body: pyJsonDumps(body) });
  },
  /** rollback_volume(volume_id, snapshot_id): PUT /v2/volume/{id}?rollback= */
  rollbackVolume: (e: Endpoint, id: string, snapshotId: string) =>
    pySend(e, { method: 'PUT', path: `/v2/volume/${id}`, params: [['rollback', null]], body: pyJsonDumps({ snapshotId }) }),
  /** create_snapshot(volume_id, snapshot_name, desc): POST /v2/snapshot?clientToken=<uuid4> */
  createSnapshot: (e: Endpoint, volumeId: string, snapshotName: string, desc?: string, clientToken?: string) => {
    const body: Record<string, unknown> = { volumeId, snapshotName };
    if (desc !== undefined) body.desc = desc;
    return pySend(e, { method: 'POST', path: '/v2/snapshot', params: [['clientToken', clientToken ?? pyClientToken()]], body: pyJsonDumps(body) });
  },
  /** list_snapshots(marker, max_keys, volume_id): GET /v2/snapshot; params=None when all are None */
  listSnapshots: (e: Endpoint, o: { marker?: string; maxKeys?: number; volumeId?: string } = {}) => {
    const params: Array<[string, string | number]> = [];
    if (o.marker !== undefined) params.push(['marker', o.marker]);
    if (o.maxKeys !== undefined) params.push(['maxKeys', o.maxKeys]);
    if (o.volumeId !== undefined) params.push(['volumeId', o.volumeId]);
    return pySend(e, { method: 'GET', path: '/v2/snapshot', params: params.length ? params : null });
  },
  /** get_snapshot(snapshot_id): GET /v2/snapshot/{id} */
  getSnapshot: (e: Endpoint, id: string) => pySend(e, { method: 'GET', path: `/v2/snapshot/${id}` }),
  /** delete_snapshot(snapshot_id): DELETE /v2/snapshot/{id} */
  deleteSnapshot: (e: Endpoint, id: string) => pySend(e, { method: 'DELETE', path: `/v2/snapshot/${id}` }),
  /** create_remote_copy_snapshot(snapshot_id, [DestRegionInfoModel(destRegion, name)]): PUT /v2/snapshot/remote_copy/{id}?clientToken=<uuid4> */
  createRemoteCopySnapshot: (e: Endpoint, id: string, dest: Array<{ destRegion: string; name: string }>, clientToken?: string) =>
    pySend(e, {
      method: 'PUT', path: `/v2/snapshot/remote_copy/${id}`, params: [['clientToken', clientToken ?? pyClientToken()]],
      body: pyJsonDumps({ destRegionInfos: dest.map((d) => ({ destRegion: d.destRegion, name: d.name })) }),
    }),
};

// ---------------------------------------------------------------------------------------------
// Polling, as a caller of each SDK would do it

async function goWaitVolume(e: Endpoint, id: string, ok: (v: any) => boolean = () => true): Promise<any> {
  return until(async () => {
    const v = goParsed(await go.getCDSVolumeDetail(e, id), GO_TYPES.GetVolumeDetailResult, 'GetCDSVolumeDetail').volume;
    if (v.status === 'Error') throw new Error(`volume ${id} went to Error`);
    return v.status === 'Available' && ok(v) ? v : null;
  }, 120_000, `go: volume ${id} Available`);
}

async function goWaitSnapshot(e: Endpoint, id: string): Promise<any> {
  return until(async () => {
    const s = goParsed(await go.getSnapshotDetail(e, id), GO_TYPES.GetSnapshotDetailResult, 'GetSnapshotDetail').snapshot;
    if (s.status === 'CreatedFailed') throw new Error(`snapshot ${id} failed`);
    return s.status === 'Available' ? s : null;
  }, 300_000, `go: snapshot ${id} Available`);
}

async function pyWaitVolume(e: Endpoint, id: string, ok: (v: any) => boolean = () => true): Promise<any> {
  return until(async () => {
    const v = pyParsed(await py.getVolume(e, id), 'get_volume').volume;
    if (v.status === 'Error') throw new Error(`volume ${id} went to Error`);
    return v.status === 'Available' && ok(v) ? v : null;
  }, 120_000, `python: volume ${id} Available`);
}

async function pyWaitSnapshot(e: Endpoint, id: string): Promise<any> {
  return until(async () => {
    const s = pyParsed(await py.getSnapshot(e, id), 'get_snapshot').snapshot;
    if (s.status === 'CreatedFailed') throw new Error(`snapshot ${id} failed`);
    return s.status === 'Available' ? s : null;
  }, 300_000, `python: snapshot ${id} Available`);
}

/** After a delete the resource disappears (possibly via Deleting): GET answers 404 NoSuchObject. */
async function waitGone(get: () => Promise<WireExchange>, what: string): Promise<void> {
  await until(async () => {
    const x = await get();
    if (x.status === 200) return null;
    sdkError(x, 404, 'NoSuchObject', what);
    return true;
  }, 60_000, `${what} gone`);
}

// ---------------------------------------------------------------------------------------------

test('request shapes: Go and Python sign and send as their SDKs do', async () => {
  const g = await go.createCDSVolume(ep('bj'), { cdsSizeInGB: 1 });
  // CreateCDSVolumeArgs{CdsSizeInGB: 1}: every non-omitempty zero value goes out.
  assert.equal(g.requestBody, '{"cdsSizeInGB":1,"billing":null,"encryptKey":"","renewTimeUnit":"","renewTime":0,"instanceId":"","clusterId":"","tags":null,"autoSnapshotPolicy":null,"chargeType":"","cdsExtraIo":0,"shareSnapshotId":"","relationTag":null,"enableDeleteProtection":false}');
  assert.match(g.head, /^POST \/v2\/volume HTTP\/1\.1\r\nHost: 127\.0\.0\.1:\d+\r\nUser-Agent: bce-sdk-go\//);
  assert.ok(g.head.includes(`Content-Type: ${GO_CONTENT_TYPE}\r\n`));
  assert.equal(g.signedHeaders, 'content-length;content-md5;content-type;host;x-bce-date');
  assert.match(g.authorization, /^bce-auth-v1\/[^/]+\/\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\/1800\//);
  const goGet = await go.getCDSVolumeDetail(ep('bj'), goParsed(g, GO_TYPES.CreateCDSVolumeResult, 'CreateCDSVolume').volumeIds[0]);
  assert.equal(goGet.signedHeaders, 'content-type;host;x-bce-date', 'Go GET: no body, so no content-length/content-md5 signed');
  accepted(goGet, 'GetCDSVolumeDetail');

  // create_volume_with_cds_size(1): default billing, purchase_count, storage_type and relation_tag.
  const pc = await py.createVolumeWithCdsSize(ep('bj'), 1);
  assert.equal(pc.requestBody, '{"cdsSizeInGB": 1, "billing": {"paymentTiming": "Postpaid", "reservation": {"reservationLength": 1, "reservationTimeUnit": "Month"}}, "purchaseCount": 1, "storageType": "hp1", "relationTag": false}');
  assert.match(pc.head, /^POST \/v2\/volume\?clientToken=[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12} HTTP\/1\.1\r\n/);
  const pyId: string = pyParsed(pc, 'create_volume_with_cds_size').volume_ids[0];

  const p = await py.listVolumes(ep('bj'), { maxKeys: 1000 });
  assert.match(p.head, /^GET \/v2\/volume\?maxKeys=1000 HTTP\/1\.1\r\nUser-Agent: bce-sdk-python\/[^\r]+\r\nHost: 127\.0\.0\.1:\d+\r\nContent-Length: 0\r\nAuthorization: /);
  assert.ok(!/content-type/i.test(p.head), 'Python sends no Content-Type');
  assert.equal(p.signedHeaders, '', 'Python leaves signedHeaders empty');
  accepted(p, 'list_volumes');
  const id: string = goGet.json.volume.id;
  await goWaitVolume(ep('bj'), id);
  accepted(await go.deleteCDSVolume(ep('bj'), id), 'DeleteCDSVolume');
  await waitGone(() => go.getCDSVolumeDetail(ep('bj'), id), 'go volume');
  await pyWaitVolume(ep('bj'), pyId);
  pyParsed(await py.releaseVolume(ep('bj'), pyId), 'release_volume');
  await waitGone(() => py.getVolume(ep('bj'), pyId), 'python volume');
});

test('Go SDK: disk, snapshot, remote copy bj -> hkg, resize, rollback, delete', async () => {
  const bj = ep('bj');
  const hkg = ep('hkg');

  // CreateCDSVolume with the usual args (Billing set, zone, type) and with only the size (Billing nil -> "billing":null).
  const created = goParsed(await go.createCDSVolume(bj, {
    name: 'go-disk', zoneName: 'cn-bj-a', purchaseCount: 1, cdsSizeInGB: 1, storageType: 'hp1', billing: goBilling('Postpaid'),
  }), GO_TYPES.CreateCDSVolumeResult, 'CreateCDSVolume');
  present(created, { volumeIds: 'array' }, 'CreateCDSVolume');
  assert.equal(created.volumeIds.length, 1);
  const volumeId: string = created.volumeIds[0];
  const minimal = goParsed(await go.createCDSVolume(bj, { cdsSizeInGB: 1 }), GO_TYPES.CreateCDSVolumeResult, 'CreateCDSVolume minimal');
  const otherId: string = minimal.volumeIds[0];

  const v = await goWaitVolume(bj, volumeId);
  present(v, VOLUME_FIELDS, 'GetCDSVolumeDetail');
  assert.equal(v.id, volumeId);
  assert.equal(v.diskSizeInGB, 1);
  assert.equal(v.name, 'go-disk');
  assert.equal(v.zoneName, 'cn-bj-a');
  assert.equal(v.storageType, 'hp1');
  assert.equal(v.snapshotNum, '0');
  await goWaitVolume(bj, otherId);

  // ListCDSVolume: default maxKeys=1000, then page by one with marker/nextMarker.
  const all = goParsed(await go.listCDSVolume(bj), GO_TYPES.ListCDSVolumeResult, 'ListCDSVolume');
  present(all, { ...LIST_FIELDS, volumes: 'array' }, 'ListCDSVolume');
  assert.equal(all.maxKeys, 1000);
  for (const item of all.volumes) present(item, VOLUME_FIELDS, 'ListCDSVolume item');
  assert.ok(all.volumes.some((x: any) => x.id === volumeId) && all.volumes.some((x: any) => x.id === otherId));
  const paged: string[] = [];
  let marker: string | undefined;
  for (let page = 0; page < 50; page++) {
    const res = goParsed(await go.listCDSVolume(bj, { maxKeys: 1, marker }), GO_TYPES.ListCDSVolumeResult, 'ListCDSVolume page');
    assert.ok(res.volumes.length <= 1);
    paged.push(...res.volumes.map((x: any) => x.id));
    if (!res.isTruncated) break;
    assert.equal(typeof res.nextMarker, 'string');
    marker = res.nextMarker;
  }
  assert.deepEqual(new Set(paged), new Set(all.volumes.map((x: any) => x.id)));
  const inZone = goParsed(await go.listCDSVolume(bj, { zoneName: 'cn-bj-a' }), GO_TYPES.ListCDSVolumeResult, 'ListCDSVolume zone');
  assert.ok(inZone.volumes.every((x: any) => x.zoneName === 'cn-bj-a'));

  // CreateSnapshot (body carries "tags":null), detail, list.
  const snap = goParsed(await go.createSnapshot(bj, { volumeId, snapshotName: 'go-snap', desc: 'from go' }), GO_TYPES.CreateSnapshotResult, 'CreateSnapshot');
  present(snap, { snapshotId: 'string' }, 'CreateSnapshot');
  const snapshotId: string = snap.snapshotId;
  const s = await goWaitSnapshot(bj, snapshotId);
  present(s, SNAPSHOT_FIELDS, 'GetSnapshotDetail');
  assert.equal(s.sizeInGB, 1);
  assert.equal(s.progress, '100');
  assert.equal(s.volumeId, volumeId);
  assert.equal(s.desc, 'from go');
  const snaps = goParsed(await go.listSnapshot(bj), GO_TYPES.ListSnapshotResult, 'ListSnapshot');
  present(snaps, { ...LIST_FIELDS, snapshots: 'array' }, 'ListSnapshot');
  for (const item of snaps.snapshots) present(item, SNAPSHOT_FIELDS, 'ListSnapshot item');
  assert.ok(snaps.snapshots.some((x: any) => x.id === snapshotId));
  assert.equal((await goWaitVolume(bj, volumeId)).snapshotNum, '1');

  // ModifySnapshotAttribute (omitempty fields only).
  accepted(await go.modifySnapshotAttribute(bj, snapshotId, { snapshotName: 'go-snap-2', desc: 'renamed by go' }), 'ModifySnapshotAttribute');
  const renamed = goParsed(await go.getSnapshotDetail(bj, snapshotId), GO_TYPES.GetSnapshotDetailResult, 'GetSnapshotDetail').snapshot;
  assert.equal(renamed.name, 'go-snap-2');
  assert.equal(renamed.desc, 'renamed by go');

  // CreateRemoteCopySnapshot bj -> hkg, with a caller-set ClientToken; a retry returns the same ids.
  const token = `go-copy-${Date.now()}`;
  const copy = goParsed(await go.createRemoteCopySnapshot(bj, snapshotId, [{ name: 'go-copy', destRegion: 'hkg' }], token), GO_TYPES.RemoteCopySnapshotResult, 'CreateRemoteCopySnapshot');
  present(copy, { result: 'array' }, 'CreateRemoteCopySnapshot');
  assert.equal(copy.result.length, 1);
  present(copy.result[0], { region: 'string', snapshotId: 'string' }, 'CreateRemoteCopySnapshot result');
  assert.equal(copy.result[0].region, 'hkg');
  const again = goParsed(await go.createRemoteCopySnapshot(bj, snapshotId, [{ name: 'go-copy', destRegion: 'hkg' }], token), GO_TYPES.RemoteCopySnapshotResult, 'CreateRemoteCopySnapshot retry');
  assert.deepEqual(again.result, copy.result);
  const copyId: string = copy.result[0].snapshotId;
  const copied = await goWaitSnapshot(hkg, copyId);
  present(copied, { ...SNAPSHOT_FIELDS, volumeId: 'string' }, 'GetSnapshotDetail (hkg copy)');
  assert.equal(copied.name, 'go-copy');
  assert.equal(copied.sizeInGB, 1);
  assert.equal(copied.progress, '100');

  // ResizeCDSVolume: Go decodes the answer, so it must be a JSON object.
  goParsed(await go.resizeCDSVolume(bj, volumeId, { newCdsSizeInGB: 2 }), GO_TYPES.ResizeCDSVolumeResult, 'ResizeCDSVolume');
  assert.equal((await goWaitVolume(bj, volumeId, (x) => x.diskSizeInGB === 2)).diskSizeInGB, 2);

  // RollbackCDSVolume (bare ?rollback).
  accepted(await go.rollbackCDSVolume(bj, volumeId, snapshotId), 'RollbackCDSVolume');
  await goWaitVolume(bj, volumeId);

  // DeleteSnapshot (both regions), DeleteCDSVolume.
  accepted(await go.deleteSnapshot(bj, snapshotId), 'DeleteSnapshot');
  accepted(await go.deleteSnapshot(hkg, copyId), 'DeleteSnapshot (hkg)');
  await waitGone(() => go.getSnapshotDetail(bj, snapshotId), 'go snapshot');
  await waitGone(() => go.getSnapshotDetail(hkg, copyId), 'go copy');
  accepted(await go.deleteCDSVolume(bj, volumeId), 'DeleteCDSVolume');
  accepted(await go.deleteCDSVolume(bj, otherId), 'DeleteCDSVolume');
  await waitGone(() => go.getCDSVolumeDetail(bj, volumeId), 'go volume');
  await waitGone(() => go.getCDSVolumeDetail(bj, otherId), 'go volume');
});

test('Python SDK: disk, snapshot, remote copy bj -> hkg, resize, rollback, delete', async () => {
  const bj = ep('bj');
  const hkg = ep('hkg');

  // create_volume_with_cds_size: no Content-Type, auto uuid4 clientToken. Python retries a failed
  // send with the same params, so the same token must give the same disk.
  const token = pyClientToken();
  const created = pyParsed(await py.createVolumeWithCdsSize(bj, 1, { name: 'py-disk', clientToken: token }), 'create_volume_with_cds_size');
  assert.equal(created.volume_ids.length, 1);
  const volumeId: string = created.volume_ids[0];
  const retried = pyParsed(await py.createVolumeWithCdsSize(bj, 1, { name: 'py-disk', clientToken: token }), 'create_volume_with_cds_size retry');
  assert.deepEqual(retried.volume_ids, [volumeId]);

  const v = await pyWaitVolume(bj, volumeId);
  assert.equal(v.id, volumeId);
  assert.equal(v.disk_size_in_gb, 1);
  assert.equal(v.name, 'py-disk');
  assert.equal(v.storage_type, 'hp1');
  assert.equal(v.snapshot_num, '0');
  assert.equal(typeof v.create_time, 'string');
  assert.equal(typeof v.zone_name, 'string');

  // create_snapshot, get_snapshot, list_snapshots (no params: no query at all; with volume_id).
  const snap = pyParsed(await py.createSnapshot(bj, volumeId, 'py-snap', 'from python'), 'create_snapshot');
  const snapshotId: string = snap.snapshot_id;
  assert.equal(typeof snapshotId, 'string');
  const s = await pyWaitSnapshot(bj, snapshotId);
  assert.equal(s.size_in_gb, 1);
  assert.equal(s.progress, '100');
  assert.equal(s.volume_id, volumeId);
  assert.equal(s.desc, 'from python');
  const listed = pyParsed(await py.listSnapshots(bj), 'list_snapshots');
  assert.ok(listed.snapshots.some((x: any) => x.id === snapshotId));
  const byVolume = pyParsed(await py.listSnapshots(bj, { volumeId }), 'list_snapshots(volume_id)');
  assert.deepEqual(byVolume.snapshots.map((x: any) => x.id), [snapshotId]);
  assert.equal(typeof byVolume.is_truncated, 'boolean');

  // create_volume_with_snapshot_id, then list_volumes (no params) and paging with max_keys=1.
  const fromSnap = pyParsed(await py.createVolumeWithSnapshotId(bj, snapshotId, { name: 'py-restored' }), 'create_volume_with_snapshot_id');
  const restoredId: string = fromSnap.volume_ids[0];
  const restored = await pyWaitVolume(bj, restoredId);
  assert.equal(restored.source_snapshot_id, snapshotId);
  assert.equal(restored.disk_size_in_gb, 1);
  const vols = pyParsed(await py.listVolumes(bj), 'list_volumes');
  assert.ok(vols.volumes.some((x: any) => x.id === volumeId) && vols.volumes.some((x: any) => x.id === restoredId));
  const paged: string[] = [];
  let marker: string | undefined;
  for (let page = 0; page < 50; page++) {
    const res = pyParsed(await py.listVolumes(bj, { marker, maxKeys: 1 }), 'list_volumes page');
    paged.push(...res.volumes.map((x: any) => x.id));
    if (!res.is_truncated) break;
    marker = res.next_marker;
  }
  assert.deepEqual(new Set(paged), new Set(vols.volumes.map((x: any) => x.id)));

  // create_remote_copy_snapshot bj -> hkg (auto clientToken), poll the copy in hkg.
  const copy = pyParsed(await py.createRemoteCopySnapshot(bj, snapshotId, [{ destRegion: 'hkg', name: 'py-copy' }]), 'create_remote_copy_snapshot');
  assert.equal(copy.result.length, 1);
  assert.equal(copy.result[0].region, 'hkg');
  const copyId: string = copy.result[0].snapshot_id;
  const copied = await pyWaitSnapshot(hkg, copyId);
  assert.equal(copied.name, 'py-copy');
  assert.equal(copied.progress, '100');

  // resize_volume(volume_id, 2, 'hp1'): ?clientToken=<uuid4>&resize= ; rollback_volume: ?rollback=
  pyParsed(await py.resizeVolume(bj, volumeId, 2, 'hp1'), 'resize_volume');
  assert.equal((await pyWaitVolume(bj, volumeId, (x) => x.disk_size_in_gb === 2)).disk_size_in_gb, 2);
  pyParsed(await py.rollbackVolume(bj, volumeId, snapshotId), 'rollback_volume');
  await pyWaitVolume(bj, volumeId);

  // delete_snapshot (both regions), release_volume.
  pyParsed(await py.deleteSnapshot(bj, snapshotId), 'delete_snapshot');
  pyParsed(await py.deleteSnapshot(hkg, copyId), 'delete_snapshot (hkg)');
  await waitGone(() => py.getSnapshot(bj, snapshotId), 'python snapshot');
  await waitGone(() => py.getSnapshot(hkg, copyId), 'python copy');
  pyParsed(await py.releaseVolume(bj, volumeId), 'release_volume');
  pyParsed(await py.releaseVolume(bj, restoredId), 'release_volume');
  await waitGone(() => py.getVolume(bj, volumeId), 'python volume');
  await waitGone(() => py.getVolume(bj, restoredId), 'python volume');
});

test('errors as the SDKs surface them: {code, message, requestId} with the catalog status', async () => {
  const bj = ep('bj');
  const wrong = 'not-the-secret-key-000000';

  // Wrong secret: 400 SignatureDoesNotMatch. Go does not retry a 400 whose code is not "Http400".
  sdkError(await goSend(bj, { method: 'GET', path: '/v2/volume', params: [['maxKeys', '1000']], signWithSecret: wrong }), 400, 'SignatureDoesNotMatch', 'ListCDSVolume, wrong secret');
  sdkError(await goSend(bj, {
    method: 'POST', path: '/v2/snapshot', body: goJson({ volumeId: 'v-nothere1', snapshotName: 'x', tags: null }), signWithSecret: wrong,
  }), 400, 'SignatureDoesNotMatch', 'CreateSnapshot, wrong secret');
  const before = pyParsed(await py.listVolumes(bj), 'list_volumes').volumes.length;
  sdkError(await pySend(bj, {
    method: 'POST', path: '/v2/volume', params: [['clientToken', pyClientToken()]],
    body: pyJsonDumps({ cdsSizeInGB: 1, billing: PY_DEFAULT_BILLING, purchaseCount: 1, storageType: 'hp1', relationTag: false }), signWithSecret: wrong,
  }), 400, 'SignatureDoesNotMatch', 'create_volume_with_cds_size, wrong secret');
  sdkError(await pySend(bj, { method: 'DELETE', path: '/v2/snapshot/s-nothere1', signWithSecret: wrong }), 400, 'SignatureDoesNotMatch', 'delete_snapshot, wrong secret');
  assert.equal(pyParsed(await py.listVolumes(bj), 'list_volumes').volumes.length, before, 'a refused create created nothing');

  // Unknown access key: 403 InvalidAccessKeyId.
  sdkError(await go.listSnapshot(ep('bj', { ak: 'nobody-ak-000000000000' })), 403, 'InvalidAccessKeyId', 'ListSnapshot, unknown ak');
  sdkError(await py.listSnapshots(ep('bj', { ak: 'nobody-ak-000000000000' })), 403, 'InvalidAccessKeyId', 'list_snapshots, unknown ak');

  // Signed two hours ago (expiration 1800 s): 400 RequestExpired (both SDKs would retry this code).
  const twoHoursAgo = Date.now() - 2 * 3600_000;
  sdkError(await goSend(bj, { method: 'GET', path: '/v2/snapshot', params: [['maxKeys', '1000']], at: twoHoursAgo }), 400, 'RequestExpired', 'ListSnapshot, old date');
  sdkError(await pySend(bj, { method: 'GET', path: '/v2/snapshot', at: twoHoursAgo }), 400, 'RequestExpired', 'list_snapshots, old date');

  // Unknown ids: 404 NoSuchObject.
  sdkError(await go.getSnapshotDetail(bj, 's-nothere1'), 404, 'NoSuchObject', 'GetSnapshotDetail, unknown id');
  sdkError(await py.getVolume(bj, 'v-nothere1'), 404, 'NoSuchObject', 'get_volume, unknown id');
  sdkError(await go.createRemoteCopySnapshot(bj, 's-nothere1', [{ destRegion: 'hkg' }]), 404, 'NoSuchObject', 'CreateRemoteCopySnapshot, unknown id');

  // Python: the same clientToken with other parameters: 403 IdempotentParameterMismatch.
  const token = pyClientToken();
  const first = pyParsed(await py.createVolumeWithCdsSize(bj, 1, { clientToken: token }), 'create_volume_with_cds_size');
  sdkError(await py.createVolumeWithCdsSize(bj, 2, { clientToken: token }), 403, 'IdempotentParameterMismatch', 'create_volume_with_cds_size, reused token');
  await pyWaitVolume(bj, first.volume_ids[0]);
  pyParsed(await py.releaseVolume(bj, first.volume_ids[0]), 'release_volume');
});

test('Go reuses its kept-alive connection: consecutive calls, a 4xx GET among them, on one socket', async () => {
  const conn = await RawConnection.open(server.urls.bj!);
  try {
    const bj = ep('bj', { conn });
    const created = goParsed(await go.createCDSVolume(bj, { cdsSizeInGB: 1, name: 'go-keepalive' }), GO_TYPES.CreateCDSVolumeResult, 'CreateCDSVolume');
    const id: string = created.volumeIds[0];
    // Go closes idle connections after a >= 400 answer to PUT/POST only; after a failed GET it reuses the socket.
    sdkError(await go.getSnapshotDetail(bj, 's-nothere1'), 404, 'NoSuchObject', 'GetSnapshotDetail, unknown id');
    await goWaitVolume(bj, id);
    goParsed(await go.resizeCDSVolume(bj, id, { newCdsSizeInGB: 2 }), GO_TYPES.ResizeCDSVolumeResult, 'ResizeCDSVolume');
    await goWaitVolume(bj, id, (v) => v.diskSizeInGB === 2);
    goParsed(await go.listCDSVolume(bj), GO_TYPES.ListCDSVolumeResult, 'ListCDSVolume');
    accepted(await go.deleteCDSVolume(bj, id), 'DeleteCDSVolume');
    await waitGone(() => go.getCDSVolumeDetail(bj, id), 'go volume');
    assert.ok(!conn.closed, 'the server kept the connection open');
  } finally {
    conn.close();
  }
});

// Query filters both SDKs send for ListCDSVolume / list_volumes that the server does not apply (it
// answers every disk): the caller gets disks it did not ask for.
test('ListCDSVolume / list_volumes honour the volumeIds filter', async () => {
  const bj = ep('bj');
  const a = goParsed(await go.createCDSVolume(bj, { cdsSizeInGB: 1, name: 'filter-a' }), GO_TYPES.CreateCDSVolumeResult, 'CreateCDSVolume').volumeIds[0];
  const b = goParsed(await go.createCDSVolume(bj, { cdsSizeInGB: 1, name: 'filter-b' }), GO_TYPES.CreateCDSVolumeResult, 'CreateCDSVolume').volumeIds[0];
  try {
    await goWaitVolume(bj, a);
    await goWaitVolume(bj, b);
    // Go: ListCDSVolumeArgs.VolumeIds ("v-1,v-2") -> ?volumeIds=...; Python: list_volumes(volume_ids=...).
    const g = goParsed(await goSend(bj, { method: 'GET', path: '/v2/volume', params: [['maxKeys', '1000'], ['volumeIds', a]] }), GO_TYPES.ListCDSVolumeResult, 'ListCDSVolume volumeIds');
    const p = pyParsed(await pySend(bj, { method: 'GET', path: '/v2/volume', params: [['volumeIds', a]] }), 'list_volumes(volume_ids)');
    assert.deepEqual(g.volumes.map((x: any) => x.id), [a]);
    assert.deepEqual(p.volumes.map((x: any) => x.id), [a]);
  } finally {
    for (const id of [a, b]) {
      await goWaitVolume(bj, id);
      await go.deleteCDSVolume(bj, id);
      await waitGone(() => go.getCDSVolumeDetail(bj, id), 'filter volume');
    }
  }
});

test('ListCDSVolume / list_volumes with instanceId lists only disks attached to that instance', async () => {
  const bj = ep('bj');
  const a = goParsed(await go.createCDSVolume(bj, { cdsSizeInGB: 1, name: 'filter-i' }), GO_TYPES.CreateCDSVolumeResult, 'CreateCDSVolume').volumeIds[0];
  try {
    await goWaitVolume(bj, a);
    const g = goParsed(await goSend(bj, { method: 'GET', path: '/v2/volume', params: [['instanceId', 'i-nothere1'], ['maxKeys', '1000']] }), GO_TYPES.ListCDSVolumeResult, 'ListCDSVolume instanceId');
    const p = pyParsed(await pySend(bj, { method: 'GET', path: '/v2/volume', params: [['instanceId', 'i-nothere1']] }), 'list_volumes(instance_id)');
    assert.deepEqual(g.volumes, []);
    assert.deepEqual(p.volumes, []);
  } finally {
    await go.deleteCDSVolume(bj, a);
    await waitGone(() => go.getCDSVolumeDetail(bj, a), 'filter volume');
  }
});

test('ResizeCDSVolume / resize_volume with a different newVolumeType is not silently ignored', async () => {
  const bj = ep('bj');
  const id = pyParsed(await py.createVolumeWithCdsSize(bj, 1), 'create_volume_with_cds_size').volume_ids[0];
  try {
    await pyWaitVolume(bj, id);
    const x = await py.resizeVolume(bj, id, 2, 'cloud_hp1');
    if (x.status >= 400) return; // refusing the type change is acceptable
    const v = await pyWaitVolume(bj, id, (v) => v.disk_size_in_gb === 2);
    assert.equal(v.storage_type, 'cloud_hp1', 'answered 200 but the storage type did not change');
  } finally {
    await pyWaitVolume(bj, id);
    await py.releaseVolume(bj, id);
    await waitGone(() => py.getVolume(bj, id), 'resize-type volume');
  }
});
