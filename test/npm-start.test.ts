/**
 * `npm start` as a process manager (systemd, a container runtime, a supervisor) uses it: it signals
 * the pid it started, npm's. The server must stop with it, not be left running as an orphan. npm
 * forwards SIGTERM and SIGINT to its child, so the script `exec`s the server instead of leaving a
 * shell in between (a shell dies of the signal without passing it on).
 */
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePortRange } from './helpers/spawned-server.ts';
import { SERVE_NODE_FLAGS } from '../src/cli/node-flags.ts';

const ROOT = new URL('..', import.meta.url).pathname;
const KEYS = { SNAPFERRY_ACCESS_KEY_ID: 'npm-start-ak-0123456789', SNAPFERRY_SECRET_ACCESS_KEY: 'npm-start-sk' };

const npms = new Set<ChildProcess>();
const servers = new Set<number>();
const dirs: string[] = [];
after(async () => {
  for (const pid of servers) if (isServer(pid)) process.kill(pid, 'SIGKILL');
  for (const c of npms) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

function readProc(pid: number, file: string): string | null {
  try {
    return readFileSync(`/proc/${pid}/${file}`, 'utf8');
  } catch {
    return null;
  }
}

/** Whether `pid` is (still) a live snapferry server: checked by its command line, so never another process reusing the pid. */
function isServer(pid: number): boolean {
  const stat = readProc(pid, 'stat');
  const cmdline = readProc(pid, 'cmdline')?.split('\0') ?? [];
  return stat !== null && !/^\d+ \(.*\) [ZX]/s.test(stat) && cmdline.some((a) => a.endsWith('bin/snapferry.js')) && cmdline.includes('serve');
}

/** Pids of every live descendant of `root`. */
function descendants(root: number): number[] {
  const parentOf = new Map<number, number>();
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    const stat = readProc(Number(name), 'stat');
    const m = stat && /^\d+ \(.*\) \S (\d+)/s.exec(stat);
    if (m) parentOf.set(Number(name), Number(m[1]));
  }
  const found: number[] = [];
  const walk = (p: number): void => {
    for (const [child, parent] of parentOf) if (parent === p) {
      found.push(child);
      walk(child);
    }
  };
  walk(root);
  return found;
}

async function portAnswers(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect(port, '127.0.0.1');
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

for (const signal of ['SIGTERM', 'SIGINT'] as const) {
  test(`${signal} to the npm pid of \`npm start\` stops the server within seconds and frees its port`, async () => {
    const dataDir = await mkdtemp(join(tmpdir(), 'snapferry-npm-start-'));
    dirs.push(dataDir);
    const [port, nbdPort] = [await freePortRange(1), await freePortRange(1)];
    const npm = spawn('npm', ['start', '--', '--data-dir', dataDir, '--port', String(port), '--nbd-port', String(nbdPort), '--regions', 'bj'], {
      cwd: ROOT,
      env: { ...process.env, ...KEYS },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    npms.add(npm);
    let out = '';
    npm.stdout!.on('data', (d) => (out += d));
    npm.stderr!.on('data', (d) => (out += d));
    const npmExited = new Promise<number | null>((resolve) => npm.once('exit', (code) => resolve(code)));

    const deadline = Date.now() + 60_000;
    while (!out.includes('region bj ready')) {
      assert.ok(Date.now() < deadline && npm.exitCode === null, `npm start did not get ready:\n${out}`);
      await new Promise((r) => setTimeout(r, 50));
    }
    const server = descendants(npm.pid!).find(isServer);
    assert.ok(server, `no server process under npm ${npm.pid}`);
    servers.add(server);
    // V8 takes its heap flags only at start: the server npm started runs with them, and says nothing of missing ones.
    const argv = readProc(server, 'cmdline')!.split('\0');
    for (const flag of SERVE_NODE_FLAGS) assert.ok(argv.includes(flag), `the server runs with ${flag}: ${argv.join(' ')}`);
    assert.doesNotMatch(out, /started without/);
    assert.equal(await portAnswers(port), true);

    process.kill(npm.pid!, signal);
    const stopBy = Date.now() + 10_000;
    while (isServer(server)) {
      assert.ok(Date.now() < stopBy, `the server ${server} still runs 10 s after ${signal} to npm ${npm.pid}:\n${out}`);
      await new Promise((r) => setTimeout(r, 50));
    }
    assert.equal(await portAnswers(port), false, 'the port is free');
    assert.match(out, new RegExp(`snapferry: ${signal} received, shutting down`));
    assert.equal(await npmExited, 0, out);
  });
}
