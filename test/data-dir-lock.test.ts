/**
 * One process per data dir, enforced by the kernel (src/lib/data-dir-lock.ts): racing starters,
 * a legacy pid file naming a live unrelated process, kill -9 and a zombie followed by an immediate
 * restart, and two servers in one process. Every child started here is stopped by its pid in
 * `after`, also when a test fails.
 */
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { loadServeConfig } from '../src/config.ts';
import { DataDirLockedError, LOCK_FILE } from '../src/lib/data-dir-lock.ts';
import { startServer, type RunningServer } from '../src/main.ts';
import { freePortRange } from './helpers/spawned-server.ts';

const BIN = new URL('../bin/snapferry.js', import.meta.url).pathname;
const KEYS = { SNAPFERRY_ACCESS_KEY_ID: 'lock-test-ak-0123456789', SNAPFERRY_SECRET_ACCESS_KEY: 'lock-test-sk' };
const LOCKED = /^snapferry: the data dir .+ is in use by another snapferry process$/;

const children = new Set<ChildProcess>();
const dirs: string[] = [];
after(async () => {
  // Only children not yet reaped: a reaped child's pid may already belong to someone else.
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

async function tempDir(): Promise<string> {
  const d = await mkdtemp(join(tmpdir(), 'snapferry-lock-'));
  dirs.push(d);
  return d;
}

interface Started {
  child: ChildProcess;
  out: () => string;
  err: () => string;
  /** 'ready' once the region's ready line is out, or the exit code if the process ended first. */
  outcome: Promise<'ready' | { code: number | null }>;
  exited: Promise<number | null>;
}

/** `snapferry serve` for region bj, as a child whose pid is recorded for `after`. */
function serve(dataDir: string, port: number, nbdPort: number): Started {
  const child = spawn(process.execPath, [BIN, 'serve', '--data-dir', dataDir, '--regions', 'bj', '--port', String(port), '--nbd-port', String(nbdPort)], {
    env: { ...process.env, ...KEYS },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  children.add(child);
  let out = '';
  let err = '';
  child.stdout!.on('data', (d) => (out += d));
  child.stderr!.on('data', (d) => (err += d));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const outcome = new Promise<'ready' | { code: number | null }>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ready line and no exit in 60 s\nstdout: ${out}\nstderr: ${err}`)), 60_000);
    child.stdout!.on('data', () => {
      if (out.includes('region bj ready')) {
        clearTimeout(timer);
        resolve('ready');
      }
    });
    void exited.then((code) => {
      clearTimeout(timer);
      resolve({ code });
    });
  });
  return { child, out: () => out, err: () => err, outcome, exited };
}

/** SIGTERM and wait for the exit (SIGKILL after 20 s). */
async function stop(s: Started): Promise<void> {
  if (s.child.exitCode !== null || s.child.signalCode !== null) return;
  process.kill(s.child.pid!, 'SIGTERM');
  const timer = setTimeout(() => process.kill(s.child.pid!, 'SIGKILL'), 20_000);
  await s.exited;
  clearTimeout(timer);
}

function assertRefusedClearly(s: Started, outcome: 'ready' | { code: number | null }): void {
  assert.notEqual(outcome, 'ready');
  assert.notEqual((outcome as { code: number | null }).code, 0);
  const lines = s.err().trim().split('\n');
  assert.equal(lines.length, 1, `one line, no stack:\n${s.err()}`);
  assert.match(lines[0]!, LOCKED);
}

test('two servers started at the same moment on one fresh data dir: exactly one serves, the other is refused clearly (12 trials)', async () => {
  for (let trial = 0; trial < 12; trial++) {
    const dataDir = await tempDir();
    const [pa, pb, na, nb] = await Promise.all([freePortRange(1), freePortRange(1), freePortRange(1), freePortRange(1)]);
    const a = serve(dataDir, pa, na);
    const b = serve(dataDir, pb, nb);
    try {
      const outcomes = await Promise.all([a.outcome, b.outcome]);
      const ready = outcomes.filter((o) => o === 'ready').length;
      assert.equal(ready, 1, `trial ${trial}: ${ready} servers became ready\nA: ${a.out()}${a.err()}\nB: ${b.out()}${b.err()}`);
      const loser = outcomes[0] === 'ready' ? b : a;
      assertRefusedClearly(loser, outcomes[0] === 'ready' ? outcomes[1]! : outcomes[0]!);
      // One credentials.json, whole, and no temporary file left by the starter that lost its creation.
      assert.equal(JSON.parse(readFileSync(join(dataDir, 'credentials.json'), 'utf8')).version, 1);
      assert.deepEqual(readdirSync(dataDir).filter((f) => f.endsWith('.tmp')), []);
    } finally {
      // kill -9 is enough here (the next trial uses a fresh data dir) and keeps the trials short.
      for (const s of [a, b]) if (s.child.exitCode === null && s.child.signalCode === null) s.child.kill('SIGKILL');
      await Promise.all([a.exited, b.exited]);
    }
  }
});

test('a legacy LOCK pid file naming a live unrelated process does not block the start, and is removed', async () => {
  const sleeper = spawn('sleep', ['60'], { stdio: 'ignore' });
  children.add(sleeper);
  const dataDir = await tempDir();
  await writeFile(join(dataDir, 'LOCK'), `${sleeper.pid}\n`);
  const s = serve(dataDir, await freePortRange(1), await freePortRange(1));
  try {
    assert.equal(await s.outcome, 'ready', s.err());
    assert.equal(existsSync(join(dataDir, 'LOCK')), false, 'the legacy pid file is gone once the new lock is held');
    assert.equal(existsSync(join(dataDir, LOCK_FILE)), true);
  } finally {
    await stop(s);
    sleeper.kill('SIGKILL');
  }
});

test('kill -9, then an immediate restart on the same data dir and ports works', async () => {
  const dataDir = await tempDir();
  const [port, nbdPort] = [await freePortRange(1), await freePortRange(1)];
  const first = serve(dataDir, port, nbdPort);
  assert.equal(await first.outcome, 'ready', first.err());
  process.kill(first.child.pid!, 'SIGKILL');
  // No waiting for the exit (nor for the parent to reap it): the kernel drops the lock as the process dies.
  const second = serve(dataDir, port, nbdPort);
  try {
    assert.equal(await second.outcome, 'ready', second.err());
  } finally {
    await stop(second);
  }
});

test('a server that died but is not reaped yet (a zombie) does not block a restart', async () => {
  const dataDir = await tempDir();
  const [port, nbdPort] = [await freePortRange(1), await freePortRange(1)];
  // sh starts the server in the background, prints its pid, then becomes `sleep`, which never reaps it.
  const parent = spawn('sh', ['-c', `"$0" "$1" serve --data-dir "$2" --regions bj --port "$3" --nbd-port "$4" & echo "pid $!"; exec sleep 120`, process.execPath, BIN, dataDir, String(port), String(nbdPort)], {
    env: { ...process.env, ...KEYS },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  children.add(parent);
  let out = '';
  parent.stdout!.on('data', (d) => (out += d));
  let serverPid = 0;
  try {
    const deadline = Date.now() + 60_000;
    while (!out.includes('region bj ready')) {
      serverPid ||= Number(/pid (\d+)/.exec(out)?.[1] ?? 0);
      assert.ok(Date.now() < deadline, `the first server did not get ready: ${out}`);
      await new Promise((r) => setTimeout(r, 50));
    }
    serverPid = Number(/pid (\d+)/.exec(out)![1]);
    process.kill(serverPid, 'SIGKILL');
    while (!/^\d+ \(.*\) Z/.test(readFileSync(`/proc/${serverPid}/stat`, 'utf8'))) await new Promise((r) => setTimeout(r, 20));
    // The old pid lock took a zombie for a live owner (kill(pid, 0) succeeds on it).
    const second = serve(dataDir, port, nbdPort);
    try {
      assert.equal(await second.outcome, 'ready', second.err());
    } finally {
      await stop(second);
    }
  } finally {
    // The server's pid cannot have been reused yet: its parent, `sleep`, is alive and has not reaped it.
    if (serverPid) process.kill(serverPid, 'SIGKILL');
    parent.kill('SIGKILL');
  }
});

test('in one process, a second startServer on the same data dir (also by another path) is refused until the first closes', async () => {
  const dataDir = await tempDir();
  const alias = join(await tempDir(), 'alias');
  await symlink(dataDir, alias);
  const devNull = new Writable({ write: (_c, _e, cb) => cb() });
  const config = async (dir: string) => loadServeConfig({ dataDir: dir, regions: 'bj', port: String(await freePortRange(1)), nbdPort: String(await freePortRange(1)) }, KEYS);
  const first: RunningServer = await startServer(await config(dataDir), devNull);
  let firstOpen = true;
  let third: RunningServer | null = null;
  try {
    for (const dir of [dataDir, alias]) {
      await assert.rejects(startServer(await config(dir), devNull), (e: Error) => {
        assert.ok(e instanceof DataDirLockedError, String(e));
        assert.equal(e.message, `the data dir ${dir} is in use by another snapferry process`);
        return true;
      });
    }
    // The refused attempts did not disturb the holder's lock: a child process is refused too.
    const child = serve(dataDir, await freePortRange(1), await freePortRange(1));
    assertRefusedClearly(child, await child.outcome);
    await first.close();
    firstOpen = false;
    third = await startServer(await config(dataDir), devNull);
  } finally {
    if (firstOpen) await first.close();
    await third?.close();
  }
});
