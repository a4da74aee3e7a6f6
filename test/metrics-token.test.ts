/**
 * `/metrics` is behind a token: `Authorization: Bearer <token>`, 401 in BCE format without it, with a
 * wrong one or with a tenant's signature; 200 and valid Prometheus text (promtool, when installed)
 * with it. `/healthz` stays open. The token comes from SNAPFERRY_METRICS_TOKEN, else the config key
 * `metricsToken`, else `{dataDir}/credentials.json`, where the first start writes one (and adds one
 * to a file of an earlier release). And no tenant answer tells whether another account already
 * stores some data: deduplication shows on /metrics only.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { request } from 'undici';
import { ConfigError, loadServeConfig } from '../src/config.ts';
import { bobKeys } from './helpers/region-harness.ts';
import { startLiveRegion, type LiveRegion } from './helpers/live-region.ts';
import { signedRequest } from './helpers/signed-request.ts';

let live: LiveRegion;

before(async () => {
  // main.ts passes config.metricsToken to buildRegionApp; the app here is wired the same way.
  live = await startLiveRegion({ app: { configToken: true } });
});
after(async () => live?.close());

async function get(path: string, headers: Record<string, string> = {}): Promise<{ status: number; headers: Record<string, unknown>; text: string; json: any }> {
  const res = await request(`${live.url}${path}`, { headers });
  const text = await res.body.text();
  let json: any = null;
  try {
    json = JSON.parse(text);
  } catch {
    /* not JSON */
  }
  return { status: res.statusCode, headers: res.headers, text, json };
}

function assert401(res: { status: number; headers: Record<string, unknown>; json: any }): void {
  assert.equal(res.status, 401);
  assert.equal(res.json.code, 'Unauthorized');
  assert.deepEqual(Object.keys(res.json).sort(), ['code', 'message', 'requestId']);
  assert.equal(res.headers['x-bce-request-id'], res.json.requestId);
  assert.match(String(res.headers['www-authenticate']), /^Bearer/);
}

test('/metrics: 401 Unauthorized without the token, with a wrong one or a tenant signature; 200 and valid Prometheus text with it', async () => {
  const token = live.config.metricsToken;
  assert.match(token, /^[0-9a-f]{64}$/, 'generated on first start');
  assert401(await get('/metrics'));
  assert401(await get('/metrics', { authorization: `Bearer ${token.slice(0, -1)}x` }));
  assert401(await get('/metrics', { authorization: `Bearer ${token}${token}` }));
  assert401(await get('/metrics', { authorization: token }));
  assert401(await get('/metrics', { authorization: 'Bearer' }));
  const tenant = signedRequest({ method: 'GET', url: '/metrics', keys: bobKeys, host: `127.0.0.1:${live.port}` });
  assert401(await get('/metrics', tenant.headers));
  const ok = await get('/metrics', { authorization: `Bearer ${token}` });
  assert.equal(ok.status, 200);
  assert.match(String(ok.headers['content-type']), /^text\/plain; version=0\.0\.4/);
  assert.match(ok.text, /^snapferry_chunks_deduplicated_total \d+$/m);
  const promtool = spawnSync('promtool', ['check', 'metrics'], { input: ok.text, encoding: 'utf8' });
  if (promtool.error) {
    assertPrometheusText(ok.text);
  } else {
    assert.equal(promtool.status, 0, `promtool check metrics: ${promtool.stdout}${promtool.stderr}`);
  }
  assert.equal((await get('/healthz')).status, 200, '/healthz needs no token');
});

/** The text exposition format, strictly enough to catch a broken render when promtool is not installed. */
function assertPrometheusText(text: string): void {
  const types = new Map<string, string>();
  for (const line of text.trimEnd().split('\n')) {
    let m: RegExpExecArray | null;
    if ((m = /^# HELP ([a-zA-Z_:][a-zA-Z0-9_:]*) .+$/.exec(line))) continue;
    if ((m = /^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (counter|gauge)$/.exec(line))) {
      assert.ok(!types.has(m[1]!), `TYPE of ${m[1]} twice`);
      types.set(m[1]!, m[2]!);
      continue;
    }
    m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*"(?:,[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*")*\})? (-?[0-9.e+]+|NaN|[+-]Inf)$/.exec(line);
    assert.ok(m, `not a sample line: ${JSON.stringify(line)}`);
    assert.ok(types.has(m[1]!), `${m[1]} has no TYPE`);
  }
}

