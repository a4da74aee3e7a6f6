/**
 * One region's HTTP API: BCC routes, our data extension, operations routes, and (when given) the
 * internal region-to-region routes. Built as a Fastify instance so tests can `inject` requests
 * in-process; main.ts listens on it.
 *
 * Every answer is in BCE's format, also those the framework and Node's HTTP server would write by
 * themselves (error-reply.ts). The server's limits (`ServerLimits`) keep idle, slow and oversized
 * clients from holding it: a request's headers must arrive within `headersTimeoutMs` (slowloris), the
 * whole request within `requestTimeoutMs`, an idle keep-alive connection is closed after
 * `keepAliveTimeoutMs`, at most `maxConnections` are open at once, and every route bounds its body.
 */
import { createHash, randomUUID, timingSafeEqual } from 'node:crypto';
import type { Socket } from 'node:net';
import Fastify, { type FastifyInstance } from 'fastify';
import { ApiError } from '../domain/errors.ts';
import type { Counter, MetricsRegistry } from '../lib/metrics.ts';
import type { SnapshotService } from '../services/snapshot-service.ts';
import type { VolumeDataService } from '../services/volume-data-service.ts';
import type { VolumeService } from '../services/volume-service.ts';
import type { CredentialDirectory } from './authenticate.ts';
import { answerClientError, answerConnect, clientErrorCode, closeAfterAnswer, lingerOnClose, sendError, type DebugLog, type Log } from './error-reply.ts';
import { MAX_JSON_BODY } from './json-input.ts';
import { snapshotRoutes } from './snapshot-routes.ts';
import { volumeDataRoutes } from './volume-data-routes.ts';
import { volumeRoutes } from './volume-routes.ts';
import type { RouteEnv } from './route-kit.ts';

export interface ServerLimits {
  /** A request's line and headers must arrive within this (from the connection, or the request's first byte). */
  headersTimeoutMs: number;
  /** A whole request, body included, must arrive within this. */
  requestTimeoutMs: number;
  /** An idle keep-alive connection is closed after this. */
  keepAliveTimeoutMs: number;
  /** How often the two request timeouts are checked (their precision). */
  timeoutCheckIntervalMs: number;
  /** Connections open at once; a connection beyond it is closed as it arrives. */
  maxConnections: number;
  /** Largest request line plus headers (431 above it). */
  maxHeaderBytes: number;
}

/** The defaults, documented in the README's Configuration section. */
export const DEFAULT_SERVER_LIMITS: Readonly<ServerLimits> = {
  headersTimeoutMs: 10_000,
  requestTimeoutMs: 300_000,
  keepAliveTimeoutMs: 5_000,
  timeoutCheckIntervalMs: 1_000,
  maxConnections: 1024,
  maxHeaderBytes: 16 * 1024,
};

export interface RegionApiDeps {
  region: string;
  tenants: CredentialDirectory;
  volumes: VolumeService;
  snapshots: SnapshotService;
  volumeData: VolumeDataService;
  metrics: MetricsRegistry;
  log: Log;
  /** Aborted requests and client errors are logged here (nowhere when not given). */
  debugLog?: DebugLog;
  /**
   * `GET /metrics` answers only `Authorization: Bearer <metricsToken>` (401 otherwise). main.ts
   * always passes the configured token; without one (tests that build an app by hand) it is open.
   */
  metricsToken?: string;
  /** Overrides of DEFAULT_SERVER_LIMITS. */
  limits?: Partial<ServerLimits>;
  now?: () => number;
  /** Extra route groups (remote copy, internal replication routes) registered by their owners. */
  extraRoutes?: Array<(app: FastifyInstance, env: RouteEnv) => void>;
}

/** Paths we serve, for telling "wrong method" (405) from "no such path" (404). */
const KNOWN_PATHS = [
  /^\/v2\/volume\/?$/, /^\/v2\/volume\/[^/]+\/?$/, /^\/v2\/volume\/[^/]+\/(data|extents)\/?$/,
  /^\/v2\/snapshot\/?$/, /^\/v2\/snapshot\/[^/]+\/?$/, /^\/v2\/snapshot\/remote_copy\/[^/]+\/?$/,
  /^\/healthz$/, /^\/metrics$/,
];

/** Constant-time check of `Authorization: Bearer <token>` (both sides hashed: equal lengths whatever was sent). */
export function bearerTokenMatches(header: string | undefined, token: string): boolean {
  const m = /^Bearer +(\S+) *$/i.exec(header ?? '');
  const given = createHash('sha256').update(m ? m[1]! : '').digest();
  const expected = createHash('sha256').update(token).digest();
  return timingSafeEqual(given, expected) && m !== null;
}

/** The HTTP server's own counters, once per registry (an app built twice on one registry shares them). */
const httpCounters = new WeakMap<MetricsRegistry, { clientErrors: Counter; refused: Counter }>();

function countersOf(metrics: MetricsRegistry): { clientErrors: Counter; refused: Counter } {
  let c = httpCounters.get(metrics);
  if (!c) {
    c = {
      clientErrors: metrics.counter('snapferry_http_client_errors_total', 'Connections the HTTP server answered and closed by itself (headers too large, malformed, too slow, reset), by code.'),
      refused: metrics.counter('snapferry_http_connections_refused_total', 'Connections closed on arrival because maxConnections were open.'),
    };
    httpCounters.set(metrics, c);
  }
  return c;
}

