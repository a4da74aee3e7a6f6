/**
 * Scrub: re-hashes every stored chunk and manifest of a region. A blob whose bytes no longer match
 * its id is deleted (never kept, never served); the report names it, so the caller can tell which
 * snapshots lost data. A later capture or incoming copy that produces the same bytes heals it.
 */
import { ChunkIntegrityError, type ChunkStore } from '../chunkstore/chunk-store.ts';
import type { ChunkRepository } from './chunk-repository.ts';

export interface ScrubReport {
  chunksChecked: number;
  bytesChecked: number;
  manifestsChecked: number;
  damagedChunks: string[];
  damagedManifests: string[];
}

export async function scrubRepository(repo: ChunkRepository): Promise<ScrubReport> {
  const chunks = await scrubStore(repo.chunks);
  const manifests = await scrubStore(repo.manifests);
  return {
    chunksChecked: chunks.checked,
    bytesChecked: chunks.bytes + manifests.bytes,
    manifestsChecked: manifests.checked,
    damagedChunks: chunks.damaged,
    damagedManifests: manifests.damaged,
  };
}

async function scrubStore(store: ChunkStore): Promise<{ checked: number; bytes: number; damaged: string[] }> {
  let checked = 0;
  let bytes = 0;
  const damaged: string[] = [];
  for await (const { id, size } of store.list()) {
    checked++;
    bytes += size;
    try {
      await store.get(id);
    } catch (e) {
      if (!(e instanceof ChunkIntegrityError)) throw e;
      damaged.push(id);
      await store.delete(id);
    }
  }
  return { checked, bytes, damaged };
}
