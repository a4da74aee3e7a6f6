/**
 * The transmission phase: reads requests off the socket, runs them concurrently against the
 * export's BlockTarget and writes (possibly out-of-order) replies identified by the client's cookie.
 *
 * Concurrency: the reader loop admits a request through the connection's InFlightBudget, then
 * starts it without waiting for it to finish, so pipelined clients keep the backend busy. Replies are
 * written whole (header and data in one corked write) as each request completes.
 *
 * Lifetime: `serveTransmission` resolves only once every started backend operation has settled, so
 * the caller can release the export afterwards without racing an operation still using it.
 */
import type { Socket } from 'node:net';
import type { BlockTarget, Extent } from '../block-target.ts';
import {
  MAX_BLOCK_STATUS_DESCRIPTORS,
  MAX_PAYLOAD_SIZE,
  NBD_CMD_BLOCK_STATUS,
  NBD_CMD_CACHE,
  NBD_CMD_DISC,
  NBD_CMD_FLAG_DF,
  NBD_CMD_FLAG_FUA,
  NBD_CMD_FLAG_NO_HOLE,
  NBD_CMD_FLAG_REQ_ONE,
  NBD_CMD_FLUSH,
  NBD_CMD_READ,
  NBD_CMD_TRIM,
  NBD_CMD_WRITE,
  NBD_CMD_WRITE_ZEROES,
  NBD_EINVAL,
  NBD_EIO,
  NBD_ENOSPC,
  NBD_EOVERFLOW,
  NBD_EPERM,
  NBD_STATE_HOLE,
  NBD_STATE_ZERO,
  REQUEST_HEADER_SIZE,
} from './constants.ts';
import { ProtocolError, errnoForTargetError, errorMessage } from './errors.ts';
import type { NegotiatedExport } from './handshake.ts';
import { InFlightBudget } from './inflight-budget.ts';
import { PAYLOAD_POOL_MIN, PayloadBuffers } from './payload-buffers.ts';
import type { NbdLogFields, NbdLogFn } from './log.ts';
import { ConnectionClosedError, type NbdReader } from './socket-reader.ts';
import {
  decodeRequest,
  encodeBlockStatusChunk,
  encodeErrorChunk,
  encodeNoneChunk,
  encodeOffsetDataHeader,
  encodeSimpleReply,
  type NbdRequest,
} from './wire.ts';

export interface TransmissionLimits {
  /** Requests admitted but not yet answered, per connection. */
  maxInFlightRequests: number;
  /** Payload bytes (write data held, read data not yet written out) per connection. */
  maxInFlightBytes: number;
}

export interface TransmissionContext {
  socket: Socket;
  reader: NbdReader;
  session: NegotiatedExport;
  limits: TransmissionLimits;
  log: NbdLogFn;
  fields: NbdLogFields;
  /** Called once, as soon as no further request will be read (before in-flight work settles). */
  onEnding?: () => void;
}

/** How the transmission phase ended. */
export type TransmissionEnd = 'disconnect-command' | 'connection-closed';

/**
 * Serves requests until NBD_CMD_DISC or until the connection goes away. Throws ProtocolError for
 * a client that must be hard-disconnected; in every case resolves or rejects only after all started
 * backend operations have settled.
 */
export async function serveTransmission(ctx: TransmissionContext): Promise<TransmissionEnd> {
  return new TransmissionSession(ctx).run();
}

/** Reserved budget for block status replies (the descriptor list is built in memory). */
const BLOCK_STATUS_MAX_DESCRIPTORS = Math.min(MAX_BLOCK_STATUS_DESCRIPTORS, 64 * 1024);
const BLOCK_STATUS_COST = 4 + 8 * BLOCK_STATUS_MAX_DESCRIPTORS;

/** A reply ready to be written: buffers in order. */
type Reply = Buffer[];

class NbdRequestError extends Error {
  constructor(
    readonly errno: number,
    message: string,
  ) {
    super(message);
  }
}

