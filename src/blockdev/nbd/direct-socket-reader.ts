/**
 * Exact-length reads from a plaintext TCP socket whose bytes the kernel writes straight into the
 * buffers they end up in (Node's `onread` with a buffer generator), instead of into 64 KiB pieces
 * that are then copied.
 *
 * Why: an NBD WRITE's payload is the bulk of what a client sends, and with `'data'` events every
 * 64 KiB of it costs one JavaScript callback, one fresh allocation and one copy into the payload
 * buffer. Here a payload that a read is waiting for is read by the kernel into that payload buffer
 * (up to its full remaining length per syscall), so the one copy left is the kernel's. A protocol-
 * free measurement on this machine class (1 GiB from a loopback socket into 256 KiB buffers, each
 * written to a file): 0.77-0.81 CPU s against 1.27-1.44 s with `'data'` events.
 *
 * How the bytes land, the one rule that makes it safe (NBD-2 in docs/design.md):
 * - Whatever does not go into a waiting payload lands in `staging`, a small buffer of this reader.
 *   Staged reads are kept short (STAGED_READ, or what a waiting small read still lacks): the read
 *   after a request header is the start of its payload, chosen before the caller has parsed that
 *   header, and all that a short staged read costs there is a copy of a few KiB.
 * - After every read, Node asks for the buffer of the next one (`offer`) and keeps it until that
 *   read happens, which may be much later (while paused). So the region last offered is never
 *   moved, reused or handed out before a read has filled it: staged bytes are compacted only
 *   inside `offer` itself, when the previous offer has just been consumed.
 * - Answers are never views of `staging`: a caller gets a view of its own `into`, of a buffer
 *   allocated for it, or a copy. (SocketReader's answers may be views of socket chunks, which are
 *   never reused; here staging is.)
 * - With nothing waiting and STAGED_HIGH_WATER bytes staged, reading stops (the kernel's socket
 *   buffer holds the rest, and the client's sends block): a client that pipelines faster than the
 *   server works cannot make it buffer without bound.
 *
 * Node 20 offers `onread` only to sockets it creates itself, not to those a server accepts;
 * `adoptForDirectReads` moves an accepted socket's TCP handle into a socket created with it (the
 * `handle` option, what child_process uses to pass sockets). Anything not as expected there, and
 * that connection keeps the plain SocketReader: correct, only slower.
 */
import net from 'node:net';
import { ConnectionClosedError, type NbdReader } from './socket-reader.ts';

/** At most this much is read into staging per read unless a waiting read needs more. */
const STAGED_READ = 4 * 1024;
/** With nothing waiting, reading stops once this much is staged. */
const STAGED_HIGH_WATER = 64 * 1024;
/** Reads of at least this many bytes get a buffer of their own that the kernel reads into. */
const DIRECT_THRESHOLD = 64 * 1024;
/** Staging must hold the largest read served from it (< DIRECT_THRESHOLD) plus one staged read. */
const STAGING_BYTES = DIRECT_THRESHOLD + STAGED_HIGH_WATER + STAGED_READ;

interface PendingRead {
  need: number;
  /** The buffer the kernel reads into, for reads of DIRECT_THRESHOLD bytes or more; else null. */
  target: Buffer | null;
  filled: number;
  into: Buffer | undefined;
  resolve: (buf: Buffer) => void;
  reject: (err: Error) => void;
}

export class DirectSocketReader implements NbdReader {
  private readonly staging = Buffer.allocUnsafeSlow(STAGING_BYTES);
  /** Unconsumed staged bytes are staging[start, end). */
  private start = 0;
  private end = 0;
  /** The buffer Node will read into next (null until the socket asked for one). */
  private offered: Buffer | null = null;
  private pending: PendingRead | null = null;
  private closed: Error | null = null;
  private stoppedByUs = false;
  /** Nothing more is parsed: whatever arrives is dropped. */
  private detached = false;
  /** Whether `offered` is the waiting read's target (else it is staging space). */
  private offeredTarget = false;
  private socket: net.Socket | null = null;

  /** Connects the reader to the socket created with its `onread` (see adoptForDirectReads). */
  attach(socket: net.Socket): void {
    this.socket = socket;
    socket.on('end', this.onEnd);
    socket.on('close', this.onEnd);
  }

  /** The `onread` option for the socket this reader reads from. */
  readonly onread = {
    buffer: (): Buffer => this.offer(),
    callback: (nread: number, buf: Uint8Array): boolean => this.landed(nread, buf),
  };

  get bufferedBytes(): number {
    return this.end - this.start;
  }

  tryRead(n: number, into?: Buffer): Buffer | null {
    if (this.pending || this.bufferedBytes < n) return null;
    return this.take(n, into);
  }

  read(n: number, into?: Buffer): Promise<Buffer> {
    if (this.pending) return Promise.reject(new Error('DirectSocketReader: concurrent read'));
    if (this.bufferedBytes >= n) return Promise.resolve(this.take(n, into));
    if (this.closed) return Promise.reject(this.closed);
    return new Promise<Buffer>((resolve, reject) => {
      const pending: PendingRead = { need: n, target: null, filled: 0, into, resolve, reject };
      if (n >= DIRECT_THRESHOLD) {
        pending.target = into ? into.subarray(0, n) : Buffer.allocUnsafe(n);
        // What is already staged goes first; the kernel reads the rest into the target once the
        // region already offered (staging space) has been used.
        pending.filled = this.staging.copy(pending.target, 0, this.start, this.end);
        this.start = this.end;
      }
      this.pending = pending;
      this.resumeIfStopped();
    });
  }

