/**
 * The connection pool and the transaction helper of the PostgreSQL metadata store, and the
 * errors it gives when it cannot open a database.
 *
 * Transactions run at READ COMMITTED (PostgreSQL's default): every statement sees what was
 * committed before it began, so a rule that spans a check and a write takes a lock first (a row
 * lock or an advisory lock) and checks in a later statement. Rejected: SERIALIZABLE everywhere,
 * whose serialization failures every caller would have to retry, for rules a lock states plainly.
 */
import pg from 'pg';

export type Queryable = pg.Pool | pg.PoolClient;

/**
 * int8 (BIGINT) as a JS number: timestamps are epoch ms and ids are identities, all far below
 * 2^53, and count(*) is int8 too. Set per pool (not `pg.types.setTypeParser`, which is global to
 * the process). A value past 2^53 is an error rather than a silently rounded number.
 */
const INT8 = 20;
const types = {
  getTypeParser(oid: number, format?: 'text' | 'binary') {
    if (oid === INT8 && format !== 'binary') {
      return (value: string): number => {
        const n = Number(value);
        if (!Number.isSafeInteger(n)) throw new Error(`int8 value ${value} does not fit a JS number`);
        return n;
      };
    }
    return pg.types.getTypeParser(oid, format);
  },
} as pg.CustomTypesConfig;

export interface PoolOptions {
  /** Schema holding the tables (created if missing); default `public`. Lets regions share a database. */
  schema?: string;
  /** Connections of this process (default 10). */
  maxConnections?: number;
  /** For `pg_stat_activity`; default `snapferry`. */
  applicationName?: string;
  /** Called for errors of idle connections (a server restart): the pool drops them and reconnects. */
  onIdleError?: (err: Error) => void;
}

export const SCHEMA_NAME = /^[a-z_][a-z0-9_]{0,62}$/;

/**
 * `relaxed`: commits do not wait for their WAL flush (`synchronous_commit = off`): they survive a
 * crash of this process, but a crash of the server or the machine may lose the last ones (the WAL
 * writer flushes within 0.6 s). Only for writes whose loss is safe (chunk-index puts and touches).
 */
export function createPool(url: string, opts: PoolOptions = {}, relaxed = false): pg.Pool {
  const schema = opts.schema ?? 'public';
  if (!SCHEMA_NAME.test(schema)) throw new Error(`invalid PostgreSQL schema name ${JSON.stringify(schema)} (lower-case letters, digits, _)`);
  const pool = new pg.Pool({
    connectionString: url,
    max: opts.maxConnections ?? 10,
    application_name: opts.applicationName ?? 'snapferry',
    // A server that does not answer fails the call after 10 s instead of hanging it.
    connectionTimeoutMillis: 10_000,
    idleTimeoutMillis: 30_000,
    keepAlive: true,
    types,
    // Server-side limits for every session of ours:
    // - a process that stalls inside a transaction (a long GC pause, SIGSTOP, a dead network) is
    //   cut after 30 s, which frees the row and advisory locks it held for every other process;
    // - a lock wait longer than 30 s fails (and the caller retries) rather than queueing forever.
    options: `-c search_path=${schema} -c idle_in_transaction_session_timeout=30000 -c lock_timeout=30000${relaxed ? ' -c synchronous_commit=off' : ''}`,
  });
  // Without a listener, an idle connection that the server closes (restart, failover,
  // pg_terminate_backend) would emit an unhandled 'error' and crash the process.
  pool.on('error', (err) => opts.onIdleError?.(err));
  return pool;
}

/**
 * Runs `fn` in one transaction on one connection: COMMIT when it resolves, ROLLBACK when it
 * throws (the error is rethrown). A connection that broke meanwhile is destroyed rather than
 * returned to the pool. A COMMIT that fails because the connection dropped leaves the outcome
 * unknown; every method of the store is idempotent or guarded, so the caller's retry is safe.
 */
export async function withTransaction<T>(pool: pg.Pool, fn: (client: pg.PoolClient) => Promise<T>): Promise<T> {
  const client = await pool.connect();
  let broken: Error | undefined;
  // A checked-out client has no pool listener: an 'error' between two queries would crash the process.
  const onError = (err: Error): void => {
    broken = err;
  };
  client.on('error', onError);
  try {
    await client.query('BEGIN');
    const result = await fn(client);
    await client.query('COMMIT');
    return result;
  } catch (err) {
    await client.query('ROLLBACK').catch((rollbackErr: Error) => {
      broken ??= rollbackErr;
    });
    throw err;
  } finally {
    client.off('error', onError);
    client.release(broken ?? false);
  }
}

/**
 * SQL for an advisory-lock key: a 64-bit hash of the lock's purpose, the schema (regions sharing
 * a database do not contend) and the value `$n`. A hash collision only serialises two unrelated
 * callers; it never lets two holders in at once.
 */
export const lockKey = (purpose: string, param: string): string =>
  `hashtextextended('snapferry:${purpose}:' || coalesce(current_schema(), '') || ':' || ${param}, 0)`;

/** The URL without its password, for messages. */
export function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = '***';
    return u.toString();
  } catch {
    return '(unparseable PostgreSQL URL)';
  }
}

/** Opening the metadata store failed in a way an operator must fix (it is not retried). */
export class MetadataOpenError extends Error {
  override name = 'MetadataOpenError';
}

/** Turns a connect or first-query failure into one line that says what to fix. */
export function describeOpenError(err: unknown, url: string): Error {
  const e = err as { code?: string; message?: string };
  const where = redactUrl(url);
  let user = '';
  let database = '';
  let hostPort = where;
  try {
    const u = new URL(url);
    user = decodeURIComponent(u.username) || process.env.PGUSER || 'the default user';
    database = decodeURIComponent(u.pathname.slice(1)) || user;
    hostPort = `${u.hostname || 'localhost'}:${u.port || 5432}`;
  } catch {
    return new MetadataOpenError(`PostgreSQL metadata store: invalid URL ${where}`, { cause: err });
  }
  const why = ((): string => {
    switch (e.code) {
      case 'ECONNREFUSED':
        return `cannot connect to PostgreSQL at ${hostPort}: connection refused (is the server running and listening there?)`;
      case 'ENOTFOUND':
      case 'EAI_AGAIN':
        return `cannot connect to PostgreSQL: host of ${hostPort} not found`;
      case 'ETIMEDOUT':
        return `cannot connect to PostgreSQL at ${hostPort}: timed out`;
      case '28P01':
        return `PostgreSQL at ${hostPort} refused the password of user "${user}"`;
      case '28000':
        return `PostgreSQL at ${hostPort} does not let user "${user}" connect to database "${database}" (${e.message})`;
      case '3D000':
        return `database "${database}" does not exist on PostgreSQL at ${hostPort} (create it: createdb ${database})`;
      case '42501':
        return `user "${user}" may not create the metadata tables in database "${database}" (${e.message})`;
      default:
        if (/timeout/i.test(e.message ?? '')) return `cannot connect to PostgreSQL at ${hostPort}: timed out`;
        return `PostgreSQL metadata store at ${where}: ${e.message ?? String(err)}`;
    }
  })();
  return new MetadataOpenError(why, { cause: err });
}
