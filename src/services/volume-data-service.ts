/**
 * Our extension (not BCC): reading and writing a disk's bytes over HTTP. Reads work on an Available
 * or InUse disk; writes need an Available disk and hold the disk's lease for their duration, so a
 * block client, a rollback or another write cannot interleave.
 */
import type { Readable } from 'node:stream';
import type { Extent } from '../blockdev/block-target.ts';
import type { DiskHandle } from '../blockdev/disk-manager.ts';
import { ApiError } from '../domain/errors.ts';
import { canReadVolumeData, canWriteVolumeData } from '../domain/volume.ts';
import type { Region } from './region-context.ts';
import type { RequestContext } from './request-context.ts';

export const SECTOR = 512;
/** Reads are answered in pieces of this size; writes are gathered into pieces of this size. */
export const DATA_PIECE = 1 << 20;
/**
 * Largest write checked before any of it is written (`verifyFirst`: the body declares a digest). Its
 * body is held in memory until it has been received whole and verified; the CLI writes 4 MiB pieces.
 */
export const VERIFIED_WRITE_MAX_BYTES = 64 << 20;
/** The extents of a disk are computed this many bytes at a time (262144 chunks of 1 MiB: some 10 ms of work). */
const EXTENTS_WINDOW_BYTES = 256 * 1024 ** 3;
/** Bytes of verified writes held in memory at once, per region; further writes wait their turn. */
export const VERIFIED_WRITE_BUDGET_BYTES = 256 << 20;

export interface WriteOptions {
  /**
   * Receive the whole body before writing any of it, so that a body that fails (its digest, as
   * the guarded stream reports at its end) leaves the disk as it was.
   */
  verifyFirst?: boolean;
}

/** A FIFO budget of bytes: `take` waits until the bytes fit, the returned function gives them back. */
class ByteBudget {
  private used = 0;
  private readonly waiting: Array<{ bytes: number; go: () => void }> = [];

  constructor(private readonly total: number) {}

  async take(bytes: number): Promise<() => void> {
    if (this.waiting.length === 0 && this.used + bytes <= this.total) this.used += bytes;
    else await new Promise<void>((go) => this.waiting.push({ bytes, go }));
    let given = false;
    return () => {
      if (given) return;
      given = true;
      this.used -= bytes;
      while (this.waiting.length > 0 && this.used + this.waiting[0]!.bytes <= this.total) {
        const next = this.waiting.shift()!;
        this.used += next.bytes;
        next.go();
      }
    };
  }
}

export class VolumeDataService {
  private readonly verifiedBytes = new ByteBudget(VERIFIED_WRITE_BUDGET_BYTES);

  constructor(private readonly region: Region) {}

  /** Opens the disk for reading; the caller reads with `handle.disk.read` and must release the handle. */
  async openForRead(ctx: RequestContext, id: string): Promise<DiskHandle> {
    const volume = await this.region.meta.volumes.get(ctx.accountId, id);
    if (!volume) throw new ApiError('NoSuchObject', `The disk ${id} does not exist.`);
    if (!canReadVolumeData(volume.status)) throw new ApiError('OperationDenied', `The disk ${id} is ${volume.status}; its data can be read when Available or InUse.`);
    return this.region.disks.acquire(id);
  }

  async extents(ctx: RequestContext, id: string): Promise<Array<Extent & { offset: number }>> {
    using held = await this.openForRead(ctx, id);
    const disk = held.disk;
    // The map is walked a window at a time, with a turn of the event loop between windows: in one go,
    // a 32765 GB disk's 33.5 M chunks held the event loop (every other request and NBD client of the
    // process) for 0.8-1.3 s per call.
    const out: Array<Extent & { offset: number }> = [];
    for (let at = 0; at < disk.size; at += EXTENTS_WINDOW_BYTES) {
      if (at > 0) await new Promise<void>((resolve) => setImmediate(resolve));
      let offset = at;
      for (const e of await disk.extents(at, Math.min(EXTENTS_WINDOW_BYTES, disk.size - at))) {
        const prev = out[out.length - 1];
        if (prev && prev.hole === e.hole && prev.zero === e.zero) prev.length += e.length;
        else out.push({ offset, ...e });
        offset += e.length;
      }
    }
    return out;
  }

