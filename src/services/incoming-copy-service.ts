/**
 * Remote copy, destination side: what the internal endpoints do when a source region sends a
 * snapshot here. The reserved record stays `Creating` until `commit` has checked that every chunk
 * the manifest names is present and durable; only then does it turn `Available`.
 *
 * The manifest arrives first and is recorded on the Creating snapshot, which makes it a garbage-
 * collection root: chunks that arrive for it (or that it finds already here) cannot be collected
 * while the copy is in flight, however long it takes.
 */
import { decompress } from 'zstd-napi';
import { ChunkIntegrityError } from '../chunkstore/chunk-store.ts';
import { ApiError } from '../domain/errors.ts';
import type { Snapshot } from '../domain/snapshot.ts';
import { sha256Hex } from '../lib/sha256-pool.ts';
import { Manifest } from '../repository/manifest.ts';
import type { ReserveRequest } from '../replication/peer-client.ts';
import type { Region } from './region-context.ts';

export class IncomingCopyService {
  constructor(private readonly region: Region) {}

  async reserve(id: string, req: ReserveRequest): Promise<void> {
    const snapshot: Snapshot = {
      id, accountId: req.accountId, name: req.name, desc: req.desc, volumeId: '', sizeInGB: req.sizeInGB, createTime: Date.now(),
      status: 'Creating', createMethod: 'MANUAL', progress: 0, storageType: req.storageType, retentionInDays: null, tags: [],
      sourceRegion: req.sourceRegion, sourceSnapshotId: req.sourceSnapshotId, manifestId: null, lastError: null,
    };
    const outcome = await this.region.meta.snapshots.insertIfAbsent(snapshot);
    await this.region.meta.snapshots.touch(id, Date.now());
    if (outcome === 'exists') {
      const existing = await this.region.meta.snapshots.getAny(id);
      if (!existing || existing.sourceSnapshotId !== req.sourceSnapshotId || existing.sourceRegion !== req.sourceRegion) {
        throw new ApiError('OperationDenied', `The snapshot id ${id} is taken by something else.`);
      }
    }
  }

  async receiveManifest(id: string, bytes: Buffer): Promise<string> {
    const snap = await this.incoming(id);
    let manifest: Manifest;
    try {
      manifest = Manifest.decode(bytes);
    } catch (e) {
      throw new ApiError('InvalidManifest', `The manifest cannot be decoded: ${(e as Error).message}`);
    }
    if (manifest.chunkSize !== this.region.repo.chunkSize) {
      throw new ApiError('InvalidManifest', `The manifest uses ${manifest.chunkSize}-byte chunks; this region uses ${this.region.repo.chunkSize}.`);
    }
    if (manifest.diskSize > snap.sizeInGB * 1024 ** 3) throw new ApiError('InvalidManifest', 'The manifest describes more bytes than the snapshot size.');
    const manifestId = sha256Hex(bytes);
    await this.region.meta.snapshots.touch(id, Date.now());
    if (snap.manifestId === manifestId) return manifestId;
    await this.region.repo.manifests.put(manifestId, bytes);
    await this.region.repo.manifests.sync();
    await this.region.meta.snapshots.update(id, { manifestId }, ['Creating']);
    return manifestId;
  }

  async missing(ids: string[]): Promise<string[]> {
    const present = await this.region.repo.chunks.has(ids);
    return ids.filter((id) => !present.has(id));
  }

  /** Keeps a chunk only if its bytes hash to its id (after decompression). */
  async receiveChunk(id: string, body: Buffer, encoding: string): Promise<void> {
    if (!/^[0-9a-f]{64}$/.test(id)) throw new ApiError('BadRequest', 'A chunk id is 64 lower-case hex characters.');
    let data = body;
    if (encoding === 'zstd') {
      try {
        data = decompress(body);
      } catch {
        throw new ApiError('ChunkDigestMismatch', 'The compressed chunk cannot be decompressed; it was damaged in transit.');
      }
    } else if (encoding !== 'raw') {
      throw new ApiError('BadRequest', `Unknown chunk encoding ${JSON.stringify(encoding)}.`);
    }
    if (data.length > this.region.repo.chunkSize) throw new ApiError('ChunkTooLarge');
    // The store re-hashes on put and keeps nothing whose hash differs (one hash, not two).
    try {
      await this.region.repo.chunks.put(id, data);
    } catch (e) {
      if (e instanceof ChunkIntegrityError) throw new ApiError('ChunkDigestMismatch', `The chunk bytes hash to ${e.actual}, not ${id}.`);
      throw e;
    }
  }

  async progress(id: string, percent: number): Promise<void> {
    await this.region.meta.snapshots.update(id, { progress: Math.max(0, Math.min(99, Math.floor(percent))) }, ['Creating']);
    await this.region.meta.snapshots.touch(id, Date.now());
  }

  /**
   * Fails incoming copies whose source has been silent for longer than `deadlineMs` (it may be gone
   * for good; the source applies the same deadline to its side). Without this such a copy would stay
   * `Creating`, and a `Creating` snapshot cannot be deleted.
   */
  async failSilent(deadlineMs: number): Promise<number> {
    const silent = await this.region.meta.snapshots.listSilentIncoming(Date.now() - deadlineMs);
    for (const s of silent) {
      await this.fail(s.id, `no word from the source region ${s.sourceRegion} for ${Math.round(deadlineMs / 1000)} s`);
    }
    return silent.length;
  }

  /** Every chunk present and durable, then Available. Idempotent: an Available copy commits again as a no-op. */
  async commit(id: string): Promise<void> {
    const snap = await this.region.meta.snapshots.getAny(id);
    if (!snap || snap.sourceRegion === null) throw new ApiError('NoSuchObject', `No incoming copy ${id}.`);
    if (snap.status === 'Available') return;
    if (snap.status !== 'Creating') throw new ApiError('OperationDenied', `The copy ${id} is ${snap.status}.`);
    await this.region.meta.snapshots.touch(id, Date.now());
    if (!snap.manifestId) throw new ApiError('ChunksMissing', 'No manifest has arrived for this copy.');
    const manifest = await this.region.repo.loadManifest(snap.manifestId);
    await this.region.repo.chunks.sync();
    let missing = 0;
    for (const batch of manifest.chunkBatches(4096)) missing += (await this.missing(batch.map((c) => c.id))).length;
    if (missing > 0) throw new ApiError('ChunksMissing', `${missing} chunks have not arrived.`);
    await this.region.meta.snapshots.update(id, { status: 'Available', progress: 100 }, ['Creating']);
    this.region.log('info', 'incoming copy available', { snapshotId: id, sourceRegion: snap.sourceRegion, sourceSnapshotId: snap.sourceSnapshotId });
  }

  async fail(id: string, reason: string): Promise<void> {
    await this.region.meta.snapshots.update(id, { status: 'CreatedFailed', lastError: reason }, ['Creating']);
    this.region.log('warn', 'incoming copy failed', { snapshotId: id, reason });
  }

  private async incoming(id: string): Promise<Snapshot> {
    const snap = await this.region.meta.snapshots.getAny(id);
    if (!snap || snap.sourceRegion === null) throw new ApiError('NoSuchObject', `No incoming copy ${id}.`);
    if (snap.status !== 'Creating') throw new ApiError('OperationDenied', `The copy ${id} is ${snap.status}.`);
    return snap;
  }
}
