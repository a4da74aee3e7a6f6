/**
 * A real, file-backed BlockTarget and ExportProvider for protocol tests and benchmarks.
 *
 * Each export is a sparse file of fixed size. Which 64 KiB granules hold data is tracked in memory
 * (per export, surviving re-opens within one provider), and `extents` reports never-written and
 * zeroed granules as holes. Invariant: a granule marked unallocated reads as zeros.
 * `trim` and `writeZeroes` write zeros over the allocated part of the range and mark fully covered
 * granules unallocated again, so both always read back as zeros.
 */
import { open, type FileHandle } from 'node:fs/promises';
import {
  BlockIoError,
  ExportUnavailableError,
  type BlockTarget,
  type ExportDescription,
  type ExportProvider,
  type Extent,
  type OpenedExport,
} from '../../src/blockdev/block-target.ts';

export const GRANULE = 64 * 1024;
const ZERO_CHUNK = Buffer.alloc(1024 * 1024);

/** Which granules of an export hold data. */
export class AllocationMap {
  private readonly bits: Uint8Array;

  constructor(
    readonly size: number,
    initiallyAllocated = false,
  ) {
    this.bits = new Uint8Array(Math.ceil(size / GRANULE));
    if (initiallyAllocated) this.bits.fill(1);
  }

  get granules(): number {
    return this.bits.length;
  }

  isAllocated(granule: number): boolean {
    return this.bits[granule] === 1;
  }

  set(granule: number, allocated: boolean): void {
    this.bits[granule] = allocated ? 1 : 0;
  }

  markAllocated(offset: number, length: number): void {
    if (length <= 0) return;
    const first = Math.floor(offset / GRANULE);
    const last = Math.floor((offset + length - 1) / GRANULE);
    this.bits.fill(1, first, last + 1);
  }

  /** Consecutive runs over [offset, offset + length): unallocated runs are holes (and zero). */
  extents(offset: number, length: number): Extent[] {
    const out: Extent[] = [];
    let pos = offset;
    const end = offset + length;
    while (pos < end) {
      const granule = Math.floor(pos / GRANULE);
      const allocated = this.isAllocated(granule);
      let g = granule + 1;
      while (g * GRANULE < end && this.isAllocated(g) === allocated) g++;
      const runEnd = Math.min(end, g * GRANULE);
      out.push({ length: runEnd - pos, hole: !allocated, zero: !allocated });
      pos = runEnd;
    }
    return out;
  }
}

export class FileBlockTarget implements BlockTarget {
  /** Counters for tests. */
  readonly stats = { reads: 0, writes: 0, bytesWritten: 0, zeroes: 0, trims: 0, flushes: 0 };

  constructor(
    private readonly fh: FileHandle,
    readonly size: number,
    private readonly alloc: AllocationMap,
    private readonly hooks: TargetHooks = {},
  ) {}

  async read(offset: number, length: number, into?: Buffer): Promise<Buffer> {
    this.check(offset, length);
    this.stats.reads++;
    await this.hooks.beforeIo?.('read', offset, length);
    const buf = into ? into.subarray(0, length) : Buffer.allocUnsafe(length);
    let done = 0;
    while (done < length) {
      const { bytesRead } = await this.io(() => this.fh.read(buf, done, length - done, offset + done));
      if (bytesRead === 0) {
        // Past the end of a file shorter than the export: reads as zeros.
        buf.fill(0, done);
        break;
      }
      done += bytesRead;
    }
    return buf;
  }

  async write(offset: number, data: Buffer, fua: boolean): Promise<void> {
    this.check(offset, data.length);
    this.stats.writes++;
    this.stats.bytesWritten += data.length;
    await this.hooks.beforeIo?.('write', offset, data.length);
    // Mark first, so extents never report a hole over data that is being written.
    this.alloc.markAllocated(offset, data.length);
    await this.writeFully(data, offset);
    if (fua) await this.io(() => this.fh.datasync());
  }

