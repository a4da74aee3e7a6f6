/**
 * One region listening on a real loopback port (port 0), for tests that need real sockets: the app
 * exactly as main.ts builds it (`buildRegion`), or, with `app` options, a second app over the same
 * region's services built by `buildRegionApp` with those options (limits, the metrics token, a debug
 * log), as main.ts would wire them. Raw-socket helpers read what the server writes on the wire.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { AddressInfo } from 'node:net';
import type { FastifyInstance } from 'fastify';
import { request } from 'undici';
import { buildRegionApp, type RegionApiDeps } from '../../src/api/region-app.ts';
import { loadServeConfig, type Account, type ServeConfig } from '../../src/config.ts';
import type { LogFn } from '../../src/lib/logger.ts';
import { buildRegion, tenantDirectory, type BuiltRegion } from '../../src/main.ts';
import { SnapshotService } from '../../src/services/snapshot-service.ts';
import { VolumeDataService } from '../../src/services/volume-data-service.ts';
import { VolumeService } from '../../src/services/volume-service.ts';
import { ALICE, BOB, aliceKeys } from './region-harness.ts';
import { signedRequest, type Keys, type SdkStyle } from './signed-request.ts';
import { testWorkers } from './process-workers.ts';

export interface LiveRegion {
  config: ServeConfig;
  built: BuiltRegion;
  /** The app listening (main.ts's, or the one built with `app` options). */
  app: FastifyInstance;
  url: string;
  port: number;
  logs(): Array<Record<string, any>>;
  debugLogs(): Array<Record<string, any>>;
  /** A signed request over a real connection; `sign` signs other bytes than `body` sends (a replay). */
  call(method: string, path: string, body?: string | Buffer | Record<string, unknown>, opts?: CallOptions): Promise<Answer>;
  close(): Promise<void>;
}

export interface CallOptions {
  keys?: Keys;
  style?: SdkStyle;
  headers?: Record<string, string>;
  contentSha256?: boolean;
  /** Sends these bytes instead of the signed body, with the signed headers unchanged. */
  replayWith?: Buffer;
}

export interface Answer {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  raw: Buffer;
  json: any;
}

export interface LiveAppOptions extends Partial<Pick<RegionApiDeps, 'limits' | 'metricsToken'>> {
  /** Capture the debug log (debugLogs()). */
  debug?: boolean;
  /** Pass the config's metrics token (credentials.json's), as main.ts does. */
  configToken?: boolean;
}

export async function startLiveRegion(options: { app?: LiveAppOptions; /** Accounts besides Alice and Bob. */ accounts?: Account[] } = {}): Promise<LiveRegion> {
  const dir = await mkdtemp(join(tmpdir(), 'snapferry-live-'));
  const config = { ...loadServeConfig({ dataDir: dir, regions: 'bj' }, {}), accounts: [ALICE, BOB, ...(options.accounts ?? [])], gcGraceMs: 0 };
  const workers = testWorkers();
  const lines: string[] = [];
  const debugLines: string[] = [];
  const log: LogFn = (level, msg, fields) => void lines.push(JSON.stringify({ level, msg, ...fields }));
  const built = await buildRegion(config, 'bj', workers, log);
  let app = built.app;
  if (options.app) {
    const { debug, configToken, ...rest } = options.app;
    app = buildRegionApp({
      region: 'bj', tenants: tenantDirectory(config), volumes: new VolumeService(built.region), snapshots: new SnapshotService(built.region),
      volumeData: new VolumeDataService(built.region), metrics: built.metrics, log,
      debugLog: debug ? (msg, fields) => debugLines.push(JSON.stringify({ msg, ...fields })) : undefined,
      metricsToken: configToken ? config.metricsToken : undefined,
      ...rest,
    });
  }
  await app.listen({ host: '127.0.0.1', port: 0 });
  built.start();
  const port = (app.server.address() as AddressInfo).port;
  const url = `http://127.0.0.1:${port}`;
  return {
    config, built, app, url, port,
    logs: () => lines.map((l) => JSON.parse(l)),
    debugLogs: () => debugLines.map((l) => JSON.parse(l)),
    async call(method, path, body, opts = {}) {
      const signed = signedRequest({
        method, url: path, body, keys: opts.keys ?? aliceKeys, style: opts.style, host: `127.0.0.1:${port}`,
        extraHeaders: opts.headers, contentSha256: opts.contentSha256,
      });
      const payload = opts.replayWith ?? signed.payload;
      const res = await request(`${url}${path}`, { method: method as 'GET', headers: signed.headers, body: payload });
      const raw = Buffer.from(await res.body.arrayBuffer());
      const type = String(res.headers['content-type'] ?? '');
      return { status: res.statusCode, headers: res.headers, raw, json: type.includes('json') && raw.length > 0 ? JSON.parse(raw.toString('utf8')) : null };
    },
    async close() {
      try {
        if (app !== built.app) await app.close();
        await built.close();
      } finally {
        await workers.close();
        await rm(dir, { recursive: true, force: true });
      }
    },
  };
}

