/**
 * A region's content-addressed storage as snapshots use it: chunks and manifests (two ChunkStore
 * namespaces) and the hasher.
 *
 * Write order (restic's rule): chunks are stored and synced, then the manifest is stored and synced;
 * only then may a caller publish a snapshot that names the manifest. Readers go the other way.
 * Garbage collection runs beside writers without a lock: see garbage-collector.ts for the rules
 * (last-used times, GC holds) that keep what a writer relies on.
 */
import { ChunkIntegrityError, type ChunkStore, type ChunkWriter } from '../chunkstore/chunk-store.ts';
import { readPooled } from '../chunkstore/pooled-read.ts';
import { AlignedBufferPool } from '../lib/aligned-memory.ts';
import { isAllZero } from '../lib/all-zero.ts';
import { Counter, MetricsRegistry } from '../lib/metrics.ts';
import { decodeFrameInto } from '../lib/zstd.ts';
import { Manifest } from './manifest.ts';

export interface Hasher {
  hash(data: Buffer): Promise<string>;
  /**
   * The hash and, when `data` compresses well, a zstd frame of it, in one pass off the event loop
   * (Sha256Pool). Optional: without it, chunks are stored plain.
   */
  hashAndPack?(data: Buffer): Promise<{ hex: string; packed: Buffer | null }>;
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

/**
 * Free chunk buffers the region keeps for its pooled reads (chunkstore/pooled-read.ts), shared by
 * every copy it sends (16 first sends in flight per copy) and every restore (8 chunks in flight,
 * two buffers each), rather than a pool per copy or per restore: each finished one left its 16 MiB
 * resident until a full collection (peak RSS of the replication bench 307 MiB with per-walk pools,
 * 275-279 with one). Beyond this many free buffers of a size, one given back is left to the collector.
 */
const READ_BUFFERS_KEPT = 32;

export class ChunkRepository {
  /** The region's pooled read buffers (READ_BUFFERS_KEPT). */
  readonly readBuffers = new AlignedBufferPool(READ_BUFFERS_KEPT);

  constructor(
    readonly chunks: ChunkStore,
    readonly manifests: ChunkStore,
    readonly hasher: Hasher,
    readonly chunkSize: number,
    readonly metrics: RepositoryMetrics,
  ) {}

  /**
   * Stores one chunk's bytes through `writer` unless they are all zero (zero chunks are never
   * stored); returns its id, or null for a zero chunk. Not durable until `writer.sync()`. Into a
   * store that keeps chunks compressed, a chunk that compresses well goes as a zstd frame, made
   * where it is hashed (compression at rest: docs/design.md).
   */
  async storeChunk(data: Buffer, writer: ChunkWriter): Promise<string | null> {
    if (isAllZero(data)) return null;
    const { hex: id, packed } = this.chunks.storesPacked && this.hasher.hashAndPack ? await this.hasher.hashAndPack(data) : { hex: await this.hasher.hash(data), packed: null };
    if (await writer.putHashed(id, data, packed)) {
      this.metrics.chunksWritten.inc();
      this.metrics.chunkBytesWritten.inc(data.length);
    } else {
      this.metrics.chunksDeduplicated.inc();
    }
    return id;
  }

  /**
   * Makes the manifest durable, after the chunks that `writer` stored for it, and returns its id.
   * Fails (nothing to publish) when any of those chunks could not be made durable.
   */
  async commitManifest(manifest: Manifest, writer: ChunkWriter): Promise<string> {
    await writer.sync();
    const bytes = manifest.encode();
    const id = await this.hasher.hash(bytes);
    const manifestWriter = this.manifests.writer();
    await manifestWriter.putHashed(id, bytes);
    await manifestWriter.sync();
    return id;
  }

  /**
   * The plain bytes of chunk `id`, verified as `get` verifies them (decoded if stored compressed,
   * hashed, ChunkIntegrityError unless they hash to `id`), but read into buffers of `size` bytes
   * taken from `buffers` (chunkstore/pooled-read.ts says why) instead of a fresh buffer per chunk.
   * `release` gives the buffers back: call it once nothing reads `data` any more, and only then. A
   * store without `readInto`, and a stored blob larger than `size` (damage: `get` then reports it),
   * are read with `get`.
   */
  async readVerified(id: string, buffers: AlignedBufferPool, size: number): Promise<{ data: Buffer; release(): void }> {
    const stored = await readPooled(this.chunks, id, buffers, size);
    if (!stored) return { data: await this.chunks.get(id), release: () => undefined };
    let plain: Buffer | null = null;
    const release = (): void => {
      stored.release();
      if (plain) buffers.give(plain);
      plain = null; // idempotent, as stored.release is
    };
    try {
      let data = stored.data;
      if (stored.encoding === 'zstd') {
        plain = buffers.take(size);
        const n = decodeFrameInto(plain, data);
        // A frame that does not decode (or decodes past a chunk) is checked as the bytes it is:
        // they do not hash to the id, so it is damage, as `get` reports it (CS-4).
        if (typeof n === 'number') data = plain.subarray(0, n);
      }
      const actual = await this.hasher.hash(data);
      if (actual !== id) throw new ChunkIntegrityError(id, actual);
      return { data, release };
    } catch (e) {
      release();
      throw e;
    }
  }

  /** Loads and decodes a manifest; its bytes are verified against the id by the store. */
  async loadManifest(id: string): Promise<Manifest> {
    return Manifest.decode(await this.manifests.get(id));
  }
}
