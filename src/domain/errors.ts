/**
 * The one error catalog: every error code the service answers with, its HTTP status and default
 * message. Services throw `ApiError`; `api/` is the one place that turns it into BCE's body
 * `{requestId, code, message}`. `test/error-catalog.test.ts` keeps this table and docs/api.md in step.
 */
export const ERROR_CATALOG = {
  // Authentication (bcc-api.md §2)
  AccessDenied: { status: 403, message: 'Access denied.' },
  InvalidAccessKeyId: { status: 403, message: 'The access key id does not exist.' },
  InvalidHTTPAuthHeader: { status: 400, message: 'The Authorization header cannot be parsed.' },
  SignatureDoesNotMatch: { status: 400, message: 'The request signature does not match the signature computed by the server.' },
  RequestExpired: { status: 400, message: 'The request has expired, or its clock skew is over 30 minutes.' },
  // Request shape
  MalformedJSON: { status: 400, message: 'The request body is not valid JSON.' },
  InappropriateJSON: { status: 400, message: 'The JSON is well formed but a field is missing or has the wrong type.' },
  InvalidHTTPRequest: { status: 400, message: 'The request is malformed.' },
  InvalidURI: { status: 400, message: 'The request URI cannot be parsed.' },
  InvalidVersion: { status: 404, message: 'This API version is not served.' },
  BadRequest: { status: 400, message: 'A parameter is invalid.' },
  NoSuchRoute: { status: 404, message: 'No such API.' },
  MethodNotAllowed: { status: 405, message: 'The method is not allowed on this resource.' },
  EntityTooLarge: { status: 413, message: 'The request body is too large.' },
  InvalidRange: { status: 416, message: 'The requested range is not satisfiable.' },
  IdempotentParameterMismatch: { status: 403, message: 'The clientToken was used before with different parameters.' },
  // Ours: what a request looks like on the wire (body digests, timeouts, sizes, the metrics token)
  BadDigest: { status: 400, message: 'The body does not hash to its x-bce-content-sha256 or Content-MD5 header; nothing of it was applied.' },
  InvalidDigest: { status: 400, message: 'x-bce-content-sha256 must be 64 hex digits and Content-MD5 the base64 of 16 bytes.' },
  MissingDigest: { status: 400, message: 'A request with a body to this endpoint must carry a signed x-bce-content-sha256 header.' },
  RequestTimeout: { status: 408, message: 'The request did not arrive in time.' },
  ExpectationFailed: { status: 417, message: 'Only "Expect: 100-continue" is supported.' },
  RequestHeaderTooLarge: { status: 431, message: 'The request line and headers are too large.' },
  Unauthorized: { status: 401, message: 'A valid bearer token is required.' },
  // Resources
  NoSuchObject: { status: 404, message: 'The resource does not exist.' },
  OperationDenied: { status: 409, message: 'The operation is not allowed in the current state or with these parameters.' },
  'Volume.DiskSizeInvalid': { status: 400, message: 'cdsSizeInGB must be an integer from 1 to 32765.' },
  'Volume.DiskStatusCannotBeDeleted': { status: 409, message: 'The disk can be deleted only when it is Available, Expired or Error.' },
  'Snapshot.SnapshotNameInvalid': { status: 400, message: 'snapshotName must be 1-65 characters, start with a letter, and hold only letters, digits, CJK characters and "-_ /.".' },
  'Instance.SnapshotLimitExceeded': { status: 409, message: 'The volume already has the maximum number of manual snapshots.' },
  SnapshotOperationForbidden: { status: 403, message: 'The snapshot cannot be changed in its current state.' },
  'snapshot.CannotCopy': { status: 403, message: 'This snapshot cannot be copied to another region.' },
  // Ours: region-to-region replication (internal endpoints)
  ChunkDigestMismatch: { status: 400, message: 'The chunk bytes received do not hash to the chunk id; send them again.' },
  ChunksMissing: { status: 409, message: 'The destination lacks chunks the manifest names; send them, then commit again.' },
  ChunkTooLarge: { status: 413, message: 'The chunk is larger than the chunk size of this region.' },
  InvalidManifest: { status: 400, message: 'The manifest cannot be decoded or does not fit this region.' },
  ManifestMissing: { status: 409, message: 'The destination holds no manifest for this copy; send the manifest, then commit again.' },
  // Ours
  IntegrityError: { status: 500, message: 'Stored data failed its integrity check; it was not served.' },
  InternalError: { status: 500, message: 'We encountered an internal error. Please try again.' },
  ServiceUnavailable: { status: 503, message: 'The service cannot take this request now; retry later.' },
} as const satisfies Record<string, { status: number; message: string }>;

export type ErrorCode = keyof typeof ERROR_CATALOG;

/** A failure the caller is told about. `message` defaults to the catalog's; give a specific one when it helps. */
export class ApiError extends Error {
  override name = 'ApiError';
  readonly status: number;
  constructor(
    readonly code: ErrorCode,
    message?: string,
  ) {
    super(message ?? ERROR_CATALOG[code].message);
    this.status = ERROR_CATALOG[code].status;
  }
}

export function isApiError(e: unknown): e is ApiError {
  return e instanceof ApiError;
}
