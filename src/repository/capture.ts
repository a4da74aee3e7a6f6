/**
 * Snapshot capture: turns a disk into chunks and a manifest. Only chunks changed since the disk's
 * base (the manifest it matched at its last snapshot or restore) are read and hashed; the others keep
 * the base's ids. Writes that race the capture are handled by the disk's copy-on-write: the old bytes
 * arrive through the sink and are stored exactly as if the capture had read them.
 */
import type { Disk } from '../blockdev/disk.ts';
import { mapLimit } from '../lib/map-limit.ts';
import type { ChunkRepository } from './chunk-repository.ts';
import { Manifest } from './manifest.ts';

export interface DiskBase {
  manifest: Manifest | null;
  generation: number;
}

export interface CaptureResult {
  manifestId: string;
  manifest: Manifest;
  /** The disk generation the manifest describes: the disk's next base generation. */
  generation: number;
  chunksRead: number;
  bytesRead: number;
}

/** How many chunks are read and hashed at once: enough to keep the hash pool and the disk busy. */
const CAPTURE_PARALLELISM = 8;

export async function captureDisk(
  repo: ChunkRepository,
  disk: Disk,
  base: DiskBase,
  onProgress?: (done: number, total: number) => void,
  signal?: AbortSignal,
): Promise<CaptureResult> {
  return repo.lock.shared(async () => {
    const manifest = base.manifest ? base.manifest.resized(disk.size) : Manifest.empty(disk.size, disk.chunkSize);
    let bytesRead = 0;
    const take = async (index: number, bytes: Buffer): Promise<void> => {
      bytesRead += bytes.length;
      repo.metrics.snapshotBytesRead.inc(bytes.length);
      manifest.set(index, await repo.storeChunk(bytes));
    };
    const capture = await disk.beginCapture(base.generation, { preserve: take });
    try {
      let done = 0;
      await mapLimit(capture.changed, CAPTURE_PARALLELISM, async (index) => {
        signal?.throwIfAborted();
        const bytes = await capture.readChunk(index);
        if (bytes) await take(index, bytes);
        onProgress?.(++done, capture.changed.length);
      });
      const manifestId = await repo.commitManifest(manifest);
      return { manifestId, manifest, generation: capture.generation, chunksRead: capture.changed.length, bytesRead };
    } finally {
      capture.end();
    }
  });
}
