import type { DiskBase } from '../repository/capture.ts';
import type { Region } from './region-context.ts';

/** The manifest a disk matched at its last snapshot or restore, and the generation it matched it in. */
export async function loadDiskBase(region: Region, volumeId: string): Promise<DiskBase> {
  const base = await region.meta.diskBases.get(volumeId);
  if (!base || base.manifestId === null) return { manifest: null, generation: base?.generation ?? 0 };
  return { manifest: await region.repo.loadManifest(base.manifestId), generation: base.generation };
}
