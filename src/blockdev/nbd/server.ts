/**
 * The NBD server: accepts TCP connections, runs handshake then transmission on each, and owns every
 * connection's lifetime (timeouts, logging, the upgrade to TLS, releasing the opened export exactly
 * once, shutdown).
 */
import net from 'node:net';
import type { ExportProvider, OpenedExport } from '../block-target.ts';
import { ProtocolError, errorMessage } from './errors.ts';
import { negotiate, type HandshakeTls, type UpgradedTransport } from './handshake.ts';
import { safeLogger, type NbdLogFields, type NbdLogFn } from './log.ts';
import { DirectSocketReader, adoptForDirectReads } from './direct-socket-reader.ts';
import { ConnectionClosedError, SocketReader, type NbdReader } from './socket-reader.ts';
import { NBD_TLS_MODES, PskAuthenticator, TlsHandshakeError, type NbdTlsMode, type NbdTlsOptions } from './tls.ts';
import { serveTransmission, type TransmissionLimits } from './transmission.ts';

export interface NbdServerOptions {
  host: string;
  /** 0 picks a free port (see the `port` of the result). */
  port: number;
  /** Every export: what a plaintext client sees (with TLS `off` or `on`). */
  exports: ExportProvider;
  /**
   * TLS with pre-shared keys (tls.ts). Absent: the server has no TLS (NBD_OPT_STARTTLS answers
   * NBD_REP_ERR_UNSUP) and every client sees `exports`.
   */
  tls?: NbdTlsOptions;
  log?: NbdLogFn;
  /** Per-connection cap on requests in flight (default 128). */
  maxInFlightRequests?: number;
  /** Per-connection cap on payload bytes in flight (default 64 MiB; one 32 MiB request always fits). */
  maxInFlightBytes?: number;
  /** A client that has not finished the handshake after this long is disconnected (default 30 s). */
  handshakeTimeoutMs?: number;
  /**
   * false: plaintext connections read through `'data'` events (SocketReader) instead of direct
   * reads (DirectSocketReader). For tests and benchmarks that compare the two; default true.
   */
  directReads?: boolean;
}

export interface NbdServer {
  readonly port: number;
  /** The TLS mode in force ('off' also when no TLS was configured). */
  readonly tlsMode: NbdTlsMode;
  /** Connections accepted and not yet fully closed (socket closed, export released). */
  connectionCount(): number;
  /**
   * Stops listening, disconnects every client, waits for their in-flight backend operations to
   * settle and their exports to be released. Idempotent.
   */
  close(): Promise<void>;
}

const DEFAULTS = {
  maxInFlightRequests: 128,
  maxInFlightBytes: 64 * 1024 * 1024,
  handshakeTimeoutMs: 30_000,
};

/** After we end a connection, how long the peer gets to close its side before we destroy it. */
const LINGER_MS = 5_000;
/** Idle time before TCP keepalive probes start on a connection. */
const KEEPALIVE_IDLE_MS = 30_000;
/** How long a GO for a busy export waits for a departing client of ours to release it. */
const HANDOFF_WAIT_MS = 5_000;

/**
 * Exports whose client has gone (or sent NBD_CMD_DISC) but whose release is still running. Clients
 * that run one tool after another (qemu-img, then nbdcopy) reconnect within milliseconds of the
 * previous disconnect; a GO that finds the export busy because of such a departing client waits for
 * that release instead of failing.
 */
class PendingReleases {
  private readonly pending = new Map<string, Set<Promise<void>>>();

  track(exportName: string, released: Promise<void>): void {
    let set = this.pending.get(exportName);
    if (!set) this.pending.set(exportName, (set = new Set()));
    set.add(released);
    void released.finally(() => {
      set.delete(released);
      if (set.size === 0 && this.pending.get(exportName) === set) this.pending.delete(exportName);
    });
  }

  /** Waits (bounded) for departing clients of `exportName`; false if there were none. */
  async wait(exportName: string, timeoutMs: number): Promise<boolean> {
    const set = this.pending.get(exportName);
    if (!set || set.size === 0) return false;
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      Promise.all(set),
      new Promise<void>((resolve) => (timer = setTimeout(resolve, timeoutMs))),
    ]);
    clearTimeout(timer);
    return true;
  }
}