class TransmissionSession {
  private readonly target: BlockTarget;
  private readonly readOnly: boolean;
  private readonly structured: boolean;
  private readonly budget: InFlightBudget;
  private runningOps = 0;
  private allSettled: (() => void) | null = null;
  private readonly onSocketClose: () => void;
  private corked = false;
  private readonly payloads = new PayloadBuffers();

  constructor(private readonly ctx: TransmissionContext) {
    this.target = ctx.session.opened.target;
    this.readOnly = ctx.session.opened.readOnly;
    this.structured = ctx.session.structuredReplies;
    this.budget = new InFlightBudget(ctx.limits.maxInFlightRequests, ctx.limits.maxInFlightBytes);
    this.onSocketClose = () => this.budget.abort(new ConnectionClosedError('connection closed'));
  }

  async run(): Promise<TransmissionEnd> {
    const { socket, reader } = this.ctx;
    socket.once('close', this.onSocketClose);
    try {
      for (;;) {
        const header = reader.tryRead(REQUEST_HEADER_SIZE) ?? (await reader.read(REQUEST_HEADER_SIZE));
        const req = decodeRequest(header, 0);
        if (!req) throw new ProtocolError(`bad request magic 0x${header.readUInt32BE(0).toString(16)}`);
        if (req.type === NBD_CMD_DISC) return 'disconnect-command';

        let cost = 0;
        if (req.type === NBD_CMD_WRITE) {
          if (req.length > MAX_PAYLOAD_SIZE) {
            // We cannot skip a payload this large safely: hard disconnect.
            throw new ProtocolError(`write payload of ${req.length} bytes exceeds ${MAX_PAYLOAD_SIZE}`);
          }
          cost = req.length;
        } else if (req.type === NBD_CMD_READ) {
          cost = req.length <= MAX_PAYLOAD_SIZE ? req.length : 0;
        } else if (req.type === NBD_CMD_BLOCK_STATUS) {
          cost = BLOCK_STATUS_COST;
        }
        const wait = this.budget.acquire(cost);
        if (wait) await wait;

        let payload: Buffer | null = null;
        let lent: Buffer | null = null;
        if (req.type === NBD_CMD_WRITE) {
          lent = req.length >= PAYLOAD_POOL_MIN ? this.payloads.take(req.length) : null;
          try {
            payload = reader.tryRead(req.length, lent ?? undefined) ?? (await reader.read(req.length, lent ?? undefined));
          } catch (e) {
            if (lent) this.payloads.give(lent);
            throw e;
          }
        }
        this.start(req, payload, lent, cost);
      }
    } catch (err) {
      if (err instanceof ConnectionClosedError) return 'connection-closed';
      throw err;
    } finally {
      socket.off('close', this.onSocketClose);
      this.ctx.onEnding?.();
      await this.settled();
    }
  }

  /** Runs one request in the background; its reply is written when it completes. */
  private start(req: NbdRequest, payload: Buffer | null, lent: Buffer | null, cost: number): void {
    this.runningOps++;
    this.runOne(req, payload, lent, cost).catch((err: unknown) => {
      // Only reachable through a bug in reply encoding; never let it become an unhandled rejection.
      this.ctx.log('error', 'nbd reply failed', { ...this.ctx.fields, error: errorMessage(err) });
      this.ctx.socket.destroy();
    });
  }

  private async runOne(req: NbdRequest, payload: Buffer | null, lent: Buffer | null, cost: number): Promise<void> {
    // A READ's data is read into a reused buffer, given back once the socket has taken the reply.
    let readInto = req.type === NBD_CMD_READ && req.length >= PAYLOAD_POOL_MIN && req.length <= MAX_PAYLOAD_SIZE ? this.payloads.take(req.length) : null;
    let reply: Reply;
    try {
      reply = await this.execute(req, payload, readInto);
    } catch (err) {
      reply = this.errorReply(req, err);
      // Nothing of it is sent, and the target writes nothing into it once its read settled.
      if (readInto) this.payloads.give(readInto);
      readInto = null;
    } finally {
      // The target has the bytes (BlockTarget.write keeps nothing of them once it settles).
      if (lent) this.payloads.give(lent);
      this.runningOps--;
      if (this.runningOps === 0 && this.allSettled) {
        this.allSettled();
        this.allSettled = null;
      }
    }
    this.send(reply, cost, readInto);
  }

