import type { FastifyInstance } from 'fastify';
import { ApiError } from '../domain/errors.ts';
import type { SnapshotService } from '../services/snapshot-service.ts';
import { listEnvelope, snapshotModel } from './bcc-models.ts';
import { optInt, optString, optTags, readJsonBody, reqString } from './json-input.ts';
import { clientTokenOf, paging, queryFlag, queryString } from './query-input.ts';
import { bccRoute, type RouteEnv } from './route-kit.ts';

export function snapshotRoutes(app: FastifyInstance, env: RouteEnv, snapshots: SnapshotService): void {
  bccRoute(app, env, ['POST'], '/v2/snapshot', async ({ ctx, query, body }) => {
    const token = clientTokenOf(query);
    const json = await readJsonBody(body, true);
    const snapshotId = await snapshots.create(ctx, {
      volumeId: reqString(json, 'volumeId'),
      snapshotName: optString(json, 'snapshotName') ?? '',
      desc: optString(json, 'desc'),
      tags: optTags(json, 'tags'),
      retentionInDays: optInt(json, 'retentionInDays'),
    }, token);
    return { snapshotId };
  });

  bccRoute(app, env, ['GET'], '/v2/snapshot', async ({ ctx, query }) => {
    const { marker, maxKeys } = paging(query);
    const volumeId = queryString(query, 'volumeId') ?? undefined;
    const page = await snapshots.list(ctx, { volumeId }, marker, maxKeys);
    return listEnvelope('snapshots', page.items.map(snapshotModel), marker, maxKeys, page.nextMarker);
  });

  bccRoute(app, env, ['GET'], '/v2/snapshot/:id', async ({ ctx, params }) => ({ snapshot: snapshotModel(await snapshots.get(ctx, params.id!)) }));

  bccRoute(app, env, ['DELETE'], '/v2/snapshot/:id', async ({ ctx, params }) => {
    await snapshots.delete(ctx, params.id!);
    return undefined;
  });

  bccRoute(app, env, ['PUT'], '/v2/snapshot/:id', async ({ ctx, params, query, body }) => {
    if (!queryFlag(query, 'modifyAttribute')) throw new ApiError('BadRequest', 'PUT /v2/snapshot/{id} needs the action ?modifyAttribute.');
    const json = await readJsonBody(body, true);
    await snapshots.modify(ctx, params.id!, {
      snapshotName: optString(json, 'snapshotName'),
      desc: optString(json, 'desc'),
      retentionInDays: optInt(json, 'retentionInDays'),
    });
    return undefined;
  });
}
