/**
 * How a BCC route is declared: authenticate, build the RequestContext, run the handler, answer
 * JSON (or an empty 200). Handlers stay a few lines: parse input, call one service method, shape the
 * model.
 */
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { Readable } from 'node:stream';
import type { RequestContext } from '../services/request-context.ts';
import { authenticate, type CredentialDirectory } from './authenticate.ts';
import { guardBody, readAll } from './body-guard.ts';
import { MAX_JSON_BODY } from './json-input.ts';
import type { Query } from './query-input.ts';

export interface RouteEnv {
  region: string;
  tenants: CredentialDirectory;
  now: () => number;
}

export interface HandlerInput {
  ctx: RequestContext;
  params: Record<string, string>;
  query: Query;
  /** The request body as a stream (not yet read). */
  body: Readable;
  req: FastifyRequest;
  reply: FastifyReply;
}

/** A handler's answer: a JSON object, `undefined` for an empty 200, or STREAMED when it answered itself. */
export const STREAMED = Symbol('streamed');
export type HandlerResult = Record<string, unknown> | undefined | typeof STREAMED;

const bodies = new WeakMap<FastifyRequest, Readable>();

/**
 * The request body as handlers read it: at most the route's `bodyLimit` bytes, and failing with
 * BadDigest instead of ending when it does not match its digest headers (body-guard.ts). Throws
 * InvalidDigest or EntityTooLarge at once when the headers already say so.
 */
export function bodyStream(req: FastifyRequest): Readable {
  let body = bodies.get(req);
  if (!body) {
    body = guardBody((req.body as Readable | undefined) ?? req.raw, req.headers, req.routeOptions.bodyLimit);
    bodies.set(req, body);
  }
  return body;
}

/**
 * Reads the whole body (bounded, verified) before a handler acts on the request; `bodyStream(req)`
 * then replays the verified bytes. So a request whose body fails its digest never reaches its
 * handler, whether or not the handler reads the body.
 */
export async function readWholeBody(req: FastifyRequest): Promise<Buffer> {
  const bytes = await readAll(bodyStream(req));
  bodies.set(req, Readable.from(bytes.length > 0 ? [bytes] : []));
  return bytes;
}

export interface BccRouteOptions {
  /**
   * The handler reads the body as a stream, as it arrives (the data route): it must check the
   * body's digest before applying any of it. Otherwise the whole body is read and verified first.
   */
  streamBody?: boolean;
  /** Largest body accepted (default: a JSON body's limit). */
  bodyLimit?: number;
}

export function bccRoute(
  app: FastifyInstance,
  env: RouteEnv,
  methods: Array<'GET' | 'PUT' | 'POST' | 'DELETE'>,
  url: string,
  handler: (input: HandlerInput) => Promise<HandlerResult>,
  options: BccRouteOptions = {},
): void {
  app.route({
    method: methods,
    url,
    bodyLimit: options.bodyLimit ?? MAX_JSON_BODY,
    handler: async (req, reply) => {
      const who = authenticate({ method: req.method, rawUrl: req.raw.url ?? req.url, headers: req.headers }, env.tenants, env.now());
      const ctx: RequestContext = { accountId: who.accountId, region: env.region, requestId: req.id };
      if (!options.streamBody) await readWholeBody(req);
      const result = await handler({ ctx, params: req.params as Record<string, string>, query: req.query as Query, body: bodyStream(req), req, reply });
      if (result === STREAMED) return reply;
      // Drain an unread body so keep-alive connections stay usable. Every handler has verified what it
      // acted on; a digest failing in this drain has no one left to tell, and an 'error' event without
      // a listener would crash the process (it did: a zeroLength write carrying a wrong digest).
      const rest = bodyStream(req);
      rest.on('error', () => {});
      rest.resume();
      reply.code(200);
      if (result === undefined) return reply.send();
      return reply.header('content-type', 'application/json; charset=utf-8').send(JSON.stringify(result));
    },
  });
}