  /** Makes [offset, offset+length) read as zeros without sending them (trimmed chunks cost no data write). */
  async writeZeroes(ctx: RequestContext, id: string, offset: number, length: number): Promise<void> {
    using held = await this.openForWrite(ctx, id, offset, length);
    const disk = held.disk;
    const release = this.region.leases.acquire(id, 'http-write');
    try {
      await disk.writeZeroes(offset, length, true);
    } finally {
      release();
    }
  }

  /**
   * Writes `length` bytes from `body` at `offset`. Offset and length must be multiples of 512 and
   * inside the disk; the disk must be Available and not held by anyone else. Without `verifyFirst`
   * the bytes go to the disk as they arrive (a body cut short leaves what arrived written); with
   * it, at most VERIFIED_WRITE_MAX_BYTES, received whole and verified before the first byte is written.
   */
  async write(ctx: RequestContext, id: string, offset: number, length: number, body: Readable, options: WriteOptions = {}): Promise<void> {
    using held = await this.openForWrite(ctx, id, offset, length);
    const disk = held.disk;
    if (options.verifyFirst) {
      if (length > VERIFIED_WRITE_MAX_BYTES) {
        throw new ApiError('EntityTooLarge', `A write with a digest header is verified before any of it is written, so it may have at most ${VERIFIED_WRITE_MAX_BYTES} bytes, not ${length}; split it.`);
      }
      const giveBack = await this.verifiedBytes.take(length);
      try {
        const release = this.region.leases.acquire(id, 'http-write');
        try {
          const bytes = await receiveWhole(body, length);
          for (let at = 0; at < length; at += DATA_PIECE) await disk.write(offset + at, bytes.subarray(at, Math.min(length, at + DATA_PIECE)), false);
          await disk.flush();
        } finally {
          release();
        }
      } finally {
        giveBack();
      }
      return;
    }
    const release = this.region.leases.acquire(id, 'http-write');
    try {
      let position = offset;
      let pending: Buffer[] = [];
      let pendingBytes = 0;
      const flushPending = async (): Promise<void> => {
        if (pendingBytes === 0) return;
        const piece = pending.length === 1 ? pending[0]! : Buffer.concat(pending, pendingBytes);
        pending = [];
        pendingBytes = 0;
        await disk.write(position, piece, false);
        position += piece.length;
      };
      for await (const chunk of body) {
        const buf = chunk as Buffer;
        if (position + pendingBytes + buf.length > offset + length) throw new ApiError('BadRequest', 'The body is longer than its Content-Length.');
        pending.push(buf);
        pendingBytes += buf.length;
        if (pendingBytes >= DATA_PIECE) await flushPending();
      }
      await flushPending();
      if (position !== offset + length) throw new ApiError('InvalidHTTPRequest', `The body ended after ${position - offset} of ${length} bytes.`);
      await disk.flush();
    } finally {
      release();
    }
  }

  private async openForWrite(ctx: RequestContext, id: string, offset: number, length: number): Promise<DiskHandle> {
    const volume = await this.region.meta.volumes.get(ctx.accountId, id);
    if (!volume) throw new ApiError('NoSuchObject', `The disk ${id} does not exist.`);
    if (!canWriteVolumeData(volume.status)) throw new ApiError('OperationDenied', `The disk ${id} is ${volume.status}; data can be written only when it is Available.`);
    // Checked here, as ApiErrors: the disk's own range check throws RangeError, which is a 500 (a bug) by then.
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0) {
      throw new ApiError('BadRequest', `offset and length must be non-negative integers within the disk, not ${offset} and ${length}.`);
    }
    if (offset % SECTOR !== 0 || length % SECTOR !== 0) throw new ApiError('BadRequest', `offset and length must be multiples of ${SECTOR}.`);
    const held = await this.region.disks.acquire(id);
    const size = held.disk.size;
    if (offset + length > size) {
      held.release();
      throw new ApiError('BadRequest', `The write (${offset}+${length}) ends past the end of the disk (${size} bytes).`);
    }
    return held;
  }
}

/** All of a body of `length` bytes (the stream fails, with nothing returned, if it fails its digest). */
async function receiveWhole(body: Readable, length: number): Promise<Buffer> {
  const bytes = Buffer.allocUnsafe(length);
  let at = 0;
  for await (const chunk of body) {
    const buf = chunk as Buffer;
    if (at + buf.length > length) throw new ApiError('BadRequest', 'The body is longer than its Content-Length.');
    buf.copy(bytes, at);
    at += buf.length;
  }
  if (at !== length) throw new ApiError('InvalidHTTPRequest', `The body ended after ${at} of ${length} bytes.`);
  return bytes;
}
