/**
 * Hostile clients in the handshake, as a bounded property test (fast-check, fixed seed unless
 * NBD_FUZZ_SEED is set; NBD_FUZZ_RUNS sets the cases per property, as `npm run fuzz` does):
 * random client flags, options with random numbers, data and declared lengths
 * (truncated, overlong, overlapping the next option), raw garbage, NBD_OPT_STARTTLS followed by
 * bytes that are not TLS, all written in random pieces and ended by a close, a half-close or silence;
 * and real TLS clients with right and wrong keys cut off at a random moment of the TLS handshake.
 *
 * After every case: the server still serves a well-behaved client. At the end: no connection left
 * open (the server's own count), every export opened was released exactly once, nothing logged at
 * level `error` (an unexpected exception in the server).
 */
import assert from 'node:assert/strict';
import net from 'node:net';
import tls from 'node:tls';
import { after, before, describe, it } from 'node:test';
import fc from 'fast-check';
import * as C from '../src/blockdev/nbd/constants.ts';
import { nbdPskKey, type NbdTlsMode } from '../src/blockdev/nbd/index.ts';
import { startTestServer, waitFor, type TestServer } from './helpers/nbd-harness.ts';
import { RawNbdClient } from './helpers/nbd-raw-client.ts';
import { keysOf } from './helpers/nbd-tls.ts';

const ACCOUNT = { accountId: 'fuzz', accessKeyId: 'fuzz-ak-0123456789abcdef', secretAccessKey: 'fuzz-secret' };
const KEY = nbdPskKey(ACCOUNT.secretAccessKey);
const SEED = process.env.NBD_FUZZ_SEED ? Number(process.env.NBD_FUZZ_SEED) : 20_240_611;
/** Cases per property (`npm run fuzz` sets it); the bounded run in `npm test` keeps its own counts and time limits. */
const RUNS = process.env.NBD_FUZZ_RUNS ? Number(process.env.NBD_FUZZ_RUNS) : null;
const EXPORTS = ['disk', 'ro', 'missing', ''];

const servers = new Map<NbdTlsMode, TestServer>();

before(async () => {
  for (const mode of ['require', 'on'] as const) {
    const ts = await startTestServer(
      [
        { name: 'disk', size: 1 << 20 },
        { name: 'ro', size: 1 << 16, readOnly: true },
      ],
      // The provider stands in for every account's exports: this file is about the protocol.
      { tls: { mode, keyFor: keysOf([ACCOUNT]), exportsFor: () => ts.provider }, handshakeTimeoutMs: 10_000 },
    );
    servers.set(mode, ts);
  }
});

after(async () => {
  for (const ts of servers.values()) await ts.cleanup();
});

// ---- generators -----------------------------------------------------------------------------------

const KNOWN_OPTIONS = [
  C.NBD_OPT_EXPORT_NAME, C.NBD_OPT_ABORT, C.NBD_OPT_LIST, C.NBD_OPT_STARTTLS, C.NBD_OPT_INFO, C.NBD_OPT_GO,
  C.NBD_OPT_STRUCTURED_REPLY, C.NBD_OPT_LIST_META_CONTEXT, C.NBD_OPT_SET_META_CONTEXT, C.NBD_OPT_EXTENDED_HEADERS,
];

/** Option data: well-formed for INFO/GO/META sometimes, so the server goes deeper than its length checks. */
const optionData = fc.oneof(
  fc.uint8Array({ maxLength: 48 }).map((a) => Buffer.from(a)),
  fc.record({ name: fc.constantFrom(...EXPORTS), infos: fc.array(fc.integer({ min: 0, max: 0xffff }), { maxLength: 4 }) }).map(({ name, infos }) => RawNbdClient.goData(name, infos)),
  fc.record({ name: fc.constantFrom(...EXPORTS), queries: fc.array(fc.constantFrom('base:allocation', 'base:', 'x:y', ''), { maxLength: 3 }) }).map(({ name, queries }) => RawNbdClient.metaData(name, queries)),
);

