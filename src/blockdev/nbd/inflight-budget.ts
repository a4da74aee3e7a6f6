/**
 * Per-connection admission control for pipelined requests: at most `maxRequests` requests and
 * `maxBytes` payload bytes (write payloads received plus read data not yet handed to the kernel)
 * may be outstanding. The request reader waits here before it takes the next request off the
 * socket, so a client that keeps many large requests in flight (nbdcopy keeps 64 by default) cannot
 * make the server hold more than the budget in memory; TCP flow control pushes back on the client.
 *
 * A single request larger than `maxBytes` is still admitted when nothing else is outstanding, so
 * the budget never deadlocks.
 */
export class InFlightBudget {
  private requests = 0;
  private bytes = 0;
  private waiter: { cost: number; resolve: () => void; reject: (err: Error) => void } | null = null;
  private aborted: Error | null = null;

  constructor(
    private readonly maxRequests: number,
    private readonly maxBytes: number,
  ) {
    if (!(maxRequests >= 1) || !(maxBytes >= 1)) throw new RangeError('in-flight limits must be >= 1');
  }

  get outstandingRequests(): number {
    return this.requests;
  }

  get outstandingBytes(): number {
    return this.bytes;
  }

  /**
   * Takes one request slot and `cost` bytes. Returns undefined when admitted immediately (the common
   * case, no promise allocated), otherwise a promise that resolves once admitted. Only one caller
   * may wait at a time (the connection's single request reader).
   */
  acquire(cost: number): Promise<void> | undefined {
    if (this.aborted) return Promise.reject(this.aborted);
    if (this.waiter) return Promise.reject(new Error('InFlightBudget: concurrent acquire'));
    if (this.fits(cost)) {
      this.requests++;
      this.bytes += cost;
      return undefined;
    }
    return new Promise<void>((resolve, reject) => {
      this.waiter = { cost, resolve, reject };
    });
  }

  release(cost: number): void {
    this.requests--;
    this.bytes -= cost;
    const w = this.waiter;
    if (w && this.fits(w.cost)) {
      this.waiter = null;
      this.requests++;
      this.bytes += w.cost;
      w.resolve();
    }
  }

  /** Fails the current and all future acquisitions (the connection is going away). */
  abort(err: Error): void {
    if (this.aborted) return;
    this.aborted = err;
    const w = this.waiter;
    if (w) {
      this.waiter = null;
      w.reject(err);
    }
  }

  private fits(cost: number): boolean {
    if (this.requests >= this.maxRequests) return false;
    return this.bytes === 0 || this.bytes + cost <= this.maxBytes;
  }
}
