/**
 * Remote copy, destination side: what the internal endpoints do when a source region sends a
 * snapshot here (the protocol: docs/design.md "Remote copy"). The reserved record stays `Creating`
 * until `commit` has made every chunk durable and checked that every chunk the manifest names is
 * present; only then does it turn `Available`.
 *
 * The manifest arrives first (in content-addressed parts, assembled and verified here) and is
 * recorded on the Creating snapshot, which makes it a garbage-collection root: chunks that arrive
 * for it cannot be collected while the copy is in flight, however long it takes; chunks the source
 * is told it need not send are `touch`ed (their last use is now), so a collection cannot take them
 * in between either.
 *
 * Durable progress in bounded batches: each incoming copy puts its chunks through its own
 * ChunkWriter and syncs it when SYNC_BATCH_BYTES / 2 are unsynced or the oldest unsynced chunk is
 * SYNC_BATCH_AGE_MS old; a put that would take the copy past SYNC_BATCH_BYTES not yet durable waits
 * for the running sync. So a crash of this region costs each copy at most SYNC_BATCH_BYTES (plus
 * the uploads in flight) sent again. The writers live in memory only as a batching optimisation:
 * what is durable is in the chunk store, what a copy is and how far it got is in the metadata store,
 * and any process serving this region answers the same.
 */
import { createHash } from 'node:crypto';
import { ChunkIntegrityError, ChunkNotFoundError, ChunksLostError, type ChunkWriter } from '../chunkstore/chunk-store.ts';
import type { ChunkBatchPart, ChunkBatchResult } from '../domain/chunk-batch.ts';
import { ApiError } from '../domain/errors.ts';
import type { Snapshot } from '../domain/snapshot.ts';
import { AlignedBufferPool } from '../lib/aligned-memory.ts';
import type { Counter, MetricsRegistry } from '../lib/metrics.ts';
import { decodeFrameInto, frameContentSize } from '../lib/zstd.ts';
import { Manifest } from '../repository/manifest.ts';
import { MANIFEST_MAX_PARTS, MANIFEST_PART_MAX_BYTES, type ReserveRequest } from '../replication/peer-client.ts';
import type { Region } from './region-context.ts';

/**
 * Most bytes of one copy that may be received but not yet durable (a sync starts at half, so the
 * other half can arrive while it runs). A crash here resends at most this much per copy, plus the
 * chunks in flight. 32 MiB: a few hundred ms of fsync; with 20 copies at most 640 MiB pending.
 */
export const SYNC_BATCH_BYTES = 32 << 20;
/** A copy's oldest unsynced chunk is synced after at most this long (a slow copy still makes durable progress). */
export const SYNC_BATCH_AGE_MS = 250;
/** The incoming snapshot's "heard from the source" time is written at most this often per copy. */
const TOUCH_EVERY_MS = 1000;
/** A chunk upload relies on a copy's Creating state checked at most this long ago. */
const INCOMING_CHECK_MS = 250;
/** Ids checked per presence query when commit walks the manifest. */
const COMMIT_WALK_BATCH = 4096;
/** Manifests assembled at once in this process (each holds its declared size twice for a moment). */
const MAX_ASSEMBLIES = 1;
const GiB = 1024 ** 3;
const HEX_ID = /^[0-9a-f]{64}$/;
/** Header (24) + trailer (32): the smallest encoded manifest is a few bytes more. */
const MANIFEST_FIXED_BYTES = 56;

/**
 * The largest encoded manifest a disk of `sizeInGB` can have: every chunk in a data run costs 32
 * bytes of id, and run headers cost at most one byte per chunk (a run of n chunks has a varint of at
 * most n bytes). Declared sizes above this are refused before anything is allocated.
 */
export function maxManifestBytes(sizeInGB: number, chunkSize: number): number {
  return MANIFEST_FIXED_BYTES + 33 * Math.ceil((sizeInGB * GiB) / chunkSize);
}

