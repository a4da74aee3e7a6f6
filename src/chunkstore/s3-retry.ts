/**
 * The one place where S3 requests are retried: every request of s3-store.ts goes through
 * `withRetries`, which gives each attempt its own deadline, retries what is transient with
 * exponential backoff and full jitter, and stops at a bounded number of attempts.
 *
 * Transient: throttling (503 SlowDown, 429, ThrottlingException), any 5xx, S3's 400 RequestTimeout,
 * a payload hash mismatch (the bytes were damaged on the way: resending fixes it), an attempt that
 * hit its deadline, and connection failures (reset, refused, broken pipe...). Everything else is
 * permanent and fails at once: wrong credentials (403), a missing bucket (404 NoSuchBucket), a bad
 * request. Callers map the answers that are results rather than failures (404 NoSuchKey, 412) before
 * they reach here as errors, by catching them outside.
 *
 * Full jitter (delay = random(0, min(max, base * 2^n))): many clients throttled at once spread out
 * instead of returning in lockstep. *Rejected:* the SDK's own retry strategy. Its retry quota stops
 * retrying altogether under sustained throttling, its per-attempt timeout does not cover reading the
 * body (a GET that stalls mid-body would hang), and attempts would be invisible to our metrics and
 * tests. The client is built with `maxAttempts: 1` so that only this wrapper retries.
 */
export interface RetryPolicy {
  /** Attempts in all, the first included. */
  maxAttempts: number;
  baseDelayMs: number;
  maxDelayMs: number;
  /** Deadline of one attempt, body included. */
  requestTimeoutMs: number;
}

export const DEFAULT_RETRY_POLICY: RetryPolicy = { maxAttempts: 6, baseDelayMs: 100, maxDelayMs: 5000, requestTimeoutMs: 30_000 };

export interface AttemptFailure {
  operation: string;
  attempt: number;
  error: unknown;
  /** No answer came back (timeout, reset): the request may still have been carried out. */
  ambiguous: boolean;
  willRetry: boolean;
}

export interface RetryHooks {
  /** Called before every attempt after the first; false stops retrying (the last error is thrown). */
  mayAttempt?: () => boolean;
  onAttempt?: (operation: string) => void;
  onFailure?: (failure: AttemptFailure) => void;
}

/** An attempt that hit its deadline. */
export class S3TimeoutError extends Error {
  override name = 'S3TimeoutError';
}

/** A response body shorter than its Content-Length (the connection broke mid-body). */
export class S3TruncatedBodyError extends Error {
  override name = 'S3TruncatedBodyError';
}

/** The request failed for good, after `attempts` attempts. `cause` is the last attempt's error. */
export class S3RequestError extends Error {
  override name = 'S3RequestError';
  constructor(
    readonly operation: string,
    readonly attempts: number,
    readonly status: number | undefined,
    readonly code: string,
    options: { cause: unknown },
  ) {
    super(`S3 ${operation} failed after ${attempts} attempt(s): ${code}${status ? ` (HTTP ${status})` : ''}${describeCause(options.cause)}`, options);
  }
}

const TRANSIENT_CODES = new Set([
  'SlowDown',
  'ThrottlingException',
  'Throttling',
  'TooManyRequests',
  'RequestTimeout',
  'InternalError',
  'ServiceUnavailable',
  'XAmzContentSHA256Mismatch',
  'BadDigest',
  'S3TimeoutError',
  'S3TruncatedBodyError',
  'TimeoutError',
]);
const TRANSIENT_NET = new Set(['ECONNRESET', 'ECONNREFUSED', 'ECONNABORTED', 'EPIPE', 'ETIMEDOUT', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH', 'ENETDOWN', 'UND_ERR_SOCKET']);

export function httpStatus(err: unknown): number | undefined {
  return (err as { $metadata?: { httpStatusCode?: number } } | null)?.$metadata?.httpStatusCode;
}

export function errorCode(err: unknown): string {
  const e = err as { Code?: string; code?: string; name?: string } | null;
  return e?.Code ?? (typeof e?.code === 'string' ? e.code : undefined) ?? e?.name ?? 'Error';
}

export function isTransient(err: unknown): boolean {
  const status = httpStatus(err);
  if (status === 429 || (status !== undefined && status >= 500)) return true;
  if (TRANSIENT_CODES.has(errorCode(err)) || TRANSIENT_CODES.has((err as Error)?.name)) return true;
  const code = (err as NodeJS.ErrnoException)?.code;
  if (code && TRANSIENT_NET.has(code)) return true;
  // Node's own wording for a connection closed before the answer ("socket hang up").
  return status === undefined && /socket hang up|ECONNRESET|EPIPE/i.test((err as Error)?.message ?? '');
}

/** Full-jitter delay before attempt `attempt + 1` (attempt counts from 1). */
export function backoffDelay(policy: RetryPolicy, attempt: number, random: () => number = Math.random): number {
  return Math.floor(random() * Math.min(policy.maxDelayMs, policy.baseDelayMs * 2 ** (attempt - 1)));
}

/**
 * Runs `attempt(signal)` until it succeeds, fails permanently, or `policy.maxAttempts` attempts
 * have failed. Each attempt gets a signal that aborts at its deadline, and is abandoned at the
 * deadline even if it ignores the signal. The last error is thrown as `S3RequestError`.
 */
export async function withRetries<T>(operation: string, policy: RetryPolicy, attempt: (signal: AbortSignal) => Promise<T>, hooks: RetryHooks = {}): Promise<T> {
  for (let n = 1; ; n++) {
    hooks.onAttempt?.(operation);
    try {
      return await withDeadline(policy.requestTimeoutMs, operation, attempt);
    } catch (error) {
      const transient = isTransient(error);
      const willRetry = transient && n < policy.maxAttempts && (hooks.mayAttempt?.() ?? true);
      hooks.onFailure?.({ operation, attempt: n, error, ambiguous: transient && httpStatus(error) === undefined, willRetry });
      if (!willRetry) throw new S3RequestError(operation, n, httpStatus(error), errorCode(error), { cause: error });
      await sleep(backoffDelay(policy, n));
    }
  }
}

async function withDeadline<T>(ms: number, operation: string, fn: (signal: AbortSignal) => Promise<T>): Promise<T> {
  const controller = new AbortController();
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      const err = new S3TimeoutError(`S3 ${operation}: no complete answer within ${ms} ms`);
      controller.abort(err);
      reject(err);
    }, ms);
  });
  try {
    return await Promise.race([fn(controller.signal), deadline]);
  } finally {
    clearTimeout(timer);
  }
}

export const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

function describeCause(cause: unknown): string {
  const msg = (cause as Error)?.message;
  return msg && msg !== 'UnknownError' ? `: ${msg}` : '';
}
