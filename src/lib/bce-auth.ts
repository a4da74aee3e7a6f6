/**
 * bce-auth-v1: Baidu's request signature, as the official SDKs compute it. One module serves the
 * server (verification), the CLI and region-to-region calls (signing), so the two sides can never
 * drift apart.
 *
 *   Authorization: bce-auth-v1/{ak}/{timestamp}/{expirationSeconds}/{signedHeaders}/{signature}
 *
 * signingKey = hex(HMAC(secret, "bce-auth-v1/ak/timestamp/expiration"));
 * signature  = hex(HMAC(signingKey, METHOD \n canonicalURI \n canonicalQuery \n canonicalHeaders)).
 * An empty signedHeaders field (Python and Java SDKs) means the default set below.
 */
import { createHmac, timingSafeEqual } from 'node:crypto';

export const AUTH_VERSION = 'bce-auth-v1';
export const DEFAULT_EXPIRATION_SECONDS = 1800;
/**
 * The hex SHA-256 of a request's body, as BOS defines it. Signed whenever present (the default set
 * signs every `x-bce-*` header), so a replay of a signed request with other bytes is refused.
 */
export const CONTENT_SHA256_HEADER = 'x-bce-content-sha256';

/** A query parameter as sent: a value of null means a bare flag (`?rollback`), signed as `rollback=`. */
export type QueryPairs = ReadonlyArray<readonly [string, string | null]>;

export interface CanonicalRequestInput {
  method: string;
  /** The decoded path, e.g. `/v2/snapshot/s-AJcboed5`. */
  path: string;
  query: QueryPairs;
  /** Header names in any case; values as sent. */
  headers: Readonly<Record<string, string | number | undefined>>;
  /** Header names to sign, or null for the default set. */
  signedHeaders: readonly string[] | null;
}

export interface SigningInput extends CanonicalRequestInput {
  accessKeyId: string;
  secretAccessKey: string;
  /** `YYYY-MM-DDThh:mm:ssZ` */
  timestamp: string;
  expirationSeconds: number;
}

const UNRESERVED = /[A-Za-z0-9\-_.~]/;
const ALL_UNRESERVED = /^[A-Za-z0-9\-_.~]*$/;
const ALL_UNRESERVED_OR_SLASH = /^[A-Za-z0-9\-_.~/]*$/;

/** RFC 3986 percent-encoding of the UTF-8 bytes, upper-case hex; `/` kept when asked. */
export function uriEncode(value: string, keepSlash = false): string {
  // Most of what is signed (ids, hex digests, paths of ids) needs no encoding: one regex test, no copy.
  if ((keepSlash ? ALL_UNRESERVED_OR_SLASH : ALL_UNRESERVED).test(value)) return value;
  try {
    // encodeURIComponent is RFC 3986 but for five sub-delims it leaves alone; upper-case hex already.
    const encoded = encodeURIComponent(value).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);
    return keepSlash ? encoded.replace(/%2F/g, '/') : encoded;
  } catch {
    // A lone surrogate (URIError): encoded byte by byte below, as Buffer.from's UTF-8 has it (U+FFFD).
  }
  let out = '';
  for (const byte of Buffer.from(value, 'utf8')) {
    const ch = String.fromCharCode(byte);
    if (byte < 0x80 && (UNRESERVED.test(ch) || (keepSlash && ch === '/'))) out += ch;
    else out += '%' + byte.toString(16).toUpperCase().padStart(2, '0');
  }
  return out;
}

export function canonicalQueryString(query: QueryPairs): string {
  return query
    .filter(([k]) => k.toLowerCase() !== 'authorization')
    .map(([k, v]) => `${uriEncode(k)}=${uriEncode(v ?? '')}`)
    .sort(compareAscii) // percent-encoded: ASCII
    .join('&');
}

function isDefaultSignedHeader(lowerName: string): boolean {
  return (
    lowerName === 'host' ||
    lowerName === 'content-length' ||
    lowerName === 'content-type' ||
    lowerName === 'content-md5' ||
    lowerName.startsWith('x-bce-')
  );
}

/** The canonical header block and the (sorted, lower-case) names that went into it. */
export function canonicalHeaders(
  headers: CanonicalRequestInput['headers'],
  signedHeaders: readonly string[] | null,
): { text: string; names: string[] } {
  const wanted = signedHeaders ? new Set(signedHeaders.map((h) => h.trim().toLowerCase())) : null;
  const lines: string[] = [];
  const names: string[] = [];
  for (const [rawName, rawValue] of Object.entries(headers)) {
    if (rawValue === undefined) continue;
    const name = rawName.trim().toLowerCase();
    const value = String(rawValue).trim();
    if (value === '') continue;
    if (wanted ? !wanted.has(name) : !isDefaultSignedHeader(name)) continue;
    lines.push(`${uriEncode(name)}:${uriEncode(value)}`);
    names.push(name);
  }
  // Percent-encoded lines are ASCII, where UTF-16 order is byte order.
  lines.sort(compareAscii);
  names.sort(compareBytes);
  return { text: lines.join('\n'), names };
}

export function canonicalRequest(input: CanonicalRequestInput, headerText = canonicalHeaders(input.headers, input.signedHeaders).text): string {
  const uri = input.path === '' ? '/' : uriEncode(input.path, true);
  return [input.method.toUpperCase(), uri, canonicalQueryString(input.query), headerText].join('\n');
}

