/**
 * `scripts/with-postgres.sh CMD [ARGS...]`: starts a throwaway PostgreSQL server (loopback, free
 * port, temp dir), runs CMD with SNAPFERRY_TEST_PG_URL set to it, stops the server by its pid
 * when CMD ends (also on SIGINT/SIGTERM) and exits with CMD's exit code. Used by `.ci/run` around
 * the test run, and by a developer: `scripts/with-postgres.sh npm test -- postgres`.
 * With SNAPFERRY_TEST_PG_URL already set it only runs CMD (an outer wrapper, or a server of yours).
 */
import { spawn } from 'node:child_process';
import { startPostgres, stopPostgresSync } from '../test/helpers/postgres-server.ts';

const [cmd, ...args] = process.argv.slice(2);
if (!cmd) {
  console.error('usage: scripts/with-postgres.sh CMD [ARGS...]');
  process.exit(2);
}

async function main(): Promise<number> {
  if (process.env.SNAPFERRY_TEST_PG_URL) return await run({ ...process.env });
  const server = await startPostgres({ durable: process.env.SNAPFERRY_PG_DURABLE === '1' });
  // If we are killed before the child ends, still stop the server (synchronously: 'exit' cannot await).
  const lastResort = (): void => stopPostgresSync(server);
  process.on('exit', lastResort);
  console.error(`with-postgres: PostgreSQL (pid ${server.pid}) on ${server.url}`);
  try {
    return await run({ ...process.env, SNAPFERRY_TEST_PG_URL: server.url });
  } finally {
    await server.stop();
    process.off('exit', lastResort);
    console.error(`with-postgres: PostgreSQL (pid ${server.pid}) stopped`);
  }
}

function run(env: NodeJS.ProcessEnv): Promise<number> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd!, args, { stdio: 'inherit', env });
    const forward = (sig: NodeJS.Signals): void => void child.kill(sig);
    process.on('SIGINT', forward);
    process.on('SIGTERM', forward);
    child.once('error', reject);
    child.once('exit', (code, signal) => {
      process.off('SIGINT', forward);
      process.off('SIGTERM', forward);
      resolve(code ?? (signal ? 128 + 15 : 1));
    });
  });
}

main().then(
  (code) => process.exit(code),
  (err) => {
    console.error(`with-postgres: ${err instanceof Error ? err.message : String(err)}`);
    process.exit(1);
  },
);
