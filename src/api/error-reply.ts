/**
 * The one place errors become HTTP responses: BCE's body `{requestId, code, message}` with the
 * catalog's status. Anything that is not an ApiError is a bug on our side: it is logged with the
 * request id and answered as InternalError without internal detail.
 */
import type { FastifyReply, FastifyRequest } from 'fastify';
import { ApiError, isApiError } from '../domain/errors.ts';
import { ChunkIntegrityError } from '../chunkstore/chunk-store.ts';

export type Log = (level: 'info' | 'warn' | 'error', msg: string, fields?: Record<string, unknown>) => void;

/** Fastify's own errors (a body that fails to arrive, a bad URL) mapped into the catalog. */
function fromFramework(err: { code?: string; statusCode?: number; message: string }): ApiError | null {
  switch (err.code) {
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
      return new ApiError('EntityTooLarge');
    case 'FST_ERR_BAD_URL':
    case 'FST_ERR_ASYNC_CONSTRAINT':
      return new ApiError('InvalidURI');
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
    case 'FST_ERR_CTP_EMPTY_JSON_BODY':
    case 'FST_ERR_CTP_INVALID_CONTENT_LENGTH':
      return new ApiError('InvalidHTTPRequest', err.message);
  }
  if (err.statusCode && err.statusCode >= 400 && err.statusCode < 500) return new ApiError('InvalidHTTPRequest', err.message);
  return null;
}

export function toApiError(err: unknown): ApiError | null {
  if (isApiError(err)) return err;
  if (err instanceof ChunkIntegrityError) return new ApiError('IntegrityError');
  // No RangeError -> 400 here: a RangeError that escapes a service is a broken internal assumption
  // (a 500), and its message is internal detail. Input checks throw ApiError with their own code.
  if (err && typeof err === 'object' && 'code' in err && typeof (err as { code: unknown }).code === 'string') {
    return fromFramework(err as { code: string; message: string; statusCode?: number });
  }
  return null;
}

export function sendError(reply: FastifyReply, req: FastifyRequest, err: unknown, log: Log): void {
  let apiError = toApiError(err);
  if (!apiError || apiError.code === 'InternalError') {
    log('error', 'unexpected error', { requestId: req.id, method: req.method, url: req.url, err: err instanceof Error ? err.stack : String(err) });
    apiError = new ApiError('InternalError');
  } else if (apiError.code === 'IntegrityError') {
    log('error', 'integrity error', { requestId: req.id, url: req.url, err: String(err) });
  }
  if (reply.sent) {
    // Headers are gone (a streamed body failed half-way): all we can do is cut the connection so the
    // client sees a truncated response rather than a complete-looking wrong one.
    reply.raw.destroy();
    return;
  }
  void reply
    .code(apiError.status)
    .header('content-type', 'application/json; charset=utf-8')
    .send(JSON.stringify({ requestId: req.id, code: apiError.code, message: apiError.message }));
}
