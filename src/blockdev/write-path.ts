/**
 * Which way a disk write goes to its file: on the calling thread (`writeSync` on the event loop) or
 * through libuv's thread pool.
 *
 * Why inline at all: on this 2-core machine a pool trip per write costs more than the write. An NBD
 * client's writes (256 KiB and 64 KiB requests from nbdcopy) into the page cache take 30-70 us each
 * inline (median; 99th percentile 0.1-0.2 ms); through the pool the server used 0.9-1.1 CPU s per
 * GiB written against 0.6-0.8 inline (a process's later writes, alternating processes), and wrote 10-15 % faster
 * (docs/benchmarks.md, 2026-12-03 afternoon). The difference is the hand-off: a futex wake of a pool
 * thread, a context switch onto the loop's core, the completion's wake back.
 *
 * The risk of inline: the loop waits as long as the kernel takes, and while it waits no request of
 * the process is served. A write into the page cache is a memory copy, but the kernel may make it
 * wait: dirty-page throttling (balance_dirty_pages pauses a writer, up to 200 ms a time, when the
 * device cannot keep up), a partial write of a page that must first be read from the device, direct
 * reclaim under memory pressure. So every inline write is timed, and one slower than SLOW_INLINE_MS
 * sends the disk's writes to the pool for a back-off (BACKOFF_MIN_MS, doubled each time the first
 * inline write after a back-off is slow again, up to BACKOFF_MAX_MS; a fast one resets it). In a
 * device that stays slow the loop then waits for one write per BACKOFF_MAX_MS at most. Writes
 * larger than INLINE_MAX_BYTES always go to the pool: their copy alone is long, and the hand-off a
 * small part of it.
 *
 * Both ways write the same bytes at the same place and resolve when they are in the file; only the
 * cost differs, so a wrong guess costs time, never data.
 */

/** An inline write slower than this sends writes to the pool (inline ones took up to 5 ms on a loaded VM, 15 ms when forced into throttling). */
export const SLOW_INLINE_MS = 10;
export const BACKOFF_MIN_MS = 1000;
export const BACKOFF_MAX_MS = 32_000;
/** Larger writes always go through the pool. */
export const INLINE_MAX_BYTES = 1 << 20;

export type WriteWay = 'inline' | 'pool';

export class WritePathChooser {
  /** Writes go to the pool until this time (ms, `now`'s clock). */
  private poolUntil = 0;
  private backoffMs = 0;

  constructor(private readonly now: () => number = () => performance.now()) {}

  /** The way to write `bytes` now. */
  next(bytes: number): WriteWay {
    if (bytes > INLINE_MAX_BYTES) return 'pool';
    return this.now() < this.poolUntil ? 'pool' : 'inline';
  }

  /** An inline write took `ms`. */
  observeInline(ms: number): void {
    if (ms <= SLOW_INLINE_MS) {
      this.backoffMs = 0;
      return;
    }
    this.backoffMs = this.backoffMs === 0 ? BACKOFF_MIN_MS : Math.min(BACKOFF_MAX_MS, this.backoffMs * 2);
    this.poolUntil = this.now() + this.backoffMs;
  }

  /** For tests: the back-off now in force (0 when writes go inline). */
  get backoff(): number {
    return this.now() < this.poolUntil ? this.backoffMs : 0;
  }
}
