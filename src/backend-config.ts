/**
 * Where a region keeps its metadata and its chunks: the `regions` object of the config file.
 *
 *   {"regions": {"bj": {"metadata":   {"type": "postgres", "url": "postgres://user@db:5432/snapferry_bj"},
 *                       "chunkStore": {"type": "s3", "endpoint": "http://rgw:7480", "bucket": "snapferry-bj", ...}}}}
 *
 * A region that names nothing (or the array form `"regions": ["bj", "hkg"]`) keeps the embedded
 * default, `{"type": "sqlite"}` + `{"type": "local"}`, exactly as before. Secrets may come from the
 * environment instead of the file, so a config file can be shared and versioned:
 *
 *   SNAPFERRY_<REGION>_POSTGRES_URL            the whole URL (overrides `url`); PGPASSWORD also works
 *   SNAPFERRY_<REGION>_S3_ACCESS_KEY_ID        then SNAPFERRY_S3_ACCESS_KEY_ID, then AWS_ACCESS_KEY_ID
 *   SNAPFERRY_<REGION>_S3_SECRET_ACCESS_KEY    then SNAPFERRY_S3_SECRET_ACCESS_KEY, then AWS_SECRET_ACCESS_KEY
 *
 * Everything here is checked at start (types, unknown keys, missing values) with a message naming
 * the setting; whether the database and the bucket are really there is checked when the region
 * opens them (main.ts), also before it serves.
 */
export type MetadataBackend =
  | { type: 'sqlite' }
  | { type: 'postgres'; url: string; schema?: string; maxConnections?: number };

export type ChunkStoreBackend =
  | { type: 'local' }
  | {
      type: 's3';
      endpoint: string;
      bucket: string;
      prefix: string;
      region: string;
      accessKeyId: string;
      secretAccessKey: string;
      forcePathStyle: boolean;
    };

export interface RegionBackends {
  metadata: MetadataBackend;
  chunkStore: ChunkStoreBackend;
}

export const EMBEDDED_BACKENDS: RegionBackends = { metadata: { type: 'sqlite' }, chunkStore: { type: 'local' } };

/** A region is "scaled" when several processes may share it: its metadata is in PostgreSQL. */
export const isShared = (b: RegionBackends): boolean => b.metadata.type === 'postgres';

export class BackendConfigError extends Error {
  override name = 'BackendConfigError';
}

const METADATA_KEYS = ['type', 'url', 'schema', 'maxConnections'];
const S3_KEYS = ['type', 'endpoint', 'bucket', 'prefix', 'region', 'accessKeyId', 'secretAccessKey', 'forcePathStyle'];
const REGION_KEYS = ['metadata', 'chunkStore'];

/** Parses the backends of `region` from its entry in the config file (`where` names it in messages). */
export function parseRegionBackends(region: string, entry: unknown, where: string, env: NodeJS.ProcessEnv): RegionBackends {
  if (entry === undefined || entry === null) return EMBEDDED_BACKENDS;
  const obj = object(entry, where);
  onlyKeys(obj, REGION_KEYS, where);
  const envName = (suffix: string): string => `SNAPFERRY_${region.toUpperCase()}_${suffix}`;
  return {
    metadata: parseMetadata(obj.metadata, `${where}.metadata`, env[envName('POSTGRES_URL')]),
    chunkStore: parseChunkStore(obj.chunkStore, `${where}.chunkStore`, {
      accessKeyId: env[envName('S3_ACCESS_KEY_ID')] || env.SNAPFERRY_S3_ACCESS_KEY_ID || env.AWS_ACCESS_KEY_ID,
      secretAccessKey: env[envName('S3_SECRET_ACCESS_KEY')] || env.SNAPFERRY_S3_SECRET_ACCESS_KEY || env.AWS_SECRET_ACCESS_KEY,
      names: [envName('S3_ACCESS_KEY_ID'), envName('S3_SECRET_ACCESS_KEY')],
    }),
  };
}

