/**
 * Integrity check of one region, usable at any time and in particular after a crash (`snapferry
 * check`, POST /internal/v1/admin/check). It changes nothing; it reports problems as lines of text:
 *
 * - the metadata store's own check (`MetadataStore.integrityCheck`: the database file, cross-row rules);
 * - rules across records that span aggregates: a snapshot being taken has its capture job, a disk
 *   being created or rolled back has its job, a disk that is not Creating has its files;
 * - every Available snapshot's manifest is present and decodes, and every chunk it names is present
 *   and hashes to its id (the store's `get` re-hashes); every manifest another record names (a disk's
 *   base, an incoming copy, a job: every garbage-collection root) is present and decodes, and a
 *   base's chunks are present.
 *
 * It streams: manifests one at a time, chunk ids in batches (`Manifest.chunkBatches`), never the
 * region's whole id set; a bounded set remembers recently verified chunks so that chunks shared by
 * many snapshots are hashed about once.
 *
 * The region may be serving while it runs. A rule about records that two writes establish (a row,
 * then its job) is checked twice, a moment apart, and reported only if it fails both times; a
 * missing chunk or manifest is reported only if the record naming it still does afterwards (a
 * snapshot deleted meanwhile may lose its chunks to garbage collection, rightly).
 */
import { ChunkIntegrityError, ChunkNotFoundError, type ChunkStore } from '../chunkstore/chunk-store.ts';
import { VOLUME_STATUSES, type VolumeStatus } from '../domain/volume.ts';
import { mapLimit } from '../lib/map-limit.ts';
import type { Manifest } from '../repository/manifest.ts';
import type { Region } from './region-context.ts';
import { gcRoots } from './region-recovery.ts';
import { SNAPSHOT_CREATE_JOB } from './snapshot-jobs.ts';
import { VOLUME_CREATE_JOB, VOLUME_ROLLBACK_JOB } from './volume-jobs.ts';

export interface IntegrityReport {
  problems: string[];
  snapshotsChecked: number;
  manifestsChecked: number;
  chunksChecked: number;
  bytesChecked: number;
  volumesChecked: number;
  durationMs: number;
}

export interface IntegrityOptions {
  /** Pause before a suspected problem is looked at again (default 1 s). */
  recheckDelayMs?: number;
  /** Chunk ids remembered as verified (default 65,536: about 8 MB). */
  verifiedCacheSize?: number;
  /** Chunks read and hashed at once (default 4). */
  parallelReads?: number;
}

const BATCH = 1024;

export async function checkRegionIntegrity(region: Region, opts: IntegrityOptions = {}): Promise<IntegrityReport> {
  const started = Date.now();
  const delay = opts.recheckDelayMs ?? 1000;
  const report: IntegrityReport = { problems: [], snapshotsChecked: 0, manifestsChecked: 0, chunksChecked: 0, bytesChecked: 0, volumesChecked: 0, durationMs: 0 };

  // 1. Record rules, twice: only what fails both passes is a problem.
  const first = await recordProblems(region, report);
  if (first.length > 0) {
    await sleep(delay);
    const again = new Set(await recordProblems(region, null));
    report.problems.push(...first.filter((p) => again.has(p)));
  }

  // 2. Data: manifests and chunks.
  const verified = new BoundedSet(opts.verifiedCacheSize ?? 65_536);
  // What each walked manifest's chunks came to (one walk per manifest however many records name it;
  // every record naming a bad one is reported). A 'hash' result also answers a 'presence' walk.
  const walked = new Map<string, { mode: 'hash' | 'presence'; missing: number; damaged: number; firstMissing: string; firstDamaged: string }>();
  const suspects: Array<{ problem: string; stillNamed: () => Promise<boolean> }> = [];
  const walk = async (manifestId: string, what: string, chunks: 'hash' | 'presence' | 'none', stillNamed: () => Promise<boolean>): Promise<void> => {
    const suspect = (problem: string): void => void suspects.push({ problem, stillNamed });
    let result = chunks === 'none' ? undefined : walked.get(manifestId);
    if (result && chunks === 'hash' && result.mode === 'presence') result = undefined;
    if (!result) {
      let manifest: Manifest;
      try {
        manifest = await region.repo.loadManifest(manifestId); // Manifest.decode of the stored bytes
      } catch (e) {
        suspect(`${what}: manifest ${manifestId} ${describeFailure(e)}`);
        return;
      }
      report.manifestsChecked++;
      if (chunks === 'none') return;
      result = { mode: chunks, missing: 0, damaged: 0, firstMissing: '', firstDamaged: '' };
      const r = result;
      for (const batch of manifest.chunkBatches(BATCH)) {
        const todo = batch.filter((c) => !verified.has(c.id));
        const present = await region.repo.chunks.has(todo.map((c) => c.id));
        for (const c of todo) {
          if (!present.has(c.id)) {
            r.missing++;
            r.firstMissing ||= c.id;
          }
        }
        if (chunks === 'presence') continue;
        await mapLimit(todo.filter((c) => present.has(c.id)), opts.parallelReads ?? 4, async (c) => {
          const outcome = await readChunk(region.repo.chunks, c.id);
          report.chunksChecked++;
          if (outcome === 'ok') {
            report.bytesChecked += c.length;
            verified.add(c.id);
          } else if (outcome === 'missing') {
            r.missing++;
            r.firstMissing ||= c.id;
          } else {
            r.damaged++;
            r.firstDamaged ||= c.id;
          }
        });
      }
      walked.set(manifestId, result);
    }
    if (result.missing > 0) suspect(`${what}: ${result.missing} chunk(s) of manifest ${manifestId} are missing (first: ${result.firstMissing})`);
    if (result.damaged > 0 && chunks === 'hash') suspect(`${what}: ${result.damaged} chunk(s) of manifest ${manifestId} do not hash to their id (first: ${result.firstDamaged})`);
  };

  const meta = region.meta;
  const snapshotNamed = (id: string, manifestId: string) => async (): Promise<boolean> => {
    const s = await meta.snapshots.getAny(id);
    return s !== null && s.manifestId === manifestId;
  };
  for (const s of await meta.snapshots.listByStatus(['Available', 'Creating', 'CreatedFailed', 'NotAvailable'])) {
    if (!s.manifestId) continue;
    if (s.status === 'Available') report.snapshotsChecked++;
    // Only an Available snapshot promises its chunks; any other record that names a manifest
    // (a copy still arriving) is a GC root, and a missing root stops garbage collection.
    await walk(s.manifestId, `snapshot ${s.id} (${s.status})`, s.status === 'Available' ? 'hash' : 'none', snapshotNamed(s.id, s.manifestId));
  }
  for (const v of await meta.volumes.listByStatus(liveVolumeStatuses())) {
    const base = await meta.diskBases.get(v.id);
    if (!base?.manifestId) continue;
    const manifestId = base.manifestId;
    // The next snapshot of the disk reuses the ids of unchanged chunks from its base: they must exist.
    await walk(manifestId, `base of disk ${v.id}`, 'presence', async () => (await meta.diskBases.get(v.id))?.manifestId === manifestId);
  }
  // Whatever else garbage collection keeps (manifests queued or running jobs read, capture
  // checkpoints): a root that cannot be read stops every chunk deletion.
  const seen = new Set<string>([...(await meta.snapshots.manifestIds()), ...(await meta.diskBases.manifestIds())]);
  for (const manifestId of await gcRoots(region)) {
    if (seen.has(manifestId)) continue;
    await walk(manifestId, 'a garbage-collection root named by a queued or running job', 'none', async () => (await gcRoots(region)).has(manifestId));
  }
  for (const { problem, stillNamed } of suspects) {
    if (await stillNamed()) report.problems.push(problem);
  }
  report.durationMs = Date.now() - started;
  return report;
}

