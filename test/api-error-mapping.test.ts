/**
 * A RangeError that escapes a service is a bug on our side, not a bad request: 500 InternalError,
 * logged with the request id, its message kept from the caller. Out-of-range input is refused by
 * explicit checks with its own catalog code, so users still get a clear 4xx.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import fastify from 'fastify';
import { toApiError } from '../src/api/error-reply.ts';
import { assertBceError } from './helpers/bce-assert.ts';
import { startHarness, type Harness } from './helpers/region-harness.ts';

const GiB = 1024 ** 3;
let h: Harness;
let id: string;

before(async () => {
  h = await startHarness('bj');
  [id] = (await h.call('POST', '/v2/volume', { cdsSizeInGB: 1 })).json.volumeIds;
  await h.waitFor(async () => (await h.call('GET', `/v2/volume/${id}`)).json.volume.status === 'Available');
});
after(async () => h.close());

const octets = { 'content-type': 'application/octet-stream' };

test('out-of-range data requests get their 4xx in BCE format, never a 500', async () => {
  const cases: Array<[string, string, Buffer | undefined, Record<string, string>, number, string]> = [
    ['GET', `/v2/volume/${id}/data`, undefined, { range: `bytes=${GiB}-` }, 416, 'InvalidRange'],
    ['GET', `/v2/volume/${id}/data`, undefined, { range: `bytes=${GiB + 512}-${GiB + 1023}` }, 416, 'InvalidRange'],
    ['GET', `/v2/volume/${id}/data`, undefined, { range: 'bytes=99999999999999999999-' }, 416, 'InvalidRange'],
    ['GET', `/v2/volume/${id}/data`, undefined, { range: 'bytes=-0' }, 416, 'InvalidRange'],
    ['GET', `/v2/volume/${id}/data`, undefined, { range: 'bytes=4096-512' }, 416, 'InvalidRange'],
    ['PUT', `/v2/volume/${id}/data?offset=${GiB}`, Buffer.alloc(512), octets, 400, 'BadRequest'],
    ['PUT', `/v2/volume/${id}/data?offset=${GiB - 512}`, Buffer.alloc(1024), octets, 400, 'BadRequest'],
    ['PUT', `/v2/volume/${id}/data?offset=${2 ** 60}`, Buffer.alloc(512), octets, 400, 'BadRequest'],
    ['PUT', `/v2/volume/${id}/data?offset=${'9'.repeat(400)}`, Buffer.alloc(512), octets, 400, 'BadRequest'],
    ['PUT', `/v2/volume/${id}/data?offset=0&zeroLength=${GiB + 512}`, undefined, {}, 400, 'BadRequest'],
    ['PUT', `/v2/volume/${id}/data?offset=${GiB}&zeroLength=512`, undefined, {}, 400, 'BadRequest'],
    ['PUT', `/v2/volume/${id}/data?offset=0&zeroLength=${'1'.repeat(400)}`, undefined, {}, 400, 'BadRequest'],
  ];
  for (const [method, url, body, headers, status, code] of cases) {
    const res = await h.call(method, url, body, { headers });
    assertBceError(res, status, code);
    assert.ok(res.json.message.length < 200, res.json.message);
  }
  assert.equal(h.logs().filter((l) => l.msg === 'unexpected error').length, 0, 'none of them was taken for a bug');
});

test('a RangeError from inside the service is a 500 InternalError without its message, logged with the request id', async () => {
  const volumes = h.region.meta.volumes;
  const detail = 'chunk index 7 is outside [0, 4) of /srv/secret/bj/disks/v-1.map';
  // A broken internal assumption, as a real one surfaces: a RangeError thrown deep inside.
  const original = volumes.get;
  volumes.get = async () => {
    throw new RangeError(detail);
  };
  try {
    for (const url of [`/v2/volume/${id}`, `/v2/volume/${id}/data`]) {
      const res = await h.call('GET', url, undefined, { headers: { range: 'bytes=0-511' } });
      assertBceError(res, 500, 'InternalError');
      assert.equal(res.json.message, 'We encountered an internal error. Please try again.');
      assert.doesNotMatch(JSON.stringify(res.json), /chunk index|secret|RangeError/);
      const logged = h.logs().find((l) => l.msg === 'unexpected error' && l.requestId === res.json.requestId);
      assert.ok(logged, 'logged with the request id');
      assert.match(String(logged.err), /RangeError: chunk index 7 is outside/);
    }
  } finally {
    volumes.get = original;
  }
  assert.equal((await h.call('GET', `/v2/volume/${id}`)).status, 200);
});

test('framework errors that are RangeErrors keep their own codes (they used to become 400 BadRequest)', () => {
  const codes = fastify.errorCodes;
  const tooLarge = new codes.FST_ERR_CTP_BODY_TOO_LARGE();
  const badLength = new codes.FST_ERR_CTP_INVALID_CONTENT_LENGTH();
  assert.ok(tooLarge instanceof RangeError && badLength instanceof RangeError, 'fastify throws these as RangeErrors');
  assert.equal(toApiError(tooLarge)?.code, 'EntityTooLarge');
  assert.equal(toApiError(badLength)?.code, 'InvalidHTTPRequest');
  assert.equal(toApiError(new RangeError('anything')), null, 'a plain RangeError is not a user error');
  const nodeRange = Object.assign(new RangeError('The value of "offset" is out of range.'), { code: 'ERR_OUT_OF_RANGE' });
  assert.equal(toApiError(nodeRange), null, "Node's own ERR_OUT_OF_RANGE is not a user error either");
});
