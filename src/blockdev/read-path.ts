/**
 * Which way to read bytes that are read once (a capture): through the page cache or past it.
 *
 * Past it (O_DIRECT) costs no copy into the page cache and leaves the cache to the guests, but
 * always goes to the device. Through it is a memory copy when the bytes are cached, which they
 * often are: a disk written a moment ago (an image just loaded, a guest's recent writes) is in the
 * cache, and reading it from the device then competes with the capture's own writes of the chunks.
 * Measured on the dev VM (4 GiB mixed image, 3 GiB of data, quiet, a few runs each): a first
 * snapshot with every read direct took 9.2-12.8 s warm and 9.5-11.0 s cold; with every read
 * buffered 6.8-8.2 s warm and 8.7-11.5 s cold (in one cold pair, 11.2 against 7.6 CPU s).
 *
 * Node cannot ask the kernel what is cached (no mincore, no preadv2 RWF_NOWAIT), so the chooser
 * asks the clock, and compares like with like: it times reads both ways under the same load and
 * keeps to the way whose recent reads were faster per byte (the median of the last SAMPLES of
 * each: one read's time is noisy, since it includes waits for the thread pool and the event loop;
 * cached 4 MiB reads took 1.2-36 ms under a capture). One read in EXPLORE_EVERY goes the other way,
 * so a change (the rest of the disk is not cached, or is) is seen within a few dozen reads. Both
 * ways answer the same bytes (SegmentedImage.readDirect falls back to `read` itself), so a wrong
 * guess costs time only.
 */

/** Reads timed per way; the median of these decides. */
export const SAMPLES = 5;
/** One read in this many goes the way not chosen, to keep its timing current. */
export const EXPLORE_EVERY = 16;
/** Reads shorter than this say little about the cache (a syscall's fixed cost dominates): not timed. */
const TIMED_MIN_BYTES = 256 * 1024;

export type ReadWay = 'buffered' | 'direct';

export class ReadPathChooser {
  /** Recent milliseconds per MiB, per way (a ring of SAMPLES). */
  private readonly recent: Record<ReadWay, number[]> = { buffered: [], direct: [] };
  private readonly nextSlot: Record<ReadWay, number> = { buffered: 0, direct: 0 };
  private reads = 0;

  /** The way to read next. */
  next(): ReadWay {
    const chosen = this.faster();
    this.reads++;
    if (this.reads % EXPLORE_EVERY !== 0) return chosen;
    return chosen === 'buffered' ? 'direct' : 'buffered';
  }

  /** A read of `bytes` the way `way` took `ms`. */
  observe(way: ReadWay, bytes: number, ms: number): void {
    if (bytes < TIMED_MIN_BYTES) return;
    const ring = this.recent[way];
    ring[this.nextSlot[way]] = ms / (bytes / 1048576);
    this.nextSlot[way] = (this.nextSlot[way] + 1) % SAMPLES;
  }

  /** Buffered until both ways have been timed; then the way with the lower median. */
  private faster(): ReadWay {
    const b = median(this.recent.buffered);
    const d = median(this.recent.direct);
    if (b === null || d === null) return 'buffered';
    return d < b ? 'direct' : 'buffered';
  }
}

function median(xs: readonly number[]): number | null {
  if (xs.length === 0) return null;
  const sorted = [...xs].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)]!;
}
