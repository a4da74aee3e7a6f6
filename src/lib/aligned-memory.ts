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
