/**
 * `snapferry serve --nbd-tls require` as a user runs it: the key file comes from `snapferry nbd-psk`
 * (nothing asked of the server), libnbd's nbdinfo and nbdcopy reach the account's disk over
 * TLS-PSK, a plaintext client is refused, and another account's key neither sees nor opens it.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile as execFileCb } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { BceClient } from '../src/lib/bce-client.ts';
import { runCli } from './helpers/cli.ts';
import { send, sdkClient, waitVolume } from './helpers/sdk.ts';
import { spawnServer, type SpawnedServer } from './helpers/spawned-server.ts';

const execFile = promisify(execFileCb);
const ALICE = { accountId: 'alice', accessKeyId: 'nbd-tls-alice-key-000000', secretAccessKey: 'nbd-tls-alice-secret-11111' };
const BOB = { accountId: 'bob', accessKeyId: 'nbd-tls-bob-key-00000000', secretAccessKey: 'nbd-tls-bob-secret-2222222' };

let dir: string;
let server: SpawnedServer;
let volumeId: string;
const data = randomBytes(1 << 20);

async function pskFileOf(who: typeof ALICE): Promise<string> {
  const r = await runCli(['nbd-psk'], { SNAPFERRY_ACCESS_KEY_ID: who.accessKeyId, SNAPFERRY_SECRET_ACCESS_KEY: who.secretAccessKey });
  assert.equal(r.code, 0, r.stderr);
  const file = join(dir, `${who.accountId}.psk`);
  await writeFile(file, r.stdout, { mode: 0o600 });
  return file;
}

const uri = (who: typeof ALICE, file: string, name = volumeId): string =>
  `nbds://${who.accessKeyId}@127.0.0.1:${server.nbdPort}/${name}?tls-psk-file=${file}`;

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'snapferry-nbd-tls-'));
  const config = join(dir, 'config.json');
  await writeFile(config, JSON.stringify({ accounts: [ALICE, BOB] }));
  server = await spawnServer({ regions: ['bj'], dataDir: join(dir, 'data'), extraArgs: ['--config', config, '--nbd-tls', 'require'] });
  const sdk = sdkClient(server.urls.bj!, ALICE.accessKeyId, ALICE.secretAccessKey);
  volumeId = (await send(sdk, 'POST', '/v2/volume', { body: { cdsSizeInGB: 1 } })).volumeIds[0];
  await waitVolume(sdk, volumeId);
});
after(async () => {
  await server?.dispose();
  if (dir) await rm(dir, { recursive: true, force: true });
});

test('require: nbdcopy writes and reads the account\'s disk over TLS-PSK with the key `snapferry nbd-psk` printed', async () => {
  const psk = await pskFileOf(ALICE);
  const info = JSON.parse((await execFile('nbdinfo', ['--json', uri(ALICE, psk)])).stdout);
  assert.equal(info.TLS, true);
  assert.equal(info.exports[0]['export-size'], 1 << 30);
  const src = join(dir, 'in.raw');
  await writeFile(src, data);
  await execFile('nbdcopy', [src, uri(ALICE, psk)]);
  // The bytes went to the disk: read back over HTTP, and over NBD again.
  const http = new BceClient(server.urls.bj!, { accessKeyId: ALICE.accessKeyId, secretAccessKey: ALICE.secretAccessKey });
  try {
    const res = await http.send({ method: 'GET', path: `/v2/volume/${volumeId}/data`, headers: { range: `bytes=0-${data.length - 1}` } });
    assert.ok(Buffer.from(await res.body.arrayBuffer()).equals(data));
  } finally {
    await http.close();
  }
  const out = join(dir, 'out.raw');
  await execFile('nbdcopy', [uri(ALICE, psk), out]);
  assert.ok((await readFile(out)).subarray(0, data.length).equals(data));
});

test('require: a plaintext client is refused; another account\'s key neither lists nor opens the disk', async () => {
  await assert.rejects(execFile('nbdinfo', [`nbd://127.0.0.1:${server.nbdPort}/${volumeId}`]));
  const bobPsk = await pskFileOf(BOB);
  await assert.rejects(execFile('nbdinfo', [uri(BOB, bobPsk)]), 'Bob cannot open Alice\'s disk');
  const listed = (await execFile('nbdinfo', ['--list', '--json', uri(BOB, bobPsk, '')])).stdout;
  assert.doesNotMatch(listed, new RegExp(volumeId), 'Bob\'s list does not name Alice\'s disk');
  // A key file with the right identity and a wrong key fails the handshake.
  const wrong = join(dir, 'wrong.psk');
  await writeFile(wrong, `${ALICE.accessKeyId}:${randomBytes(32).toString('hex')}\n`, { mode: 0o600 });
  await assert.rejects(execFile('nbdinfo', [uri(ALICE, wrong)]));
});
