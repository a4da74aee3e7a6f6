/**
 * Snapshot capture: turns a disk into chunks and a manifest. Only chunks changed since the disk's
 * base (the manifest it matched at its last snapshot or restore) are read and hashed; the others keep
 * the base's ids. Writes that race the capture are handled by the disk's copy-on-write: the old bytes
 * arrive through the sink and are stored exactly as if the capture had read them.
 *
 * Durable progress: chunks become durable in bounded batches (a sync of the capture's writer starts
 * at every CAPTURE_SYNC_BYTES stored and runs while the next batch is read; that batch waits for it
 * before its own sync starts, so at most two batches are ever not yet durable), and after every
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
import { alignedSharedMemory } from '../lib/aligned-memory.ts';
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

/**
 * The pipeline (measured on the 2-core dev VM, docs/benchmarks.md "Where a full snapshot's time
 * goes"): reads of consecutive changed chunks, up to READ_RUN_BYTES each (one syscall for 4 MiB
 * where there were four), READS_IN_FLIGHT runs at once (one read at a time leaves the virtual disk
 * at a fraction of what it delivers with a queue: 233 MiB/s against ~1100 MiB/s with 4 x 4 MiB),
 * past the page cache (Disk's readChunks: a capture reads each chunk once, and the copy out of the
 * page cache was the largest system-CPU cost), into shared, page-aligned memory that the hash pool's
 * workers hash in place (no copy into the pool's slots). Each chunk of a read is zero-tested, hashed
 * and put as soon as the read lands; its buffer goes back to the pool once every chunk of it is
 * stored. The batch syncs and checkpoints run behind the reading instead of stopping it
 * (`Pipeline.durably`). Memory: one buffer per run in flight, READ_MEMORY_BYTES (12 MiB) per
 * capture, plus at most PRESERVE_BUDGET of copy-on-write bytes waiting to be stored. A chunk larger
 * than a run (chunk sizes go up to 64 MiB) is a run of its own, and fewer of them are in flight,
 * but never fewer than two (one being read while the other is stored): 2 x the chunk size then.
 *
 * Why not longer runs: 16 MiB runs were faster (a 1 GiB capture, alternating runs in one process:
 * median 1449 ms over 13 runs against 1629 over 14; 4 GiB: 5305 against 5647 ms), but their 48 MiB
 * are a WebAssembly memory that only a collection frees, and the replication bench's server peaked
 * at 308 MiB with them against 266 MiB without (one run each, same hour), past the 300 MiB the
 * service keeps to. The time is the I/O's: a simulation of only these reads and writes takes
 * as long (docs/benchmarks.md).
 */
const READ_RUN_BYTES = 4 << 20;
const READS_IN_FLIGHT = 3;
const READ_MEMORY_BYTES = READS_IN_FLIGHT * READ_RUN_BYTES;

