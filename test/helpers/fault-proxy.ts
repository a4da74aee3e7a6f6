/**
 * An HTTP proxy between two regions that can damage or slow what passes through: flip one byte in
 * the body of the next N chunk uploads, or delay every chunk upload. It forwards everything else
 * unchanged (the signature does not cover bodies, so a flipped byte is exactly what a bad link does).
 */
import { createServer, request, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';

export interface FaultProxy {
  url: string;
  /** Damage the body of the next `n` PUT /internal/v1/chunks/... requests. */
  corruptNextChunks(n: number): void;
  /** Delay each chunk upload by this many ms (0 = none). */
  setChunkDelay(ms: number): void;
  corrupted(): number;
  close(): Promise<void>;
}

export async function startFaultProxy(targetPort: number): Promise<FaultProxy> {
  let toCorrupt = 0;
  let corrupted = 0;
  let delayMs = 0;
  const server: Server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (d) => chunks.push(d));
    req.on('end', async () => {
      let body = Buffer.concat(chunks);
      const isChunk = req.method === 'PUT' && (req.url ?? '').startsWith('/internal/v1/chunks/');
      if (isChunk && delayMs > 0) await new Promise((r) => setTimeout(r, delayMs));
      if (isChunk && toCorrupt > 0 && body.length > 0) {
        toCorrupt--;
        corrupted++;
        body = Buffer.from(body);
        body[Math.floor(body.length / 2)]! ^= 0x40;
      }
      const upstream = request(
        { host: '127.0.0.1', port: targetPort, method: req.method, path: req.url, headers: req.headers },
        (up) => {
          res.writeHead(up.statusCode ?? 502, up.headers);
          up.pipe(res);
        },
      );
      upstream.on('error', () => {
        res.writeHead(502, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ requestId: '', code: 'BadGateway', message: 'upstream unreachable' }));
      });
      upstream.end(body);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    corruptNextChunks: (n) => (toCorrupt += n),
    setChunkDelay: (ms) => (delayMs = ms),
    corrupted: () => corrupted,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
