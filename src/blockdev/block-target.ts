/**
 * What a block protocol server (NBD) needs from a disk. The disk implementation (sparse file +
 * dirty-chunk tracking + copy-on-write for snapshots) lives beside this file; the protocol server
 * depends on this interface only, so it can be tested against any real implementation.
 *
 * Contract:
 * - offsets and lengths are bytes; callers check bounds (offset + length <= size) before calling,
 *   implementations may still throw a RangeError on violation.
 * - `write` resolves when the bytes are visible to later reads; with `fua` also durable on disk.
 * - `flush` makes every write that resolved before it durable.
 * - `trim` and `writeZeroes` leave the range reading as zeros (trim is not allowed to leave garbage:
 *   this service promises zero after trim, which keeps snapshots deterministic).
 * - `extents` describes [offset, offset+length) as consecutive runs; `zero: true` means the run reads
 *   as zeros, `hole: true` means nothing is allocated there (a hole is always also zero).
 * - errors thrown are either `BlockIoError` (reported to the client as EIO) or RangeError (EINVAL).
 */
export interface BlockTarget {
  readonly size: number;
  /**
   * `into`, when given (at least `length` bytes, the caller's): the bytes are read into its first
   * `length` bytes and the answer is that view (the NBD server reuses its read buffers). Once the
   * promise settles, resolved or rejected, nothing writes into `into` any more.
   */
  read(offset: number, length: number, into?: Buffer): Promise<Buffer>;
  /** `data` is lent: nothing of it may be kept or read once the promise settles (the NBD server reuses the buffer). */
  write(offset: number, data: Buffer, fua: boolean): Promise<void>;
  writeZeroes(offset: number, length: number, fua: boolean): Promise<void>;
  trim(offset: number, length: number, fua: boolean): Promise<void>;
  flush(): Promise<void>;
  extents(offset: number, length: number): Promise<Extent[]>;
}

export interface Extent {
  length: number;
  hole: boolean;
  zero: boolean;
}

/** An I/O failure of the backing storage; the block server reports it as EIO and keeps serving. */
export class BlockIoError extends Error {
  override name = 'BlockIoError';
}

/**
 * How the block server finds a disk by export name. `open` throws `ExportUnavailableError` with a
 * human-readable reason (unknown disk, another writer holds it, disk not in a usable state). The
 * returned handle must be released exactly once, when the client disconnects. `describe` answers
 * questions about an export (NBD_OPT_INFO, descriptions) without opening it, so asking never
 * takes a disk away from anyone; it throws `ExportUnavailableError('unknown')` for a missing one.
 */
export interface ExportProvider {
  list(): Promise<Array<{ name: string; description?: string }>>;
  describe(name: string): Promise<ExportDescription>;
  open(name: string): Promise<OpenedExport>;
}

export interface ExportDescription {
  size: number;
  readOnly: boolean;
  description?: string;
}

export interface OpenedExport {
  target: BlockTarget;
  readOnly: boolean;
  release(): void | Promise<void>;
}

export class ExportUnavailableError extends Error {
  override name = 'ExportUnavailableError';
  constructor(
    message: string,
    /** 'unknown' maps to NBD_REP_ERR_UNKNOWN, 'busy' and 'state' to NBD_REP_ERR_POLICY. */
    readonly reason: 'unknown' | 'busy' | 'state',
  ) {
    super(message);
  }
}
