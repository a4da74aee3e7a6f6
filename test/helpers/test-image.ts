/**
 * Raw disk images with a realistic mix: random (incompressible) ranges, zero ranges, text
 * (compressible) ranges, and a tail that is not chunk- or sector-aligned.
 */
import { createHash, randomBytes } from 'node:crypto';
import { open } from 'node:fs/promises';

export interface TestImage {
  path: string;
  size: number;
  /** Non-zero bytes written (random + text). */
  dataBytes: number;
}

const MiB = 1 << 20;

/** Writes an image of `size` bytes: per 16 MiB stripe, 4 MiB random, 8 MiB zero, 4 MiB text. */
export async function makeImage(path: string, size: number, seed = 'snapferry'): Promise<TestImage> {
  const fh = await open(path, 'w');
  let dataBytes = 0;
  try {
    await fh.truncate(size);
    const text = Buffer.from(`${seed}: the quick brown fox jumps over the lazy dog 0123456789\n`.repeat(Math.ceil(MiB / 60))).subarray(0, MiB);
    for (let stripe = 0; stripe < size; stripe += 16 * MiB) {
      for (let i = 0; i < 4; i++) dataBytes += await writeClipped(fh, randomBytes(MiB), stripe + i * MiB, size);
      for (let i = 12; i < 16; i++) dataBytes += await writeClipped(fh, text, stripe + i * MiB, size);
    }
    // An unaligned tail: the last 1000 bytes random, ending 300 bytes before a sector boundary.
    dataBytes += await writeClipped(fh, randomBytes(1000), size - 1000, size);
  } finally {
    await fh.close();
  }
  return { path, size, dataBytes };
}

async function writeClipped(fh: import('node:fs/promises').FileHandle, data: Buffer, at: number, size: number): Promise<number> {
  if (at >= size) return 0;
  const n = Math.min(data.length, size - at);
  await fh.write(data, 0, n, at);
  return n;
}

/** sha256 of the first `length` bytes of a file, zero-padded when the file is shorter. */
export async function sha256Of(path: string, length?: number): Promise<string> {
  const fh = await open(path, 'r');
  const hash = createHash('sha256');
  try {
    const size = (await fh.stat()).size;
    const total = length ?? size;
    const buf = Buffer.alloc(4 * MiB);
    for (let at = 0; at < total; at += buf.length) {
      const n = Math.min(buf.length, total - at);
      buf.fill(0, 0, n);
      if (at < size) await fh.read(buf, 0, Math.min(n, size - at), at);
      hash.update(buf.subarray(0, n));
    }
  } finally {
    await fh.close();
  }
  return hash.digest('hex');
}
