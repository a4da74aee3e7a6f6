/**
 * A thread of its own for a region's chunk uploads (upload-thread-worker.mjs): the event loop signs
 * each PUT and hands it over; the thread sends it on keep-alive connections and answers how it went.
 *
 * Why: the event loop was the copy's limit. In a copy between two regions of one process, one
 * thread served the source's reads and uploads and the destination's receipts, 99 % busy
 * (performance.eventLoopUtilization) at 210-270 MiB/s while the machine's other core was half idle;
 * the source's side of each upload (writing 1 MiB into a socket, the client's HTTP machinery, the
 * answer) was about a third of that thread's time. A copy to another machine is the same: the
 * source region's loop also serves its API, NBD clients and captures.
 *
 * Memory: a body in shared memory (the copy's read buffers: lib/aligned-memory.ts) is read by the
 * thread in place; any other body is copied into the message. Either way the promise `put` returns
 * settles only once the thread is done with the body, so the caller may then reuse its buffer.
 *
 * The thread starts at the first upload and is `unref`ed while nothing is in flight, so an idle
 * region neither pays for it nor is kept alive by it. A thread that dies fails its uploads in
 * flight as connection failures (the copy job retries those) and the next upload starts a new one.
 */
import { Worker } from 'node:worker_threads';
import { BceError } from '../lib/bce-client.ts';

const WORKER_URL = new URL('./upload-thread-worker.mjs', import.meta.url);

export interface UploadRequest {
  /** `http://host:port` of the destination. */
  origin: string;
  path: string;
  /** Every header, the signature included. */
  headers: Record<string, string>;
  /** The body, or its pieces in order (a chunk batch's parts). */
  body: Buffer | readonly Buffer[];
  /** Keep-alive connections to `origin` at most. */
  connections: number;
  /** An upload with no bytes moving either way for this long fails. */
  idleMs: number;
}

interface Waiting {
  origin: string;
  resolve(text: string): void;
  reject(e: Error): void;
  signal: AbortSignal | undefined;
}

interface Answer {
  type: 'done';
  task: number;
  status: number;
  text: string;
  requestId: string | null;
}

export class UploadThread {
  private worker: Worker | null = null;
  private readonly waiting = new Map<number, Waiting>();
  /** Uploads in flight by the signal that aborts them: one listener per signal, however many uploads (a copy has 16 in flight). */
  private readonly bySignal = new WeakMap<AbortSignal, Set<number>>();
  private nextTask = 1;
  private closed = false;

  /**
   * Resolves on a 2xx, with the answer's body (small: a JSON answer); rejects with a BceError
   * otherwise (status 0: no answer, e.g. refused, reset, aborted).
   */
  put(req: UploadRequest, signal?: AbortSignal): Promise<string> {
    if (this.closed) return Promise.reject(new BceError(0, 'ConnectionFailed', `${req.origin}: the upload thread is closed`, null));
    if (signal?.aborted) return Promise.reject(new BceError(0, 'ConnectionFailed', `${req.origin}: the upload was aborted`, null));
    const worker = this.ensureWorker();
    const task = this.nextTask++;
    const pieces = Buffer.isBuffer(req.body) ? [req.body] : req.body;
    return new Promise<string>((resolve, reject) => {
      if (signal) this.watch(signal, task);
      if (this.waiting.size === 0) worker.ref();
      this.waiting.set(task, { origin: req.origin, resolve, reject, signal });
      worker.postMessage({
        type: 'put', task, origin: req.origin, path: req.path, headers: req.headers, connections: req.connections, idleMs: req.idleMs,
        pieces: pieces.map((b) => (b.buffer instanceof SharedArrayBuffer ? { shared: b.buffer, offset: b.byteOffset, length: b.length } : { bytes: new Uint8Array(b.buffer, b.byteOffset, b.length) })),
      });
    });
  }

  /** Stops the thread; uploads in flight fail as connection failures. */
  async close(): Promise<void> {
    this.closed = true;
    const worker = this.worker;
    this.worker = null;
    // Failed only once the thread is gone: until then it may still read their bodies.
    if (worker) await worker.terminate();
    this.failAll(new Error('the upload thread is closed'));
  }

  private ensureWorker(): Worker {
    if (this.worker) return this.worker;
    const worker = new Worker(WORKER_URL);
    worker.unref();
    worker.on('message', (m: Answer) => this.onAnswer(m));
    const gone = (e: Error): void => {
      if (this.worker !== worker) return;
      this.worker = null;
      this.failAll(e);
    };
    worker.on('error', gone);
    worker.on('exit', (code) => gone(new Error(`the upload thread exited (code ${code})`)));
    this.worker = worker;
    return worker;
  }

  private onAnswer(m: Answer): void {
    const w = this.settle(m.task);
    if (!w) return;
    if (m.status >= 200 && m.status < 300) return w.resolve(m.text);
    if (m.status === 0) return w.reject(new BceError(0, 'ConnectionFailed', `${w.origin}: ${m.text}`, null));
    let parsed: { code?: string; message?: string; requestId?: string } = {};
    try {
      parsed = JSON.parse(m.text);
    } catch {
      /* not BCE's format: keep the raw text */
    }
    w.reject(new BceError(m.status, parsed.code ?? `HTTP${m.status}`, parsed.message ?? m.text.slice(0, 200), parsed.requestId ?? m.requestId ?? null));
  }

  private watch(signal: AbortSignal, task: number): void {
    let tasks = this.bySignal.get(signal);
    if (!tasks) {
      const mine = new Set<number>();
      tasks = mine;
      this.bySignal.set(signal, mine);
      signal.addEventListener('abort', () => {
        for (const t of mine) this.worker?.postMessage({ type: 'abort', task: t });
      }, { once: true });
    }
    tasks.add(task);
  }

  private settle(task: number): Waiting | undefined {
    const w = this.waiting.get(task);
    if (!w) return undefined;
    this.waiting.delete(task);
    if (w.signal) this.bySignal.get(w.signal)?.delete(task);
    if (this.waiting.size === 0) this.worker?.unref();
    return w;
  }

  private failAll(e: Error): void {
    for (const task of [...this.waiting.keys()]) {
      const w = this.settle(task);
      w?.reject(new BceError(0, 'ConnectionFailed', `${w.origin}: ${e.message}`, null));
    }
  }
}
