/**
 * Composition root, part two: opens the concrete stores a region's backends name (backend-config.ts):
 * SQLite or PostgreSQL metadata, a local directory or an S3 bucket for chunks and manifests. Only
 * this file and main.ts may import concrete stores (.dependency-cruiser.cjs).
 *
 * Every open checks what it can before the region serves: PostgreSQL is connected to and migrated,
 * the bucket is HEADed with the configured keys. A wrong URL, password, bucket name or key fails
 * the start with one sentence saying which (and the process exits), never a crash loop.
 */
import { join } from 'node:path';
import type { S3Client } from '@aws-sdk/client-s3';
import type { RegionBackends } from './backend-config.ts';
import type { ChunkStore } from './chunkstore/chunk-store.ts';
import { LocalDirChunkStore, type LocalDirStoreOptions } from './chunkstore/local-dir-store.ts';
import type { S3ChunkStore } from './chunkstore/s3-store.ts';
import type { PathProbe } from './lib/path-probe.ts';
import type { MetadataStore } from './metadata/metadata-store.ts';
import { SqliteMetadataStore } from './metadata/sqlite/sqlite-metadata-store.ts';

export interface RegionStores {
  meta: MetadataStore;
  chunks: ChunkStore;
  manifests: ChunkStore;
  /** The chunk store's objects live in a bucket (for operators and tests: where a chunk is). */
  bucket: { client: S3Client; name: string; key: (namespace: 'chunks' | 'manifests', id: string) => string } | null;
  close(): Promise<void>;
}

export interface OpenStoresOptions {
  /** The region's directory in the data dir (SQLite database, local chunk directories). */
  dir: string;
  region: string;
  /** For PostgreSQL's application_name (pg_stat_activity shows which process holds what). */
  processName: string;
  hash: (data: Buffer) => Promise<string>;
  /** The process's path probe: the local chunk stores' batched presence checks. */
  probe: PathProbe;
  /** File-system faults injected into the local chunk store: tests only. */
  chunkFaults?: LocalDirStoreOptions['faultHook'];
}

/**
 * The PostgreSQL and S3 backends are imported only by regions configured with them: pg and the
 * AWS SDK are ~20 MiB of resident code and 3.6 MiB of JavaScript heap (each imported alone, Node 20), which
 * the default embedded region would carry for nothing, and which every major collection marks (13-14
 * of them in a 1 GiB copy, docs/benchmarks.md).
 */
export async function openRegionStores(backends: RegionBackends, o: OpenStoresOptions): Promise<RegionStores> {
  let meta: MetadataStore;
  try {
    meta =
      backends.metadata.type === 'postgres'
        ? await (await import('./metadata/postgres/postgres-metadata-store.ts')).PostgresMetadataStore.open(backends.metadata.url, {
            schema: backends.metadata.schema,
            maxConnections: backends.metadata.maxConnections ?? 20,
            applicationName: o.processName,
          })
        : new SqliteMetadataStore(join(o.dir, 'meta.db'));
  } catch (e) {
    throw new Error(`region ${o.region}: ${(e as Error).message}`, { cause: e });
  }
  try {
    const store = backends.chunkStore;
    if (store.type === 'local') {
      const chunks = await LocalDirChunkStore.open(join(o.dir, 'chunks'), { hasher: o.hash, probe: o.probe, faultHook: o.chunkFaults });
      const manifests = await LocalDirChunkStore.open(join(o.dir, 'manifests'), { hasher: o.hash, probe: o.probe });
      return { meta, chunks, manifests, bucket: null, close: () => meta.close() };
    }
    if (!meta.chunkIndex) throw new Error(`region ${o.region}: its metadata store keeps no chunk index, which an S3 chunk store needs`);
    const [{ createS3Client }, { S3ChunkStore }] = await Promise.all([import('./chunkstore/s3-client.ts'), import('./chunkstore/s3-store.ts')]);
    // One client (one connection pool) for both namespaces of the region.
    const client = createS3Client(store);
    const common = { ...store, index: meta.chunkIndex, client, hasher: o.hash };
    let chunks: S3ChunkStore | null = null;
    try {
      chunks = await S3ChunkStore.open({ ...common, namespace: 'chunks' });
      const manifests = await S3ChunkStore.open({ ...common, namespace: 'manifests' });
      const stores = { chunks, manifests };
      return {
        meta, chunks, manifests,
        bucket: { client, name: store.bucket, key: (ns, id) => stores[ns].objectKey(id) },
        close: async () => {
          await meta.close();
          client.destroy();
        },
      };
    } catch (e) {
      client.destroy();
      throw new Error(`region ${o.region}: ${(e as Error).message}`, { cause: e });
    }
  } catch (e) {
    await meta.close();
    throw e;
  }
}