/** How a capture of chunks of `chunkSize` reads: chunks per run, runs in flight (see above). */
export function readPlan(chunkSize: number): { runChunks: number; readsInFlight: number } {
  const runChunks = Math.max(1, Math.floor(READ_RUN_BYTES / chunkSize));
  const readsInFlight = Math.min(READS_IN_FLIGHT, Math.max(2, Math.floor(READ_MEMORY_BYTES / (runChunks * chunkSize))));
  return { runChunks, readsInFlight };
}
/** Preserved (copy-on-write) bytes that may wait to be stored before a write waits for its own. */
const PRESERVE_BUDGET = 32 << 20;
/** Unsynced chunk bytes that start a sync of the capture's writer (at most two batches are unsynced). */
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
  const { runChunks, readsInFlight } = readPlan(disk.chunkSize);
  const pipeline = new Pipeline(disk.chunkSize, runChunks, readsInFlight);
  // Copy-on-write: the bytes a write is about to overwrite arrive in a buffer of their own; the
  // write waits only until they are handed over, and they are stored behind it, unless
  // PRESERVE_BUDGET bytes already wait to be stored (then the write waits for its chunk's store, so
  // a guest rewriting the whole disk during a capture cannot fill the memory).
  const preserved = new Map<number, Promise<void>>();
  let preservingBytes = 0;
  const preserve = async (index: number, bytes: Buffer): Promise<void> => {
    preservingBytes += bytes.length;
    const stored = pipeline.background(take(index, bytes).finally(() => (preservingBytes -= bytes.length)));
    preserved.set(index, stored);
    void stored.then(() => {
      if (preserved.get(index) === stored) preserved.delete(index); // only those in flight: no entry per chunk
    });
    if (preservingBytes > PRESERVE_BUDGET) await stored;
  };
  const capture = await disk.beginCapture(base.generation, { preserve });
  try {
    await onStep?.('frozen');
    const total = capture.changed.size;
    let done = 0;
    let readAtCheckpoint = 0;
    const progress = (n: number): void => {
      for (let k = 0; k < n; k++) options.onProgress?.(++done, total);
    };
    const readRun = async (first: number, count: number): Promise<void> => {
      const buffer = pipeline.buffer();
      try {
        signal?.throwIfAborted();
        const chunks = await capture.readChunks(first, count, buffer);
        // allSettled: the buffer is reused only once no chunk of it is still being hashed or written.
        const outcomes = await Promise.allSettled(chunks.map(async (bytes, k) => {
          if (bytes) await take(first + k, bytes);
          else await preserved.get(first + k); // preserved by a write: done once stored
        }));
        for (const o of outcomes) if (o.status === 'rejected') throw o.reason;
        progress(count);
      } finally {
        pipeline.release(buffer);
      }
    };
    const afterRun = async (): Promise<void> => {
      if (writer.unsyncedBytes >= CAPTURE_SYNC_BYTES) {
        // Started now, it covers every chunk stored so far; the next batch fills while it runs and
        // waits for it (so at most two batches are unsynced).
        await pipeline.durably(async () => {
          await writer.sync();
          await onStep?.('batch-synced');
        }, { wait: 'previous' });
      }
      const due = Math.max(CHECKPOINT_MIN_BYTES, 8 * 32 * manifest.nonZeroCount);
      if (options.checkpoint && bytesRead - readAtCheckpoint >= due) {
        readAtCheckpoint = bytesRead;
        // Every chunk below `reached` is captured, and every id in `manifest` now was stored by a put
        // that resolved before this instant; commitManifest syncs the writer (after the batch syncs
        // queued before it) before the copy is stored, so the checkpoint names only durable chunks.
        const reached = pipeline.doneBelow();
        const snapshot = manifest.clone();
        await pipeline.durably(async () => {
          await options.checkpoint!({ manifestId: await repo.commitManifest(snapshot, writer), doneBelow: reached });
          await onStep?.('checkpointed');
        }, { wait: 'none' });
      }
    };
    let run: { first: number; count: number } | null = null;
    const issue = async (): Promise<void> => {
      const { first, count } = run!;
      run = null;
      await pipeline.issue(first, count, () => readRun(first, count));
      await afterRun();
    };
    for (const index of capture.changed) {
      if (index < doneBelow) {
        // Captured by the attempt that wrote the checkpoint: its id is in the checkpoint manifest.
        // (A write to it now still hands its old bytes over: the same bytes, since the caller checked
        // that the disk was not written after the freeze.)
        progress(1);
        continue;
      }
      if (run && (index !== run.first + run.count || run.count === runChunks)) await issue();
      if (run) run.count++;
      else run = { first: index, count: 1 };
    }
    if (run) await issue();
    // Every changed chunk is now read, or preserved by a write: wait until all of them are stored,
    // then for the durability work queued above (batch syncs, checkpoints), then sync the rest of
    // the chunks and store the manifest.
    await pipeline.drain();
    await pipeline.durably(async () => undefined, { wait: 'all' });
    const manifestId = await repo.commitManifest(manifest, writer);
    await onStep?.('manifest-stored');
    return { manifestId, manifest, generation: capture.generation, chunksRead: total, bytesRead };
  } finally {
    // Nothing may still read into a buffer or store a chunk after the capture ends.
    await pipeline.settle();
    capture.end();
  }
}

/**
 * The capture's moving parts: the pool of read buffers, the runs in flight (in index order, for the
 * index below which everything is captured), and one chain of durability work (batch syncs and
 * checkpoints run one after another, behind the reading). The first failure anywhere stops new
 * work and is thrown by the next call into the pipeline.
 */