export async function startNbdServer(options: NbdServerOptions): Promise<NbdServer> {
  const log = safeLogger(options.log);
  const limits: TransmissionLimits = {
    maxInFlightRequests: options.maxInFlightRequests ?? DEFAULTS.maxInFlightRequests,
    maxInFlightBytes: options.maxInFlightBytes ?? DEFAULTS.maxInFlightBytes,
  };
  const handshakeTimeoutMs = options.handshakeTimeoutMs ?? DEFAULTS.handshakeTimeoutMs;
  const tls = tlsSetup(options.tls);
  const connections = new Set<Connection>();
  const pendingReleases = new PendingReleases();
  let nextId = 1;
  let closing: Promise<void> | null = null;

  // allowHalfOpen: a client may shut down its sending side after NBD_CMD_DISC and still expects the
  // replies to the requests before it; we end our side ourselves. pauseOnConnect: no byte is read
  // before the socket is moved into one with direct reads (direct-socket-reader.ts).
  const server = net.createServer({ allowHalfOpen: true, noDelay: true, pauseOnConnect: true });
  server.on('connection', (accepted) => {
    if (closing) {
      accepted.destroy();
      return;
    }
    let transport: { socket: net.Socket; reader: NbdReader } | null = options.directReads === false ? null : adoptForDirectReads(accepted, { allowHalfOpen: true });
    if (!transport) {
      transport = { socket: accepted, reader: new SocketReader(accepted) };
      accepted.resume();
    }
    const conn = new Connection(transport.socket, transport.reader, nextId++, options.exports, tls, log, limits, handshakeTimeoutMs, pendingReleases);
    connections.add(conn);
    void conn.done.then(() => connections.delete(conn));
  });
  server.on('error', (err) => log('error', 'nbd server error', { error: errorMessage(err) }));

  await new Promise<void>((resolve, reject) => {
    const onError = (err: Error) => reject(err);
    server.once('error', onError);
    server.listen({ host: options.host, port: options.port }, () => {
      server.off('error', onError);
      resolve();
    });
  });
  const address = server.address();
  const port = typeof address === 'object' && address ? address.port : options.port;
  const tlsMode = tls?.mode ?? 'off';
  log('info', 'nbd server listening', { host: options.host, port, tls: tlsMode });

  return {
    port,
    tlsMode,
    connectionCount: () => connections.size,
    close() {
      closing ??= (async () => {
        const stopped = new Promise<void>((resolve) => server.close(() => resolve()));
        for (const conn of connections) conn.abort();
        await Promise.all([stopped, ...[...connections].map((c) => c.done)]);
        log('info', 'nbd server closed', { port });
      })();
      return closing;
    },
  };
}

/** What every connection shares of the TLS settings. */
interface TlsSetup {
  mode: NbdTlsMode;
  auth: PskAuthenticator;
  exportsFor: (accountId: string) => ExportProvider;
}

function tlsSetup(options: NbdTlsOptions | undefined): TlsSetup | null {
  if (!options) return null;
  if (!NBD_TLS_MODES.includes(options.mode)) throw new Error(`unknown NBD TLS mode ${String(options.mode)} (known: ${NBD_TLS_MODES.join(', ')})`);
  return { mode: options.mode, auth: new PskAuthenticator((identity) => options.keyFor(identity)), exportsFor: (a) => options.exportsFor(a) };
}

class Connection {
  /** Resolves when the socket is closed and the export (if any) released. Never rejects. */
  readonly done: Promise<void>;
  private readonly fields: NbdLogFields;
  private readonly socketClosed: Promise<void>;
  /** The reader of `socket`: the TCP socket's, then the TLS socket's after STARTTLS. */
  private reader: NbdReader;
  /** The socket the protocol runs on: the TCP socket, or the TLS socket over it after STARTTLS. */
  private socket: net.Socket;

  constructor(
    private readonly raw: net.Socket,
    private readonly rawReader: NbdReader,
    id: number,
    private readonly exports: ExportProvider,
    private readonly tls: TlsSetup | null,
    private readonly log: NbdLogFn,
    private readonly limits: TransmissionLimits,
    private readonly handshakeTimeoutMs: number,
    private readonly pendingReleases: PendingReleases,
  ) {
    this.socket = raw;
    this.reader = rawReader;
    this.fields = { conn: id, remote: `${raw.remoteAddress}:${raw.remotePort}` };
    // The TCP socket closes in every case (destroying the TLS socket over it closes it too).
    this.socketClosed = new Promise((resolve) => raw.once('close', () => resolve()));
    raw.on('error', (err: NodeJS.ErrnoException) => {
      this.log('debug', 'nbd socket error', { ...this.fields, error: err.code ?? err.message });
    });
    this.done = this.run().then(
      () => this.socketClosed,
      () => this.socketClosed,
    );
  }

  /** Disconnects immediately (server shutdown). */
  abort(): void {
    this.socket.destroy();
    this.raw.destroy();
  }

