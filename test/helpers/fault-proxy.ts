/**
 * An HTTP proxy between two regions that counts, damages, slows or holds what passes through:
 * - counts the raw TCP bytes the source sends through it (headers and bodies: the bytes on the wire),
 *   and every chunk upload with the destination's answer. A chunk batch (several chunks in one
 *   request, src/domain/chunk-batch.ts) counts as its parts, each with the destination's answer
 *   for that part: tests count chunks, however the source groups them into requests;
 * - flips one byte in the body of the next N chunk uploads (in a batch: of the next N parts; the
 *   signature does not cover bodies, so a flipped byte is exactly what a bad link does);
 * - delays every chunk upload, or holds the uploads of chosen copies until released;
 * - answers chunk batches as a region without the route does, or garbles a batch's 2xx answer;
 * - remembers in which order copies sent their first manifest plan (the order they started in).
 * Everything else is forwarded unchanged. The destination may be down: the proxy then answers 502.
 */
import { createServer, request, type Server } from 'node:http';
import { CHUNK_BATCH_HEADER } from '../../src/domain/chunk-batch.ts';
import type { AddressInfo, Socket } from 'node:net';

/** `PUT /internal/v1/snapshots/{copy}/chunks/{chunk}` */
const CHUNK_PUT = /^\/internal\/v1\/snapshots\/([^/]+)\/chunks\/([0-9a-f]{64})/;
/** `PUT /internal/v1/snapshots/{copy}/chunks`: a batch, its parts listed in CHUNK_BATCH_HEADER */
const CHUNK_BATCH_PUT = /^\/internal\/v1\/snapshots\/([^/?]+)\/chunks(?:\?|$)/;

/** One chunk of an upload: its id and where its bytes are in the request's body. */
interface UploadPart {
  chunkId: string;
  start: number;
  end: number;
}

/** The chunks a PUT carries (one for a single upload, the listed parts for a batch), or null for any other request. */
function chunkUploadOf(method: string | undefined, url: string, headers: Record<string, unknown>, bodyLength: number): { copyId: string; parts: UploadPart[] } | null {
  if (method !== 'PUT') return null;
  const single = CHUNK_PUT.exec(url);
  if (single) return { copyId: single[1]!, parts: [{ chunkId: single[2]!, start: 0, end: bodyLength }] };
  const batch = CHUNK_BATCH_PUT.exec(url);
  if (!batch) return null;
  const parts: UploadPart[] = [];
  let at = 0;
  for (const item of String(headers[CHUNK_BATCH_HEADER] ?? '').split(',')) {
    const [chunkId, , length] = item.split(':');
    const end = Math.min(bodyLength, at + (Number(length) || 0));
    parts.push({ chunkId: chunkId ?? '', start: at, end });
    at = end;
  }
  return { copyId: batch[1]!, parts };
}
const MANIFEST_PLAN = /^\/internal\/v1\/snapshots\/([^/?]+)\/manifest(?:\?|$)/;

export interface ChunkUpload {
  copyId: string;
  chunkId: string;
  /** The destination's HTTP status, 502 when it was unreachable. */
  status: number;
  bodyBytes: number;
}

