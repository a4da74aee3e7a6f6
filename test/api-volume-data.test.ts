/** Our data extension, in-process: range reads, aligned writes, zeroing, extents, and every refusal. */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { startHarness, bobKeys, type Harness } from './helpers/region-harness.ts';
import { assertBceError } from './helpers/bce-assert.ts';

const GiB = 1024 ** 3;
const MiB = 1 << 20;
let h: Harness;
let id: string;

before(async () => {
  h = await startHarness('bj');
  [id] = (await h.call('POST', '/v2/volume', { cdsSizeInGB: 1 })).json.volumeIds;
  await h.waitFor(async () => (await h.call('GET', `/v2/volume/${id}`)).json.volume.status === 'Available');
});
after(async () => h.close());

async function put(offset: number, body: Buffer, query = ''): Promise<{ status: number; json: any; headers: Record<string, unknown> }> {
  return h.call('PUT', `/v2/volume/${id}/data?offset=${offset}${query}`, body, { headers: { 'content-type': 'application/octet-stream' } });
}

async function read(range: string): Promise<{ status: number; raw: Buffer; headers: Record<string, unknown>; json: any }> {
  return h.call('GET', `/v2/volume/${id}/data`, undefined, { headers: { range } });
}

test('a write at an aligned offset reads back through a range read; the rest reads as zeros', async () => {
  const data = randomBytes(8192);
  assert.equal((await put(MiB - 4096, data)).status, 200);
  const res = await read(`bytes=${MiB - 4096 - 10}-${MiB + 4096 + 9}`);
  assert.equal(res.status, 206);
  assert.equal(res.headers['content-range'], `bytes ${MiB - 4096 - 10}-${MiB + 4096 + 9}/${GiB}`);
  assert.ok(res.raw.subarray(0, 10).equals(Buffer.alloc(10)));
  assert.ok(res.raw.subarray(10, 10 + 8192).equals(data));
  assert.ok(res.raw.subarray(10 + 8192).equals(Buffer.alloc(10)));
  const tail = await read('bytes=-16');
  assert.equal(tail.status, 206);
  assert.ok(tail.raw.equals(Buffer.alloc(16)));
});

test('extents show written chunks as data and the rest as holes; zeroLength turns a range back to zeros', async () => {
  await put(300 * MiB, randomBytes(2 * MiB));
  let extents = (await h.call('GET', `/v2/volume/${id}/extents`)).json.extents;
  assert.ok(extents.some((e: any) => !e.zero && e.offset === 300 * MiB && e.length === 2 * MiB), JSON.stringify(extents));
  assert.equal(extents.reduce((n: number, e: any) => n + e.length, 0), GiB);
  assert.equal((await h.call('PUT', `/v2/volume/${id}/data?offset=${300 * MiB}&zeroLength=${2 * MiB}`)).status, 200);
  extents = (await h.call('GET', `/v2/volume/${id}/extents`)).json.extents;
  assert.ok(!extents.some((e: any) => !e.zero && e.offset <= 300 * MiB && e.offset + e.length > 300 * MiB));
  assert.ok((await read(`bytes=${300 * MiB}-${302 * MiB - 1}`)).raw.equals(Buffer.alloc(2 * MiB)));
});

test('refusals: misaligned, past the end, bad ranges, other accounts', async () => {
  assertBceError(await put(100, randomBytes(512)), 400, 'BadRequest');
  assertBceError(await put(0, randomBytes(100)), 400, 'BadRequest');
  assertBceError(await put(GiB - 512, randomBytes(1024)), 400, 'BadRequest');
  assertBceError(await h.call('PUT', `/v2/volume/${id}/data?offset=-1`, 'x'.repeat(512)), 400, 'BadRequest');
  assertBceError(await h.call('PUT', `/v2/volume/${id}/data?offset=0&zeroLength=abc`), 400, 'BadRequest');
  for (const range of [`bytes=${GiB}-${GiB + 10}`, 'bytes=5-2', 'bytes=0-1,4-5', 'items=0-1', 'bytes=-']) {
    assertBceError(await read(range), 416, 'InvalidRange');
  }
  assertBceError(await h.call('GET', `/v2/volume/${id}/data`, undefined, { keys: bobKeys, headers: { range: 'bytes=0-1' } }), 404, 'NoSuchObject');
  assertBceError(await h.call('PUT', `/v2/volume/${id}/data?offset=0`, 'x'.repeat(512), { keys: bobKeys }), 404, 'NoSuchObject');
  assertBceError(await h.call('GET', '/v2/volume/v-nothere1/extents'), 404, 'NoSuchObject');
});

test('writes need an Available disk; reads work while a block client has it', async () => {
  await h.region.meta.volumes.update(id, { status: 'InUse' });
  try {
    assertBceError(await put(0, randomBytes(512)), 409, 'OperationDenied');
    assert.equal((await read('bytes=0-511')).status, 206);
  } finally {
    await h.region.meta.volumes.update(id, { status: 'Available' });
  }
});
