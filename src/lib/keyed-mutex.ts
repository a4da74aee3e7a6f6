/**
 * Async mutual exclusion per key. `run(keys, fn)` waits until it holds every key (taken in sorted
 * order, so two callers with overlapping key sets cannot deadlock), runs `fn`, then releases.
 */
export class KeyedMutex<K extends string | number> {
  private readonly tails = new Map<K, Promise<void>>();

  async run<T>(keys: readonly K[], fn: () => Promise<T>): Promise<T> {
    const sorted = [...new Set(keys)].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
    const releases: Array<() => void> = [];
    try {
      for (const key of sorted) releases.push(await this.acquire(key));
      return await fn();
    } finally {
      for (const release of releases.reverse()) release();
    }
  }

  private async acquire(key: K): Promise<() => void> {
    const previous = this.tails.get(key) ?? Promise.resolve();
    let release!: () => void;
    const mine = new Promise<void>((resolve) => (release = resolve));
    const tail = previous.then(() => mine);
    this.tails.set(key, tail);
    await previous;
    return () => {
      release();
      if (this.tails.get(key) === tail) this.tails.delete(key);
    };
  }
}