export interface FaultProxy {
  url: string;
  port: number;
  /** Damage the body of the next `n` chunk uploads. */
  corruptNextChunks(n: number): void;
  /** Delay each chunk upload by this many ms (0 = none). */
  setChunkDelay(ms: number): void;
  corrupted(): number;
  /** Raw bytes received from the source since the last reset (TCP payload: headers and bodies). */
  bytesIn(): number;
  /** Chunk uploads forwarded (and answered) since the last reset, in order. */
  uploads(): ChunkUpload[];
  /** The chunk upload requests received since the last reset, in order: chunks in each, and whether it was a batch. */
  requests(): Array<{ copyId: string; chunks: number; batch: boolean }>;
  /** Answer chunk batches as an older region does, as a route it does not have (404 NoSuchRoute), while `on`. */
  refuseBatches(on: boolean): void;
  /** Replace the body of the next `n` 2xx batch answers with text that is no answer (as a broken proxy might); the parts stay stored. */
  garbleNextBatchAnswers(n: number): void;
  /**
   * Called when the destination has answered a chunk upload, before the source gets the answer
   * (awaited): to kill a process or lose a blob at an exact point.
   */
  onUpload(fn: ((u: ChunkUpload, all: ChunkUpload[]) => void | Promise<void>) | null): void;
  resetCounts(): void;
  /** Answer the next `n` chunk uploads with this status (not forwarded), e.g. 503: a transient failure. */
  failNextChunks(n: number, status?: number): void;
  /** Hold chunk uploads of these copies until `release` (a held upload waits, its connection open). */
  hold(copyIds: Iterable<string>): void;
  /** Hold the chunk uploads of every copy not released (or all, when `on` is false again: none). */
  holdAll(on: boolean): void;
  /** Lets a copy's uploads through from now on (every copy's, without an id). */
  release(copyId?: string): void;
  /** Copies held uploads are waiting for, now. */
  heldCopies(): Set<string>;
  /** Chunk uploads received from the source and not yet answered. */
  inflight(): number;
  /** Copy ids in the order their first manifest plan passed through. */
  startOrder(): string[];
  close(): Promise<void>;
}

