/**
 * NBD server lifetime: start/close, disconnecting clients, releasing exports exactly once in every
 * order of events, no leaked handles, and faulty providers/loggers.
 */
import assert from 'node:assert/strict';
import net from 'node:net';
import { after, describe, it } from 'node:test';
import {
  ExportUnavailableError,
  type ExportProvider,
  type OpenedExport,
} from '../src/blockdev/block-target.ts';
import * as C from '../src/blockdev/nbd/constants.ts';
import { startNbdServer } from '../src/blockdev/nbd/index.ts';
import { type TargetHooks } from './helpers/file-block-target.ts';
import { startTestServer, waitFor, type TestServer } from './helpers/nbd-harness.ts';
import { RawNbdClient } from './helpers/nbd-raw-client.ts';

const MiB = 1024 * 1024;

function tcpHandles(): number {
  return process.getActiveResourcesInfo().filter((r) => r === 'TCPSocketWrap' || r === 'TCPServerWrap').length;
}

function timers(): number {
  return process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length;
}

/** A provider that never touches disk, counting opens and releases, with an optional open delay. */
class MemoryProvider implements ExportProvider {
  opens = 0;
  releases = 0;
  doubleReleases = 0;
  openDelayMs = 0;
  openError: Error | null = null;
  releaseError: Error | null = null;
  held = false;

  async list() {
    return [{ name: 'mem' }];
  }

  async describe(name: string) {
    if (name !== 'mem') throw new ExportUnavailableError(`no export ${name}`, 'unknown');
    return { size: MiB, readOnly: false };
  }

  async open(name: string): Promise<OpenedExport> {
    if (name !== 'mem') throw new ExportUnavailableError(`no export ${name}`, 'unknown');
    if (this.openError) throw this.openError;
    if (this.held) throw new ExportUnavailableError('busy', 'busy');
    this.held = true;
    if (this.openDelayMs) await new Promise((r) => setTimeout(r, this.openDelayMs));
    this.opens++;
    let released = false;
    const data = Buffer.alloc(MiB);
    return {
      readOnly: false,
      target: {
        size: MiB,
        read: async (o, l) => Buffer.from(data.subarray(o, o + l)),
        write: async (o, d) => void d.copy(data, o),
        writeZeroes: async (o, l) => void data.fill(0, o, o + l),
        trim: async (o, l) => void data.fill(0, o, o + l),
        flush: async () => {},
        extents: async (_o, l) => [{ length: l, hole: false, zero: false }],
      },
      release: async () => {
        if (released) {
          this.doubleReleases++;
          return;
        }
        released = true;
        this.held = false;
        this.releases++;
        if (this.releaseError) throw this.releaseError;
      },
    };
  }
}

