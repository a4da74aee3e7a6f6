/**
 * Batched presence checks on worker threads: "which of these files exist" (and "mark these used")
 * for thousands of paths at once, as a copy's "which do you lack" and its commit ask of the chunk
 * store.
 *
 * Why not one async `stat` per path: each is a trip through libuv's thread pool, and on a 2-core
 * machine the event loop pays ~10-30 us per trip (waking a pool thread preempts it), more again
 * while the pool is busy with a copy's chunk writes, which the stats queue behind. Measured here:
 * 1024 `utimes` answering one "missing" question took 75-157 ms during an incremental copy; 4096
 * `statSync` calls on one thread take 13-20 ms. So a batch goes to a worker that calls the
 * synchronous forms one after another, and the answer comes back as three transferred typed arrays.
 *
 * Each entry is a list of alternatives (a chunk kept plain or packed); the answer for an entry is
 * the index of the first alternative that is there, -1 when none is. A "stat" counts regular files
 * only; a "touch" sets atime and mtime of the first path that exists.
 *
 * Large batches are split over the workers in contiguous slices, so a cold metadata cache (each
 * stat a disk read) is read by two threads at once (not measured on a cold store: the thread pool
 * had 32 stats in flight). Batches below `inlineBelow` entries go to the thread pool as before: a
 * worker round trip (~70-110 us here, as measured for the hash pool) costs more than a few stats.
 *
 * Workers are unref'd while idle (an idle probe keeps nothing alive) and replaced if one exits.
 */
import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import { setTimesPath, statPath } from './raw-fd.ts';

export interface ProbeAnswer {
  /** Per entry: the index of the first alternative there, -1 when none is. */
  index: Int32Array;
  /** Per entry found by a stat: its size and mtime (0 otherwise, and for touches). */
  size: Float64Array;
  mtimeMs: Float64Array;
}

type Op = 'stat' | 'touch';

interface Pending {
  resolve: (a: ProbeAnswer) => void;
  reject: (e: Error) => void;
  worker: ProbeWorker;
}

interface ProbeWorker {
  worker: Worker;
  busy: number;
  exited: boolean;
}

const WORKER_URL = new URL('./path-probe-worker.mjs', import.meta.url);

export class PathProbeError extends Error {
  override name = 'PathProbeError';
  constructor(message: string, readonly code: string | undefined) {
    super(message);
  }
}

export class PathProbe {
  readonly size: number;
  readonly inlineBelow: number;
  private workers: ProbeWorker[] = [];
  private readonly pending = new Map<number, Pending>();
  private nextTask = 1;
  private closed = false;

  constructor(options: { size?: number; inlineBelow?: number } = {}) {
    this.size = Math.max(1, Math.floor(options.size ?? Math.min(2, availableParallelism())));
    this.inlineBelow = Math.max(0, options.inlineBelow ?? 32);
  }

  /** For each entry, the first alternative that is a regular file, with its size and mtime. */
  statFirst(entries: readonly (readonly string[])[]): Promise<ProbeAnswer> {
    return this.probe('stat', entries, 0);
  }

  /** For each entry, sets atime and mtime of the first alternative that exists to `seconds`; answers which. */
  async touchFirst(entries: readonly (readonly string[])[], seconds: number): Promise<Int32Array> {
    return (await this.probe('touch', entries, seconds)).index;
  }

  /** Starts the workers now rather than at the first large batch (a copy's first question would wait ~25-190 ms for them). */
  warm(): void {
    if (!this.closed && this.workers.length === 0) for (let i = 0; i < this.size; i++) this.workers.push(this.spawn());
  }

  /** Stops the workers; probes still running reject. Later probes run on the thread pool. */
  async close(): Promise<void> {
    this.closed = true;
    const workers = this.workers.splice(0);
    await Promise.all(workers.map((w) => (w.exited ? undefined : w.worker.terminate())));
  }

  private async probe(op: Op, entries: readonly (readonly string[])[], seconds: number): Promise<ProbeAnswer> {
    if (entries.length < this.inlineBelow || this.closed) return inline(op, entries, seconds);
    this.warm();
    const slices = Math.min(this.workers.length, Math.ceil(entries.length / this.inlineBelow) || 1);
    const per = Math.ceil(entries.length / slices);
    const parts = await Promise.all(
      Array.from({ length: slices }, (_, s) => this.post(this.workers[s]!, op, entries.slice(s * per, (s + 1) * per), seconds)),
    );
    if (parts.length === 1) return parts[0]!;
    const answer: ProbeAnswer = { index: new Int32Array(entries.length), size: new Float64Array(entries.length), mtimeMs: new Float64Array(entries.length) };
    parts.forEach((p, s) => {
      answer.index.set(p.index, s * per);
      answer.size.set(p.size, s * per);
      answer.mtimeMs.set(p.mtimeMs, s * per);
    });
    return answer;
  }

  private post(w: ProbeWorker, op: Op, entries: readonly (readonly string[])[], seconds: number): Promise<ProbeAnswer> {
    const task = this.nextTask++;
    const counts = entries.map((e) => e.length);
    const paths = entries.flat();
    return new Promise((resolve, reject) => {
      this.pending.set(task, { resolve, reject, worker: w });
      if (w.busy++ === 0) w.worker.ref();
      w.worker.postMessage({ task, op, paths, counts, seconds });
    });
  }

  private spawn(): ProbeWorker {
    const w: ProbeWorker = { worker: new Worker(WORKER_URL), busy: 0, exited: false };
    w.worker.on('message', (msg: { task: number; error?: { message: string; code?: string } } & Partial<ProbeAnswer>) => {
      const p = this.pending.get(msg.task);
      if (!p) return;
      this.pending.delete(msg.task);
      if (--w.busy === 0) w.worker.unref();
      if (msg.error) p.reject(new PathProbeError(msg.error.message, msg.error.code));
      else p.resolve({ index: msg.index!, size: msg.size!, mtimeMs: msg.mtimeMs! });
    });
    w.worker.on('error', () => undefined); // followed by 'exit', which does the cleanup
    w.worker.on('exit', (code) => this.gone(w, code));
    w.worker.unref();
    return w;
  }

  /** A worker that exited: its probes reject, and a fresh worker takes its place for later ones. */
  private gone(w: ProbeWorker, code: number): void {
    if (w.exited) return;
    w.exited = true;
    for (const [task, p] of this.pending) {
      if (p.worker !== w) continue;
      this.pending.delete(task);
      p.reject(new PathProbeError(`path probe worker exited (code ${code})`, undefined));
    }
    const i = this.workers.indexOf(w);
    if (i >= 0 && !this.closed) this.workers[i] = this.spawn();
  }
}

/** The same answer from the thread pool, one entry after another: for small batches. */
async function inline(op: Op, entries: readonly (readonly string[])[], seconds: number): Promise<ProbeAnswer> {
  const answer: ProbeAnswer = { index: new Int32Array(entries.length).fill(-1), size: new Float64Array(entries.length), mtimeMs: new Float64Array(entries.length) };
  await Promise.all(
    entries.map(async (alternatives, i) => {
      for (const [k, path] of alternatives.entries()) {
        if (op === 'touch') {
          if (await setTimesPath(path, seconds)) {
            answer.index[i] = k;
            return;
          }
          continue;
        }
        const st = await statPath(path);
        if (st?.isFile()) {
          answer.index[i] = k;
          answer.size[i] = st.size;
          answer.mtimeMs[i] = st.mtimeMs;
          return;
        }
      }
    }),
  );
  return answer;
}
