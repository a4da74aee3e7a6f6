/**
 * Server configuration: command-line flags, an optional JSON config file, environment variables
 * and the secrets kept in the data dir, merged in that order of precedence (flags win).
 *
 * Secrets generated on first start (the default account's key pair, the regions' shared secret)
 * are written to `{dataDir}/credentials.json` with mode 0600 and printed once.
 */
import { randomBytes } from 'node:crypto';
import { accessSync, closeSync, constants, existsSync, fchmodSync, fsyncSync, linkSync, mkdirSync, openSync, readFileSync, rmSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { isKnownRegion } from './domain/region.ts';
import { newAccessKeyId, newSecret } from './domain/ids.ts';

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
  /** Secrets generated on this start, to print once. */
  generated: { account?: Account; regionSecret?: boolean };
}

export interface ServeFlags {
  dataDir?: string;
  regions?: string;
  host?: string;
  port?: string;
  nbdPort?: string;
  peer?: string[];
  config?: string;
}

export class ConfigError extends Error {
  override name = 'ConfigError';
}

interface ConfigFile {
  regions?: string[];
  host?: string;
  port?: number;
  nbdPort?: number;
  peers?: Record<string, string>;
  regionSecret?: string;
  accounts?: Account[];
  chunkSizeBytes?: number;
  copyConcurrencyPerDestination?: number;
  copyDeadlineSeconds?: number;
  gcIntervalSeconds?: number;
  gcGraceSeconds?: number;
}

interface StoredCredentials {
  version: 1;
  defaultAccount: Account;
  regionSecret: string;
}

export const DEFAULT_CHUNK_SIZE = 1 << 20;

const CONFIG_KEYS: ReadonlyArray<keyof ConfigFile> = [
  'regions', 'host', 'port', 'nbdPort', 'peers', 'regionSecret', 'accounts',
  'chunkSizeBytes', 'copyConcurrencyPerDestination', 'copyDeadlineSeconds', 'gcIntervalSeconds', 'gcGraceSeconds',
];
const LOG_LEVELS = ['info', 'warn', 'error'];
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
  if (file.regions !== undefined && (!Array.isArray(file.regions) || file.regions.some((r) => typeof r !== 'string'))) {
    throw new ConfigError(`${inFile('regions')} must be an array of region names, not ${show(file.regions)}`);
  }
  const regions = (flags.regions ? flags.regions.split(',') : file.regions ?? ['bj', 'gz', 'hkg']).map((r) => r.trim()).filter((r) => r !== '');
  if (regions.length === 0) throw new ConfigError('--regions names no region');
  for (const r of regions) if (!isKnownRegion(r)) throw new ConfigError(`unknown region "${r}" (known: bj gz su hkg fwh bd cd sin fsh)`);
  if (new Set(regions).size !== regions.length) throw new ConfigError('--regions names a region twice');
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

  const stored = loadOrCreateCredentials(dataDir, env);
  const accounts = [stored.defaultAccount, ...(file.accounts ?? [])];
  const seen = new Set<string>();
  for (const a of accounts) {
    if (!a.accountId || !a.accessKeyId || !a.secretAccessKey) throw new ConfigError('every account needs accountId, accessKeyId and secretAccessKey');
    if (seen.has(a.accessKeyId)) throw new ConfigError(`access key id ${a.accessKeyId} is declared twice`);
    seen.add(a.accessKeyId);
  }
  return {
    dataDir, regions, host: flags.host ?? file.host ?? '127.0.0.1', port, nbdPort, peers,
    regionSecret: env.SNAPFERRY_REGION_SECRET || file.regionSecret || stored.regionSecret,
    accounts, chunkSize,
    copyConcurrencyPerDestination,
    copyDeadlineMs: copyDeadlineSeconds * 1000,
    gcIntervalMs: gcIntervalSeconds * 1000,
    gcGraceMs: gcGraceSeconds * 1000,
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
    const fresh: StoredCredentials = { version: 1, defaultAccount: account, regionSecret: randomBytes(32).toString('hex') };
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
  const defaultAccount =
    env.SNAPFERRY_ACCESS_KEY_ID && env.SNAPFERRY_SECRET_ACCESS_KEY
      ? { accountId: 'default', accessKeyId: env.SNAPFERRY_ACCESS_KEY_ID, secretAccessKey: env.SNAPFERRY_SECRET_ACCESS_KEY }
      : stored.defaultAccount;
  return { ...stored, defaultAccount, generated };
}
