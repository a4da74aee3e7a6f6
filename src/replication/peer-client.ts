/**
 * The source side of region-to-region replication: calls to one destination region's internal
 * endpoints (docs/design.md "Remote copy" has the protocol), signed with the regions' service
 * credential, over keep-alive connections: chunk uploads on node:http connections of their own,
 * sent by a thread of their own (ChunkUploader, upload-thread.ts); manifest parts and the small
 * control calls (reserve, missing, manifest, progress, commit) on two undici pools, so a keep-alive
 * or a "which do you lack" never waits behind bulk uploads.
 *
 * Every body (and every PUT or POST without one) carries its SHA-256 in a signed
 * `x-bce-content-sha256` (BceClient's default); the destination requires it and refuses bytes that
 * do not match (BadDigest) before acting on them.
 *
 * Errors are classified for the copy job: `isTransient` says whether retrying can help.
 */
import { createHash } from 'node:crypto';
import { BceClient, BceError, type BceCredentials } from '../lib/bce-client.ts';
import { CONTENT_SHA256_HEADER, DEFAULT_EXPIRATION_SECONDS, formatTimestamp, sign } from '../lib/bce-auth.ts';
import { CHUNK_BATCH_HEADER, formatChunkBatch, parseChunkBatchAnswer, type ChunkBatchResult, type ChunkEncoding } from '../domain/chunk-batch.ts';
import { UploadThread } from './upload-thread.ts';

export interface ReserveRequest {
  accountId: string;
  name: string;
  desc: string;
  sizeInGB: number;
  storageType: string;
  sourceRegion: string;
  sourceSnapshotId: string;
}

/** What the destination answers to a manifest plan: the indexes of parts it still needs (none: recorded). */
export interface ManifestPlanAnswer {
  manifestId: string;
  missingParts: number[];
}

export const CHUNK_ENCODING_HEADER = 'x-snapferry-chunk-encoding';
export const SERVICE_KEY_PREFIX = 'snapferry-region-';
/**
 * Manifests travel in content-addressed parts of at most this many bytes (the body limit of a part
 * upload at the destination). 32 MiB is a 1 TiB disk's manifest; the largest disk's (32765 GB) is
 * about 1 GiB, 33 parts.
 */
export const MANIFEST_PART_MAX_BYTES = 32 << 20;
/** Parts one manifest plan may list (a plan is a small JSON body; 4096 parts of 32 MiB is 128 GiB). */
export const MANIFEST_MAX_PARTS = 4096;
/** Uploads in flight per peer: 20 copies x 8 chunks each would want 160; these are shared by all copies to the peer. */
const DATA_CONNECTIONS = 32;
const CONTROL_CONNECTIONS = 4;
/** How long a destination that refused a chunk batch as an unknown route gets single uploads only. */
const BATCH_RETRY_MS = 10 * 60_000;
/** A chunk upload with no bytes moving either way for this long is given up (and retried by the copy job). */
const UPLOAD_IDLE_TIMEOUT_MS = 60_000;

export class PeerClient {
  private readonly control: BceClient;
  private readonly data: BceClient;
  private readonly uploads: ChunkUploader;
  /** The upload thread, when this client made it (else its owner closes it). */
  private readonly ownThread: UploadThread | null;
  /** When the destination last answered a batch as a route it does not have. */
  private batchesRefusedAt: number | null = null;

  /** `options.uploadThread`: the region's thread for chunk uploads, shared by its peers; without it the client makes its own. */
  constructor(
    readonly region: string,
    endpoint: string,
    fromRegion: string,
    regionSecret: string,
    options: { connections?: number; uploadThread?: UploadThread } = {},
  ) {
    const credentials = { accessKeyId: `${SERVICE_KEY_PREFIX}${fromRegion}`, secretAccessKey: regionSecret };
    this.control = new BceClient(endpoint, credentials, { connections: CONTROL_CONNECTIONS, pipelining: 1 });
    this.data = new BceClient(endpoint, credentials, { connections: options.connections ?? DATA_CONNECTIONS, pipelining: 1 });
    this.ownThread = options.uploadThread ? null : new UploadThread();
    this.uploads = new ChunkUploader(endpoint, credentials, options.connections ?? DATA_CONNECTIONS, options.uploadThread ?? this.ownThread!);
  }

  /** Creates the destination's `Creating` record, or finds it (idempotent); also a keep-alive. */
  async reserve(destSnapshotId: string, req: ReserveRequest, signal?: AbortSignal): Promise<void> {
    await this.control.json({ method: 'PUT', path: `/internal/v1/snapshots/${destSnapshotId}`, json: req, signal });
  }

