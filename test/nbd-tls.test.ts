/**
 * NBD authentication: TLS with a pre-shared key per account (NBD_OPT_STARTTLS), against real
 * clients (nbdinfo and nbdcopy through libnbd/GnuTLS, qemu-img and qemu-io through QEMU/GnuTLS) and
 * a raw client for the exact bytes. Servers run in-process over one real region (SQLite, disks,
 * the accounts Alice and Bob) in each mode: `require`, `on` and `off`; the PSK files come from the
 * real `snapferry nbd-psk` command. Every child process is killed by pid in `after`.
 *
 * What must hold: a client opens, lists and describes only its own account's disks; another
 * account's disk answers exactly like a missing one; a wrong key (or an unknown identity) fails the
 * TLS handshake, indistinguishably; with `require` nothing but STARTTLS/ABORT is served in
 * plaintext; with `off` STARTTLS is refused politely and plaintext works as before.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import { after, before, describe, it } from 'node:test';
import * as C from '../src/blockdev/nbd/constants.ts';
import { nbdPskKey, pskFileLine, startNbdServer, type NbdServer, type NbdTlsMode } from '../src/blockdev/nbd/index.ts';
import { DiskExports } from '../src/services/disk-exports.ts';
import { runCli } from './helpers/cli.ts';
import { killAllChildren, runTool, runToolOk, sha256, sha256File, waitFor, type LogEntry } from './helpers/nbd-harness.ts';
import { RawNbdClient } from './helpers/nbd-raw-client.ts';
import { keysOf, nbdsUri, qemuNbdOpts, qemuPskObject, writePskFile } from './helpers/nbd-tls.ts';
import { ALICE, BOB, bobKeys, startHarness, type Harness } from './helpers/region-harness.ts';

const MiB = 1 << 20;
const GiB = 1 << 30;
const MISSING = 'v-zz000000';

let h: Harness;
let dir: string;
let aliceDisk: string;
/** Alice's second disk, written only by the QEMU test. */
let aliceQemuDisk: string;
let bobDisk: string;
const servers = new Map<NbdTlsMode, NbdServer>();
const logs = new Map<NbdTlsMode, LogEntry[]>();
const psk = { alice: '', bob: '', wrong: '', nobody: '' };
let qemuDir: string;
let qemuWrongDir: string;

const port = (mode: NbdTlsMode): number => servers.get(mode)!.port;
const plain = (mode: NbdTlsMode, name = ''): string => `nbd://127.0.0.1:${port(mode)}/${name}`;
const aliceUri = (mode: NbdTlsMode, name: string): string => nbdsUri(ALICE.accessKeyId, port(mode), name, psk.alice);
const bobUri = (mode: NbdTlsMode, name: string): string => nbdsUri(BOB.accessKeyId, port(mode), name, psk.bob);
const aliceKey = nbdPskKey(ALICE.secretAccessKey);
const bobKey = nbdPskKey(BOB.secretAccessKey);

async function volumeStatus(id: string, keys = {}): Promise<string> {
  return (await h.call('GET', `/v2/volume/${id}`, undefined, keys)).json.volume?.status;
}

async function newDisk(keys = {}): Promise<string> {
  const [id] = (await h.call('POST', '/v2/volume', { cdsSizeInGB: 1 }, keys)).json.volumeIds;
  await h.waitFor(async () => (await volumeStatus(id, keys)) === 'Available');
  return id;
}

async function listNames(uri: string): Promise<string[]> {
  const r = await runToolOk('nbdinfo', ['--list', '--json', uri]);
  return (JSON.parse(r.stdout).exports as Array<{ 'export-name': string }>).map((e) => e['export-name']).sort();
}

async function connect(mode: NbdTlsMode): Promise<RawNbdClient> {
  const c = await RawNbdClient.connect(port(mode));
  await c.start();
  return c;
}

/** An option's single reply (type and message). */
async function ask(c: RawNbdClient, option: number, data?: Buffer): Promise<{ type: number; message: string }> {
  c.sendOption(option, data);
  const replies = await c.readOptionReplies();
  const last = replies.at(-1)!;
  return { type: last.type >>> 0, message: last.data.toString('utf8') };
}