  private settled(): Promise<void> {
    if (this.runningOps === 0) return Promise.resolve();
    return new Promise((resolve) => {
      this.allSettled = resolve;
    });
  }

  /** `readInto`: a READ's buffer (null: a fresh one). */
  private async execute(req: NbdRequest, payload: Buffer | null, readInto: Buffer | null): Promise<Reply> {
    const { target } = this;
    const fua = (req.flags & NBD_CMD_FLAG_FUA) !== 0;
    switch (req.type) {
      case NBD_CMD_READ: {
        this.checkFlags(req, this.structured ? NBD_CMD_FLAG_DF : 0);
        this.checkRange(req, NBD_EINVAL);
        if (req.length > MAX_PAYLOAD_SIZE) {
          throw new NbdRequestError(this.structured ? NBD_EOVERFLOW : NBD_EINVAL, 'read length exceeds maximum payload');
        }
        if (req.length === 0) return this.structured ? [encodeNoneChunk(req)] : [encodeSimpleReply(0, req)];
        const data = await target.read(req.offset, req.length, readInto ?? undefined);
        if (!Buffer.isBuffer(data) || data.length !== req.length) {
          throw new NbdRequestError(NBD_EIO, 'backend returned a short read');
        }
        if (this.structured) return [encodeOffsetDataHeader(req, req.offset, data.length, true), data];
        return [encodeSimpleReply(0, req), data];
      }
      case NBD_CMD_WRITE: {
        this.checkFlags(req, 0);
        this.checkWritable();
        this.checkRange(req, NBD_ENOSPC);
        if (req.length > 0) await target.write(req.offset, payload!, fua);
        return this.ok(req);
      }
      case NBD_CMD_FLUSH:
        this.checkFlags(req, 0);
        await target.flush();
        return this.ok(req);
      case NBD_CMD_TRIM:
        this.checkFlags(req, 0);
        this.checkWritable();
        this.checkRange(req, NBD_EINVAL);
        if (req.length > 0) await target.trim(req.offset, req.length, fua);
        return this.ok(req);
      case NBD_CMD_WRITE_ZEROES:
        // NO_HOLE only forbids punching holes; BlockTarget.writeZeroes leaves the range reading as
        // zeros, which is all the command promises the client.
        this.checkFlags(req, NBD_CMD_FLAG_NO_HOLE);
        this.checkWritable();
        this.checkRange(req, NBD_ENOSPC);
        if (req.length > 0) await target.writeZeroes(req.offset, req.length, fua);
        return this.ok(req);
      case NBD_CMD_CACHE:
        // Accepted as a hint; the targets have no cache to warm.
        this.checkFlags(req, 0);
        this.checkRange(req, NBD_EINVAL);
        return this.ok(req);
      case NBD_CMD_BLOCK_STATUS:
        return this.blockStatus(req);
      default:
        throw new NbdRequestError(NBD_EINVAL, `unknown command ${req.type}`);
    }
  }

  private async blockStatus(req: NbdRequest): Promise<Reply> {
    this.checkFlags(req, NBD_CMD_FLAG_REQ_ONE);
    const contextId = this.ctx.session.baseAllocationContextId;
    if (contextId === null) throw new NbdRequestError(NBD_EINVAL, 'no metadata context was negotiated');
    this.checkRange(req, NBD_EINVAL);
    if (req.length === 0) throw new NbdRequestError(NBD_EINVAL, 'zero-length block status request');
    const extents = await this.target.extents(req.offset, req.length);
    const reqOne = (req.flags & NBD_CMD_FLAG_REQ_ONE) !== 0;
    const descriptors = toDescriptors(extents, req.length, reqOne ? 1 : BLOCK_STATUS_MAX_DESCRIPTORS);
    if (descriptors.length === 0) {
      // The backend described nothing: "status unknown" (flags 0) is always a truthful answer.
      descriptors.push({ length: req.length, flags: 0 });
    }
    return [encodeBlockStatusChunk(req, contextId, descriptors)];
  }