  /**
   * Proposes the manifest `manifestId` of `size` bytes as the concatenation of `parts` (their
   * sha256 ids, in order). The destination records it when it can (the manifest, or every part, is
   * there) and otherwise answers which parts to upload first.
   */
  async planManifest(destSnapshotId: string, manifestId: string, size: number, parts: string[], signal?: AbortSignal): Promise<ManifestPlanAnswer> {
    return this.control.json<ManifestPlanAnswer>({ method: 'POST', path: `/internal/v1/snapshots/${destSnapshotId}/manifest`, json: { manifestId, size, parts }, signal });
  }

  async putManifestPart(destSnapshotId: string, partId: string, body: Buffer, signal?: AbortSignal): Promise<void> {
    await damagedInTransit(this.data.json({ method: 'PUT', path: `/internal/v1/snapshots/${destSnapshotId}/manifest/parts/${partId}`, body, headers: { 'content-type': 'application/octet-stream' }, signal }));
  }

  /** The subset of `ids` the destination does not hold (what it holds, it keeps for this copy). */
  async missing(destSnapshotId: string, ids: string[], signal?: AbortSignal): Promise<string[]> {
    const res = await this.control.json<{ missing: string[] }>({ method: 'POST', path: `/internal/v1/snapshots/${destSnapshotId}/chunks/missing`, json: { ids }, signal });
    return res.missing;
  }

  /**
   * Uploads one chunk (raw, or zstd-compressed). `bodySha256`: the body's SHA-256 when the caller
   * knows it without hashing (a raw chunk's id); else the body is hashed here. Either way the
   * destination hashes what arrived and refuses a mismatch (BadDigest, taken as damage in transit).
   */
  putChunk(destSnapshotId: string, id: string, body: Buffer, encoding: 'raw' | 'zstd', signal?: AbortSignal, bodySha256?: string): Promise<void> {
    const sha256 = bodySha256 ?? createHash('sha256').update(body).digest('hex');
    return damagedInTransit(this.uploads.put(`/internal/v1/snapshots/${destSnapshotId}/chunks/${id}`, body, sha256, { 'content-type': 'application/octet-stream', [CHUNK_ENCODING_HEADER]: encoding }, signal)).then(() => undefined);
  }

  /**
   * Whether to send the destination chunk batches: not for BATCH_RETRY_MS after it answered one as
   * a route it does not have (a region running an older version; it may be upgraded meanwhile).
   */
  get takesBatches(): boolean {
    return this.batchesRefusedAt === null || Date.now() - this.batchesRefusedAt >= BATCH_RETRY_MS;
  }

  /**
   * Uploads several chunks in one request (domain/chunk-batch.ts), each part raw or zstd with its
   * bytes' SHA-256 (a raw part's id). Answers each part's result in order; null when the
   * destination has no batch route (then `takesBatches` is false for a while and the caller sends
   * them one by one). A list refused as damaged (BadDigest) answers every part BadDigest; any other
   * request that fails as a whole rejects as `putChunk` does.
   */
  async putChunkBatch(destSnapshotId: string, parts: ReadonlyArray<{ id: string; encoding: ChunkEncoding; body: Buffer; sha256: string }>, signal?: AbortSignal): Promise<ChunkBatchResult[] | null> {
    const listed = formatChunkBatch(parts.map((p) => ({ id: p.id, encoding: p.encoding, length: p.body.length, sha256: p.sha256 })));
    const digest = createHash('sha256').update(listed).digest('hex');
    let text: string;
    try {
      text = await this.uploads.put(`/internal/v1/snapshots/${destSnapshotId}/chunks`, parts.map((p) => p.body), digest, { 'content-type': 'application/octet-stream', [CHUNK_BATCH_HEADER]: listed }, signal);
    } catch (e) {
      if (e instanceof BceError && (e.code === 'NoSuchRoute' || e.code === 'MethodNotAllowed')) {
        this.batchesRefusedAt = Date.now();
        return null;
      }
      // The list did not hash to its signed digest: damaged on the way like a body, so every part
      // is answered as damaged in transit (and sent again on its own).
      if (e instanceof BceError && e.code === 'BadDigest') return parts.map(() => ({ status: e.status, code: 'BadDigest', message: e.message }));
      throw e;
    }
    const results = parseChunkBatchAnswer(text, parts.length);
    // A garbled answer (a proxy on the way, a destination of another version) is a failed upload of
    // every part, retried as a 5xx is: the parts' fate is unknown, and the destination keeps only
    // bytes that hash to their ids, so sending them again is safe.
    if (!results) throw new BceError(502, 'InvalidAnswer', `${this.region} answered a batch of ${parts.length} chunks with no result per chunk: ${JSON.stringify(text.slice(0, 200))}`, null);
    return results;
  }

