/**
 * Every answer is in BCE's format, also the ones Fastify and Node's HTTP server would write by
 * themselves: headers too large (431), a malformed request (400), a missing Host, an unparsable
 * Content-Type, a body too large (413), bad JSON, an `Expect:` we do not do (417), a request that
 * arrives while the region shuts down (503). Each over a real socket to a real listening region,
 * and each: `{requestId, code, message}` and `x-bce-request-id` equal to the body's request id.
 * A client that goes away mid-request is logged at debug, never as `unexpected error`.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { signedRequest } from './helpers/signed-request.ts';
import { aliceKeys } from './helpers/region-harness.ts';
import { openSocket, parseResponse, rawExchange, startLiveRegion, type LiveRegion, type RawAnswer } from './helpers/live-region.ts';

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
let live: LiveRegion;
let volumeId: string;

before(async () => {
  // An app over a region built as main.ts builds it, with a debug log, as main.ts can wire it.
  live = await startLiveRegion({ app: { debug: true } });
  const created = await live.call('POST', '/v2/volume', { cdsSizeInGB: 1 });
  volumeId = created.json.volumeIds[0];
  for (;;) {
    if ((await live.call('GET', `/v2/volume/${volumeId}`)).json.volume.status === 'Available') break;
    await new Promise((r) => setTimeout(r, 25));
  }
});
after(async () => live?.close());

function assertBceRaw(res: RawAnswer, status: number, code: string): void {
  assert.equal(res.status, status, `expected ${status} ${code}, got:\n${JSON.stringify(res).slice(0, 600)}`);
  assert.deepEqual(Object.keys(res.json ?? {}).sort(), ['code', 'message', 'requestId']);
  assert.equal(res.json.code, code);
  assert.match(res.json.requestId, UUID);
  assert.equal(res.headers['x-bce-request-id'], res.json.requestId);
  assert.match(res.headers['content-type'] ?? '', /^application\/json/);
  assert.ok(res.json.message.length > 0);
}

/** A signed request as raw bytes (the signature's Host is the one sent). */
function signedBytes(method: string, path: string, body?: string | Buffer, extra: Record<string, string> = {}): { head: string; body: Buffer } {
  const req = signedRequest({ method, url: path, body, keys: aliceKeys, host: `127.0.0.1:${live.port}`, extraHeaders: extra });
  const head = `${method} ${path} HTTP/1.1\r\n${Object.entries(req.headers).map(([k, v]) => `${k}: ${v}`).join('\r\n')}\r\n\r\n`;
  return { head, body: req.payload === undefined ? Buffer.alloc(0) : Buffer.from(req.payload) };
}

test('a 20 KiB header answers a BCE 431 RequestHeaderTooLarge and the connection is closed', async () => {
  const res = await rawExchange(live.port, [`GET /v2/volume HTTP/1.1\r\nHost: 127.0.0.1\r\nx-big: ${'a'.repeat(20 * 1024)}\r\n\r\n`]);
  assertBceRaw(res, 431, 'RequestHeaderTooLarge');
  assert.ok(res.closed, 'the server closed the connection');
  // A long URL counts against the same limit.
  assertBceRaw(await rawExchange(live.port, [`GET /v2/volume?x=${'b'.repeat(20 * 1024)} HTTP/1.1\r\nHost: h\r\n\r\n`]), 431, 'RequestHeaderTooLarge');
});

test('malformed requests answer a BCE 400 InvalidHTTPRequest, each with a fresh request id', async () => {
  const cases = [
    'GARBAGE\r\n\r\n',
    'GET /v2/volume HTTP/1.1\r\nHost: h\r\nbad header\r\n\r\n',
    'G@T /v2/volume HTTP/1.1\r\nHost: h\r\n\r\n',
    'POST /v2/volume HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\nabc',
    'GET /v2/volume HTTP/9.9\r\nHost: h\r\n\r\n',
  ];
  const ids = new Set<string>();
  for (const bytes of cases) {
    const res = await rawExchange(live.port, [bytes]);
    assertBceRaw(res, 400, 'InvalidHTTPRequest');
    assert.ok(res.closed, JSON.stringify(bytes));
    ids.add(res.json.requestId);
  }
  assert.equal(ids.size, cases.length);
});

test('HTTP/1.1 without Host, or with a Content-Type that does not parse: BCE 400 InvalidHTTPRequest', async () => {
  // Answered through the app: the connection may stay open, so read for a moment only.
  assertBceRaw(await rawExchange(live.port, ['GET /v2/volume HTTP/1.1\r\n\r\n'], { waitMs: 500 }), 400, 'InvalidHTTPRequest');
  const { head, body } = signedBytes('POST', '/v2/volume', '{"cdsSizeInGB":1}', { 'content-type': 'not a type' });
  const res = await rawExchange(live.port, [head, body], { waitMs: 500 });
  assertBceRaw(res, 400, 'InvalidHTTPRequest');
  assert.match(res.json.message, /Content-Type/);
});

