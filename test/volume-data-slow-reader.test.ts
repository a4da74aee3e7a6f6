/**
 * GET /v2/volume/{id}/data to a slow reader over a real socket: a 256 MiB range read with pauses,
 * so the server waits for 'drain' hundreds of times. It must not pile up listeners (Node's
 * MaxListenersExceededWarning on the response), must keep its memory about one piece per response
 * whatever the range, and must deliver the body intact. A reader that goes away mid-body leaves the
 * server serving.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { connect } from 'node:net';
import { BceClient } from '../src/lib/bce-client.ts';
import { signedRequest } from './helpers/signed-request.ts';
import { spawnServer, type SpawnedServer } from './helpers/spawned-server.ts';

const AK = 'slow-reader-ak-0123456789';
const SK = 'slow-reader-sk';
const MiB = 1 << 20;
const RANGE = 256 * MiB;
/** Where the disk holds data inside the range (the rest reads as zeros). */
const WRITES = [0, 37 * MiB + 512, 128 * MiB, RANGE - MiB].map((offset) => ({ offset, data: randomBytes(MiB) }));

let server: SpawnedServer;
let client: BceClient;
let volumeId: string;

before(async () => {
  // Warnings must reach stderr, whatever the environment running the tests says.
  server = await spawnServer({ regions: ['bj'], env: { SNAPFERRY_ACCESS_KEY_ID: AK, SNAPFERRY_SECRET_ACCESS_KEY: SK, NODE_NO_WARNINGS: '0' } });
  client = new BceClient(server.urls.bj!, { accessKeyId: AK, secretAccessKey: SK });
  [volumeId] = (await client.json<{ volumeIds: string[] }>({ method: 'POST', path: '/v2/volume', json: { cdsSizeInGB: 1 } })).volumeIds;
  for (;;) {
    const { volume } = await client.json<{ volume: { status: string } }>({ method: 'GET', path: `/v2/volume/${volumeId}` });
    if (volume.status === 'Available') break;
    await new Promise((r) => setTimeout(r, 50));
  }
  for (const w of WRITES) await client.json({ method: 'PUT', path: `/v2/volume/${volumeId}/data`, query: { offset: String(w.offset) }, body: w.data });
});
after(async () => {
  await client?.close();
  await server?.dispose();
});

function expectedSha256(): string {
  const h = createHash('sha256');
  const zeros = Buffer.alloc(MiB);
  for (let at = 0; at < RANGE; at += MiB) {
    const w = WRITES.find((x) => x.offset < at + MiB && x.offset + MiB > at);
    if (!w) {
      h.update(zeros);
      continue;
    }
    // Assemble this MiB of the disk from the writes that touch it.
    const piece = Buffer.alloc(MiB);
    for (const x of WRITES) {
      const from = Math.max(x.offset, at);
      const to = Math.min(x.offset + MiB, at + MiB);
      if (from < to) x.data.copy(piece, from - at, from - x.offset, to - x.offset);
    }
    h.update(piece);
  }
  return h.digest('hex');
}

function rssBytes(pid: number): number {
  const kb = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1];
  return Number(kb) * 1024;
}

/**
 * A raw HTTP/1.1 range request on its own socket, read slowly: after every `pauseEvery` bytes the
 * reader stops for `pauseMs`, so the server's socket fills and its writes wait for 'drain'.
 * `giveUpAfter` closes the socket once that many body bytes arrived.
 */
function slowRead(port: number, range: string, opts: { pauseEvery: number; pauseMs: number; giveUpAfter?: number }): Promise<{ status: number; bodyBytes: number; sha256: string }> {
  const url = `/v2/volume/${volumeId}/data`;
  const req = signedRequest({ method: 'GET', url, keys: { ak: AK, sk: SK }, host: `127.0.0.1:${port}`, extraHeaders: { range } });
  const head = [`GET ${url} HTTP/1.1`, ...Object.entries(req.headers).map(([k, v]) => `${k}: ${v}`), 'connection: close', '', ''].join('\r\n');
  return new Promise((resolve, reject) => {
    const socket = connect(port, '127.0.0.1', () => socket.write(head));
    const hash = createHash('sha256');
    let header = Buffer.alloc(0);
    let status = 0;
    let bodyBytes = 0;
    let sinceLastPause = 0;
    const finish = (): void => resolve({ status, bodyBytes, sha256: hash.digest('hex') });
    socket.on('data', (d: Buffer) => {
      let body = d;
      if (!status) {
        header = Buffer.concat([header, d]);
        const end = header.indexOf('\r\n\r\n');
        if (end < 0) return;
        status = Number(/^HTTP\/1\.1 (\d{3})/.exec(header.toString('latin1'))?.[1]);
        body = header.subarray(end + 4);
      }
      hash.update(body);
      bodyBytes += body.length;
      sinceLastPause += body.length;
      if (opts.giveUpAfter !== undefined && bodyBytes >= opts.giveUpAfter) {
        socket.destroy();
        finish();
        return;
      }
      if (sinceLastPause >= opts.pauseEvery) {
        sinceLastPause = 0;
        socket.pause();
        setTimeout(() => socket.resume(), opts.pauseMs);
      }
    });
    socket.once('end', finish);
    socket.once('error', reject);
  });
}

test('a slow reader of a 256 MiB range gets it intact, with no listener pile-up and bounded server memory', async () => {
  const pid = server.child.pid!;
  const baseline = rssBytes(pid);
  let peak = baseline;
  const sampler = setInterval(() => (peak = Math.max(peak, rssBytes(pid))), 25);
  let result;
  try {
    result = await slowRead(server.port, `bytes=0-${RANGE - 1}`, { pauseEvery: 2 * MiB, pauseMs: 10 });
  } finally {
    clearInterval(sampler);
  }
  assert.equal(result.status, 206);
  assert.equal(result.bodyBytes, RANGE);
  assert.equal(result.sha256, expectedSha256(), 'the body arrives intact');
  assert.doesNotMatch(server.stderr(), /MaxListenersExceededWarning|memory leak/, server.stderr());
  // One 1 MiB piece in flight per response; reading the whole range into memory would be 256 MiB.
  assert.ok(peak - baseline < 96 * MiB, `server RSS grew by ${((peak - baseline) / MiB).toFixed(1)} MiB while serving the range`);
});

test('a reader that goes away mid-body costs nothing: no warning, and the server keeps serving', async () => {
  for (let i = 0; i < 3; i++) {
    const r = await slowRead(server.port, `bytes=0-${RANGE - 1}`, { pauseEvery: MiB, pauseMs: 5, giveUpAfter: 12 * MiB });
    assert.equal(r.status, 206);
  }
  const whole = await slowRead(server.port, `bytes=${RANGE - MiB}-${RANGE - 1}`, { pauseEvery: 256 << 10, pauseMs: 1 });
  assert.equal(whole.sha256, createHash('sha256').update(WRITES[3]!.data).digest('hex'));
  assert.doesNotMatch(server.stderr(), /MaxListenersExceededWarning|memory leak/, server.stderr());
});
