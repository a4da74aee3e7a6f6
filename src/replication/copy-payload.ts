/** What a copy job is: its kind in the job queue and its payload (read by the job and by metrics). */
import type { ReserveRequest } from './peer-client.ts';

export const COPY_JOB = 'snapshot.copy';

export interface CopyPayload {
  sourceSnapshotId: string;
  /** The manifest being copied; also keeps it (and its chunks) safe from garbage collection. */
  manifestId: string;
  destRegion: string;
  destSnapshotId: string;
  reserve: ReserveRequest;
}