export interface IncomingCopyMetrics {
  chunksReceived: Counter;
  chunksLost: Counter;
  manifestPartsReceived: Counter;
}

export function incomingCopyMetrics(registry: MetricsRegistry): IncomingCopyMetrics {
  return {
    chunksReceived: registry.counter('snapferry_incoming_chunks_received_total', 'Chunk uploads accepted from source regions, by whether they were new here (stored) or already held (present).'),
    chunksLost: registry.counter('snapferry_incoming_chunks_lost_total', 'Received chunks whose sync failed; they are reported missing and sent again.'),
    manifestPartsReceived: registry.counter('snapferry_incoming_manifest_parts_received_total', 'Manifest parts accepted from source regions.'),
  };
}

/** One active incoming copy's unsynced chunks. */
interface CopyBatch {
  readonly writer: ChunkWriter;
  /** Bytes of the sync running now (0 when none). */
  syncingBytes: number;
  syncing: Promise<void> | null;
  /** When the oldest chunk not covered by a sync landed; null when there is none. */
  oldestAt: number | null;
  timer: NodeJS.Timeout | null;
  inflight: number;
}

/** A buffer lent for one chunk upload's bytes; give it back once nothing reads it any more. */
export interface BodyLease {
  readonly buffer: Buffer;
  release(): void;
}

/**
 * Chunk-sized buffers, reused from one upload to the next. A fresh 1 MiB buffer per upload (and
 * another per decompression) is cheap to allocate but not to collect: it lives across a hash and a
 * file write, is promoted out of the young generation, and its memory is reported to V8 as external
 * until a full collection frees it, which the next 64 MiB of such buffers force (measured: ~60 full
 * collections per GiB received). Shared memory, so the hashing pool reads it in place (no copy into
 * its slots; the route fills it with `fill`, not `copy`: see readChunkBody), page-aligned (a
 * WebAssembly memory). At most `keep` free buffers are kept; beyond that a buffer is left to the
 * collector.
 */
class BufferPool {
  private readonly buffers: AlignedBufferPool;

  constructor(
    readonly size: number,
    keep: number,
  ) {
    this.buffers = new AlignedBufferPool(keep);
  }

  lease(length: number): BodyLease {
    if (length > this.size) {
      const buffer = Buffer.allocUnsafeSlow(length);
      return { buffer, release: () => undefined };
    }
    const whole = this.buffers.take(this.size);
    let held = true;
    return {
      buffer: whole.subarray(0, length),
      release: () => {
        if (!held) return;
        held = false;
        this.buffers.give(whole);
      },
    };
  }
}

/** Free chunk buffers kept for reuse (each region's service keeps its own: at most this many MiB of chunks). */
const POOLED_BUFFERS = 48;

export class IncomingCopyService {
  private readonly batches = new Map<string, CopyBatch>();
  private readonly lastTouch = new Map<string, number>();
  /** When each copy was last seen Creating by a chunk upload (stillIncoming). */
  private readonly checkedIncoming = new Map<string, number>();
  private assemblies = 0;
  private readonly assemblyWaiters: Array<() => void> = [];

  private readonly buffers: BufferPool;

  constructor(
    private readonly region: Region,
    private readonly metrics: IncomingCopyMetrics | null = null,
  ) {
    // A chunk, or a compressed chunk (which may be a little larger than the chunk).
    this.buffers = new BufferPool(region.repo.chunkSize + (region.repo.chunkSize >> 4) + 4096, POOLED_BUFFERS);
  }

  /**
   * A buffer of `length` bytes for a chunk upload's body (reused between uploads); release it once
   * `receiveChunk` has settled, and not before (the store and the hashing pool read it until then).
   */
  leaseBodyBuffer(length: number): BodyLease {
    return this.buffers.lease(length);
  }