before(async () => {
  h = await startHarness('bj');
  dir = await mkdtemp(path.join(os.tmpdir(), 'snapferry-nbd-tls-'));
  aliceDisk = await newDisk();
  aliceQemuDisk = await newDisk();
  bobDisk = await newDisk({ keys: bobKeys });
  const exports = new DiskExports(h.region);
  for (const mode of ['require', 'on', 'off'] as const) {
    const entries: LogEntry[] = [];
    logs.set(mode, entries);
    servers.set(
      mode,
      await startNbdServer({
        host: '127.0.0.1',
        port: 0,
        exports,
        tls: { mode, keyFor: keysOf(h.config.accounts), exportsFor: (accountId) => exports.forAccount(accountId) },
        log: (level, msg, fields) => entries.push({ level, msg, fields }),
      }),
    );
  }
  // The PSK files the documented way: `snapferry nbd-psk` with each account's keys.
  for (const [who, a] of [['alice', ALICE], ['bob', BOB]] as const) {
    const r = await runCli(['nbd-psk'], { SNAPFERRY_ACCESS_KEY_ID: a.accessKeyId, SNAPFERRY_SECRET_ACCESS_KEY: a.secretAccessKey });
    assert.equal(r.code, 0, r.stderr);
    psk[who] = await writePskFile(path.join(dir, `${who}.psk`), r.stdout);
  }
  psk.wrong = await writePskFile(path.join(dir, 'wrong.psk'), `${ALICE.accessKeyId}:${randomBytes(32).toString('hex')}`);
  psk.nobody = await writePskFile(path.join(dir, 'nobody.psk'), `nobody-ak-0123456789abcdef:${randomBytes(32).toString('hex')}`);
  qemuDir = path.join(dir, 'qemu');
  await writePskFile(path.join(qemuDir, 'keys.psk'), await readFile(psk.alice, 'utf8'));
  qemuWrongDir = path.join(dir, 'qemu-wrong');
  await writePskFile(path.join(qemuWrongDir, 'keys.psk'), await readFile(psk.wrong, 'utf8'));
});

