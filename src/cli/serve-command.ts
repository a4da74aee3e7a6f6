/**
 * `snapferry serve`: runs the configured regions until SIGTERM/SIGINT, then stops accepting,
 * lets requests in flight finish, stops jobs (they resume on the next start), closes databases and
 * exits 0.
 */
import { ConfigError, loadServeConfig, type ServeFlags } from '../config.ts';
import { startServer } from '../main.ts';
import { missingServeFlags } from './node-flags.ts';

export async function serveCommand(flags: ServeFlags): Promise<void> {
  let config;
  try {
    config = loadServeConfig(flags, process.env);
  } catch (e) {
    if (e instanceof ConfigError) fail(e.message);
    throw e;
  }
  if (config.generated.account) {
    const a = config.generated.account;
    process.stdout.write(
      `snapferry: generated the default account's key pair (kept in ${config.dataDir}/credentials.json, mode 0600; shown only now):\n` +
        `  SNAPFERRY_ACCESS_KEY_ID=${a.accessKeyId}\n  SNAPFERRY_SECRET_ACCESS_KEY=${a.secretAccessKey}\n`,
    );
  }
  let server;
  try {
    server = await startServer(config);
  } catch (e) {
    fail((e as Error).message);
  }
  const missing = missingServeFlags();
  if (missing.length > 0) {
    // Not an error: the service works without them, with a larger memory peak (node-flags.ts).
    // Said once it runs, so that a refused start stays one line.
    process.stderr.write(`snapferry: started without ${missing.join(' ')}; peak memory runs ~30 MiB higher (run \`npm start\`, or node ${missing.join(' ')} bin/snapferry.js serve)\n`);
  }
  let stopping = false;
  const stop = (signal: string): void => {
    if (stopping) return;
    stopping = true;
    process.stderr.write(`snapferry: ${signal} received, shutting down\n`);
    server.close().then(
      () => process.exit(0),
      (e) => {
        process.stderr.write(`snapferry: shutdown failed: ${String(e)}\n`);
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
}

function fail(message: string): never {
  process.stderr.write(`snapferry: ${message}\n`);
  process.exit(2);
}
