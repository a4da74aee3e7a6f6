/**
 * Payload buffers (WRITE data received, READ data to send), reused from one request to the next on
 * a connection.
 *
 * A fresh buffer per payload (nbdcopy sends and asks for 256 KiB each) is memory the allocator
 * maps anew and the kernel zeroes page by page on first touch, then garbage for the collector: in
 * a profile of the event loop during an nbdcopy write, page clearing, page faults and malloc were
 * about 8 % of it. Reads too: an nbdcopy write then read of 1 GiB cost the server 105,000 page
 * faults with fresh read buffers, 64,000 with pooled ones (the write alone 38,000).
 *
 * Buffers come in power-of-two sizes from PAYLOAD_POOL_MIN up (a payload uses a view of the first
 * `length` bytes); at most KEEP_BYTES of free ones are kept per connection.
 *
 * The caller gives a buffer back only once nothing reads or writes it: a WRITE's after the target's
 * `write` settled (BlockTarget.write keeps nothing of its data after that), a READ's after the
 * socket took the reply (its write callback), or at once when the read failed (BlockTarget.read
 * writes nothing into it once settled).
 */

/** Payloads below this come as views of the socket's own chunks, or small copies: not pooled. */
export const PAYLOAD_POOL_MIN = 64 * 1024;
const KEEP_BYTES = 16 * 1024 * 1024;

export class PayloadBuffers {
  private readonly free = new Map<number, Buffer[]>();
  private freeBytes = 0;

  /** A buffer of at least `length` bytes (its contents are whatever an earlier payload left). */
  take(length: number): Buffer {
    const size = sizeClass(length);
    const buffer = this.free.get(size)?.pop();
    if (buffer) {
      this.freeBytes -= size;
      return buffer;
    }
    return Buffer.allocUnsafeSlow(size);
  }

  give(buffer: Buffer): void {
    const size = buffer.length;
    if (this.freeBytes + size > KEEP_BYTES) return; // left to the collector
    let list = this.free.get(size);
    if (!list) this.free.set(size, (list = []));
    list.push(buffer);
    this.freeBytes += size;
  }
}

function sizeClass(length: number): number {
  let size = PAYLOAD_POOL_MIN;
  while (size < length) size *= 2;
  return size;
}
