/**
 * A Bloom filter over SHA-256 hex ids: "certainly absent" or "maybe present", in a fixed number of
 * bits. Garbage collection marks live chunks in one so that its memory stays bounded at any number
 * of chunks (a `Set` of every live id costs ~100 bytes an id and stops at 2^24 entries). A false
 * "maybe" only keeps a garbage blob until a later run, whose filter uses another seed; a false
 * "absent" cannot happen, which is the property GC safety needs.
 *
 * Ids are uniformly distributed (they are SHA-256 outputs), so their own bits, mixed with a per-filter
 * random seed, serve as the hash functions (double hashing: h1 + i * h2).
 */
import { randomBytes } from 'node:crypto';

export class BloomFilter {
  private readonly bits: Uint8Array;
  private readonly size: number;
  private readonly hashes: number;
  private readonly seed1: number;
  private readonly seed2: number;

  /** Sized for `expected` ids at about 1 % false positives, within [2^16, maxBits] bits. */
  static forCount(expected: number, maxBits = 2 ** 30): BloomFilter {
    const wanted = Math.ceil(Math.max(1, expected) * 9.6);
    return new BloomFilter(Math.min(maxBits, Math.max(2 ** 16, wanted)), 7);
  }

  constructor(bits: number, hashes: number) {
    this.size = Math.ceil(bits / 8) * 8;
    this.bits = new Uint8Array(this.size / 8);
    this.hashes = hashes;
    const seed = randomBytes(8);
    this.seed1 = seed.readUInt32LE(0);
    this.seed2 = seed.readUInt32LE(4);
  }

  get byteLength(): number {
    return this.bits.byteLength;
  }

  add(id: string): void {
    const [h1, h2] = this.base(id);
    for (let i = 0; i < this.hashes; i++) {
      const bit = (h1 + i * h2) % this.size;
      this.bits[bit >>> 3]! |= 1 << (bit & 7);
    }
  }

  mightContain(id: string): boolean {
    const [h1, h2] = this.base(id);
    for (let i = 0; i < this.hashes; i++) {
      const bit = (h1 + i * h2) % this.size;
      if ((this.bits[bit >>> 3]! & (1 << (bit & 7))) === 0) return false;
    }
    return true;
  }

  private base(id: string): [number, number] {
    const a = (parseInt(id.slice(0, 8), 16) ^ this.seed1) >>> 0;
    const b = (parseInt(id.slice(8, 16), 16) ^ this.seed2) >>> 0;
    // Doubles are exact here: a + i * b < 2^32 * 8.
    return [a, (b | 1) >>> 0];
  }
}
