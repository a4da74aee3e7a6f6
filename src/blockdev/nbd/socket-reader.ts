/**
 * Exact-length reads from a socket, with bounded buffering.
 *
 * The NBD protocol is a stream of fixed-size headers followed by payloads whose length the header
 * announces, so the server always knows how many bytes it wants next. This reader keeps the socket's
 * chunks in a queue and hands out exactly the requested number of bytes:
 * - a request that fits inside the first queued chunk is served as a view of it (no copy);
 * - a large request (a WRITE payload) is assembled into one buffer that incoming chunks are copied
 *   into as they arrive (one copy, no intermediate concatenation);
 * - when more than `highWaterMark` bytes are queued and nobody is waiting for them, the socket is
 *   paused, so a client that pipelines faster than the server works cannot make it buffer without
 *   bound. Reading resumes when the queue is drained again.
 */
import type { Socket } from 'node:net';

/** The peer went away (or the socket was destroyed) before the requested bytes arrived. */
export class ConnectionClosedError extends Error {
  override name = 'ConnectionClosedError';
}

/**
 * What the handshake and the transmission read with: exact-length reads of a byte stream. Two
 * implementations: SocketReader (`'data'` events, any socket: TLS after STARTTLS) and
 * DirectSocketReader (plaintext TCP, bytes read by the kernel into their destination).
 */
export interface NbdReader {
  /** Bytes received but not yet handed out. */
  readonly bufferedBytes: number;
  /**
   * The next `n` bytes if they have already arrived, otherwise null (and nothing is consumed). Lets
   * the caller parse pipelined requests without a promise per header.
   */
  tryRead(n: number, into?: Buffer): Buffer | null;
  /**
   * The next `n` bytes; rejects with ConnectionClosedError if the stream ends first. `into` (at
   * least `n` bytes): where to place bytes that must be copied, instead of a new buffer. The answer
   * is the caller's to keep: the reader never writes into it again.
   */
  read(n: number, into?: Buffer): Promise<Buffer>;
  /**
   * Stops consuming the socket: drops queued bytes, fails a pending read, and from now on discards
   * whatever still arrives (used when the connection is being closed and nothing more is parsed).
   */
  detach(): void;
  /**
   * Hands the socket over to another reader of the same stream (a TLS layer after STARTTLS): stops
   * listening without consuming or discarding anything. Only valid with nothing queued and no read
   * pending; bytes queued here would be bytes the new reader never sees.
   */
  release(): void;
}

interface PendingRead {
  need: number;
  /** Destination buffer for large reads, filled incrementally; null for small reads. */
  target: Buffer | null;
  filled: number;
  resolve: (buf: Buffer) => void;
  reject: (err: Error) => void;
}

function discard(): void {}

/** Reads of at least this many bytes are assembled incrementally into a dedicated buffer. */
const ASSEMBLE_THRESHOLD = 64 * 1024;

export class SocketReader implements NbdReader {
  private readonly chunks: Buffer[] = [];
  /** Read position inside chunks[0]. */
  private headPos = 0;
  private buffered = 0;
  private pending: PendingRead | null = null;
  private closed: Error | null = null;
  private pausedByUs = false;

  constructor(
    private readonly socket: Socket,
    private readonly highWaterMark = 1024 * 1024,
  ) {
    socket.on('data', this.onData);
    socket.on('end', this.onEnd);
    socket.on('close', this.onEnd);
  }

  /** Bytes received but not yet handed out. */
  get bufferedBytes(): number {
    return this.buffered;
  }

  /**
   * Returns the next `n` bytes if they have already arrived, otherwise null (and nothing is
   * consumed). Lets the caller parse pipelined requests without a promise per header.
   */
  tryRead(n: number, into?: Buffer): Buffer | null {
    if (this.pending || this.buffered < n) return null;
    return this.take(n, into);
  }

