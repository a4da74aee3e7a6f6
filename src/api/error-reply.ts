/**
 * The one place errors become HTTP responses: BCE's body `{requestId, code, message}` with the
 * catalog's status. Anything that is not an ApiError is a bug on our side: it is logged with the
 * request id and answered as InternalError without internal detail.
 *
 * Also the answers Node's HTTP server would otherwise write by itself on the socket, before any
 * request exists (headers too large, a malformed request line, a request that did not arrive in
 * time): `answerClientError`, in the same format with a fresh request id. A client that went away
 * (reset, closed mid-body) is no error of ours: logged at debug, never as `unexpected error`.
 */
import { randomUUID } from 'node:crypto';
import { STATUS_CODES } from 'node:http';
import type { Socket } from 'node:net';
import type { FastifyReply, FastifyRequest } from 'fastify';
import { ApiError, isApiError } from '../domain/errors.ts';
import { ChunkIntegrityError } from '../chunkstore/chunk-store.ts';

export type Log = (level: 'info' | 'warn' | 'error', msg: string, fields?: Record<string, unknown>) => void;
/** Where debug lines go (aborted requests, client errors); dropped when not given. */
export type DebugLog = (msg: string, fields?: Record<string, unknown>) => void;

/** Fastify's own errors (a body that fails to arrive, a bad URL) mapped into the catalog. */
function fromFramework(err: { code?: string; statusCode?: number; message: string }): ApiError | null {
  switch (err.code) {
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
      return new ApiError('EntityTooLarge');
    case 'FST_ERR_BAD_URL':
    case 'FST_ERR_ASYNC_CONSTRAINT':
      return new ApiError('InvalidURI');
    case 'FST_ERR_MAX_PARAM_LENGTH':
      // Fastify's message repeats the whole URL (up to the 16 KiB header limit): not echoed.
      return new ApiError('InvalidURI', 'A path segment (an id) is longer than 100 characters.');
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
      return new ApiError('InvalidHTTPRequest', 'The Content-Type header cannot be parsed.');
    case 'FST_ERR_CTP_EMPTY_JSON_BODY':
    case 'FST_ERR_CTP_INVALID_CONTENT_LENGTH':
      return new ApiError('InvalidHTTPRequest', err.message);
  }
  if (err.statusCode === 408) return new ApiError('RequestTimeout');
  if (err.statusCode === 413) return new ApiError('EntityTooLarge');
  if (err.statusCode === 431) return new ApiError('RequestHeaderTooLarge');
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

/** Errors a request's stream raises when its client goes away: reset, closed mid-body, cut short. */
const ABORT_CODES = new Set(['ECONNRESET', 'ECONNABORTED', 'EPIPE', 'ERR_STREAM_PREMATURE_CLOSE', 'ERR_STREAM_DESTROYED']);

function isAbortError(err: unknown): boolean {
  if (!err || typeof err !== 'object') return false;
  const { code, message } = err as { code?: unknown; message?: unknown };
  return (typeof code === 'string' && ABORT_CODES.has(code)) || message === 'aborted';
}

/**
 * The request failed because its client went away: an abort error, and the connection is indeed
 * gone (so an ECONNRESET from some other connection, a peer region's, stays an unexpected error).
 */
export function clientWentAway(req: FastifyRequest, err: unknown): boolean {
  if (!isAbortError(err)) return false;
  const socket = req.raw.socket as Socket | null | undefined;
  return req.raw.destroyed || !socket || socket.destroyed || !socket.readable || req.raw.readableAborted === true;
}

export function sendError(reply: FastifyReply, req: FastifyRequest, err: unknown, log: Log, debug?: DebugLog): void {
  if (clientWentAway(req, err)) {
    debug?.('request aborted by the client', { requestId: req.id, method: req.method, url: req.url, err: String(err) });
    reply.raw.destroy();
    return;
  }
  let apiError = toApiError(err);
  if (!apiError || apiError.code === 'InternalError') {
    log('error', 'unexpected error', { requestId: req.id, method: req.method, url: req.url, err: err instanceof Error ? err.stack : String(err) });
    apiError = new ApiError('InternalError');
  } else if (apiError.code === 'IntegrityError') {
    log('error', 'integrity error', { requestId: req.id, url: req.url, err: String(err) });
  }
  if (reply.sent || reply.raw.headersSent) {
    // Headers are gone (a streamed body failed half-way): all we can do is cut the connection so the
    // client sees a truncated response rather than a complete-looking wrong one.
    reply.raw.destroy();
    return;
  }
  // A body left unread (refused before it was read, or read only in part) would otherwise be read
  // and thrown away to keep the connection: close it instead (gently: see closeAfterAnswer).
  if (req.raw.complete === false) closeAfterAnswer(reply, req.raw.socket);
  void reply
    .code(apiError.status)
    .header('x-bce-request-id', req.id)
    .header('content-type', 'application/json; charset=utf-8')
    .send(JSON.stringify({ requestId: req.id, code: apiError.code, message: apiError.message }));
}

/** The BCE error for an error Node's HTTP parser or its timers raise on a connection ('clientError'). */
export function clientErrorCode(err: { code?: string }): ApiError {
  switch (err.code) {
    case 'HPE_HEADER_OVERFLOW':
      return new ApiError('RequestHeaderTooLarge');
    case 'ERR_HTTP_REQUEST_TIMEOUT':
      return new ApiError('RequestTimeout', 'The request line, headers and body did not arrive in time; the connection is closed.');
    case 'HPE_CHUNK_EXTENSIONS_OVERFLOW':
      return new ApiError('InvalidHTTPRequest', 'The chunk extensions are too large.');
    default:
      return new ApiError('InvalidHTTPRequest', 'The request is not valid HTTP/1.1.');
  }
}

/** How long a connection answered by `answerClientError` may take to read the answer before it is cut. */
const CLIENT_ERROR_LINGER_MS = 2000;

const lingering = new WeakSet<Socket>();

/**
 * Answers with `Connection: close` a request whose body is left unread (refused before it was read,
 * or read only in part), and closes the connection without a reset. Node destroys such a socket as
 * soon as the answer is flushed; closing a socket that still has unread bytes makes the kernel send
 * a reset, which can discard the answer at the client before it is read (the fuzz test saw a 413
 * lost so). Instead the answer is followed by a FIN, whatever the client still sends is read and
 * dropped, and the socket is closed once the client closes its side, or after
 * CLIENT_ERROR_LINGER_MS at most.
 */
export function closeAfterAnswer(reply: FastifyReply, socket: Socket | null | undefined): void {
  reply.header('connection', 'close');
  lingerOnClose(socket);
}

/** The close of closeAfterAnswer, for an answer written on Node's response directly (`Connection: close` set by the caller). */
export function lingerOnClose(socket: Socket | null | undefined): void {
  if (!socket || lingering.has(socket)) return;
  lingering.add(socket);
  // Node's server calls destroySoon() once the last answer on the connection is flushed.
  socket.destroySoon = function linger(this: Socket): void {
    if (this.destroyed) return;
    if (this.writable) this.end();
    const timer = setTimeout(() => this.destroy(), CLIENT_ERROR_LINGER_MS);
    timer.unref();
    this.once('close', () => clearTimeout(timer));
    this.once('end', () => this.destroy());
    this.on('error', () => {});
    this.resume();
  };
}

/**
 * Node's 'clientError' (fastify's `clientErrorHandler`): answers in BCE's format, with a fresh
 * request id, then closes the connection. Whatever the client still sends is read and dropped for a
 * moment, so the close does not turn into a reset that would discard the answer at the client.
 */
const answered = new WeakSet<Socket>();

export function answerClientError(err: Error & { code?: string }, socket: Socket, debug?: DebugLog): void {
  // The parser, once failed, reports again for every further packet: one answer per connection.
  if (answered.has(socket)) return;
  answered.add(socket);
  if (err.code === 'ECONNRESET' || socket.destroyed) {
    debug?.('connection reset by the client', { err: String(err) });
    socket.destroy();
    return;
  }
  const apiError = clientErrorCode(err);
  const requestId = randomUUID();
  debug?.('client error', { requestId, code: apiError.code, err: String(err) });
  const inFlight = (socket as Socket & { _httpMessage?: { headersSent?: boolean } })._httpMessage;
  if (!socket.writable || inFlight?.headersSent) {
    socket.destroy();
    return;
  }
  answerOnSocket(socket, apiError, requestId);
}

/** Writes a BCE error answer straight on a socket and closes it after a moment of reading and dropping. */
function answerOnSocket(socket: Socket, apiError: ApiError, requestId: string): void {
  const body = JSON.stringify({ requestId, code: apiError.code, message: apiError.message });
  socket.removeAllListeners('data');
  socket.on('data', () => {});
  socket.on('error', () => {});
  socket.end(
    `HTTP/1.1 ${apiError.status} ${STATUS_CODES[apiError.status] ?? 'Error'}\r\n` +
      `content-type: application/json; charset=utf-8\r\ncontent-length: ${Buffer.byteLength(body)}\r\n` +
      `x-bce-request-id: ${requestId}\r\nconnection: close\r\n\r\n${body}`,
  );
  setTimeout(() => socket.destroy(), CLIENT_ERROR_LINGER_MS).unref();
}

/**
 * `CONNECT host:port` (a proxy's method, Node's 'connect' event): Node would drop the connection
 * without an answer; it gets a BCE 405 MethodNotAllowed instead.
 */
export function answerConnect(socket: Socket, debug?: DebugLog): void {
  const requestId = randomUUID();
  debug?.('CONNECT refused', { requestId });
  if (!socket.writable) {
    socket.destroy();
    return;
  }
  answerOnSocket(socket, new ApiError('MethodNotAllowed', 'CONNECT is not allowed here: this is not a proxy.'), requestId);
}
