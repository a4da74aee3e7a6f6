/**
 * Garbage collection of chunks and manifests: mark and sweep that runs beside captures, restores and
 * copies, in this process or in others sharing the region's stores, without stopping any of them.
 *
 * The rules (docs/design.md, "Garbage collection"; each has a test that tries to break it):
 * - GC-1 roots: a blob reachable from a root read by this run is kept. Roots are the manifests that
 *   snapshots in any state name (copies still arriving included), disk bases, and queued or running
 *   jobs (the caller's `roots`).
 * - GC-2 cutoff: a blob is deleted only when its last-used time is before
 *   `cutoff = min(run start, start of the oldest live GC hold) - grace`. Every put and every touch
 *   sets last-used to now, atomically with the store's conditional delete, so a blob a writer found
 *   present is either kept or already gone (and the writer stores it again).
 * - GC-3 fencing: a writer whose manifest is unknown until it ends (a capture) works under a GC hold
 *   and publishes only while the hold is live (checked in the publishing transaction); a lapsed hold
 *   never comes back. So a writer that a run ignored (its hold had lapsed) can never publish.
 * - GC-4 order: the run reads its clock, then the holds, then the roots, then sweeps. Together: any
 *   chunk a published manifest names was either named by a root this run read, or used by a writer
 *   whose hold this run saw (so after the cutoff), or used after this run started.
 * - The grace period additionally protects a blob put moments ago that its writer is about to name
 *   (an incoming copy's manifest between its put and its recording on the snapshot).
 *
 * Memory stays bounded however many chunks there are: live chunks are marked in a Bloom filter
 * (a false "maybe live" keeps garbage until a later run, never the reverse), manifests are decoded
 * one at a time, and both stores are swept as streams. Only the set of root manifest ids (one per
 * snapshot or disk) is held.
 */
import type { ChunkStore } from '../chunkstore/chunk-store.ts';
import { BloomFilter } from '../lib/bloom-filter.ts';
import type { ChunkRepository } from './chunk-repository.ts';

export interface GcResult {
  manifestsKept: number;
  manifestsDeleted: number;
  chunksKept: number;
  chunksDeleted: number;
  bytesFreed: number;
  /** Blobs last used after the cutoff: kept whatever the marks say. */
  keptAsRecent: number;
  /** The cutoff this run used (ms since the epoch). */
  cutoffMs: number;
  /** Roots whose manifest is missing or unreadable: reported, and no chunk is deleted that run. */
  brokenRoots: string[];
}

/** Where a run is: a test can run another GC, a capture step or a crash at each of these. */
export type GcStep = 'holds-read' | 'roots-read' | 'marked' | 'manifests-swept';

export interface GcDeps {
  repo: ChunkRepository;
  /** Start of the oldest live GC hold at `now`, or null (GcHoldRepository.oldestLiveStart). */
  oldestHold(now: number): Promise<number | null>;
  /** Every root manifest id; called after `oldestHold` (GC-4). */
  roots(): Promise<Iterable<string>>;
  graceMs: number;
  now?: () => number;
  /** Upper bound of the mark filter's memory in bits (default 2^30: 128 MiB). */
  maxMarkBits?: number;
  onStep?: (step: GcStep) => Promise<void> | void;
}

export async function collectGarbage(deps: GcDeps): Promise<GcResult> {
  const now = deps.now ?? Date.now;
  const { repo } = deps;
  const startedAt = now();
  const oldestHold = await deps.oldestHold(startedAt);
  const cutoffMs = Math.min(startedAt, oldestHold ?? startedAt) - deps.graceMs;
  await deps.onStep?.('holds-read');
  const rootIds = new Set(await deps.roots());
  await deps.onStep?.('roots-read');

  const result: GcResult = { manifestsKept: 0, manifestsDeleted: 0, chunksKept: 0, chunksDeleted: 0, bytesFreed: 0, keptAsRecent: 0, cutoffMs, brokenRoots: [] };

  // Mark: size the filter from the root manifests' sizes (32 bytes an id at most), then add ids.
  let idsUpperBound = 0;
  for await (const m of repo.manifests.list()) if (rootIds.has(m.id)) idsUpperBound += Math.ceil(m.size / 32);
  const live = BloomFilter.forCount(idsUpperBound, deps.maxMarkBits);
  for (const id of rootIds) {
    try {
      const manifest = await repo.loadManifest(id);
      for (const chunk of manifest.nonZeroChunks()) live.add(chunk.id);
    } catch {
      result.brokenRoots.push(id);
    }
  }
  await deps.onStep?.('marked');

  // Sweep manifests: a root is never deleted, even a broken one (it may heal).
  await sweep(repo.manifests, (id) => rootIds.has(id), cutoffMs, (deleted, size) => {
    if (deleted) result.manifestsDeleted++;
    else result.manifestsKept++;
    void size;
  }, () => result.keptAsRecent++);
  await deps.onStep?.('manifests-swept');

  // A root we cannot read might name any chunk: delete none rather than guess.
  if (result.brokenRoots.length > 0) {
    for await (const _ of repo.chunks.list()) result.chunksKept++;
    return result;
  }
  await sweep(repo.chunks, (id) => live.mightContain(id), cutoffMs, (deleted, size) => {
    if (deleted) {
      result.chunksDeleted++;
      result.bytesFreed += size;
    } else result.chunksKept++;
  }, () => result.keptAsRecent++);
  return result;
}

async function sweep(
  store: ChunkStore,
  isLive: (id: string) => boolean,
  cutoffMs: number,
  counted: (deleted: boolean, size: number) => void,
  recent: () => void,
): Promise<void> {
  for await (const blob of store.list()) {
    if (isLive(blob.id)) {
      counted(false, blob.size);
    } else if (blob.lastUsedMs >= cutoffMs) {
      recent();
      counted(false, blob.size);
    } else {
      // The store re-checks the last-used time under its per-id lock (GC-2): a use since the
      // listing wins.
      counted(await store.deleteIfUnusedSince(blob.id, cutoffMs), blob.size);
    }
  }
}
