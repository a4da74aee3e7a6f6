import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { startHarness, aliceKeys, type Harness } from './helpers/region-harness.ts';
import { assertBceError } from './helpers/bce-assert.ts';

let h: Harness;
before(async () => (h = await startHarness()));
after(async () => h.close());

for (const style of ['js', 'go', 'python'] as const) {
  test(`requests signed ${style}-SDK style are accepted`, async () => {
    const res = await h.call('GET', '/v2/volume', undefined, { style });
    assert.equal(res.status, 200, JSON.stringify(res.json));
    assert.deepEqual(res.json.volumes, []);
  });
}

test('bare query flags sign either way: ?modifyAttribute and ?modifyAttribute=', async () => {
  for (const flag of ['', '=']) {
    const res = await h.call('PUT', `/v2/snapshot/s-missing0?modifyAttribute${flag}`, { desc: 'x' }, { style: 'go' });
    assertBceError(res, 404, 'NoSuchObject');
  }
});

test('no Authorization header: 403 AccessDenied', async () => {
  const res = await h.app.inject({ method: 'GET', url: '/v2/volume' });
  assertBceError({ status: res.statusCode, json: res.json(), headers: res.headers }, 403, 'AccessDenied');
});

test('an unparsable Authorization header: 400 InvalidHTTPAuthHeader', async () => {
  for (const authorization of ['Bearer abc', 'bce-auth-v1/ak/not-a-time/1800//' + '0'.repeat(64), 'bce-auth-v1/a/b']) {
    const res = await h.app.inject({ method: 'GET', url: '/v2/volume', headers: { authorization } });
    assertBceError({ status: res.statusCode, json: res.json(), headers: res.headers }, 400, 'InvalidHTTPAuthHeader');
  }
});

test('an unknown access key: 403 InvalidAccessKeyId', async () => {
  assertBceError(await h.call('GET', '/v2/volume', undefined, { keys: { ak: 'nobody', sk: 'x' } }), 403, 'InvalidAccessKeyId');
});

test('a wrong secret: 400 SignatureDoesNotMatch', async () => {
  assertBceError(await h.call('GET', '/v2/volume', undefined, { keys: { ak: aliceKeys.ak, sk: 'wrong' } }), 400, 'SignatureDoesNotMatch');
});

test('a tampered request (signed for another path): 400 SignatureDoesNotMatch', async () => {
  const { signedRequest } = await import('./helpers/signed-request.ts');
  const req = signedRequest({ method: 'GET', url: '/v2/volume', keys: aliceKeys });
  const res = await h.app.inject({ method: 'GET', url: '/v2/snapshot', headers: req.headers });
  assert.equal(res.statusCode, 400);
  assert.equal(res.json().code, 'SignatureDoesNotMatch');
});

test('an expired signature: 400 RequestExpired', async () => {
  // Signed 10 minutes ago with a 60 s lifetime.
  assertBceError(await h.call('GET', '/v2/volume', undefined, { at: Date.now() - 600_000, expirationSeconds: 60 }), 400, 'RequestExpired');
});

test('a clock skew over 30 minutes: 400 RequestExpired, even with a long lifetime', async () => {
  assertBceError(await h.call('GET', '/v2/volume', undefined, { at: Date.now() - 40 * 60_000, expirationSeconds: 7200 }), 400, 'RequestExpired');
  assertBceError(await h.call('GET', '/v2/volume', undefined, { at: Date.now() + 40 * 60_000 }), 400, 'RequestExpired');
  // Within the skew and the lifetime: fine.
  assert.equal((await h.call('GET', '/v2/volume', undefined, { at: Date.now() - 20 * 60_000 })).status, 200);
});

test('session tokens are refused with AccessDenied', async () => {
  assertBceError(await h.call('GET', '/v2/volume', undefined, { headers: { 'x-bce-security-token': 'tok' } }), 403, 'AccessDenied');
});

test('healthz needs no signature; unknown paths, versions and methods answer in BCE format', async () => {
  const health = await h.app.inject({ method: 'GET', url: '/healthz' });
  assert.equal(health.statusCode, 200);
  assert.equal(health.json().status, 'ok');
  const cases: Array<[string, string, number, string]> = [
    ['GET', '/v1/volume', 404, 'InvalidVersion'],
    ['GET', '/v3/snapshot', 404, 'InvalidVersion'],
    ['GET', '/nothing/here', 404, 'NoSuchRoute'],
    ['PATCH', '/v2/volume', 405, 'MethodNotAllowed'],
    ['DELETE', '/v2/snapshot', 405, 'MethodNotAllowed'],
  ];
  for (const [method, url, status, code] of cases) {
    const res = await h.app.inject({ method: method as 'GET', url });
    assertBceError({ status: res.statusCode, json: res.json(), headers: res.headers }, status, code);
  }
  // HEAD is not served implicitly (it would read a whole disk on the data route to send nothing).
  const head = await h.app.inject({ method: 'HEAD', url: '/v2/volume/v-00000000/data' });
  assert.equal(head.statusCode, 405);
});

test('every response carries x-bce-request-id, success bodies do not', async () => {
  const res = await h.call('GET', '/v2/snapshot');
  assert.match(String(res.headers['x-bce-request-id']), /^[0-9a-f-]{36}$/);
  assert.equal(res.json.requestId, undefined);
});
