/**
 * Slow and idle clients cannot starve signed calls. Against a real listening region, built as
 * main.ts builds it (so with the default limits of region-app.ts): 300 idle sockets and 50
 * slowloris sockets (a request line, then one header byte every 2 s) are opened, then 20 signed
 * calls through the official JavaScript SDK must all succeed within a few seconds, and again later
 * while the hostile sockets are still open. The server closes every slowloris socket once the
 * headers timeout has passed, with a BCE 408 RequestTimeout; the idle ones likewise; an idle
 * keep-alive connection after the keep-alive timeout. Beyond `maxConnections`, connections are
 * closed as they arrive (counted on /metrics) and service resumes once others go.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import type { Socket } from 'node:net';
import { request } from 'undici';
import { DEFAULT_SERVER_LIMITS } from '../src/api/region-app.ts';
import { ALICE } from './helpers/region-harness.ts';
import { openSocket, parseResponse, startLiveRegion, type LiveRegion } from './helpers/live-region.ts';
import { sdkClient, send } from './helpers/sdk.ts';

const IDLE = 300;
const SLOWLORIS = 50;
const CALLS = 20;
let live: LiveRegion;

before(async () => {
  live = await startLiveRegion();
});
after(async () => live?.close());

interface Watched {
  socket: Socket;
  openedAt: number;
  received: Buffer[];
  closedAt: Promise<number>;
}

function watch(socket: Socket): Watched {
  const received: Buffer[] = [];
  socket.on('data', (d) => received.push(d));
  return { socket, openedAt: Date.now(), received, closedAt: new Promise((resolve) => socket.once('close', () => resolve(Date.now()))) };
}

async function signedCalls(n: number): Promise<{ ms: number; slowest: number }> {
  const started = Date.now();
  const times = await Promise.all(Array.from({ length: n }, async (_, i) => {
    const sdk = sdkClient(live.url, ALICE.accessKeyId, ALICE.secretAccessKey);
    const t = Date.now();
    if (i % 4 === 0) {
      const body = await send(sdk, 'POST', '/v2/volume', { body: { cdsSizeInGB: 1, name: `under-attack-${i}` } });
      assert.equal(body.volumeIds.length, 1);
    } else {
      const body = await send(sdk, 'GET', '/v2/volume');
      assert.ok(Array.isArray(body.volumes));
    }
    return Date.now() - t;
  }));
  return { ms: Date.now() - started, slowest: Math.max(...times) };
}

test('300 idle and 50 slowloris sockets: 20 signed SDK calls all succeed within seconds; the server closes the hostile sockets with a BCE 408', async (t) => {
  const { headersTimeoutMs, timeoutCheckIntervalMs } = DEFAULT_SERVER_LIMITS;
  const quiet = await signedCalls(CALLS);
  t.diagnostic(`${CALLS} signed calls, no hostile socket: ${quiet.ms} ms in all, slowest ${quiet.slowest} ms`);
  const idle = await Promise.all(Array.from({ length: IDLE }, async () => watch(await openSocket(live.port))));
  const slow = await Promise.all(Array.from({ length: SLOWLORIS }, async () => watch(await openSocket(live.port))));
  for (const s of slow) s.socket.write('GET /v2/volume HTTP/1.1\r\nHost: 127.0.0.1\r\nx-slow: ');
  const drip = setInterval(() => {
    for (const s of slow) if (!s.socket.destroyed && s.socket.writable) s.socket.write('a');
  }, 2000);
  try {
    const first = await signedCalls(CALLS);
    t.diagnostic(`${CALLS} signed calls with ${IDLE + SLOWLORIS} hostile sockets open: ${first.ms} ms in all, slowest ${first.slowest} ms`);
    assert.ok(first.ms < 5000, `${first.ms} ms`);
    // Again half-way through the headers timeout: the slowloris sockets have kept dripping.
    await new Promise((r) => setTimeout(r, headersTimeoutMs / 2));
    assert.ok(slow.every((s) => !s.socket.destroyed), 'still open before the timeout');
    const second = await signedCalls(CALLS);
    t.diagnostic(`again after ${headersTimeoutMs / 2} ms of dripping: ${second.ms} ms in all, slowest ${second.slowest} ms`);
    assert.ok(second.ms < 5000, `${second.ms} ms`);

    const deadline = headersTimeoutMs + timeoutCheckIntervalMs + 3000;
    const closed = await Promise.all([...slow, ...idle].map((s) => Promise.race([s.closedAt.then((at) => at - s.openedAt), new Promise<null>((r) => setTimeout(() => r(null), deadline))])));
    assert.ok(closed.every((ms) => ms !== null), `${closed.filter((ms) => ms === null).length} hostile sockets still open after ${deadline} ms`);
    const slowClosed = closed.slice(0, SLOWLORIS) as number[];
    t.diagnostic(`slowloris sockets closed after ${Math.min(...slowClosed)}-${Math.max(...slowClosed)} ms (headers timeout ${headersTimeoutMs} ms)`);
    assert.ok(Math.min(...slowClosed) >= headersTimeoutMs - 100, 'not before the headers timeout');
    for (const s of [...slow, ...idle]) {
      const answer = parseResponse(Buffer.concat(s.received).toString('latin1'));
      assert.ok(answer, 'each got an answer before the close');
      assert.equal(answer.status, 408);
      assert.equal(answer.json.code, 'RequestTimeout');
      assert.deepEqual(Object.keys(answer.json).sort(), ['code', 'message', 'requestId']);
      assert.equal(answer.headers['x-bce-request-id'], answer.json.requestId);
    }
  } finally {
    clearInterval(drip);
    for (const s of [...idle, ...slow]) s.socket.destroy();
  }
});

test('an idle keep-alive connection is closed after the keep-alive timeout', async () => {
  const socket = watch(await openSocket(live.port));
  socket.socket.write('GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n');
  const answeredAt = await new Promise<number>((resolve) => socket.socket.once('data', () => resolve(Date.now())));
  const idleFor = (await socket.closedAt) - answeredAt;
  assert.ok(idleFor >= DEFAULT_SERVER_LIMITS.keepAliveTimeoutMs - 200 && idleFor < DEFAULT_SERVER_LIMITS.keepAliveTimeoutMs + 3000, `closed after ${idleFor} ms idle`);
});

test('beyond maxConnections a connection is closed on arrival and counted; service resumes once others close', async () => {
  const capped = await startLiveRegion({ app: { limits: { maxConnections: 20 } } });
  const held: Socket[] = [];
  try {
    for (let i = 0; i < 20; i++) held.push(await openSocket(capped.port));
    const extra = watch(await openSocket(capped.port));
    extra.socket.write('GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n');
    const closedAfter = (await extra.closedAt) - extra.openedAt;
    assert.ok(closedAfter < 2000 && Buffer.concat(extra.received).length === 0, `closed unanswered (after ${closedAfter} ms)`);
    for (const s of held.splice(0, 5)) s.destroy();
    await new Promise((r) => setTimeout(r, 100));
    const res = await request(`${capped.url}/metrics`);
    const text = await res.body.text();
    assert.equal(res.statusCode, 200);
    assert.match(text, /^snapferry_http_connections_refused_total [1-9]\d*$/m);
  } finally {
    for (const s of held) s.destroy();
    await capped.close();
  }
});
