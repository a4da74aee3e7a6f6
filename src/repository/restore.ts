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

/**
 * Chunks read and written at once, bounded by the buffers they hold (two per chunk: its stored form
 * and, for a compressed one, its plain bytes): at most RESTORE_BUFFER_BYTES, never fewer than two
 * chunks. 1 GiB of the mixed bench image, three restores each, caches dropped, beside `cp`+`sync`
 * of its image: 4 in flight 1.69-2.34 s (cp 1.26-1.40 s), 8 in flight 1.21-1.43 s (cp 1.10-1.26 s),
 * 16 in flight 1.46-1.91 s (cp 1.29-1.37 s).
 */
const RESTORE_BUFFER_BYTES = 16 << 20;
const RESTORE_MAX_IN_FLIGHT = 8;

function restoreInFlight(chunkSize: number): number {
  return Math.max(2, Math.min(RESTORE_MAX_IN_FLIGHT, Math.floor(RESTORE_BUFFER_BYTES / (2 * chunkSize))));
}

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
  // No lock against garbage collection: the manifest being restored is a root for as long as the
  // restore's job is queued or running (gcRoots), so none of its chunks can be collected.
  //
  // Nothing here is one entry per chunk of the disk (the largest has 33.5 M): the work is a lazy walk
  // of the manifest's non-zero chunks, ids are compared as bytes and fetched as hex only for chunks
  // that are written, and the map reset asks one bit per chunk. Rejected: collecting the work into
  // an array first (8 bytes a chunk, and a hex string per chunk to decide what goes in it).
  const base = current?.manifest ?? null;
  const unchanged = (i: number): boolean =>
    base !== null && i < base.chunkCount && disk.map.generationOf(i) <= current!.generation && !disk.map.isTrimmed(i) && manifest.sameChunk(i, base);
  function* work(): IterableIterator<number> {
    for (const i of manifest.nonZeroIndexes()) if (!unchanged(i)) yield i;
  }
  let total = 0;
  if (onProgress) for (const _ of work()) total++;
  let done = 0;
  const inFlight = restoreInFlight(manifest.chunkSize);
  await mapLimit(work(), inFlight, async (i) => {
    signal?.throwIfAborted();
    const { data, release } = await repo.readVerified(manifest.chunkId(i)!, repo.readBuffers, manifest.chunkSize);
    try {
      await disk.restoreChunk(i, data);
    } finally {
      release(); // the write has settled: nothing reads the buffer any more
    }
    repo.metrics.restoreBytesWritten.inc(data.length);
    onProgress?.(++done, total);
  });
  // RESTORE-1: durable before the map says so (the chunk map's unclean-open rule relies on it); direct writes too.
  await disk.flush();
  // Chunks the snapshot holds as zero read as zero from now on: holes on a fresh disk; on a used
  // disk they are marked trimmed, which costs no data write.
  await disk.map.resetAll((i) => {
    if (i < manifest.chunkCount && !manifest.isZero(i)) return 'data';
    const isHole = !disk.map.isAllocated(i) && !disk.map.isTrimmed(i);
    return current === null || isHole ? 'hole' : 'trimmed';
  });
}
