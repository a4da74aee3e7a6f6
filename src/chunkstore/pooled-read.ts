/**
 * A stored blob read into a pooled buffer rather than a fresh one: the read that copies and
 * restores make of every chunk. A fresh chunk-sized buffer per chunk costs more in garbage
 * collection than the read itself: each is reported to V8 as external memory, and every 64 MiB or
 * so of them start a full collection (measured on the source side of a copy: 20-90 per GiB, 3-5 CPU
 * seconds per GiB; a 1 GiB restore spent ~1 s of its 4.6-5.2 s collecting). The pool's memory is
 * page-aligned and shared, so the local store reads into it past the page cache, the hash pool
 * hashes it in place and the upload thread sends it in place (lib/aligned-memory.ts).
 *
 * The bytes are NOT verified: they are the stored form (plain or a zstd frame), and the caller
 * either verifies them (ChunkRepository.readVerified) or has someone else do it (a copy's first
 * send: the destination hashes what arrives).
 */
import type { AlignedBufferPool } from '../lib/aligned-memory.ts';
import type { ChunkStore, StoredEncoding } from './chunk-store.ts';

export interface PooledStoredRead {
  /** The stored bytes: a view of the pooled buffer. */
  data: Buffer;
  encoding: StoredEncoding;
  /** Gives the buffer back. Call it once nothing reads `data` any more; later calls do nothing. */
  release(): void;
}

/**
 * Chunk `id`'s stored bytes in a buffer of `size` bytes from `buffers`; null when it must be read
 * with `get` instead: the store cannot read into a caller's memory (no `readInto`: the S3 store,
 * whose reads are network-bound anyway), or the stored blob is larger than `size` (damage, which
 * `get` reports as ChunkIntegrityError, permanent, where a RangeError would be retried as a
 * hiccup). Throws ChunkNotFoundError and the store's other errors.
 */
export async function readPooled(store: ChunkStore, id: string, buffers: AlignedBufferPool, size: number): Promise<PooledStoredRead | null> {
  if (!store.readInto) return null;
  const buffer = buffers.take(size);
  let held = true;
  // Idempotent: a buffer given back twice would be handed to two readers at once.
  const release = (): void => {
    if (held) buffers.give(buffer);
    held = false;
  };
  try {
    const { length, encoding } = await store.readInto(id, buffer);
    return { data: buffer.subarray(0, length), encoding, release };
  } catch (e) {
    release();
    if (e instanceof RangeError) return null;
    throw e;
  }
}