  detach(): void {
    this.stopListening();
    this.detached = true;
    this.start = this.end;
    this.onEnd();
    const socket = this.socket;
    if (socket && !socket.destroyed) {
      // Whatever still arrives is read into staging and dropped (so the peer's FIN is seen).
      this.stoppedByUs = false;
      socket.resume();
    }
  }

  release(): void {
    if (this.pending || this.bufferedBytes > 0) throw new Error('DirectSocketReader: release with unread bytes');
    this.stopListening();
    // (Never stopped by us here: reading stops only while bytes are staged.)
    this.closed ??= new ConnectionClosedError('reader released');
  }

  private stopListening(): void {
    this.socket?.off('end', this.onEnd);
    this.socket?.off('close', this.onEnd);
  }

  /** The buffer for the socket's next read. */
  private offer(): Buffer {
    const p = this.pending;
    let next: Buffer;
    this.offeredTarget = false;
    if (this.detached) {
      this.start = this.end = 0;
      next = this.staging;
    } else if (p?.target && this.start === this.end) {
      next = p.target.subarray(p.filled);
      this.offeredTarget = true;
    } else {
      if (this.start === this.end) {
        this.start = this.end = 0;
      }
      const lacking = p && !p.target ? p.need - this.bufferedBytes : 0;
      const want = Math.max(STAGED_READ, lacking);
      if (this.end + want > STAGING_BYTES) {
        // Compaction, only here: the region offered before has just been filled (or was never used).
        this.staging.copyWithin(0, this.start, this.end);
        this.end -= this.start;
        this.start = 0;
      }
      next = this.staging.subarray(this.end, Math.min(STAGING_BYTES, this.end + want));
    }
    this.offered = next;
    return next;
  }

  /** `nread` bytes landed in `buf` (the buffer last offered). Returns false to stop reading. */
  private landed(nread: number, buf: Uint8Array): boolean {
    if (buf !== this.offered) {
      // Cannot happen with the Node this was written for; never guess where bytes went.
      this.offered = null;
      this.socket?.destroy(new Error('DirectSocketReader: bytes landed outside the offered buffer'));
      return false;
    }
    this.offered = null;
    if (this.detached) return true; // dropped
    const p = this.pending;
    if (this.offeredTarget) {
      // Offered only while `p` waited with this target; a read that failed since (connection
      // closed) leaves these bytes to nobody.
      if (!p?.target) return true;
      p.filled += nread;
    } else {
      this.end += nread;
      if (p?.target) {
        // Staging space offered before the target existed: its bytes belong to the target.
        const copied = this.staging.copy(p.target, p.filled, this.start, Math.min(this.end, this.start + (p.need - p.filled)));
        p.filled += copied;
        this.start += copied;
      }
    }
    if (p) {
      if (p.target && p.filled === p.need) {
        this.pending = null;
        p.resolve(p.target);
      } else if (!p.target && this.bufferedBytes >= p.need) {
        this.pending = null;
        p.resolve(this.take(p.need, p.into));
      }
    }
    if (!this.pending && this.bufferedBytes >= STAGED_HIGH_WATER) {
      this.stoppedByUs = true;
      return false;
    }
    return true;
  }

  private readonly onEnd = (): void => {
    if (this.closed) return;
    this.closed = new ConnectionClosedError('connection closed by peer');
    const p = this.pending;
    if (p) {
      this.pending = null;
      p.reject(this.closed);
    }
  };

  /** Removes `n` staged bytes (the caller checked they are there) into `into` or a new buffer. */
  private take(n: number, into?: Buffer): Buffer {
    const out = into && into.length >= n ? into.subarray(0, n) : Buffer.allocUnsafe(n);
    this.staging.copy(out, 0, this.start, this.start + n);
    this.start += n;
    this.resumeIfStopped();
    return out;
  }

  private resumeIfStopped(): void {
    if (this.stoppedByUs && (this.pending !== null || this.bufferedBytes < STAGED_HIGH_WATER / 2)) {
      this.stoppedByUs = false;
      const socket = this.socket;
      if (socket && !socket.destroyed) socket.resume();
    }
  }
}

/**
 * Moves an accepted (still paused: the server has `pauseOnConnect`) plaintext TCP socket into one
 * whose bytes a DirectSocketReader places; null when this Node does not look as expected (the
 * caller then keeps `accepted` with a SocketReader). On success `accepted` is destroyed without
 * closing the connection, which now belongs to the returned socket.
 */
export function adoptForDirectReads(
  accepted: net.Socket,
  options: { allowHalfOpen: boolean },
): { socket: net.Socket; reader: DirectSocketReader } | null {
  const holder = accepted as unknown as { _handle?: { readStart?: unknown; reading?: boolean } | null };
  const handle = holder._handle;
  if (!handle || typeof handle.readStart !== 'function' || handle.reading) return null;
  const reader = new DirectSocketReader();
  let socket: net.Socket;
  try {
    socket = new net.Socket({ handle, allowHalfOpen: options.allowHalfOpen, onread: reader.onread } as net.SocketConstructorOpts);
  } catch {
    return null;
  }
  holder._handle = null;
  accepted.destroy();
  reader.attach(socket);
  return { socket, reader };
}
