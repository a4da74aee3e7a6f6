/**
 * Region-to-region endpoints under /internal/v1. They accept only the regions' service credential
 * (`snapferry-region-<name>` signed with the shared region secret): a tenant's keys are unknown
 * here and answer InvalidAccessKeyId. Also the operator's admin calls (scrub, gc, check), with the same
 * credential. A request with a body must carry a signed `x-bce-content-sha256` (MissingDigest), and
 * nothing of a body that does not match it is applied (BadDigest).
 */
import { createHash } from 'node:crypto';
import type { Readable } from 'node:stream';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { CHUNK_BATCH_HEADER, CHUNK_BATCH_MAX_PARTS, parseChunkBatch, type ChunkBatchPart } from '../domain/chunk-batch.ts';
import { ApiError } from '../domain/errors.ts';
import { MAX_DISK_GB } from '../domain/volume.ts';
import type { BodyLease, IncomingCopyService } from '../services/incoming-copy-service.ts';
import { authenticate, type CredentialDirectory } from './authenticate.ts';
import { CONTENT_SHA256_HEADER, hasBody, parseBodyDigests } from './body-guard.ts';
import { MAX_JSON_BODY, readJsonBody, reqString } from './json-input.ts';
import { bodyStream, readWholeBody } from './route-kit.ts';

/** What the admin routes can do; provided by main.ts. */
export interface AdminOperations {
  scrub(): Promise<unknown>;
  gc(): Promise<unknown>;
  /** Integrity check of the region (services/region-integrity.ts); changes nothing. */
  check(): Promise<unknown>;
}

export interface InternalRouteDeps {
  services: CredentialDirectory;
  incoming: IncomingCopyService;
  admin: AdminOperations;
  chunkSize: number;
  chunkEncodingHeader: string;
  /** Body limit of a manifest part upload (the protocol's part size). */
  manifestPartMaxBytes: number;
  now: () => number;
}

/**
 * Raw bodies of internal calls are bounded before they are buffered: a chunk (plus compression
 * slack) or a manifest part. A Content-Length above the limit is refused without reading the body.
 */
async function readRaw(req: FastifyRequest, limit: number): Promise<Buffer> {
  const declared = Number(req.headers['content-length']);
  if (Number.isFinite(declared) && declared > limit) throw new ApiError('EntityTooLarge', `The body has ${declared} bytes; at most ${limit} are accepted here.`);
  const parts: Buffer[] = [];
  let size = 0;
  for await (const part of bodyStream(req)) {
    size += (part as Buffer).length;
    if (size > limit) throw new ApiError('EntityTooLarge', `The body exceeds ${limit} bytes.`);
    parts.push(part as Buffer);
  }
  return Buffer.concat(parts, size);
}

/** SHA-256 of no bytes: the digest of a request without a body. */
const EMPTY_SHA256 = 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855';

/**
 * A chunk upload's body, read as it is (bounded, not yet verified) into one buffer lent by the
 * incoming-copy service (reused between uploads): the service (`receiveChunk`) checks it against its
 * signed SHA-256 before acting on it, with the hash that also verifies the chunk, off the event loop.
 * Declared digests other than the SHA-256 (a Content-MD5) are checked here by the generic guard
 * instead, as on every other route. The caller releases the lease once `receiveChunk` has settled.
 */
async function readChunkBody(req: FastifyRequest, limit: number, lease: (length: number) => BodyLease): Promise<{ body: BodyLease; sha256: string }> {
  const digests = parseBodyDigests(req.headers); // InvalidDigest on a malformed header, before any byte is read
  const sha256 = digests.sha256?.toString('hex') ?? EMPTY_SHA256;
  if (digests.md5 !== null) return { body: { buffer: await readRaw(req, limit), release: () => undefined }, sha256 };
  const declared = Number(req.headers['content-length']);
  if (Number.isFinite(declared) && declared > limit) throw new ApiError('EntityTooLarge', `The body has ${declared} bytes; at most ${limit} are accepted here.`);
  const source = ((req.body as Readable | undefined) ?? req.raw) as Readable;
  if (!Number.isSafeInteger(declared) || declared < 0) return { body: { buffer: await readRaw(req, limit), release: () => undefined }, sha256 };
  // One buffer of the declared length, filled as the socket delivers: no concatenation afterwards.
  const [body] = await fillLeases(source, [declared], lease);
  return { body: body!, sha256 };
}

