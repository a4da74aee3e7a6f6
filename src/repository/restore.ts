/**
 * Restore: fills a disk with a snapshot's bytes (a new disk from a snapshot, or a rollback). Every
 * chunk is re-hashed as it is read from the store; a damaged or missing chunk fails the restore, it is
 * never written to the disk. When the disk still matches a base manifest for a chunk (it was not
 * written since), and the base names the same chunk, the chunk is skipped: a rollback to a recent
 * snapshot rewrites only what changed.
 */
import type { Disk } from '../blockdev/disk.ts';
import { mapLimit } from '../lib/map-limit.ts';
import type { DiskBase } from './capture.ts';
import type { ChunkRepository } from './chunk-repository.ts';
import type { Manifest } from './manifest.ts';

const RESTORE_PARALLELISM = 4;

export async function restoreDisk(
  repo: ChunkRepository,
  manifest: Manifest,
  disk: Disk,
  /** What the disk holds now; null for a freshly created (all-hole) disk. */
  current: DiskBase | null,
  onProgress?: (done: number, total: number) => void,
  signal?: AbortSignal,
): Promise<void> {
  if (manifest.diskSize > disk.size) throw new RangeError('the snapshot is larger than the disk');
  if (manifest.chunkSize !== disk.chunkSize) throw new RangeError('the snapshot and the disk use different chunk sizes');
  await repo.lock.shared(async () => {
    const unchanged = (i: number): boolean =>
      current !== null && current.manifest !== null && i < current.manifest.chunkCount &&
      disk.map.generationOf(i) <= current.generation && current.manifest.chunkId(i) === manifest.chunkId(i) &&
      !disk.map.isTrimmed(i);
    const work: number[] = [];
    for (let i = 0; i < manifest.chunkCount; i++) if (manifest.chunkId(i) !== null && !unchanged(i)) work.push(i);
    let done = 0;
    await mapLimit(work, RESTORE_PARALLELISM, async (i) => {
      signal?.throwIfAborted();
      const bytes = await repo.chunks.get(manifest.chunkId(i)!);
      await disk.restoreChunk(i, bytes);
      repo.metrics.restoreBytesWritten.inc(bytes.length);
      onProgress?.(++done, work.length);
    });
    await disk.flush();
    // Chunks the snapshot holds as zero read as zero from now on: holes on a fresh disk; on a used
    // disk they are marked trimmed, which costs no data write.
    await disk.map.resetAll((i) => {
      if (i < manifest.chunkCount && manifest.chunkId(i) !== null) return 'data';
      const isHole = !disk.map.isAllocated(i) && !disk.map.isTrimmed(i);
      return current === null || isHole ? 'hole' : 'trimmed';
    });
  });
}
