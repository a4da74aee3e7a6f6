/**
 * PUT (and POST) /v2/snapshot/remote_copy/{id}: copy a snapshot to other regions (bcc-api.md §3).
 * GET on the same path is our extension: how each copy made from this snapshot is doing.
 */
import type { FastifyInstance } from 'fastify';
import { ApiError } from '../domain/errors.ts';
import type { DestinationRequest, RemoteCopyService } from '../services/remote-copy-service.ts';
import { optArray, readJsonBody } from './json-input.ts';
import { clientTokenOf } from './query-input.ts';
import { bccRoute, type RouteEnv } from './route-kit.ts';

function destinationsOf(json: Record<string, unknown>): DestinationRequest[] {
  const list = optArray(json, 'destRegionInfos');
  if (list === null) throw new ApiError('InappropriateJSON', 'The field destRegionInfos is required.');
  return list.map((entry, i) => {
    if (!entry || typeof entry !== 'object' || Array.isArray(entry)) throw new ApiError('InappropriateJSON', `destRegionInfos[${i}] must be an object.`);
    const { destRegion, name } = entry as Record<string, unknown>;
    if (typeof destRegion !== 'string' || destRegion === '') throw new ApiError('InappropriateJSON', `destRegionInfos[${i}].destRegion must be a region id.`);
    if (name !== undefined && name !== null && typeof name !== 'string') throw new ApiError('InappropriateJSON', `destRegionInfos[${i}].name must be a string.`);
    return { destRegion, name: typeof name === 'string' && name !== '' ? name : null };
  });
}

export function remoteCopyRoutes(copies: RemoteCopyService) {
  return (app: FastifyInstance, env: RouteEnv): void => {
    bccRoute(app, env, ['PUT', 'POST'], '/v2/snapshot/remote_copy/:id', async ({ ctx, params, query, body }) => {
      const token = clientTokenOf(query);
      const json = await readJsonBody(body, true);
      return { result: await copies.copy(ctx, params.id!, destinationsOf(json), token) };
    });

    bccRoute(app, env, ['GET'], '/v2/snapshot/remote_copy/:id', async ({ ctx, params }) => ({ copies: await copies.status(ctx, params.id!) }));
  };
}
