/**
 * Server configuration: command-line flags, an optional JSON config file, environment variables
 * and the secrets kept in the data dir, merged in that order of precedence (flags win).
 *
 * Secrets generated on first start (the default account's key pair, the regions' shared secret)
 * are written to `{dataDir}/credentials.json` with mode 0600 and printed once.
 */
import { randomBytes } from 'node:crypto';
import { accessSync, chmodSync, constants, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
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

export function loadServeConfig(flags: ServeFlags, env: NodeJS.ProcessEnv): ServeConfig {
  const file: ConfigFile = flags.config ? readConfigFile(flags.config) : {};
  const dataDir = flags.dataDir ?? env.SNAPFERRY_DATA_DIR ?? './snapferry-data';
  const regions = (flags.regions ? flags.regions.split(',') : file.regions ?? ['bj', 'gz', 'hkg']).map((r) => r.trim()).filter((r) => r !== '');
  if (regions.length === 0) throw new ConfigError('--regions names no region');
  for (const r of regions) if (!isKnownRegion(r)) throw new ConfigError(`unknown region "${r}" (known: bj gz su hkg fwh bd cd sin fsh)`);
  if (new Set(regions).size !== regions.length) throw new ConfigError('--regions names a region twice');
  const port = parsePort(flags.port ?? (file.port !== undefined ? String(file.port) : undefined) ?? '8801', '--port');
  const nbdPort = parsePort(flags.nbdPort ?? (file.nbdPort !== undefined ? String(file.nbdPort) : undefined) ?? '10809', '--nbd-port');
  const peers: Record<string, string> = { ...(file.peers ?? {}) };
  for (const p of flags.peer ?? []) {
    const m = /^([a-z]+)=(https?:\/\/.+)$/.exec(p);
    if (!m) throw new ConfigError(`--peer must look like hkg=http://host:8803, not "${p}"`);
    peers[m[1]!] = m[2]!.replace(/\/+$/, '');
  }
  for (const [name, url] of Object.entries(peers)) {
    if (!isKnownRegion(name)) throw new ConfigError(`--peer names unknown region "${name}"`);
    if (regions.includes(name)) throw new ConfigError(`region ${name} is served here and cannot also be a --peer`);
    try {
      new URL(url);
    } catch {
      throw new ConfigError(`--peer ${name} has an invalid URL ${url}`);
    }
  }
  const chunkSize = file.chunkSizeBytes ?? DEFAULT_CHUNK_SIZE;
  // Dividing 1 GiB keeps every disk a whole number of chunks; at least 512 KiB keeps the largest
  // disk (32765 GiB) within a manifest's 2^26 chunks.
  if (!Number.isInteger(chunkSize) || chunkSize < 512 << 10 || chunkSize > 64 << 20 || (1 << 30) % chunkSize !== 0) {
    throw new ConfigError('chunkSizeBytes must divide 1 GiB and lie between 512 KiB and 64 MiB');
  }

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
    copyConcurrencyPerDestination: file.copyConcurrencyPerDestination ?? 20,
    copyDeadlineMs: (file.copyDeadlineSeconds ?? 24 * 3600) * 1000,
    gcIntervalMs: (file.gcIntervalSeconds ?? 600) * 1000,
    gcGraceMs: (file.gcGraceSeconds ?? 3600) * 1000,
    generated: stored.generated,
  };
}

function readConfigFile(path: string): ConfigFile {
  try {
    return JSON.parse(readFileSync(path, 'utf8')) as ConfigFile;
  } catch (e) {
    throw new ConfigError(`cannot read config file ${path}: ${(e as Error).message}`);
  }
}

function parsePort(value: string, flag: string): number {
  const n = Number(value);
  if (!/^\d+$/.test(value) || n < 1 || n > 65535) throw new ConfigError(`${flag} must be a port number, not "${value}"`);
  return n;
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
  let stored: StoredCredentials | null = null;
  if (existsSync(file)) {
    try {
      stored = JSON.parse(readFileSync(file, 'utf8')) as StoredCredentials;
    } catch (e) {
      throw new ConfigError(`${file} is unreadable: ${(e as Error).message}`);
    }
  }
  const generated: ServeConfig['generated'] = {};
  if (!stored) {
    const account = { accountId: 'default', accessKeyId: newAccessKeyId(), secretAccessKey: newSecret() };
    stored = { version: 1, defaultAccount: account, regionSecret: randomBytes(32).toString('hex') };
    writeFileSync(file, JSON.stringify(stored, null, 2) + '\n', { mode: 0o600, flag: 'wx' });
    chmodSync(file, 0o600);
    generated.regionSecret = true;
    if (!env.SNAPFERRY_ACCESS_KEY_ID) generated.account = account;
  }
  const defaultAccount =
    env.SNAPFERRY_ACCESS_KEY_ID && env.SNAPFERRY_SECRET_ACCESS_KEY
      ? { accountId: 'default', accessKeyId: env.SNAPFERRY_ACCESS_KEY_ID, secretAccessKey: env.SNAPFERRY_SECRET_ACCESS_KEY }
      : stored.defaultAccount;
  return { ...stored, defaultAccount, generated };
}