describe('NBD server lifecycle', () => {
  const cleanups: Array<() => Promise<void>> = [];
  after(async () => {
    for (const c of cleanups.reverse()) await c();
  });

  it('port 0 picks distinct free ports; a port in use is reported', async () => {
    const provider = new MemoryProvider();
    const a = await startNbdServer({ host: '127.0.0.1', port: 0, exports: provider });
    cleanups.push(() => a.close());
    const b = await startNbdServer({ host: '127.0.0.1', port: 0, exports: provider });
    cleanups.push(() => b.close());
    assert.ok(a.port > 0 && b.port > 0 && a.port !== b.port);
    await assert.rejects(startNbdServer({ host: '127.0.0.1', port: a.port, exports: provider }), /EADDRINUSE/);
  });

  it('close() disconnects every client, waits for in-flight work, releases exports, leaks nothing', async () => {
    const tcpBefore = tcpHandles();
    const timersBefore = timers();
    const hooks: TargetHooks = {};
    const ts: TestServer = await startTestServer([
      { name: 'a', size: MiB, hooks },
      { name: 'b', size: MiB },
    ]);
    const inHandshake = await RawNbdClient.connect(ts.port);
    await inHandshake.readGreeting();
    const idle = await RawNbdClient.connect(ts.port);
    await idle.handshake('b');
    const busy = await RawNbdClient.connect(ts.port);
    await busy.handshake('a');
    let finished = false;
    hooks.beforeIo = async () => {
      await new Promise((r) => setTimeout(r, 200));
      finished = true;
    };
    busy.sendRequest({ type: C.NBD_CMD_WRITE, cookie: 1n, offset: 0, length: 4 }, Buffer.from('abcd'));
    await waitFor(() => ts.provider.currentTarget('a')?.stats.writes === 1, 2000, 'write to start');

    await ts.cleanup();
    // close() resolved only after the in-flight write settled and both exports were released.
    assert.equal(finished, true);
    for (const name of ['a', 'b']) {
      const st = ts.provider.stats(name);
      assert.deepEqual([st.open, st.opens, st.releases, st.doubleReleases], [false, 1, 1, 0], name);
    }
    for (const c of [inHandshake, idle, busy]) assert.equal(await c.closedByServer(1000), true);
    assert.ok(ts.logs.some((l) => l.msg === 'nbd server closed'));
    await assert.rejects(RawNbdClient.connect(ts.port), /ECONNREFUSED/);
    // Calling close() again is harmless.
    await ts.server.close();

    for (const c of [inHandshake, idle, busy]) c.destroy();
    await waitFor(() => tcpHandles() === tcpBefore, 2000, 'TCP handles to be closed');
    await waitFor(() => timers() <= timersBefore, 2000, 'timers to be cleared');
  });

  it('a client that sent NBD_CMD_DISC hands the export over to the next client without a busy error', async () => {
    const hooks: TargetHooks = {};
    const ts = await startTestServer([{ name: 'disk', size: MiB, hooks }]);
    cleanups.push(() => ts.cleanup());
    const a = await RawNbdClient.connect(ts.port);
    await a.handshake('disk');
    hooks.beforeIo = () => new Promise((r) => setTimeout(r, 300));
    a.sendRequest({ type: C.NBD_CMD_WRITE, cookie: 1n, offset: 0, length: 1 }, Buffer.from('x'));
    a.sendRequest({ type: C.NBD_CMD_DISC, cookie: 2n, offset: 0, length: 0 });
    a.destroy(); // like a tool exiting right after sending DISC
    const b = await RawNbdClient.connect(ts.port);
    await b.handshake('disk'); // throws on NBD_REP_ERR_POLICY
    hooks.beforeIo = undefined;
    assert.equal((await b.readAt(0, 1)).toString(), 'x');
    await b.disconnect();
    await ts.provider.waitUntilReleased('disk');
    const st = ts.provider.stats('disk');
    assert.deepEqual([st.opens, st.releases, st.doubleReleases], [2, 2, 0]);
  });

  it('releases an export whose open completes after the client has gone', async () => {
    const provider = new MemoryProvider();
    provider.openDelayMs = 200;
    const server = await startNbdServer({ host: '127.0.0.1', port: 0, exports: provider });
    cleanups.push(() => server.close());
    const c = await RawNbdClient.connect(server.port);
    await c.start();
    c.sendOption(C.NBD_OPT_GO, RawNbdClient.goData('mem'));
    await new Promise((r) => setTimeout(r, 50));
    c.destroy();
    await waitFor(() => provider.releases === 1, 3000, 'late open to be released');
    assert.equal(provider.opens, 1);
    assert.equal(provider.doubleReleases, 0);
    assert.equal(provider.held, false);
  });

  it('survives a provider that throws unexpected errors and a logger that throws', async () => {
    const provider = new MemoryProvider();
    let logged = 0;
    const server = await startNbdServer({
      host: '127.0.0.1',
      port: 0,
      exports: provider,
      log: () => {
        logged++;
        throw new Error('logger is broken');
      },
    });
    cleanups.push(() => server.close());

    provider.openError = new Error('database is down');
    const c = await RawNbdClient.connect(server.port);
    await c.start();
    c.sendOption(C.NBD_OPT_GO, RawNbdClient.goData('mem'));
    const r = await c.readOptionReply();
    assert.equal(r.type, C.NBD_REP_ERR_UNKNOWN);
    assert.doesNotMatch(r.data.toString(), /database/, 'internal error details are not sent to clients');
    c.destroy();

    provider.openError = null;
    provider.releaseError = new Error('release failed');
    const d = await RawNbdClient.connect(server.port);
    await d.handshake('mem');
    assert.equal(await d.writeAt(10, Buffer.from('hi')), 0);
    assert.equal((await d.readAt(10, 2)).toString(), 'hi');
    await d.disconnect();
    await waitFor(() => provider.releases === 1, 2000, 'release');
    assert.equal(provider.doubleReleases, 0);
    assert.ok(logged > 0);

    // Still serving.
    provider.releaseError = null;
    const e = await RawNbdClient.connect(server.port);
    await e.handshake('mem');
    await e.disconnect();
    await waitFor(() => provider.releases === 2, 2000, 'second release');
  });

  it('a client that connects and sends nothing does not block close()', async () => {
    const provider = new MemoryProvider();
    const server = await startNbdServer({ host: '127.0.0.1', port: 0, exports: provider });
    const silent = net.connect(server.port, '127.0.0.1');
    silent.on('error', () => {});
    await new Promise((r) => silent.once('connect', r));
    const t0 = Date.now();
    await server.close();
    assert.ok(Date.now() - t0 < 2000);
    silent.destroy();
  });
});