export function buildRegionApp(deps: RegionApiDeps): FastifyInstance {
  const limits: ServerLimits = { ...DEFAULT_SERVER_LIMITS, ...deps.limits };
  const { clientErrors, refused } = countersOf(deps.metrics);
  const app = Fastify({
    logger: false,
    genReqId: () => randomUUID(),
    requestIdHeader: false,
    routerOptions: { ignoreTrailingSlash: true },
    // Idle keep-alive sockets are closed on shutdown; requests in flight are allowed to finish.
    forceCloseConnections: 'idle',
    // Requests arriving while the app closes get ServiceUnavailable in BCE's format (the hook below).
    return503OnClosing: false,
    // No implicit HEAD routes: a HEAD on the data route would read a whole disk to send nothing.
    exposeHeadRoutes: false,
    bodyLimit: MAX_JSON_BODY,
    keepAliveTimeout: limits.keepAliveTimeoutMs,
    requestTimeout: limits.requestTimeoutMs,
    http: {
      headersTimeout: limits.headersTimeoutMs,
      requestTimeout: limits.requestTimeoutMs,
      connectionsCheckingInterval: limits.timeoutCheckIntervalMs,
      maxHeaderSize: limits.maxHeaderBytes,
      // Node would answer a missing Host with a bare 400 of its own; the onRequest hook answers it.
      requireHostHeader: false,
    },
    clientErrorHandler: (err, socket) => {
      clientErrors.inc(1, { code: (err as { code?: string }).code === 'ECONNRESET' ? 'ConnectionReset' : clientErrorCode(err).code });
      answerClientError(err, socket, deps.debugLog);
    },
    frameworkErrors: (err, req, reply) => sendError(reply, req, err, deps.log, deps.debugLog),
  });
  app.server.maxConnections = limits.maxConnections;
  // CONNECT: Node would close the connection without a word.
  app.server.on('connect', (_req, socket: Socket) => answerConnect(socket, deps.debugLog));
  app.server.on('drop', () => refused.inc());
  // `Expect:` other than 100-continue: Node would answer a bare 417 of its own.
  app.server.on('checkExpectation', (req, res) => {
    lingerOnClose(req.socket as Socket); // the body is never read
    const requestId = randomUUID();
    const error = new ApiError('ExpectationFailed');
    const body = JSON.stringify({ requestId, code: error.code, message: error.message });
    res.writeHead(error.status, { 'content-type': 'application/json; charset=utf-8', 'content-length': Buffer.byteLength(body), 'x-bce-request-id': requestId, connection: 'close' });
    res.end(body);
  });
  const env: RouteEnv = { region: deps.region, tenants: deps.tenants, now: deps.now ?? Date.now };

  // Bodies are handed to handlers as streams: JSON routes read and parse them (to answer MalformedJSON
  // in BCE's format), the data route pipes them straight to the disk. route-kit.ts bounds them by the
  // route's bodyLimit and checks their digests.
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('*', (_req, payload, done) => done(null, payload));

  let closing = false;
  app.addHook('preClose', async () => {
    closing = true;
  });
  app.addHook('onRequest', async (req, reply) => {
    reply.header('x-bce-request-id', req.id);
    if (closing) {
      reply.header('connection', 'close');
      throw new ApiError('ServiceUnavailable', 'This region is shutting down; retry in a moment.');
    }
    if (req.raw.httpVersion === '1.1' && !req.headers.host) throw new ApiError('InvalidHTTPRequest', 'An HTTP/1.1 request needs a Host header.');
  });
  // A body nobody read would be read and thrown away after the answer, to keep the connection: close it instead.
  app.addHook('onSend', async (req, reply) => {
    if (req.raw.complete === false) closeAfterAnswer(reply, req.raw.socket);
  });
  app.setErrorHandler((err, req, reply) => sendError(reply, req, err, deps.log, deps.debugLog));
  app.setNotFoundHandler((req, reply) => {
    const path = (req.raw.url ?? req.url).split('?')[0]!;
    const version = /^\/v(\d+)\//.exec(path);
    // The path as the message shows it: a request line may be 16 KiB, an answer need not repeat it.
    const shown = path.length > 200 ? `${path.slice(0, 200)}...` : path;
    const error =
      version && version[1] !== '2' ? new ApiError('InvalidVersion', `API version v${version[1]!.slice(0, 20)} is not served; use v2.`)
      : KNOWN_PATHS.some((p) => p.test(path)) ? new ApiError('MethodNotAllowed', `${req.method} is not allowed on ${shown}.`)
      : new ApiError('NoSuchRoute', `No API at ${req.method} ${shown}.`);
    sendError(reply, req, error, deps.log, deps.debugLog);
  });

  app.get('/healthz', async (_req, reply) => reply.header('content-type', 'application/json; charset=utf-8').send(JSON.stringify({ status: 'ok', region: deps.region })));
  app.get('/metrics', async (req, reply) => {
    if (deps.metricsToken !== undefined && !bearerTokenMatches(req.headers.authorization, deps.metricsToken)) {
      reply.header('www-authenticate', 'Bearer realm="snapferry metrics"');
      throw new ApiError('Unauthorized', req.headers.authorization ? 'The metrics token is not valid.' : 'GET /metrics needs Authorization: Bearer <metrics token>.');
    }
    return reply.header('content-type', 'text/plain; version=0.0.4').send(await deps.metrics.render());
  });

  volumeRoutes(app, env, deps.volumes);
  snapshotRoutes(app, env, deps.snapshots);
  volumeDataRoutes(app, env, deps.volumeData);
  for (const register of deps.extraRoutes ?? []) register(app, env);
  return app;
}
