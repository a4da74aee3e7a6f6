/**
 * The S3 requests of s3-store.ts, each through the retry wrapper (s3-retry.ts): store-if-absent
 * (single PUT, or multipart above a threshold), whole-object GET, DELETE. No index, no hashing of
 * our own: s3-store.ts decides what these calls mean.
 */
import {
  AbortMultipartUploadCommand,
  CompleteMultipartUploadCommand,
  CreateMultipartUploadCommand,
  DeleteObjectCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListMultipartUploadsCommand,
  PutObjectCommand,
  UploadPartCommand,
  type S3Client,
} from '@aws-sdk/client-s3';
import { mapLimit } from '../lib/map-limit.ts';
import { ChunkNotFoundError } from './chunk-store.ts';
import { errorCode, httpStatus, S3RequestError, S3TruncatedBodyError, withRetries, type RetryHooks, type RetryPolicy } from './s3-retry.ts';

export interface S3ObjectsOptions {
  client: S3Client;
  bucket: string;
  /** `{prefix}{namespace}/` */
  keyPrefix: string;
  policy: RetryPolicy;
  multipartThresholdBytes: number;
  partSizeBytes: number;
  /** Called for every attempt of every request (metrics). */
  hooks: RetryHooks;
}

/** Parts of one multipart upload sent at the same time. */
const PART_CONCURRENCY = 4;

export class S3Objects {
  readonly hooks: RetryHooks;
  private readonly client: S3Client;
  private readonly bucket: string;

  constructor(private readonly o: S3ObjectsOptions) {
    this.client = o.client;
    this.bucket = o.bucket;
    this.hooks = o.hooks;
    if (o.partSizeBytes < 1) throw new RangeError('partSizeBytes must be positive');
  }

  key(id: string): string {
    return `${this.o.keyPrefix}${id.slice(0, 2)}/${id}`;
  }

  /**
   * Stores `data` under `id` unless an object is already there: true when this call stored it.
   * `payloadSha256`, when given, is sent as the signed payload hash (the caller verified that the
   * bytes hash to it), which spares the SDK hashing them again; S3 checks it against what arrives.
   * A retry after a lost answer to a PUT that did store finds the object (412) and answers false.
   */
  async putIfAbsent(id: string, data: Buffer, payloadSha256: string | null): Promise<boolean> {
    if (data.length > this.o.multipartThresholdBytes) return this.putMultipart(id, data);
    const Key = this.key(id);
    try {
      await this.run('PutObject', (abortSignal) => {
        const cmd = new PutObjectCommand({ Bucket: this.bucket, Key, Body: data, ContentLength: data.length, IfNoneMatch: '*' });
        if (payloadSha256) withPayloadHash(cmd, payloadSha256);
        return this.client.send(cmd, { abortSignal });
      });
      return true;
    } catch (err) {
      if (status(err) === 412) return false;
      throw err;
    }
  }

