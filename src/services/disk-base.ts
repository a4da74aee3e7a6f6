import { ChunkIntegrityError, ChunkNotFoundError } from '../chunkstore/chunk-store.ts';
import type { DiskBase } from '../repository/capture.ts';
import { ManifestFormatError } from '../repository/manifest.ts';
import type { Region } from './region-context.ts';
import { VOLUME_STATUSES } from '../domain/volume.ts';

/** A base that trusts nothing: the next capture reads every chunk that may hold data. */
export const NO_TRUSTED_BASE: DiskBase = { manifest: null, generation: -1 };

/**
 * The manifest a disk matched at its last snapshot or restore, and the generation it matched it in.
 * A base whose manifest is gone or damaged is not an error that retrying can fix: the disk still
 * holds its bytes, so the capture reads them all again (NO_TRUSTED_BASE) and heals.
 */
export async function loadDiskBase(region: Region, volumeId: string): Promise<DiskBase> {
  const base = await region.meta.diskBases.get(volumeId);
  if (!base || base.manifestId === null) return { manifest: null, generation: base?.generation ?? 0 };
  try {
    return { manifest: await region.repo.loadManifest(base.manifestId), generation: base.generation };
  } catch (e) {
    if (!(e instanceof ChunkNotFoundError || e instanceof ChunkIntegrityError || e instanceof ManifestFormatError)) throw e;
    region.log('warn', "a disk's base manifest cannot be read; its next snapshot reads the whole disk", { volumeId, manifestId: base.manifestId, err: String(e) });
    return NO_TRUSTED_BASE;
  }
}

/**
 * After scrub removed damaged blobs: a disk whose base names one of them must not hand that id to
 * its next snapshot without reading the bytes again (a capture keeps unchanged chunks' ids from the
 * base). Such bases are reset to NO_TRUSTED_BASE; the next capture re-reads and re-stores them.
 */
export async function distrustBasesNaming(region: Region, damagedChunks: readonly string[], damagedManifests: readonly string[]): Promise<string[]> {
  if (damagedChunks.length === 0 && damagedManifests.length === 0) return [];
  const chunks = new Set(damagedChunks);
  const manifests = new Set(damagedManifests);
  const reset: string[] = [];
  const volumes = await region.meta.volumes.listByStatus([...VOLUME_STATUSES]);
  for (const v of volumes) {
    const base = await region.meta.diskBases.get(v.id);
    if (!base || base.manifestId === null) continue;
    let names = manifests.has(base.manifestId);
    if (!names && chunks.size > 0) {
      try {
        const m = await region.repo.loadManifest(base.manifestId);
        for (const c of m.nonZeroChunks()) {
          if (chunks.has(c.id)) {
            names = true;
            break;
          }
        }
      } catch {
        names = true;
      }
    }
    if (names) {
      await region.meta.diskBases.set(v.id, null, NO_TRUSTED_BASE.generation);
      reset.push(v.id);
    }
  }
  return reset;
}
