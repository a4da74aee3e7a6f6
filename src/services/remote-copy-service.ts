/**
 * Remote copy, source side (bcc-api.md §3 "Remote copy"): validate, reserve one snapshot record per
 * destination, answer their ids, and leave the bytes to a durable copy job per destination.
 */
import { ApiError } from '../domain/errors.ts';
import { newSnapshotId } from '../domain/ids.ts';
import { isValidSnapshotName } from '../domain/snapshot.ts';
import { REGION_BOUND_STORAGE_TYPES } from '../domain/volume.ts';
import { COPY_JOB, type CopyPayload } from '../replication/copy-payload.ts';
import { isTransient, type PeerClient } from '../replication/peer-client.ts';
import { mapLimit } from '../lib/map-limit.ts';
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
/** Keep-alive reserves in flight at once (each is one small durable write at a destination). */
const KEEPALIVE_CONCURRENCY = 8;

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

  /**
   * Housekeeping: re-sends the idempotent reserve of every queued or running copy, so the
   * destination, whose silence deadline would fail an incoming copy that never hears from its
   * source, knows it is only waiting here (behind the per-destination cap, or in a retry backoff).
   * Must run more often than the destinations' deadline (it runs with every housekeeping round).
   * Returns how many destinations were reached.
   */
  async keepAlive(): Promise<number> {
    const jobs = await this.region.meta.jobs.list(['queued', 'running'], [COPY_JOB]);
    let reached = 0;
    const unreachable = new Set<string>();
    await mapLimit(jobs, KEEPALIVE_CONCURRENCY, async (job) => {
      const p = job.payload as CopyPayload;
      const peer = this.peers(p.destRegion);
      if (!peer || unreachable.has(p.destRegion)) return;
      try {
        await peer.reserve(p.destSnapshotId, p.reserve, AbortSignal.timeout(RESERVE_TIMEOUT_MS));
        reached++;
      } catch (e) {
        // The job itself reports what is wrong with the destination; one line per round is enough.
        if (isTransient(e)) unreachable.add(p.destRegion);
        this.region.log('warn', 'could not keep a queued copy alive at its destination', { destRegion: p.destRegion, destSnapshotId: p.destSnapshotId, err: String(e) });
      }
    });
    return reached;
  }

  /** True while a copy job will still read this snapshot (it may not be deleted meanwhile). */
  async isBeingRead(snapshotId: string): Promise<boolean> {
    const jobs = await this.region.meta.jobs.list(['queued', 'running'], [COPY_JOB]);
    return jobs.some((j) => (j.payload as CopyPayload).sourceSnapshotId === snapshotId);
  }
}