/**
 * Signing keys derived lately, by secret and prefix: the prefix changes once a second, and a copy
 * signs (and its destination verifies) hundreds of requests a second under one.
 */
const recentSigningKeys = new Map<string, string>();
const RECENT_SIGNING_KEYS = 64;

export function signingKey(secretAccessKey: string, authPrefix: string): string {
  const cacheKey = `${authPrefix}\n${secretAccessKey}`;
  let key = recentSigningKeys.get(cacheKey);
  if (key === undefined) {
    key = hmacHex(secretAccessKey, authPrefix);
    if (recentSigningKeys.size >= RECENT_SIGNING_KEYS) recentSigningKeys.delete(recentSigningKeys.keys().next().value!);
    recentSigningKeys.set(cacheKey, key);
  }
  return key;
}

function authPrefix(accessKeyId: string, timestamp: string, expirationSeconds: number): string {
  return `${AUTH_VERSION}/${accessKeyId}/${timestamp}/${expirationSeconds}`;
}

export function computeSignature(input: SigningInput, headerText?: string): string {
  const key = signingKey(input.secretAccessKey, authPrefix(input.accessKeyId, input.timestamp, input.expirationSeconds));
  return hmacHex(key, canonicalRequest(input, headerText));
}

/**
 * Signs a request and returns the Authorization header. With `signedHeaders` null the default set
 * is used and its names are written out explicitly, as the JavaScript and Go SDKs do.
 */
export function sign(input: SigningInput): string {
  const { names, text } = canonicalHeaders(input.headers, input.signedHeaders);
  const prefix = authPrefix(input.accessKeyId, input.timestamp, input.expirationSeconds);
  return `${prefix}/${names.join(';')}/${computeSignature(input, text)}`;
}

export interface ParsedAuthorization {
  accessKeyId: string;
  timestamp: string;
  timestampMs: number;
  expirationSeconds: number;
  /** null when the field was empty: the default set applies. */
  signedHeaders: string[] | null;
  signature: string;
}

export class AuthHeaderParseError extends Error {
  override name = 'AuthHeaderParseError';
}

const TIMESTAMP = /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})Z$/;

export function parseAuthorization(header: string): ParsedAuthorization {
  const parts = header.trim().split('/');
  if (parts.length !== 6) throw new AuthHeaderParseError('expected 6 fields separated by "/"');
  const [version, accessKeyId, timestamp, expiration, signed, signature] = parts as [string, string, string, string, string, string];
  if (version !== AUTH_VERSION) throw new AuthHeaderParseError(`unsupported auth version ${JSON.stringify(version)}`);
  if (accessKeyId === '') throw new AuthHeaderParseError('empty access key id');
  const timestampMs = parseTimestamp(timestamp);
  if (timestampMs === null) throw new AuthHeaderParseError(`bad timestamp ${JSON.stringify(timestamp)}`);
  if (!/^\d{1,9}$/.test(expiration)) throw new AuthHeaderParseError(`bad expiration ${JSON.stringify(expiration)}`);
  if (!/^[0-9a-f]{64}$/i.test(signature)) throw new AuthHeaderParseError('bad signature field');
  const signedHeaders = signed === '' ? null : signed.split(';').map((h) => h.trim().toLowerCase());
  if (signedHeaders?.some((h) => h === '')) throw new AuthHeaderParseError('empty name in signed headers');
  return { accessKeyId, timestamp, timestampMs, expirationSeconds: Number(expiration), signedHeaders, signature: signature.toLowerCase() };
}

/** Milliseconds since the epoch for a `YYYY-MM-DDThh:mm:ssZ` string, or null if it is not one. */
export function parseTimestamp(value: string): number | null {
  const m = TIMESTAMP.exec(value);
  if (!m) return null;
  const ms = Date.UTC(+m[1]!, +m[2]! - 1, +m[3]!, +m[4]!, +m[5]!, +m[6]!);
  // Date.UTC rolls over (Feb 31 becomes Mar 3); a round trip rejects such dates.
  return formatTimestamp(ms) === value ? ms : null;
}

export function formatTimestamp(ms: number): string {
  return new Date(ms).toISOString().replace(/\.\d{3}Z$/, 'Z');
}

/** Constant-time comparison of two hex signatures. */
export function signaturesEqual(a: string, b: string): boolean {
  const x = Buffer.from(a.toLowerCase(), 'utf8');
  const y = Buffer.from(b.toLowerCase(), 'utf8');
  return x.length === y.length && timingSafeEqual(x, y);
}

/**
 * Splits a raw query string (without `?`) into pairs, keeping bare flags as null values. Only
 * percent-decoding is applied: `+` stays `+`, as the SDKs percent-encode spaces.
 * Throws URIError on malformed percent-encoding.
 */
export function parseRawQuery(raw: string): Array<[string, string | null]> {
  if (raw === '') return [];
  return raw
    .split('&')
    .filter((p) => p !== '')
    .map((p) => {
      const eq = p.indexOf('=');
      return eq < 0
        ? [decodeURIComponent(p), null]
        : [decodeURIComponent(p.slice(0, eq)), decodeURIComponent(p.slice(eq + 1))];
    });
}

function hmacHex(key: string, message: string): string {
  return createHmac('sha256', key).update(message, 'utf8').digest('hex');
}

function compareBytes(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a), Buffer.from(b));
}

function compareAscii(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}
