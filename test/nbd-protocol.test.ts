/**
 * The NBD server at the byte level: handshake and option replies, transmission replies (simple and
 * structured), protocol violations, and that nothing a client sends affects other connections.
 */
import assert from 'node:assert/strict';
import { after, afterEach, before, describe, it } from 'node:test';
import { BlockIoError } from '../src/blockdev/block-target.ts';
import * as C from '../src/blockdev/nbd/constants.ts';
import { GRANULE, type TargetHooks } from './helpers/file-block-target.ts';
import { pseudoRandom, startTestServer, waitFor, type TestServer } from './helpers/nbd-harness.ts';
import { RawNbdClient } from './helpers/nbd-raw-client.ts';

const MiB = 1024 * 1024;
const DISK_SIZE = 4 * MiB;

describe('NBD protocol (raw socket)', () => {
  let ts: TestServer;
  const clients: RawNbdClient[] = [];
  const hooks: TargetHooks = {};

  async function connect(): Promise<RawNbdClient> {
    const c = await RawNbdClient.connect(ts.port);
    clients.push(c);
    return c;
  }

  /** The server still completes a full handshake and a read on a fresh connection. */
  async function assertServing(exportName = 'disk'): Promise<void> {
    await ts.provider.waitUntilReleased(exportName);
    const c = await connect();
    await c.handshake(exportName);
    const data = await c.readAt(0, 512);
    assert.equal(data.length, 512);
    await c.disconnect();
    await ts.provider.waitUntilReleased(exportName);
  }

  function assertReleased(name: string): void {
    const st = ts.provider.stats(name);
    assert.equal(st.open, false, `${name} still open`);
    assert.equal(st.opens, st.releases, `${name}: ${st.opens} opens, ${st.releases} releases`);
    assert.equal(st.doubleReleases, 0);
  }

  before(async () => {
    ts = await startTestServer([
      { name: 'disk', size: DISK_SIZE, description: 'the test disk', hooks },
      { name: 'ro', size: MiB, readOnly: true },
      { name: 'broken', size: MiB },
      // Written whole by one test, so the others' allocation (block status) stays as they made it.
      { name: 'wide', size: DISK_SIZE },
    ]);
    ts.provider.setUnavailable('broken', 'disk is being restored from a snapshot');
  });

  afterEach(async () => {
    for (const c of clients.splice(0)) c.destroy();
    hooks.beforeIo = undefined;
    for (const name of ['disk', 'ro', 'wide']) await ts.provider.waitUntilReleased(name);
  });

  after(async () => {
    await ts?.cleanup();
  });

  describe('handshake', () => {
    it('greets with NBDMAGIC, IHAVEOPT and FIXED_NEWSTYLE|NO_ZEROES', async () => {
      const c = await connect();
      const g = await c.read(18);
      assert.equal(g.toString('latin1', 0, 8), 'NBDMAGIC');
      assert.equal(g.toString('latin1', 8, 16), 'IHAVEOPT');
      assert.equal(g.readUInt16BE(16), C.NBD_FLAG_FIXED_NEWSTYLE | C.NBD_FLAG_NO_ZEROES);
    });

    it('closes on a client that does not speak fixed newstyle', async () => {
      const c = await connect();
      await c.readGreeting();
      c.sendClientFlags(0);
      assert.equal(await c.closedByServer(), true);
      assert.equal(c.pendingBytes, 0, 'nothing is sent to a non-fixed client');
    });

    it('closes on unknown client flags', async () => {
      const c = await connect();
      await c.readGreeting();
      c.sendClientFlags(C.NBD_FLAG_C_FIXED_NEWSTYLE | 0x100);
      assert.equal(await c.closedByServer(), true);
    });

    it('closes on a bad option magic', async () => {
      const c = await connect();
      await c.start();
      c.write(Buffer.from('IHAVEOPX\0\0\0\x03\0\0\0\0', 'latin1'));
      assert.equal(await c.closedByServer(), true);
      await assertServing();
    });

    it('answers an unknown option with NBD_REP_ERR_UNSUP and keeps negotiating', async () => {
      const c = await connect();
      await c.start();
      c.sendOption(0x1234, Buffer.from('some option data'));
      const r = await c.readOptionReply();
      assert.equal(r.option, 0x1234);
      assert.equal(r.type, C.NBD_REP_ERR_UNSUP);
      // STARTTLS is known but unsupported without TLS: also UNSUP.
      c.sendOption(C.NBD_OPT_STARTTLS);
      assert.equal((await c.readOptionReply()).type, C.NBD_REP_ERR_UNSUP);
      // The connection is still usable.
      c.sendOption(C.NBD_OPT_LIST);
      const replies = await c.readOptionReplies();
      assert.equal(replies.at(-1)!.type, C.NBD_REP_ACK);
      const names = replies
        .filter((x) => x.type === C.NBD_REP_SERVER)
        .map((x) => x.data.subarray(4, 4 + x.data.readUInt32BE(0)).toString());
      assert.deepEqual(names, ['disk', 'ro', 'broken', 'wide']);
      const disk = replies.find((x) => x.type === C.NBD_REP_SERVER && x.data.includes(Buffer.from('the test disk')));
      assert.ok(disk, 'description is sent after the name');
    });

    it('rejects bad option lengths with NBD_REP_ERR_INVALID', async () => {
      const c = await connect();
      await c.start();
      c.sendOption(C.NBD_OPT_LIST, Buffer.from('x'));
      assert.equal((await c.readOptionReply()).type, C.NBD_REP_ERR_INVALID);
      c.sendOption(C.NBD_OPT_STRUCTURED_REPLY, Buffer.from('xy'));
      assert.equal((await c.readOptionReply()).type, C.NBD_REP_ERR_INVALID);
      // GO: name length beyond the option data.
      const bad = RawNbdClient.goData('disk');
      bad.writeUInt32BE(1000, 0);
      c.sendOption(C.NBD_OPT_GO, bad);
      assert.equal((await c.readOptionReply()).type, C.NBD_REP_ERR_INVALID);
      // GO: info request count does not match the remaining bytes.
      const bad2 = Buffer.concat([RawNbdClient.goData('disk', [C.NBD_INFO_NAME]), Buffer.from([0])]);
      c.sendOption(C.NBD_OPT_GO, bad2);
      assert.equal((await c.readOptionReply()).type, C.NBD_REP_ERR_INVALID);
      // GO: too short to hold anything.
      c.sendOption(C.NBD_OPT_GO, Buffer.from([0, 0]));
      assert.equal((await c.readOptionReply()).type, C.NBD_REP_ERR_INVALID);
      // SET_META_CONTEXT: query length beyond the data.
      const meta = RawNbdClient.metaData('disk', ['base:allocation']);
      meta.writeUInt32BE(999, 12);
      c.sendOption(C.NBD_OPT_STRUCTURED_REPLY);
      assert.equal((await c.readOptionReply()).type, C.NBD_REP_ACK);
      c.sendOption(C.NBD_OPT_SET_META_CONTEXT, meta);
      assert.equal((await c.readOptionReply()).type, C.NBD_REP_ERR_INVALID);
      // None of that opened anything, and GO still works afterwards.
      c.sendOption(C.NBD_OPT_GO, RawNbdClient.goData('disk'));
      const replies = await c.readOptionReplies();
      assert.equal(replies.at(-1)!.type, C.NBD_REP_ACK);
      assert.equal(ts.provider.stats('disk').open, true);
      await c.disconnect();
      await ts.provider.waitUntilReleased('disk');
      assertReleased('disk');
    });

    it('closes a client that announces an absurd option length', async () => {
      const c = await connect();
      await c.start();
      c.sendOption(C.NBD_OPT_GO, Buffer.alloc(0), 0xfffffff0);
      assert.equal(await c.closedByServer(), true);
    });

    it('answers GO/INFO for an unknown export with NBD_REP_ERR_UNKNOWN and the reason', async () => {
      const c = await connect();
      await c.start();
      for (const opt of [C.NBD_OPT_INFO, C.NBD_OPT_GO]) {
        c.sendOption(opt, RawNbdClient.goData('nope'));
        const replies = await c.readOptionReplies();
        assert.equal(replies.length, 1, 'no NBD_REP_INFO before the error');
        assert.equal(replies[0].type, C.NBD_REP_ERR_UNKNOWN);
        assert.match(replies[0].data.toString(), /nope/);
      }
    });

    it('answers GO for a busy or unusable export with NBD_REP_ERR_POLICY and the reason', async () => {
      const holder = await connect();
      await holder.handshake('disk');
      const c = await connect();
      await c.start();
      c.sendOption(C.NBD_OPT_GO, RawNbdClient.goData('disk'));
      const busy = await c.readOptionReply();
      assert.equal(busy.type, C.NBD_REP_ERR_POLICY);
      assert.match(busy.data.toString(), /in use/);
      c.sendOption(C.NBD_OPT_GO, RawNbdClient.goData('broken'));
      const state = await c.readOptionReply();
      assert.equal(state.type, C.NBD_REP_ERR_POLICY);
      assert.equal(state.data.toString(), 'disk is being restored from a snapshot');
      await holder.disconnect();
      // Once released, the same connection can still GO.
      await ts.provider.waitUntilReleased('disk');
      c.sendOption(C.NBD_OPT_GO, RawNbdClient.goData('disk'));
      assert.equal((await c.readOptionReplies()).at(-1)!.type, C.NBD_REP_ACK);
    });

    it('NBD_OPT_INFO returns export, name, description and block size without opening the export', async () => {
      const c = await connect();
      await c.start();
      const opensBefore = ts.provider.stats('disk').opens;
      c.sendOption(
        C.NBD_OPT_INFO,
        RawNbdClient.goData('disk', [C.NBD_INFO_NAME, C.NBD_INFO_DESCRIPTION, C.NBD_INFO_BLOCK_SIZE]),
      );
      const replies = await c.readOptionReplies();
      assert.equal(replies.at(-1)!.type, C.NBD_REP_ACK);
      const infos = new Map(replies.filter((r) => r.type === C.NBD_REP_INFO).map((r) => [r.data.readUInt16BE(0), r.data]));
      const exp = infos.get(C.NBD_INFO_EXPORT)!;
      assert.equal(exp.length, 12);
      assert.equal(Number(exp.readBigUInt64BE(2)), DISK_SIZE);
      const flags = exp.readUInt16BE(10);
      assert.equal(
        flags,
        C.NBD_FLAG_HAS_FLAGS |
          C.NBD_FLAG_SEND_FLUSH |
          C.NBD_FLAG_SEND_FUA |
          C.NBD_FLAG_SEND_TRIM |
          C.NBD_FLAG_SEND_WRITE_ZEROES |
          C.NBD_FLAG_SEND_CACHE,
        'no DF without structured replies, never MULTI_CONN',
      );
      assert.equal(infos.get(C.NBD_INFO_NAME)!.subarray(2).toString(), 'disk');
      assert.equal(infos.get(C.NBD_INFO_DESCRIPTION)!.subarray(2).toString(), 'the test disk');
      const bs = infos.get(C.NBD_INFO_BLOCK_SIZE)!;
      assert.deepEqual([bs.readUInt32BE(2), bs.readUInt32BE(6), bs.readUInt32BE(10)], [1, 4096, 32 * MiB]);
      // INFO only describes: it never opens (so never holds) the export.
      assert.equal(ts.provider.stats('disk').opens, opensBefore);
      assert.equal(ts.provider.stats('disk').open, false);
      // Read-only export: READ_ONLY, no write-side flags.
      c.sendOption(C.NBD_OPT_STRUCTURED_REPLY);
      await c.readOptionReply();
      c.sendOption(C.NBD_OPT_INFO, RawNbdClient.goData('ro'));
      const ro = (await c.readOptionReplies()).find((r) => r.type === C.NBD_REP_INFO && r.data.readUInt16BE(0) === 0)!;
      assert.equal(
        ro.data.readUInt16BE(10),
        C.NBD_FLAG_HAS_FLAGS | C.NBD_FLAG_READ_ONLY | C.NBD_FLAG_SEND_FLUSH | C.NBD_FLAG_SEND_CACHE | C.NBD_FLAG_SEND_DF,
      );
    });

    it('negotiates meta contexts: base:allocation only, and only after structured replies', async () => {
      const c = await connect();
      await c.start();
      c.sendOption(C.NBD_OPT_SET_META_CONTEXT, RawNbdClient.metaData('disk', ['base:allocation']));
      assert.equal((await c.readOptionReply()).type, C.NBD_REP_ERR_INVALID);
      c.sendOption(C.NBD_OPT_STRUCTURED_REPLY);
      assert.equal((await c.readOptionReply()).type, C.NBD_REP_ACK);

      c.sendOption(C.NBD_OPT_LIST_META_CONTEXT, RawNbdClient.metaData('disk', []));
      let replies = await c.readOptionReplies();
      assert.deepEqual(
        replies.map((r) => [r.type, r.type === C.NBD_REP_META_CONTEXT ? r.data.subarray(4).toString() : '']),
        [
          [C.NBD_REP_META_CONTEXT, 'base:allocation'],
          [C.NBD_REP_ACK, ''],
        ],
      );
      c.sendOption(C.NBD_OPT_LIST_META_CONTEXT, RawNbdClient.metaData('disk', ['base:', 'qemu:dirty-bitmap:x']));
      replies = await c.readOptionReplies();
      assert.equal(replies.length, 2);
      assert.equal(replies[0].data.subarray(4).toString(), 'base:allocation');
      c.sendOption(C.NBD_OPT_LIST_META_CONTEXT, RawNbdClient.metaData('disk', ['x-other:thing']));
      replies = await c.readOptionReplies();
      assert.deepEqual(replies.map((r) => r.type), [C.NBD_REP_ACK]);

      c.sendOption(C.NBD_OPT_SET_META_CONTEXT, RawNbdClient.metaData('disk', ['qemu:allocation-depth', 'base:allocation']));
      replies = await c.readOptionReplies();
      assert.equal(replies.length, 2);
      assert.equal(replies[0].type, C.NBD_REP_META_CONTEXT);
      const id = replies[0].data.readUInt32BE(0);
      assert.equal(replies[0].data.subarray(4).toString(), 'base:allocation');

      c.sendOption(C.NBD_OPT_GO, RawNbdClient.goData('disk'));
      assert.equal((await c.readOptionReplies()).at(-1)!.type, C.NBD_REP_ACK);
      c.sendRequest({ type: C.NBD_CMD_BLOCK_STATUS, cookie: 7n, offset: 0, length: DISK_SIZE });
      const chunk = await c.readChunk();
      assert.equal(chunk.type, C.NBD_REPLY_TYPE_BLOCK_STATUS);
      assert.equal(chunk.payload.readUInt32BE(0), id, 'block status uses the negotiated context id');
    });

    it('NBD_OPT_EXPORT_NAME: unknown export closes, known export replies with or without zeroes', async () => {
      const bad = await connect();
      await bad.start();
      bad.sendOption(C.NBD_OPT_EXPORT_NAME, Buffer.from('nope'));
      assert.equal(await bad.closedByServer(), true);
      assert.equal(bad.pendingBytes, 0);

      const withZeroes = await connect();
      await withZeroes.start(C.NBD_FLAG_C_FIXED_NEWSTYLE);
      withZeroes.sendOption(C.NBD_OPT_EXPORT_NAME, Buffer.from('ro'));
      const r = await withZeroes.read(134);
      assert.equal(Number(r.readBigUInt64BE(0)), MiB);
      assert.equal(r.readUInt16BE(8) & C.NBD_FLAG_READ_ONLY, C.NBD_FLAG_READ_ONLY);
      assert.ok(r.subarray(10).equals(Buffer.alloc(124)));
      assert.deepEqual(await withZeroes.readAt(0, 16), Buffer.alloc(16));
      await withZeroes.disconnect();

      const noZeroes = await connect();
      await noZeroes.start();
      noZeroes.sendOption(C.NBD_OPT_EXPORT_NAME, Buffer.from('disk'));
      const r2 = await noZeroes.read(10);
      assert.equal(Number(r2.readBigUInt64BE(0)), DISK_SIZE);
      // The next bytes on the wire are the reply to our first request, not padding.
      assert.equal((await noZeroes.readAt(0, 8)).length, 8);
      await noZeroes.disconnect();
    });

    it('NBD_OPT_ABORT is acknowledged and the connection closed', async () => {
      const c = await connect();
      await c.start();
      c.sendOption(C.NBD_OPT_ABORT);
      const r = await c.readOptionReply();
      assert.equal(r.type, C.NBD_REP_ACK);
      assert.equal(r.option, C.NBD_OPT_ABORT);
      assert.equal(await c.closedByServer(), true);
    });

    it('disconnects a client that never finishes the handshake', async () => {
      const quick = await startTestServer([{ name: 'x', size: MiB }], { handshakeTimeoutMs: 200 });
      try {
        const c = await RawNbdClient.connect(quick.port);
        clients.push(c);
        await c.readGreeting();
        assert.equal(await c.closedByServer(2000), true);
        assert.ok(quick.logs.some((l) => l.msg === 'nbd handshake timed out'));
      } finally {
        await quick.cleanup();
      }
    });
  });

  describe('transmission, simple replies', () => {
    it('writes and reads back at odd offsets; FLUSH, FUA, TRIM, WRITE_ZEROES, CACHE succeed', async () => {
      const c = await connect();
      await c.handshake('disk');
      const data = pseudoRandom(10_001, 5);
      assert.equal(await c.writeAt(123_457, data), 0);
      assert.ok((await c.readAt(123_457, 10_001)).equals(data));
      assert.equal(await c.writeAt(3, Buffer.from('fua'), 9n, C.NBD_CMD_FLAG_FUA), 0);
      assert.equal((await c.readAt(3, 3)).toString(), 'fua');

      for (const [type, flags] of [
        [C.NBD_CMD_FLUSH, 0],
        [C.NBD_CMD_TRIM, 0],
        [C.NBD_CMD_WRITE_ZEROES, C.NBD_CMD_FLAG_NO_HOLE],
        [C.NBD_CMD_CACHE, 0],
      ] as const) {
        const isRange = type !== C.NBD_CMD_FLUSH;
        c.sendRequest({ type, flags, cookie: BigInt(100 + type), offset: isRange ? 123_460 : 0, length: isRange ? 5000 : 0 });
        const r = await c.readSimpleReply();
        assert.equal(r.error, 0, `command ${type}`);
        assert.equal(r.cookie, BigInt(100 + type));
      }
      const back = await c.readAt(123_457, 10_001);
      assert.ok(back.subarray(0, 3).equals(data.subarray(0, 3)));
      assert.ok(back.subarray(3, 5003).equals(Buffer.alloc(5000)), 'trimmed/zeroed range reads as zeros');
      assert.ok(back.subarray(5003).equals(data.subarray(5003)));
      await c.disconnect();
    });

    it('answers errors with the right values and keeps the connection', async () => {
      const c = await connect();
      await c.handshake('disk');
      const cases: Array<[string, Parameters<RawNbdClient['sendRequest']>[0], number]> = [
        ['unknown command', { type: 42, cookie: 1n, offset: 0, length: 0 }, C.NBD_EINVAL],
        ['read past the end', { type: C.NBD_CMD_READ, cookie: 2n, offset: DISK_SIZE - 10, length: 11 }, C.NBD_EINVAL],
        ['read at huge offset', { type: C.NBD_CMD_READ, cookie: 3n, offset: 0xffff_ffff_ffff_0000n, length: 512 }, C.NBD_EINVAL],
        ['trim past the end', { type: C.NBD_CMD_TRIM, cookie: 4n, offset: DISK_SIZE, length: 1 }, C.NBD_EINVAL],
        ['zeroes past the end', { type: C.NBD_CMD_WRITE_ZEROES, cookie: 5n, offset: DISK_SIZE + 4096, length: 1 }, C.NBD_ENOSPC],
        ['unknown flag', { type: C.NBD_CMD_READ, flags: 0x100, cookie: 6n, offset: 0, length: 1 }, C.NBD_EINVAL],
        ['DF without structured replies', { type: C.NBD_CMD_READ, flags: C.NBD_CMD_FLAG_DF, cookie: 7n, offset: 0, length: 1 }, C.NBD_EINVAL],
        ['FAST_ZERO (not advertised)', { type: C.NBD_CMD_WRITE_ZEROES, flags: C.NBD_CMD_FLAG_FAST_ZERO, cookie: 8n, offset: 0, length: 1 }, C.NBD_EINVAL],
        ['block status without context', { type: C.NBD_CMD_BLOCK_STATUS, cookie: 9n, offset: 0, length: 512 }, C.NBD_EINVAL],
        ['read over 32 MiB', { type: C.NBD_CMD_READ, cookie: 10n, offset: 0, length: 33 * MiB }, C.NBD_EINVAL],
      ];
      for (const [what, req, errno] of cases) {
        c.sendRequest(req);
        const r = await c.readSimpleReply();
        assert.equal(r.cookie, req.cookie, what);
        assert.equal(r.error, errno, what);
        assert.equal(r.data, null);
      }
      // A write past the end: its payload is consumed, then ENOSPC.
      c.sendRequest({ type: C.NBD_CMD_WRITE, cookie: 11n, offset: DISK_SIZE - 2, length: 4 }, Buffer.from('abcd'));
      assert.equal((await c.readSimpleReply()).error, C.NBD_ENOSPC);
      // Still in sync: a normal read works.
      assert.equal((await c.readAt(0, 100)).length, 100);
      await c.disconnect();
    });

    it('refuses writes, trims and zeroes on a read-only export with EPERM', async () => {
      const c = await connect();
      const { flags } = await c.handshake('ro');
      assert.ok(flags & C.NBD_FLAG_READ_ONLY);
      assert.equal(await c.writeAt(0, Buffer.from('nope')), C.NBD_EPERM);
      for (const type of [C.NBD_CMD_TRIM, C.NBD_CMD_WRITE_ZEROES]) {
        c.sendRequest({ type, cookie: 5n, offset: 0, length: 10 });
        assert.equal((await c.readSimpleReply()).error, C.NBD_EPERM);
      }
      assert.ok((await c.readAt(0, 4)).equals(Buffer.alloc(4)));
      await c.disconnect();
      assertReleased('ro');
    });

    it('reports backend I/O errors as EIO and keeps serving', async () => {
      const c = await connect();
      await c.handshake('disk');
      hooks.beforeIo = (op, offset) => {
        if (offset === 777) throw new BlockIoError('simulated media error');
      };
      c.sendRequest({ type: C.NBD_CMD_READ, cookie: 1n, offset: 777, length: 10 });
      assert.equal((await c.readSimpleReply()).error, C.NBD_EIO);
      assert.equal(await c.writeAt(777, Buffer.from('x')), C.NBD_EIO);
      assert.equal((await c.readAt(778, 10)).length, 10);
      await c.disconnect();
      assert.ok(ts.logs.some((l) => l.msg === 'nbd backend operation failed' && /simulated/.test(String(l.fields.error))));
    });

    it('runs pipelined requests concurrently and answers each cookie exactly once', async () => {
      const c = await connect();
      await c.handshake('disk');
      // Make the backend answer in a scrambled order.
      hooks.beforeIo = (_op, offset) => new Promise((r) => setTimeout(r, (offset / 4096) % 7));
      const n = 120;
      const expected = new Map<bigint, Buffer>();
      for (let i = 0; i < n; i++) {
        const payload = pseudoRandom(4096 + i, 1000 + i);
        expected.set(BigInt(i), payload);
        c.sendRequest({ type: C.NBD_CMD_WRITE, cookie: BigInt(i), offset: i * 8192, length: payload.length }, payload);
      }
      const seen = new Set<bigint>();
      const order: bigint[] = [];
      for (let i = 0; i < n; i++) {
        const r = await c.readSimpleReply();
        assert.equal(r.error, 0);
        assert.ok(!seen.has(r.cookie), `cookie ${r.cookie} answered twice`);
        seen.add(r.cookie);
        order.push(r.cookie);
      }
      assert.equal(seen.size, n);
      assert.notDeepEqual(order, [...order].sort((a, b) => (a < b ? -1 : 1)), 'replies came back out of order');
      // Pipelined reads, replies matched by cookie.
      for (let i = 0; i < n; i++) {
        c.sendRequest({ type: C.NBD_CMD_READ, cookie: BigInt(1000 + i), offset: i * 8192, length: 4096 + i });
      }
      for (let i = 0; i < n; i++) {
        const r = await c.readReply((cookie) => 4096 + Number(cookie - 1000n));
        assert.equal(r.kind, 'simple');
        if (r.kind !== 'simple') return;
        assert.equal(r.error, 0);
        assert.ok(r.data!.equals(expected.get(r.cookie - 1000n)!), `data of cookie ${r.cookie}`);
      }
      await c.disconnect();
    });

    it('bounds requests in flight per connection', { timeout: 60_000 }, async () => {
      const limited = await startTestServer([{ name: 'x', size: 8 * MiB, hooks }], {
        maxInFlightRequests: 4,
        maxInFlightBytes: 1 * MiB,
      });
      // Gates hold backend operations; always opened in `finally` so cleanup can never hang.
      const gates: Array<() => void> = [];
      const gated = () => {
        let open!: () => void;
        const gate = new Promise<void>((r) => (open = r));
        gates.push(open);
        return gate;
      };
      try {
        let running = 0;
        let maxRunning = 0;
        let gate = gated();
        hooks.beforeIo = async () => {
          running++;
          maxRunning = Math.max(maxRunning, running);
          await gate;
          running--;
        };
        const c = await RawNbdClient.connect(limited.port);
        clients.push(c);
        await c.handshake('x');
        // 10 reads of 128 KiB: at most 4 (request cap) may be admitted.
        for (let i = 0; i < 10; i++) c.sendRequest({ type: C.NBD_CMD_READ, cookie: BigInt(i), offset: i * 131072, length: 131072 });
        await waitFor(() => running >= 4, 5000, '4 reads running');
        await new Promise((r) => setTimeout(r, 100));
        assert.equal(running, 4);
        gates.shift()!();
        for (let i = 0; i < 10; i++) assert.equal((await c.readReply(() => 131072)).kind, 'simple');
        assert.equal(maxRunning, 4);
        // 6 writes of 512 KiB: the 1 MiB byte cap admits 2 at a time.
        maxRunning = 0;
        gate = gated();
        for (let i = 0; i < 6; i++) {
          c.sendRequest({ type: C.NBD_CMD_WRITE, cookie: BigInt(i), offset: i * 524288, length: 524288 }, Buffer.alloc(524288, i));
        }
        await waitFor(() => running >= 2, 5000, '2 writes running');
        await new Promise((r) => setTimeout(r, 100));
        assert.equal(running, 2);
        gates.shift()!();
        for (let i = 0; i < 6; i++) assert.equal((await c.readSimpleReply()).error, 0);
        assert.equal(maxRunning, 2);
        for (let i = 0; i < 6; i++) assert.ok((await c.readAt(i * 524288 + 1000, 10, 50n)).equals(Buffer.alloc(10, i)));
        await c.disconnect();
      } finally {
        for (const open of gates) open();
        hooks.beforeIo = undefined;
        await limited.cleanup();
      }
    });

    it('assembles large pipelined write payloads correctly', async () => {
      const c = await connect();
      await c.handshake('disk');
      // Payload sizes that straddle socket reads in every way; all sent in one burst.
      const sizes = [65_536, 65_537, 300_001, 131_072 - 28, 1_000_000, 70_000, 262_144];
      const writes: Array<{ offset: number; data: Buffer }> = [];
      let offset = 17; // ends below 2 MiB, clear of the block status test's granules
      const burst: Buffer[] = [];
      sizes.forEach((n, i) => {
        const data = pseudoRandom(n, 500 + i);
        writes.push({ offset, data });
        const h = Buffer.alloc(28);
        h.writeUInt32BE(C.NBD_REQUEST_MAGIC, 0);
        h.writeUInt16BE(C.NBD_CMD_WRITE, 6);
        h.writeBigUInt64BE(BigInt(i), 8);
        h.writeBigUInt64BE(BigInt(offset), 16);
        h.writeUInt32BE(n, 24);
        burst.push(h, data);
        offset += n;
      });
      c.write(Buffer.concat(burst));
      for (let i = 0; i < sizes.length; i++) assert.equal((await c.readSimpleReply()).error, 0);
      for (const w of writes) {
        assert.ok((await c.readAt(w.offset, w.data.length)).equals(w.data), `payload at ${w.offset}`);
      }
      await c.disconnect();
    });

    it('a write payload never carries bytes of an earlier one whose buffer it reuses', async () => {
      const c = await connect();
      await c.handshake('disk');
      // Rounds of writes, each waited for, so each round's payloads get the buffers the round before
      // gave back: a shrinking size within one power-of-two class, a larger class, back to small.
      const model = Buffer.alloc(2 * MiB);
      await c.writeAt(0, model);
      const rounds = [[262_144, 262_144], [200_000, 131_073], [70_001, 65_536], [1_000_000], [300_000, 100_000, 65_537]];
      let cookie = 1000;
      for (const [r, sizes] of rounds.entries()) {
        const burst: Buffer[] = [];
        let offset = 4096 * (r + 1) + 3;
        for (const [i, n] of sizes.entries()) {
          const data = Buffer.alloc(n, 0x11 * (r + 1) + i);
          data.copy(model, offset);
          const h = Buffer.alloc(28);
          h.writeUInt32BE(C.NBD_REQUEST_MAGIC, 0);
          h.writeUInt16BE(C.NBD_CMD_WRITE, 6);
          h.writeBigUInt64BE(BigInt(cookie++), 8);
          h.writeBigUInt64BE(BigInt(offset), 16);
          h.writeUInt32BE(n, 24);
          burst.push(h, data);
          offset += n + 511;
        }
        c.write(Buffer.concat(burst));
        for (let i = 0; i < sizes.length; i++) assert.equal((await c.readSimpleReply()).error, 0);
      }
      assert.ok((await c.readAt(0, model.length)).equals(model), 'the disk holds exactly what was written');
      await c.disconnect();
    });

    it('a read reply keeps its bytes while it waits in the socket queue, though later reads reuse buffers', async () => {
      const c = await connect();
      await c.handshake('wide');
      const model = pseudoRandom(DISK_SIZE, 77);
      await c.writeAt(0, model);
      // Two waves of reads, no reply read until both were answered. The first wave's replies (more
      // than loopback's socket buffers hold: up to 32 MiB received, 4 MiB sent here) wait in the server's socket queue while the second
      // wave reads other bytes into pooled buffers: a buffer given back before the socket took its
      // reply would be refilled by the second wave, and the first wave's reply would carry its bytes.
      const sizes = [1_000_000, 1_048_576, 262_144, 700_001];
      const reads = Array.from({ length: 128 }, (_, i) => {
        const length = sizes[i % sizes.length]!;
        return { offset: ((i < 64 ? 0 : 1_500_007) + i * 4099) % (DISK_SIZE - length), length };
      });
      const send = (first: number, count: number): void => {
        c.write(Buffer.concat(reads.slice(first, first + count).map((r, k) => {
          const h = Buffer.alloc(28);
          h.writeUInt32BE(C.NBD_REQUEST_MAGIC, 0);
          h.writeUInt16BE(C.NBD_CMD_READ, 6);
          h.writeBigUInt64BE(BigInt(first + k), 8);
          h.writeBigUInt64BE(BigInt(r.offset), 16);
          h.writeUInt32BE(r.length, 24);
          return h;
        })));
      };
      c.socket.pause(); // nothing read from here on: the server's replies back up into its queue
      send(0, 64);
      await new Promise((r) => setTimeout(r, 300));
      send(64, 64);
      await new Promise((r) => setTimeout(r, 300));
      c.socket.resume();
      for (let i = 0; i < reads.length; i++) {
        const r = await c.readReply((cookie) => reads[Number(cookie)]!.length);
        assert.equal(r.kind === 'simple' && r.error, 0);
        if (r.kind !== 'simple') return;
        const { offset, length } = reads[Number(r.cookie)]!;
        assert.ok(r.data!.equals(model.subarray(offset, offset + length)), `read ${r.cookie} at ${offset}+${length}`);
      }
      await c.disconnect();
    });

    it('answers outstanding requests before closing on NBD_CMD_DISC', async () => {
      const c = await connect();
      await c.handshake('disk');
      hooks.beforeIo = () => new Promise((r) => setTimeout(r, 50));
      c.sendRequest({ type: C.NBD_CMD_WRITE, cookie: 1n, offset: 0, length: 3 }, Buffer.from('abc'));
      c.sendRequest({ type: C.NBD_CMD_READ, cookie: 2n, offset: 100, length: 5 });
      c.sendRequest({ type: C.NBD_CMD_DISC, cookie: 3n, offset: 0, length: 0 });
      c.socket.end(); // the client may half-close after DISC
      const cookies = new Set<bigint>();
      for (let i = 0; i < 2; i++) {
        const r = await c.readReply((cookie) => (cookie === 2n ? 5 : 0));
        assert.equal(r.kind === 'simple' && r.error, 0);
        cookies.add(r.cookie);
      }
      assert.deepEqual([...cookies].sort(), [1n, 2n]);
      assert.equal(await c.closedByServer(), true);
      await ts.provider.waitUntilReleased('disk');
      assertReleased('disk');
    });
  });

  describe('transmission, structured replies', () => {
    it('reads as OFFSET_DATA chunks, errors as ERROR chunks with a message', async () => {
      const c = await connect();
      const { flags } = await c.handshake('disk', { structured: true });
      assert.ok(flags & C.NBD_FLAG_SEND_DF);
      const data = pseudoRandom(3000, 9);
      assert.equal(await c.writeAt(5000, data), 0);

      c.sendRequest({ type: C.NBD_CMD_READ, flags: C.NBD_CMD_FLAG_DF, cookie: 77n, offset: 5000, length: 3000 });
      const chunk = await c.readChunk();
      assert.equal(chunk.cookie, 77n);
      assert.equal(chunk.type, C.NBD_REPLY_TYPE_OFFSET_DATA);
      assert.equal(chunk.flags, C.NBD_REPLY_FLAG_DONE);
      assert.equal(Number(chunk.payload.readBigUInt64BE(0)), 5000);
      assert.ok(chunk.payload.subarray(8).equals(data));

      c.sendRequest({ type: C.NBD_CMD_READ, cookie: 78n, offset: DISK_SIZE, length: 1 });
      const err = await c.readChunk();
      assert.equal(err.cookie, 78n);
      assert.equal(err.type, C.NBD_REPLY_TYPE_ERROR);
      assert.equal(err.flags, C.NBD_REPLY_FLAG_DONE);
      assert.equal(err.payload.readUInt32BE(0), C.NBD_EINVAL);
      const msgLen = err.payload.readUInt16BE(4);
      assert.equal(err.payload.length, 6 + msgLen);
      assert.match(err.payload.subarray(6).toString(), /beyond the export size/);

      // Zero-length read: a lone NONE chunk.
      c.sendRequest({ type: C.NBD_CMD_READ, cookie: 79n, offset: 0, length: 0 });
      const none = await c.readChunk();
      assert.deepEqual([none.type, none.flags, none.payload.length], [C.NBD_REPLY_TYPE_NONE, C.NBD_REPLY_FLAG_DONE, 0]);
      await c.disconnect();
    });

    it('answers BLOCK_STATUS for base:allocation, honouring REQ_ONE', async () => {
      const c = await connect();
      const { contextId } = await c.handshake('disk', { blockStatus: true });
      assert.notEqual(contextId, null);
      // Granules 40..47 are untouched by the other tests. Write granules 42 and 44, then zero 44 again.
      assert.equal(await c.writeAt(42 * GRANULE + 5, Buffer.from('data')), 0);
      assert.equal(await c.writeAt(44 * GRANULE, Buffer.alloc(GRANULE, 1)), 0);
      c.sendRequest({ type: C.NBD_CMD_WRITE_ZEROES, cookie: 2n, offset: 44 * GRANULE, length: GRANULE });
      assert.equal((await c.readSimpleReply()).error, 0);

      const query = async (offset: number, length: number, flags = 0) => {
        c.sendRequest({ type: C.NBD_CMD_BLOCK_STATUS, flags, cookie: 99n, offset, length });
        const chunk = await c.readChunk();
        assert.equal(chunk.type, C.NBD_REPLY_TYPE_BLOCK_STATUS, chunk.payload.toString());
        assert.equal(chunk.flags, C.NBD_REPLY_FLAG_DONE);
        assert.equal(chunk.payload.readUInt32BE(0), contextId);
        const out: Array<[number, number]> = [];
        for (let p = 4; p < chunk.payload.length; p += 8) out.push([chunk.payload.readUInt32BE(p), chunk.payload.readUInt32BE(p + 4)]);
        return out;
      };
      const HZ = C.NBD_STATE_HOLE | C.NBD_STATE_ZERO;
      assert.deepEqual(await query(40 * GRANULE, 8 * GRANULE), [
        [2 * GRANULE, HZ],
        [GRANULE, 0],
        [5 * GRANULE, HZ],
      ]);
      assert.deepEqual(await query(40 * GRANULE + 100, 8 * GRANULE, C.NBD_CMD_FLAG_REQ_ONE), [[2 * GRANULE - 100, HZ]]);
      assert.deepEqual(await query(42 * GRANULE, 3, C.NBD_CMD_FLAG_REQ_ONE), [[3, 0]]);
      // Errors: beyond the end, zero length.
      c.sendRequest({ type: C.NBD_CMD_BLOCK_STATUS, cookie: 5n, offset: DISK_SIZE - 1, length: 2 });
      const e = await c.readChunk();
      assert.equal(e.type, C.NBD_REPLY_TYPE_ERROR);
      assert.equal(e.payload.readUInt32BE(0), C.NBD_EINVAL);
      await c.disconnect();
    });
  });

  describe('misbehaving clients', () => {
    it('closes on a bad request magic, releases the export, serves others', async () => {
      const other = await connect();
      await other.handshake('ro');
      const c = await connect();
      await c.handshake('disk');
      c.write(Buffer.alloc(28, 0xee));
      assert.equal(await c.closedByServer(), true);
      await ts.provider.waitUntilReleased('disk');
      assertReleased('disk');
      assert.ok(ts.logs.some((l) => l.msg === 'nbd protocol error' && /magic/.test(String(l.fields.error))));
      // The other connection is unaffected.
      assert.equal((await other.readAt(0, 10)).length, 10);
      await other.disconnect();
      await assertServing();
    });

    it('closes on a write payload over 32 MiB', async () => {
      const c = await connect();
      await c.handshake('disk');
      c.sendRequest({ type: C.NBD_CMD_WRITE, cookie: 1n, offset: 0, length: 32 * MiB + 1 });
      assert.equal(await c.closedByServer(), true);
      await assertServing();
    });

    it('releases the export when a client disconnects in the middle of a write payload', async () => {
      const c = await connect();
      await c.handshake('disk');
      c.sendRequest({ type: C.NBD_CMD_WRITE, cookie: 1n, offset: 0, length: MiB }, Buffer.alloc(100_000, 7));
      await new Promise((r) => setTimeout(r, 50));
      assert.equal(ts.provider.stats('disk').open, true);
      c.destroy();
      await ts.provider.waitUntilReleased('disk', 5000);
      assertReleased('disk');
      // Nothing of the partial write reached the disk.
      const check = await connect();
      await check.handshake('disk');
      assert.notDeepEqual((await check.readAt(0, 100_000)).subarray(50_000, 50_010), Buffer.alloc(10, 7));
      await check.disconnect();
    });

    it('releases the export when a client disconnects with requests in flight', async () => {
      const c = await connect();
      await c.handshake('disk');
      let started = 0;
      hooks.beforeIo = async () => {
        started++;
        await new Promise((r) => setTimeout(r, 100));
      };
      for (let i = 0; i < 20; i++) c.sendRequest({ type: C.NBD_CMD_READ, cookie: BigInt(i), offset: i * 4096, length: 4096 });
      await waitFor(() => started > 0, 2000, 'requests to start');
      c.destroy();
      await ts.provider.waitUntilReleased('disk', 5000);
      assertReleased('disk');
      await assertServing();
    });

    it('survives random garbage at every stage', async () => {
      let seed = 12345;
      const opensBefore = ts.provider.stats('disk').opens;
      for (let i = 0; i < 60; i++) {
        const c = await connect();
        const stage = i % 4;
        const junk = pseudoRandom(16 + (i * 37) % 300, seed++);
        if (stage === 0) {
          c.write(junk); // before even reading the greeting
        } else if (stage === 1) {
          await c.readGreeting();
          c.write(junk);
        } else if (stage === 2) {
          await c.start();
          c.write(Buffer.concat([Buffer.from('IHAVEOPT', 'latin1'), junk]));
        } else {
          await c.handshake('disk');
          c.write(junk);
        }
        // Either the server closes, or it waits for more bytes; both are fine. Then we leave.
        await c.closedByServer(50);
        c.destroy();
        await ts.provider.waitUntilReleased('disk');
      }
      assert.ok(ts.provider.stats('disk').opens > opensBefore);
      assertReleased('disk');
      await assertServing();
    });
  });
});