  async writeZeroes(offset: number, length: number, fua: boolean): Promise<void> {
    this.check(offset, length);
    this.stats.zeroes++;
    await this.hooks.beforeIo?.('writeZeroes', offset, length);
    await this.zeroRange(offset, length);
    if (fua) await this.io(() => this.fh.datasync());
  }

  async trim(offset: number, length: number, fua: boolean): Promise<void> {
    this.check(offset, length);
    this.stats.trims++;
    await this.hooks.beforeIo?.('trim', offset, length);
    await this.zeroRange(offset, length);
    if (fua) await this.io(() => this.fh.datasync());
  }

  async flush(): Promise<void> {
    this.stats.flushes++;
    await this.io(() => this.fh.datasync());
  }

  async extents(offset: number, length: number): Promise<Extent[]> {
    this.check(offset, length);
    return this.alloc.extents(offset, length);
  }

  private async zeroRange(offset: number, length: number): Promise<void> {
    const end = offset + length;
    let pendingStart = -1;
    let pendingEnd = -1;
    const toClear: number[] = [];
    for (let g = Math.floor(offset / GRANULE); g * GRANULE < end; g++) {
      if (!this.alloc.isAllocated(g)) continue; // already reads as zeros
      const gs = g * GRANULE;
      const s = Math.max(gs, offset);
      const e = Math.min(gs + GRANULE, end, this.size);
      if (s === gs && e === Math.min(gs + GRANULE, this.size)) toClear.push(g);
      if (s === pendingEnd) {
        pendingEnd = e;
      } else {
        if (pendingStart >= 0) await this.writeZeroBytes(pendingStart, pendingEnd - pendingStart);
        pendingStart = s;
        pendingEnd = e;
      }
    }
    if (pendingStart >= 0) await this.writeZeroBytes(pendingStart, pendingEnd - pendingStart);
    for (const g of toClear) this.alloc.set(g, false);
  }

  private async writeZeroBytes(offset: number, length: number): Promise<void> {
    let done = 0;
    while (done < length) {
      const n = Math.min(ZERO_CHUNK.length, length - done);
      await this.writeFully(ZERO_CHUNK.subarray(0, n), offset + done);
      done += n;
    }
  }

  private async writeFully(data: Buffer, offset: number): Promise<void> {
    let done = 0;
    while (done < data.length) {
      const { bytesWritten } = await this.io(() => this.fh.write(data, done, data.length - done, offset + done));
      done += bytesWritten;
    }
  }

  private check(offset: number, length: number): void {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0) {
      throw new RangeError(`bad range ${offset}+${length}`);
    }
    if (offset + length > this.size) throw new RangeError(`range ${offset}+${length} beyond size ${this.size}`);
  }

  private async io<T>(fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (err) {
      throw new BlockIoError(`file I/O failed: ${(err as Error).message}`);
    }
  }
}

export interface TargetHooks {
  /** Awaited before each data operation (tests use it to observe progress or inject delays/faults). */
  beforeIo?: (op: 'read' | 'write' | 'writeZeroes' | 'trim', offset: number, length: number) => void | Promise<void>;
}

export interface FileExportSpec {
  name: string;
  path: string;
  size: number;
  readOnly?: boolean;
  description?: string;
  /**
   * Whether an existing file's content counts as data (true: every granule reported allocated; use
   * for pre-filled files) or the file is new/zero (false, default: created sparse and empty).
   */
  existingData?: boolean;
  hooks?: TargetHooks;
}

interface ExportState {
  spec: FileExportSpec;
  alloc: AllocationMap;
  /** Set while a client holds the export. */
  current: { target: FileBlockTarget; fh: FileHandle } | null;
  opens: number;
  releases: number;
  /** release() calls on an already released handle: must stay 0. */
  doubleReleases: number;
  unavailable: string | null;
  releaseWaiters: Array<() => void>;
}

/**
 * ExportProvider over FileBlockTargets with the service's one-client-per-disk rule: a second open of
 * an export that is held fails with ExportUnavailableError('busy').
 */