test('bodies too large: 413 EntityTooLarge at once from the declared length, or as soon as a chunked body passes the limit', async () => {
  // Declared 5 GiB and never sent: answered without waiting for the body, and the connection closed.
  const declared = signedBytes('POST', '/v2/volume', undefined, { 'content-length': String(5 * 1024 ** 3) });
  const started = Date.now();
  const res = await rawExchange(live.port, [declared.head]);
  assertBceRaw(res, 413, 'EntityTooLarge');
  assert.ok(res.closed && Date.now() - started < 3000, `answered and closed in ${Date.now() - started} ms`);
  // Chunked (no length): refused once past 1 MiB; nothing created.
  const before = (await live.call('GET', '/v2/volume')).json.volumes.length;
  const chunk = Buffer.alloc(64 * 1024, 0x20);
  const head = signedBytes('POST', '/v2/volume', undefined, { 'transfer-encoding': 'chunked' }).head;
  const parts: Array<string | Buffer> = [head];
  for (let i = 0; i < 20; i++) parts.push(`${chunk.length.toString(16)}\r\n`, chunk, '\r\n');
  const chunked = await rawExchange(live.port, parts);
  assertBceRaw(chunked, 413, 'EntityTooLarge');
  assert.equal((await live.call('GET', '/v2/volume')).json.volumes.length, before);
  // A GET (whose body nobody reads) with a large declared body is refused too, not drained.
  const get = await rawExchange(live.port, [signedBytes('GET', '/v2/volume', undefined, { 'content-length': String(1 << 30) }).head]);
  assertBceRaw(get, 413, 'EntityTooLarge');
});

test('bad JSON is MalformedJSON, and an unknown Expect is 417 ExpectationFailed, both in BCE format', async () => {
  const bad = await live.call('POST', '/v2/volume', '{"cdsSizeInGB": 1', { headers: { 'content-type': 'application/json' } });
  assert.equal(bad.status, 400);
  assert.equal(bad.json.code, 'MalformedJSON');
  assert.equal(bad.headers['x-bce-request-id'], bad.json.requestId);
  const res = await rawExchange(live.port, ['GET /healthz HTTP/1.1\r\nHost: h\r\nExpect: tea\r\n\r\n']);
  assertBceRaw(res, 417, 'ExpectationFailed');
});

test('clients that go away mid-request are logged at debug, never as unexpected errors, and the region keeps serving', async () => {
  const logsBefore = live.logs().length;
  const volumesBefore = (await live.call('GET', '/v2/volume')).json.volumes.length;
  // Half a data write, then a reset; half a JSON body, then a close; headers only, then a close.
  const data = signedBytes('PUT', `/v2/volume/${volumeId}/data?offset=0`, randomBytes(1 << 20), { 'content-type': 'application/octet-stream' });
  const json = signedBytes('POST', '/v2/volume', JSON.stringify({ cdsSizeInGB: 1, name: 'x'.repeat(5000) }));
  for (const [head, body, how] of [[data.head, data.body, 'reset'], [json.head, json.body, 'end']] as const) {
    const socket = await openSocket(live.port);
    socket.write(head);
    socket.write(body.subarray(0, body.length >> 1));
    await new Promise((r) => setTimeout(r, 200));
    socket.resume();
    if (how === 'reset') socket.resetAndDestroy();
    else socket.end();
    await new Promise((r) => socket.once('close', r));
  }
  assert.equal((await live.call('GET', '/v2/volume')).json.volumes.length, volumesBefore, 'the cut-short create created nothing');
  await new Promise((r) => setTimeout(r, 300));
  const logged = live.logs().slice(logsBefore);
  assert.deepEqual(logged.filter((l) => l.level === 'error'), [], 'nothing logged as an error');
  const debug = live.debugLogs();
  assert.ok(debug.some((l) => l.msg === 'request aborted by the client'), JSON.stringify(debug));
  assert.equal((await live.call('GET', `/v2/volume/${volumeId}`)).status, 200);
});

test('a request that arrives on an open connection while the region shuts down answers a BCE 503 ServiceUnavailable', async () => {
  const other = await startLiveRegion();
  try {
    const socket = await openSocket(other.port);
    const received: Buffer[] = [];
    socket.on('data', (d) => received.push(d));
    // A request in flight (its body not all sent) keeps the connection from being idle at close.
    const body = Buffer.from(JSON.stringify({ cdsSizeInGB: 1 }));
    const req = signedRequest({ method: 'POST', url: '/v2/volume', body, keys: aliceKeys, host: `127.0.0.1:${other.port}` });
    socket.write(`POST /v2/volume HTTP/1.1\r\n${Object.entries(req.headers).map(([k, v]) => `${k}: ${v}`).join('\r\n')}\r\n\r\n`);
    socket.write(body.subarray(0, 4));
    await new Promise((r) => setTimeout(r, 200));
    const closing = other.app.close();
    await new Promise((r) => setTimeout(r, 200));
    // The rest of the body, and a second request pipelined behind it.
    socket.write(Buffer.concat([body.subarray(4), Buffer.from('GET /healthz HTTP/1.1\r\nHost: h\r\n\r\n')]));
    await new Promise((r) => socket.once('close', r));
    await closing;
    const text = Buffer.concat(received).toString('latin1');
    const first = parseResponse(text)!;
    assert.equal(first.status, 200, text);
    const second = parseResponse(text.slice(text.indexOf('HTTP/1.1', 10)))!;
    assertBceRaw({ ...second, closed: true, closedAfterMs: 0 }, 503, 'ServiceUnavailable');
    assert.equal(second.headers.connection, 'close');
  } finally {
    await other.close();
  }
});
