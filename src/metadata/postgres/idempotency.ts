import type pg from 'pg';
import type { IdempotencyRecord, IdempotencyRepository } from '../metadata-store.ts';

interface Row { scope: string; token: string; params_hash: string; result: string; completed: boolean; last_used_at: number }

export class PostgresIdempotencyRepository implements IdempotencyRepository {
  constructor(private readonly db: pg.Pool) {}

  async get(scope: string, token: string): Promise<IdempotencyRecord | null> {
    const { rows } = await this.db.query('SELECT * FROM idempotency WHERE scope = $1 AND token = $2', [scope, token]);
    const r = rows[0] as Row | undefined;
    return r
      ? { scope: r.scope, token: r.token, paramsHash: r.params_hash, result: JSON.parse(r.result), completed: r.completed, lastUsedAt: r.last_used_at }
      : null;
  }

  async insertIfAbsent(rec: IdempotencyRecord): Promise<boolean> {
    // ON CONFLICT DO NOTHING on the primary key: of two processes claiming one clientToken at once,
    // the second waits for the first to commit and then inserts nothing (it reads the winner's record).
    const { rowCount } = await this.db.query(
      'INSERT INTO idempotency (scope, token, params_hash, result, completed, last_used_at) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING',
      [rec.scope, rec.token, rec.paramsHash, JSON.stringify(rec.result), rec.completed, rec.lastUsedAt],
    );
    return rowCount === 1;
  }

  async markCompleted(scope: string, token: string): Promise<void> {
    await this.db.query('UPDATE idempotency SET completed = true WHERE scope = $1 AND token = $2', [scope, token]);
  }

  async touch(scope: string, token: string, at: number): Promise<void> {
    await this.db.query('UPDATE idempotency SET last_used_at = $3 WHERE scope = $1 AND token = $2', [scope, token, at]);
  }

  async purgeOlderThan(cutoff: number): Promise<number> {
    return (await this.db.query('DELETE FROM idempotency WHERE last_used_at < $1', [cutoff])).rowCount ?? 0;
  }
}