const optionStep = fc
  .record({
    magicOk: fc.oneof({ weight: 9, arbitrary: fc.constant(true) }, { weight: 1, arbitrary: fc.constant(false) }),
    option: fc.oneof({ weight: 4, arbitrary: fc.constantFrom(...KNOWN_OPTIONS) }, { weight: 1, arbitrary: fc.integer({ min: 0, max: 0xffffffff }) }),
    data: optionData,
    // The declared length: honest, a little off (truncated, or eating into what follows), or absurd.
    lengthDelta: fc.oneof(
      { weight: 6, arbitrary: fc.constant(0) },
      { weight: 3, arbitrary: fc.integer({ min: -8, max: 8 }) },
      { weight: 1, arbitrary: fc.constantFrom(C.MAX_OPTION_LENGTH + 1, 0xffffffff) },
    ),
  })
  .map(({ magicOk, option, data, lengthDelta }) => {
    const h = Buffer.alloc(16);
    h.write(magicOk ? 'IHAVEOPT' : 'IHAVEOPX', 0, 'latin1');
    h.writeUInt32BE(option >>> 0, 8);
    const declared = lengthDelta > C.MAX_OPTION_LENGTH ? lengthDelta : Math.max(0, data.length + lengthDelta);
    h.writeUInt32BE(declared >>> 0, 12);
    return Buffer.concat([h, data]);
  });

const starttls = (() => {
  const h = Buffer.alloc(16);
  h.write('IHAVEOPT', 0, 'latin1');
  h.writeUInt32BE(C.NBD_OPT_STARTTLS, 8);
  return h;
})();

const step = fc.oneof(
  { weight: 6, arbitrary: optionStep },
  { weight: 2, arbitrary: fc.constant(starttls) },
  { weight: 1, arbitrary: fc.uint8Array({ maxLength: 64 }).map((a) => Buffer.from(a)) },
  // Something shaped like a TLS record header, then junk.
  { weight: 1, arbitrary: fc.uint8Array({ maxLength: 40 }).map((a) => Buffer.concat([Buffer.from([0x16, 0x03, 0x01]), Buffer.from(a)])) },
);

const script = fc.record({
  clientFlags: fc.oneof(
    { weight: 8, arbitrary: fc.constant(C.NBD_FLAG_C_FIXED_NEWSTYLE | C.NBD_FLAG_C_NO_ZEROES) },
    { weight: 1, arbitrary: fc.constant(C.NBD_FLAG_C_FIXED_NEWSTYLE) },
    { weight: 1, arbitrary: fc.integer({ min: 0, max: 0xffffffff }) },
  ),
  steps: fc.array(step, { maxLength: 6 }),
  /** Where the bytes are cut into separate writes. */
  cuts: fc.array(fc.nat({ max: 400 }), { maxLength: 3 }),
  ending: fc.constantFrom('destroy', 'half-close', 'wait'),
});

type Script = typeof script extends fc.Arbitrary<infer T> ? T : never;

// ---- running one case -----------------------------------------------------------------------------

const tick = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Plays a script against a server and always leaves the client socket destroyed. */
async function play(port: number, s: Script): Promise<void> {
  const socket = net.connect({ port, host: '127.0.0.1' });
  socket.on('error', () => {});
  socket.on('data', () => {});
  const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
  try {
    await new Promise<void>((resolve, reject) => socket.once('connect', resolve).once('error', reject));
    const flags = Buffer.alloc(4);
    flags.writeUInt32BE(s.clientFlags >>> 0, 0);
    const bytes = Buffer.concat([flags, ...s.steps]);
    let from = 0;
    for (const cut of [...s.cuts].sort((a, b) => a - b)) {
      if (cut <= from || cut >= bytes.length) continue;
      socket.write(bytes.subarray(from, cut));
      from = cut;
      await tick(1);
    }
    socket.write(bytes.subarray(from));
    if (s.ending === 'half-close') socket.end();
    await Promise.race([closed, tick(s.ending === 'destroy' ? 2 : 40)]);
  } finally {
    socket.destroy();
    await closed;
  }
}

/** A well-behaved client: LIST answered (through TLS where the server requires it). */
async function stillServing(mode: NbdTlsMode, port: number): Promise<void> {
  let c = await RawNbdClient.connect(port);
  try {
    await c.start();
    if (mode === 'require') c = await c.startTls(ACCOUNT.accessKeyId, KEY);
    c.sendOption(C.NBD_OPT_LIST);
    const replies = await c.readOptionReplies();
    assert.equal(replies.at(-1)!.type, C.NBD_REP_ACK);
    assert.deepEqual(replies.filter((r) => r.type === C.NBD_REP_SERVER).length, 2);
  } finally {
    c.destroy();
  }
}

