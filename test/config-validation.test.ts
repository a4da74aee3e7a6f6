/**
 * Every number the server is configured with is checked at start, from flags, environment and
 * config file alike: a clear one-line error naming the setting and where it came from, never a
 * server that spins (gcIntervalSeconds 0), never copies (copyConcurrencyPerDestination 0), or
 * silently uses a default instead of a misspelt setting.
 */
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ConfigError, loadServeConfig, type ServeFlags } from '../src/config.ts';
import { runCli } from './helpers/cli.ts';

const KEYS = { SNAPFERRY_ACCESS_KEY_ID: 'config-test-ak-0123456789', SNAPFERRY_SECRET_ACCESS_KEY: 'config-test-sk' };
const dirs: string[] = [];
after(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});
async function tempDir(): Promise<string> {
  const d = await mkdtemp(join(tmpdir(), 'snapferry-config-'));
  dirs.push(d);
  return d;
}

async function configFile(content: unknown): Promise<string> {
  const path = join(await tempDir(), 'config.json');
  await writeFile(path, typeof content === 'string' ? content : JSON.stringify(content));
  return path;
}

async function load(flags: ServeFlags, env: NodeJS.ProcessEnv = {}): Promise<ReturnType<typeof loadServeConfig>> {
  return loadServeConfig({ dataDir: await tempDir(), ...flags }, { ...KEYS, ...env });
}

function refuses(message: RegExp) {
  return (e: unknown): boolean => {
    assert.ok(e instanceof ConfigError, `a ConfigError, not ${String(e)}`);
    assert.match(e.message, message);
    assert.doesNotMatch(e.message, /\n/, 'one line');
    return true;
  };
}

