/**
 * The upload thread (src/replication/upload-thread.ts) against a real HTTP server on loopback: what
 * arrives is exactly what was handed over (shared and plain memory), answers become the same
 * BceErrors the copy job classifies, and every way an upload can end without an answer (refused,
 * aborted, the thread closed under it) rejects as a connection failure (status 0: transient).
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { alignedSharedMemory } from '../src/lib/aligned-memory.ts';
import { BceError } from '../src/lib/bce-client.ts';
import { UploadThread } from '../src/replication/upload-thread.ts';

type Handler = (req: IncomingMessage, body: Buffer, res: ServerResponse) => void;
let server: Server;
let origin: string;
let handler: Handler = (_req, _body, res) => res.end();
/** Requests whose connection closed before the server answered them. */
let cutOff = 0;

before(async () => {
  server = createServer((req, res) => {
    const parts: Buffer[] = [];
    req.on('data', (d: Buffer) => parts.push(d));
    req.on('end', () => handler(req, Buffer.concat(parts), res));
    res.on('close', () => {
      if (!res.writableFinished) cutOff++;
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  origin = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});
after(async () => {
  server.closeAllConnections();
  await new Promise((r) => server.close(r));
});

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');
const request = (body: Buffer, path = '/internal/v1/x') => ({ origin, path, headers: { 'content-length': String(body.length), 'x-test': 'yes' }, body, connections: 4, idleMs: 10_000 });

test('bodies arrive byte for byte with their headers, from shared memory and from plain buffers', async () => {
  const thread = new UploadThread();
  const seen = new Map<string, { sha: string; header: string | undefined }>();
  handler = (req, body, res) => {
    seen.set(req.url!, { sha: sha(body), header: req.headers['x-test'] as string | undefined });
    res.end();
  };
  try {
    const shared = Buffer.from(alignedSharedMemory(1 << 20), 0, 1 << 20);
    randomBytes(1 << 20).copy(shared);
    const view = shared.subarray(4096, 4096 + 300_000); // an offset into the shared memory
    const plain = randomBytes(70_000);
    // A body in pieces (a chunk batch's parts), shared and plain mixed: sent in order, back to back.
    const pieces = [view, plain, shared.subarray(0, 5000)];
    await Promise.all([
      thread.put(request(shared, '/a')), thread.put(request(view, '/b')), thread.put(request(plain, '/c')), thread.put(request(Buffer.alloc(0), '/d')),
      thread.put({ ...request(Buffer.concat(pieces), '/e'), body: pieces }),
    ]);
    assert.deepEqual(seen.get('/e'), { sha: sha(Buffer.concat(pieces)), header: 'yes' });
    assert.deepEqual(seen.get('/a'), { sha: sha(shared), header: 'yes' });
    assert.deepEqual(seen.get('/b'), { sha: sha(view), header: 'yes' });
    assert.deepEqual(seen.get('/c'), { sha: sha(plain), header: 'yes' });
    assert.deepEqual(seen.get('/d'), { sha: sha(Buffer.alloc(0)), header: 'yes' });
  } finally {
    await thread.close();
  }
});

test('a 2xx answer\'s body comes back to the caller', async () => {
  const thread = new UploadThread();
  handler = (_req, _body, res) => {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ results: [{ status: 200 }] }));
  };
  try {
    assert.equal(await thread.put(request(randomBytes(1000))), JSON.stringify({ results: [{ status: 200 }] }));
  } finally {
    await thread.close();
  }
});

test('a refusal in BCE format becomes a BceError with its code, message and request id; any other answer keeps its text', async () => {
  const thread = new UploadThread();
  try {
    handler = (_req, _body, res) => {
      res.writeHead(400, { 'content-type': 'application/json', 'x-bce-request-id': 'from-header' });
      res.end(JSON.stringify({ requestId: 'r-1', code: 'ChunkDigestMismatch', message: 'the bytes hash to something else' }));
    };
    await assert.rejects(thread.put(request(randomBytes(1000))), (e: unknown) => e instanceof BceError && e.status === 400 && e.code === 'ChunkDigestMismatch' && e.message.includes('hash to something else') && e.requestId === 'r-1');
    handler = (_req, _body, res) => {
      res.writeHead(502, { 'x-bce-request-id': 'from-header' });
      res.end('bad gateway, not json');
    };
    await assert.rejects(thread.put(request(randomBytes(1000))), (e: unknown) => e instanceof BceError && e.status === 502 && e.code === 'HTTP502' && e.message === 'bad gateway, not json' && e.requestId === 'from-header');
  } finally {
    await thread.close();
  }
});

test('no answer is a connection failure (status 0): refused, aborted in flight, aborted before, and the thread closed under it', async () => {
  const thread = new UploadThread();
  try {
    const closed = createServer();
    await new Promise<void>((r) => closed.listen(0, '127.0.0.1', r));
    const deadPort = (closed.address() as AddressInfo).port;
    await new Promise((r) => closed.close(r));
    const connectionFailed = (e: unknown): boolean => e instanceof BceError && e.status === 0 && e.code === 'ConnectionFailed';
    await assert.rejects(thread.put({ ...request(randomBytes(100)), origin: `http://127.0.0.1:${deadPort}` }), connectionFailed);

    // Held by the server: the abort ends it, and the server sees the connection go.
    handler = () => undefined;
    const before = cutOff;
    const controller = new AbortController();
    const held = thread.put(request(randomBytes(200_000)), controller.signal);
    await new Promise((r) => setTimeout(r, 100));
    controller.abort();
    await assert.rejects(held, connectionFailed);
    await waitFor(() => cutOff > before);

    await assert.rejects(thread.put(request(randomBytes(10)), AbortSignal.abort()), connectionFailed);

    const inFlight = thread.put(request(randomBytes(10)));
    await new Promise((r) => setTimeout(r, 100));
    await thread.close();
    await assert.rejects(inFlight, connectionFailed);
    await assert.rejects(thread.put(request(randomBytes(10))), connectionFailed);
  } finally {
    await thread.close();
  }
});

test('many uploads under one signal add one abort listener to it, and abort together', async () => {
  const thread = new UploadThread();
  const warnings: string[] = [];
  const onWarning = (w: Error): void => void warnings.push(w.message);
  process.on('warning', onWarning);
  try {
    handler = () => undefined; // never answered: only the abort ends them
    const controller = new AbortController();
    const uploads = Array.from({ length: 40 }, () => thread.put(request(randomBytes(1000)), controller.signal));
    await new Promise((r) => setTimeout(r, 200));
    controller.abort();
    const results = await Promise.allSettled(uploads);
    assert.ok(results.every((r) => r.status === 'rejected' && r.reason instanceof BceError && r.reason.status === 0));
    await new Promise((r) => setImmediate(r));
    assert.deepEqual(warnings.filter((w) => /listener/i.test(w)), []);
  } finally {
    process.off('warning', onWarning);
    await thread.close();
  }
});

async function waitFor(cond: () => boolean, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 20));
  }
}
