/**
 * The snapshot capture job. Order: chunks durable, manifest durable, then the snapshot turns
 * Available, then the disk's base moves to the new manifest (a crash between the last two only makes
 * the next snapshot read a little more).
 *
 * Point in time across a crash: the first attempt records the disk generation it froze. A later
 * attempt can reproduce that instant only if no chunk was written since; otherwise the snapshot
 * fails (CreatedFailed) rather than silently capturing a later state. The check stays sound after a
 * crash because the chunk map then reports every chunk as written in the newest generation that
 * saw a write (synced before that generation's first write lands; see blockdev/chunk-map.ts).
 */
import type { JobHandler } from '../jobs/job-runner.ts';
import { PermanentJobError } from '../jobs/job-runner.ts';
import type { JobRecord } from '../metadata/metadata-store.ts';
import { captureDisk } from '../repository/capture.ts';
import { loadDiskBase } from './disk-base.ts';
import type { Region } from './region-context.ts';

export const SNAPSHOT_CREATE_JOB = 'snapshot.create';

interface Payload {
  snapshotId: string;
  volumeId: string;
}
interface Progress {
  /** The generation that was current when the first attempt froze the disk. */
  frozenAt: number;
}

export function snapshotCreateJob(region: Region): JobHandler {
  return {
    kind: SNAPSHOT_CREATE_JOB,
    retry: { initialDelayMs: 1000, maxDelayMs: 60_000, deadlineMs: 3600_000 },
    async run(job: JobRecord, control) {
      const { snapshotId, volumeId } = job.payload as Payload;
      const snapshot = await region.meta.snapshots.getAny(snapshotId);
      if (!snapshot || snapshot.status !== 'Creating') return;
      const volume = await region.meta.volumes.getAny(volumeId);
      if (!volume) throw new PermanentJobError(`the disk ${volumeId} was deleted before its snapshot was taken`);
      const disk = await region.disks.open(volumeId);
      const earlier = job.progress as Progress | null;
      if (earlier) {
        for (let i = 0; i < disk.chunkCount; i++) {
          if (disk.map.generationOf(i) > earlier.frozenAt) {
            throw new PermanentJobError('the disk was written after the snapshot was started and before an interrupted capture could finish');
          }
        }
      } else {
        await control.saveProgress({ frozenAt: disk.map.currentGeneration } satisfies Progress);
      }
      const base = await loadDiskBase(region, volumeId);
      let lastPercent = -1;
      const result = await captureDisk(region.repo, disk, base, (done, total) => {
        const percent = Math.floor((done * 99) / Math.max(1, total));
        if (percent !== lastPercent) {
          lastPercent = percent;
          void region.meta.snapshots.update(snapshotId, { progress: percent }, ['Creating']);
        }
      }, control.signal);
      const published = await region.meta.snapshots.update(snapshotId, { status: 'Available', progress: 100, manifestId: result.manifestId }, ['Creating']);
      if (published) await region.meta.diskBases.set(volumeId, result.manifestId, result.generation);
      region.log('info', 'snapshot created', { snapshotId, volumeId, chunksRead: result.chunksRead, bytesRead: result.bytesRead });
    },
    async onPermanentFailure(job, reason) {
      const { snapshotId } = job.payload as Payload;
      await region.meta.snapshots.update(snapshotId, { status: 'CreatedFailed', lastError: reason }, ['Creating']);
    },
  };
}
