/**
 * The chunk index (contract: src/chunkstore/chunk-index.ts) in the region's SQLite database, table
 * `chunk_index` (migration 4). Every method is one statement or one transaction, so each is atomic
 * against every other, in this process or another one sharing the file. Last-used times only grow
 * (`max`). Epochs are 64 random bits: a row never gets an epoch it had before (2^-64 per change).
 *
 * Durability. The database runs with synchronous=FULL: every commit fsyncs the WAL (~6 ms on the
 * build machine, blocking the event loop). At two index writes per chunk put that would cap puts at
 * well under the object store's speed and stall the server meanwhile, so `beginPut`, `markUsed`,
 * touches and `forget` commit with synchronous=NORMAL (no fsync: they survive a process crash, and
 * a power loss may drop the last of them) and `sync()` is one fsynced commit, which makes every
 * earlier commit in the WAL durable too (WAL frames persist in order). Losing any of those writes
 * is safe: a lost beginPut or markUsed leaves an object the index does not report (it is sent and
 * put again), a lost touch only ages a row whose reliers died with the machine (their roots are
 * durable records committed later), a lost forget leaves a claim that goes stale and is taken over.
 * A claim is different: it must be durable before the object is deleted, so `claimForDelete`
 * commits with FULL. *Rejected:* a second connection with synchronous=NORMAL (a ':memory:' database
 * would be a different database, and it would need its own lifecycle).
 */
import { randomBytes } from 'node:crypto';
import type { ChunkIndexRepository, ChunkIndexRow } from '../metadata-store.ts';
import { placeholders, type Db } from './database.ts';

/** Ids per IN list (SQLite allows 32766 bound values; smaller statements are cached and reused). */
const BATCH = 500;
const PAGE = 1000;

const newEpoch = (): string => randomBytes(8).toString('base64url');

interface Row {
  id: string;
  state: ChunkIndexRow['state'];
  size: number;
  last_used: number;
  claimed_at: number | null;
}

export class SqliteChunkIndex implements ChunkIndexRepository {
  constructor(private readonly db: Db) {}

  async beginPut(namespace: string, id: string, now: number): Promise<string | null> {
    const epoch = this.relaxed(() => this.db
      .prepare(
        `INSERT INTO chunk_index (namespace, id, state, size, last_used, claimed_at, epoch) VALUES (?, ?, 'storing', 0, ?, NULL, ?)
         ON CONFLICT (namespace, id) DO UPDATE SET last_used = max(last_used, excluded.last_used) WHERE state <> 'deleting'
         RETURNING epoch`,
      )
      .pluck()
      .get(namespace, id, now, newEpoch())) as string | undefined;
    return epoch ?? null;
  }

  async markUsed(namespace: string, id: string, epoch: string, size: number, now: number): Promise<boolean> {
    const sql = `UPDATE chunk_index SET state = 'present', size = ?, last_used = max(last_used, ?) WHERE namespace = ? AND id = ? AND epoch = ? AND state <> 'deleting'`;
    return this.relaxed(() => this.db.prepare(sql).run(size, now, namespace, id, epoch).changes === 1);
  }

  async present(namespace: string, ids: readonly string[], touchAt?: number): Promise<Set<string>> {
    const unique = [...new Set(ids)];
    const found = new Set<string>();
    const run = this.db.transaction(() => {
      for (let i = 0; i < unique.length; i += BATCH) {
        const part = unique.slice(i, i + BATCH);
        const rows =
          touchAt === undefined
            ? this.db.prepare(`SELECT id FROM chunk_index WHERE namespace = ? AND state = 'present' AND id IN (${placeholders(part.length)})`).pluck().all(namespace, ...part)
            : this.db
                .prepare(`UPDATE chunk_index SET last_used = max(last_used, ?) WHERE namespace = ? AND state = 'present' AND id IN (${placeholders(part.length)}) RETURNING id`)
                .pluck()
                .all(touchAt, namespace, ...part);
        for (const id of rows as string[]) found.add(id);
      }
    });
    if (touchAt === undefined) run();
    else this.relaxed(() => run());
    return found;
  }

  async claimForDelete(namespace: string, id: string, o: { cutoffMs: number; now: number; staleClaimBeforeMs: number; force?: boolean }): Promise<string | null> {
    const epoch = newEpoch();
    const stale = o.staleClaimBeforeMs; // +-Infinity bind as REAL and compare as expected
    if (o.force) {
      // Also an absent id: a tombstone row, so that a racing put waits for this delete.
      const got = this.db
        .prepare(
          `INSERT INTO chunk_index (namespace, id, state, size, last_used, claimed_at, epoch) VALUES (?, ?, 'deleting', 0, ?, ?, ?)
           ON CONFLICT (namespace, id) DO UPDATE SET state = 'deleting', claimed_at = excluded.claimed_at, epoch = excluded.epoch
             WHERE state <> 'deleting' OR claimed_at < ?
           RETURNING epoch`,
        )
        .pluck()
        .get(namespace, id, o.now, o.now, epoch, stale) as string | undefined;
      return got ?? null;
    }
    const got = this.db
      .prepare(
        `UPDATE chunk_index SET state = 'deleting', claimed_at = ?, epoch = ?
         WHERE namespace = ? AND id = ? AND ((state IN ('storing', 'present') AND last_used < ?) OR (state = 'deleting' AND claimed_at < ?))
         RETURNING epoch`,
      )
      .pluck()
      .get(o.now, epoch, namespace, id, o.cutoffMs, stale) as string | undefined;
    return got ?? null;
  }

  async forget(namespace: string, id: string, epoch: string): Promise<void> {
    this.relaxed(() => this.db.prepare(`DELETE FROM chunk_index WHERE namespace = ? AND id = ? AND state = 'deleting' AND epoch = ?`).run(namespace, id, epoch));
  }

  /** One fsynced commit (the connection's own synchronous=FULL): every earlier commit is durable after it. */
  async sync(): Promise<void> {
    this.db.prepare('UPDATE chunk_index_sync SET n = n + 1 WHERE id = 0').run();
  }

  /**
   * Runs `fn` (synchronous: nothing else can use the connection meanwhile) with its commit not
   * fsynced, then restores the connection's setting.
   */
  private relaxed<T>(fn: () => T): T {
    const previous = this.db.pragma('synchronous', { simple: true }) as number;
    if (previous <= 1) return fn(); // already OFF or NORMAL
    this.db.pragma('synchronous = NORMAL');
    try {
      return fn();
    } finally {
      this.db.pragma(`synchronous = ${previous}`);
    }
  }

  /** Pages in id order from the last id seen: rows deleted or added meanwhile do not shift a page. */
  async *list(namespace: string): AsyncIterable<ChunkIndexRow> {
    let after = '';
    for (;;) {
      const rows = this.db
        .prepare(`SELECT id, state, size, last_used, claimed_at FROM chunk_index WHERE namespace = ? AND id > ? ORDER BY id LIMIT ?`)
        .all(namespace, after, PAGE) as Row[];
      for (const r of rows) yield { id: r.id, state: r.state, size: r.size, lastUsedMs: r.last_used, claimedAtMs: r.claimed_at };
      if (rows.length < PAGE) return;
      after = rows[rows.length - 1]!.id;
    }
  }
}