test('config-file numbers outside what the code can run are refused, naming the setting and the file', async () => {
  const cases: Array<[Record<string, unknown>, RegExp]> = [
    [{ gcIntervalSeconds: 0 }, /^gcIntervalSeconds \(in .*config\.json\) must be an integer from 1 to 2147483, not 0$/],
    [{ gcIntervalSeconds: 3e6 }, /gcIntervalSeconds .* not 3000000/], // past setInterval's limit: Node would fire every 1 ms
    [{ gcIntervalSeconds: 1.5 }, /gcIntervalSeconds .* not 1\.5/],
    [{ gcIntervalSeconds: '600' }, /gcIntervalSeconds .* not "600"/],
    [{ copyConcurrencyPerDestination: 0 }, /copyConcurrencyPerDestination \(in .*\) must be an integer from 1 to 64, not 0/],
    [{ copyConcurrencyPerDestination: -3 }, /copyConcurrencyPerDestination .* not -3/],
    [{ copyConcurrencyPerDestination: 1e9 }, /copyConcurrencyPerDestination .* not 1000000000/],
    [{ copyDeadlineSeconds: 0 }, /copyDeadlineSeconds .* from 1 to 31536000, not 0/],
    [{ copyDeadlineSeconds: null }, /copyDeadlineSeconds .* not null/],
    [{ gcGraceSeconds: -1 }, /gcGraceSeconds .* from 0 to 31536000, not -1/],
    [{ gcGraceSeconds: 1e300 }, /gcGraceSeconds .* not 1e\+300/],
    [{ chunkSizeBytes: 3 << 20 }, /chunkSizeBytes \(in .*\) must be a power of two from 524288 \(512 KiB\) to 67108864 \(64 MiB\), not 3145728/],
    [{ chunkSizeBytes: 256 << 10 }, /chunkSizeBytes .* not 262144/],
    [{ chunkSizeBytes: 128 << 20 }, /chunkSizeBytes .* not 134217728/],
    [{ chunkSizeBytes: '1048576' }, /chunkSizeBytes .* not "1048576"/],
    [{ port: 0 }, /port \(in .*\) must be a port number from 1 to 65535, not 0/],
    [{ port: 70000 }, /port .* not 70000/],
    [{ port: '8801' }, /port .* not "8801"/],
    [{ nbdPort: 10809.5 }, /nbdPort .* not 10809\.5/],
    [{ regions: 'bj' }, /regions \(in .*\) must be an array of region names/],
    [{ peers: ['hkg'] }, /peers \(in .*\) must be an object/],
    [{ accounts: [null] }, /accounts \(in .*\) must be an array/],
    [{ gcIntervalSecond: 60 }, /unknown setting "gcIntervalSecond" in .*config\.json \(known: .*gcIntervalSeconds/],
  ];
  for (const [content, message] of cases) {
    const config = await configFile(content);
    await assert.rejects(load({ config, regions: 'bj' }), refuses(message), JSON.stringify(content));
  }
  await assert.rejects(load({ config: await configFile('[1]') }), refuses(/the config file .* must hold a JSON object/));
  await assert.rejects(load({ config: await configFile('null') }), refuses(/the config file .* must hold a JSON object/));
});

test('the values that are in range still load, and defaults stay as documented', async () => {
  const config = await configFile({ gcIntervalSeconds: 1, gcGraceSeconds: 0, copyConcurrencyPerDestination: 64, copyDeadlineSeconds: 60, chunkSizeBytes: 512 << 10, port: 65533, nbdPort: 1 });
  const c = await load({ config });
  assert.deepEqual(
    [c.gcIntervalMs, c.gcGraceMs, c.copyConcurrencyPerDestination, c.copyDeadlineMs, c.chunkSize, c.port, c.nbdPort],
    [1000, 0, 64, 60_000, 512 << 10, 65533, 1],
  );
  const d = await load({});
  assert.deepEqual([d.gcIntervalMs, d.gcGraceMs, d.copyConcurrencyPerDestination, d.copyDeadlineMs, d.chunkSize, d.port, d.nbdPort], [600_000, 3_600_000, 20, 86_400_000, 1 << 20, 8801, 10809]);
});

test('ports from flags: out of range, not a number, no room for every region, HTTP and NBD overlapping', async () => {
  const cases: Array<[ServeFlags, RegExp]> = [
    [{ port: '0' }, /^--port must be a port number from 1 to 65535, not "0"$/],
    [{ port: '65536' }, /--port .* not "65536"/],
    [{ nbdPort: '-1' }, /^--nbd-port must be a port number .* not "-1"$/],
    [{ nbdPort: '10809.5' }, /--nbd-port .* not "10809.5"/],
    [{ port: 'http' }, /--port .* not "http"/],
    [{ port: '65534', regions: 'bj,gz,hkg' }, /^--port 65534 leaves no port for region hkg \(the i-th region listens on --port\+i, at most 65535\)$/],
    [{ nbdPort: '65535', regions: 'bj,gz' }, /^--nbd-port 65535 leaves no port for region gz/],
    [{ port: '9000', nbdPort: '9002', regions: 'bj,gz,hkg' }, /^--port 9000 and --nbd-port 9002 overlap: 3 region\(s\) need HTTP ports 9000-9002 and NBD ports 9002-9004$/],
    [{ port: '9000', nbdPort: '9000', regions: 'bj' }, /overlap/],
  ];
  for (const [flags, message] of cases) await assert.rejects(load(flags), refuses(message), JSON.stringify(flags));
  // A flag wins over the file, and the message names the flag that was used.
  const config = await configFile({ port: 65535, regions: ['bj', 'gz'] });
  await assert.rejects(load({ config }), refuses(/^port \(in .*\) 65535 leaves no port for region gz/));
  assert.equal((await load({ config, port: '20000' })).port, 20000);
});

test('environment: SNAPFERRY_LOG_LEVEL must be a level; an empty SNAPFERRY_DATA_DIR means the default', async () => {
  await assert.rejects(load({}, { SNAPFERRY_LOG_LEVEL: 'trace' }), refuses(/^SNAPFERRY_LOG_LEVEL must be one of debug, info, warn, error, not "trace"$/));
  await load({}, { SNAPFERRY_LOG_LEVEL: 'debug' }); // aborted requests are logged at debug
  for (const level of ['', 'info', 'warn', 'error']) await load({}, { SNAPFERRY_LOG_LEVEL: level });
  const cwd = await tempDir();
  const before = process.cwd();
  process.chdir(cwd);
  try {
    assert.equal(loadServeConfig({}, { ...KEYS, SNAPFERRY_DATA_DIR: '' }).dataDir, './snapferry-data');
  } finally {
    process.chdir(before);
  }
});

test('`snapferry serve` with a bad setting exits non-zero with one line naming it, and leaves no server', async () => {
  const config = await configFile({ gcIntervalSeconds: 0 });
  const r = await runCli(['serve', '--data-dir', await tempDir(), '--regions', 'bj', '--config', config], KEYS, 60_000);
  assert.equal(r.code, 2, r.stderr);
  assert.equal(r.stderr, `snapferry: gcIntervalSeconds (in ${config}) must be an integer from 1 to 2147483, not 0\n`);
  assert.doesNotMatch(r.stdout, /ready/);
  const env = await runCli(['serve', '--data-dir', await tempDir(), '--regions', 'bj'], { ...KEYS, SNAPFERRY_LOG_LEVEL: 'verbose' }, 60_000);
  assert.equal(env.code, 2, env.stderr);
  assert.equal(env.stderr, 'snapferry: SNAPFERRY_LOG_LEVEL must be one of debug, info, warn, error, not "verbose"\n');
});

test('region backends: PostgreSQL + S3 from the config file, secrets from the environment, defaults embedded', async () => {
  const file = await configFile({
    regions: {
      bj: {
        metadata: { type: 'postgres', url: 'postgres://sf@db:5432/snapferry_bj' },
        chunkStore: { type: 's3', endpoint: 'http://rgw:7480/', bucket: 'snapferry-bj', prefix: 'r/', region: 'us-east-1', forcePathStyle: true },
      },
      hkg: {},
    },
    jobLeaseSeconds: 12,
  });
  const config = await load({ config: file }, { SNAPFERRY_BJ_S3_ACCESS_KEY_ID: 'env-ak', SNAPFERRY_BJ_S3_SECRET_ACCESS_KEY: 'env-sk', SNAPFERRY_BJ_POSTGRES_URL: 'postgres://sf:pw@db2:5432/x' });
  assert.deepEqual(config.regions, ['bj', 'hkg'], 'the object form serves its regions');
  assert.deepEqual(config.backends.bj, {
    metadata: { type: 'postgres', url: 'postgres://sf:pw@db2:5432/x' },
    chunkStore: { type: 's3', endpoint: 'http://rgw:7480', bucket: 'snapferry-bj', prefix: 'r/', region: 'us-east-1', accessKeyId: 'env-ak', secretAccessKey: 'env-sk', forcePathStyle: true },
  });
  assert.deepEqual(config.backends.hkg, { metadata: { type: 'sqlite' }, chunkStore: { type: 'local' } });
  assert.equal(config.jobLeaseMs, 12_000);
  assert.deepEqual([...config.roles].sort(), ['api', 'storage', 'worker']);
  const defaults = await load({});
  assert.equal(defaults.jobLeaseMs, 30_000);
  assert.equal(defaults.copiesPerWorker, 4);
  for (const r of defaults.regions) assert.deepEqual(defaults.backends[r], { metadata: { type: 'sqlite' }, chunkStore: { type: 'local' } });
  // --regions picks among the configured ones; a region the object does not name is embedded.
  const one = await load({ config: file, regions: 'hkg,gz' }, { SNAPFERRY_BJ_S3_ACCESS_KEY_ID: 'a', SNAPFERRY_BJ_S3_SECRET_ACCESS_KEY: 'b' });
  assert.deepEqual(one.backends.gz, { metadata: { type: 'sqlite' }, chunkStore: { type: 'local' } });
});

test('region backends and roles that cannot work are refused at start, naming the setting; no secret in the message', async () => {
  const s3 = { type: 's3', endpoint: 'http://rgw:7480', bucket: 'snapferry-bj', accessKeyId: 'ak', secretAccessKey: 'very-secret-key' };
  const pgm = { type: 'postgres', url: 'postgres://sf:hunter2@db/x' };
  const cases: Array<[unknown, ServeFlags, RegExp]> = [
    [{ regions: { bj: { metadata: { type: 'mysql' } } } }, {}, /regions\.bj .*\.metadata\.type must be "sqlite" or "postgres"/],
    [{ regions: { bj: { metadata: { type: 'postgres', url: 'mysql://x' } } } }, {}, /metadata\.url must be a postgres:\/\//],
    [{ regions: { bj: { metadata: pgm, chunkStore: { ...s3, bucket: 'Bad_Bucket' } } } }, {}, /bucket must be an S3 bucket name/],
    [{ regions: { bj: { metadata: pgm, chunkStore: { ...s3, endpoint: 'rgw:7480' } } } }, {}, /endpoint must be an http\(s\) URL/],
    [{ regions: { bj: { metadata: pgm, chunkStore: { ...s3, accessKeyId: undefined } } } }, {}, /needs accessKeyId and secretAccessKey .*SNAPFERRY_BJ_S3_ACCESS_KEY_ID/],
    [{ regions: { bj: { metadata: pgm, chunkStore: { ...s3, buckett: 'x' } } } }, {}, /unknown setting "buckett"/],
    [{ regions: { bj: { metadata: pgm, chunkStore: s3, extra: 1 } } }, {}, /unknown setting "extra" in regions\.bj/],
    [{ regions: { zz: {} } }, {}, /unknown region "zz"/],
    [{ regions: { bj: {} } }, { role: 'worker' }, /region bj keeps its metadata in SQLite, which one process owns/],
    [{ regions: { bj: { metadata: pgm } } }, { role: 'api' }, /region bj keeps its chunks in a local directory/],
    [{ regions: { bj: { metadata: pgm, chunkStore: s3 } } }, { role: 'api,cook' }, /--role takes a comma list of api, storage, worker, not "cook"/],
    [{ jobLeaseSeconds: 1 }, {}, /jobLeaseSeconds .* from 3 to 3600, not 1/],
    [{ copiesPerWorker: 0 }, {}, /copiesPerWorker .* from 1 to 64, not 0/],
  ];
  for (const [content, flags, message] of cases) {
    const file = await configFile(content);
    await assert.rejects(load({ config: file, ...flags }), (e: unknown) => {
      refuses(message)(e);
      assert.doesNotMatch((e as Error).message, /hunter2|very-secret-key/);
      return true;
    }, `${JSON.stringify(content)} ${JSON.stringify(flags)}`);
  }
  const scaled = await load({ config: await configFile({ regions: { bj: { metadata: pgm, chunkStore: s3 } } }), role: 'worker' });
  assert.deepEqual([...scaled.roles], ['worker']);
  await assert.rejects(load({ advertiseUrl: 'ftp://x' }), refuses(/--advertise-url must be an http\(s\) URL/));
});
