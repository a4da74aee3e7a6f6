/**
 * A chunk batch: several chunks of one copy in one upload between regions
 * (`PUT /internal/v1/snapshots/{id}/chunks`, docs/design.md "Remote copy").
 *
 * The body is the parts' bytes back to back. The header `x-snapferry-chunk-batch` lists the parts
 * in body order, separated by commas, each `<chunk id>:<raw|zstd>:<bytes>:<sha256 of the part's
 * bytes>` (for a raw part the chunk id itself). The request's signed `x-bce-content-sha256` is the
 * SHA-256 of that header's value: it authenticates the list, and the list's digests authenticate
 * every byte of the body, each part checked as a single chunk upload's body is. Why not the
 * SHA-256 of the whole body: that is a second hash of every byte, on both sides (the source sends
 * a raw chunk without hashing it at all: its id is its hash), where the per-part hashes the
 * destination computes anyway already cover the body.
 *
 * Why batches: one request per 1 MiB chunk cost each side a request's work per MiB (signing and
 * checking the signature, the HTTP exchange, the hand-offs to and from the upload thread). A copy
 * of 1 GiB with 4 MiB chunks (a quarter of the requests, and of the chunk files) took a third less
 * CPU than with 1 MiB chunks; batches of 4 took about 10 % less, and were no faster within this VM's
 * noise (docs/benchmarks.md, 2026-12-03 evening).
 */
import { ApiError } from './errors.ts';

export const CHUNK_BATCH_HEADER = 'x-snapferry-chunk-batch';
/** Parts one batch may carry: bounds the destination's buffers per request (16 chunks plus slack). */
export const CHUNK_BATCH_MAX_PARTS = 16;

export type ChunkEncoding = 'raw' | 'zstd';

export interface ChunkBatchPart {
  id: string;
  encoding: ChunkEncoding;
  /** Bytes of the part in the body. */
  length: number;
  /** SHA-256 (hex) of the part's bytes: the chunk id for a raw part. */
  sha256: string;
}

/** What the destination answers for each part, in order: stored (200), or why not. */
export interface ChunkBatchResult {
  status: number;
  code?: string;
  message?: string;
}

const HEX64 = /^[0-9a-f]{64}$/;
const LENGTH = /^[1-9][0-9]{0,9}$/;

export function formatChunkBatch(parts: readonly ChunkBatchPart[]): string {
  return parts.map((p) => `${p.id}:${p.encoding}:${p.length}:${p.sha256}`).join(',');
}

/**
 * The parts `value` lists; BadRequest when it is not a well-formed list of 1 to
 * CHUNK_BATCH_MAX_PARTS parts, each at most `maxPartBytes` long.
 */
export function parseChunkBatch(value: unknown, maxPartBytes: number): ChunkBatchPart[] {
  if (typeof value !== 'string' || value === '') throw new ApiError('BadRequest', `A chunk batch lists its parts in the ${CHUNK_BATCH_HEADER} header.`);
  const items = value.split(',');
  if (items.length > CHUNK_BATCH_MAX_PARTS) throw new ApiError('BadRequest', `A chunk batch carries at most ${CHUNK_BATCH_MAX_PARTS} parts, not ${items.length}.`);
  return items.map((item, i) => {
    const [id, encoding, length, sha256, extra] = item.split(':');
    const where = `Part ${i} of the chunk batch`;
    if (extra !== undefined || !id || !HEX64.test(id) || !sha256 || !HEX64.test(sha256)) {
      throw new ApiError('BadRequest', `${where} must be <chunk id>:<encoding>:<bytes>:<sha256>, with 64 lower-case hex digits for the id and the sha256.`);
    }
    if (encoding !== 'raw' && encoding !== 'zstd') throw new ApiError('BadRequest', `${where} has the unknown encoding ${JSON.stringify(encoding)}.`);
    if (!length || !LENGTH.test(length) || Number(length) > maxPartBytes) throw new ApiError('BadRequest', `${where} must be 1 to ${maxPartBytes} bytes long, not ${JSON.stringify(length)}.`);
    return { id, encoding, length: Number(length), sha256 };
  });
}

/**
 * The per-part answers in the body of a 2xx answer to a batch of `parts` parts, or null when the
 * body is not that (not JSON, not one result per part, a result without a numeric status): an
 * answer the source cannot act on part by part, which the peer client reports as InvalidAnswer.
 */
export function parseChunkBatchAnswer(text: string, parts: number): ChunkBatchResult[] | null {
  let answer: unknown;
  try {
    answer = JSON.parse(text);
  } catch {
    return null;
  }
  const results = (answer as { results?: unknown } | null)?.results;
  if (!Array.isArray(results) || results.length !== parts) return null;
  return results.every(isChunkBatchResult) ? results : null;
}

function isChunkBatchResult(r: unknown): r is ChunkBatchResult {
  if (typeof r !== 'object' || r === null) return false;
  const { status, code, message } = r as Record<string, unknown>;
  return Number.isInteger(status) && (code === undefined || typeof code === 'string') && (message === undefined || typeof message === 'string');
}
