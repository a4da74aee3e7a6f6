/**
 * The S3 client of s3-store.ts, set up for S3-compatible stores (Ceph RGW, MinIO, Garage, AWS S3),
 * and the bucket check made at open.
 */
import { HeadBucketCommand, S3Client } from '@aws-sdk/client-s3';
import { Agent as HttpAgent } from 'node:http';
import { Agent as HttpsAgent } from 'node:https';
import { errorCode, httpStatus, S3RequestError, withRetries, type RetryHooks, type RetryPolicy } from './s3-retry.ts';

export interface S3ConnectionOptions {
  /** e.g. `http://127.0.0.1:7480` (RGW), `https://s3.eu-west-1.amazonaws.com`. */
  endpoint: string;
  /** Signing region; RGW and MinIO accept any (default `us-east-1`). */
  region?: string;
  accessKeyId: string;
  secretAccessKey: string;
  /** `host/bucket/key` URLs rather than `bucket.host/key`: what RGW and MinIO need. Default true. */
  forcePathStyle?: boolean;
  /** Connections kept open to the endpoint. Default 64. */
  maxSockets?: number;
}

/**
 * - `requestChecksumCalculation`/`responseChecksumValidation: 'WHEN_REQUIRED'`: newer SDKs add
 *   CRC32 trailers to every upload by default, which RGW 16 rejects (`MissingContentLength` on
 *   streamed bodies). We do not need them: every PUT carries its SHA-256 in the signed
 *   `x-amz-content-sha256` header, which RGW and S3 check against the bytes they receive, and every
 *   read is re-hashed against the chunk id.
 * - `maxAttempts: 1`: retries are s3-retry.ts's alone (see there why not the SDK's).
 * - keep-alive agents: a 1 MiB chunk PUT is a few ms on a LAN; a TCP handshake per chunk would cost
 *   a large share of that.
 */
export function createS3Client(o: S3ConnectionOptions): S3Client {
  const maxSockets = o.maxSockets ?? 64;
  return new S3Client({
    endpoint: o.endpoint,
    region: o.region ?? 'us-east-1',
    forcePathStyle: o.forcePathStyle ?? true,
    credentials: { accessKeyId: o.accessKeyId, secretAccessKey: o.secretAccessKey },
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
    maxAttempts: 1,
    requestHandler: {
      httpAgent: new HttpAgent({ keepAlive: true, maxSockets }),
      httpsAgent: new HttpsAgent({ keepAlive: true, maxSockets }),
      connectionTimeout: 10_000,
    },
  });
}

/** The store cannot work with this configuration (wrong keys, no such bucket, endpoint unreachable). */
export class S3ConfigError extends Error {
  override name = 'S3ConfigError';
  constructor(
    readonly reason: 'credentials' | 'no-bucket' | 'unreachable' | 'other',
    message: string,
    options?: { cause: unknown },
  ) {
    super(message, options);
  }
}

/**
 * HeadBucket, so that a misconfigured region fails at open with a sentence saying what is wrong,
 * instead of every later request failing (or a process restarting in a loop on a stack trace).
 * Transient failures are retried like any request first.
 */
export async function checkBucket(client: S3Client, endpoint: string, bucket: string, policy: RetryPolicy, hooks?: RetryHooks): Promise<void> {
  try {
    await withRetries('HeadBucket', policy, (abortSignal) => client.send(new HeadBucketCommand({ Bucket: bucket }), { abortSignal }), hooks);
  } catch (err) {
    const cause = err instanceof S3RequestError ? err.cause : err;
    const status = httpStatus(cause);
    const where = `bucket "${bucket}" at ${endpoint}`;
    if (status === 403 || status === 401) {
      throw new S3ConfigError('credentials', `S3 refused access to ${where} (HTTP ${status}): check the access key id and secret key, and that this user may use the bucket`, { cause: err });
    }
    if (status === 404) {
      throw new S3ConfigError('no-bucket', `S3 ${where} does not exist (HTTP 404): create it first (aws s3 mb s3://${bucket} --endpoint-url ${endpoint}), or fix the bucket name`, { cause: err });
    }
    if (status === undefined) {
      throw new S3ConfigError('unreachable', `cannot reach S3 endpoint ${endpoint} for ${where}: ${(err as Error).message}`, { cause: err });
    }
    throw new S3ConfigError('other', `S3 ${where} is not usable: ${errorCode(cause)} (HTTP ${status})`, { cause: err });
  }
}
