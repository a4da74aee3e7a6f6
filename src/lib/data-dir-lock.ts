/**
 * One process per data dir, enforced by the kernel: SQLite metadata and the chunk files assume a
 * single writer.
 *
 * The lock is an fcntl lock, not a pid in a file: SQLite's `BEGIN EXCLUSIVE` on a dedicated,
 * otherwise empty database (`{dataDir}/snapferry.lock`), held for as long as the server runs. The
 * kernel drops it the moment the process dies (kill -9 included, before it is even reaped), so a
 * crash never leaves a stale lock, a reused pid or a zombie cannot block a start, and two starters
 * racing on the same file cannot both win. SQLite also tracks its locks per inode inside one
 * process, so a second server in the same process is refused too.
 *
 * Rules that keep it sound:
 * - The lock file is never deleted or replaced (by rename or otherwise): a starter that opened the
 *   old inode and one that created a new one would each lock "their" file.
 * - Nothing else in the process may open and close the lock file: POSIX drops all of a process's
 *   fcntl locks on a file when any descriptor of it is closed (SQLite's own connections know this).
 * - The connection stays strongly referenced (`held`): a connection collected by the GC is closed
 *   by its finalizer, which would silently release the lock.
 */
import Database from 'better-sqlite3';
import { mkdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';

/** The lock file in the data dir (a SQLite database that never holds data). */
export const LOCK_FILE = 'snapferry.lock';
/** The pid file of earlier versions: ignored, and removed once the new lock is held. */
const LEGACY_PID_FILE = 'LOCK';
/**
 * How long a starter waits for the lock. Not 0: taking an EXCLUSIVE lock passes through SHARED, so
 * two starters arriving at the same instant can each block the other's upgrade and both fail
 * (measured: 1 in 100 races of 4 starters with no wait). SQLite's busy handler backs one off so the
 * other gets it. The wait only matters when the dir is really in use: it delays the refusal.
 */
const BUSY_WAIT_MS = 250;

export class DataDirLockedError extends Error {
  override name = 'DataDirLockedError';
}

const held = new Set<Database.Database>();

/** Takes the data dir's lock or throws DataDirLockedError; returns the release (idempotent). */
export function acquireDataDirLock(dataDir: string): () => void {
  mkdirSync(dataDir, { recursive: true });
  const db = new Database(join(dataDir, LOCK_FILE), { timeout: BUSY_WAIT_MS });
  try {
    // No rollback journal: nothing is ever written, and a journal file would be left behind by kill -9.
    db.pragma('journal_mode = MEMORY');
    db.exec('BEGIN EXCLUSIVE');
  } catch (e) {
    db.close();
    if (String((e as { code?: unknown }).code).startsWith('SQLITE_BUSY')) {
      throw new DataDirLockedError(`the data dir ${dataDir} is in use by another snapferry process`);
    }
    throw e;
  }
  held.add(db);
  // Only once the lock is held: a starter that is refused leaves the data dir as it found it.
  rmSync(join(dataDir, LEGACY_PID_FILE), { force: true });
  return () => {
    if (!held.delete(db)) return;
    db.close();
  };
}