  /** The whole object; `ChunkNotFoundError` when there is none. */
  async get(id: string): Promise<Buffer> {
    const Key = this.key(id);
    try {
      return await this.run('GetObject', async (abortSignal) => {
        const res = await this.client.send(new GetObjectCommand({ Bucket: this.bucket, Key }), { abortSignal });
        const bytes = res.Body ? await res.Body.transformToByteArray() : new Uint8Array(0);
        if (res.ContentLength !== undefined && bytes.length !== res.ContentLength) {
          throw new S3TruncatedBodyError(`GetObject ${Key}: ${bytes.length} of ${res.ContentLength} bytes`);
        }
        return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length);
      });
    } catch (err) {
      if (status(err) === 404 && code(err) !== 'NoSuchBucket') throw new ChunkNotFoundError(id);
      throw err;
    }
  }

  /** Deletes the object (a missing one is no error). `hooks` add to the store's (s3-store.ts: lemma D). */
  async delete(id: string, hooks: RetryHooks = {}): Promise<void> {
    const Key = this.key(id);
    try {
      await this.run('DeleteObject', (abortSignal) => this.client.send(new DeleteObjectCommand({ Bucket: this.bucket, Key }), { abortSignal }), hooks);
    } catch (err) {
      if (status(err) === 404 && code(err) !== 'NoSuchBucket') return;
      throw err;
    }
  }

  /**
   * A large object (a manifest of a huge disk) in parts. HEAD first and skip when present: RGW 16
   * ignores `If-None-Match` on CompleteMultipartUpload, and racing uploads of one id carry the same
   * bytes, so the one that completes last overwrites identical content. On failure the upload is
   * aborted (best effort; a bucket lifecycle rule AbortIncompleteMultipartUpload reclaims parts of
   * a process that died mid-upload).
   */
  private async putMultipart(id: string, data: Buffer): Promise<boolean> {
    const Key = this.key(id);
    if (await this.exists(Key)) return false;
    const { UploadId } = await this.run('CreateMultipartUpload', (abortSignal) =>
      this.client.send(new CreateMultipartUploadCommand({ Bucket: this.bucket, Key }), { abortSignal }),
    );
    if (!UploadId) throw new Error(`CreateMultipartUpload ${Key}: no upload id in the answer`);
    try {
      const size = this.o.partSizeBytes;
      const count = Math.max(1, Math.ceil(data.length / size));
      const parts: Array<{ PartNumber: number; ETag: string }> = [];
      await mapLimit(Array.from({ length: count }, (_, i) => i), PART_CONCURRENCY, async (i) => {
        const Body = data.subarray(i * size, Math.min(data.length, (i + 1) * size));
        const res = await this.run('UploadPart', (abortSignal) =>
          this.client.send(new UploadPartCommand({ Bucket: this.bucket, Key, UploadId, PartNumber: i + 1, Body, ContentLength: Body.length }), { abortSignal }),
        );
        if (!res.ETag) throw new Error(`UploadPart ${Key} #${i + 1}: no ETag in the answer`);
        parts[i] = { PartNumber: i + 1, ETag: res.ETag };
      });
      try {
        await this.run('CompleteMultipartUpload', (abortSignal) =>
          this.client.send(new CompleteMultipartUploadCommand({ Bucket: this.bucket, Key, UploadId, MultipartUpload: { Parts: parts } }), { abortSignal }),
        );
      } catch (err) {
        // A retry after a lost answer finds the upload already completed (NoSuchUpload).
        if (!(code(err) === 'NoSuchUpload' && (await this.exists(Key)))) throw err;
      }
      return true;
    } catch (err) {
      await this.client.send(new AbortMultipartUploadCommand({ Bucket: this.bucket, Key, UploadId })).catch(() => undefined);
      throw err;
    }
  }

  /**
   * Aborts the multipart uploads under this prefix begun before `beforeMs`: parts a process left
   * behind when it died mid-upload, which the bucket would otherwise keep (and bill) for ever. Done
   * by the store itself rather than by a bucket lifecycle rule (AbortIncompleteMultipartUpload),
   * which needs a permission the region's keys may not have; a rule, where an operator sets one,
   * does the same. Answers how many were aborted.
   */
  async abortUploadsBegunBefore(beforeMs: number): Promise<number> {
    let aborted = 0;
    let KeyMarker: string | undefined;
    let UploadIdMarker: string | undefined;
    for (;;) {
      const page = await this.run('ListMultipartUploads', (abortSignal) =>
        this.client.send(new ListMultipartUploadsCommand({ Bucket: this.bucket, Prefix: this.o.keyPrefix, KeyMarker, UploadIdMarker }), { abortSignal }),
      );
      for (const u of page.Uploads ?? []) {
        if (!u.Key || !u.UploadId || !u.Initiated || u.Initiated.getTime() >= beforeMs) continue;
        await this.run('AbortMultipartUpload', (abortSignal) =>
          this.client.send(new AbortMultipartUploadCommand({ Bucket: this.bucket, Key: u.Key, UploadId: u.UploadId }), { abortSignal }),
        ).catch((err: unknown) => {
          if (code(err) !== 'NoSuchUpload') throw err; // finished or aborted meanwhile
        });
        aborted++;
      }
      if (!page.IsTruncated) return aborted;
      KeyMarker = page.NextKeyMarker;
      UploadIdMarker = page.NextUploadIdMarker;
    }
  }

  private async exists(Key: string): Promise<boolean> {
    try {
      await this.run('HeadObject', (abortSignal) => this.client.send(new HeadObjectCommand({ Bucket: this.bucket, Key }), { abortSignal }));
      return true;
    } catch (err) {
      if (status(err) === 404) return false;
      throw err;
    }
  }

  private run<T>(operation: string, attempt: (signal: AbortSignal) => Promise<T>, extra: RetryHooks = {}): Promise<T> {
    return withRetries(operation, this.o.policy, attempt, {
      mayAttempt: extra.mayAttempt,
      onAttempt: (op) => {
        this.hooks.onAttempt?.(op);
        extra.onAttempt?.(op);
      },
      onFailure: (f) => {
        this.hooks.onFailure?.(f);
        extra.onFailure?.(f);
      },
    });
  }
}

/** Sends `sha256Hex` as the signed `x-amz-content-sha256` (the SigV4 signer uses a hash already set). */
function withPayloadHash<C extends { middlewareStack: PutObjectCommand['middlewareStack'] }>(cmd: C, sha256Hex: string): C {
  cmd.middlewareStack.add(
    (next) => async (args) => {
      const req = args.request as { headers?: Record<string, string> };
      if (req.headers) req.headers['x-amz-content-sha256'] = sha256Hex;
      return next(args);
    },
    { step: 'build', name: 'snapferryPayloadHash' },
  );
  return cmd;
}

/** Status and code of the S3 answer behind an error (unwrapping S3RequestError). */
function status(err: unknown): number | undefined {
  return httpStatus(err instanceof S3RequestError ? err.cause : err);
}

function code(err: unknown): string {
  return errorCode(err instanceof S3RequestError ? err.cause : err);
}