  /** NBD_OPT_STARTTLS was acknowledged: the TLS handshake runs on the TCP socket, then haggling goes on in it. */
  private startTls(tls: TlsSetup): Promise<UpgradedTransport> {
    // Synchronous up to the TLS socket's creation: no byte may reach anyone else in between.
    const upgrading = tls.auth.upgrade(this.raw, (err: NodeJS.ErrnoException) => {
      this.log('debug', 'nbd tls socket error', { ...this.fields, error: err.code ?? err.message });
    });
    return upgrading.then((session) => {
      this.socket = session.socket;
      this.socket.setNoDelay(true);
      const reader = new SocketReader(session.socket);
      this.reader = reader;
      Object.assign(this.fields, { tls: session.protocol, account: session.accountId });
      this.log('info', 'nbd tls established', { ...this.fields, identity: session.identity, cipher: session.cipher });
      return { socket: session.socket, reader, accountId: session.accountId, exports: tls.exportsFor(session.accountId) };
    });
  }

  private async run(): Promise<void> {
    const { raw: socket, log, fields } = this;
    // `reads`: which reader serves this connection (direct-socket-reader.ts, or its fallback).
    log('info', 'nbd client connected', { ...fields, reads: this.rawReader instanceof DirectSocketReader ? 'direct' : 'data-events' });
    socket.setNoDelay(true);
    // A client host that vanishes without FIN/RST would otherwise hold its export forever.
    socket.setKeepAlive(true, KEEPALIVE_IDLE_MS);
    const reader = this.rawReader;
    const handshakeTimer = setTimeout(() => {
      log('warn', 'nbd handshake timed out', fields);
      this.abort();
    }, this.handshakeTimeoutMs);
    let opened: OpenedExport | null = null;
    let exportName: string | undefined;
    let reason = 'closed';
    let markReleased = () => {};
    let departing = false;
    /** From the moment the client is known to be gone, a new client may wait for our release. */
    const depart = () => {
      if (departing || exportName === undefined) return;
      departing = true;
      this.pendingReleases.track(exportName, new Promise<void>((resolve) => (markReleased = resolve)));
    };
    socket.once('close', depart);
    const tls = this.tls;
    const handshakeTls: HandshakeTls | null = tls && { mode: tls.mode, start: () => this.startTls(tls) };
    try {
      const session = await negotiate({
        socket,
        reader,
        exports: this.exports,
        tls: handshakeTls,
        log,
        fields,
        waitForRelease: (name) => this.pendingReleases.wait(name, HANDOFF_WAIT_MS),
      });
      clearTimeout(handshakeTimer);
      if (!session) {
        reason = 'aborted during handshake';
        return;
      }
      opened = session.opened;
      exportName = session.exportName;
      if (socket.destroyed) depart();
      const exportFields = { ...fields, export: session.exportName };
      log('info', 'nbd export opened', {
        ...exportFields,
        size: opened.target.size,
        readOnly: opened.readOnly,
        structuredReplies: session.structuredReplies,
        blockStatus: session.baseAllocationContextId !== null,
      });
      const end = await serveTransmission({
        // After STARTTLS: the TLS socket and its reader.
        socket: this.socket,
        reader: this.reader,
        session,
        limits: this.limits,
        log,
        fields: exportFields,
        onEnding: depart,
      });
      reason = end === 'disconnect-command' ? 'client sent NBD_CMD_DISC' : 'connection closed by client';
    } catch (err) {
      if (err instanceof TlsHandshakeError) {
        reason = 'tls handshake failed';
        log('warn', 'nbd tls handshake failed', { ...fields, identity: err.identity, error: err.message });
      } else if (err instanceof ProtocolError) {
        reason = 'protocol error';
        log('warn', 'nbd protocol error', { ...fields, error: err.message });
      } else if (err instanceof ConnectionClosedError) {
        reason = 'connection closed by client';
      } else {
        reason = 'internal error';
        log('error', 'nbd connection failed', { ...fields, error: errorMessage(err) });
      }
    } finally {
      clearTimeout(handshakeTimer);
      socket.off('close', depart);
      // Every backend operation has settled here (serveTransmission waits for them). Release before
      // closing the socket, so a client that reconnects after seeing our close finds the export free.
      if (opened) {
        depart();
        try {
          await opened.release();
        } catch (err) {
          log('error', 'nbd export release failed', { ...fields, error: errorMessage(err) });
        }
        markReleased();
      }
      if (reason === 'protocol error' || reason === 'internal error' || reason === 'tls handshake failed') this.abort();
      else this.endGracefully();
      log('info', 'nbd client disconnected', { ...fields, ...(exportName === undefined ? {} : { export: exportName }), reason });
    }
  }

  /** Flushes what we wrote, sends FIN, and destroys the socket if the peer does not close soon. */
  private endGracefully(): void {
    const { socket } = this;
    if (socket.destroyed) return;
    const timer = setTimeout(() => socket.destroy(), LINGER_MS);
    socket.once('close', () => clearTimeout(timer));
    socket.end();
    // Nothing more will be parsed: discard input so the peer's FIN is seen and 'close' follows.
    this.reader.detach();
  }
}