  async reserve(id: string, req: ReserveRequest): Promise<void> {
    const snapshot: Snapshot = {
      id, accountId: req.accountId, name: req.name, desc: req.desc, volumeId: '', sizeInGB: req.sizeInGB, createTime: Date.now(),
      status: 'Creating', createMethod: 'MANUAL', progress: 0, storageType: req.storageType, retentionInDays: null, tags: [],
      sourceRegion: req.sourceRegion, sourceSnapshotId: req.sourceSnapshotId, manifestId: null, lastError: null,
    };
    const outcome = await this.region.meta.snapshots.insertIfAbsent(snapshot);
    if (outcome === 'exists') {
      const existing = await this.region.meta.snapshots.getAny(id);
      if (!existing || existing.sourceSnapshotId !== req.sourceSnapshotId || existing.sourceRegion !== req.sourceRegion) {
        throw new ApiError('OperationDenied', `The snapshot id ${id} is taken by something else.`);
      }
    }
    // A reserve is also the source's keep-alive for a copy that waits in its queue.
    await this.touchSnapshot(id);
  }

  /**
   * The source proposes the manifest `manifestId` (`size` bytes) as the concatenation of `parts`
   * (sha256 ids). Answers the indexes of the parts still needed; none once the manifest is stored,
   * verified and recorded on the Creating snapshot. Idempotent; a manifest already stored here
   * (recorded before, or delivered by another copy) needs no parts at all.
   */
  async planManifest(id: string, manifestId: string, size: number, parts: string[]): Promise<{ manifestId: string; missingParts: number[] }> {
    const snap = await this.incoming(id);
    await this.touchSnapshot(id);
    if (!HEX_ID.test(manifestId)) throw new ApiError('InvalidManifest', 'manifestId must be 64 lower-case hex characters.');
    if (parts.length < 1 || parts.length > MANIFEST_MAX_PARTS || parts.some((p) => !HEX_ID.test(p))) {
      throw new ApiError('InvalidManifest', `parts must list 1 to ${MANIFEST_MAX_PARTS} part ids of 64 lower-case hex characters.`);
    }
    const bound = maxManifestBytes(snap.sizeInGB, this.region.repo.chunkSize);
    if (!Number.isSafeInteger(size) || size < MANIFEST_FIXED_BYTES || size > bound) {
      throw new ApiError('InvalidManifest', `The manifest declares ${size} bytes; a manifest of a ${snap.sizeInGB} GB disk has ${MANIFEST_FIXED_BYTES} to ${bound}.`);
    }
    const done = { manifestId, missingParts: [] };
    const manifests = this.region.repo.manifests;
    // The manifest itself may be here already: check the blob, never only the record.
    if ((await manifests.touch([manifestId])).has(manifestId)) {
      if (snap.manifestId === manifestId) return done; // recorded, checked when it was, and there
      let bytes: Buffer | null = null;
      try {
        bytes = await manifests.get(manifestId);
      } catch (e) {
        if (e instanceof ChunkIntegrityError) await manifests.delete(manifestId); // damaged: assemble afresh
        else if (!(e instanceof ChunkNotFoundError)) throw e;
      }
      if (bytes) {
        if (bytes.length !== size) throw new ApiError('InvalidManifest', `The manifest ${manifestId} has ${bytes.length} bytes, not ${size}.`);
        this.checkManifest(snap, bytes);
        await this.record(id, manifestId);
        return done;
      }
    }
    const present = await manifests.touch(parts);
    const missingParts = parts.flatMap((p, i) => (present.has(p) ? [] : [i]));
    if (missingParts.length > 0) return { manifestId, missingParts };
    const lost = await this.assemble(snap, manifestId, size, parts);
    if (lost.length > 0) return { manifestId, missingParts: lost };
    await this.record(id, manifestId);
    return done;
  }