test('the token: generated into credentials.json (0600) and kept; added to an older file; SNAPFERRY_METRICS_TOKEN and metricsToken override it', () => {
  const dir = mkdtempSync(join(tmpdir(), 'snapferry-token-'));
  try {
    const first = loadServeConfig({ dataDir: dir, regions: 'bj' }, {}).metricsToken;
    const file = join(dir, 'credentials.json');
    assert.equal(JSON.parse(readFileSync(file, 'utf8')).metricsToken, first);
    assert.equal(statSync(file).mode & 0o777, 0o600);
    assert.equal(loadServeConfig({ dataDir: dir, regions: 'bj' }, {}).metricsToken, first, 'the same on every start');
    // A file from before the token: one is added, everything else kept, the file replaced whole.
    const old = JSON.parse(readFileSync(file, 'utf8'));
    delete old.metricsToken;
    writeFileSync(file, JSON.stringify(old, null, 2) + '\n', { mode: 0o600 });
    const added = loadServeConfig({ dataDir: dir, regions: 'bj' }, {}).metricsToken;
    const upgraded = JSON.parse(readFileSync(file, 'utf8'));
    assert.match(added, /^[0-9a-f]{64}$/);
    assert.deepEqual(upgraded, { ...old, metricsToken: added });
    assert.equal(statSync(file).mode & 0o777, 0o600);
    assert.deepEqual(readdirSync(dir).filter((f) => f.endsWith('.tmp')), [], 'no temporary file left');
    assert.equal(loadServeConfig({ dataDir: dir, regions: 'bj' }, {}).metricsToken, added);
    // Environment, then the config file, then credentials.json.
    const config = join(dir, 'config.json');
    writeFileSync(config, JSON.stringify({ metricsToken: 'from-the-config-file-0123' }));
    assert.equal(loadServeConfig({ dataDir: dir, regions: 'bj', config }, {}).metricsToken, 'from-the-config-file-0123');
    assert.equal(loadServeConfig({ dataDir: dir, regions: 'bj', config }, { SNAPFERRY_METRICS_TOKEN: 'from-the-environment-0123' }).metricsToken, 'from-the-environment-0123');
    assert.throws(() => loadServeConfig({ dataDir: dir, regions: 'bj' }, { SNAPFERRY_METRICS_TOKEN: 'short' }), (e: unknown) => e instanceof ConfigError && /SNAPFERRY_METRICS_TOKEN must be 16/.test(e.message));
    writeFileSync(config, JSON.stringify({ metricsToken: 'has a space in it, which Bearer cannot carry' }));
    assert.throws(() => loadServeConfig({ dataDir: dir, regions: 'bj', config }, {}), (e: unknown) => e instanceof ConfigError && /metricsToken \(in .*config\.json\) must be 16/.test(e.message));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("no tenant answer tells whether another account stores the same data; the dedup counter is on /metrics only", async () => {
  const token = live.config.metricsToken;
  const dedup = async (): Promise<number> => Number(/^snapferry_chunks_deduplicated_total (\d+)$/m.exec((await get('/metrics', { authorization: `Bearer ${token}` })).text)![1]);
  const shared = randomBytes(4 << 20);
  const snapshotOf = async (keys: typeof bobKeys | undefined, data: Buffer): Promise<{ volume: any; snapshot: any; writes: number[] }> => {
    const opts = keys ? { keys } : {};
    const id = (await live.call('POST', '/v2/volume', { cdsSizeInGB: 1 }, opts)).json.volumeIds[0];
    while ((await live.call('GET', `/v2/volume/${id}`, undefined, opts)).json.volume.status !== 'Available') await new Promise((r) => setTimeout(r, 25));
    const write = await live.call('PUT', `/v2/volume/${id}/data?offset=0`, data, { ...opts, headers: { 'content-type': 'application/octet-stream' } });
    const snapshotId = (await live.call('POST', '/v2/snapshot', { volumeId: id, snapshotName: 'same' }, opts)).json.snapshotId;
    let snapshot: any;
    while ((snapshot = (await live.call('GET', `/v2/snapshot/${snapshotId}`, undefined, opts)).json.snapshot).status !== 'Available') await new Promise((r) => setTimeout(r, 25));
    const volume = (await live.call('GET', `/v2/volume/${id}`, undefined, opts)).json.volume;
    return { volume, snapshot, writes: [write.status, write.raw.length] };
  };
  await snapshotOf(bobKeys, shared); // Bob stores the data first.
  const before = await dedup();
  const aliceShared = await snapshotOf(undefined, shared); // Alice's copy of it: deduplicated.
  const afterShared = await dedup();
  const aliceUnique = await snapshotOf(undefined, randomBytes(4 << 20)); // Alice's own data: new chunks.
  assert.ok(afterShared - before >= 4, `Alice's 4 chunks were deduplicated against Bob's (${before} -> ${afterShared})`);
  assert.equal(await dedup(), afterShared, 'her unique data was not');
  const shape = (x: { volume: any; snapshot: any; writes: number[] }): unknown => {
    const { id: _s, createTime: _t, volumeId: _v, ...snapshot } = x.snapshot;
    const { id: _i, createTime: _c, ...volume } = x.volume;
    return { snapshot, volume, writes: x.writes };
  };
  assert.deepEqual(shape(aliceShared), shape(aliceUnique), 'what Alice sees is the same either way');
});
