/**
 * Garbage collection of chunks and manifests (mark and sweep).
 *
 * Roots are the manifests that snapshots (in any state, including copies still arriving) and disk
 * bases name, plus whatever the caller adds for in-flight jobs. A blob goes only when no root reaches
 * it AND it is older than the grace period (Garage's delayed delete): that protects blobs written by
 * another process sharing the store, and the orphans of a capture that is still running elsewhere.
 * Within this process the sweep holds the repository lock exclusively, so no capture, restore or
 * incoming copy can be between "this chunk is present" and "my manifest names it" while it runs.
 */
import type { ChunkRepository } from './chunk-repository.ts';

export interface GcResult {
  manifestsKept: number;
  manifestsDeleted: number;
  chunksKept: number;
  chunksDeleted: number;
  bytesFreed: number;
  /** Roots whose manifest is missing or unreadable: reported, never a reason to delete more. */
  brokenRoots: string[];
}

export async function collectGarbage(
  repo: ChunkRepository,
  roots: () => Promise<Iterable<string>>,
  graceMs: number,
  now: () => number = Date.now,
): Promise<GcResult> {
  return repo.lock.exclusive(async () => {
    const cutoff = now() - graceMs;
    const liveManifests = new Set(await roots());
    const liveChunks = new Set<string>();
    const brokenRoots: string[] = [];
    for (const id of liveManifests) {
      try {
        for (const chunk of (await repo.loadManifest(id)).distinctChunkIds()) liveChunks.add(chunk);
      } catch {
        brokenRoots.push(id);
      }
    }
    // A root we cannot read might name any chunk: keep everything rather than guess.
    const result: GcResult = { manifestsKept: 0, manifestsDeleted: 0, chunksKept: 0, chunksDeleted: 0, bytesFreed: 0, brokenRoots };
    for await (const m of repo.manifests.list()) {
      if (liveManifests.has(m.id) || m.mtimeMs > cutoff) result.manifestsKept++;
      else {
        await repo.manifests.delete(m.id);
        result.manifestsDeleted++;
      }
    }
    for await (const c of repo.chunks.list()) {
      if (brokenRoots.length > 0 || liveChunks.has(c.id) || c.mtimeMs > cutoff) result.chunksKept++;
      else {
        await repo.chunks.delete(c.id);
        result.chunksDeleted++;
        result.bytesFreed += c.size;
      }
    }
    return result;
  });
}
