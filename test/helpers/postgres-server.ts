/**
 * A throwaway PostgreSQL server for tests and benchmarks, and a fresh database per test.
 *
 * The server is Debian's PostgreSQL (`apt-get install postgresql`), started from its binaries in a
 * temp dir on a free loopback port, and stopped by its pid. initdb refuses to run as root, so as
 * root every server command runs as the `postgres` user, in a dir that user owns.
 *
 * Tests do not start a server each: `.ci/run` (through `scripts/with-postgres.sh`) starts one for
 * the whole run and exports its URL as SNAPFERRY_TEST_PG_URL; `pgTestUrl()` fails with a message
 * saying how to get one, unless SNAPFERRY_SKIP_PG=1 says to skip. Rejected: starting a server
 * per test file (a second or two each, and 7 agents share 2 cores) and a silent skip when
 * PostgreSQL is missing (a green run that tested nothing).
 */
import { execFile as execFileCb, spawnSync } from 'node:child_process';
import { chown, mkdtemp, readFile, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { randomBytes } from 'node:crypto';
import pg from 'pg';

const execFile = promisify(execFileCb);

export interface PgServer {
  /** `postgres://postgres@127.0.0.1:PORT/postgres` (trust authentication, loopback only). */
  url: string;
  port: number;
  pid: number;
  stop(): Promise<void>;
}

/** Directory of the PostgreSQL server binaries: $PG_BINDIR, else Debian's newest /usr/lib/postgresql/<ver>/bin. */
export function postgresBinDir(): string | null {
  if (process.env.PG_BINDIR) return process.env.PG_BINDIR;
  const root = '/usr/lib/postgresql';
  if (!existsSync(root)) return null;
  const versions = readdirSync(root).filter((v) => existsSync(join(root, v, 'bin', 'initdb'))).sort((a, b) => Number(b) - Number(a));
  return versions.length ? join(root, versions[0]!, 'bin') : null;
}

/** A loopback port nothing listens on (at the moment of asking). */
export async function freePort(): Promise<number> {
  return await new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

const isRoot = (): boolean => process.getuid?.() === 0;

/** Runs a server binary, as `postgres` when we are root (initdb and postgres refuse root). */
async function runPg(bin: string, args: string[]): Promise<{ stdout: string; stderr: string }> {
  const [cmd, argv] = isRoot() ? ['runuser', ['-u', 'postgres', '--', bin, ...args]] : [bin, args];
  return await execFile(cmd as string, argv as string[], { timeout: 120_000 });
}

/**
 * Starts a server. `durable: false` (tests) turns off fsync and synchronous commit: what the tests
 * check is concurrency, not power-loss durability, and the shared disk is slow. Benchmarks pass
 * `durable: true` so the comparison with SQLite (synchronous=FULL) is fair.
 */
export async function startPostgres(opts: { durable?: boolean } = {}): Promise<PgServer> {
  const bin = postgresBinDir();
  if (!bin) throw new Error('PostgreSQL server binaries not found (apt-get install -y postgresql, or set PG_BINDIR)');
  const dir = await mkdtemp(join(tmpdir(), 'snapferry-pg-'));
  try {
    if (isRoot()) {
      const { stdout } = await execFile('id', ['-u', 'postgres']);
      const { stdout: gid } = await execFile('id', ['-g', 'postgres']);
      await chown(dir, Number(stdout.trim()), Number(gid.trim()));
    }
    const data = join(dir, 'data');
    await runPg(join(bin, 'initdb'), ['-D', data, '-A', 'trust', '-U', 'postgres', '-E', 'UTF8', '--locale=C', '--no-sync']);
    const settings = [
      '-c listen_addresses=127.0.0.1', `-k ${dir}`, '-c max_connections=200',
      ...(opts.durable ? [] : ['-c fsync=off', '-c synchronous_commit=off', '-c full_page_writes=off']),
    ];
    // A port found free can be taken before the server binds it: try a few.
    for (let attempt = 0; ; attempt++) {
      const port = await freePort();
      try {
        await runPg(join(bin, 'pg_ctl'), ['-D', data, '-l', join(dir, 'server.log'), '-w', '-t', '60', '-o', `-p ${port} ${settings.join(' ')}`, 'start']);
      } catch (err) {
        const log = await readFile(join(dir, 'server.log'), 'utf8').catch(() => '');
        if (attempt < 3 && /could not bind|Address already in use/.test(log)) continue;
        throw new Error(`PostgreSQL did not start: ${String(err)}\n${log.slice(-2000)}`);
      }
      const pid = Number((await readFile(join(data, 'postmaster.pid'), 'utf8')).split('\n')[0]);
      let stopped = false;
      return {
        url: `postgres://postgres@127.0.0.1:${port}/postgres`,
        port,
        pid,
        stop: async () => {
          if (stopped) return;
          stopped = true;
          await runPg(join(bin, 'pg_ctl'), ['-D', data, '-m', 'fast', '-w', '-t', '30', 'stop']).catch(() => undefined);
          if (alive(pid)) process.kill(pid, 'SIGKILL');
          await rm(dir, { recursive: true, force: true });
        },
      };
    }
  } catch (err) {
    await rm(dir, { recursive: true, force: true });
    throw err;
  }
}

/** Whether `pid` runs (a zombie waiting for a reaper that never comes does not count). */
function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  try {
    return readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]?.[0] !== 'Z';
  } catch {
    return true;
  }
}

