/**
 * The copy job: sends one snapshot to one destination region. Runs in the source region.
 *
 *   reserve -> manifest -> for each batch of distinct chunk ids: ask which are missing, send those
 *   (zstd where it pays, re-sent if the destination finds them damaged) -> commit.
 *
 * Every step is idempotent, so resuming after a crash of either side is the same loop run again:
 * "which do you lack" makes the rerun cheap. The destination re-hashes every chunk before keeping
 * it and checks that every chunk is present (and durable) before it turns the copy Available.
 */
import { compress } from 'zstd-napi';
import { ChunkIntegrityError, ChunkNotFoundError, type ChunkStore } from '../chunkstore/chunk-store.ts';
import type { JobHandler, RetryPolicy } from '../jobs/job-runner.ts';
import { PermanentJobError } from '../jobs/job-runner.ts';
import { mapLimit } from '../lib/map-limit.ts';
import type { JobRecord } from '../metadata/metadata-store.ts';
import type { Manifest } from '../repository/manifest.ts';
import { COPY_JOB, type CopyPayload } from './copy-payload.ts';
import { isTransient, type PeerClient } from './peer-client.ts';
import type { ReplicationMetrics } from './replication-metrics.ts';

export interface CopyJobDeps {
  chunks: ChunkStore;
  manifests: ChunkStore;
  decodeManifest(bytes: Buffer): Manifest;
  peer(region: string): PeerClient | null;
  metrics: ReplicationMetrics;
  retry: RetryPolicy;
  log(level: 'info' | 'warn' | 'error', msg: string, fields?: Record<string, unknown>): void;
}

/** Ids asked about per "which do you lack" round trip. */
export const MISSING_BATCH = 1024;
/** Chunk uploads in flight per copy: with 20 copies per destination, at most 160 chunks (MiB) in memory. */
export const SENDS_PER_COPY = 8;
/** Send compressed only when the compressed size is below this fraction of the raw size. */
const COMPRESSION_WORTH = 0.9;
const COMPRESSION_SAMPLE = 64 * 1024;
const RESENDS_ON_DAMAGE = 3;
const PROGRESS_EVERY_MS = 250;

export function copyJob(deps: CopyJobDeps): JobHandler {
  return {
    kind: COPY_JOB,
    retry: deps.retry,
    async run(job: JobRecord, control) {
      const p = job.payload as CopyPayload;
      const peer = deps.peer(p.destRegion);
      if (!peer) throw new PermanentJobError(`region ${p.destRegion} is no longer a peer of this region`);
      const signal = control.signal;
      try {
        const manifestBytes = await deps.manifests.get(p.manifestId);
        const manifest = deps.decodeManifest(manifestBytes);
        await peer.reserve(p.destSnapshotId, p.reserve, signal);
        await peer.putManifest(p.destSnapshotId, manifestBytes, signal);

        // Walked in batches: memory stays bounded however large the snapshot. A chunk that repeats
        // across batches is found present the second time and counted as confirmed.
        const total = manifest.nonZeroBytes;
        let confirmed = 0;
        // Progress goes to the destination (and the job record) at most every PROGRESS_EVERY_MS:
        // each report is a durable database write on both sides.
        let lastReported = -1;
        let lastReportAt = 0;
        const report = async (): Promise<void> => {
          const percent = total === 0 ? 99 : Math.min(99, Math.floor((confirmed * 100) / total));
          if (percent === lastReported || Date.now() - lastReportAt < PROGRESS_EVERY_MS) return;
          lastReported = percent;
          lastReportAt = Date.now();
          await peer.progress(p.destSnapshotId, percent, signal);
          await control.saveProgress({ percent, confirmedBytes: confirmed, totalBytes: total });
        };
        const labels = { destination: p.destRegion };
        for (const batch of manifest.chunkBatches(MISSING_BATCH)) {
          signal.throwIfAborted();
          const missing = new Set(await peer.missing(batch.map((c) => c.id), signal));
          for (const c of batch) {
            if (!missing.has(c.id)) {
              confirmed += c.length;
              deps.metrics.chunksSkipped.inc(1, labels);
            }
          }
          await mapLimit(batch.filter((c) => missing.has(c.id)), SENDS_PER_COPY, async (c) => {
            signal.throwIfAborted();
            await sendChunk(deps, peer, c.id, labels, signal);
            confirmed += c.length;
            await report();
          });
          await report();
        }
        await peer.commit(p.destSnapshotId, signal);
        deps.log('info', 'snapshot copied', { sourceSnapshotId: p.sourceSnapshotId, destRegion: p.destRegion, destSnapshotId: p.destSnapshotId, bytes: total });
      } catch (e) {
        if (e instanceof PermanentJobError) throw e;
        if (e instanceof ChunkIntegrityError || e instanceof ChunkNotFoundError) {
          throw new PermanentJobError(`the source snapshot's data is damaged: ${e.message}`);
        }
        if (!isTransient(e)) throw new PermanentJobError(`${p.destRegion} refused the copy: ${(e as Error).message}`);
        throw e;
      }
    },
    async onPermanentFailure(job, reason) {
      const p = job.payload as CopyPayload;
      try {
        await deps.peer(p.destRegion)?.fail(p.destSnapshotId, reason);
      } catch (e) {
        deps.log('warn', 'could not tell the destination that a copy failed', { destRegion: p.destRegion, destSnapshotId: p.destSnapshotId, err: String(e) });
      }
    },
  };
}

async function sendChunk(deps: CopyJobDeps, peer: PeerClient, id: string, labels: Record<string, string>, signal: AbortSignal): Promise<void> {
  for (let attempt = 1; ; attempt++) {
    // Read (and re-hash) per attempt: bytes that went bad at the source are never sent.
    const data = await deps.chunks.get(id);
    const [body, encoding] = encodeForWire(data);
    try {
      await peer.putChunk(id, body, encoding, signal);
      deps.metrics.bytesSent.inc(body.length, labels);
      deps.metrics.chunksSent.inc(1, labels);
      return;
    } catch (e) {
      deps.metrics.bytesSent.inc(body.length, labels);
      if ((e as { code?: string }).code === 'ChunkDigestMismatch' && attempt < RESENDS_ON_DAMAGE) {
        deps.metrics.chunksResent.inc(1, labels);
        deps.log('warn', 'destination found a chunk damaged in transit; resending', { id, destRegion: peer.region, attempt });
        continue;
      }
      throw e;
    }
  }
}

/**
 * zstd (level 1) when it saves at least 10 %, else raw. A 64 KiB sample is tried first, so
 * incompressible chunks (random data, already compressed files) cost a small compress, not a full one.
 */
export function encodeForWire(data: Buffer): [Buffer, 'zstd' | 'raw'] {
  if (data.length > 2 * COMPRESSION_SAMPLE) {
    const sample = compress(data.subarray(0, COMPRESSION_SAMPLE), { compressionLevel: 1 });
    if (sample.length >= COMPRESSION_SAMPLE * COMPRESSION_WORTH) return [data, 'raw'];
  }
  const packed = compress(data, { compressionLevel: 1 });
  return packed.length < data.length * COMPRESSION_WORTH ? [packed, 'zstd'] : [data, 'raw'];
}
