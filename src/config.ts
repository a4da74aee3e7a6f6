/**
 * Server configuration: command-line flags, an optional JSON config file, environment variables
 * and the secrets kept in the data dir, merged in that order of precedence (flags win).
 *
 * Secrets generated on first start (the default account's key pair, the regions' shared secret)
 * are written to `{dataDir}/credentials.json` with mode 0600 and printed once.
 */
import { createHmac, randomBytes } from 'node:crypto';
import { accessSync, closeSync, constants, existsSync, fchmodSync, fsyncSync, linkSync, mkdirSync, openSync, readFileSync, renameSync, rmSync, writeSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { defaultNbdTlsMode, NBD_TLS_MODES, type NbdTlsMode } from './blockdev/nbd/tls.ts';
import { BackendConfigError, EMBEDDED_BACKENDS, parseRegionBackends, type RegionBackends } from './backend-config.ts';
import { isKnownRegion } from './domain/region.ts';
import { newAccessKeyId, newSecret } from './domain/ids.ts';

/**
 * What a process does for its regions (`--role`, default all three):
 * - `api`: the BCC API and the internal endpoints other regions call;
 * - `storage`: owns disks (local files), serves NBD, runs captures and restores of its own disks;
 * - `worker`: copy jobs, garbage collection, housekeeping.
 */
export const ROLES = ['api', 'storage', 'worker'] as const;
export type Role = (typeof ROLES)[number];

export interface Account {
  accountId: string;
  accessKeyId: string;
  secretAccessKey: string;
}

export interface ServeConfig {
  dataDir: string;
  regions: string[];
  host: string;
  port: number;
  nbdPort: number;
  /** NBD over TLS with a pre-shared key per account (blockdev/nbd/tls.ts). */
  nbdTls: NbdTlsMode;
  /** Regions served by other processes: name -> base URL. */
  peers: Record<string, string>;
  regionSecret: string;
  accounts: Account[];
  chunkSize: number;
  /** Active copies per destination region; more wait in order. */
  copyConcurrencyPerDestination: number;
  /** A destination unreachable for this long fails the copy. */
  copyDeadlineMs: number;
  gcIntervalMs: number;
  gcGraceMs: number;
  /** Where each served region keeps metadata and chunks (the embedded default unless configured). */
  backends: Record<string, RegionBackends>;
  /** What this process does (see ROLES). */
  roles: ReadonlySet<Role>;
  /** A job claim lasts this long unless renewed; a dead worker's job is taken over after it. */
  jobLeaseMs: number;
  /** Copies one worker process of a shared region runs at once (its share of the queue). */
  copiesPerWorker: number;
  /** How the other processes of a region reach this one (api processes forward disk requests to storage). */
  advertiseUrl: string | null;
  /** `GET /metrics` needs `Authorization: Bearer <metricsToken>`. */
  metricsToken: string;
  /** Secrets generated on this start, to print once. */
  generated: { account?: Account; regionSecret?: boolean };
}

export interface ServeFlags {
  dataDir?: string;
  regions?: string;
  host?: string;
  port?: string;
  nbdPort?: string;
  nbdTls?: string;
  peer?: string[];
  config?: string;
  role?: string;
  advertiseUrl?: string;
}

export class ConfigError extends Error {
  override name = 'ConfigError';
}

interface ConfigFile {
  /** The regions to serve, or an object of region name -> its backends (backend-config.ts). */
  regions?: string[] | Record<string, unknown>;
  host?: string;
  port?: number;
  nbdPort?: number;
  nbdTls?: string;
  peers?: Record<string, string>;
  regionSecret?: string;
  accounts?: Account[];
  chunkSizeBytes?: number;
  copyConcurrencyPerDestination?: number;
  copyDeadlineSeconds?: number;
  gcIntervalSeconds?: number;
  gcGraceSeconds?: number;
  jobLeaseSeconds?: number;
  copiesPerWorker?: number;
  metricsToken?: string;
}

interface StoredCredentials {
  version: 1;
  defaultAccount: Account;
  regionSecret: string;
  /** Added on the first start of this release when an older file lacks it. */
  metricsToken: string;
}

export const DEFAULT_CHUNK_SIZE = 1 << 20;

const CONFIG_KEYS: ReadonlyArray<keyof ConfigFile> = [
  'regions', 'host', 'port', 'nbdPort', 'nbdTls', 'peers', 'regionSecret', 'accounts',
  'chunkSizeBytes', 'copyConcurrencyPerDestination', 'copyDeadlineSeconds', 'gcIntervalSeconds', 'gcGraceSeconds',
  'jobLeaseSeconds', 'copiesPerWorker', 'metricsToken',
];
const LOG_LEVELS = ['debug', 'info', 'warn', 'error'];
/** setInterval/setTimeout take at most 2^31-1 ms; a longer delay silently becomes 1 ms (a spin). */
const MAX_TIMER_SECONDS = Math.floor((2 ** 31 - 1) / 1000);
const YEAR_SECONDS = 365 * 86_400;
/** main.ts's job runner runs at most 64 jobs at once: a larger per-destination cap could never apply. */
const MAX_COPY_CONCURRENCY = 64;

export function loadServeConfig(flags: ServeFlags, env: NodeJS.ProcessEnv): ServeConfig {
  const file: ConfigFile = flags.config ? readConfigFile(flags.config) : {};
  // How a config-file setting is named in messages: the operator must see which file holds it.
  const inFile = (key: keyof ConfigFile): string => `${key} (in ${flags.config})`;
  const logLevel = env.SNAPFERRY_LOG_LEVEL;
  if (logLevel && !LOG_LEVELS.includes(logLevel)) throw new ConfigError(`SNAPFERRY_LOG_LEVEL must be one of ${LOG_LEVELS.join(', ')}, not ${show(logLevel)}`);
  // An empty variable counts as unset (as for the other SNAPFERRY_ variables), not as the current dir.
  const dataDir = flags.dataDir ?? (env.SNAPFERRY_DATA_DIR || './snapferry-data');
  const regionObject = file.regions !== undefined && typeof file.regions === 'object' && file.regions !== null && !Array.isArray(file.regions) ? file.regions : null;
  if (file.regions !== undefined && !regionObject && (!Array.isArray(file.regions) || file.regions.some((r) => typeof r !== 'string'))) {
    throw new ConfigError(`${inFile('regions')} must be an array of region names or an object of region name to its backends, not ${show(file.regions)}`);
  }
  const fileRegions = regionObject ? Object.keys(regionObject) : (file.regions as string[] | undefined);
  const regions = (flags.regions ? flags.regions.split(',') : fileRegions ?? ['bj', 'gz', 'hkg']).map((r) => r.trim()).filter((r) => r !== '');
  if (regions.length === 0) throw new ConfigError('--regions names no region');
  for (const r of regions) if (!isKnownRegion(r)) throw new ConfigError(`unknown region "${r}" (known: bj gz su hkg fwh bd cd sin fsh)`);
  if (new Set(regions).size !== regions.length) throw new ConfigError('--regions names a region twice');
  if (regionObject) for (const r of Object.keys(regionObject)) if (!isKnownRegion(r)) throw new ConfigError(`${inFile('regions')} names unknown region "${r}"`);
  const backends: Record<string, RegionBackends> = {};
  for (const r of regions) {
    try {
      backends[r] = regionObject ? parseRegionBackends(r, regionObject[r], `regions.${r} (in ${flags.config})`, env) : EMBEDDED_BACKENDS;
    } catch (e) {
      if (e instanceof BackendConfigError) throw new ConfigError(e.message);
      throw e;
    }
  }
  const roles = parseRoles(flags.role);
  if (!roles.has('api') && !roles.has('storage') && !roles.has('worker')) throw new ConfigError('--role names no role');
  // An embedded region (SQLite, local chunks) has one process, which must do everything: a worker
  // elsewhere could not see its jobs, an api elsewhere not its disks.
  for (const r of regions) {
    if (backends[r]!.metadata.type === 'sqlite' && roles.size !== ROLES.length) {
      throw new ConfigError(`region ${r} keeps its metadata in SQLite, which one process owns: it cannot be served with --role ${[...roles].join(',')} (configure PostgreSQL and S3 for it to split roles)`);
    }
    if (backends[r]!.metadata.type === 'postgres' && backends[r]!.chunkStore.type === 'local' && roles.size !== ROLES.length) {
      throw new ConfigError(`region ${r} keeps its chunks in a local directory, which other processes cannot reach: it cannot be served with --role ${[...roles].join(',')} (configure an S3 chunk store for it)`);
    }
  }
  // The i-th region listens on port+i and nbd-port+i: every one of those must be a port, and no
  // HTTP port may also be an NBD port.
  const portSetting = (flag: string | undefined, flagName: string, key: 'port' | 'nbdPort', fallback: number): [number, string] => {
    if (flag !== undefined) return [parsePort(flag, flagName), flagName];
    if (file[key] === undefined) return [fallback, key];
    return [integer(file[key], inFile(key), 1, 65535, 'a port number'), inFile(key)];
  };
  const [port, portName] = portSetting(flags.port, '--port', 'port', 8801);
  const [nbdPort, nbdPortName] = portSetting(flags.nbdPort, '--nbd-port', 'nbdPort', 10809);
  const last = regions.length - 1;
  for (const [p, name] of [[port, portName], [nbdPort, nbdPortName]] as const) {
    if (p + last > 65535) throw new ConfigError(`${name} ${p} leaves no port for region ${regions[last]} (the i-th region listens on ${name}+i, at most 65535)`);
  }
  if (port <= nbdPort + last && nbdPort <= port + last) {
    throw new ConfigError(`${portName} ${port} and ${nbdPortName} ${nbdPort} overlap: ${regions.length} region(s) need HTTP ports ${port}-${port + last} and NBD ports ${nbdPort}-${nbdPort + last}`);
  }
  if (file.host !== undefined && (typeof file.host !== 'string' || file.host === '')) throw new ConfigError(`${inFile('host')} must be an address, not ${show(file.host)}`);
  if (file.regionSecret !== undefined && (typeof file.regionSecret !== 'string' || file.regionSecret === '')) throw new ConfigError(`${inFile('regionSecret')} must be a non-empty string`);
  if (file.peers !== undefined && (typeof file.peers !== 'object' || file.peers === null || Array.isArray(file.peers) || Object.values(file.peers).some((u) => typeof u !== 'string'))) {
    throw new ConfigError(`${inFile('peers')} must be an object of region name to URL, not ${show(file.peers)}`);
  }
  if (file.accounts !== undefined && (!Array.isArray(file.accounts) || file.accounts.some((a) => typeof a !== 'object' || a === null))) {
    throw new ConfigError(`${inFile('accounts')} must be an array of {accountId, accessKeyId, secretAccessKey}`);
  }
  const peers: Record<string, string> = { ...(file.peers ?? {}) };
  for (const p of flags.peer ?? []) {
    const m = /^([a-z]+)=(https?:\/\/.+)$/.exec(p);
    if (!m) throw new ConfigError(`--peer must look like hkg=http://host:8803, not "${p}"`);
    peers[m[1]!] = m[2]!.replace(/\/+$/, '');
  }
  for (const [name, url] of Object.entries(peers)) {
    if (!isKnownRegion(name)) throw new ConfigError(`--peer names unknown region "${name}"`);
    // A --peer naming a region served here changes how this process's other regions reach it (through
    // a proxy, a load balancer): they still talk to it only over HTTP.
    try {
      new URL(url);
    } catch {
      throw new ConfigError(`--peer ${name} has an invalid URL ${url}`);
    }
  }
  const chunkSize = file.chunkSizeBytes ?? DEFAULT_CHUNK_SIZE;
  // Dividing 1 GiB (a power of two) keeps every disk a whole number of chunks; at least 512 KiB keeps
  // the largest disk (32765 GiB) within a manifest's 2^26 chunks; at most 64 MiB bounds what an
  // incoming chunk upload buffers.
  if (typeof chunkSize !== 'number' || !Number.isInteger(chunkSize) || chunkSize < 512 << 10 || chunkSize > 64 << 20 || (1 << 30) % chunkSize !== 0) {
    throw new ConfigError(`${inFile('chunkSizeBytes')} must be a power of two from 524288 (512 KiB) to 67108864 (64 MiB), not ${show(chunkSize)}`);
  }
  const copyConcurrencyPerDestination = optionalInteger(file.copyConcurrencyPerDestination, inFile('copyConcurrencyPerDestination'), 20, 1, MAX_COPY_CONCURRENCY);
  const copyDeadlineSeconds = optionalInteger(file.copyDeadlineSeconds, inFile('copyDeadlineSeconds'), 24 * 3600, 1, YEAR_SECONDS);
  // Zero would run housekeeping back to back; above the timer limit Node would run it every 1 ms.
  const gcIntervalSeconds = optionalInteger(file.gcIntervalSeconds, inFile('gcIntervalSeconds'), 600, 1, MAX_TIMER_SECONDS);
  // Zero is allowed (no grace): safe for a store this process alone writes.
  const gcGraceSeconds = optionalInteger(file.gcGraceSeconds, inFile('gcGraceSeconds'), 3600, 0, YEAR_SECONDS);
  // At least 3 s: renewals go every third of the lease, and a renewal must fit in between.
  const jobLeaseSeconds = optionalInteger(file.jobLeaseSeconds, inFile('jobLeaseSeconds'), 30, 3, 3600);
  const copiesPerWorker = optionalInteger(file.copiesPerWorker, inFile('copiesPerWorker'), 4, 1, MAX_COPY_CONCURRENCY);
  let advertiseUrl: string | null = null;
  if (flags.advertiseUrl !== undefined) {
    try {
      const u = new URL(flags.advertiseUrl);
      if (u.protocol !== 'http:' && u.protocol !== 'https:') throw new Error('not http');
    } catch {
      throw new ConfigError(`--advertise-url must be an http(s) URL, not "${flags.advertiseUrl}"`);
    }
    advertiseUrl = flags.advertiseUrl.replace(/\/+$/, '');
  }

  const host = flags.host ?? file.host ?? '127.0.0.1';
  const nbdTlsSetting: unknown = flags.nbdTls ?? file.nbdTls;
  if (nbdTlsSetting !== undefined && !(NBD_TLS_MODES as readonly unknown[]).includes(nbdTlsSetting)) {
    throw new ConfigError(`${flags.nbdTls !== undefined ? '--nbd-tls' : inFile('nbdTls')} must be one of ${NBD_TLS_MODES.join(', ')}, not ${show(nbdTlsSetting)}`);
  }
  // Off loopback, NBD without TLS would open every disk to anyone who reaches the port.
  const nbdTls = (nbdTlsSetting as NbdTlsMode | undefined) ?? defaultNbdTlsMode(host);

  const stored = loadOrCreateCredentials(dataDir, env);
  const accounts = [stored.defaultAccount, ...(file.accounts ?? [])];
  const seen = new Set<string>();
  for (const a of accounts) {
    if (!a.accountId || !a.accessKeyId || !a.secretAccessKey) throw new ConfigError('every account needs accountId, accessKeyId and secretAccessKey');
    if (seen.has(a.accessKeyId)) throw new ConfigError(`access key id ${a.accessKeyId} is declared twice`);
    seen.add(a.accessKeyId);
  }
  return {
    dataDir, regions, host, port, nbdPort, nbdTls, peers,
    regionSecret: env.SNAPFERRY_REGION_SECRET || file.regionSecret || stored.regionSecret,
    metricsToken: metricsTokenSetting(env.SNAPFERRY_METRICS_TOKEN || undefined, 'SNAPFERRY_METRICS_TOKEN') ?? metricsTokenSetting(file.metricsToken, inFile('metricsToken')) ?? stored.metricsToken,
    accounts, chunkSize,
    copyConcurrencyPerDestination,
    copyDeadlineMs: copyDeadlineSeconds * 1000,
    gcIntervalMs: gcIntervalSeconds * 1000,
    gcGraceMs: gcGraceSeconds * 1000,
    backends, roles, jobLeaseMs: jobLeaseSeconds * 1000, copiesPerWorker, advertiseUrl,
    generated: stored.generated,
  };
}

function readConfigFile(path: string): ConfigFile {
  let parsed: unknown;
  try {
    parsed = JSON.parse(readFileSync(path, 'utf8'));
  } catch (e) {
    throw new ConfigError(`cannot read config file ${path}: ${(e as Error).message}`);
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) throw new ConfigError(`the config file ${path} must hold a JSON object`);
  // A misspelt setting would otherwise be ignored without a word, and its default used.
  for (const key of Object.keys(parsed)) {
    if (!(CONFIG_KEYS as readonly string[]).includes(key)) throw new ConfigError(`unknown setting ${show(key)} in ${path} (known: ${CONFIG_KEYS.join(', ')})`);
  }
  return parsed as ConfigFile;
}

function parseRoles(flag: string | undefined): ReadonlySet<Role> {
  if (flag === undefined) return new Set(ROLES);
  const roles = new Set<Role>();
  for (const part of flag.split(',').map((p) => p.trim()).filter((p) => p !== '')) {
    if (!(ROLES as readonly string[]).includes(part)) throw new ConfigError(`--role takes a comma list of ${ROLES.join(', ')}, not "${part}"`);
    roles.add(part as Role);
  }
  return roles;
}

function parsePort(value: string, flag: string): number {
  const n = Number(value);
  if (!/^\d+$/.test(value) || n < 1 || n > 65535) throw new ConfigError(`${flag} must be a port number from 1 to 65535, not "${value}"`);
  return n;
}

/** A whole JSON number within [min, max]; strings, fractions, NaN-like values are refused, not coerced. */
function integer(value: unknown, name: string, min: number, max: number, what = 'an integer'): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) {
    throw new ConfigError(`${name} must be ${what} from ${min} to ${max}, not ${show(value)}`);
  }
  return value;
}

