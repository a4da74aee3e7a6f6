/** `snapferry serve` as an operator meets it: first start, restarts, refusals, shutdown. */
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { chmod, mkdtemp, rm, stat, readFile, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runCli } from './helpers/cli.ts';
import { sdkClient, send } from './helpers/sdk.ts';
import { freePortRange, spawnServer } from './helpers/spawned-server.ts';

const dirs: string[] = [];
after(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});
async function tempDir(): Promise<string> {
  const d = await mkdtemp(join(tmpdir(), 'snapferry-serve-'));
  dirs.push(d);
  return d;
}
const noKeys = { SNAPFERRY_ACCESS_KEY_ID: '', SNAPFERRY_SECRET_ACCESS_KEY: '' };

test('first start generates the default key pair, keeps it 0600 in the data dir, prints it once; the keys work', async () => {
  const dataDir = await tempDir();
  const server = await spawnServer({ regions: ['bj'], dataDir, env: noKeys });
  try {
    const ak = /SNAPFERRY_ACCESS_KEY_ID=(\S+)/.exec(server.stdout())?.[1];
    const sk = /SNAPFERRY_SECRET_ACCESS_KEY=(\S+)/.exec(server.stdout())?.[1];
    assert.ok(ak && sk, server.stdout());
    const file = join(dataDir, 'credentials.json');
    assert.equal((await stat(file)).mode & 0o777, 0o600);
    assert.equal(JSON.parse(await readFile(file, 'utf8')).defaultAccount.accessKeyId, ak);
    assert.deepEqual((await send(sdkClient(server.urls.bj!, ak, sk), 'GET', '/v2/volume')).volumes, []);
    assert.equal(await server.stop(), 0);
    await server.restart();
    assert.doesNotMatch(server.stdout(), /SNAPFERRY_SECRET_ACCESS_KEY=/, 'printed only on the first start');
    assert.deepEqual((await send(sdkClient(server.urls.bj!, ak, sk), 'GET', '/v2/volume')).volumes, []);
  } finally {
    await server.dispose();
  }
});

test('refuses to start on a port in use, with a clear message and a non-zero exit', async () => {
  const port = await freePortRange(3);
  const blocker = createServer();
  await new Promise<void>((r) => blocker.listen(port + 1, '127.0.0.1', r));
  try {
    const r = await runCli(['serve', '--data-dir', await tempDir(), '--port', String(port), '--nbd-port', String(await freePortRange(3))], noKeys, 60_000);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, new RegExp(`region gz cannot listen on 127\\.0\\.0\\.1:${port + 1}: the port is in use`));
  } finally {
    blocker.close();
  }
});

test('refuses an unwritable data dir, an unknown region, a bad --peer, and a second server on the same data dir', async () => {
  const ro = await tempDir();
  await chmod(ro, 0o500);
  const cases: Array<[string[], RegExp]> = [
    [['--data-dir', join(ro, 'inner')], /data dir .* cannot be created or written/],
    [['--regions', 'bj,mars'], /unknown region "mars"/],
    [['--regions', 'bj', '--peer', 'hkg'], /--peer must look like/],
    [['--port', '70000'], /--port must be a port number/],
  ];
  const isRoot = process.getuid?.() === 0;
  for (const [args, message] of cases) {
    if (isRoot && args.includes(join(ro, 'inner'))) {
      // root ignores directory permissions; a file in the way makes the same failure.
      await writeFile(join(ro, 'file'), 'x');
      args[1] = join(ro, 'file', 'inner');
    }
    const dataDir = args.includes('--data-dir') ? [] : ['--data-dir', await tempDir()];
    const r = await runCli(['serve', ...dataDir, ...args], noKeys, 60_000);
    assert.equal(r.code, 2, `${args.join(' ')}: ${r.stderr}`);
    assert.match(r.stderr, message);
  }
  const dataDir = await tempDir();
  const first = await spawnServer({ regions: ['bj'], dataDir, env: noKeys });
  try {
    const r = await runCli(['serve', '--data-dir', dataDir, '--regions', 'bj', '--port', String(await freePortRange(1))], noKeys, 60_000);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /the data dir .* is in use by another snapferry process/);
  } finally {
    await first.dispose();
  }
});