  /** One manifest part, kept (durably) only if its bytes hash to `partId`. */
  async receiveManifestPart(id: string, partId: string, body: Buffer): Promise<void> {
    await this.incoming(id);
    if (!HEX_ID.test(partId)) throw new ApiError('BadRequest', 'A manifest part id is 64 lower-case hex characters.');
    if (body.length > MANIFEST_PART_MAX_BYTES) throw new ApiError('EntityTooLarge', `A manifest part is at most ${MANIFEST_PART_MAX_BYTES} bytes.`);
    const writer = this.region.repo.manifests.writer();
    try {
      await writer.put(partId, body);
    } catch (e) {
      if (e instanceof ChunkIntegrityError) throw new ApiError('ChunkDigestMismatch', `The manifest part hashes to ${e.actual}, not ${partId}.`);
      throw e;
    }
    await writer.sync();
    this.metrics?.manifestPartsReceived.inc();
    await this.touchSnapshot(id);
  }

  /** The subset of `ids` this region lacks; the ones it holds are touched (kept) for this copy. */
  async missing(id: string, ids: string[]): Promise<string[]> {
    await this.incoming(id);
    for (const c of ids) if (!HEX_ID.test(c)) throw new ApiError('BadRequest', 'A chunk id is 64 lower-case hex characters.');
    const present = await this.region.repo.chunks.touch(ids);
    await this.touchSnapshot(id);
    await this.region.steps?.('incoming:missing-answered');
    return ids.filter((c) => !present.has(c));
  }

  /**
   * Keeps a chunk only if its bytes hash to its id (after decompression); durable within one batch.
   * `bodySha256` is the upload's signed x-bce-content-sha256, not yet checked: nothing of a body
   * that does not hash to it is kept (BadDigest). One hash per chunk, on the hashing pool: a raw
   * chunk's body digest is its id, so the store's own check of the id (`put`) is the body check too;
   * any other body is hashed first and compared (a compressed one is small).
   */
  async receiveChunk(id: string, chunkId: string, body: Buffer, encoding: string, bodySha256: string): Promise<void> {
    if (!HEX_ID.test(chunkId)) throw new ApiError('BadRequest', 'A chunk id is 64 lower-case hex characters.');
    if (encoding !== 'raw' && encoding !== 'zstd') throw new ApiError('BadRequest', `Unknown chunk encoding ${JSON.stringify(encoding)}.`);
    const digest = bodySha256.toLowerCase();
    const digestIsId = encoding === 'raw' && digest === chunkId;
    if (!digestIsId) {
      const actual = await this.region.repo.hasher.hash(body);
      if (actual !== digest) throw new ApiError('BadDigest', `The body (${body.length} bytes) does not hash to its x-bce-content-sha256; nothing of it was applied.`);
      if (encoding === 'raw') throw new ApiError('ChunkDigestMismatch', `The chunk bytes hash to ${actual}, not ${chunkId}.`);
    }
    if (encoding === 'raw' && body.length > this.region.repo.chunkSize) throw new ApiError('ChunkTooLarge', `The chunk has ${body.length} bytes; chunks here have at most ${this.region.repo.chunkSize}.`);
    const decoded = encoding === 'zstd' ? decompressChunk(body, this.region.repo.chunkSize, (n) => this.buffers.lease(n)) : null;
    const unpacked = decoded?.out ?? null;
    // Compression at rest: the frame just decoded is kept as it came, if its header declares the
    // size it decoded to (the store's reads rely on that); the store hashes the decoded bytes.
    const packed = unpacked && decoded?.declared === unpacked.buffer.length ? body : null;
    try {
      await this.keepChunk(id, chunkId, unpacked?.buffer ?? body, packed, digestIsId, body.length);
    } finally {
      unpacked?.release();
    }
  }

  /**
   * The parts of a chunk batch (domain/chunk-batch.ts), each received exactly as a single upload is
   * (`receiveChunk`, all at once as that many uploads would be), each answered on its own: 200, or
   * the error that upload would have answered. An error that is not an answer (the store failing
   * under it) fails the whole request once every part has settled, as it fails a single upload.
   */
  async receiveBatch(id: string, parts: readonly ChunkBatchPart[], bodies: readonly Buffer[]): Promise<ChunkBatchResult[]> {
    const settled = await Promise.allSettled(parts.map((p, i) => this.receiveChunk(id, p.id, bodies[i]!, p.encoding, p.sha256)));
    const failure = settled.find((s): s is PromiseRejectedResult => s.status === 'rejected' && !(s.reason instanceof ApiError));
    if (failure) throw failure.reason;
    return settled.map((s) => (s.status === 'fulfilled' ? { status: 200 } : { status: (s.reason as ApiError).status, code: (s.reason as ApiError).code, message: (s.reason as ApiError).message }));
  }