/**
 * Leases one buffer per length and fills them in order with the whole body (`lengths` add up to
 * its Content-Length); on any failure, a body that ended early included, every lease is released.
 */
async function fillLeases(source: Readable, lengths: readonly number[], lease: (length: number) => BodyLease): Promise<BodyLease[]> {
  const declared = lengths.reduce((n, l) => n + l, 0);
  const leases = lengths.map((l) => lease(l));
  try {
    const size = await fillFrom(source, leases.map((l) => l.buffer), declared);
    if (size !== declared) throw new ApiError('BadRequest', `The body ended after ${size} of its ${declared} bytes.`);
  } catch (e) {
    for (const l of leases) l.release();
    throw e;
  }
  return leases;
}

/**
 * Copies what `source` delivers into `targets`, one after the other (each filled to its length
 * before the next), until it ends; answers the bytes copied (fewer than `declared` when the body
 * ended early or the connection went away). Plain 'data' events, not an async iterator: a chunk
 * arrives in 16 or more pieces, each an iteration's promise and resumption otherwise, on the event
 * loop every upload shares.
 */
function fillFrom(source: Readable, targets: readonly Buffer[], declared: number): Promise<number> {
  return new Promise((resolve, reject) => {
    let size = 0;
    let target = 0;
    let at = 0; // bytes filled of targets[target]
    if (source.readableEnded) return resolve(0);
    const done = (): void => {
      source.off('data', onData);
      source.off('end', onEnd);
      source.off('error', onError);
      source.off('close', onEnd);
    };
    const onData = (piece: Buffer): void => {
      if (size + piece.length > declared) {
        done();
        source.pause(); // the rest is not read: the error answer ends the exchange
        reject(new ApiError('BadRequest', 'The body is longer than its Content-Length.'));
        return;
      }
      for (let from = 0; from < piece.length; ) {
        while (at === targets[target]!.length) {
          target++;
          at = 0;
        }
        const into = targets[target]!;
        const n = Math.min(into.length - at, piece.length - from);
        // `fill` with a buffer of exactly the range's length is one memcpy; `copy` into shared memory
        // goes through V8's byte-wise relaxed-atomic copy (measured: 7-10 % of the event loop in a copy).
        into.fill(n === piece.length ? piece : piece.subarray(from, from + n), at, at + n);
        at += n;
        from += n;
      }
      size += piece.length;
    };
    const onEnd = (): void => {
      done();
      resolve(size);
    };
    const onError = (e: Error): void => {
      done();
      reject(e);
    };
    source.on('data', onData);
    source.once('end', onEnd);
    source.once('error', onError);
    source.once('close', onEnd); // gone before its end: the caller sees the bytes missing
    source.resume();
  });
}

/**
 * A chunk batch's body (domain/chunk-batch.ts), read into one leased buffer per part. Checked before
 * a byte is read: the signed x-bce-content-sha256 is the SHA-256 of the part list (BadDigest
 * otherwise: the list is what the signature covers), and the parts add up to the Content-Length.
 * The caller releases the leases once the parts have been received.
 */