function optionalInteger(value: unknown, name: string, fallback: number, min: number, max: number): number {
  return value === undefined ? fallback : integer(value, name, min, max);
}

/** A value as it would appear in JSON, cut short: messages stay one readable line. */
function show(value: unknown): string {
  const text = JSON.stringify(value) ?? String(value);
  return text.length > 60 ? `${text.slice(0, 57)}...` : text;
}

function readCredentials(file: string): StoredCredentials {
  try {
    return JSON.parse(readFileSync(file, 'utf8')) as StoredCredentials;
  } catch (e) {
    throw new ConfigError(`${file} is unreadable: ${(e as Error).message}`);
  }
}

/**
 * Creates `path` with `text`, mode 0600, only if it does not exist; false if it does. The file
 * appears whole or not at all (written and fsynced under a temporary name, then hard-linked into
 * place, which fails if the name is taken): a starter racing this one, or a restart after a crash
 * here, never reads a half-written file.
 */
function createWhole(path: string, text: string): boolean {
  const tmp = `${path}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`;
  const fd = openSync(tmp, 'wx', 0o600);
  try {
    fchmodSync(fd, 0o600); // exactly 0600 whatever the umask
    writeSync(fd, text);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  try {
    linkSync(tmp, path);
    return true;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'EEXIST') return false;
    throw e;
  } finally {
    rmSync(tmp, { force: true });
  }
}