  /** Stores a chunk received for the copy `id` through the copy's writer, within its batch. */
  private async keepChunk(id: string, chunkId: string, data: Buffer, packed: Buffer | null, digestIsId: boolean, bodyLength: number): Promise<void> {
    await this.stillIncoming(id); // the state lives in the metadata store
    const batch = this.batchFor(id);
    batch.inflight++;
    try {
      // Backpressure: never more than SYNC_BATCH_BYTES of this copy not yet durable.
      while (batch.syncing && batch.syncingBytes + batch.writer.unsyncedBytes + data.length > SYNC_BATCH_BYTES) await batch.syncing;
      let stored: boolean;
      try {
        // The store hashes on put and keeps nothing whose hash differs from the id.
        stored = await batch.writer.put(chunkId, data, packed);
      } catch (e) {
        if (e instanceof ChunkIntegrityError) {
          if (digestIsId) throw new ApiError('BadDigest', `The body (${bodyLength} bytes) does not hash to its x-bce-content-sha256; nothing of it was applied.`);
          throw new ApiError('ChunkDigestMismatch', `The chunk bytes hash to ${e.actual}, not ${chunkId}.`);
        }
        throw e;
      }
      this.metrics?.chunksReceived.inc(1, { result: stored ? 'stored' : 'present' });
      await this.region.steps?.('incoming:chunk-received');
      if (batch.writer.unsyncedBytes > 0) batch.oldestAt ??= Date.now();
      if (batch.writer.unsyncedBytes >= SYNC_BATCH_BYTES / 2) void this.flush(id, batch);
      else this.armTimer(id, batch);
    } finally {
      batch.inflight--;
      this.forgetIfIdle(id, batch);
    }
    await this.touchSnapshot(id);
  }

  async progress(id: string, percent: number): Promise<void> {
    await this.region.meta.snapshots.update(id, { progress: Math.max(0, Math.min(99, Math.floor(percent))) }, ['Creating']);
    // Each is a durable write on the event loop: the "heard from the source" time, like every
    // call's, at most once a second (a progress report comes every 250 ms of a fast copy).
    await this.touchSnapshot(id);
  }

  /**
   * Fails incoming copies whose source has been silent for longer than `deadlineMs` (it may be gone
   * for good; the source applies the same deadline to its side, and keeps the copies it has queued
   * alive here with a periodic reserve). Without this such a copy would stay `Creating`, and a
   * `Creating` snapshot cannot be deleted.
   */
  async failSilent(deadlineMs: number): Promise<number> {
    const silent = await this.region.meta.snapshots.listSilentIncoming(Date.now() - deadlineMs);
    for (const s of silent) {
      await this.fail(s.id, `no word from the source region ${s.sourceRegion} for ${Math.round(deadlineMs / 1000)} s`);
    }
    return silent.length;
  }

