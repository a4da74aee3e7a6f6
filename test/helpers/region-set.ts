/**
 * Several regions in this process, each listening on its own loopback port, talking to each other
 * over real HTTP exactly as `snapferry serve` does (no in-process shortcuts). For replication tests
 * that need internals (stores, job queue, metrics objects) or many copies, without the start-up
 * cost of a spawned server. A region's peer URL can be routed through a proxy (`via`).
 */
import { TEST_METRICS_TOKEN } from './metrics.ts';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadServeConfig, type ServeConfig } from '../../src/config.ts';
import { buildRegion, type BuildOptions, type BuiltRegion } from '../../src/main.ts';
import { ALICE, BOB, aliceKeys } from './region-harness.ts';
import { signedRequest, type Keys } from './signed-request.ts';
import { freePortRange } from './spawned-server.ts';
import { testWorkers } from './process-workers.ts';

export interface LiveRegion {
  name: string;
  url: string;
  port: number;
  config: ServeConfig;
  built: BuiltRegion;
  /** A signed request (Alice's keys unless given), in-process. */
  call(method: string, url: string, body?: unknown, opts?: { keys?: Keys; headers?: Record<string, string> }): Promise<{ status: number; headers: Record<string, unknown>; json: any; raw: Buffer }>;
  /** The region's own service key, for calling internal endpoints as a peer would. */
  serviceKeys(from: string): Keys;
  logs(): Array<Record<string, any>>;
  /** Stops the region (as a clean shutdown does); idempotent. */
  close(): Promise<void>;
}

export interface RegionSet {
  dir: string;
  regions: Record<string, LiveRegion>;
  /** Polls until `check` returns truthy (or throws after `ms`, with the regions' last log lines). */
  waitFor<T>(check: () => Promise<T | null | undefined | false>, ms?: number): Promise<T>;
  close(): Promise<void>;
}

export interface RegionSpec {
  name: string;
  overrides?: Partial<ServeConfig>;
  options?: BuildOptions;
}

/**
 * `via(from, to, port)` may answer a URL to reach region `to` (listening on `port`) from `from`
 * instead of directly: a proxy started by the caller. Called before any region is built.
 */
export async function startRegions(specs: RegionSpec[], via?: (from: string, to: string, port: number) => Promise<string | null>): Promise<RegionSet> {
  const dir = await mkdtemp(join(tmpdir(), 'snapferry-regions-'));
  const names = specs.map((s) => s.name);
  const base = await freePortRange(names.length);
  const workers = testWorkers();
  const regions: Record<string, LiveRegion> = {};
  const logs = new Map<string, string[]>();
  try {
    for (const [i, spec] of specs.entries()) {
      const peers: Record<string, string> = {};
      for (const [j, other] of names.entries()) {
        if (other === spec.name || !via) continue;
        const url = await via(spec.name, other, base + j);
        if (url) peers[other] = url;
      }
      const config: ServeConfig = {
        ...loadServeConfig({ dataDir: dir, regions: names.join(','), port: String(base) }, {}),
        metricsToken: TEST_METRICS_TOKEN,
        accounts: [ALICE, BOB], gcGraceMs: 0, regionSecret: 'region-set-secret', ...spec.overrides,
      };
      config.peers = { ...config.peers, ...peers };
      const lines: string[] = [];
      logs.set(spec.name, lines);
      const built = await buildRegion(config, spec.name, workers, (level, msg, fields) => lines.push(JSON.stringify({ t: Date.now(), level, msg, ...fields })), spec.options);
      const port = base + i;
      await built.app.listen({ host: '127.0.0.1', port });
      let closed: Promise<void> | null = null;
      regions[spec.name] = {
        name: spec.name, url: `http://127.0.0.1:${port}`, port, config, built,
        async call(method, url, body, opts = {}) {
          const req = signedRequest({ method, url, body, keys: opts.keys ?? aliceKeys, extraHeaders: opts.headers });
          const res = await built.app.inject({ method: req.method as 'GET', url: req.url, headers: req.headers, payload: req.payload });
          const raw = res.rawPayload;
          const json = String(res.headers['content-type'] ?? '').includes('json') && raw.length > 0 ? JSON.parse(raw.toString('utf8')) : null;
          return { status: res.statusCode, headers: res.headers, json, raw };
        },
        serviceKeys: (from) => ({ ak: `snapferry-region-${from}`, sk: config.regionSecret }),
        logs: () => lines.map((l) => JSON.parse(l)),
        close: () => (closed ??= built.close()),
      };
    }
    for (const r of Object.values(regions)) r.built.start();
  } catch (e) {
    await Promise.allSettled(Object.values(regions).map((r) => r.close()));
    await workers.close();
    await rm(dir, { recursive: true, force: true });
    throw e;
  }
  return {
    dir,
    regions,
    async waitFor(check, ms = 30_000) {
      const deadline = Date.now() + ms;
      for (;;) {
        const v = await check();
        if (v) return v as never;
        if (Date.now() > deadline) {
          const tail = [...logs.entries()].map(([n, l]) => `${n}:\n${l.slice(-15).join('\n')}`).join('\n');
          throw new Error(`condition not met within ${ms} ms; logs:\n${tail}`);
        }
        await new Promise((r) => setTimeout(r, 20));
      }
    },
    async close() {
      try {
        await Promise.allSettled(Object.values(regions).map((r) => r.close()));
      } finally {
        await workers.close();
        await rm(dir, { recursive: true, force: true });
      }
    },
  };
}
