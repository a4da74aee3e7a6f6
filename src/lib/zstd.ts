/**
 * zstd (the `zstd-napi` native binding) for the event loop's thread: one decompression context for
 * the process, since its calls are synchronous and so never overlap. Compression of chunks at rest
 * happens in the hash pool's workers (sha256-pool-worker.mjs), each with a context of its own.
 */
import { createRequire } from 'node:module';

export const zstd = createRequire(import.meta.url)('zstd-napi/binding') as typeof import('zstd-napi/binding.js');

const dctx = new zstd.DCtx();

/**
 * The content of one zstd frame, or null when `frame` is not a frame that declares a content size
 * of at most `maxLength` and decodes to exactly that many bytes (damaged, truncated, or not zstd).
 * The answer owns its memory (not from Buffer's shared pool).
 */
export function decodeFrame(frame: Buffer, maxLength: number): Buffer | null {
  let declared: number | null;
  try {
    declared = zstd.getFrameContentSize(frame);
  } catch {
    return null;
  }
  if (declared === null || declared > maxLength) return null;
  const out = Buffer.allocUnsafeSlow(declared);
  let n: number;
  try {
    n = dctx.decompress(out, frame);
  } catch {
    return null;
  }
  return n === declared ? out : null;
}