  /**
   * Every chunk durable and present, then Available. Idempotent: an Available copy commits again as
   * a no-op. `ManifestMissing` (409) when no manifest is recorded or its blob is gone: the source
   * sends it again; `ChunksMissing` (409): the source sends what is missing.
   */
  async commit(id: string): Promise<void> {
    const snap = await this.region.meta.snapshots.getAny(id);
    if (!snap || snap.sourceRegion === null) throw new ApiError('NoSuchObject', `No incoming copy ${id}.`);
    if (snap.status === 'Available') return;
    if (snap.status !== 'Creating') throw new ApiError('OperationDenied', `The copy ${id} is ${snap.status}.`);
    await this.touchSnapshot(id, true);
    if (!snap.manifestId) throw new ApiError('ManifestMissing', 'No manifest has been recorded for this copy; send it.');
    this.checkedIncoming.delete(id);
    let manifest: Manifest;
    try {
      manifest = await this.region.repo.loadManifest(snap.manifestId);
    } catch (e) {
      if (e instanceof ChunkIntegrityError) await this.region.repo.manifests.delete(snap.manifestId);
      else if (!(e instanceof ChunkNotFoundError)) throw e;
      throw new ApiError('ManifestMissing', `The recorded manifest ${snap.manifestId} is no longer here; send it again.`);
    }
    await this.syncCopy(id);
    // Then every chunk present, and durable: "present" may have been answered for a chunk another
    // copy put and has not synced yet, so the store is synced after the walk (a sync covers every
    // blob visible before it starts). A sync that lost blobs removed them: walk again.
    for (let round = 1; ; round++) {
      let missing = 0;
      for (const batch of manifest.chunkBatches(COMMIT_WALK_BATCH)) {
        const ids = batch.map((c) => c.id);
        missing += ids.length - (await this.region.repo.chunks.has(ids)).size;
      }
      if (missing > 0) throw new ApiError('ChunksMissing', `${missing} chunks have not arrived.`);
      if (await this.syncStore()) break;
      if (round === 3) throw new ApiError('ChunksMissing', 'Chunks here could not be made durable; send the missing ones again.');
    }
    await this.region.steps?.('incoming:commit-checked');
    const updated = await this.region.meta.snapshots.update(id, { status: 'Available', progress: 100 }, ['Creating']);
    if (!updated) {
      const now = await this.region.meta.snapshots.getAny(id);
      if (now?.status !== 'Available') throw new ApiError('OperationDenied', `The copy ${id} is ${now?.status ?? 'gone'}.`);
    }
    this.lastTouch.delete(id);
    this.region.log('info', 'incoming copy available', { snapshotId: id, sourceRegion: snap.sourceRegion, sourceSnapshotId: snap.sourceSnapshotId });
  }

  async fail(id: string, reason: string): Promise<void> {
    this.checkedIncoming.delete(id);
    await this.region.meta.snapshots.update(id, { status: 'CreatedFailed', lastError: reason }, ['Creating']);
    this.lastTouch.delete(id);
    // What arrived stays useful for dedup: synced like any batch, collected when nothing names it.
    const batch = this.batches.get(id);
    if (batch) void this.flush(id, batch);
    this.region.log('warn', 'incoming copy failed', { snapshotId: id, reason });
  }

  /** Makes every copy's received chunks durable (clean shutdown: nothing is sent twice after it). */
  async close(): Promise<void> {
    await Promise.allSettled([...this.batches.keys()].map((id) => this.syncCopy(id)));
  }

  // --- internals ---

  /**
   * `incoming` for chunk uploads, which come hundreds a second: a copy found Creating is taken to be
   * so for the next INCOMING_CHECK_MS (each check is a query on the event loop). A copy failed or
   * committed here is forgotten at once; one failed by another process of the region (or silently
   * deleted meanwhile) may take chunks for that long more, which are then simply garbage.
   */
  private async stillIncoming(id: string): Promise<void> {
    const at = this.checkedIncoming.get(id);
    if (at !== undefined && Date.now() - at < INCOMING_CHECK_MS) return;
    await this.incoming(id);
    if (this.checkedIncoming.size > 10_000) this.checkedIncoming.clear();
    this.checkedIncoming.set(id, Date.now());
  }

  private async incoming(id: string): Promise<Snapshot> {
    const snap = await this.region.meta.snapshots.getAny(id);
    if (!snap || snap.sourceRegion === null) throw new ApiError('NoSuchObject', `No incoming copy ${id}.`);
    if (snap.status !== 'Creating') throw new ApiError('OperationDenied', `The copy ${id} is ${snap.status}.`);
    return snap;
  }

