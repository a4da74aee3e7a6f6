/** An unexpected failure inside the service: 500 InternalError, no internal detail, logged with its request id. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startHarness } from './helpers/region-harness.ts';
import { assertBceError } from './helpers/bce-assert.ts';

test('a broken store answers InternalError without leaking what broke, and logs it with the request id', async () => {
  const h = await startHarness('bj');
  try {
    await h.region.meta.close(); // the database goes away under the running service
    const res = await h.call('GET', '/v2/volume');
    assertBceError(res, 500, 'InternalError');
    assert.doesNotMatch(res.json.message, /database|sqlite|closed|TypeError/i);
    const logged = h.logs().find((l) => l.msg === 'unexpected error');
    assert.ok(logged, 'the error was logged');
    assert.equal(logged.requestId, res.json.requestId);
    assert.match(String(logged.err), /database connection is not open/);
  } finally {
    await h.close();
  }
});
