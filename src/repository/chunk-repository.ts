/**
 * A region's content-addressed storage as snapshots use it: chunks and manifests (two ChunkStore
 * namespaces), the hasher, and the lock that keeps garbage collection away from writers.
 *
 * Write order (restic's rule): chunks are stored and synced, then the manifest is stored and synced;
 * only then may a caller publish a snapshot that names the manifest. Readers go the other way.
 */
import type { ChunkStore } from '../chunkstore/chunk-store.ts';
import { isAllZero } from '../lib/all-zero.ts';
import { Counter, MetricsRegistry } from '../lib/metrics.ts';
import { RwLock } from '../lib/rw-lock.ts';
import { Manifest } from './manifest.ts';

export interface Hasher {
  hash(data: Buffer): Promise<string>;
}

export class RepositoryMetrics {
  readonly snapshotBytesRead: Counter;
  readonly chunkBytesWritten: Counter;
  readonly chunksWritten: Counter;
  readonly chunksDeduplicated: Counter;
  readonly restoreBytesWritten: Counter;

  constructor(registry: MetricsRegistry) {
    this.snapshotBytesRead = registry.counter('snapferry_snapshot_bytes_read_total', 'Disk bytes read to create snapshots.');
    this.chunkBytesWritten = registry.counter('snapferry_chunk_bytes_written_total', 'Bytes of new chunks written to the chunk store.');
    this.chunksWritten = registry.counter('snapferry_chunks_written_total', 'New chunks written to the chunk store.');
    this.chunksDeduplicated = registry.counter('snapferry_chunks_deduplicated_total', 'Chunks not written because the store already held them.');
    this.restoreBytesWritten = registry.counter('snapferry_restore_bytes_written_total', 'Disk bytes written when creating or rolling back disks from snapshots.');
  }
}

export class ChunkRepository {
  /** Held shared by anything that adds references (captures, restores, incoming copies); GC holds it exclusively. */
  readonly lock = new RwLock();

  constructor(
    readonly chunks: ChunkStore,
    readonly manifests: ChunkStore,
    readonly hasher: Hasher,
    readonly chunkSize: number,
    readonly metrics: RepositoryMetrics,
  ) {}

  /**
   * Stores one chunk's bytes unless they are all zero; returns its id, or null for a zero chunk.
   * Not durable until `chunks.sync()`.
   */
  async storeChunk(data: Buffer): Promise<string | null> {
    if (isAllZero(data)) return null;
    const id = await this.hasher.hash(data);
    if (await this.chunks.putHashed(id, data)) {
      this.metrics.chunksWritten.inc();
      this.metrics.chunkBytesWritten.inc(data.length);
    } else {
      this.metrics.chunksDeduplicated.inc();
    }
    return id;
  }

  /** Makes the manifest durable (after syncing the chunks it names) and returns its id. */
  async commitManifest(manifest: Manifest): Promise<string> {
    await this.chunks.sync();
    const bytes = manifest.encode();
    const id = await this.hasher.hash(bytes);
    await this.manifests.put(id, bytes);
    await this.manifests.sync();
    return id;
  }

  /** Loads and decodes a manifest; its bytes are verified against the id by the store. */
  async loadManifest(id: string): Promise<Manifest> {
    return Manifest.decode(await this.manifests.get(id));
  }
}