  private ok(req: NbdRequest): Reply {
    // A simple reply is allowed for payload-less successes even with structured replies.
    return [encodeSimpleReply(0, req)];
  }

  private errorReply(req: NbdRequest, err: unknown): Reply {
    let errno: number;
    let message: string;
    if (err instanceof NbdRequestError) {
      errno = err.errno;
      message = err.message;
    } else {
      const mapped = errnoForTargetError(err);
      errno = mapped.errno;
      message = errorMessage(err);
      this.ctx.log(mapped.expected ? 'warn' : 'error', 'nbd backend operation failed', {
        ...this.ctx.fields,
        command: req.type,
        offset: req.offset,
        length: req.length,
        error: message,
      });
    }
    if (this.structured) return [encodeErrorChunk(req, errno, message)];
    return [encodeSimpleReply(errno, req)];
  }

  private checkFlags(req: NbdRequest, allowed: number): void {
    if ((req.flags & ~(allowed | NBD_CMD_FLAG_FUA)) !== 0) {
      throw new NbdRequestError(NBD_EINVAL, `unsupported command flags 0x${req.flags.toString(16)}`);
    }
  }

  private checkWritable(): void {
    if (this.readOnly) throw new NbdRequestError(NBD_EPERM, 'export is read-only');
  }

  private checkRange(req: NbdRequest, errno: number): void {
    const size = this.target.size;
    if (req.offset > size || req.length > size - req.offset) {
      throw new NbdRequestError(errno, `request [${req.offset}, +${req.length}) is beyond the export size ${size}`);
    }
  }

  /**
   * Writes a whole reply and returns its budget, and `readBuffer` (the reply's data is a view of
   * it) to the pool, once the data has been handed to the kernel: not before, since until then the
   * socket's queue holds the buffer itself, not a copy. Replies completing in the same event-loop
   * turn are coalesced: the socket stays corked until setImmediate, so a burst of completions
   * leaves in one writev instead of one syscall (and one client wake-up) each.
   */
  private send(reply: Reply, cost: number, readBuffer: Buffer | null): void {
    const { socket } = this.ctx;
    if (socket.destroyed || socket.writableEnded) {
      this.budget.release(cost);
      if (readBuffer) this.payloads.give(readBuffer);
      return;
    }
    if (!this.corked) {
      this.corked = true;
      socket.cork();
      setImmediate(this.uncork);
    }
    const last = reply.length - 1;
    for (let i = 0; i < last; i++) socket.write(reply[i]);
    socket.write(reply[last], () => {
      this.budget.release(cost);
      if (readBuffer) this.payloads.give(readBuffer);
    });
  }

  private readonly uncork = (): void => {
    this.corked = false;
    this.ctx.socket.uncork();
  };
}

/**
 * Turns backend extents into block status descriptors: merged by flags, clipped to the requested
 * length, zero-length runs dropped, at most `max` descriptors (the client asks again for the rest).
 */
export function toDescriptors(
  extents: readonly Extent[],
  requestLength: number,
  max: number,
): Array<{ length: number; flags: number }> {
  const out: Array<{ length: number; flags: number }> = [];
  let covered = 0;
  for (const e of extents) {
    if (covered >= requestLength) break;
    if (!(e.length > 0)) continue;
    const length = Math.min(e.length, requestLength - covered);
    const flags = (e.hole ? NBD_STATE_HOLE | NBD_STATE_ZERO : 0) | (e.zero ? NBD_STATE_ZERO : 0);
    const last = out[out.length - 1];
    if (last && last.flags === flags) {
      last.length += length;
    } else {
      if (out.length === max) break;
      out.push({ length, flags });
    }
    covered += length;
  }
  return out;
}
