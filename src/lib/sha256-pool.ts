/**
 * SHA-256 on worker threads, so hashing chunks (about 0.6 ms per MiB per core here) does not block
 * the event loop and uses every core.
 *
 * How data reaches a worker: each worker owns a few SharedArrayBuffer "slots"; `hash` copies the
 * caller's bytes into a free slot (a memcpy, ~20x faster than the hash itself) and posts only the
 * slot number. Measured on the 2-core dev machine this beat both structured cloning the Buffer and
 * transferring a copied ArrayBuffer (see docs/notes/chunk-size.md). The caller's buffer is only
 * read: it is never transferred, detached or written to. Inputs larger than a slot are streamed
 * through the slots in parts to one worker, which keeps the digest state between parts.
 *
 * Two slots per worker let the next input be copied and queued while the worker still hashes the
 * previous one, so workers do not idle for a message round trip between tasks.
 *
 * Zero-copy path: when `data` is backed by a SharedArrayBuffer (for example
 * `Buffer.from(new SharedArrayBuffer(n))`, which fs reads fill like any buffer), nothing is copied:
 * the worker hashes the caller's memory in place. The copy costs ~25% extra CPU per MiB hashed on
 * this machine (the source is usually not in cache), so callers that allocate their chunk buffers
 * anyway (disk reads) should allocate them shared.
 *
 * Inputs smaller than `inlineBelow` (default 64 KiB) are hashed synchronously on the calling thread:
 * a worker round trip costs ~70-110 us here, more than hashing 64 KiB (~50 us).
 *
 * Workers are `unref`ed while idle and `ref`ed only while they have work, so neither a pool that is
 * never closed nor an idle pool keeps the process alive, and a pending `hash()` still does.
 *
 * The caller must not modify `data` until the returned promise settles (the copy into a slot may
 * happen later, when a slot frees up).
 *
 * `hashAndPack` also answers a zstd frame (level 1) of the input when it compresses by at least
 * 10 %: compression at rest (docs/design.md, CS-4), done in the same worker task that hashes the
 * chunk anyway (the bytes are in that worker's memory already, often in place), so the event loop
 * never compresses a captured chunk. A 64 KiB sample is compressed first, so an incompressible input
 * costs a small compression only. The frame comes back in an ArrayBuffer of its own, transferred
 * (no copy on the way back). `hash` tasks never compress and their messages carry no `pack` field.
 */
import { createHash } from 'node:crypto';
import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import { PACK_LEVEL, PACK_MIN_AT_REST } from './zstd-pack.mjs';

export interface Sha256PoolOptions {
  /** Number of worker threads; default `os.availableParallelism()`, at least 1. */
  size?: number;
  /** Inputs shorter than this many bytes are hashed on the calling thread. Default 64 KiB. */
  inlineBelow?: number;
  /** Bytes per shared slot; larger inputs are sent in parts. Default 4 MiB. */
  slotSize?: number;
  /** Slots per worker (pipelining depth). Default 2. */
  slotsPerWorker?: number;
}

/** Lower-case hex SHA-256 of `data`, on the calling thread. */
export function sha256Hex(data: Uint8Array): string {
  return createHash('sha256').update(data).digest('hex');
}

export class Sha256PoolClosedError extends Error {
  override name = 'Sha256PoolClosedError';
  constructor() {
    super('Sha256Pool is closed');
  }
}

interface Task {
  id: number;
  data: Uint8Array;
  /** Bytes already copied into slots and posted. */
  sent: number;
  /** Also compress (hashAndPack); only tasks posted in one part are compressed. */
  pack: boolean;
  /** `packed` is the frame of a hashAndPack task, null otherwise. */
  resolve(hex: string, packed: Buffer | null): void;
  reject(err: Error): void;
}

interface DoneMessage {
  type: string;
  task: number;
  slot: number;
  hex?: string;
  packed?: ArrayBuffer | null;
}

interface PoolWorker {
  worker: Worker;
  slots: SharedArrayBuffer[];
  slotViews: Uint8Array[];
  freeSlots: number[];
  /** Tasks with at least one part posted to this worker and no digest back yet. */
  tasks: Map<number, Task>;
  /** A multi-part task whose remaining parts must go to this worker. */
  feeding: Task | null;
  exited: boolean;
}

