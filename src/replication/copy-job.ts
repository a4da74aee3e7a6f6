/**
 * The copy job: sends one snapshot to one destination region. Runs in the source region.
 *
 *   reserve -> manifest (in content-addressed parts, only those the destination lacks) -> for each
 *   batch of distinct chunk ids: ask which are missing, send those (up to BATCH_CHUNKS per request,
 *   zstd where it pays, re-sent if the destination finds them damaged) -> commit (on ChunksMissing walk again, on ManifestMissing
 *   send the manifest again, a bounded number of rounds).
 *
 * Every step is idempotent, so resuming after a crash of either side is the same loop run again:
 * "which do you lack" makes the rerun cheap. The destination syncs what it receives in bounded
 * batches, so a crash there costs at most one batch per copy; it re-hashes every chunk before
 * keeping it and checks that every chunk is present and durable before it turns the copy Available.
 *
 * Progress: the job saves it (which also moves the job's retry deadline, counted from the last
 * progress) only when more bytes are confirmed than any attempt confirmed before, at most every
 * PROGRESS_EVERY_MS and at least every PROGRESS_AT_LEAST_EVERY_MS while that is the case.
 */
import { createHash } from 'node:crypto';
import { ChunkIntegrityError, ChunkNotFoundError, type ChunkStore } from '../chunkstore/chunk-store.ts';
import { readPooled, type PooledStoredRead } from '../chunkstore/pooled-read.ts';
import { CHUNK_BATCH_MAX_PARTS } from '../domain/chunk-batch.ts';
import type { JobControl, JobHandler, RetryPolicy } from '../jobs/job-runner.ts';
import { PermanentJobError } from '../jobs/job-runner.ts';
import type { AlignedBufferPool } from '../lib/aligned-memory.ts';
import { BceError } from '../lib/bce-client.ts';
import { mapLimit } from '../lib/map-limit.ts';
import { Packer } from '../lib/zstd-pack.mjs';
import type { JobRecord } from '../metadata/metadata-store.ts';
import type { Manifest } from '../repository/manifest.ts';
import { COPY_JOB, type CopyPayload } from './copy-payload.ts';
import { errorCode, isTransient, MANIFEST_PART_MAX_BYTES, type PeerClient } from './peer-client.ts';
import type { ReplicationMetrics } from './replication-metrics.ts';

export interface CopyJobDeps {
  chunks: ChunkStore;
  manifests: ChunkStore;
  decodeManifest(bytes: Buffer): Manifest;
  peer(region: string): PeerClient | null;
  metrics: ReplicationMetrics;
  retry: RetryPolicy;
  log(level: 'info' | 'warn' | 'error', msg: string, fields?: Record<string, unknown>): void;
  /** Ids per "which do you lack" round trip (default MISSING_BATCH; tests use fewer). */
  missingBatch?: number;
  /** Chunks per upload request (default BATCH_CHUNKS, at most CHUNK_BATCH_MAX_PARTS; 1 sends each chunk on its own). */
  batchChunks?: number;
  /** Size of the manifest parts sent (default and maximum MANIFEST_PART_MAX_BYTES; tests use less). */
  manifestPartBytes?: number;
  /** The region's pooled read buffers (ChunkRepository.readBuffers), for the chunks' first sends. */
  readBuffers: AlignedBufferPool;
}

/** Ids asked about per "which do you lack" round trip. */
export const MISSING_BATCH = 1024;
/**
 * Chunk uploads in flight per copy: with 20 copies per destination, at most 320 chunks (MiB) in
 * memory. 16, not 8: once uploads left the event loop (upload-thread.ts), 8 left the machine's
 * cores partly idle between answers (1 GiB of random data: 215-226 MiB/s with 8 against 255-308
 * with 16, alternating runs; 32 gave 274-283).
 */
