/**
 * File I/O on raw descriptors, for the per-chunk paths (a chunk file is opened, read or written
 * once, and closed: thousands a second in a copy or a capture).
 *
 * Why not `fs/promises` FileHandles there: each FileHandle is an object with a finaliser, and
 * every call on it is a promise plus a trip through the thread pool. On this 2-core machine a
 * trip costs the event loop more than its bookkeeping: waking a pool thread preempts the loop's
 * thread, and a copy's loop is busy. So the calls that wait on the device (open, read, write,
 * fsync) go to the pool as before, and the two that never do here run on the calling thread:
 *
 * - `closeFd`: closing a regular file we opened does no I/O (no flush: a new chunk file is written
 *   whole past the page cache or left to writeback, and is never truncated, which is when ext4
 *   flushes on close);
 * - `fstatSizeSync`: the inode is in memory while the file is open.
 *
 * A descriptor is a plain number: every opener must close it on every path (try/finally), since
 * nothing closes a lost one.
 */
import * as fs from 'node:fs';

export function openFd(path: string, flags: number, mode = 0o644): Promise<number> {
  return new Promise((resolve, reject) => fs.open(path, flags, mode, (err, fd) => (err ? reject(err) : resolve(fd))));
}

/** Reads up to `length` bytes at `position` into `buf` at `offset`; answers the bytes read. */
export function readFd(fd: number, buf: Uint8Array, offset: number, length: number, position: number): Promise<number> {
  return new Promise((resolve, reject) => fs.read(fd, buf, offset, length, position, (err, n) => (err ? reject(err) : resolve(n))));
}

/** Writes `length` bytes of `buf` from `offset` at `position`; answers the bytes written (maybe fewer). */
export function writeFd(fd: number, buf: Uint8Array, offset: number, length: number, position: number): Promise<number> {
  return new Promise((resolve, reject) => fs.write(fd, buf, offset, length, position, (err, n) => (err ? reject(err) : resolve(n))));
}

export function fsyncFd(fd: number): Promise<void> {
  return new Promise((resolve, reject) => fs.fsync(fd, (err) => (err ? reject(err) : resolve())));
}

/** fsync of the file or directory at `path` (a directory's fsync makes the renames in it durable). */
export async function fsyncPath(path: string): Promise<void> {
  const fd = await openFd(path, fs.constants.O_RDONLY);
  try {
    await fsyncFd(fd);
  } finally {
    closeFd(fd);
  }
}

/**
 * The file's stats, or null when nothing is at `path` (ENOENT, ENOTDIR). The callback form rather
 * than `fs/promises`: a store's presence checks stat thousands of paths per copy, a quarter of them
 * absent, and the promise form cost the event loop 3-5x as much per call here (4096 stats at
 * concurrency 32: 90-133 ms against 20-70 ms).
 */
export function statPath(path: string): Promise<fs.Stats | null> {
  return new Promise((resolve, reject) =>
    fs.stat(path, (err, st) => (err ? (isAbsent(err) ? resolve(null) : reject(err)) : resolve(st))),
  );
}

/** Sets the file's atime and mtime to `seconds` (since the epoch); false when nothing is at `path`. Callback form: see statPath. */
export function setTimesPath(path: string, seconds: number): Promise<boolean> {
  return new Promise((resolve, reject) =>
    fs.utimes(path, seconds, seconds, (err) => (err ? (isAbsent(err) ? resolve(false) : reject(err)) : resolve(true))),
  );
}

function isAbsent(err: NodeJS.ErrnoException): boolean {
  return err.code === 'ENOENT' || err.code === 'ENOTDIR';
}

/** Closes `fd` on the calling thread (see the module comment for why that never waits on the device). */
export function closeFd(fd: number): void {
  fs.closeSync(fd);
}

/** The open file's size, on the calling thread. */
export function fstatSizeSync(fd: number): number {
  return fs.fstatSync(fd).size;
}

/** O_DIRECT where the platform has it (Linux), else 0: then nothing is ever opened past the page cache. */
export const O_DIRECT: number = (fs.constants as Record<string, number>).O_DIRECT ?? 0;

/**
 * Opens `path` with `flags`, plus O_DIRECT when `direct` is asked for and the platform has it; a
 * file system that refuses O_DIRECT (EINVAL: tmpfs, some FUSE) gets the plain open. `direct` in the
 * answer: whether the descriptor has O_DIRECT (asked for and not: refused, so the caller stops asking).
 */
export async function openPerhapsDirect(path: string, flags: number, direct: boolean): Promise<{ fd: number; direct: boolean }> {
  if (!direct || O_DIRECT === 0) return { fd: await openFd(path, flags), direct: false };
  try {
    return { fd: await openFd(path, flags | O_DIRECT), direct: true };
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EINVAL') throw err;
    return { fd: await openFd(path, flags), direct: false };
  }
}

/**
 * One open file that may be read or written past the page cache, and can fall back to it in the
 * middle of a transfer: some file systems accept O_DIRECT at open and refuse it at the first
 * read or write (EINVAL), and the bytes must then still get through. `fd` is -1 once closed, so
 * a failed reopen never leaves a closed (and perhaps reused) number to be closed again.
 */
export class PerhapsDirectFile {
  private constructor(
    private readonly path: string,
    private readonly flags: number,
    public fd: number,
    public direct: boolean,
  ) {}

  /** `openPerhapsDirect`, kept with what a reopen needs. */
  static async open(path: string, flags: number, direct: boolean): Promise<PerhapsDirectFile> {
    const opened = await openPerhapsDirect(path, flags, direct);
    return new PerhapsDirectFile(path, flags, opened.fd, opened.direct);
  }

  /**
   * Whether `err`, thrown by a transfer on this file, is the file system refusing O_DIRECT after
   * all; if so the file is open again without it (the caller carries on where it was).
   */
  async fellBackFrom(err: unknown): Promise<boolean> {
    if (!this.direct || (err as NodeJS.ErrnoException | null)?.code !== 'EINVAL') return false;
    this.direct = false;
    this.close();
    // The file exists now (its creator may have asked for O_EXCL): open it, never create or empty it again.
    this.fd = await openFd(this.path, this.flags & ~(fs.constants.O_CREAT | fs.constants.O_EXCL | fs.constants.O_TRUNC));
    return true;
  }

  close(): void {
    const fd = this.fd;
    this.fd = -1;
    if (fd >= 0) closeFd(fd);
  }
}