const WORKER_URL = new URL('./sha256-pool-worker.mjs', import.meta.url);
/** The `pack` field of a hashAndPack message: the worker takes the rest of the rule from zstd-pack.mjs. */
const PACK_FIELD = { level: PACK_LEVEL };

export class Sha256Pool {
  readonly size: number;
  readonly inlineBelow: number;
  readonly slotSize: number;
  readonly slotsPerWorker: number;

  private workers: PoolWorker[] = [];
  private queue: Task[] = [];
  private nextTaskId = 1;
  private closed = false;
  private closing: Promise<void> | null = null;

  constructor(options: Sha256PoolOptions = {}) {
    this.size = Math.max(1, Math.floor(options.size ?? availableParallelism()));
    this.inlineBelow = Math.max(0, options.inlineBelow ?? 64 * 1024);
    this.slotSize = Math.max(4096, Math.floor(options.slotSize ?? 4 * 1024 * 1024));
    this.slotsPerWorker = Math.max(1, Math.floor(options.slotsPerWorker ?? 2));
  }

  /** Lower-case hex SHA-256 of `data`. Rejects with `Sha256PoolClosedError` after `close()`. */
  hash(data: Uint8Array): Promise<string> {
    if (this.closed) return Promise.reject(new Sha256PoolClosedError());
    if (data.byteLength < this.inlineBelow) {
      try {
        return Promise.resolve(sha256Hex(data));
      } catch (err) {
        return Promise.reject(err);
      }
    }
    // The promise's own resolve: it takes the hex and ignores the (always null) frame.
    return new Promise<string>((resolve, reject) => this.enqueue(data, false, resolve, reject));
  }

  /**
   * The SHA-256 of `data` and, when it compresses well, a zstd frame (level 1) of it: `packed` is
   * null where zstd-pack.mjs's rule says compression does not pay (inputs under PACK_MIN_AT_REST,
   * inputs whose sample or whole does not compress below PACK_WORTH), and for inputs the pool sends
   * in parts (larger than a slot and not in shared memory). Same threading and memory rules as
   * `hash`; an input that is considered for compression always goes to a worker, even below
   * `inlineBelow` (the event loop never compresses). A compression error is no frame (`packed` null), never a failed hash. Rejects with
   * `Sha256PoolClosedError` after `close()`.
   */
  hashAndPack(data: Uint8Array): Promise<{ hex: string; packed: Buffer | null }> {
    if (data.byteLength < PACK_MIN_AT_REST) return this.hash(data).then((hex) => ({ hex, packed: null }));
    if (this.closed) return Promise.reject(new Sha256PoolClosedError());
    return new Promise((resolve, reject) =>
      this.enqueue(data, true, (hex, packed) => resolve({ hex, packed }), reject),
    );
  }

  private enqueue(data: Uint8Array, pack: boolean, resolve: Task['resolve'], reject: Task['reject']): void {
    if (this.workers.length === 0) this.spawnAll();
    this.queue.push({ id: this.nextTaskId++, data, sent: 0, pack, resolve, reject });
    this.pump();
  }

  /**
   * Starts the workers now rather than at the first hash. Started by a capture's first hash on the
   * 2-core dev VM, they answered it 170-190 ms later (the capture stored its first chunk 190-230 ms
   * after the freeze, its read having landed after 10 ms; an idle machine starts a worker in about
   * 25 ms). A server warms its pool at start, so that its first snapshot or copy does not pay that.
   * Idle workers are unref'd: they keep nothing alive.
   */
  warm(): void {
    if (!this.closed && this.workers.length === 0) this.spawnAll();
  }

  /**
   * Stops the workers. Hashes still queued or running reject with `Sha256PoolClosedError`.
   * Idempotent; resolves when every worker has exited.
   */
  close(): Promise<void> {
    if (this.closing) return this.closing;
    this.closed = true;
    const err = new Sha256PoolClosedError();
    for (const t of this.queue.splice(0)) t.reject(err);
    const exits: Promise<unknown>[] = [];
    for (const w of this.workers) {
      for (const t of w.tasks.values()) t.reject(err);
      w.tasks.clear();
      w.feeding = null;
      if (!w.exited) exits.push(w.worker.terminate());
    }
    this.closing = Promise.all(exits).then(() => undefined);
    return this.closing;
  }

  private spawnAll(): void {
    for (let i = 0; i < this.size; i++) this.workers.push(this.spawn());
  }

