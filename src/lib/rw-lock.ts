/**
 * Shared/exclusive lock; a waiting exclusive holder blocks new shared ones, so it cannot starve.
 * Disks use it to freeze a snapshot between writes. Writers of new references into a chunk store (snapshot captures, incoming
 * copies, restores) hold it shared; garbage collection's sweep holds it exclusively, so a chunk that
 * a capture just found present cannot be swept before the capture's manifest names it.
 */
export class RwLock {
  private readers = 0;
  private writer: Promise<void> | null = null;
  private readersDone: (() => void) | null = null;

  async shared<T>(fn: () => Promise<T>): Promise<T> {
    while (this.writer) await this.writer;
    this.readers++;
    try {
      return await fn();
    } finally {
      this.readers--;
      if (this.readers === 0) this.readersDone?.();
    }
  }

  async exclusive<T>(fn: () => Promise<T>): Promise<T> {
    while (this.writer) await this.writer;
    let release!: () => void;
    this.writer = new Promise<void>((r) => (release = r));
    try {
      if (this.readers > 0) await new Promise<void>((r) => (this.readersDone = r));
      this.readersDone = null;
      return await fn();
    } finally {
      this.writer = null;
      release();
    }
  }
}
