/**
 * Region-to-region endpoints under /internal/v1. They accept only the regions' service credential
 * (`snapferry-region-<name>` signed with the shared region secret): a tenant's keys are unknown
 * here and answer InvalidAccessKeyId. Also the operator's admin calls (scrub, gc), with the same
 * credential.
 */
import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { Readable } from 'node:stream';
import { ApiError } from '../domain/errors.ts';
import type { IncomingCopyService } from '../services/incoming-copy-service.ts';
import { authenticate, type CredentialDirectory } from './authenticate.ts';
import { readJsonBody, reqString } from './json-input.ts';
import { bodyStream } from './route-kit.ts';

/** What the admin routes can do; provided by main.ts. */
export interface AdminOperations {
  scrub(): Promise<unknown>;
  gc(): Promise<unknown>;
}

export interface InternalRouteDeps {
  services: CredentialDirectory;
  incoming: IncomingCopyService;
  admin: AdminOperations;
  chunkSize: number;
  chunkEncodingHeader: string;
  now: () => number;
}

/** Raw bodies of internal calls are bounded: a chunk (plus compression slack) or a manifest. */
async function readRaw(stream: Readable, limit: number): Promise<Buffer> {
  const parts: Buffer[] = [];
  let size = 0;
  for await (const part of stream) {
    size += (part as Buffer).length;
    if (size > limit) throw new ApiError('EntityTooLarge', `The body exceeds ${limit} bytes.`);
    parts.push(part as Buffer);
  }
  return Buffer.concat(parts, size);
}

export function internalRoutes(deps: InternalRouteDeps) {
  return (app: FastifyInstance): void => {
    const route = (method: 'GET' | 'PUT' | 'POST', url: string, handler: (req: FastifyRequest, params: Record<string, string>) => Promise<unknown>): void => {
      app.route({
        method,
        url,
        handler: async (req, reply) => {
          authenticate({ method: req.method, rawUrl: req.raw.url ?? req.url, headers: req.headers }, deps.services, deps.now());
          const result = await handler(req, req.params as Record<string, string>);
          return reply.code(200).header('content-type', 'application/json; charset=utf-8').send(JSON.stringify(result ?? {}));
        },
      });
    };

    route('PUT', '/internal/v1/snapshots/:id', async (req, p) => {
      const json = await readJsonBody(bodyStream(req), true);
      const sizeInGB = json.sizeInGB;
      if (typeof sizeInGB !== 'number' || !Number.isInteger(sizeInGB) || sizeInGB < 1) throw new ApiError('InappropriateJSON', 'sizeInGB must be a positive integer.');
      await deps.incoming.reserve(p.id!, {
        accountId: reqString(json, 'accountId'), name: reqString(json, 'name'), desc: typeof json.desc === 'string' ? json.desc : '',
        sizeInGB, storageType: reqString(json, 'storageType'), sourceRegion: reqString(json, 'sourceRegion'), sourceSnapshotId: reqString(json, 'sourceSnapshotId'),
      });
    });
    route('PUT', '/internal/v1/snapshots/:id/manifest', async (req, p) => ({
      manifestId: await deps.incoming.receiveManifest(p.id!, await readRaw(bodyStream(req), 256 << 20)),
    }));
    route('POST', '/internal/v1/chunks/missing', async (req) => {
      const json = await readJsonBody(bodyStream(req), true);
      const ids = json.ids;
      if (!Array.isArray(ids) || ids.length > 10_000 || ids.some((x) => typeof x !== 'string')) throw new ApiError('InappropriateJSON', 'ids must be an array of at most 10000 chunk ids.');
      return { missing: await deps.incoming.missing(ids as string[]) };
    });
    route('PUT', '/internal/v1/chunks/:id', async (req, p) => {
      const body = await readRaw(bodyStream(req), deps.chunkSize + (deps.chunkSize >> 4) + 4096);
      const encoding = String(req.headers[deps.chunkEncodingHeader] ?? 'raw');
      await deps.incoming.receiveChunk(p.id!, body, encoding);
    });
    route('PUT', '/internal/v1/snapshots/:id/progress', async (req, p) => {
      const json = await readJsonBody(bodyStream(req), true);
      if (typeof json.progress !== 'number') throw new ApiError('InappropriateJSON', 'progress must be a number.');
      await deps.incoming.progress(p.id!, json.progress);
    });
    route('POST', '/internal/v1/snapshots/:id/commit', async (_req, p) => deps.incoming.commit(p.id!));
    route('POST', '/internal/v1/snapshots/:id/fail', async (req, p) => {
      const json = await readJsonBody(bodyStream(req), false);
      await deps.incoming.fail(p.id!, typeof json.reason === 'string' ? json.reason.slice(0, 1000) : 'the source region gave up');
    });
    route('POST', '/internal/v1/admin/scrub', async () => deps.admin.scrub());
    route('POST', '/internal/v1/admin/gc', async () => deps.admin.gc());
  };
}
