/**
 * A set of chunk indexes in [0, capacity) kept as a bitmap: one bit per chunk plus a count. What a
 * snapshot capture must read (and what it has not read yet) is such a set.
 *
 * Why a bitmap: BCC's largest disk (32765 GB) has 33.5 M chunks of 1 MiB, past V8's cap of 2^24
 * entries for a Set or Map (a `new Set(changed)` of that size throws), and a `number[]` of every
 * changed chunk costs 8 bytes a chunk where the bitmap costs one bit (4 MiB for the largest disk,
 * whatever is in it). Rejected: a sorted Uint32Array of indexes; it is smaller for a few changes but
 * 128 MiB after an unclean open marks every chunk, and deletion in the middle is O(n).
 */
export interface ReadonlyChunkSet extends Iterable<number> {
  readonly size: number;
  readonly capacity: number;
  has(index: number): boolean;
}

export class ChunkSet implements ReadonlyChunkSet {
  private readonly words: Uint32Array;
  private count = 0;

  constructor(readonly capacity: number) {
    this.words = new Uint32Array(Math.ceil(capacity / 32));
  }

  get size(): number {
    return this.count;
  }

  has(index: number): boolean {
    if (!(index >= 0 && index < this.capacity)) return false;
    return (this.words[index >>> 5]! & (1 << (index & 31))) !== 0;
  }

  /** Adds `index`; answers whether it was new. */
  add(index: number): boolean {
    this.check(index);
    const w = index >>> 5;
    const bit = 1 << (index & 31);
    if (this.words[w]! & bit) return false;
    this.words[w]! |= bit;
    this.count++;
    return true;
  }

  /** Removes `index`; answers whether it was there. */
  delete(index: number): boolean {
    if (!this.has(index)) return false;
    this.words[index >>> 5]! &= ~(1 << (index & 31));
    this.count--;
    return true;
  }

  /** A copy (same members, its own bits). */
  clone(): ChunkSet {
    const c = new ChunkSet(this.capacity);
    c.words.set(this.words);
    c.count = this.count;
    return c;
  }

  /** Members in ascending order. Skips empty 32-chunk words; adding or deleting while iterating is safe. */
  *[Symbol.iterator](): IterableIterator<number> {
    const words = this.words;
    for (let w = 0; w < words.length; w++) {
      if (words[w] === 0) continue;
      for (let b = 0; b < 32; b++) {
        if (words[w]! & (1 << b)) yield w * 32 + b;
      }
    }
  }

  private check(index: number): void {
    if (!Number.isInteger(index) || index < 0 || index >= this.capacity) {
      throw new RangeError(`chunk index ${index} is outside [0, ${this.capacity})`);
    }
  }
}
