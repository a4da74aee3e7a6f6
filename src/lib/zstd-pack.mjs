// The one rule for when a chunk is kept or sent zstd-compressed, and the compressor that applies
// it: used by the hash pool's workers (compression at rest, docs/design.md CS-4) and by the copy
// job (compression for the wire), so that both decide alike. Plain JavaScript, because a worker
// cannot load TypeScript (see sha256-pool-worker.mjs); zstd-pack.d.mts types it for the rest.
import { createRequire } from 'node:module';

/** The sample compressed first: when it does not compress, neither is the rest tried. */
export const PACK_SAMPLE_BYTES = 64 * 1024;
/** A frame is used only when it is below this fraction of the input. */
export const PACK_WORTH = 0.9;
/** zstd level 1: fast enough to run on every captured chunk (and every chunk sent raw). */
export const PACK_LEVEL = 1;
/** Compression at rest considers chunks of at least this many bytes (smaller ones gain little). */
export const PACK_MIN_AT_REST = 128 * 1024;

/**
 * One compression context and scratch buffer, reused call after call: a fresh chunk-sized output
 * per chunk costs the garbage collector more than the compression. Not for concurrent use (the
 * calls are synchronous, so one per thread is enough).
 */
export class Packer {
  constructor() {
    this.zstd = createRequire(import.meta.url)('zstd-napi/binding');
    this.cctx = new this.zstd.CCtx();
    this.scratch = Buffer.alloc(0);
  }

  /**
   * Compresses `input` by the rule and answers the frame's length in `scratch` (valid until the
   * next call), or 0 when it does not pay: inputs shorter than `min`, inputs longer than the sample
   * whose sample does not compress below PACK_WORTH (incompressible data costs only that), and
   * inputs whose frame is not below PACK_WORTH of them. `level` is zstd's (PACK_LEVEL unless the
   * caller says). Throws what zstd throws.
   */
  pack(input, min, level = PACK_LEVEL) {
    if (input.length < min || input.length === 0) return 0;
    if (input.length > PACK_SAMPLE_BYTES && this.compress(input.subarray(0, PACK_SAMPLE_BYTES), level) >= PACK_SAMPLE_BYTES * PACK_WORTH) return 0;
    const n = this.compress(input, level);
    return n < input.length * PACK_WORTH ? n : 0;
  }

  compress(input, level) {
    const bound = this.zstd.compressBound(input.length);
    if (this.scratch.length < bound) this.scratch = Buffer.allocUnsafeSlow(bound);
    return this.cctx.compress(this.scratch, input, level);
  }
}
