/**
 * Many concurrent passes, or one exclusive section with no pass in flight. A disk's writes pass the
 * gate; freezing the changed-chunk set for a snapshot takes it exclusively, so the freeze never sees
 * a write half-way. Exclusive sections are served in order and block new passes while they wait
 * (no writer can starve a snapshot).
 */
export class WriteGate {
  private active = 0;
  private closed: Promise<void> | null = null;
  private drained: (() => void) | null = null;

  async pass<T>(fn: () => Promise<T>): Promise<T> {
    while (this.closed) await this.closed;
    this.active++;
    try {
      return await fn();
    } finally {
      this.active--;
      if (this.active === 0) this.drained?.();
    }
  }

  async exclusive<T>(fn: () => Promise<T>): Promise<T> {
    while (this.closed) await this.closed;
    let open!: () => void;
    this.closed = new Promise<void>((r) => (open = r));
    try {
      if (this.active > 0) await new Promise<void>((r) => (this.drained = r));
      this.drained = null;
      return await fn();
    } finally {
      this.closed = null;
      open();
    }
  }
}
