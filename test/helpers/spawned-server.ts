/**
 * Starts `snapferry serve` as a real child process on free loopback ports and stops it again. Every
 * process started here is killed in `stop()` (tests call it in `after`, also on failure), so no
 * child outlives the test run.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { TEST_METRICS_TOKEN } from './metrics.ts';
import { SERVE_NODE_FLAGS } from '../../src/cli/node-flags.ts';

const BIN = new URL('../../bin/snapferry.js', import.meta.url).pathname;

async function portFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = createServer();
    s.once('error', () => resolve(false));
    s.listen(port, '127.0.0.1', () => s.close(() => resolve(true)));
  });
}

/** A run of `n` consecutive free ports on 127.0.0.1. */
export async function freePortRange(n: number): Promise<number> {
  for (let attempt = 0; attempt < 200; attempt++) {
    // Below Linux's ephemeral range (32768-60999 by default), so no outgoing connection of this
    // machine takes the port between this check and the server's listen, or while a crashed server
    // is down before its restart on the same port (CI saw "the port is in use" so).
    const base = 20000 + Math.floor(Math.random() * (32768 - 20000 - n));
    let ok = true;
    for (let i = 0; i < n && ok; i++) ok = await portFree(base + i);
    if (ok) return base;
  }
  throw new Error('no free port range found');
}

export interface SpawnedServer {
  dataDir: string;
  port: number;
  nbdPort: number;
  urls: Record<string, string>;
  child: ChildProcess;
  stdout: () => string;
  stderr: () => string;
  /** SIGTERM and wait; returns the exit code. */
  stop(signal?: NodeJS.Signals): Promise<number | null>;
  /** kill -9 (crash), then wait for the process to be gone. */
  crash(): Promise<void>;
  /** Starts the same server again on the same data dir and ports. */
  restart(): Promise<void>;
  /** Stops the server and removes its data dir. */
  dispose(): Promise<void>;
}

export interface SpawnOptions {
  regions?: string[];
  env?: Record<string, string>;
  extraArgs?: string[];
  dataDir?: string;
  port?: number;
}

export async function spawnServer(opts: SpawnOptions = {}): Promise<SpawnedServer> {
  // Another test may take a picked port before this server listens on it: pick again, a few times.
  for (let attempt = 1; ; attempt++) {
    try {
      return await spawnServerOnce(opts);
    } catch (e) {
      if (opts.port !== undefined || attempt >= 5 || !/the port is in use/.test((e as Error).message)) throw e;
    }
  }
}

async function spawnServerOnce(opts: SpawnOptions): Promise<SpawnedServer> {
  const regions = opts.regions ?? ['bj', 'gz', 'hkg'];
  const dataDir = opts.dataDir ?? (await mkdtemp(join(tmpdir(), 'snapferry-e2e-')));
  const port = opts.port ?? (await freePortRange(regions.length));
  // Two independent picks can land on the same free range (nothing holds the ports between them):
  // pick again until the NBD range is disjoint from the HTTP one, which the server insists on.
  let nbdPort = await freePortRange(regions.length);
  while (nbdPort < port + regions.length && port < nbdPort + regions.length) nbdPort = await freePortRange(regions.length);
  let out = '';
  let err = '';
  let child!: ChildProcess;
  let exited!: Promise<number | null>;

  const start = async (): Promise<void> => {
    out = '';
    child = spawn(process.execPath, [...SERVE_NODE_FLAGS, BIN, 'serve', '--data-dir', dataDir, '--regions', regions.join(','), '--port', String(port), '--nbd-port', String(nbdPort), ...(opts.extraArgs ?? [])], {
      env: { ...process.env, SNAPFERRY_METRICS_TOKEN: TEST_METRICS_TOKEN, ...opts.env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    exited = new Promise((resolve) => child.once('exit', (code) => resolve(code)));
    child.stdout!.on('data', (d) => (out += d));
    child.stderr!.on('data', (d) => (err += d));
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`server did not get ready in 30 s\nstdout: ${out}\nstderr: ${err}`)), 30_000);
      const check = (): void => {
        if (regions.every((r) => out.includes(`region ${r} ready`))) {
          clearTimeout(timer);
          resolve();
        }
      };
      child.stdout!.on('data', check);
      void exited.then((code) => {
        clearTimeout(timer);
        reject(new Error(`server exited with ${code} before it was ready\nstdout: ${out}\nstderr: ${err}`));
      });
    });
  };
  try {
    await start();
  } catch (e) {
    if (!opts.dataDir) await rm(dataDir, { recursive: true, force: true });
    throw e;
  }

  const server: SpawnedServer = {
    dataDir,
    port,
    nbdPort,
    urls: Object.fromEntries(regions.map((r, i) => [r, `http://127.0.0.1:${port + i}`])),
    get child() {
      return child;
    },
    stdout: () => out,
    stderr: () => err,
    async stop(signal = 'SIGTERM') {
      if (child.exitCode !== null || child.signalCode !== null) return child.exitCode;
      child.kill(signal);
      const timer = setTimeout(() => child.kill('SIGKILL'), 20_000);
      const code = await exited;
      clearTimeout(timer);
      return code;
    },
    async crash() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill('SIGKILL');
      await exited;
    },
    async restart() {
      await start();
    },
    async dispose() {
      await server.crash();
      if (!opts.dataDir) await rm(dataDir, { recursive: true, force: true });
    },
  };
  return server;
}
