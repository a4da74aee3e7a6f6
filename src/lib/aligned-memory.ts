/**
 * Page-aligned, shared memory for the data path, and a way to recognise it later.
 *
 * Why both properties: shared memory lets the hash pool's workers hash a buffer in place (no copy
 * into their slots), and page alignment lets the kernel move it to or from a file past the page
 * cache (O_DIRECT needs the memory, the file offset and the length aligned to the device's block
 * size). The memory of a shared WebAssembly.Memory is page-aligned; JavaScript cannot ask where any
 * other buffer lives, so alignment is known only for memory made here (`isPageAligned`).
 */

/** The alignment O_DIRECT is asked to meet: 4 KiB, which every common device block size divides. */
export const DIRECT_IO_ALIGN = 4096;

/** ArrayBuffers known to start on a page boundary (made by `alignedSharedMemory`). */
const aligned = new WeakSet<ArrayBufferLike>();

/**
 * `bytes` of shared, page-aligned memory (a WebAssembly.Memory). Where that cannot be made, a plain
 * SharedArrayBuffer: shared still, but never reported as aligned, so direct I/O is not tried on it.
 */
export function alignedSharedMemory(bytes: number): SharedArrayBuffer {
  const pages = Math.max(1, Math.ceil(bytes / 65536));
  try {
    const memory = new WebAssembly.Memory({ initial: pages, maximum: pages, shared: true }).buffer as unknown as SharedArrayBuffer;
    aligned.add(memory);
    return memory;
  } catch {
    return new SharedArrayBuffer(bytes);
  }
}

/**
 * True when `buf` starts on a DIRECT_IO_ALIGN boundary of memory known to be page-aligned and its
 * length is a multiple of DIRECT_IO_ALIGN: it may be written or read with O_DIRECT as it is.
 */
export function isDirectIoReady(buf: Buffer): boolean {
  return aligned.has(buf.buffer) && buf.byteOffset % DIRECT_IO_ALIGN === 0 && buf.length % DIRECT_IO_ALIGN === 0 && buf.length > 0;
}

/**
 * Chunk-sized buffers of aligned shared memory, reused by size. A fresh one per chunk costs more
 * than the work done in it: WebAssembly memory is freed only by a full collection, and until one
 * comes every buffer dropped stays resident. At most `keep` free buffers of each size are kept
 * (beyond that a buffer is left to the collector); give back only a buffer nothing reads any more,
 * whole, as `take` answered it.
 */
export class AlignedBufferPool {
  private readonly free = new Map<number, Buffer[]>();

  constructor(private readonly keep: number) {}

  take(size: number): Buffer {
    return this.free.get(size)?.pop() ?? Buffer.from(alignedSharedMemory(size), 0, size);
  }

  give(buffer: Buffer): void {
    let list = this.free.get(buffer.length);
    if (!list) this.free.set(buffer.length, (list = []));
    if (list.length < this.keep) list.push(buffer);
  }
}