class Pipeline {
  private readonly free: Buffer[] = [];
  private allocated = 0;
  private memory: Buffer | null = null;
  /** Runs issued and not finished, oldest first. */
  private readonly runs: Array<{ first: number; done: boolean }> = [];
  private readonly inFlight = new Set<Promise<void>>();
  private readonly others = new Set<Promise<void>>();
  private nextIndex = 0;
  /** Durability work: each task starts after the one before it has settled (none ever rejects). */
  private chain: Promise<void> = Promise.resolve();
  private failure: { error: unknown } | null = null;

  constructor(
    private readonly chunkSize: number,
    private readonly runChunks: number,
    private readonly readsInFlight: number,
  ) {}

  /**
   * A read buffer of `runChunks` chunks: shared memory (the hash pool's workers hash it in place),
   * page-aligned (the disk reads into it past the page cache: O_DIRECT needs aligned memory). All
   * buffers are slices of one WebAssembly.Memory, whose memory is page-aligned and shared. A run
   * holds its buffer while it is in flight, so `readsInFlight` buffers are all there ever are.
   */
  buffer(): Buffer {
    const b = this.free.pop();
    if (b) return b;
    if (this.allocated >= this.readsInFlight) throw new Error('capture: more runs in flight than read buffers');
    const size = this.runChunks * this.chunkSize;
    this.memory ??= Buffer.from(alignedSharedMemory(this.readsInFlight * size), 0, this.readsInFlight * size);
    const at = this.allocated * size;
    this.allocated++;
    return this.memory.subarray(at, at + size);
  }

  release(b: Buffer): void {
    this.free.push(b);
  }


  /** Starts `fn` for the run at `first`, once fewer than `readsInFlight` runs are in flight. */
  async issue(first: number, count: number, fn: () => Promise<void>): Promise<void> {
    this.check();
    while (this.inFlight.size >= this.readsInFlight) {
      await Promise.race(this.inFlight);
      this.check();
    }
    const entry = { first, done: false };
    this.runs.push(entry);
    this.nextIndex = first + count;
    const p: Promise<void> = fn()
      .catch((error: unknown) => {
        this.failure ??= { error };
      })
      .finally(() => {
        entry.done = true;
        while (this.runs.length > 0 && this.runs[0]!.done) this.runs.shift();
        this.inFlight.delete(p);
      });
    this.inFlight.add(p);
  }

  /** Every changed chunk below this index is captured (its id is in the manifest). */
  doneBelow(): number {
    return this.runs.length > 0 ? this.runs[0]!.first : this.nextIndex;
  }

  /**
   * Queues durability work after the work queued before it. `wait`: 'previous' returns once the
   * task queued before this one has settled (backpressure: a batch waits for the batch before it),
   * 'none' returns at once, 'all' once this task has settled.
   */
  async durably(task: () => Promise<void>, { wait }: { wait: 'previous' | 'none' | 'all' }): Promise<void> {
    this.check();
    const before = this.chain;
    const mine = before.then(async () => {
      if (this.failure) return;
      try {
        await task();
      } catch (error) {
        this.failure ??= { error };
      }
    });
    this.chain = mine;
    if (wait === 'previous') await before;
    if (wait === 'all') await mine;
    this.check();
  }

  /** Tracks work started outside the runs (chunks preserved by writes); the answer never rejects. */
  background(work: Promise<void>): Promise<void> {
    const p: Promise<void> = work
      .catch((error: unknown) => {
        this.failure ??= { error };
      })
      .finally(() => this.others.delete(p));
    this.others.add(p);
    return p;
  }

  /** Waits for the runs in flight and the background work. */
  async drain(): Promise<void> {
    while (this.inFlight.size + this.others.size > 0) await Promise.all([...this.inFlight, ...this.others]);
    this.check();
  }

  /** Waits for everything started (runs, background and durability work), whatever happened. */
  async settle(): Promise<void> {
    while (this.inFlight.size + this.others.size > 0) await Promise.all([...this.inFlight, ...this.others]);
    await this.chain;
  }

  private check(): void {
    if (this.failure) throw this.failure.error;
  }
}
