/**
 * bce-auth-v1 verification of an incoming request (bcc-api.md §2). Returns the caller's account or
 * throws the catalog error that says exactly what is wrong.
 */
import type { IncomingHttpHeaders } from 'node:http';
import { ApiError } from '../domain/errors.ts';
import {
  AuthHeaderParseError, canonicalHeaders, computeSignature, parseAuthorization, parseRawQuery, signaturesEqual,
} from '../lib/bce-auth.ts';

export interface Credential {
  accountId: string;
  secretAccessKey: string;
}

/** Finds the secret behind an access key id. Tenant keys and the regions' service key live in different directories. */
export interface CredentialDirectory {
  lookup(accessKeyId: string): Credential | null;
}

export const MAX_CLOCK_SKEW_MS = 30 * 60 * 1000;

export interface RequestToVerify {
  method: string;
  /** Path and query exactly as received, e.g. `/v2/volume/v-1?rollback`. */
  rawUrl: string;
  headers: IncomingHttpHeaders;
}

export interface Authenticated extends Credential {
  accessKeyId: string;
  /** The (lower-case) names of the headers the signature covers. */
  signedHeaders: string[];
}

export function authenticate(req: RequestToVerify, directory: CredentialDirectory, now: number): Authenticated {
  const header = req.headers.authorization;
  if (!header) throw new ApiError('AccessDenied', 'The request is not signed: no Authorization header.');
  if (req.headers['x-bce-security-token']) throw new ApiError('AccessDenied', 'Session tokens (x-bce-security-token) are not supported.');
  let parsed;
  try {
    parsed = parseAuthorization(header);
  } catch (e) {
    if (e instanceof AuthHeaderParseError) throw new ApiError('InvalidHTTPAuthHeader', `The Authorization header cannot be parsed: ${e.message}.`);
    throw e;
  }
  const credential = directory.lookup(parsed.accessKeyId);
  if (!credential) throw new ApiError('InvalidAccessKeyId');

  const queryAt = req.rawUrl.indexOf('?');
  const rawPath = queryAt < 0 ? req.rawUrl : req.rawUrl.slice(0, queryAt);
  let path: string;
  let query: Array<[string, string | null]>;
  try {
    path = decodeURIComponent(rawPath);
    query = parseRawQuery(queryAt < 0 ? '' : req.rawUrl.slice(queryAt + 1));
  } catch {
    throw new ApiError('InvalidURI', 'The request URI has malformed percent-encoding.');
  }
  const headers: Record<string, string> = {};
  for (const [name, value] of Object.entries(req.headers)) {
    if (value !== undefined) headers[name] = Array.isArray(value) ? value.join(',') : value;
  }
  const expected = computeSignature({
    method: req.method, path, query, headers, signedHeaders: parsed.signedHeaders,
    accessKeyId: parsed.accessKeyId, secretAccessKey: credential.secretAccessKey,
    timestamp: parsed.timestamp, expirationSeconds: parsed.expirationSeconds,
  });
  if (!signaturesEqual(expected, parsed.signature)) throw new ApiError('SignatureDoesNotMatch');

  if (now > parsed.timestampMs + parsed.expirationSeconds * 1000) {
    throw new ApiError('RequestExpired', `The request expired at ${new Date(parsed.timestampMs + parsed.expirationSeconds * 1000).toISOString()}.`);
  }
  if (Math.abs(now - parsed.timestampMs) > MAX_CLOCK_SKEW_MS) {
    throw new ApiError('RequestExpired', 'The request timestamp is more than 30 minutes away from the server clock.');
  }
  return { ...credential, accessKeyId: parsed.accessKeyId, signedHeaders: canonicalHeaders(headers, parsed.signedHeaders).names };
}