/** What the server wrote on a raw connection, parsed (status, headers, body), and whether it closed it. */
export interface RawAnswer {
  status: number;
  headers: Record<string, string>;
  body: string;
  json: any;
  /** The server closed the connection (FIN or reset) after answering. */
  closed: boolean;
  /** ms from the first write (or the connection) to the close. */
  closedAfterMs: number;
}

/** Parses one HTTP/1.1 response with a Content-Length from the start of `text`. */
export function parseResponse(text: string): Omit<RawAnswer, 'closed' | 'closedAfterMs'> | null {
  const end = text.indexOf('\r\n\r\n');
  if (end < 0) return null;
  const [statusLine, ...lines] = text.slice(0, end).split('\r\n');
  const status = Number(/^HTTP\/1\.[01] (\d{3})/.exec(statusLine!)?.[1]);
  const headers: Record<string, string> = {};
  for (const line of lines) {
    const colon = line.indexOf(':');
    headers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim();
  }
  const length = Number(headers['content-length'] ?? 0);
  const body = text.slice(end + 4, end + 4 + length);
  let json: any = null;
  try {
    json = JSON.parse(body);
  } catch {
    /* not JSON */
  }
  return { status, headers, body, json };
}

/**
 * Opens a connection, writes `bytes` (in order, `gapMs` apart), and collects what the server writes
 * until it closes the connection or `waitMs` passes.
 */
export async function rawExchange(port: number, bytes: Array<string | Buffer>, opts: { gapMs?: number; waitMs?: number } = {}): Promise<RawAnswer & { text: string }> {
  const socket = connect(port, '127.0.0.1');
  socket.on('error', () => {});
  await new Promise<void>((resolve, reject) => socket.once('connect', resolve).once('error', reject));
  const started = Date.now();
  const received: Buffer[] = [];
  socket.on('data', (d) => received.push(d));
  const closed = new Promise<boolean>((resolve) => {
    socket.once('close', () => resolve(true));
    setTimeout(() => resolve(false), opts.waitMs ?? 5000).unref();
  });
  for (const [i, part] of bytes.entries()) {
    if (i > 0 && opts.gapMs) await new Promise((r) => setTimeout(r, opts.gapMs));
    if (socket.destroyed) break;
    socket.write(part);
  }
  const didClose = await closed;
  const closedAfterMs = Date.now() - started;
  socket.destroy();
  const text = Buffer.concat(received).toString('latin1');
  const parsed = parseResponse(text) ?? { status: 0, headers: {}, body: '', json: null };
  return { ...parsed, closed: didClose, closedAfterMs, text };
}

/** A connection that has sent nothing yet (resolves once connected). */
export async function openSocket(port: number): Promise<Socket> {
  const socket = connect(port, '127.0.0.1');
  socket.on('error', () => {});
  await new Promise<void>((resolve, reject) => socket.once('connect', resolve).once('error', reject));
  return socket;
}
