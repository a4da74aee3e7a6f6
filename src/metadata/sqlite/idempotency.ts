import type { IdempotencyRecord, IdempotencyRepository } from '../metadata-store.ts';
import type { Db } from './database.ts';

interface Row { scope: string; token: string; params_hash: string; result: string; completed: number; last_used_at: number }

export class SqliteIdempotencyRepository implements IdempotencyRepository {
  constructor(private readonly db: Db) {}

  async get(scope: string, token: string): Promise<IdempotencyRecord | null> {
    const r = this.db.prepare('SELECT * FROM idempotency WHERE scope = ? AND token = ?').get(scope, token) as Row | undefined;
    return r
      ? { scope: r.scope, token: r.token, paramsHash: r.params_hash, result: JSON.parse(r.result), completed: r.completed === 1, lastUsedAt: r.last_used_at }
      : null;
  }

  async insertIfAbsent(rec: IdempotencyRecord): Promise<boolean> {
    const info = this.db
      .prepare('INSERT INTO idempotency (scope, token, params_hash, result, completed, last_used_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING')
      .run(rec.scope, rec.token, rec.paramsHash, JSON.stringify(rec.result), Number(rec.completed), rec.lastUsedAt);
    return info.changes === 1;
  }

  async markCompleted(scope: string, token: string): Promise<void> {
    this.db.prepare('UPDATE idempotency SET completed = 1 WHERE scope = ? AND token = ?').run(scope, token);
  }

  async touch(scope: string, token: string, at: number): Promise<void> {
    this.db.prepare('UPDATE idempotency SET last_used_at = ? WHERE scope = ? AND token = ?').run(at, scope, token);
  }

  async purgeOlderThan(cutoff: number): Promise<number> {
    return this.db.prepare('DELETE FROM idempotency WHERE last_used_at < ?').run(cutoff).changes;
  }
}
