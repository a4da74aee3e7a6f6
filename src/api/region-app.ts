/**
 * One region's HTTP API: BCC routes, our data extension, operations routes, and (when given) the
 * internal region-to-region routes. Built as a Fastify instance so tests can `inject` requests
 * in-process; main.ts listens on it.
 */
import { randomUUID } from 'node:crypto';
import Fastify, { type FastifyInstance } from 'fastify';
import { ApiError } from '../domain/errors.ts';
import type { MetricsRegistry } from '../lib/metrics.ts';
import type { SnapshotService } from '../services/snapshot-service.ts';
import type { VolumeDataService } from '../services/volume-data-service.ts';
import type { VolumeService } from '../services/volume-service.ts';
import type { CredentialDirectory } from './authenticate.ts';
import { sendError, type Log } from './error-reply.ts';
import { snapshotRoutes } from './snapshot-routes.ts';
import { volumeDataRoutes } from './volume-data-routes.ts';
import { volumeRoutes } from './volume-routes.ts';
import type { RouteEnv } from './route-kit.ts';

export interface RegionApiDeps {
  region: string;
  tenants: CredentialDirectory;
  volumes: VolumeService;
  snapshots: SnapshotService;
  volumeData: VolumeDataService;
  metrics: MetricsRegistry;
  log: Log;
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

export function buildRegionApp(deps: RegionApiDeps): FastifyInstance {
  const app = Fastify({
    logger: false,
    genReqId: () => randomUUID(),
    requestIdHeader: false,
    routerOptions: { ignoreTrailingSlash: true },
    // Idle keep-alive sockets are closed on shutdown; requests in flight are allowed to finish.
    forceCloseConnections: 'idle',
    return503OnClosing: true,
    // No implicit HEAD routes: a HEAD on the data route would read a whole disk to send nothing.
    exposeHeadRoutes: false,
    frameworkErrors: (err, req, reply) => sendError(reply, req, err, deps.log),
  });
  const env: RouteEnv = { region: deps.region, tenants: deps.tenants, now: deps.now ?? Date.now };

  // Bodies are handed to handlers as streams: JSON routes read and parse them (to answer MalformedJSON
  // in BCE's format), the data route pipes them straight to the disk.
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('*', (_req, payload, done) => done(null, payload));

  app.addHook('onRequest', async (req, reply) => {
    reply.header('x-bce-request-id', req.id);
  });
  app.setErrorHandler((err, req, reply) => sendError(reply, req, err, deps.log));
  app.setNotFoundHandler((req, reply) => {
    const path = (req.raw.url ?? req.url).split('?')[0]!;
    const version = /^\/v(\d+)\//.exec(path);
    const error =
      version && version[1] !== '2' ? new ApiError('InvalidVersion', `API version v${version[1]} is not served; use v2.`)
      : KNOWN_PATHS.some((p) => p.test(path)) ? new ApiError('MethodNotAllowed', `${req.method} is not allowed on ${path}.`)
      : new ApiError('NoSuchRoute', `No API at ${req.method} ${path}.`);
    sendError(reply, req, error, deps.log);
  });

  app.get('/healthz', async (_req, reply) => reply.header('content-type', 'application/json; charset=utf-8').send(JSON.stringify({ status: 'ok', region: deps.region })));
  app.get('/metrics', async (_req, reply) => reply.header('content-type', 'text/plain; version=0.0.4').send(await deps.metrics.render()));

  volumeRoutes(app, env, deps.volumes);
  snapshotRoutes(app, env, deps.snapshots);
  volumeDataRoutes(app, env, deps.volumeData);
  for (const register of deps.extraRoutes ?? []) register(app, env);
  return app;
}

