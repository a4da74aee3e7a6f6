/**
 * Durable jobs that fill disks: creation (empty, or from a snapshot) and rollback. Both are safe to
 * run again from the start after a crash: creation recreates the disk file, a rollback rewrites
 * every chunk that may differ.
 */
import { GiB } from '../domain/volume.ts';
import type { JobHandler, RetryPolicy } from '../jobs/job-runner.ts';
import { PermanentJobError } from '../jobs/job-runner.ts';
import type { JobRecord } from '../metadata/metadata-store.ts';
import { restoreDisk } from '../repository/restore.ts';
import { ChunkIntegrityError, ChunkNotFoundError } from '../chunkstore/chunk-store.ts';
import type { Region } from './region-context.ts';
import { loadDiskBase } from './disk-base.ts';
import type { DiskBase } from '../repository/capture.ts';

export const VOLUME_CREATE_JOB = 'volume.create';
export const VOLUME_ROLLBACK_JOB = 'volume.rollback';

const LOCAL_RETRY: RetryPolicy = { initialDelayMs: 1000, maxDelayMs: 60_000, deadlineMs: 3600_000 };

interface CreatePayload {
  volumeId: string;
  manifestId: string | null;
}
interface RollbackPayload {
  volumeId: string;
  snapshotId: string;
  manifestId: string;
}

/**
 * Fills a disk from a manifest. Data that cannot be read back correctly (a damaged or missing chunk)
 * will not get better by retrying: that failure is permanent, everything else is retried.
 */
async function fillDisk(region: Region, volumeId: string, manifestId: string, current: DiskBase | null, signal: AbortSignal): Promise<void> {
  using held = await region.disks.acquire(volumeId);
  const disk = held.disk;
  try {
    await restoreDisk(region.repo, await region.repo.loadManifest(manifestId), disk, current, undefined, signal);
  } catch (e) {
    throw e instanceof ChunkIntegrityError || e instanceof ChunkNotFoundError ? new PermanentJobError((e as Error).message) : e;
  }
}

export function volumeCreateJob(region: Region): JobHandler {
  return {
    kind: VOLUME_CREATE_JOB,
    retry: LOCAL_RETRY,
    async run(job: JobRecord, control) {
      const { volumeId, manifestId } = job.payload as CreatePayload;
      const volume = await region.meta.volumes.getAny(volumeId);
      if (!volume || volume.status !== 'Creating') return; // deleted meanwhile, or done before a crash
      await region.disks.create(volumeId, volume.diskSizeInGB * GiB);
      if (manifestId) await fillDisk(region, volumeId, manifestId, null, control.signal);
      await region.meta.diskBases.set(volumeId, manifestId, 0);
      await region.meta.volumes.update(volumeId, { status: 'Available' }, ['Creating']);
      region.log('info', 'disk created', { volumeId, fromManifest: manifestId });
    },
    async onPermanentFailure(job, reason) {
      const { volumeId } = job.payload as CreatePayload;
      await region.meta.volumes.update(volumeId, { status: 'Error', lastError: reason }, ['Creating']);
    },
  };
}

export function volumeRollbackJob(region: Region): JobHandler {
  return {
    kind: VOLUME_ROLLBACK_JOB,
    retry: LOCAL_RETRY,
    async run(job: JobRecord, control) {
      const { volumeId, manifestId } = job.payload as RollbackPayload;
      const volume = await region.meta.volumes.getAny(volumeId);
      if (!volume || volume.status !== 'SnapshotProcessing') return;
      const release = region.leases.acquire(volumeId, 'maintenance');
      try {
        // A retry cannot trust the disk's base: the first attempt may have rewritten chunks. Without
        // it every chunk the snapshot holds is written again (still not the disk's zero chunks).
        const current = job.attempts === 1 ? await loadDiskBase(region, volumeId) : { manifest: null, generation: 0 };
        await fillDisk(region, volumeId, manifestId, current, control.signal);
        await region.meta.diskBases.set(volumeId, manifestId, 0);
        await region.meta.volumes.update(volumeId, { status: 'Available' }, ['SnapshotProcessing']);
        region.log('info', 'disk rolled back', { volumeId, manifestId });
      } finally {
        release();
      }
    },
    async onPermanentFailure(job, reason) {
      const { volumeId } = job.payload as RollbackPayload;
      await region.meta.volumes.update(volumeId, { status: 'Error', lastError: `rollback failed: ${reason}` }, ['SnapshotProcessing']);
    },
  };
}
