/**
 * Self-describing disk blocks for tests that must tell, from a disk's bytes alone, which writes it
 * holds: a "record" block names the write (its sequence number) and the block it was written to; an
 * "old" block names only its block. Plus a seeded permutation, so write orders are random but
 * reproducible.
 */
export const BLOCK = 4096;

/** Deterministic PRNG (mulberry32). */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** The numbers 0..n-1 in a random order fixed by `seed` (Fisher-Yates). */
export function permutation(n: number, seed: number): Uint32Array {
  const out = new Uint32Array(n);
  for (let i = 0; i < n; i++) out[i] = i;
  const rnd = prng(seed);
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(rnd() * (i + 1));
    const t = out[i]!;
    out[i] = out[j]!;
    out[j] = t;
  }
  return out;
}

function patterned(magic: string, a: number, b: number): Buffer {
  const pattern = Buffer.alloc(16);
  pattern.write(magic, 0, 8, 'latin1');
  pattern.writeUInt32LE(a >>> 0, 8);
  pattern.writeUInt32LE(b >>> 0, 12);
  return Buffer.alloc(BLOCK, pattern);
}

/** The bytes write number `seq` puts on block `block`. */
export const recordBlock = (seq: number, block: number): Buffer => patterned('SFREC001', seq, block);

/** The bytes block `block` holds before any numbered write reached it. */
export const oldBlock = (block: number): Buffer => patterned('SFOLD001', block, 0xffffffff);

/** What a block holds: the write it carries, 'old', or 'garbage' (anything else, e.g. torn or zeroed). */
export function classify(bytes: Buffer, block: number): { kind: 'record'; seq: number } | { kind: 'old' } | { kind: 'garbage' } {
  if (bytes.toString('latin1', 0, 8) === 'SFREC001' && bytes.readUInt32LE(12) === block) {
    const seq = bytes.readUInt32LE(8);
    return bytes.equals(recordBlock(seq, block)) ? { kind: 'record', seq } : { kind: 'garbage' };
  }
  return bytes.equals(oldBlock(block)) ? { kind: 'old' } : { kind: 'garbage' };
}

/** `count` consecutive old blocks starting at block `first`, as one buffer (for filling a disk). */
export function oldRange(first: number, count: number): Buffer {
  const out = Buffer.allocUnsafe(count * BLOCK);
  for (let i = 0; i < count; i++) oldBlock(first + i).copy(out, i * BLOCK);
  return out;
}