export class FileExportProvider implements ExportProvider {
  private readonly exports = new Map<string, ExportState>();

  /** Registers an export; creates (or extends) its file as a sparse file of `size` bytes. */
  async add(spec: FileExportSpec): Promise<void> {
    const fh = await open(spec.path, 'a+');
    try {
      const { size } = await fh.stat();
      if (size < spec.size) await fh.truncate(spec.size);
    } finally {
      await fh.close();
    }
    this.exports.set(spec.name, {
      spec,
      alloc: new AllocationMap(spec.size, spec.existingData ?? false),
      current: null,
      opens: 0,
      releases: 0,
      doubleReleases: 0,
      unavailable: null,
      releaseWaiters: [],
    });
  }

  async list(): Promise<Array<{ name: string; description?: string }>> {
    return [...this.exports.values()].map((e) => ({ name: e.spec.name, description: e.spec.description }));
  }

  async describe(name: string): Promise<ExportDescription> {
    const e = this.exports.get(name);
    if (!e) throw new ExportUnavailableError(`no export named '${name}'`, 'unknown');
    return { size: e.spec.size, readOnly: e.spec.readOnly ?? false, description: e.spec.description };
  }

  async open(name: string): Promise<OpenedExport> {
    const e = this.exports.get(name);
    if (!e) throw new ExportUnavailableError(`no export named '${name}'`, 'unknown');
    if (e.unavailable) throw new ExportUnavailableError(e.unavailable, 'state');
    if (e.current) throw new ExportUnavailableError(`export '${name}' is in use by another client`, 'busy');
    const readOnly = e.spec.readOnly ?? false;
    // Claim before the await so that two concurrent opens cannot both succeed.
    const claim = { target: null as unknown as FileBlockTarget, fh: null as unknown as FileHandle };
    e.current = claim;
    let fh: FileHandle;
    try {
      fh = await open(e.spec.path, readOnly ? 'r' : 'r+');
    } catch (err) {
      e.current = null;
      throw new ExportUnavailableError(`cannot open '${name}': ${(err as Error).message}`, 'state');
    }
    claim.fh = fh;
    claim.target = new FileBlockTarget(fh, e.spec.size, e.alloc, e.spec.hooks);
    e.opens++;
    let released = false;
    return {
      target: claim.target,
      readOnly,
      release: async () => {
        if (released) {
          e.doubleReleases++;
          return;
        }
        released = true;
        await fh.close();
        e.current = null;
        e.releases++;
        const waiters = e.releaseWaiters.splice(0);
        for (const w of waiters) w();
      },
    };
  }

  // ---- test helpers ---------------------------------------------------------------------------

  stats(name: string): { opens: number; releases: number; doubleReleases: number; open: boolean } {
    const e = this.mustGet(name);
    return { opens: e.opens, releases: e.releases, doubleReleases: e.doubleReleases, open: e.current !== null };
  }

  /** The target of the client currently holding the export (for counters). */
  currentTarget(name: string): FileBlockTarget | null {
    return this.mustGet(name).current?.target ?? null;
  }

  allocation(name: string): AllocationMap {
    return this.mustGet(name).alloc;
  }

  /** Makes open() fail with ExportUnavailableError(reason 'state') and this message; null clears. */
  setUnavailable(name: string, message: string | null): void {
    this.mustGet(name).unavailable = message;
  }

  /** Resolves once the export is not held (immediately if it is free), or rejects after `timeoutMs`. */
  waitUntilReleased(name: string, timeoutMs = 10_000): Promise<void> {
    const e = this.mustGet(name);
    if (!e.current) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`export '${name}' not released within ${timeoutMs} ms`)), timeoutMs);
      e.releaseWaiters.push(() => {
        clearTimeout(timer);
        resolve();
      });
    });
  }

  private mustGet(name: string): ExportState {
    const e = this.exports.get(name);
    if (!e) throw new Error(`no export '${name}'`);
    return e;
  }
}
