/**
 * In a region several processes share, a disk's bytes live with one storage process (its
 * `storageNode`), yet any api process answers for them: a request that must touch the disk file
 * (data reads and writes, extents, resize, rollback, delete) is forwarded, unchanged, to the
 * process that owns the disk, and its answer streamed back. Requests about metadata only (get,
 * list, create, snapshots) are answered where they arrive.
 *
 * The request is forwarded byte for byte: method, path and query, headers (the tenant's
 * `Authorization` and the `Host` it signed), body as a stream. So the owner checks the tenant's
 * signature itself and this process never needs to be trusted with more than the tenant gave it.
 * A forwarded request carries `x-snapferry-forwarded`; a process never forwards one again (two
 * processes that disagree about an owner answer instead of bouncing a request between them).
 */
import { request as httpRequest, type IncomingHttpHeaders } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { pipeline } from 'node:stream/promises';
import type { FastifyInstance } from 'fastify';
import { ApiError } from '../domain/errors.ts';
import { sendError, type Log } from './error-reply.ts';

export const FORWARDED_HEADER = 'x-snapferry-forwarded';

/** Where a disk's requests are answered: here, or at the owner's base URL. */
export type DiskOwner = { here: true } | { url: string };

export interface DiskForwardingOptions {
  /**
   * Where the disk's requests go, for a caller presenting `accessKeyId` (not yet verified: the
   * answering process verifies the signature). Answers `here` for a disk that is not the caller's
   * account's, so that the answer (NoSuchObject) tells nothing about other accounts' disks. Throws
   * ApiError (ServiceUnavailable) when the owner is known but not running.
   */
  ownerOf(volumeId: string, accessKeyId: string | null): Promise<DiskOwner>;
  log: Log;
}

/** The access key id of a `bce-auth-v1/{ak}/...` Authorization header, or null. */
function accessKeyOf(authorization: string | undefined): string | null {
  const m = /^bce-auth-v1\/([^/]+)\//.exec(authorization ?? '');
  return m ? m[1]! : null;
}

/** `/v2/volume/{id}` with a method that changes the disk, or `/v2/volume/{id}/(data|extents)`. */
const DISK_PATH = /^\/v2\/volume\/([^/?]+)(\/(?:data|extents))?\/?$/;

/** Hop-by-hop headers (RFC 9110 7.6.1) are not forwarded. */
const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'upgrade', 'te', 'trailer']);

export function diskForwarding(app: FastifyInstance, o: DiskForwardingOptions): void {
  app.addHook('onRequest', async (req, reply) => {
    if (req.headers[FORWARDED_HEADER] !== undefined) return;
    const path = (req.raw.url ?? req.url).split('?')[0]!;
    const m = DISK_PATH.exec(path);
    if (!m) return;
    if (!m[2] && req.method !== 'PUT' && req.method !== 'DELETE') return; // metadata of the disk: answered here
    let owner: DiskOwner;
    try {
      owner = await o.ownerOf(decodeURIComponent(m[1]!), accessKeyOf(req.headers.authorization));
    } catch (e) {
      sendError(reply, req, e instanceof ApiError ? e : new ApiError('InternalError'), o.log);
      return reply;
    }
    if ('here' in owner) return;
    reply.hijack();
    await forward(req.raw, reply.raw, `${owner.url}${req.raw.url}`, req.id).catch((e: unknown) => {
      o.log('warn', 'forwarding a disk request to its storage process failed', { requestId: req.id, owner: owner.url, err: String(e) });
      if (!reply.raw.headersSent) {
        const body = JSON.stringify({ requestId: req.id, code: 'ServiceUnavailable', message: 'The storage process of this disk cannot be reached; retry later.' });
        reply.raw.writeHead(503, { 'content-type': 'application/json; charset=utf-8', 'x-bce-request-id': req.id, 'content-length': Buffer.byteLength(body) }).end(body);
      } else reply.raw.destroy();
    });
    return reply;
  });
}

async function forward(from: import('node:http').IncomingMessage, to: import('node:http').ServerResponse, target: string, requestId: string): Promise<void> {
  const url = new URL(target);
  const headers: IncomingHttpHeaders = {};
  for (const [k, v] of Object.entries(from.headers)) if (!HOP_BY_HOP.has(k)) headers[k] = v;
  headers[FORWARDED_HEADER] = requestId;
  const send = url.protocol === 'https:' ? httpsRequest : httpRequest;
  await new Promise<void>((resolve, reject) => {
    const out = send(url, { method: from.method, headers }, (res) => {
      const back: Record<string, string | string[]> = {};
      for (const [k, v] of Object.entries(res.headers)) if (v !== undefined && !HOP_BY_HOP.has(k)) back[k] = v;
      to.writeHead(res.statusCode ?? 502, back);
      pipeline(res, to).then(resolve, reject);
    });
    out.once('error', reject);
    // A client that goes away mid-request stops the forwarded one too.
    from.once('aborted', () => out.destroy());
    pipeline(from, out).catch(reject);
  });
}