/** Synchronous last-resort stop (process 'exit' handlers cannot await). */
export function stopPostgresSync(server: PgServer): void {
  if (alive(server.pid)) spawnSync('kill', ['-TERM', String(server.pid)]);
}

export const PG_URL_MISSING =
  'SNAPFERRY_TEST_PG_URL is not set, so the PostgreSQL metadata tests cannot run. Run them with a throwaway server:\n' +
  '  scripts/with-postgres.sh npm test -- postgres\n' +
  '(needs Debian\'s postgresql package: apt-get install -y postgresql), or point SNAPFERRY_TEST_PG_URL at a server\n' +
  'where the user may CREATE DATABASE, or set SNAPFERRY_SKIP_PG=1 to skip them on purpose.';

/** The test server's URL; null only when SNAPFERRY_SKIP_PG=1 says to skip; otherwise throws. */
export function pgTestUrl(): string | null {
  const url = process.env.SNAPFERRY_TEST_PG_URL;
  if (url) return url;
  if (process.env.SNAPFERRY_SKIP_PG === '1') return null;
  throw new Error(PG_URL_MISSING);
}

/** `url` with another database name. */
export function withDatabase(url: string, database: string): string {
  const u = new URL(url);
  u.pathname = `/${database}`;
  return u.toString();
}

/**
 * A fresh, empty database on the server at `serverUrl`, and a drop that removes it (also when
 * connections to it are still open: `WITH (FORCE)`).
 * Rejected: a schema per test in one database; advisory-lock keys and `pg_stat_activity` would
 * then be shared between tests, and a test of "a schema newer than the program" could not be
 * isolated as plainly.
 */
export async function freshDatabase(serverUrl: string): Promise<{ url: string; name: string; drop(): Promise<void> }> {
  const name = `sf_test_${randomBytes(6).toString('hex')}`;
  await admin(serverUrl, `CREATE DATABASE ${name}`);
  return {
    url: withDatabase(serverUrl, name),
    name,
    drop: async () => void (await admin(serverUrl, `DROP DATABASE IF EXISTS ${name} WITH (FORCE)`)),
  };
}

export async function admin(serverUrl: string, sql: string, params: unknown[] = []): Promise<pg.QueryResult> {
  const client = new pg.Client({ connectionString: serverUrl });
  await client.connect();
  try {
    return await client.query(sql, params);
  } finally {
    await client.end();
  }
}

/**
 * A loopback server that answers every PostgreSQL startup with the error a real server gives for
 * a wrong password (SQLSTATE 28P01), so a test can check the message at open without a server set
 * up for password authentication. Closed by the caller.
 */
export async function wrongPasswordServer(): Promise<{ port: number; close(): Promise<void> }> {
  const server = createServer((socket) => {
    socket.once('data', () => {
      const fields = Buffer.concat([
        ...[['S', 'FATAL'], ['V', 'FATAL'], ['C', '28P01'], ['M', 'password authentication failed for user "snapferry"']].map(([k, v]) => Buffer.from(`${k}${v}\0`)),
        Buffer.from([0]),
      ]);
      const head = Buffer.alloc(5);
      head.write('E', 0);
      head.writeInt32BE(4 + fields.length, 1);
      socket.end(Buffer.concat([head, fields]));
    });
    socket.on('error', () => undefined);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    port: (server.address() as { port: number }).port,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}
