/**
 * In-process regions for API tests: real SQLite, real chunk files and disks in a temp dir, the real
 * Fastify app driven with `inject`. Nothing is mocked; only the network socket is skipped.
 */
import { TEST_METRICS_TOKEN } from './metrics.ts';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { FastifyInstance } from 'fastify';
import { loadServeConfig, type Account, type ServeConfig } from '../../src/config.ts';
import { buildRegion, type BuildOptions } from '../../src/main.ts';
import type { Region } from '../../src/services/region-context.ts';
import { signedRequest, type Keys, type SdkStyle } from './signed-request.ts';
import { testWorkers } from './process-workers.ts';

export const ALICE: Account = { accountId: 'alice', accessKeyId: 'alice-ak-0123456789abcdef', secretAccessKey: 'alice-secret' };
export const BOB: Account = { accountId: 'bob', accessKeyId: 'bob-ak-0123456789abcdef', secretAccessKey: 'bob-secret' };
export const aliceKeys: Keys = { ak: ALICE.accessKeyId, sk: ALICE.secretAccessKey };
export const bobKeys: Keys = { ak: BOB.accessKeyId, sk: BOB.secretAccessKey };

export interface Harness {
  dir: string;
  config: ServeConfig;
  app: FastifyInstance;
  region: Region;
  /** Sends a signed request (Alice's keys unless given) and returns status, headers and parsed JSON. */
  call(method: string, url: string, body?: unknown, opts?: { keys?: Keys; style?: SdkStyle; at?: number; expirationSeconds?: number; headers?: Record<string, string> }): Promise<{ status: number; headers: Record<string, unknown>; json: any; raw: Buffer }>;
  /** What the region logged so far, parsed. */
  logs(): Array<Record<string, any>>;
  /** Runs one garbage collection of the region now. */
  gc(): Promise<any>;
  /** Polls until `check` returns truthy (or throws after `ms`). */
  waitFor<T>(check: () => Promise<T | null | undefined | false>, ms?: number): Promise<T>;
  close(): Promise<void>;
}

export async function startHarness(regionName = 'bj', overrides: Partial<ServeConfig> = {}, options: BuildOptions = {}): Promise<Harness> {
  const dir = await mkdtemp(join(tmpdir(), 'snapferry-test-'));
  const config = { ...loadServeConfig({ dataDir: dir, regions: regionName }, {}), accounts: [ALICE, BOB], gcGraceMs: 0, metricsToken: TEST_METRICS_TOKEN, ...overrides };
  const workers = testWorkers();
  const logs: string[] = [];
  const built = await buildRegion(config, regionName, workers, (level, msg, fields) => logs.push(JSON.stringify({ level, msg, ...fields })), options);
  await built.app.ready();
  built.start();
  const harness: Harness = {
    dir,
    config,
    app: built.app,
    region: built.region,
    async call(method, url, body, opts = {}) {
      const req = signedRequest({ method, url, body, keys: opts.keys ?? aliceKeys, style: opts.style, at: opts.at, expirationSeconds: opts.expirationSeconds, extraHeaders: opts.headers });
      const res = await built.app.inject({ method: req.method as 'GET', url: req.url, headers: req.headers, payload: req.payload });
      const raw = res.rawPayload;
      let json: unknown = null;
      if (String(res.headers['content-type'] ?? '').includes('json') && raw.length > 0) json = JSON.parse(raw.toString('utf8'));
      return { status: res.statusCode, headers: res.headers, json, raw };
    },
    logs: () => logs.map((l) => JSON.parse(l)),
    gc: () => built.gc(),
    async waitFor(check, ms = 20_000) {
      const deadline = Date.now() + ms;
      for (;;) {
        const v = await check();
        if (v) return v as never;
        if (Date.now() > deadline) throw new Error(`condition not met within ${ms} ms; logs:\n${logs.slice(-20).join('\n')}`);
        await new Promise((r) => setTimeout(r, 25));
      }
    },
    async close() {
      try {
        await built.close();
      } finally {
        await workers.close();
        await rm(dir, { recursive: true, force: true });
      }
    },
  };
  return harness;
}
