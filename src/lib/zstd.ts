/**
 * zstd decoding (the `zstd-napi` native binding) for the event loop's thread, with one
 * decompression context for the process: its calls are synchronous and so never overlap. The
 * store's reads of chunks kept compressed and the destination's receipt of compressed uploads both
 * decode here. Compression happens by zstd-pack.mjs's rule, in the hash pool's workers (at rest)
 * and in the copy job (for the wire).
 */
import { createRequire } from 'node:module';

export const zstd = createRequire(import.meta.url)('zstd-napi/binding') as typeof import('zstd-napi/binding.js');

const dctx = new zstd.DCtx();

/** What a frame's header says of its content: its size, null when it does not say, 'damaged' when it is no frame. */
export function frameContentSize(frame: Buffer): number | null | 'damaged' {
  try {
    return zstd.getFrameContentSize(frame);
  } catch {
    return 'damaged';
  }
}

/**
 * Decodes one frame into `out`: the bytes decoded, 'too-large' when the content does not fit in
 * `out`, 'damaged' when the bytes do not decode (truncated, corrupted, not zstd).
 */
export function decodeFrameInto(out: Buffer, frame: Buffer): number | 'too-large' | 'damaged' {
  try {
    return dctx.decompress(out, frame);
  } catch (e) {
    // The binding's errors carry only zstd's error name as their message; "Destination buffer is
    // too small" is ZSTD_error_dstSize_tooSmall (pinned by test/replication-protocol.test.ts).
    return /too small/i.test((e as Error).message) ? 'too-large' : 'damaged';
  }
}

/**
 * The content of one zstd frame, or null when `frame` is not a frame that declares a content size
 * of at most `maxLength` and decodes to exactly that many bytes (damaged, truncated, or not zstd).
 * The answer owns its memory (not from Buffer's shared pool).
 */
export function decodeFrame(frame: Buffer, maxLength: number): Buffer | null {
  const declared = frameContentSize(frame);
  if (typeof declared !== 'number' || declared > maxLength) return null;
  const out = Buffer.allocUnsafeSlow(declared);
  return decodeFrameInto(out, frame) === declared ? out : null;
}
