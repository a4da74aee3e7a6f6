/**
 * What a process without the api role answers: only the paths its roles serve (every process:
 * /healthz and /metrics; a storage process also the disk routes api processes forward to it).
 * Anything else is `NoSuchRoute` in BCE's format, so a load balancer that sends a tenant to the
 * wrong process gets a clear answer rather than a half-working API.
 */
import type { FastifyInstance } from 'fastify';
import { ApiError } from '../domain/errors.ts';
import { sendError, type Log } from './error-reply.ts';

export function restrictRoutes(app: FastifyInstance, allowedPrefixes: string[], log: Log): void {
  app.addHook('onRequest', async (req, reply) => {
    const path = (req.raw.url ?? req.url).split('?')[0]!;
    if (allowedPrefixes.some((p) => path === p || (p.endsWith('/') && path.startsWith(p)))) return;
    sendError(reply, req, new ApiError('NoSuchRoute', `This process of the region does not serve ${req.method} ${path} (its roles do not include api).`), log);
    return reply;
  });
}