  /** Records that the source spoke, at most every TOUCH_EVERY_MS per copy (a durable write). */
  private async touchSnapshot(id: string, force = false): Promise<void> {
    const now = Date.now();
    if (!force && now - (this.lastTouch.get(id) ?? 0) < TOUCH_EVERY_MS) return;
    if (this.lastTouch.size > 10_000) this.lastTouch.clear(); // only a throttle: forgetting costs one write
    this.lastTouch.set(id, now);
    await this.region.meta.snapshots.touch(id, now);
  }

  private checkManifest(snap: Snapshot, bytes: Buffer): void {
    let manifest: Manifest;
    try {
      manifest = Manifest.decode(bytes);
    } catch (e) {
      throw new ApiError('InvalidManifest', `The manifest cannot be decoded: ${(e as Error).message}`);
    }
    if (manifest.chunkSize !== this.region.repo.chunkSize) {
      throw new ApiError('InvalidManifest', `The manifest uses ${manifest.chunkSize}-byte chunks; this region uses ${this.region.repo.chunkSize}.`);
    }
    if (manifest.diskSize > snap.sizeInGB * GiB) throw new ApiError('InvalidManifest', `The manifest describes ${manifest.diskSize} bytes, more than the snapshot's ${snap.sizeInGB} GB.`);
  }

  private async record(id: string, manifestId: string): Promise<void> {
    const updated = await this.region.meta.snapshots.update(id, { manifestId }, ['Creating']);
    if (!updated) throw new ApiError('OperationDenied', `The copy ${id} is no longer Creating.`);
    await this.region.steps?.('incoming:manifest-recorded');
  }

  /**
   * Concatenates the parts into one buffer of the declared size (checked against the disk size by
   * the caller), verifies its sha256 is `manifestId` and that it decodes, and stores it durably.
   * Returns the indexes of parts that vanished meanwhile (to be sent again), else [].
   */
  private async assemble(snap: Snapshot, manifestId: string, size: number, parts: string[]): Promise<number[]> {
    await this.assemblySlot();
    try {
      const manifests = this.region.repo.manifests;
      const buffer = Buffer.allocUnsafe(size);
      const hash = createHash('sha256');
      let at = 0;
      for (const [i, partId] of parts.entries()) {
        let part: Buffer;
        try {
          part = await manifests.get(partId);
        } catch (e) {
          if (e instanceof ChunkIntegrityError) await manifests.delete(partId);
          else if (!(e instanceof ChunkNotFoundError)) throw e;
          return [i];
        }
        if (at + part.length > size) throw new ApiError('InvalidManifest', `The parts hold more than the declared ${size} bytes.`);
        part.copy(buffer, at);
        hash.update(part);
        at += part.length;
      }
      if (at !== size) throw new ApiError('InvalidManifest', `The parts hold ${at} bytes, not the declared ${size}.`);
      const actual = hash.digest('hex');
      if (actual !== manifestId) throw new ApiError('InvalidManifest', `The assembled manifest hashes to ${actual}, not ${manifestId}.`);
      this.checkManifest(snap, buffer);
      const writer = manifests.writer();
      await writer.putHashed(manifestId, buffer); // hashed just above, from these very bytes
      await writer.sync();
      return [];
    } finally {
      this.releaseAssemblySlot();
    }
  }

  private async assemblySlot(): Promise<void> {
    while (this.assemblies >= MAX_ASSEMBLIES) await new Promise<void>((r) => this.assemblyWaiters.push(r));
    this.assemblies++;
  }

  private releaseAssemblySlot(): void {
    this.assemblies--;
    this.assemblyWaiters.shift()?.();
  }

  private batchFor(id: string): CopyBatch {
    let batch = this.batches.get(id);
    if (!batch) {
      batch = { writer: this.region.repo.chunks.writer(), syncingBytes: 0, syncing: null, oldestAt: null, timer: null, inflight: 0 };
      this.batches.set(id, batch);
    }
    return batch;
  }