function parseMetadata(value: unknown, where: string, envUrl: string | undefined): MetadataBackend {
  if (value === undefined) return { type: 'sqlite' };
  const obj = object(value, where);
  if (obj.type === 'sqlite') {
    onlyKeys(obj, ['type'], where);
    return { type: 'sqlite' };
  }
  if (obj.type !== 'postgres') throw new BackendConfigError(`${where}.type must be "sqlite" or "postgres", not ${show(obj.type)}`);
  onlyKeys(obj, METADATA_KEYS, where);
  const url = envUrl || obj.url;
  if (typeof url !== 'string' || !/^postgres(ql)?:\/\//.test(url)) {
    // The value is not shown: it may hold a password.
    throw new BackendConfigError(`${where}.url must be a postgres://user@host:port/database URL (or set it in the environment)`);
  }
  const out: MetadataBackend = { type: 'postgres', url };
  if (obj.schema !== undefined) {
    if (typeof obj.schema !== 'string' || !/^[a-z_][a-z0-9_]{0,62}$/.test(obj.schema)) throw new BackendConfigError(`${where}.schema must be a lower-case SQL name, not ${show(obj.schema)}`);
    out.schema = obj.schema;
  }
  if (obj.maxConnections !== undefined) {
    if (typeof obj.maxConnections !== 'number' || !Number.isInteger(obj.maxConnections) || obj.maxConnections < 2 || obj.maxConnections > 1000) {
      throw new BackendConfigError(`${where}.maxConnections must be an integer from 2 to 1000, not ${show(obj.maxConnections)}`);
    }
    out.maxConnections = obj.maxConnections;
  }
  return out;
}

function parseChunkStore(value: unknown, where: string, envKeys: { accessKeyId?: string; secretAccessKey?: string; names: string[] }): ChunkStoreBackend {
  if (value === undefined) return { type: 'local' };
  const obj = object(value, where);
  if (obj.type === 'local') {
    onlyKeys(obj, ['type'], where);
    return { type: 'local' };
  }
  if (obj.type !== 's3') throw new BackendConfigError(`${where}.type must be "local" or "s3", not ${show(obj.type)}`);
  onlyKeys(obj, S3_KEYS, where);
  const text = (key: string, fallback?: string): string => {
    const v = obj[key] ?? fallback;
    if (typeof v !== 'string' || v === '') throw new BackendConfigError(`${where}.${key} must be a non-empty string, not ${show(v)}`);
    return v;
  };
  const endpoint = text('endpoint');
  try {
    const u = new URL(endpoint);
    if (u.protocol !== 'http:' && u.protocol !== 'https:') throw new Error('not http(s)');
  } catch {
    throw new BackendConfigError(`${where}.endpoint must be an http(s) URL such as http://rgw:7480, not ${show(endpoint)}`);
  }
  const bucket = text('bucket');
  if (!/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/.test(bucket)) throw new BackendConfigError(`${where}.bucket must be an S3 bucket name (3-63 lower-case letters, digits, dots, hyphens), not ${show(bucket)}`);
  const prefix = obj.prefix ?? '';
  if (typeof prefix !== 'string' || prefix.startsWith('/')) throw new BackendConfigError(`${where}.prefix must be a string not starting with "/", not ${show(prefix)}`);
  if (obj.forcePathStyle !== undefined && typeof obj.forcePathStyle !== 'boolean') throw new BackendConfigError(`${where}.forcePathStyle must be true or false`);
  // The environment wins over the file: an operator rotating keys sets them without editing it.
  const accessKeyId = envKeys.accessKeyId || obj.accessKeyId;
  const secretAccessKey = envKeys.secretAccessKey || obj.secretAccessKey;
  if (typeof accessKeyId !== 'string' || accessKeyId === '' || typeof secretAccessKey !== 'string' || secretAccessKey === '') {
    throw new BackendConfigError(`${where} needs accessKeyId and secretAccessKey (in the file, or ${envKeys.names.join(' and ')} in the environment)`);
  }
  return {
    type: 's3', endpoint: endpoint.replace(/\/+$/, ''), bucket, prefix, region: text('region', 'us-east-1'),
    accessKeyId, secretAccessKey, forcePathStyle: (obj.forcePathStyle as boolean | undefined) ?? true,
  };
}

function object(value: unknown, where: string): Record<string, unknown> {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new BackendConfigError(`${where} must be a JSON object, not ${show(value)}`);
  return value as Record<string, unknown>;
}

function onlyKeys(obj: Record<string, unknown>, known: string[], where: string): void {
  for (const key of Object.keys(obj)) {
    if (!known.includes(key)) throw new BackendConfigError(`unknown setting ${show(key)} in ${where} (known: ${known.join(', ')})`);
  }
}

function show(value: unknown): string {
  const text = JSON.stringify(value) ?? String(value);
  return text.length > 60 ? `${text.slice(0, 57)}...` : text;
}
