/**
 * What a region does at start, after a clean stop or a crash, before it serves: requeue jobs that
 * were running (they resume), and bring every record whose in-memory side is gone back to a truthful
 * state. Each step is idempotent.
 *
 * In a region that several processes share (`shared`: PostgreSQL metadata), a starting process
 * knows nothing of the others: it requeues no job and closes no GC hold (their leases lapse by
 * themselves if their process died: COORD rules in docs/design.md), and only a storage process
 * repairs disk records, those of its own disks (`region.node`).
 */
export interface RecoveryScope {
  /** Other processes may be using the same metadata store right now. */
  shared: boolean;
  /** This process owns disks (the storage role). */
  storage: boolean;
}

const EMBEDDED: RecoveryScope = { shared: false, storage: true };

import type { Volume } from '../domain/volume.ts';
import type { Region } from './region-context.ts';
import { SNAPSHOT_CREATE_JOB } from './snapshot-jobs.ts';

export async function recoverRegion(region: Region, scope: RecoveryScope = EMBEDDED): Promise<void> {
  if (!scope.storage) return;
  const requeued = scope.shared ? 0 : await region.meta.jobs.requeueAllRunning();
  // GC holds of captures of an earlier life of this process: none of them can publish any more
  // (their jobs were requeued and rerun under new holds), so they must not hold back GC's cutoff.
  if (!scope.shared) await region.meta.gcHolds.closeAll();
  const mine = (v: Volume): boolean => (v.storageNode ?? null) === region.node;
  // No block client survives a restart.
  for (const v of (await region.meta.volumes.listByStatus(['InUse'])).filter(mine)) {
    await region.meta.volumes.update(v.id, { status: 'Available' }, ['InUse']);
  }
  // A delete that was cut short: its record said Deleting; finish it.
  for (const v of (await region.meta.volumes.listByStatus(['Deleting'])).filter(mine)) {
    await region.meta.volumes.delete(v.id);
    await region.meta.diskBases.delete(v.id);
  }
  // A resize cut short may have grown the file but not the record: not trustworthy.
  for (const v of (await region.meta.volumes.listByStatus(['Scaling'])).filter(mine)) {
    await region.meta.volumes.update(v.id, { status: 'Error', lastError: 'a resize was interrupted by a restart' }, ['Scaling']);
  }
  // A snapshot whose record was inserted but whose capture job was not (a crash between the two
  // steps of snapshot create): enqueue it now. Enqueueing is idempotent by key, so a snapshot whose
  // job exists is untouched; without this it would stay Creating forever.
  for (const s of await region.meta.snapshots.listByStatus(['Creating'])) {
    if (s.sourceRegion !== null || s.volumeId === '') continue; // incoming copies are driven by their source
    if (await region.meta.jobs.getByKey(`snapshot.create:${s.id}`)) continue;
    const volume = await region.meta.volumes.getAny(s.volumeId);
    if (volume && !mine(volume)) continue; // its own storage process does this at its start
    await region.jobs.enqueue({ kind: SNAPSHOT_CREATE_JOB, key: `snapshot.create:${s.id}`, group: `capture:${s.volumeId}`, payload: { snapshotId: s.id, volumeId: s.volumeId }, node: region.node });
    region.log('warn', 'a snapshot had no capture job (a crash during its create); enqueued it', { snapshotId: s.id });
  }
  // Disk files whose volume record is gone (deleted, or never committed).
  for (const id of await region.disks.list()) {
    if (!(await region.meta.volumes.getAny(id))) await region.disks.delete(id);
  }
  if (requeued > 0) region.log('info', 'resuming interrupted jobs', { count: requeued });
}

/**
 * Manifests that garbage collection must keep (GC-1): those snapshots in any state name, disks'
 * bases, those queued or running jobs read (payload `manifestId`), and capture checkpoints (progress
 * `checkpoint.manifestId`, see snapshot-jobs.ts).
 */
export async function gcRoots(region: Region): Promise<Set<string>> {
  const roots = new Set<string>([...(await region.meta.snapshots.manifestIds()), ...(await region.meta.diskBases.manifestIds())]);
  for (const job of await region.meta.jobs.list(['queued', 'running'])) {
    const id = (job.payload as { manifestId?: unknown } | null)?.manifestId;
    if (typeof id === 'string') roots.add(id);
    const checkpoint = (job.progress as { checkpoint?: { manifestId?: unknown } } | null)?.checkpoint?.manifestId;
    if (typeof checkpoint === 'string') roots.add(checkpoint);
  }
  return roots;
}
