/**
 * How a BCC route is declared: authenticate, build the RequestContext, run the handler, answer
 * JSON (or an empty 200). Handlers stay a few lines: parse input, call one service method, shape the
 * model.
 */
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { Readable } from 'node:stream';
import type { RequestContext } from '../services/request-context.ts';
import { authenticate, type CredentialDirectory } from './authenticate.ts';
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

export function bodyStream(req: FastifyRequest): Readable {
  return (req.body as Readable | undefined) ?? req.raw;
}

export function bccRoute(
  app: FastifyInstance,
  env: RouteEnv,
  methods: Array<'GET' | 'PUT' | 'POST' | 'DELETE'>,
  url: string,
  handler: (input: HandlerInput) => Promise<HandlerResult>,
): void {
  app.route({
    method: methods,
    url,
    handler: async (req, reply) => {
      const who = authenticate({ method: req.method, rawUrl: req.raw.url ?? req.url, headers: req.headers }, env.tenants, env.now());
      const ctx: RequestContext = { accountId: who.accountId, region: env.region, requestId: req.id };
      const result = await handler({ ctx, params: req.params as Record<string, string>, query: req.query as Query, body: bodyStream(req), req, reply });
      if (result === STREAMED) return reply;
      // Drain an unread body so keep-alive connections stay usable.
      bodyStream(req).resume();
      reply.code(200);
      if (result === undefined) return reply.send();
      return reply.header('content-type', 'application/json; charset=utf-8').send(JSON.stringify(result));
    },
  });
}