  async progress(destSnapshotId: string, progress: number, signal?: AbortSignal): Promise<void> {
    await this.control.json({ method: 'PUT', path: `/internal/v1/snapshots/${destSnapshotId}/progress`, json: { progress }, signal });
  }

  async commit(destSnapshotId: string, signal?: AbortSignal): Promise<void> {
    await this.control.json({ method: 'POST', path: `/internal/v1/snapshots/${destSnapshotId}/commit`, signal });
  }

  async fail(destSnapshotId: string, reason: string): Promise<void> {
    await this.control.json({ method: 'POST', path: `/internal/v1/snapshots/${destSnapshotId}/fail`, json: { reason } });
  }

  async close(): Promise<void> {
    await Promise.allSettled([this.ownThread?.close(), this.control.close(), this.data.close()]);
  }
}

/**
 * Signed PUTs of chunk bodies, sent by an upload thread (upload-thread.ts) over node:http keep-alive
 * connections of its own, signed here exactly as BceClient signs: bce-auth-v1 over host,
 * content-length, content-type and every x-bce-* header, the body's SHA-256 among them. Not undici:
 * in the one-process layout, where the destination's server shares the process, undici's uploads
 * of 1 MiB bodies set off a full garbage collection every 20-30 MiB (measured: 40-56 per GiB,
 * against none for node:http doing the same uploads).
 */
class ChunkUploader {
  private readonly url: URL;

  constructor(
    endpoint: string,
    private readonly credentials: BceCredentials,
    private readonly connections: number,
    private readonly thread: UploadThread,
  ) {
    this.url = new URL(endpoint);
  }

  /**
   * PUT `body` (or its pieces, in order) to `path` with `sha256` as its signed x-bce-content-sha256;
   * resolves with the answer's body on a 2xx, rejects with a BceError otherwise (status 0: no answer).
   */
  put(path: string, body: Buffer | readonly Buffer[], sha256: string, extra: Record<string, string>, signal?: AbortSignal): Promise<string> {
    const length = Buffer.isBuffer(body) ? body.length : body.reduce((n, b) => n + b.length, 0);
    const headers: Record<string, string> = {
      host: this.url.host, 'x-bce-date': formatTimestamp(Date.now()), 'content-length': String(length), [CONTENT_SHA256_HEADER]: sha256, ...extra,
    };
    headers.authorization = sign({
      method: 'PUT', path, query: [], headers, signedHeaders: null,
      accessKeyId: this.credentials.accessKeyId, secretAccessKey: this.credentials.secretAccessKey,
      timestamp: headers['x-bce-date']!, expirationSeconds: DEFAULT_EXPIRATION_SECONDS,
    });
    return this.thread.put({ origin: this.url.origin, path, headers, body, connections: this.connections, idleMs: UPLOAD_IDLE_TIMEOUT_MS }, signal);
  }
}

/**
 * A chunk or manifest part refused for its body digest (BadDigest) was damaged on the way, exactly as
 * one that does not hash to its id (ChunkDigestMismatch): the copy job sends it again either way.
 */
async function damagedInTransit<T>(call: Promise<T>): Promise<T> {
  try {
    return await call;
  } catch (e) {
    if (e instanceof BceError && e.code === 'BadDigest') throw new BceError(e.status, 'ChunkDigestMismatch', `the body hash did not match at the destination (BadDigest): ${e.message}`, e.requestId);
    throw e;
  }
}

/**
 * Codes that mean "not now" rather than "never": a network failure, a 5xx, a credential or clock
 * problem an operator can fix, chunks or a manifest to send again, a body damaged on the way.
 */
const TRANSIENT_CODES = new Set(['ChunksMissing', 'ManifestMissing', 'ChunkDigestMismatch', 'BadDigest', 'InvalidAccessKeyId', 'SignatureDoesNotMatch', 'AccessDenied', 'RequestExpired']);

export function isTransient(e: unknown): boolean {
  if (!(e instanceof BceError)) return true; // local I/O hiccups are retried; data loss is classified by the caller
  return e.status === 0 || e.status >= 500 || TRANSIENT_CODES.has(e.code);
}

export function errorCode(e: unknown): string | null {
  return e instanceof BceError ? e.code : null;
}
