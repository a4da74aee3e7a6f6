/**
 * Builds requests signed the way each official SDK signs them, for in-process `inject` tests:
 * - 'js':     explicit signed headers: host, content-length, content-type, x-bce-date (all defaults present)
 * - 'go':     explicit `content-length;content-md5;content-type;host;x-bce-date` (without a body:
 *             `content-type;host;x-bce-date`); sends x-bce-request-id but never signs it
 * - 'python': empty signed-headers field (the server must use the default set)
 * Requests to /internal/v1 with a body also carry `x-bce-content-sha256`, as peer regions send it
 * (signed with the default set); `contentSha256` turns that on or off for any request.
 */
import { createHash, randomUUID } from 'node:crypto';
import { formatTimestamp, parseRawQuery, sign, computeSignature } from '../../src/lib/bce-auth.ts';

export type SdkStyle = 'js' | 'go' | 'python';

export interface Keys {
  ak: string;
  sk: string;
}

export interface SignedRequestOptions {
  method: string;
  url: string;
  body?: unknown;
  keys: Keys;
  style?: SdkStyle;
  host?: string;
  /** Override the signing time (ms). */
  at?: number;
  expirationSeconds?: number;
  extraHeaders?: Record<string, string>;
  /** Add x-bce-content-sha256 of the body (default: only for /internal/ paths with a body). */
  contentSha256?: boolean;
}

export function signedRequest(o: SignedRequestOptions): { method: string; url: string; headers: Record<string, string>; payload?: string | Buffer } {
  const style = o.style ?? 'js';
  const payload = o.body === undefined ? undefined : typeof o.body === 'string' || Buffer.isBuffer(o.body) ? o.body : JSON.stringify(o.body);
  const timestamp = formatTimestamp(o.at ?? Date.now());
  const headers: Record<string, string> = {
    host: o.host ?? 'localhost:80',
    'x-bce-date': timestamp,
    'content-type': style === 'go' ? 'application/json;charset=utf-8' : 'application/json; charset=utf-8',
    ...(payload !== undefined ? { 'content-length': String(Buffer.byteLength(payload)) } : {}),
    ...(style === 'go' ? { 'x-bce-request-id': randomUUID() } : {}),
    ...(style === 'go' && payload !== undefined ? { 'content-md5': createHash('md5').update(payload).digest('base64') } : {}),
    ...((o.contentSha256 ?? o.url.startsWith('/internal/')) && payload !== undefined ? { 'x-bce-content-sha256': createHash('sha256').update(payload).digest('hex') } : {}),
    ...o.extraHeaders,
  };
  const q = o.url.indexOf('?');
  const path = decodeURIComponent(q < 0 ? o.url : o.url.slice(0, q));
  const query = parseRawQuery(q < 0 ? '' : o.url.slice(q + 1));
  const expirationSeconds = o.expirationSeconds ?? 1800;
  const base = { method: o.method, path, query, headers, accessKeyId: o.keys.ak, secretAccessKey: o.keys.sk, timestamp, expirationSeconds };
  let authorization: string;
  if (style === 'python') {
    authorization = `bce-auth-v1/${o.keys.ak}/${timestamp}/${expirationSeconds}//${computeSignature({ ...base, signedHeaders: null })}`;
  } else if (style === 'go') {
    const names = payload !== undefined ? ['content-length', 'content-md5', 'content-type', 'host', 'x-bce-date'] : ['content-type', 'host', 'x-bce-date'];
    authorization = sign({ ...base, signedHeaders: names });
  } else {
    authorization = sign({ ...base, signedHeaders: null });
  }
  return { method: o.method, url: o.url, headers: { ...headers, authorization }, payload };
}
