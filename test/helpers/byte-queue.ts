/**
 * Bytes received on a socket, read back in exact lengths, for the tests' raw protocol clients.
 *
 * The pieces are kept as they arrived and only what a read hands out is copied (a 32 MiB NBD reply
 * arrives in hundreds of pieces: concatenating on every piece would copy gigabytes); a read that
 * lies within one piece is a view of it.
 */

/**
 * "Something arrived" for a client reading a socket: `wait(ms)` resolves at the next `notify()` (bytes
 * or the end of the connection) or after `ms`, whichever comes first; the caller then looks again.
 */
export class ArrivalSignal {
  private waiter: (() => void) | null = null;

  async wait(ms: number): Promise<void> {
    await new Promise<void>((resolve) => {
      const t = setTimeout(resolve, ms);
      this.waiter = () => {
        clearTimeout(t);
        resolve();
      };
    });
    this.waiter = null;
  }

  notify(): void {
    this.waiter?.();
  }
}

export class ByteQueue {
  private readonly pieces: Buffer[] = [];
  /** Bytes of pieces[0] already taken. */
  private head = 0;
  private queued = 0;

  /** Bytes received and not yet taken. */
  get length(): number {
    return this.queued;
  }

  push(piece: Buffer): void {
    if (piece.length === 0) return;
    this.pieces.push(piece);
    this.queued += piece.length;
  }

  /** The next `n` bytes (at most `length`: the caller waits until they are there). */
  take(n: number): Buffer {
    if (n > this.queued) throw new RangeError(`${n} bytes asked, ${this.queued} received`);
    if (n === 0) return Buffer.alloc(0);
    const first = this.pieces[0]!;
    if (first.length - this.head >= n) {
      const out = first.subarray(this.head, this.head + n);
      this.advance(n);
      return out;
    }
    const out = Buffer.allocUnsafe(n);
    this.takeInto(out, 0, n);
    return out;
  }

  /** Copies up to `n` of the next bytes into `target` at `at`; answers how many (fewer when fewer are here). */
  takeInto(target: Buffer, at: number, n: number): number {
    let filled = 0;
    while (filled < n && this.queued > 0) {
      const piece = this.pieces[0]!;
      const k = Math.min(piece.length - this.head, n - filled);
      piece.copy(target, at + filled, this.head, this.head + k);
      filled += k;
      this.advance(k);
    }
    return filled;
  }

  private advance(k: number): void {
    this.head += k;
    this.queued -= k;
    if (this.head === this.pieces[0]!.length) {
      this.pieces.shift();
      this.head = 0;
    }
  }
}
