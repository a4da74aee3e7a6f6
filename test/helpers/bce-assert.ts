import assert from 'node:assert/strict';

/** Asserts a BCE error answer: status, code, exactly {requestId, code, message}, request id echoed in the header. */
export function assertBceError(res: { status: number; json: any; headers: Record<string, unknown> }, status: number, code: string): void {
  assert.equal(res.status, status, `expected ${status} ${code}, got ${res.status} ${JSON.stringify(res.json)}`);
  assert.equal(res.json.code, code);
  assert.deepEqual(Object.keys(res.json).sort(), ['code', 'message', 'requestId']);
  assert.equal(res.json.requestId, res.headers['x-bce-request-id']);
  assert.ok(res.json.message.length > 0);
}