/** Rules over records: the metadata store's own, and those that span the jobs and the disks. */
async function recordProblems(region: Region, counts: IntegrityReport | null): Promise<string[]> {
  const meta = region.meta;
  const problems = [...(await meta.integrityCheck())];
  const jobs = await meta.jobs.list(['queued', 'running']);
  const jobKinds = new Map<string, string[]>(); // id in the payload -> kinds of live jobs naming it
  for (const j of jobs) {
    const p = j.payload as { snapshotId?: unknown; volumeId?: unknown } | null;
    for (const id of [p?.snapshotId, p?.volumeId]) {
      if (typeof id === 'string') jobKinds.set(id, [...(jobKinds.get(id) ?? []), j.kind]);
    }
  }
  const hasJob = (id: string, kind: string): boolean => jobKinds.get(id)?.includes(kind) ?? false;

  for (const s of await meta.snapshots.listByStatus(['Creating'])) {
    // A snapshot being taken here is taken by its job; an incoming copy is driven by its source.
    if (s.sourceRegion === null && !hasJob(s.id, SNAPSHOT_CREATE_JOB)) {
      problems.push(`snapshot ${s.id} is Creating but no capture job is queued or running for it (it will never finish)`);
    }
  }
  const onDisk = new Set(await region.disks.list());
  const volumes = await meta.volumes.listByStatus(liveVolumeStatuses());
  if (counts) counts.volumesChecked = volumes.length;
  for (const v of volumes) {
    if (v.status === 'Creating') {
      if (!hasJob(v.id, VOLUME_CREATE_JOB)) problems.push(`volume ${v.id} is Creating but no creation job is queued or running for it`);
      continue;
    }
    if (v.status === 'SnapshotProcessing' && !hasJob(v.id, VOLUME_ROLLBACK_JOB)) {
      problems.push(`volume ${v.id} is being rolled back (SnapshotProcessing) but no rollback job is queued or running for it`);
    }
    // Disk files are checked where they live: on this process, if it is the disk's storage process
    // (in a scaled region another process may hold them; the embedded one holds them all).
    if ((v.storageNode ?? null) === region.node && !onDisk.has(v.id)) problems.push(`volume ${v.id} is ${v.status} but its disk files are missing`);
  }
  return problems;
}

/** Every state but Deleted: the records whose disks should exist (or be about to). */
const liveVolumeStatuses = (): VolumeStatus[] => VOLUME_STATUSES.filter((s) => s !== 'Deleted');

async function readChunk(store: ChunkStore, id: string): Promise<'ok' | 'missing' | 'damaged'> {
  try {
    await store.get(id);
    return 'ok';
  } catch (e) {
    if (e instanceof ChunkNotFoundError) return 'missing';
    if (e instanceof ChunkIntegrityError) return 'damaged';
    throw e;
  }
}

function describeFailure(e: unknown): string {
  if (e instanceof ChunkNotFoundError) return 'is missing';
  if (e instanceof ChunkIntegrityError) return 'does not hash to its id (damaged)';
  return `does not decode (${(e as Error).message})`;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** A set that forgets everything once it holds `limit` entries (bounded memory, no bookkeeping). */
class BoundedSet {
  private items = new Set<string>();
  constructor(private readonly limit: number) {}
  has(id: string): boolean {
    return this.items.has(id);
  }
  add(id: string): void {
    if (this.items.size >= this.limit) this.items = new Set();
    this.items.add(id);
  }
}
