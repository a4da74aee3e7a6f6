/**
 * The snapshot capture job. Order: chunks durable, manifest durable, then the snapshot turns
 * Available, then the disk's base moves to the new manifest (a crash between the last two only makes
 * the next snapshot read a little more).
 *
 * Garbage collection (invariants GC-2, GC-3 in repository/garbage-collector.ts): the capture runs
 * under a GC hold, opened before it reads or stores anything and renewed while it runs; it publishes
 * the snapshot only in the same transaction that finds the hold live. A hold that lapsed (the process
 * stalled past its lease) aborts the attempt; the job retries with a new hold.
 *
 * Point in time across a crash: the first attempt records the disk generation it froze. A later
 * attempt can reproduce that instant only if no chunk was written since; otherwise the snapshot
 * fails (CreatedFailed) rather than silently capturing a later state. The check stays sound after a
 * crash because the chunk map then reports every chunk that may have been written as written in the
 * newest generation that saw a write (synced before that generation's first write lands; see
 * blockdev/chunk-map.ts). Such an attempt continues from the last checkpoint of the one before.
 */
import type { JobHandler } from '../jobs/job-runner.ts';
import { PermanentJobError } from '../jobs/job-runner.ts';
import type { JobRecord } from '../metadata/metadata-store.ts';
import { captureDisk, type CaptureCheckpoint } from '../repository/capture.ts';
import { loadDiskBase } from './disk-base.ts';
import { withGcHold } from './gc-hold.ts';
import type { Region } from './region-context.ts';

export const SNAPSHOT_CREATE_JOB = 'snapshot.create';
/** A snapshot's progress is saved at most this often (after its first percent). */
const PROGRESS_INTERVAL_MS = 250;

interface Payload {
  snapshotId: string;
  volumeId: string;
}
/** What a capture attempt keeps for the next one (job progress; a GC root while the job lives). */
export interface CaptureProgress {
  /** The generation that was current when the first attempt froze the disk. */
  frozenAt: number;
  checkpoint?: CaptureCheckpoint;
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
      using held = await region.disks.acquire(volumeId); // not closed while the capture runs
      const disk = held.disk;
      const earlier = job.progress as CaptureProgress | null;
      if (earlier) {
        for (let i = 0; i < disk.chunkCount; i++) {
          if (disk.map.generationOf(i) > earlier.frozenAt) {
            throw new PermanentJobError('the disk was written after the snapshot was started and before an interrupted capture could finish');
          }
        }
      } else {
        await control.saveProgress({ frozenAt: disk.map.currentGeneration } satisfies CaptureProgress);
      }
      const frozenAt = earlier?.frozenAt ?? disk.map.currentGeneration;
      await withGcHold(region, `capture ${snapshotId}`, control.signal, async (hold, signal) => {
        await region.steps?.('capture:hold-opened');
        const base = await loadDiskBase(region, volumeId);
        const resumeFrom = earlier?.checkpoint
          ? { manifest: await region.repo.loadManifest(earlier.checkpoint.manifestId), doneBelow: earlier.checkpoint.doneBelow }
          : undefined;
        let lastPercent = -1;
        let lastAt = 0;
        const result = await captureDisk(region.repo, disk, base, {
          signal,
          resumeFrom,
          onProgress: (done, total) => {
            const percent = Math.floor((done * 99) / Math.max(1, total));
            if (percent === lastPercent) return;
            // Each update is a durable write of the metadata store (an fsync, on the event loop for
            // SQLite): the first percent above 0 at once, later ones at most every PROGRESS_INTERVAL_MS.
            const now = Date.now();
            if (lastPercent > 0 && now - lastAt < PROGRESS_INTERVAL_MS) return;
            lastPercent = percent;
            lastAt = now;
            void region.meta.snapshots.update(snapshotId, { progress: percent }, ['Creating']);
          },
          checkpoint: (checkpoint) => control.saveProgress({ frozenAt, checkpoint } satisfies CaptureProgress),
          onStep: region.steps ? (step) => region.steps!(`capture:${step}`) : undefined,
        });
        const published = await region.meta.snapshots.publishUnderHold(snapshotId, { status: 'Available', progress: 100, manifestId: result.manifestId }, hold, Date.now());
        if (!published) {
          const still = await region.meta.snapshots.getAny(snapshotId);
          if (!still || still.status !== 'Creating') return; // deleted or failed meanwhile: nothing to publish
          throw new Error('the capture lost its GC hold before it could publish; retrying');
        }
        await region.steps?.('capture:published');
        await region.meta.diskBases.set(volumeId, result.manifestId, result.generation);
        region.log('info', 'snapshot created', { snapshotId, volumeId, chunksRead: result.chunksRead, bytesRead: result.bytesRead });
      });
    },
    async onPermanentFailure(job, reason) {
      const { snapshotId } = job.payload as Payload;
      await region.meta.snapshots.update(snapshotId, { status: 'CreatedFailed', lastError: reason }, ['Creating']);
    },
  };
}
