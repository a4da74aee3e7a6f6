/**
 * Remote copy, source side (bcc-api.md §3 "Remote copy"): validate, reserve one snapshot record per
 * destination, answer their ids, and leave the bytes to a durable copy job per destination.
 */
import { ApiError } from '../domain/errors.ts';
import { newSnapshotId } from '../domain/ids.ts';
import { isValidSnapshotName } from '../domain/snapshot.ts';
import { REGION_BOUND_STORAGE_TYPES } from '../domain/volume.ts';
import { COPY_JOB, type CopyPayload } from '../replication/copy-payload.ts';
import type { PeerClient } from '../replication/peer-client.ts';
import { withClientToken } from './client-token.ts';
import type { Region } from './region-context.ts';
import type { RequestContext } from './request-context.ts';

export interface DestinationRequest {
  name: string | null;
  destRegion: string;
}

export interface CopyStatus {
  region: string;
  snapshotId: string;
  state: 'queued' | 'running' | 'done' | 'failed';
  progress: number;
  attempts: number;
  lastError: string | null;
}

/** How long the request waits for a destination to reserve its record before leaving it to the job. */
const RESERVE_TIMEOUT_MS = 5000;

export class RemoteCopyService {
  constructor(
    private readonly region: Region,
    private readonly peers: (region: string) => PeerClient | null,
  ) {}

  async copy(ctx: RequestContext, sourceId: string, destinations: DestinationRequest[], clientToken: string | null): Promise<Array<{ region: string; snapshotId: string }>> {
    const source = await this.region.meta.snapshots.get(ctx.accountId, sourceId);
    if (!source) throw new ApiError('NoSuchObject', `The snapshot ${sourceId} does not exist.`);
    if (REGION_BOUND_STORAGE_TYPES.has(source.storageType)) {
      throw new ApiError('snapshot.CannotCopy', `Snapshots of ${source.storageType} disks stay in their region.`);
    }
    if (destinations.length === 0) throw new ApiError('OperationDenied', 'destRegionInfos names no destination.');
    const seen = new Set<string>();
    for (const d of destinations) {
      if (d.destRegion === this.region.name) throw new ApiError('OperationDenied', `destRegion ${d.destRegion} is the snapshot's own region.`);
      if (!this.peers(d.destRegion)) throw new ApiError('OperationDenied', `destRegion ${JSON.stringify(d.destRegion)} is not a region this one can copy to.`);
      if (seen.has(d.destRegion)) throw new ApiError('OperationDenied', `destRegion ${d.destRegion} is named twice.`);
      seen.add(d.destRegion);
      if (d.name !== null && !isValidSnapshotName(d.name)) throw new ApiError('OperationDenied', `name ${JSON.stringify(d.name)} is not a valid snapshot name.`);
    }

    return withClientToken(
      this.region.meta.idempotency, ctx, 'snapshot.remoteCopy', clientToken, { sourceId, destinations },
      () => destinations.map((d) => ({ region: d.destRegion, snapshotId: newSnapshotId() })),
      async (planned) => {
        // The state check sits here so a retry of a completed token still answers the same ids.
        const current = await this.region.meta.snapshots.get(ctx.accountId, sourceId);
        if (!current || current.status !== 'Available' || !current.manifestId) {
          throw new ApiError('OperationDenied', `The snapshot ${sourceId} is ${current?.status ?? 'gone'}; only Available snapshots can be copied.`);
        }
        for (const [i, d] of destinations.entries()) {
          const payload: CopyPayload = {
            sourceSnapshotId: sourceId, manifestId: current.manifestId, destRegion: d.destRegion, destSnapshotId: planned[i]!.snapshotId,
            reserve: {
              accountId: ctx.accountId, name: d.name ?? current.name, desc: current.desc, sizeInGB: current.sizeInGB,
              storageType: current.storageType, sourceRegion: this.region.name, sourceSnapshotId: sourceId,
            },
          };
          // Reserve now when the destination answers quickly, so its id is visible at once; the job
          // reserves again (idempotently) in any case, so an unreachable destination only delays it.
          try {
            await this.peers(d.destRegion)!.reserve(payload.destSnapshotId, payload.reserve, AbortSignal.timeout(RESERVE_TIMEOUT_MS));
          } catch (e) {
            this.region.log('warn', 'destination did not reserve the copy at once; the copy job will retry', { destRegion: d.destRegion, err: String(e) });
          }
          await this.region.jobs.enqueue({ kind: COPY_JOB, key: `copy:${sourceId}:${d.destRegion}:${payload.destSnapshotId}`, group: `copy:${d.destRegion}`, payload });
        }
      },
    );
  }

  /** Our extension: the state of every copy made from one snapshot, as the source sees it. */
  async status(ctx: RequestContext, sourceId: string): Promise<CopyStatus[]> {
    const source = await this.region.meta.snapshots.get(ctx.accountId, sourceId);
    if (!source) throw new ApiError('NoSuchObject', `The snapshot ${sourceId} does not exist.`);
    const jobs = await this.region.meta.jobs.list(['queued', 'running', 'done', 'failed'], [COPY_JOB]);
    return jobs
      .filter((j) => (j.payload as CopyPayload).sourceSnapshotId === sourceId)
      .map((j) => {
        const p = j.payload as CopyPayload;
        const progress = j.state === 'done' ? 100 : ((j.progress as { percent?: number } | null)?.percent ?? 0);
        return { region: p.destRegion, snapshotId: p.destSnapshotId, state: j.state, progress, attempts: j.attempts, lastError: j.lastError };
      });
  }

  /** True while a copy job will still read this snapshot (it may not be deleted meanwhile). */
  async isBeingRead(snapshotId: string): Promise<boolean> {
    const jobs = await this.region.meta.jobs.list(['queued', 'running'], [COPY_JOB]);
    return jobs.some((j) => (j.payload as CopyPayload).sourceSnapshotId === snapshotId);
  }
}