export async function startFaultProxy(targetPort: number): Promise<FaultProxy> {
  let toCorrupt = 0;
  let toFail = 0;
  let failStatus = 503;
  let holdEverything = false;
  const released = new Set<string>();
  let corrupted = 0;
  let delayMs = 0;
  let bytesIn = 0;
  let inflight = 0;
  let uploads: ChunkUpload[] = [];
  let requests: Array<{ copyId: string; chunks: number; batch: boolean }> = [];
  let refuseBatches = false;
  let toGarble = 0;
  let onUpload: ((u: ChunkUpload, all: ChunkUpload[]) => void | Promise<void>) | null = null;
  const held = new Set<string>();
  const waiting = new Map<string, Array<() => void>>();
  const started: string[] = [];
  const sockets = new Set<Socket>();

  const server: Server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (d) => chunks.push(d));
    req.on('end', async () => {
      let body = Buffer.concat(chunks);
      const url = req.url ?? '';
      const upload = chunkUploadOf(req.method, url, req.headers, body.length);
      const copyId = upload?.copyId ?? '';
      // Counted until the proxy has recorded the destination's answer, not until the source's socket
      // closes: a killed source leaves its upload going on here, and it may still arrive.
      const isBatch = upload !== null && CHUNK_BATCH_PUT.test(url);
      if (upload) requests.push({ copyId, chunks: upload.parts.length, batch: isBatch });
      if (isBatch && refuseBatches) {
        res.writeHead(404, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ requestId: '', code: 'NoSuchRoute', message: `No API at PUT ${url}.` }));
        return;
      }
      if (upload) inflight += upload.parts.length;
      const plan = req.method === 'POST' ? MANIFEST_PLAN.exec(url) : null;
      if (plan && !started.includes(plan[1]!)) started.push(plan[1]!);
      if (upload && (held.has(copyId) || (holdEverything && !released.has(copyId)))) {
        await new Promise<void>((resolve) => {
          const list = waiting.get(copyId) ?? [];
          list.push(resolve);
          waiting.set(copyId, list);
        });
      }
      if (upload && delayMs > 0) await new Promise((r) => setTimeout(r, delayMs));
      if (upload && toFail > 0) {
        toFail = Math.max(0, toFail - upload.parts.length);
        inflight -= upload.parts.length;
        for (const part of upload.parts) uploads.push({ copyId, chunkId: part.chunkId, status: failStatus, bodyBytes: part.end - part.start });
        res.writeHead(failStatus, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ requestId: '', code: 'ServiceUnavailable', message: 'injected failure' }));
        return;
      }
      if (upload && toCorrupt > 0 && body.length > 0) {
        body = Buffer.from(body);
        for (const part of upload.parts) {
          if (toCorrupt === 0 || part.end === part.start) continue;
          toCorrupt--;
          corrupted++;
          body[part.start + Math.floor((part.end - part.start) / 2)]! ^= 0x40;
        }
      }
      // The hook runs before the source sees the answer, so a test can act at an exact point: once
      // per chunk, a batch's parts one after the other.
      let recorded = false;
      const record = async (status: number, answer: Buffer | null): Promise<void> => {
        if (!upload || recorded) return;
        recorded = true;
        let partStatus: number[] | null = null;
        if (answer && status === 200 && isBatch) {
          try {
            partStatus = (JSON.parse(answer.toString('utf8')) as { results: Array<{ status: number }> }).results.map((r) => r.status);
          } catch {
            partStatus = null;
          }
        }
        let hookError: { error: unknown } | null = null;
        for (const [i, part] of upload.parts.entries()) {
          const u = { copyId, chunkId: part.chunkId, status: partStatus?.[i] ?? status, bodyBytes: part.end - part.start };
          uploads.push(u);
          try {
            if (!hookError) await onUpload?.(u, uploads);
          } catch (error) {
            hookError = { error };
          } finally {
            inflight--;
          }
        }
        if (hookError) throw hookError.error;
      };
      const upstream = request(
        { host: '127.0.0.1', port: targetPort, method: req.method, path: req.url, headers: req.headers },
        (up) => {
          const parts: Buffer[] = [];
          up.on('data', (d: Buffer) => parts.push(d));
          up.once('error', async () => {
            await record(502, null); // the destination died mid-answer
            res.destroy();
          });
          up.once('end', async () => {
            let answer = Buffer.concat(parts);
            await record(up.statusCode ?? 502, answer);
            const headers = { ...up.headers };
            if (isBatch && up.statusCode === 200 && toGarble > 0) {
              toGarble--;
              answer = Buffer.from('<html>upstream said ok</html>');
              delete headers['transfer-encoding'];
              headers['content-length'] = String(answer.length);
            }
            res.writeHead(up.statusCode ?? 502, headers);
            res.end(answer);
          });
        },
      );
      upstream.on('error', async () => {
        await record(502, null);
        if (res.headersSent) {
          res.destroy();
          return;
        }
        res.writeHead(502, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ requestId: '', code: 'BadGateway', message: 'upstream unreachable' }));
      });
      upstream.end(body);
    });
  });
  server.on('connection', (socket: Socket) => {
    sockets.add(socket);
    socket.on('data', (d: Buffer) => (bytesIn += d.length));
    socket.once('close', () => sockets.delete(socket));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  const release = (copyId?: string): void => {
    if (copyId === undefined) {
      holdEverything = false;
      held.clear();
    } else released.add(copyId);
    for (const id of copyId === undefined ? [...waiting.keys()] : [copyId]) {
      held.delete(id);
      for (const go of waiting.get(id) ?? []) go();
      waiting.delete(id);
    }
  };
  return {
    url: `http://127.0.0.1:${port}`,
    port,
    corruptNextChunks: (n) => (toCorrupt += n),
    setChunkDelay: (ms) => (delayMs = ms),
    corrupted: () => corrupted,
    bytesIn: () => bytesIn,
    uploads: () => uploads,
    requests: () => requests,
    refuseBatches: (on) => (refuseBatches = on),
    garbleNextBatchAnswers: (n) => (toGarble += n),
    onUpload: (fn) => (onUpload = fn),
    resetCounts: () => {
      bytesIn = 0;
      uploads = [];
      requests = [];
    },
    failNextChunks: (n, status = 503) => {
      toFail += n;
      failStatus = status;
    },
    holdAll: (on) => {
      holdEverything = on;
      if (!on) release();
    },
    hold: (ids) => {
      for (const id of ids) held.add(id);
    },
    release,
    heldCopies: () => new Set([...waiting.keys()].filter((k) => (waiting.get(k)?.length ?? 0) > 0)),
    inflight: () => inflight,
    startOrder: () => [...started],
    close: () =>
      new Promise<void>((resolve) => {
        release();
        for (const s of sockets) s.destroy();
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
