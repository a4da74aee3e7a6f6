/**
 * Our data extension (docs/api.md): GET /v2/volume/{id}/data with `Range: bytes=a-b` (206) or
 * without (200, the whole disk); GET /v2/volume/{id}/extents (which ranges hold data);
 * PUT /v2/volume/{id}/data?offset=N with a Content-Length body, or ?offset=N&zeroLength=L with none
 * (the range then reads as zeros). A body with x-bce-content-sha256 or Content-MD5 is verified before
 * any of it reaches the disk.
 */
import type { FastifyInstance } from 'fastify';
import { pipeline } from 'node:stream/promises';
import { ApiError } from '../domain/errors.ts';
import { MAX_DISK_GB } from '../domain/volume.ts';
import { DATA_PIECE, type VolumeDataService } from '../services/volume-data-service.ts';
import { declaresDigest, hasBody, parseBodyDigests } from './body-guard.ts';
import { queryString } from './query-input.ts';
import { bccRoute, bodyStream, readWholeBody, STREAMED, type RouteEnv } from './route-kit.ts';

/** `bytes=a-b`, `bytes=a-` or `bytes=-n` against a size; one range only. */
export function parseRange(header: string | undefined, size: number): { start: number; end: number } | null {
  if (header === undefined) return null;
  const m = /^bytes=(\d*)-(\d*)$/.exec(header.trim());
  if (!m || (m[1] === '' && m[2] === '')) throw new ApiError('InvalidRange', 'Range must be a single "bytes=first-last" range.');
  let start: number;
  let end: number;
  if (m[1] === '') {
    const n = Number(m[2]);
    start = Math.max(0, size - n);
    end = size - 1;
  } else {
    start = Number(m[1]);
    end = m[2] === '' ? size - 1 : Math.min(Number(m[2]), size - 1);
  }
  if (!Number.isSafeInteger(start) || start >= size || end < start) throw new ApiError('InvalidRange', `The range ${header} is outside the disk (${size} bytes).`);
  return { start, end };
}

export function volumeDataRoutes(app: FastifyInstance, env: RouteEnv, data: VolumeDataService): void {
  bccRoute(app, env, ['GET'], '/v2/volume/:id/data', async ({ ctx, params, req, reply }) => {
    // Held until the last byte is sent: the disk is not closed under the stream.
    using held = await data.openForRead(ctx, params.id!);
    const disk = held.disk;
    const range = parseRange(req.headers.range, disk.size);
    const start = range?.start ?? 0;
    const end = range?.end ?? disk.size - 1;
    reply.raw.statusCode = range ? 206 : 200;
    reply.raw.setHeader('x-bce-request-id', req.id);
    reply.raw.setHeader('content-type', 'application/octet-stream');
    reply.raw.setHeader('content-length', end - start + 1);
    reply.raw.setHeader('accept-ranges', 'bytes');
    if (range) reply.raw.setHeader('content-range', `bytes ${start}-${end}/${disk.size}`);
    reply.hijack();
    try {
      // A pipeline, not a hand-made write/drain loop: it waits for 'drain' with one listener for the
      // whole response (a 'close' listener per wait piled up on slow readers), reads the next piece
      // only once the response has drained (memory stays about one piece per response), and stops
      // reading when the client goes away.
      await pipeline(async function* () {
        for (let at = start; at <= end; at += DATA_PIECE) yield await disk.read(at, Math.min(DATA_PIECE, end + 1 - at));
      }, reply.raw);
    } catch {
      // Headers are sent: the only honest signal left is a cut connection (a short body).
      reply.raw.destroy();
    }
    return STREAMED;
  });

  bccRoute(app, env, ['GET'], '/v2/volume/:id/extents', async ({ ctx, params }) => ({ extents: await data.extents(ctx, params.id!) }));

  // The body streams to the disk as it arrives, unless it declares a digest: then it is staged and
  // checked first (VolumeDataService.write, `verifyFirst`), so a body that fails its digest writes nothing.
  bccRoute(app, env, ['PUT'], '/v2/volume/:id/data', async ({ ctx, params, query, req }) => {
    const offsetText = queryString(query, 'offset') ?? '0';
    if (!/^\d+$/.test(offsetText)) throw new ApiError('BadRequest', 'offset must be a non-negative integer.');
    const zeroLength = queryString(query, 'zeroLength');
    if (zeroLength !== null) {
      if (!/^\d+$/.test(zeroLength)) throw new ApiError('BadRequest', 'zeroLength must be a non-negative integer.');
      if (hasBody(req.headers)) throw new ApiError('BadRequest', 'A write with zeroLength takes no body.');
      // A digest header must match the empty body (BadDigest, nothing zeroed), as on every route.
      await readWholeBody(req);
      await data.writeZeroes(ctx, params.id!, Number(offsetText), Number(zeroLength));
      return undefined;
    }
    const lengthHeader = req.headers['content-length'];
    if (lengthHeader === undefined || !/^\d+$/.test(lengthHeader)) throw new ApiError('InvalidHTTPRequest', 'A data write needs a Content-Length header.');
    const body = bodyStream(req);
    await data.write(ctx, params.id!, Number(offsetText), Number(lengthHeader), body, { verifyFirst: declaresDigest(parseBodyDigests(req.headers)) });
    return undefined;
  }, { streamBody: true, bodyLimit: MAX_DISK_GB * 1024 ** 3 });
}