  /**
   * The next `n` bytes; rejects with ConnectionClosedError if the stream ends first. `into` (at
   * least `n` bytes): where to assemble bytes that must be copied (a payload spread over socket
   * chunks), instead of a new buffer; the answer is then a view of it, or of a socket chunk when
   * one holds all `n` bytes.
   */
  read(n: number, into?: Buffer): Promise<Buffer> {
    if (this.pending) return Promise.reject(new Error('SocketReader: concurrent read'));
    if (this.buffered >= n) return Promise.resolve(this.take(n, into));
    if (this.closed) return Promise.reject(this.closed);
    return new Promise<Buffer>((resolve, reject) => {
      const pending: PendingRead = { need: n, target: null, filled: 0, resolve, reject };
      if (n >= ASSEMBLE_THRESHOLD) {
        pending.target = into ? into.subarray(0, n) : Buffer.allocUnsafe(n);
        // Move what is already queued into the destination.
        while (this.chunks.length > 0) {
          const chunk = this.chunks[0];
          const copied = chunk.copy(pending.target, pending.filled, this.headPos);
          pending.filled += copied;
          this.buffered -= copied;
          this.chunks.shift();
          this.headPos = 0;
        }
      }
      this.pending = pending;
      this.resumeIfNeeded();
    });
  }

  private readonly onData = (chunk: Buffer): void => {
    const p = this.pending;
    if (p?.target) {
      const want = p.need - p.filled;
      if (chunk.length <= want) {
        chunk.copy(p.target, p.filled);
        p.filled += chunk.length;
      } else {
        chunk.copy(p.target, p.filled, 0, want);
        p.filled += want;
        this.push(chunk.subarray(want));
      }
      if (p.filled === p.need) {
        this.pending = null;
        p.resolve(p.target);
      }
    } else {
      this.push(chunk);
      if (p && this.buffered >= p.need) {
        this.pending = null;
        p.resolve(this.take(p.need));
      }
    }
    if (!this.pending && this.buffered >= this.highWaterMark && !this.pausedByUs) {
      this.pausedByUs = true;
      this.socket.pause();
    }
  };

  private readonly onEnd = (): void => {
    if (this.closed) return;
    this.closed = new ConnectionClosedError('connection closed by peer');
    const p = this.pending;
    if (p) {
      this.pending = null;
      p.reject(this.closed);
    }
  };

  /**
   * Stops consuming the socket: drops queued bytes, fails a pending read, and from now on discards
   * whatever still arrives (used when the connection is being closed and nothing more is parsed).
   */
  detach(): void {
    this.socket.off('data', this.onData);
    this.socket.off('end', this.onEnd);
    this.socket.off('close', this.onEnd);
    this.chunks.length = 0;
    this.buffered = 0;
    this.headPos = 0;
    this.onEnd();
    this.socket.on('data', discard);
    if (!this.socket.destroyed) this.socket.resume();
  }

  /**
   * Hands the socket over to another reader of the same stream (a TLS layer after STARTTLS): stops
   * listening without consuming or discarding anything. Only valid with nothing queued and no read
   * pending; bytes queued here would be bytes the new reader never sees.
   */
  release(): void {
    if (this.pending || this.buffered > 0) throw new Error('SocketReader: release with unread bytes');
    this.socket.off('data', this.onData);
    this.socket.off('end', this.onEnd);
    this.socket.off('close', this.onEnd);
    // (Never paused by us here: the socket is paused only while bytes are queued.)
    this.closed ??= new ConnectionClosedError('reader released');
  }

  private push(chunk: Buffer): void {
    if (chunk.length === 0) return;
    this.chunks.push(chunk);
    this.buffered += chunk.length;
  }

  /** Removes and returns `n` queued bytes (caller checked that they are there), copied into `into` if they must be copied. */
  private take(n: number, into?: Buffer): Buffer {
    let out: Buffer;
    const head = this.chunks[0];
    if (n === 0) {
      out = Buffer.alloc(0);
    } else if (head.length - this.headPos >= n) {
      out = head.subarray(this.headPos, this.headPos + n);
      this.headPos += n;
      if (this.headPos === head.length) {
        this.chunks.shift();
        this.headPos = 0;
      }
    } else {
      out = into ? into.subarray(0, n) : Buffer.allocUnsafe(n);
      let filled = 0;
      while (filled < n) {
        const chunk = this.chunks[0];
        const copied = chunk.copy(out, filled, this.headPos, Math.min(chunk.length, this.headPos + (n - filled)));
        filled += copied;
        this.headPos += copied;
        if (this.headPos === chunk.length) {
          this.chunks.shift();
          this.headPos = 0;
        }
      }
    }
    this.buffered -= n;
    this.resumeIfNeeded();
    return out;
  }

  private resumeIfNeeded(): void {
    if (this.pausedByUs && (this.pending !== null || this.buffered < this.highWaterMark / 2)) {
      this.pausedByUs = false;
      if (!this.socket.destroyed) this.socket.resume();
    }
  }
}
