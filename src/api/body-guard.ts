/**
 * Request bodies on their way in (docs/api.md "Bodies"): bounded by the route's limit, and checked
 * against their digest headers when they carry one (bcc-api.md §8, BOS's rule):
 *
 *   x-bce-content-sha256: <64 hex digits, the SHA-256 of the body>
 *   Content-MD5:          <base64 of the 16-byte MD5 of the body>   (the Go SDK sends it on every body)
 *
 * The guarded stream fails with `BadDigest` instead of ending when the bytes do not match, so a
 * consumer that acts only once the body has ended (every JSON and internal route, which read the
 * whole body first; the data route's verified write, which stages it) never applies a damaged or
 * swapped body. A malformed header is `InvalidDigest` before any byte is read. When the header is
 * signed (the SDKs' default set signs `content-md5` and every `x-bce-*` header), a replay of the
 * signed request with other bytes is refused.
 */
import { createHash } from 'node:crypto';
import type { IncomingHttpHeaders } from 'node:http';
import { Readable } from 'node:stream';
import { ApiError } from '../domain/errors.ts';
import { CONTENT_SHA256_HEADER } from '../lib/bce-auth.ts';

export { CONTENT_SHA256_HEADER };

export interface BodyDigests {
  sha256: Buffer | null;
  md5: Buffer | null;
}

const SHA256_HEX = /^[0-9a-fA-F]{64}$/;
const MD5_BASE64 = /^[A-Za-z0-9+/]{22}==$/;

function headerValue(headers: IncomingHttpHeaders, name: string): string | null {
  const v = headers[name];
  const text = Array.isArray(v) ? v.join(',') : v;
  return text === undefined || text.trim() === '' ? null : text.trim();
}

/** The digests a request declares for its body (null: not declared). Throws InvalidDigest on a malformed value. */
export function parseBodyDigests(headers: IncomingHttpHeaders): BodyDigests {
  const sha = headerValue(headers, CONTENT_SHA256_HEADER);
  const md5 = headerValue(headers, 'content-md5');
  if (sha !== null && !SHA256_HEX.test(sha)) {
    throw new ApiError('InvalidDigest', `${CONTENT_SHA256_HEADER} must be the 64 hex digits of the body's SHA-256, not ${JSON.stringify(sha.slice(0, 80))}.`);
  }
  if (md5 !== null && !MD5_BASE64.test(md5)) {
    throw new ApiError('InvalidDigest', `Content-MD5 must be the base64 of the body's 16-byte MD5, not ${JSON.stringify(md5.slice(0, 80))}.`);
  }
  return { sha256: sha === null ? null : Buffer.from(sha, 'hex'), md5: md5 === null ? null : Buffer.from(md5, 'base64') };
}

export function declaresDigest(d: BodyDigests): boolean {
  return d.sha256 !== null || d.md5 !== null;
}

/** Whether the request has a body at all (a length above 0, or a chunked one). */
export function hasBody(headers: IncomingHttpHeaders): boolean {
  if (headers['transfer-encoding'] !== undefined) return true;
  const length = headers['content-length'];
  return length !== undefined && length !== '0';
}

/**
 * `source` as handlers read it: at most `limit` bytes (EntityTooLarge: at once when Content-Length
 * says so, else as soon as the bytes pass the limit) and, when digests are declared, failing with
 * BadDigest instead of ending if the bytes do not match. Giving up early never destroys `source`
 * (destroying a request destroys its socket, and the error could not be answered).
 */
export function guardBody(source: Readable, headers: IncomingHttpHeaders, limit: number): Readable {
  const digests = parseBodyDigests(headers);
  const declared = Number(headers['content-length']);
  if (Number.isFinite(declared) && declared > limit) throw new ApiError('EntityTooLarge', `The body has ${declared} bytes; at most ${limit} are accepted here.`);
  const sha256 = digests.sha256 ? createHash('sha256') : null;
  const md5 = digests.md5 ? createHash('md5') : null;
  async function* guarded(): AsyncGenerator<Buffer> {
    let size = 0;
    for await (const chunk of source.iterator({ destroyOnReturn: false })) {
      const buf = chunk as Buffer;
      size += buf.length;
      if (size > limit) throw new ApiError('EntityTooLarge', `The body exceeds ${limit} bytes.`);
      sha256?.update(buf);
      md5?.update(buf);
      yield buf;
    }
    if (sha256 && !sha256.digest().equals(digests.sha256!)) {
      throw new ApiError('BadDigest', `The body (${size} bytes) does not hash to its ${CONTENT_SHA256_HEADER}; nothing of it was applied.`);
    }
    if (md5 && !md5.digest().equals(digests.md5!)) {
      throw new ApiError('BadDigest', `The body (${size} bytes) does not hash to its Content-MD5; nothing of it was applied.`);
    }
  }
  return Readable.from(guarded(), { objectMode: false });
}

/** Reads a (guarded) stream to its end. */
export async function readAll(stream: Readable): Promise<Buffer> {
  const parts: Buffer[] = [];
  let size = 0;
  for await (const part of stream) {
    parts.push(part as Buffer);
    size += (part as Buffer).length;
  }
  return parts.length === 1 ? parts[0]! : Buffer.concat(parts, size);
}
