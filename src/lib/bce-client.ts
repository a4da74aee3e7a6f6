/**
 * A small signed HTTP client for BCE-style APIs (bce-auth-v1), over an undici Pool with keep-alive.
 * Used by the CLI (as a tenant) and by regions talking to each other (with the service credential).
 */
import { createHash } from 'node:crypto';
import { Pool, type Dispatcher } from 'undici';
import type { Readable } from 'node:stream';
import { CONTENT_SHA256_HEADER, DEFAULT_EXPIRATION_SECONDS, formatTimestamp, sign } from './bce-auth.ts';

export interface BceCredentials {
  accessKeyId: string;
  secretAccessKey: string;
}

export interface BceRequest {
  method: 'GET' | 'PUT' | 'POST' | 'DELETE';
  path: string;
  /** A null value is a bare flag (`?rollback`). */
  query?: Record<string, string | null | undefined>;
  json?: unknown;
  body?: Buffer | Readable;
  contentLength?: number;
  /**
   * The body's SHA-256 (lower-case hex) when the caller already knows it (a chunk's id is the hash
   * of its bytes): sent as x-bce-content-sha256 instead of hashing the body again. A wrong value
   * makes the server refuse the body (BadDigest), never accept other bytes.
   */
  contentSha256?: string;
  headers?: Record<string, string>;
  signal?: AbortSignal;
}

/** An error answer in BCE's format, or a transport failure (status 0). */
export class BceError extends Error {
  override name = 'BceError';
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly requestId: string | null,
  ) {
    super(message);
  }
}

export class BceClient {
  private readonly pool: Pool;
  private readonly host: string;

  constructor(
    readonly endpoint: string,
    private readonly credentials: BceCredentials,
    private readonly options: {
      connections?: number;
      pipelining?: number;
      headersTimeoutMs?: number;
      bodyTimeoutMs?: number;
      /**
       * Send x-bce-content-sha256 with every in-memory body (and every PUT or POST without one), so
       * the server refuses bytes damaged or swapped on the way (default true). Streamed bodies go without.
       */
      contentSha256?: boolean;
    } = {},
  ) {
    const url = new URL(endpoint);
    this.host = url.host;
    this.pool = new Pool(url.origin, {
      connections: options.connections ?? 8,
      pipelining: options.pipelining ?? 1,
      headersTimeout: options.headersTimeoutMs ?? 60_000,
      bodyTimeout: options.bodyTimeoutMs ?? 300_000,
      keepAliveTimeout: 30_000,
    });
  }

  /** Sends a request and returns the raw response (caller consumes the body). Throws BceError for non-2xx. */
  async send(req: BceRequest): Promise<Dispatcher.ResponseData> {
    const pairs = Object.entries(req.query ?? {}).filter(([, v]) => v !== undefined) as Array<[string, string | null]>;
    const search = pairs.map(([k, v]) => (v === null ? encodeURIComponent(k) : `${encodeURIComponent(k)}=${encodeURIComponent(v)}`)).join('&');
    const body = req.json !== undefined ? Buffer.from(JSON.stringify(req.json)) : req.body;
    const headers: Record<string, string> = {
      host: this.host,
      'x-bce-date': formatTimestamp(Date.now()),
      ...(req.json !== undefined ? { 'content-type': 'application/json; charset=utf-8' } : {}),
      ...(body instanceof Buffer ? { 'content-length': String(body.length) } : req.contentLength !== undefined ? { 'content-length': String(req.contentLength) } : {}),
      ...((this.options.contentSha256 ?? true) && (body instanceof Buffer || (body === undefined && (req.method === 'PUT' || req.method === 'POST')))
        ? { [CONTENT_SHA256_HEADER]: req.contentSha256 ?? createHash('sha256').update(body ?? Buffer.alloc(0)).digest('hex') }
        : {}),
      ...req.headers,
    };
    headers.authorization = sign({
      method: req.method, path: req.path, query: pairs, headers, signedHeaders: null,
      accessKeyId: this.credentials.accessKeyId, secretAccessKey: this.credentials.secretAccessKey,
      timestamp: headers['x-bce-date']!, expirationSeconds: DEFAULT_EXPIRATION_SECONDS,
    });
    let res: Dispatcher.ResponseData;
    try {
      res = await this.pool.request({ method: req.method, path: req.path + (search ? `?${search}` : ''), headers, body, signal: req.signal });
    } catch (e) {
      throw new BceError(0, 'ConnectionFailed', `${this.endpoint}: ${(e as Error).message}`, null);
    }
    if (res.statusCode >= 300) {
      const text = await res.body.text().catch(() => '');
      let parsed: { code?: string; message?: string; requestId?: string } = {};
      try {
        parsed = JSON.parse(text);
      } catch {
        /* not BCE's format: keep the raw text */
      }
      throw new BceError(res.statusCode, parsed.code ?? `HTTP${res.statusCode}`, parsed.message ?? text.slice(0, 200), parsed.requestId ?? (res.headers['x-bce-request-id'] as string | undefined) ?? null);
    }
    return res;
  }

  /** Sends a request and parses a JSON answer ({} for an empty body). */
  async json<T = Record<string, unknown>>(req: BceRequest): Promise<T> {
    const res = await this.send(req);
    const text = await res.body.text();
    return (text === '' ? {} : JSON.parse(text)) as T;
  }

  async close(): Promise<void> {
    await this.pool.close();
  }
}