async function assertClean(mode: NbdTlsMode): Promise<void> {
  const ts = servers.get(mode)!;
  await waitFor(() => ts.server.connectionCount() === 0, 15_000, `${mode}: every connection closed`);
  for (const name of ['disk', 'ro']) {
    const st = ts.provider.stats(name);
    assert.equal(st.open, false, `${mode}: ${name} released`);
    assert.equal(st.opens, st.releases, `${mode}: ${name} opened and released as often`);
    assert.equal(st.doubleReleases, 0);
  }
  const errors = ts.logs.filter((l) => l.level === 'error');
  assert.deepEqual(errors, [], `${mode}: errors logged`);
  // Every case ended with the client gone: the server must have noticed at once, never by waiting
  // out the handshake deadline.
  assert.deepEqual(ts.logs.filter((l) => l.msg === 'nbd handshake timed out'), [], `${mode}: a connection outlived its client`);
}

describe('NBD handshake under hostile input (property test)', () => {
  for (const mode of ['require', 'on'] as const) {
    it(`${mode}: random option streams, truncated and overlong options, STARTTLS then garbage: no crash, others served, nothing leaked`, async () => {
      const ts = servers.get(mode)!;
      let cases = 0;
      await fc.assert(
        fc.asyncProperty(script, async (s) => {
          cases++;
          await play(ts.port, s);
          await stillServing(mode, ts.port);
        }),
        { numRuns: RUNS ?? 150, seed: SEED + (mode === 'on' ? 1 : 0), interruptAfterTimeLimit: RUNS ? undefined : 90_000, markInterruptAsFailure: false },
      );
      assert.ok(cases >= 50, `only ${cases} cases ran in the time limit`);
      await assertClean(mode);
      // The cases reached the interesting paths, not just the greeting.
      const seen = new Set(ts.logs.map((l) => l.msg));
      if (process.env.NBD_FUZZ_STATS) console.error(mode, cases, JSON.stringify(Object.fromEntries([...seen].map((m) => [m, ts.logs.filter((l) => l.msg === m).length]))));
      for (const msg of ['nbd protocol error', 'nbd tls handshake failed']) assert.ok(seen.has(msg), `${mode}: no case produced "${msg}"`);
    });
  }

  it('real TLS clients with right, wrong and unknown keys, cut off at a random moment of the handshake or after it', async () => {
    const ts = servers.get('require')!;
    const tlsCase = fc.record({
      identity: fc.constantFrom(ACCOUNT.accessKeyId, 'someone-else', ''),
      rightKey: fc.boolean(),
      cutAfterMs: fc.option(fc.integer({ min: 0, max: 12 }), { nil: undefined }),
      after: fc.uint8Array({ maxLength: 48 }).map((a) => Buffer.from(a)),
    });
    let established = 0;
    await fc.assert(
      fc.asyncProperty(tlsCase, async (k) => {
        const c = await RawNbdClient.connect(ts.port);
        await c.start();
        c.sendOption(C.NBD_OPT_STARTTLS);
        assert.equal((await c.readOptionReply()).type, C.NBD_REP_ACK);
        const key = k.rightKey ? KEY : Buffer.alloc(32, 0x42);
        const t = tls.connect({ socket: c.socket, minVersion: 'TLSv1.2', checkServerIdentity: () => undefined, pskCallback: () => ({ identity: k.identity, psk: key }) });
        t.on('error', () => {});
        const closed = new Promise<void>((resolve) => t.once('close', () => resolve()));
        const secure = new Promise<boolean>((resolve) => {
          t.once('secureConnect', () => resolve(true));
          t.once('close', () => resolve(false));
        });
        if (k.cutAfterMs !== undefined) {
          await tick(k.cutAfterMs);
          t.destroy();
        } else {
          const ok = await secure;
          // A wrong key or an unknown identity never gets a session; the right one always does.
          assert.equal(ok, k.rightKey && k.identity === ACCOUNT.accessKeyId);
          if (ok) {
            established++;
            t.write(k.after); // random bytes inside TLS: more of the option haggling
            await tick(5);
          }
          t.destroy();
        }
        await closed;
        c.destroy();
        await stillServing('require', ts.port);
      }),
      { numRuns: RUNS ?? 80, seed: SEED + 2, interruptAfterTimeLimit: RUNS ? undefined : 60_000, markInterruptAsFailure: false },
    );
    assert.ok(established > 0, 'some cases completed the TLS handshake');
    await assertClean('require');
  });
});