async function readChunkBatchBody(req: FastifyRequest, parts: readonly ChunkBatchPart[], listed: string, lease: (length: number) => BodyLease): Promise<BodyLease[]> {
  const digests = parseBodyDigests(req.headers);
  if (digests.md5 !== null) throw new ApiError('BadRequest', 'A chunk batch carries no Content-MD5: each part is checked against the digest its list gives.');
  if (digests.sha256 === null || !digests.sha256.equals(createHash('sha256').update(listed).digest())) {
    throw new ApiError('BadDigest', `A chunk batch's ${CONTENT_SHA256_HEADER} must be the SHA-256 of its ${CHUNK_BATCH_HEADER} header; nothing of it was applied.`);
  }
  const declared = Number(req.headers['content-length']);
  const total = parts.reduce((n, p) => n + p.length, 0);
  if (declared !== total) throw new ApiError('BadRequest', `The batch's parts add up to ${total} bytes; its Content-Length says ${req.headers['content-length'] ?? 'nothing'}.`);
  return fillLeases(((req.body as Readable | undefined) ?? req.raw) as Readable, parts.map((p) => p.length), lease);
}

const SNAPSHOT_ID = /^s-[A-Za-z0-9]{1,64}$/;

export function internalRoutes(deps: InternalRouteDeps) {
  return (app: FastifyInstance): void => {
    /**
     * `ownBody`: the handler reads the body itself and verifies it against its signed SHA-256
     * before acting on it (the chunk upload); every other route's body is read and verified whole
     * before its handler runs (route-kit.ts).
     */
    const route = (method: 'GET' | 'PUT' | 'POST', url: string, handler: (req: FastifyRequest, params: Record<string, string>) => Promise<unknown>, bodyLimit = MAX_JSON_BODY, ownBody = false): void => {
      app.route({
        method,
        url,
        bodyLimit,
        handler: async (req, reply) => {
          const who = authenticate({ method: req.method, rawUrl: req.raw.url ?? req.url, headers: req.headers }, deps.services, deps.now());
          // Every body between regions carries its signed SHA-256.
          if (hasBody(req.headers) && (!req.headers[CONTENT_SHA256_HEADER] || !who.signedHeaders.includes(CONTENT_SHA256_HEADER))) {
            throw new ApiError('MissingDigest', `A ${req.method} with a body to /internal/v1 must carry a signed ${CONTENT_SHA256_HEADER} header.`);
          }
          if (!ownBody) await readWholeBody(req);
          const params = req.params as Record<string, string>;
          if (params.id !== undefined && !SNAPSHOT_ID.test(params.id)) throw new ApiError('BadRequest', `${JSON.stringify(params.id)} is not a snapshot id.`);
          const result = await handler(req, params);
          // Drain an unread body so keep-alive connections stay usable (an own-body handler read it all).
          if (!ownBody) bodyStream(req).resume();
          return reply.code(200).header('content-type', 'application/json; charset=utf-8').send(JSON.stringify(result ?? {}));
        },
      });
    };

    // Reserve (idempotent; also the source's keep-alive for a copy waiting in its queue).
    route('PUT', '/internal/v1/snapshots/:id', async (req, p) => {
      const json = await readJsonBody(bodyStream(req), true);
      const sizeInGB = json.sizeInGB;
      if (typeof sizeInGB !== 'number' || !Number.isInteger(sizeInGB) || sizeInGB < 1 || sizeInGB > MAX_DISK_GB) {
        throw new ApiError('InappropriateJSON', `sizeInGB must be an integer from 1 to ${MAX_DISK_GB}.`);
      }
      await deps.incoming.reserve(p.id!, {
        accountId: reqString(json, 'accountId'), name: reqString(json, 'name'), desc: typeof json.desc === 'string' ? json.desc : '',
        sizeInGB, storageType: reqString(json, 'storageType'), sourceRegion: reqString(json, 'sourceRegion'), sourceSnapshotId: reqString(json, 'sourceSnapshotId'),
      });
    });
    // The manifest plan: {manifestId, size, parts: [part sha256...]} -> {manifestId, missingParts: [index...]}.
    route('POST', '/internal/v1/snapshots/:id/manifest', async (req, p) => {
      const json = await readJsonBody(bodyStream(req), true);
      const { manifestId, size, parts } = json;
      if (typeof manifestId !== 'string') throw new ApiError('InappropriateJSON', 'manifestId must be a string.');
      if (typeof size !== 'number') throw new ApiError('InappropriateJSON', 'size must be a number.');
      if (!Array.isArray(parts) || parts.some((x) => typeof x !== 'string')) throw new ApiError('InappropriateJSON', 'parts must be an array of part ids.');
      return deps.incoming.planManifest(p.id!, manifestId, size, parts as string[]);
    });
    route('PUT', '/internal/v1/snapshots/:id/manifest/parts/:partId', async (req, p) => {
      await deps.incoming.receiveManifestPart(p.id!, p.partId!, await readRaw(req, deps.manifestPartMaxBytes));
    }, deps.manifestPartMaxBytes);
    route('POST', '/internal/v1/snapshots/:id/chunks/missing', async (req, p) => {
      const json = await readJsonBody(bodyStream(req), true);
      const ids = json.ids;
      if (!Array.isArray(ids) || ids.length > 10_000 || ids.some((x) => typeof x !== 'string')) throw new ApiError('InappropriateJSON', 'ids must be an array of at most 10000 chunk ids.');
      return { missing: await deps.incoming.missing(p.id!, ids as string[]) };
    });
    const chunkBodyLimit = deps.chunkSize + (deps.chunkSize >> 4) + 4096;
    route('PUT', '/internal/v1/snapshots/:id/chunks/:chunkId', async (req, p) => {
      const { body, sha256 } = await readChunkBody(req, chunkBodyLimit, (n) => deps.incoming.leaseBodyBuffer(n));
      const encoding = String(req.headers[deps.chunkEncodingHeader] ?? 'raw');
      try {
        // Verified against `sha256` there before anything of it is kept (BadDigest otherwise).
        await deps.incoming.receiveChunk(p.id!, p.chunkId!, body.buffer, encoding, sha256);
      } finally {
        body.release();
      }
    }, chunkBodyLimit, true);
    // Several chunks in one upload (domain/chunk-batch.ts): each part is received as a single upload
    // is, and answered on its own (a part damaged in transit fails alone; the source resends it).
    route('PUT', '/internal/v1/snapshots/:id/chunks', async (req, p) => {
      const listed = String(req.headers[CHUNK_BATCH_HEADER] ?? '');
      const parts = parseChunkBatch(listed, chunkBodyLimit);
      const bodies = await readChunkBatchBody(req, parts, listed, (n) => deps.incoming.leaseBodyBuffer(n));
      try {
        return { results: await deps.incoming.receiveBatch(p.id!, parts, bodies.map((b) => b.buffer)) };
      } finally {
        for (const b of bodies) b.release();
      }
    }, CHUNK_BATCH_MAX_PARTS * chunkBodyLimit, true);
    route('PUT', '/internal/v1/snapshots/:id/progress', async (req, p) => {
      const json = await readJsonBody(bodyStream(req), true);
      if (typeof json.progress !== 'number' || !Number.isFinite(json.progress)) throw new ApiError('InappropriateJSON', 'progress must be a number.');
      await deps.incoming.progress(p.id!, json.progress);
    });
    route('POST', '/internal/v1/snapshots/:id/commit', async (_req, p) => deps.incoming.commit(p.id!));
    route('POST', '/internal/v1/snapshots/:id/fail', async (req, p) => {
      const json = await readJsonBody(bodyStream(req), false);
      await deps.incoming.fail(p.id!, typeof json.reason === 'string' ? json.reason.slice(0, 1000) : 'the source region gave up');
    });
    route('POST', '/internal/v1/admin/scrub', async () => deps.admin.scrub());
    route('POST', '/internal/v1/admin/gc', async () => deps.admin.gc());
    route('POST', '/internal/v1/admin/check', async () => deps.admin.check());
  };
}