/** Replaces `path` with `text` (mode 0600) atomically: a reader sees the old file or the new one, whole. */
function replaceWhole(path: string, text: string): void {
  const tmp = `${path}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`;
  const fd = openSync(tmp, 'wx', 0o600);
  try {
    fchmodSync(fd, 0o600);
    writeSync(fd, text);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  try {
    renameSync(tmp, path);
  } finally {
    rmSync(tmp, { force: true });
  }
  const dir = openSync(dirname(path), 'r');
  try {
    fsyncSync(dir);
  } finally {
    closeSync(dir);
  }
}

/** A configured metrics token (undefined when not set): 16 to 256 printable ASCII characters, no spaces. */
function metricsTokenSetting(value: unknown, name: string): string | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== 'string' || !/^[\x21-\x7e]{16,256}$/.test(value)) throw new ConfigError(`${name} must be 16 to 256 printable ASCII characters without spaces`);
  return value;
}

/**
 * The default account's keys: from the environment when set, else from credentials.json, else
 * generated now. The regions' secret likewise, generated once per data dir.
 */
function loadOrCreateCredentials(dataDir: string, env: NodeJS.ProcessEnv): StoredCredentials & { generated: ServeConfig['generated'] } {
  try {
    mkdirSync(dataDir, { recursive: true });
    accessSync(dataDir, constants.W_OK);
  } catch (e) {
    throw new ConfigError(`the data dir ${dataDir} cannot be created or written: ${(e as Error).message}`);
  }
  const file = join(dataDir, 'credentials.json');
  let stored = existsSync(file) ? readCredentials(file) : null;
  const generated: ServeConfig['generated'] = {};
  if (!stored) {
    const account = { accountId: 'default', accessKeyId: newAccessKeyId(), secretAccessKey: newSecret() };
    const fresh: StoredCredentials = { version: 1, defaultAccount: account, regionSecret: randomBytes(32).toString('hex'), metricsToken: randomBytes(32).toString('hex') };
    if (createWhole(file, JSON.stringify(fresh, null, 2) + '\n')) {
      stored = fresh;
      generated.regionSecret = true;
      if (!env.SNAPFERRY_ACCESS_KEY_ID) generated.account = account;
    } else {
      // Another starter on the same data dir created it a moment ago: use its keys, never a second
      // set (at most one of the two will get the data dir's lock and serve).
      stored = readCredentials(file);
    }
  }
  if (typeof stored.metricsToken !== 'string' || stored.metricsToken === '') {
    // A file from before the metrics token: add one, the file replaced whole (temporary file, fsync,
    // rename). Derived from the file's region secret, so starters racing here write the same token.
    stored = { ...stored, metricsToken: createHmac('sha256', stored.regionSecret).update('snapferry metrics token').digest('hex') };
    replaceWhole(file, JSON.stringify(stored, null, 2) + '\n');
  }
  const defaultAccount =
    env.SNAPFERRY_ACCESS_KEY_ID && env.SNAPFERRY_SECRET_ACCESS_KEY
      ? { accountId: 'default', accessKeyId: env.SNAPFERRY_ACCESS_KEY_ID, secretAccessKey: env.SNAPFERRY_SECRET_ACCESS_KEY }
      : stored.defaultAccount;
  return { ...stored, defaultAccount, generated };
}