  private armTimer(id: string, batch: CopyBatch): void {
    if (batch.timer || batch.oldestAt === null) return;
    batch.timer = setTimeout(() => {
      batch.timer = null;
      void this.flush(id, batch);
    }, Math.max(0, batch.oldestAt + SYNC_BATCH_AGE_MS - Date.now()));
    batch.timer.unref();
  }

  /** Syncs what the copy's writer holds (after the sync already running, if any). Never rejects. */
  private flush(id: string, batch: CopyBatch): Promise<void> {
    if (batch.syncing) return batch.syncing;
    if (batch.timer) clearTimeout(batch.timer);
    batch.timer = null;
    const bytes = batch.writer.unsyncedBytes;
    batch.oldestAt = null;
    if (bytes === 0) {
      this.forgetIfIdle(id, batch);
      return Promise.resolve();
    }
    batch.syncingBytes = bytes;
    batch.syncing = batch.writer
      .sync()
      .catch((e: unknown) => {
        // The lost chunks are gone from the store: "missing" reports them, the source sends them
        // again. Nothing else stops: another copy's chunks are not affected (ChunkWriter contract).
        if (e instanceof ChunksLostError) this.metrics?.chunksLost.inc(e.ids.length);
        this.region.log('warn', 'an incoming copy batch could not be made durable; its chunks will be sent again', { snapshotId: id, err: String(e) });
      })
      .finally(() => {
        batch.syncing = null;
        batch.syncingBytes = 0;
        if (batch.writer.unsyncedBytes >= SYNC_BATCH_BYTES / 2) void this.flush(id, batch);
        else if (batch.writer.unsyncedBytes > 0) {
          batch.oldestAt ??= Date.now();
          this.armTimer(id, batch);
        } else this.forgetIfIdle(id, batch);
      });
    return batch.syncing;
  }

  /** Waits until everything the copy's writer received so far is synced (or reported lost). */
  private async syncCopy(id: string): Promise<void> {
    const batch = this.batches.get(id);
    if (!batch) return;
    while (batch.syncing || batch.writer.unsyncedBytes > 0) await this.flush(id, batch);
  }

  /** A store-wide sync; false when it failed (the blobs it lost are gone from the store, so they read as missing). */
  private async syncStore(): Promise<boolean> {
    try {
      await this.region.repo.chunks.sync();
      return true;
    } catch (e) {
      this.region.log('warn', 'chunk store sync failed at a commit; checking again what is present', { err: String(e) });
      return false;
    }
  }

  private forgetIfIdle(id: string, batch: CopyBatch): void {
    if (batch.inflight === 0 && !batch.syncing && !batch.timer && batch.writer.unsyncedBytes === 0 && this.batches.get(id) === batch) {
      this.batches.delete(id);
    }
  }
}

/**
 * zstd-decompresses a chunk into at most `max` bytes: a body that would expand beyond a chunk is
 * refused (ChunkTooLarge) without allocating more, bytes that do not decompress are damage in
 * transit (ChunkDigestMismatch: the source sends them again). `declared` is the size the frame's
 * header gives, null when it gives none.
 */
function decompressChunk(body: Buffer, max: number, lease: (length: number) => BodyLease): { out: BodyLease; declared: number | null } {
  const damaged = (): ApiError => new ApiError('ChunkDigestMismatch', 'The compressed chunk cannot be decompressed; it was damaged in transit.');
  const declared = frameContentSize(body);
  if (declared === 'damaged') throw damaged();
  if (declared !== null && declared > max) throw new ApiError('ChunkTooLarge', `The chunk decompresses to ${declared} bytes; chunks here have at most ${max}.`);
  const out = lease(declared ?? max);
  const n = decodeFrameInto(out.buffer, body);
  if (typeof n !== 'number') {
    out.release();
    if (n === 'too-large') throw new ApiError('ChunkTooLarge', `The chunk decompresses to more than ${max} bytes.`);
    throw damaged();
  }
  return { out: n === out.buffer.length ? out : { buffer: out.buffer.subarray(0, n), release: () => out.release() }, declared };
}
