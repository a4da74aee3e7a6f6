import { ApiError } from '../domain/errors.ts';
import type { VolumeService } from '../services/volume-service.ts';
import { volumeModel, listEnvelope } from './bcc-models.ts';
import { optInt, optString, optTags, readJsonBody, reqString } from './json-input.ts';
import { clientTokenOf, paging, queryFlag, queryString } from './query-input.ts';
import { bccRoute, type RouteEnv } from './route-kit.ts';
import type { FastifyInstance } from 'fastify';

export function volumeRoutes(app: FastifyInstance, env: RouteEnv, volumes: VolumeService): void {
  bccRoute(app, env, ['POST'], '/v2/volume', async ({ ctx, query, body }) => {
    const token = clientTokenOf(query);
    const json = await readJsonBody(body, true);
    const volumeIds = await volumes.create(ctx, {
      cdsSizeInGB: optInt(json, 'cdsSizeInGB'),
      snapshotId: optString(json, 'snapshotId'),
      purchaseCount: optInt(json, 'purchaseCount'),
      storageType: optString(json, 'storageType'),
      zoneName: optString(json, 'zoneName'),
      name: optString(json, 'name'),
      description: optString(json, 'description'),
      tags: optTags(json, 'tags'),
    }, token);
    return { volumeIds };
  });

  bccRoute(app, env, ['GET'], '/v2/volume', async ({ ctx, query }) => {
    const { marker, maxKeys } = paging(query);
    const ids = queryString(query, 'volumeIds');
    const filter = {
      zoneName: queryString(query, 'zoneName') ?? undefined,
      name: queryString(query, 'name') ?? undefined,
      volumeIds: ids === null ? undefined : ids.split(',').map((x) => x.trim()).filter((x) => x !== ''),
      instanceId: queryString(query, 'instanceId') ?? undefined,
      clusterId: queryString(query, 'clusterId') ?? undefined,
      chargeFilter: queryString(query, 'chargeFilter') ?? undefined,
      usageFilter: queryString(query, 'usageFilter') ?? undefined,
    };
    const page = await volumes.list(ctx, filter, marker, maxKeys);
    return listEnvelope('volumes', page.items.map((v) => volumeModel(v, env.region)), marker, maxKeys, page.nextMarker);
  });

  bccRoute(app, env, ['GET'], '/v2/volume/:id', async ({ ctx, params }) => ({ volume: volumeModel(await volumes.get(ctx, params.id!), env.region) }));

  bccRoute(app, env, ['DELETE'], '/v2/volume/:id', async ({ ctx, params }) => {
    await volumes.delete(ctx, params.id!);
    return undefined;
  });

  // Sub-actions are bare query flags: `?rollback` (Go) or `?rollback=` (Python) both arrive here.
  bccRoute(app, env, ['PUT'], '/v2/volume/:id', async ({ ctx, params, query, body }) => {
    if (queryFlag(query, 'rollback')) {
      const json = await readJsonBody(body, true);
      await volumes.rollback(ctx, params.id!, reqString(json, 'snapshotId'));
      return undefined;
    }
    if (queryFlag(query, 'resize')) {
      const token = clientTokenOf(query);
      const json = await readJsonBody(body, true);
      const newSizeGB = optInt(json, 'newCdsSizeInGB');
      const newType = optString(json, 'newVolumeType');
      if (newSizeGB === null && newType === null) throw new ApiError('InappropriateJSON', 'Give newCdsSizeInGB and/or newVolumeType.');
      await volumes.resize(ctx, params.id!, { newSizeGB, newType }, token);
      return {};
    }
    throw new ApiError('BadRequest', 'PUT /v2/volume/{id} needs an action: ?rollback or ?resize.');
  });
}