after(async () => {
  await killAllChildren();
  for (const s of servers.values()) await s.close();
  await h?.close();
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe('NBD TLS-PSK', () => {
  it('snapferry nbd-psk prints ACCESS_KEY_ID:hex(HMAC-SHA256(secret, "snapferry-nbd-psk-v1")), the key the server expects; --output writes it 0600', async () => {
    // The derivation, pinned (openssl dgst -sha256 -hmac sk <<< "snapferry-nbd-psk-v1", no newline).
    assert.equal(pskFileLine('ak', 'sk'), 'ak:69584c1e1be23ec3dd45ad7b7af13bb43708a8cba2f5b83c5a95ebff20fd6281');
    const env = { SNAPFERRY_ACCESS_KEY_ID: 'ak', SNAPFERRY_SECRET_ACCESS_KEY: 'sk' };
    const printed = await runCli(['nbd-psk'], env);
    assert.equal(printed.code, 0, printed.stderr);
    assert.equal(printed.stdout, `${pskFileLine('ak', 'sk')}\n`, 'the CLI derives the same key as the server');
    assert.equal(await readFile(psk.alice, 'utf8'), `${pskFileLine(ALICE.accessKeyId, ALICE.secretAccessKey)}\n`);
    const out = path.join(dir, 'written.psk');
    await writeFile(out, 'old content that is longer than the new line, to be replaced entirely\n'.repeat(3), { mode: 0o644 });
    const written = await runCli(['nbd-psk', '--output', out], env);
    assert.equal(written.code, 0, written.stderr);
    assert.equal(written.stdout, '');
    assert.equal(await readFile(out, 'utf8'), `${pskFileLine('ak', 'sk')}\n`);
    assert.equal((await stat(out)).mode & 0o777, 0o600);
    const missing = await runCli(['nbd-psk'], { SNAPFERRY_ACCESS_KEY_ID: '', SNAPFERRY_SECRET_ACCESS_KEY: '' });
    assert.equal(missing.code, 2);
    assert.match(missing.stderr, /SNAPFERRY_ACCESS_KEY_ID/);
  });

  it('require: nbdinfo and nbdcopy (libnbd, GnuTLS) describe, write and read back Alice\'s disk through TLS-PSK, bit-identical', async () => {
    const info = JSON.parse((await runToolOk('nbdinfo', ['--json', aliceUri('require', aliceDisk)])).stdout);
    assert.equal(info.TLS, true);
    assert.equal(info.exports[0]['export-name'], aliceDisk);
    assert.equal(info.exports[0]['export-size'], GiB);

    const image = randomBytes(8 * MiB + 4096);
    const src = path.join(dir, 'image.raw');
    await writeFile(src, image);
    await runToolOk('nbdcopy', ['--flush', src, aliceUri('require', aliceDisk)]);
    // The bytes are on the disk itself (read over the HTTP data API, Alice's signature).
    const http = await h.call('GET', `/v2/volume/${aliceDisk}/data`, undefined, { headers: { range: `bytes=0-${image.length - 1}` } });
    assert.equal(sha256(http.raw), sha256(image), 'the disk holds what nbdcopy wrote');
    const out = path.join(dir, 'out.raw');
    await runToolOk('nbdcopy', [aliceUri('require', aliceDisk), out]);
    assert.equal(await sha256File(out, image.length), sha256(image));
    assert.equal((await stat(out)).size, GiB);
    await rm(out);
    const established = logs.get('require')!.filter((l) => l.msg === 'nbd tls established');
    assert.ok(established.length >= 3, 'every client went through TLS');
    assert.ok(established.every((l) => l.fields.account === 'alice' && l.fields.identity === ALICE.accessKeyId));
    await waitFor(() => servers.get('require')!.connectionCount() === 0, 10_000, 'connections closed');
    assert.equal(await volumeStatus(aliceDisk), 'Available');
  });

  it('require: qemu-img and qemu-io (tls-creds-psk, keys.psk) write and read Alice\'s disk; TLS 1.2 (ECDHE-PSK) works too', async () => {
    const image = randomBytes(2 * MiB);
    const src = path.join(dir, 'qemu-src.raw');
    await writeFile(src, image);
    const object = qemuPskObject(qemuDir, ALICE.accessKeyId);
    await runToolOk('qemu-img', ['convert', '-n', '-f', 'raw', '--object', object, '--target-image-opts', src, qemuNbdOpts(port('require'), aliceQemuDisk)]);
    // The disk is 1 GiB, the image 2 MiB: compare checks the rest reads as zeros.
    const cmp = await runToolOk('qemu-img', ['compare', '--object', object, '--image-opts', `driver=raw,file.filename=${src}`, qemuNbdOpts(port('require'), aliceQemuDisk)]);
    assert.match(cmp.stdout, /Images are identical/);
    const io = await runToolOk('qemu-io', [
      '--object', object, '--image-opts', qemuNbdOpts(port('require'), aliceQemuDisk),
      '-c', 'write -P 0x5a 1234 7777', '-c', 'read -P 0x5a 1234 7777', '-c', `read -P 0 ${2 * MiB} 65536`,
    ]);
    assert.doesNotMatch(io.stdout + io.stderr, /fail|error/i, io.stdout + io.stderr);
    const http = await h.call('GET', `/v2/volume/${aliceQemuDisk}/data`, undefined, { headers: { range: 'bytes=1234-9010' } });
    assert.ok(http.raw.equals(Buffer.alloc(7777, 0x5a)));

    // A client that offers only TLS 1.2 gets an ECDHE-PSK suite (forward secrecy).
    const tls12 = await runToolOk('qemu-io', [
      '--object', qemuPskObject(qemuDir, ALICE.accessKeyId, ',priority=NORMAL:-VERS-TLS1.3'), '--image-opts', qemuNbdOpts(port('require'), aliceQemuDisk),
      '-c', 'read -P 0x5a 1234 7777',
    ]);
    assert.doesNotMatch(tls12.stdout + tls12.stderr, /fail|error/i);
    const versions = logs.get('require')!.filter((l) => l.msg === 'nbd tls established').map((l) => `${l.fields.tls} ${l.fields.cipher}`);
    assert.ok(versions.some((v) => v.startsWith('TLSv1.3 ')), versions.join('\n'));
    assert.ok(versions.some((v) => /^TLSv1\.2 TLS_ECDHE_PSK_/.test(v)), versions.join('\n'));
  });

  it('a wrong key fails the TLS handshake, exactly as an unknown identity does; nothing is opened', async () => {
    const before = logs.get('require')!.length;
    const wrong = await runTool('nbdinfo', [nbdsUri(ALICE.accessKeyId, port('require'), aliceDisk, psk.wrong)]);
    const nobody = await runTool('nbdinfo', [nbdsUri('nobody-ak-0123456789abcdef', port('require'), aliceDisk, psk.nobody)]);
    assert.notEqual(wrong.code, 0);
    assert.match(wrong.stderr, /gnutls_handshake|TLS/i);
    assert.equal(nobody.code, wrong.code);
    assert.equal(nobody.stderr, wrong.stderr, 'a known identity with a wrong key and an unknown identity look the same');
    const qemu = await runTool('qemu-img', ['info', '--object', qemuPskObject(qemuWrongDir, ALICE.accessKeyId), '--image-opts', qemuNbdOpts(port('require'), aliceDisk)]);
    assert.notEqual(qemu.code, 0);
    assert.match(qemu.stderr, /TLS handshake failed/);
    const seen = logs.get('require')!.slice(before);
    const failed = seen.filter((l) => l.msg === 'nbd tls handshake failed');
    assert.deepEqual(failed.map((l) => l.fields.identity), [ALICE.accessKeyId, 'nobody-ak-0123456789abcdef', ALICE.accessKeyId]);
    assert.equal(seen.filter((l) => l.msg === 'nbd export opened' || l.msg === 'nbd tls established').length, 0);
    assert.equal(await volumeStatus(aliceDisk), 'Available');
  });

  it('Bob\'s key lists only Bob\'s disks and cannot open or describe Alice\'s: the answer is the one for a missing disk, also while she holds it', async () => {
    assert.deepEqual(await listNames(bobUri('require', '')), [bobDisk]);
    assert.deepEqual(await listNames(aliceUri('require', '')), [aliceDisk, aliceQemuDisk].sort());
    const foreign = await runTool('nbdinfo', [bobUri('require', aliceDisk)]);
    const missing = await runTool('nbdinfo', [bobUri('require', MISSING)]);
    assert.notEqual(foreign.code, 0);
    assert.equal(foreign.code, missing.code);
    assert.equal(foreign.stderr.replaceAll(aliceDisk, 'ID'), missing.stderr.replaceAll(MISSING, 'ID'));
    const qemu = await runTool('qemu-img', ['info', '--object', qemuPskObject(qemuDir, BOB.accessKeyId), '--image-opts', qemuNbdOpts(port('require'), aliceDisk)]);
    assert.notEqual(qemu.code, 0, 'Alice\'s keys.psk has no key for Bob: the handshake fails');

    // Exact replies, through Node's TLS client as Bob: INFO and GO of Alice's disk, of a missing one.
    const infoData = (name: string) => RawNbdClient.goData(name, [C.NBD_INFO_NAME, C.NBD_INFO_DESCRIPTION]);
    const asBob = async (): Promise<RawNbdClient> => (await connect('require')).startTls(BOB.accessKeyId, bobKey);
    const bob = await asBob();
    const same = async (option: number): Promise<void> => {
      const a = await ask(bob, option, infoData(aliceDisk));
      const m = await ask(bob, option, infoData(MISSING));
      assert.equal(a.type, C.NBD_REP_ERR_UNKNOWN >>> 0);
      assert.deepEqual({ ...a, message: a.message.replaceAll(aliceDisk, 'ID') }, { ...m, message: m.message.replaceAll(MISSING, 'ID') });
    };
    await same(C.NBD_OPT_INFO);
    await same(C.NBD_OPT_GO);
    // While Alice is connected to her disk, Bob still gets "unknown", not "busy".
    const alice = await (await connect('require')).startTls(ALICE.accessKeyId, aliceKey);
    alice.sendOption(C.NBD_OPT_GO, RawNbdClient.goData(aliceDisk));
    assert.equal((await alice.readOptionReplies()).at(-1)!.type, C.NBD_REP_ACK);
    await h.waitFor(async () => (await volumeStatus(aliceDisk)) === 'InUse');
    await same(C.NBD_OPT_GO);
    assert.equal((await ask(bob, C.NBD_OPT_GO, infoData(bobDisk))).type, C.NBD_REP_ACK, 'his own disk opens');
    bob.destroy();
    alice.destroy();
    await h.waitFor(async () => (await volumeStatus(aliceDisk)) === 'Available' && (await volumeStatus(bobDisk, { keys: bobKeys })) === 'Available');
  });

  it('require: a plaintext client gets NBD_REP_ERR_TLS_REQD for every option but STARTTLS and ABORT; EXPORT_NAME is a disconnect; nbdinfo and qemu-img fail naming TLS', async () => {
    const r = await runTool('nbdinfo', [plain('require', aliceDisk)], 30_000);
    assert.notEqual(r.code, 0);
    // libnbd prints the server's message only in its debug output.
    const debug = await runTool('nbdinfo', ['--list', plain('require')], 30_000, { LIBNBD_DEBUG: '1' });
    assert.notEqual(debug.code, 0);
    assert.match(debug.stderr, /server error message: this server requires TLS/);
    const qemu = await runTool('qemu-img', ['info', plain('require', aliceDisk)]);
    assert.notEqual(qemu.code, 0);
    assert.match(qemu.stderr, /TLS/);

    const c = await connect('require');
    const required = C.NBD_REP_ERR_TLS_REQD >>> 0;
    assert.equal((await ask(c, C.NBD_OPT_LIST)).type, required);
    assert.equal((await ask(c, C.NBD_OPT_STRUCTURED_REPLY)).type, required);
    assert.equal((await ask(c, C.NBD_OPT_INFO, RawNbdClient.goData(aliceDisk))).type, required);
    assert.equal((await ask(c, C.NBD_OPT_GO, RawNbdClient.goData(aliceDisk))).type, required);
    assert.equal((await ask(c, C.NBD_OPT_SET_META_CONTEXT, RawNbdClient.metaData(aliceDisk, [C.BASE_ALLOCATION]))).type, required);
    assert.equal((await ask(c, 0x4242, Buffer.from('whatever'))).type, required);
    assert.equal((await ask(c, C.NBD_OPT_ABORT)).type, C.NBD_REP_ACK);
    assert.equal(await c.closedByServer(), true);

    const e = await connect('require');
    e.sendOption(C.NBD_OPT_EXPORT_NAME, Buffer.from(aliceDisk));
    assert.equal(await e.closedByServer(), true);
    assert.equal(e.pendingBytes, 0, 'no export reply');
    assert.equal(await volumeStatus(aliceDisk), 'Available');
  });

  it('off: STARTTLS is refused with NBD_REP_ERR_POLICY, plaintext works and sees every disk; a TLS-only client gives up', async () => {
    const c = await connect('off');
    const refused = await ask(c, C.NBD_OPT_STARTTLS);
    assert.equal(refused.type, C.NBD_REP_ERR_POLICY >>> 0);
    c.sendOption(C.NBD_OPT_LIST);
    const names = (await c.readOptionReplies()).filter((x) => x.type === C.NBD_REP_SERVER).map((x) => x.data.subarray(4, 4 + x.data.readUInt32BE(0)).toString());
    assert.deepEqual(names.sort(), [aliceDisk, aliceQemuDisk, bobDisk].sort());
    c.destroy();
    assert.deepEqual(await listNames(plain('off')), [aliceDisk, aliceQemuDisk, bobDisk].sort());
    const r = await runTool('nbdinfo', [aliceUri('off', aliceDisk)]);
    assert.notEqual(r.code, 0, 'nbds:// requires TLS: the client does not fall back to plaintext');
    await runToolOk('qemu-io', ['-f', 'raw', '-c', 'write -P 0x6b 65536 4096', '-c', 'read -P 0x6b 65536 4096', plain('off', aliceDisk)]);
  });

  it('on: plaintext sees every disk as before, a TLS client only its own; what was negotiated before STARTTLS is dropped; a second STARTTLS is invalid', async () => {
    assert.deepEqual(await listNames(plain('on')), [aliceDisk, aliceQemuDisk, bobDisk].sort());
    assert.deepEqual(await listNames(aliceUri('on', '')), [aliceDisk, aliceQemuDisk].sort());
    // Written in plaintext, read back through TLS: the same disk either way.
    await runToolOk('qemu-io', ['-f', 'raw', '-c', 'write -P 0x6c 131072 4096', plain('on', aliceDisk)]);
    await runToolOk('qemu-io', ['--object', qemuPskObject(qemuDir, ALICE.accessKeyId), '--image-opts', qemuNbdOpts(port('on'), aliceDisk), '-c', 'read -P 0x6c 131072 4096']);

    const c = await connect('on');
    assert.equal((await ask(c, C.NBD_OPT_STRUCTURED_REPLY)).type, C.NBD_REP_ACK);
    const t = await c.startTls(ALICE.accessKeyId, aliceKey);
    t.sendOption(C.NBD_OPT_INFO, RawNbdClient.goData(aliceDisk));
    const info = (await t.readOptionReplies()).find((x) => x.type === C.NBD_REP_INFO && x.data.readUInt16BE(0) === C.NBD_INFO_EXPORT)!;
    assert.equal(info.data.readUInt16BE(10) & C.NBD_FLAG_SEND_DF, 0, 'structured replies negotiated in plaintext do not survive the upgrade');
    assert.equal((await ask(t, C.NBD_OPT_STARTTLS)).type, C.NBD_REP_ERR_INVALID >>> 0);
    assert.equal((await ask(t, C.NBD_OPT_INFO, RawNbdClient.goData(bobDisk))).type, C.NBD_REP_ERR_UNKNOWN >>> 0);
    assert.equal((await ask(t, C.NBD_OPT_INFO, RawNbdClient.goData(aliceDisk))).type, C.NBD_REP_ACK);
    t.destroy();
  });

  it('STARTTLS hardening: data with the option is invalid; plaintext pipelined after it is a disconnect; plain-PSK TLS 1.2, a half-closed and a stalled TLS handshake are cut off', async () => {
    const c = await connect('require');
    assert.equal((await ask(c, C.NBD_OPT_STARTTLS, Buffer.from('x'))).type, C.NBD_REP_ERR_INVALID >>> 0);
    // Still negotiating: a real STARTTLS works after it.
    const t = await c.startTls(ALICE.accessKeyId, aliceKey);
    assert.equal((await ask(t, C.NBD_OPT_LIST)).type, C.NBD_REP_ACK);
    t.destroy();

    // An injected plaintext option right behind STARTTLS, in the same segment.
    const inj = await connect('require');
    const header = (option: number): Buffer => {
      const b = Buffer.alloc(16);
      b.write('IHAVEOPT', 0, 'latin1');
      b.writeUInt32BE(option, 8);
      return b;
    };
    inj.write(Buffer.concat([header(C.NBD_OPT_STARTTLS), header(C.NBD_OPT_LIST)]));
    assert.equal(await inj.closedByServer(), true);
    assert.equal(inj.pendingBytes, 0, 'no ACK: the injection is refused before TLS starts');

    // TLS 1.2 with a plain PSK suite (no forward secrecy) is not offered.
    const old = await connect('require');
    old.sendOption(C.NBD_OPT_STARTTLS);
    assert.equal((await old.readOptionReply()).type, C.NBD_REP_ACK);
    const legacy = tls.connect({
      socket: old.socket,
      minVersion: 'TLSv1.2',
      maxVersion: 'TLSv1.2',
      ciphers: 'PSK-AES128-GCM-SHA256:PSK-AES256-GCM-SHA384',
      checkServerIdentity: () => undefined,
      pskCallback: () => ({ identity: ALICE.accessKeyId, psk: aliceKey }),
    });
    await assert.rejects(new Promise((resolve, reject) => legacy.once('secureConnect', resolve).once('error', reject)));
    legacy.destroy();

    // STARTTLS acknowledged, then the client half-closes: noticed at once (the TCP socket allows
    // half-open connections, so nothing would close it before the 30 s deadline otherwise).
    const fin = await connect('require');
    fin.sendOption(C.NBD_OPT_STARTTLS);
    assert.equal((await fin.readOptionReply()).type, C.NBD_REP_ACK);
    fin.socket.end();
    assert.equal(await fin.closedByServer(3000), true, 'the server closes a half-closed TLS handshake');
    fin.destroy();

    // STARTTLS acknowledged, then silence: the handshake deadline covers the TLS handshake too.
    const exports = new DiskExports(h.region);
    const quick = await startNbdServer({
      host: '127.0.0.1',
      port: 0,
      exports,
      handshakeTimeoutMs: 500,
      tls: { mode: 'require', keyFor: keysOf(h.config.accounts), exportsFor: (a) => exports.forAccount(a) },
    });
    try {
      const s = await RawNbdClient.connect(quick.port);
      await s.start();
      s.sendOption(C.NBD_OPT_STARTTLS);
      assert.equal((await s.readOptionReply()).type, C.NBD_REP_ACK);
      const started = Date.now();
      assert.equal(await s.closedByServer(5000), true);
      assert.ok(Date.now() - started < 4000);
      await waitFor(() => quick.connectionCount() === 0, 5000, 'the stalled connection is gone');
    } finally {
      await quick.close();
    }
  });

  it('afterwards: no connection left open, nothing logged as an error, every disk Available', async () => {
    for (const [mode, s] of servers) {
      await waitFor(() => s.connectionCount() === 0, 10_000, `${mode}: connections closed`);
      const errors = logs.get(mode)!.filter((l) => l.level === 'error');
      assert.deepEqual(errors, [], `${mode} logged errors`);
    }
    assert.equal(await volumeStatus(aliceDisk), 'Available');
    assert.equal(await volumeStatus(bobDisk, { keys: bobKeys }), 'Available');
  });
});
