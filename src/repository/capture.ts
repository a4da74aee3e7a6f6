/**
 * Snapshot capture: turns a disk into chunks and a manifest. Only chunks changed since the disk's
 * base (the manifest it matched at its last snapshot or restore) are read and hashed; the others keep
 * the base's ids. Writes that race the capture are handled by the disk's copy-on-write: the old bytes
 * arrive through the sink and are stored exactly as if the capture had read them.
 *
 * Durable progress: chunks become durable in bounded batches (CAPTURE_SYNC_BYTES), and after every
 * CHECKPOINT_MIN_BYTES read (more for a large manifest: a checkpoint encodes the whole manifest so
 * far, and its cost must stay a small fraction of the reading it saves) the manifest so far is stored
 * with the index below which every chunk is captured. An attempt cut short by a crash resumes from
 * its last checkpoint, so it reads again at most one checkpoint interval (the caller decides whether
 * it may resume: the disk must not have been written since the freeze).
 *
 * Garbage collection runs beside a capture: the caller holds a GC hold for the whole capture and
 * publishes under it (garbage-collector.ts, GC-2/GC-3); every chunk this capture stores or finds
 * stored gets a fresh last-used time through its writer's put.
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

/** A durable partial capture: every changed chunk below `doneBelow` is in `manifestId`. */
export interface CaptureCheckpoint {
  manifestId: string;
  doneBelow: number;
}

export type CaptureStep = 'frozen' | 'chunk-stored' | 'batch-synced' | 'checkpointed' | 'manifest-stored';

export interface CaptureOptions {
  onProgress?: (done: number, total: number) => void;
  signal?: AbortSignal;
  /** A checkpoint of an earlier attempt of the same snapshot, to continue from. */
  resumeFrom?: { manifest: Manifest; doneBelow: number };
  /** Persists a checkpoint (the job keeps it in its progress, where GC finds it as a root). */
  checkpoint?: (checkpoint: CaptureCheckpoint) => Promise<void>;
  /** Observes each step (tests run a garbage collection or a crash at each one). */
  onStep?: (step: CaptureStep) => Promise<void> | void;
}

/** How many chunks are read and hashed at once: enough to keep the hash pool and the disk busy. */
const CAPTURE_PARALLELISM = 8;
/** Chunks handled between two looks at the batch and checkpoint bounds; also the checkpoint grain. */
const WINDOW_CHUNKS = 256;
/** Unsynced chunk bytes that trigger a sync of the capture's writer. */
export const CAPTURE_SYNC_BYTES = 64 << 20;
/** Bytes read between checkpoints, at least; and at least 8x the manifest's encoded size. */
export const CHECKPOINT_MIN_BYTES = 256 << 20;

export async function captureDisk(repo: ChunkRepository, disk: Disk, base: DiskBase, options: CaptureOptions = {}): Promise<CaptureResult> {
  const { signal, onStep } = options;
  const start = options.resumeFrom?.manifest ?? base.manifest;
  const manifest = start ? start.resized(disk.size) : Manifest.empty(disk.size, disk.chunkSize);
  const doneBelow = options.resumeFrom?.doneBelow ?? 0;
  const writer = repo.chunks.writer();
  let bytesRead = 0;
  const take = async (index: number, bytes: Buffer): Promise<void> => {
    bytesRead += bytes.length;
    repo.metrics.snapshotBytesRead.inc(bytes.length);
    manifest.set(index, await repo.storeChunk(bytes, writer));
    await onStep?.('chunk-stored');
  };
  const capture = await disk.beginCapture(base.generation, { preserve: take });
  try {
    await onStep?.('frozen');
    const total = capture.changed.size;
    let done = 0;
    let readAtCheckpoint = 0;
    let window: number[] = [];
    const flushWindow = async (): Promise<void> => {
      await mapLimit(window, CAPTURE_PARALLELISM, async (index) => {
        signal?.throwIfAborted();
        const bytes = await capture.readChunk(index);
        if (bytes) await take(index, bytes);
        options.onProgress?.(++done, total);
      });
      const reached = window[window.length - 1]! + 1;
      window = [];
      if (writer.unsyncedBytes >= CAPTURE_SYNC_BYTES) {
        await writer.sync();
        await onStep?.('batch-synced');
      }
      const due = Math.max(CHECKPOINT_MIN_BYTES, 8 * 32 * manifest.nonZeroCount);
      if (options.checkpoint && bytesRead - readAtCheckpoint >= due) {
        // Chunks below `reached` are all captured (windows run in index order); their bytes are
        // synced by commitManifest before the partial manifest is stored.
        await options.checkpoint({ manifestId: await repo.commitManifest(manifest, writer), doneBelow: reached });
        readAtCheckpoint = bytesRead;
        await onStep?.('checkpointed');
      }
    };
    for (const index of capture.changed) {
      if (index < doneBelow) {
        // Captured by the attempt that wrote the checkpoint: its id is in the checkpoint manifest.
        // (A write to it now still hands its old bytes over: the same bytes, since the caller checked
        // that the disk was not written after the freeze.)
        options.onProgress?.(++done, total);
        continue;
      }
      window.push(index);
      if (window.length === WINDOW_CHUNKS) await flushWindow();
    }
    if (window.length > 0) await flushWindow();
    const manifestId = await repo.commitManifest(manifest, writer);
    await onStep?.('manifest-stored');
    return { manifestId, manifest, generation: capture.generation, chunksRead: total, bytesRead };
  } finally {
    capture.end();
  }
}