export const SENDS_PER_COPY = 16;
/**
 * Chunks per upload request (domain/chunk-batch.ts). Each request costs both sides a request's work
 * whatever its size (signing and checking, the HTTP exchange, the hand-offs to the upload thread).
 * 4 keeps SENDS_PER_COPY chunks in flight as 4 requests, so the destination still works on several
 * at once (1 GiB of random data, 8 alternating pairs: about 10 % less server CPU than one chunk per
 * request, and no faster within this VM's noise; 8 and 16 per request were no better).
 */
export const BATCH_CHUNKS = 4;
/** Sends of one chunk (or manifest part) the destination found damaged, before the attempt fails. */
export const SENDS_ON_DAMAGE = 3;
/** Progress reports (each a durable write on both sides) at most this often... */
const PROGRESS_EVERY_MS = 250;
/** ...and, while bytes are being confirmed, at least this often even if the percent did not move (a 32 TiB copy moves 1 % in ~an hour). */
const PROGRESS_AT_LEAST_EVERY_MS = 30_000;
/** Manifest plan rounds (parts may vanish at the destination between plan and upload, e.g. a GC) and commit rounds per attempt. */
const MANIFEST_ROUNDS = 3;
const COMMIT_ROUNDS = 3;

export function copyJob(deps: CopyJobDeps): JobHandler {
  const missingBatch = deps.missingBatch ?? MISSING_BATCH;
  const batchChunks = Math.max(1, Math.min(deps.batchChunks ?? BATCH_CHUNKS, CHUNK_BATCH_MAX_PARTS));
  const partBytes = Math.min(deps.manifestPartBytes ?? MANIFEST_PART_MAX_BYTES, MANIFEST_PART_MAX_BYTES);
  return {
    kind: COPY_JOB,
    retry: deps.retry,
    async run(job: JobRecord, control) {
      const p = job.payload as CopyPayload;
      const peer = deps.peer(p.destRegion);
      if (!peer) throw new PermanentJobError(`region ${p.destRegion} is no longer a peer of this region`);
      const signal = control.signal;
      const labels = { destination: p.destRegion };
      try {
        // The manifest's bytes are held only until the destination has recorded it; the decoded
        // manifest (the same size again) is what the walk uses.
        let manifestBytes: Buffer | null = await deps.manifests.get(p.manifestId);
        const manifest = deps.decodeManifest(manifestBytes);
        await peer.reserve(p.destSnapshotId, p.reserve, signal);
        await sendManifest(peer, p, manifestBytes, partBytes, labels, deps, signal);
        manifestBytes = null;

        const total = nonZeroBytes(manifest);
        const progress = new ProgressReporter(total, job, control, peer, p.destSnapshotId);
        for (let round = 1; ; round++) {
          await sendMissingChunks(deps, peer, p.destSnapshotId, manifest, missingBatch, batchChunks, progress, labels, signal);
          try {
            await peer.commit(p.destSnapshotId, signal);
            break;
          } catch (e) {
            const code = errorCode(e);
            if (round >= COMMIT_ROUNDS || (code !== 'ChunksMissing' && code !== 'ManifestMissing')) throw e;
            deps.log('warn', 'commit refused; sending what the destination lacks again', { destRegion: p.destRegion, destSnapshotId: p.destSnapshotId, code, message: (e as Error).message });
            if (code === 'ManifestMissing') await sendManifest(peer, p, await deps.manifests.get(p.manifestId), partBytes, labels, deps, signal);
          }
        }
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

/**
 * Delivers the manifest: proposes it as a list of part ids; the destination records it at once
 * when it holds the manifest (or every part) already, else names the parts to upload. Memory: the
 * manifest's bytes, which the caller holds anyway; parts are views into them.
 */
async function sendManifest(peer: PeerClient, p: CopyPayload, bytes: Buffer, partBytes: number, labels: Record<string, string>, deps: CopyJobDeps, signal: AbortSignal): Promise<void> {
  const parts: Array<{ id: string; start: number; end: number }> = [];
  for (let start = 0; start < bytes.length; start += partBytes) {
    const end = Math.min(bytes.length, start + partBytes);
    parts.push({ id: createHash('sha256').update(bytes.subarray(start, end)).digest('hex'), start, end });
  }
  for (let round = 1; ; round++) {
    const answer = await peer.planManifest(p.destSnapshotId, p.manifestId, bytes.length, parts.map((x) => x.id), signal);
    if (answer.missingParts.length === 0) return;
    if (round > MANIFEST_ROUNDS) throw new Error(`the destination still lacks ${answer.missingParts.length} manifest part(s) after ${MANIFEST_ROUNDS} uploads`);
    const wanted = new Map<string, (typeof parts)[number]>(); // identical parts (long uniform runs) go once
    for (const i of answer.missingParts) {
      const part = parts[i];
      if (!part) throw new PermanentJobError(`${p.destRegion} asked for manifest parts that do not exist: ${answer.missingParts.join(',')}`);
      wanted.set(part.id, part);
    }
    await mapLimit(wanted.values(), 2, async (part) => {
      const body = bytes.subarray(part.start, part.end);
      await withResends(deps, peer, part.id, labels, () => peer.putManifestPart(p.destSnapshotId, part.id, body, signal), () => {
        deps.metrics.bytesSent.inc(body.length, labels);
      });
    });
  }
}

/**
 * One walk over the manifest: ask which chunks are missing, send those, report progress. The next
 * batch's question is asked while this batch's chunks are sent, and uploads run on across batch
 * boundaries (SENDS_PER_COPY in flight throughout), so neither a round trip nor a drained pipeline
 * stalls the copy at each batch.
 *
 * A chunk whose upload was in flight (or started) while the destination answered a question may be
 * answered "missing" although it is on its way: those are not sent again (`racing`). A failed upload
 * fails the attempt, so nothing in `racing` is ever left unsent.
 */
async function sendMissingChunks(deps: CopyJobDeps, peer: PeerClient, destSnapshotId: string, manifest: Manifest, batchSize: number, batchChunks: number, progress: ProgressReporter, labels: Record<string, string>, signal: AbortSignal): Promise<void> {
  progress.restartWalk();
  // A chunk's first send reads its stored bytes into a pooled buffer (chunkstore/pooled-read.ts).
  const readStored = (id: string): Promise<PooledStoredRead | null> => readPooled(deps.chunks, id, deps.readBuffers, manifest.chunkSize);
  // Walked in batches: memory stays bounded however large the snapshot. A chunk that repeats
  // across batches is found present the second time (the destination has it, at least pending).
  const batches = copyBatches(manifest, batchSize);
  const inflightIds = new Set<string>();
  const running = new Set<Promise<void>>();
  let failure: { error: unknown } | null = null;
  /** Ids in flight when the pending question was asked, or sent since: its answer cannot know them. */
  let racing: Set<string> | null = null;
  type Answer = { batch: Array<{ id: string; bytes: number }>; missing: Set<string>; racing: Set<string> };
  const ask = (batch: Array<{ id: string; bytes: number }>): Promise<Answer> => {
    const r = new Set(inflightIds);
    racing = r;
    return peer.missing(destSnapshotId, batch.map((c) => c.id), signal).then((ids) => ({ batch, missing: new Set(ids), racing: r }));
  };
  const first = batches.next();
  let next: Promise<Answer> | null = first.done ? null : ask(first.value);
  try {
    while (next && !failure) {
      signal.throwIfAborted();
      const answer: Answer = await next;
      const after = batches.next();
      next = after.done ? null : ask(after.value);
      if (!next) racing = null;
      // The missing chunks go in upload batches of up to BATCH_CHUNKS (one request each); a batch
      // is sent when full, and what is left of this answer's chunks before the next answer.
      let group: Array<{ id: string; bytes: number }> = [];
      const launch = async (): Promise<void> => {
        const chunks = group;
        group = [];
        if (chunks.length === 0) return;
        while (inflightIds.size + chunks.length > SENDS_PER_COPY && !failure) await Promise.race(running);
        if (failure) return;
        signal.throwIfAborted();
        for (const c of chunks) {
          inflightIds.add(c.id);
          (racing as Set<string> | null)?.add(c.id);
        }
        const sending: Promise<void> = sendChunks(deps, peer, destSnapshotId, chunks.map((c) => c.id), labels, signal, readStored)
          .then(async () => {
            for (const c of chunks) progress.confirm(c.bytes);
            await progress.maybeReport(signal);
          })
          .catch((error: unknown) => {
            failure ??= { error };
          })
          .finally(() => {
            for (const c of chunks) inflightIds.delete(c.id);
            running.delete(sending);
          });
        running.add(sending);
      };
      for (const c of answer.batch) {
        if (!answer.missing.has(c.id) || answer.racing.has(c.id)) {
          progress.confirm(c.bytes);
          if (!answer.missing.has(c.id)) deps.metrics.chunksSkipped.inc(1, labels);
          continue;
        }
        if (failure) break;
        group.push(c);
        if (group.length === batchChunks) await launch();
      }
      if (!failure) await launch();
      if (!failure) await progress.maybeReport(signal);
    }
  } finally {
    // Nothing is left running behind the caller's back; an unasked-for answer is dropped quietly.
    next?.catch(() => undefined);
    await Promise.all(running);
  }
  if (failure) throw (failure as { error: unknown }).error;
}

/**
 * The non-zero chunks in manifest order, in batches of at most `size` distinct ids; `bytes` is what
 * the id stands for in the snapshot (its length at every place in the batch's stretch where it
 * appears), so confirmed bytes reach the snapshot's non-zero bytes exactly. A chunk repeated
 * further away comes again in a later batch and is then found present. Memory: one batch.
 */
function* copyBatches(manifest: Manifest, size: number): IterableIterator<Array<{ id: string; bytes: number }>> {
  let batch = new Map<string, { id: string; bytes: number }>();
  for (const { index, id } of manifest.nonZeroChunks()) {
    const length = manifest.chunkLength(index);
    const seen = batch.get(id);
    if (seen) {
      seen.bytes += length;
      continue;
    }
    batch.set(id, { id, bytes: length });
    if (batch.size === size) {
      yield [...batch.values()];
      batch = new Map();
    }
  }
  if (batch.size > 0) yield [...batch.values()];
}

/**
 * One chunk to the destination. The first send takes the stored bytes without re-hashing them
 * (`readStored`, into a pooled buffer): the destination hashes whatever arrives, keeps nothing that
 * does not hash to the id, and answers a mismatch (damage here or on the way) with
 * ChunkDigestMismatch or BadDigest. Every resend reads the chunk verified (`get` re-hashes), and so
 * does a first send that `readStored` cannot serve (a store without `readInto`, a stored blob
 * larger than a chunk), so a chunk damaged at the source fails the copy as damaged
 * (ChunkIntegrityError, permanent) instead of being sent again and again.
 *
 * A chunk stored compressed (compression at rest) goes as it is stored: it was compressed once, when
 * it was captured or received. Any other is compressed for the wire where that pays.
 *
 * The body's signed digest is the chunk id for a raw chunk (its bytes' SHA-256, if they are what
 * the store says), else the SHA-256 of the compressed bytes (small: they compressed well).
 */
async function sendChunk(deps: CopyJobDeps, peer: PeerClient, destSnapshotId: string, id: string, labels: Record<string, string>, signal: AbortSignal, readStored: (id: string) => Promise<PooledStoredRead | null>, firstAttempt = 1): Promise<void> {
  let size = 0;
  await withResends(deps, peer, id, labels, async (attempt) => {
    size = 0;
    const pooled = attempt === 1 ? await readStored(id) : null;
    const { data, encoding: stored, release } = pooled ?? { data: await deps.chunks.get(id), encoding: 'raw' as const, release: () => undefined };
    try {
      const { body, encoding, sha256 } = wireBody(id, data, stored);
      size = body.length;
      await peer.putChunk(destSnapshotId, id, body, encoding, signal, sha256);
    } finally {
      release(); // the upload has settled: its request no longer reads the buffer
    }
  }, () => deps.metrics.bytesSent.inc(size, labels), firstAttempt);
  deps.metrics.chunksSent.inc(1, labels);
}

/**
 * Chunks to the destination in one batch upload (domain/chunk-batch.ts), each part prepared as
 * `sendChunk` prepares a first send; a single chunk, or a destination that takes no batches, goes
 * through `sendChunk`. A part the destination found damaged counts as that chunk's first send: it
 * is sent again on its own, read verified, within the same SENDS_ON_DAMAGE. Any other part refused
 * fails the attempt with that part's answer, as its single upload would have.
 */
async function sendChunks(deps: CopyJobDeps, peer: PeerClient, destSnapshotId: string, ids: readonly string[], labels: Record<string, string>, signal: AbortSignal, readStored: (id: string) => Promise<PooledStoredRead | null>): Promise<void> {
  const one = (id: string, firstAttempt = 1): Promise<void> => sendChunk(deps, peer, destSnapshotId, id, labels, signal, readStored, firstAttempt);
  if (ids.length === 1 || !peer.takesBatches) {
    await Promise.all(ids.map((id) => one(id)));
    return;
  }
  // Read at once, as that many single sends would be; whatever was read is released on every path.
  const settled = await Promise.allSettled(ids.map(async (id) => (await readStored(id)) ?? { data: await deps.chunks.get(id), encoding: 'raw' as const, release: () => undefined }));
  const reads = settled.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
  let results: Awaited<ReturnType<PeerClient['putChunkBatch']>>;
  try {
    const failed = settled.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) throw failed.reason;
    const parts = reads.map(({ data, encoding }, i) => ({ id: ids[i]!, ...wireBody(ids[i]!, data, encoding) }));
    try {
      results = await peer.putChunkBatch(destSnapshotId, parts, signal);
    } finally {
      deps.metrics.bytesSent.inc(parts.reduce((n, p) => n + p.body.length, 0), labels);
    }
  } finally {
    for (const r of reads) r.release(); // the upload has settled: its request no longer reads the buffers
  }
  if (results === null) {
    // The destination takes no batches (an older version): these go one by one, as later ones will for a while (PeerClient.takesBatches).
    await Promise.all(ids.map((id) => one(id)));
    return;
  }
  const damaged: string[] = [];
  for (const [i, r] of results.entries()) {
    if (r.status >= 200 && r.status < 300) {
      deps.metrics.chunksSent.inc(1, labels);
      continue;
    }
    const error = new BceError(r.status, r.code ?? `HTTP${r.status}`, r.message ?? '', null);
    if (error.code !== 'ChunkDigestMismatch' && error.code !== 'BadDigest') throw error; // before any resend starts: nothing is left running
    damaged.push(ids[i]!);
  }
  await Promise.all(damaged.map((id) => {
    deps.metrics.chunksResent.inc(1, labels);
    deps.log('warn', 'destination found an upload damaged in transit; resending', { id, destRegion: peer.region, attempt: 1 });
    return one(id, 2);
  }));
}

/** Runs one upload, again when the destination found the bytes damaged in transit (SENDS_ON_DAMAGE sends in all, counted from `firstAttempt`). */
async function withResends(deps: CopyJobDeps, peer: PeerClient, id: string, labels: Record<string, string>, send: (attempt: number) => Promise<void>, sent: () => void, firstAttempt = 1): Promise<void> {
  for (let attempt = firstAttempt; ; attempt++) {
    try {
      await send(attempt);
      sent();
      return;
    } catch (e) {
      sent();
      if (errorCode(e) === 'ChunkDigestMismatch' && attempt < SENDS_ON_DAMAGE) {
        deps.metrics.chunksResent.inc(1, labels);
        deps.log('warn', 'destination found an upload damaged in transit; resending', { id, destRegion: peer.region, attempt });
        continue;
      }
      throw e;
    }
  }
}

/**
 * Bytes confirmed (sent, or found present; a repeated chunk counts at every place it appears) over
 * the snapshot's non-zero bytes, so a finished walk is exactly 100 %. Across attempts the
 * high-water mark is the job's saved progress: re-walking chunks an earlier attempt confirmed is not
 * progress (a copy that fails at the same place every time must still reach its deadline).
 */
class ProgressReporter {
  private confirmed = 0;
  private highWater: number;
  private lastPercent = -1;
  private lastAt = 0;

  constructor(
    private readonly total: number,
    job: JobRecord,
    private readonly control: JobControl,
    private readonly peer: PeerClient,
    private readonly destSnapshotId: string,
  ) {
    const saved = (job.progress as { confirmedBytes?: unknown } | null)?.confirmedBytes;
    this.highWater = typeof saved === 'number' ? saved : 0;
  }

  restartWalk(): void {
    this.confirmed = 0;
  }

  confirm(bytes: number): void {
    this.confirmed += bytes;
  }

  async maybeReport(signal: AbortSignal): Promise<void> {
    if (this.confirmed <= this.highWater || this.total === 0) return;
    const now = Date.now();
    const percent = Math.min(99, Math.floor((this.confirmed * 100) / this.total));
    if (now - this.lastAt < PROGRESS_EVERY_MS) return;
    if (percent === this.lastPercent && now - this.lastAt < PROGRESS_AT_LEAST_EVERY_MS) return;
    this.lastAt = now;
    this.lastPercent = percent;
    this.highWater = this.confirmed;
    await this.peer.progress(this.destSnapshotId, percent, signal);
    await this.control.saveProgress({ percent, confirmedBytes: this.confirmed, totalBytes: this.total });
  }
}

/** Bytes of all non-zero chunks, in O(1): every chunk is chunkSize long but possibly the last. */
function nonZeroBytes(m: Manifest): number {
  if (m.chunkCount === 0) return 0;
  const last = m.chunkCount - 1;
  return m.nonZeroCount * m.chunkSize - (m.isZero(last) ? 0 : m.chunkSize - m.chunkLength(last));
}

/**
 * What goes on the wire for a chunk read as `stored`: a chunk stored compressed as it is (it was
 * compressed once, when captured or received), any other compressed where that pays; with the
 * body's SHA-256, which for a raw body is the chunk id (no hash of the bytes here: see sendChunk).
 */
function wireBody(id: string, data: Buffer, stored: 'raw' | 'zstd'): { body: Buffer; encoding: 'raw' | 'zstd'; sha256: string } {
  const [body, encoding] = stored === 'zstd' ? [data, stored] : encodeForWire(data);
  return { body, encoding, sha256: encoding === 'raw' ? id : createHash('sha256').update(body).digest('hex') };
}

/** The event loop's compressor (compression is synchronous, so calls never overlap). */
const packer = new Packer();

/**
 * zstd by the rule chunks are compressed by at rest (zstd-pack.mjs: level 1, when it saves at least
 * 10 %, a 64 KiB sample tried first so incompressible chunks cost a small compression), but with no
 * minimum size, else raw. Only the compressed bytes get a buffer of their own.
 */
export function encodeForWire(data: Buffer): [Buffer, 'zstd' | 'raw'] {
  const n = packer.pack(data, 0);
  return n > 0 ? [Buffer.from(packer.scratch.subarray(0, n)), 'zstd'] : [data, 'raw'];
}