  private spawn(): PoolWorker {
    const worker = new Worker(WORKER_URL);
    const slots: SharedArrayBuffer[] = [];
    for (let i = 0; i < this.slotsPerWorker; i++) slots.push(new SharedArrayBuffer(this.slotSize));
    const w: PoolWorker = {
      worker,
      slots,
      slotViews: slots.map((s) => new Uint8Array(s)),
      freeSlots: slots.map((_, i) => i),
      tasks: new Map(),
      feeding: null,
      exited: false,
    };
    worker.postMessage({ type: 'slots', slots });
    worker.on('message', (msg: DoneMessage) => this.onMessage(w, msg));
    // An 'error' event is followed by 'exit'; the exit handler does the cleanup.
    worker.on('error', (err) => this.onWorkerGone(w, err));
    worker.on('exit', (code) =>
      this.onWorkerGone(w, new Error(`sha256 worker exited unexpectedly (code ${code})`)),
    );
    // After the listeners: attaching a 'message' listener refs the worker's port again.
    worker.unref();
    return w;
  }

  private onMessage(w: PoolWorker, msg: DoneMessage): void {
    if (this.closed) return;
    w.freeSlots.push(msg.slot);
    if (msg.type === 'done') {
      const t = w.tasks.get(msg.task);
      w.tasks.delete(msg.task);
      if (w.tasks.size === 0) w.worker.unref();
      // Buffer.from(ArrayBuffer) is a view, not a copy: the frame owns exactly its transferred memory.
      if (t) t.resolve(msg.hex!, msg.packed ? Buffer.from(msg.packed) : null);
    }
    this.pump();
  }

  private onWorkerGone(w: PoolWorker, err: Error): void {
    if (w.exited) return;
    w.exited = true;
    if (this.closed) return;
    for (const t of w.tasks.values()) t.reject(err);
    w.tasks.clear();
    w.feeding = null;
    // Replace the worker so later hashes still have the full pool.
    const i = this.workers.indexOf(w);
    if (i >= 0) this.workers[i] = this.spawn();
    this.pump();
  }

  /** Hands queued work to free slots, spreading new tasks over the least busy workers first. */
  private pump(): void {
    for (;;) {
      let best: PoolWorker | null = null;
      for (const w of this.workers) {
        if (w.exited || w.freeSlots.length === 0) continue;
        if (w.feeding) {
          best = w;
          break;
        }
        if (this.queue.length > 0 && (best === null || w.freeSlots.length > best.freeSlots.length)) best = w;
      }
      if (best === null) return;
      const task = best.feeding ?? this.queue.shift()!;
      this.post(best, task);
    }
  }

  private post(w: PoolWorker, t: Task): void {
    const slot = w.freeSlots.pop()!;
    if (w.tasks.size === 0) w.worker.ref();
    w.tasks.set(t.id, t);
    if (t.sent === 0 && t.data.buffer instanceof SharedArrayBuffer) {
      // Zero copy: the worker reads the caller's shared memory directly (the slot is only taken
      // to bound how many tasks a worker has queued).
      t.sent = t.data.byteLength;
      const msg = {
        type: 'hash',
        task: t.id,
        slot,
        length: t.data.byteLength,
        final: true,
        shared: t.data.buffer,
        offset: t.data.byteOffset,
      };
      // Shared input is always sent whole, so it can always be compressed.
      w.worker.postMessage(t.pack ? { ...msg, pack: PACK_FIELD } : msg);
      return;
    }
    const length = Math.min(this.slotSize, t.data.byteLength - t.sent);
    w.slotViews[slot]!.set(t.data.subarray(t.sent, t.sent + length));
    t.sent += length;
    const final = t.sent === t.data.byteLength;
    w.feeding = final ? null : t;
    // Only a task sent whole is compressed: the worker sees the whole input in one slot then. A task
    // streamed in parts is hashed only (its frame would need the parts kept or a streaming context;
    // a 1 MiB chunk fits the default 4 MiB slot). hash() messages stay as they were, without `pack`.
    if (t.pack && final && t.sent === length) {
      w.worker.postMessage({ type: 'hash', task: t.id, slot, length, final, pack: PACK_FIELD });
    } else {
      w.worker.postMessage({ type: 'hash', task: t.id, slot, length, final });
    }
  }
}
