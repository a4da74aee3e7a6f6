/**
 * The source side of region-to-region replication: calls to one destination region's internal
 * endpoints, signed with the regions' service credential, over one keep-alive undici Pool so
 * chunk uploads are pipelined across a few connections.
 *
 * Errors are classified for the copy job: `isTransient` says whether retrying can help.
 */
import { BceClient, BceError } from '../lib/bce-client.ts';

export interface ReserveRequest {
  accountId: string;
  name: string;
  desc: string;
  sizeInGB: number;
  storageType: string;
  sourceRegion: string;
  sourceSnapshotId: string;
}

export const CHUNK_ENCODING_HEADER = 'x-snapferry-chunk-encoding';
export const SERVICE_KEY_PREFIX = 'snapferry-region-';

export class PeerClient {
  private readonly client: BceClient;

  constructor(
    readonly region: string,
    endpoint: string,
    fromRegion: string,
    regionSecret: string,
    options: { connections?: number } = {},
  ) {
    this.client = new BceClient(endpoint, { accessKeyId: `${SERVICE_KEY_PREFIX}${fromRegion}`, secretAccessKey: regionSecret }, { connections: options.connections ?? 4, pipelining: 1 });
  }

  async reserve(destSnapshotId: string, req: ReserveRequest, signal?: AbortSignal): Promise<void> {
    await this.client.json({ method: 'PUT', path: `/internal/v1/snapshots/${destSnapshotId}`, json: req, signal });
  }

  async putManifest(destSnapshotId: string, manifest: Buffer, signal?: AbortSignal): Promise<void> {
    await this.client.json({ method: 'PUT', path: `/internal/v1/snapshots/${destSnapshotId}/manifest`, body: manifest, headers: { 'content-type': 'application/octet-stream' }, signal });
  }

  /** The subset of `ids` the destination does not hold. */
  async missing(ids: string[], signal?: AbortSignal): Promise<string[]> {
    const res = await this.client.json<{ missing: string[] }>({ method: 'POST', path: '/internal/v1/chunks/missing', json: { ids }, signal });
    return res.missing;
  }

  async putChunk(id: string, body: Buffer, encoding: 'raw' | 'zstd', signal?: AbortSignal): Promise<void> {
    await this.client.json({
      method: 'PUT', path: `/internal/v1/chunks/${id}`, body,
      headers: { 'content-type': 'application/octet-stream', [CHUNK_ENCODING_HEADER]: encoding }, signal,
    });
  }

  async progress(destSnapshotId: string, progress: number, signal?: AbortSignal): Promise<void> {
    await this.client.json({ method: 'PUT', path: `/internal/v1/snapshots/${destSnapshotId}/progress`, json: { progress }, signal });
  }

  async commit(destSnapshotId: string, signal?: AbortSignal): Promise<void> {
    await this.client.json({ method: 'POST', path: `/internal/v1/snapshots/${destSnapshotId}/commit`, signal });
  }

  async fail(destSnapshotId: string, reason: string): Promise<void> {
    await this.client.json({ method: 'POST', path: `/internal/v1/snapshots/${destSnapshotId}/fail`, json: { reason } });
  }

  async close(): Promise<void> {
    await this.client.close();
  }
}

/** Codes that mean "not now" rather than "never": a network failure, a 5xx, a credential or clock problem an operator can fix, chunks to resend. */
const TRANSIENT_CODES = new Set(['ChunksMissing', 'ChunkDigestMismatch', 'InvalidAccessKeyId', 'SignatureDoesNotMatch', 'AccessDenied', 'RequestExpired']);

export function isTransient(e: unknown): boolean {
  if (!(e instanceof BceError)) return true; // local I/O hiccups are retried; data loss is classified by the caller
  return e.status === 0 || e.status >= 500 || TRANSIENT_CODES.has(e.code);
}
