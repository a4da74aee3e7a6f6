/**
 * Composition root: the only module that picks concrete implementations (SQLite metadata, local
 * directory chunk stores) and wires a region together: stores, repository, disks, job runner,
 * services, HTTP app. `startServer` runs every configured region in this process.
 */
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import type { FastifyInstance } from 'fastify';
import { buildRegionApp } from './api/region-app.ts';
import type { Credential, CredentialDirectory } from './api/authenticate.ts';
import { DiskManager } from './blockdev/disk-manager.ts';
import { LocalDirChunkStore } from './chunkstore/local-dir-store.ts';
import type { ServeConfig } from './config.ts';
import { JobRunner } from './jobs/job-runner.ts';
import { jsonLogger, type LogFn } from './lib/logger.ts';
import { MetricsRegistry } from './lib/metrics.ts';
import { acquirePidLock } from './lib/pid-lock.ts';
import { Sha256Pool } from './lib/sha256-pool.ts';
import { SqliteMetadataStore } from './metadata/sqlite/sqlite-metadata-store.ts';
import { ChunkRepository, RepositoryMetrics } from './repository/chunk-repository.ts';
import { collectGarbage } from './repository/garbage-collector.ts';
import { DiskLeases } from './services/disk-leases.ts';
import type { Region } from './services/region-context.ts';
import { snapshotCreateJob } from './services/snapshot-jobs.ts';
import { SnapshotService } from './services/snapshot-service.ts';
import { VolumeDataService } from './services/volume-data-service.ts';
import { volumeCreateJob, volumeRollbackJob } from './services/volume-jobs.ts';
import { VolumeService } from './services/volume-service.ts';
import { recoverRegion, gcRoots } from './services/region-recovery.ts';
import { CLIENT_TOKEN_TTL_MS } from './services/client-token.ts';

export interface RunningRegion {
  name: string;
  url: string;
  region: Region;
  app: FastifyInstance;
  close(): Promise<void>;
}

export interface RunningServer {
  regions: RunningRegion[];
  close(): Promise<void>;
}

export function tenantDirectory(config: ServeConfig): CredentialDirectory {
  const byKey = new Map<string, Credential>(config.accounts.map((a) => [a.accessKeyId, { accountId: a.accountId, secretAccessKey: a.secretAccessKey }]));
  return { lookup: (ak) => byKey.get(ak) ?? null };
}

/** Builds one region (stores opened, recovery done, jobs not yet started, not yet listening). */
export async function buildRegion(config: ServeConfig, name: string, hasher: Sha256Pool, log: LogFn): Promise<{ region: Region; app: FastifyInstance; start(): void; close(): Promise<void> }> {
  const dir = join(config.dataDir, name);
  await mkdir(dir, { recursive: true });
  const meta = new SqliteMetadataStore(join(dir, 'meta.db'));
  const chunks = await LocalDirChunkStore.open(join(dir, 'chunks'));
  const manifests = await LocalDirChunkStore.open(join(dir, 'manifests'));
  const metrics = new MetricsRegistry();
  const repo = new ChunkRepository(chunks, manifests, hasher, config.chunkSize, new RepositoryMetrics(metrics));
  const disks = new DiskManager(join(dir, 'disks'), config.chunkSize);
  await disks.init();
  const jobs = new JobRunner({
    jobs: meta.jobs,
    concurrency: 64,
    groupLimit: (group) => (group.startsWith('copy:') ? config.copyConcurrencyPerDestination : group.startsWith('capture:') ? 1 : 4),
    log,
  });
  const region: Region = { name, meta, jobs, disks, repo, leases: new DiskLeases(), log };
  jobs.register(volumeCreateJob(region));
  jobs.register(volumeRollbackJob(region));
  jobs.register(snapshotCreateJob(region));

  const volumes = new VolumeService(region);
  const snapshots = new SnapshotService(region);
  const app = buildRegionApp({
    region: name, tenants: tenantDirectory(config), volumes, snapshots, volumeData: new VolumeDataService(region), metrics, log,
  });
  await recoverRegion(region);

  let gcTimer: NodeJS.Timeout | null = null;
  const runGc = async (): Promise<void> => {
    try {
      const result = await collectGarbage(repo, () => gcRoots(region), config.gcGraceMs);
      await meta.idempotency.purgeOlderThan(Date.now() - CLIENT_TOKEN_TTL_MS);
      if (result.chunksDeleted + result.manifestsDeleted > 0 || result.brokenRoots.length > 0) log('info', 'garbage collected', { ...result });
    } catch (e) {
      log('error', 'garbage collection failed', { err: String(e) });
    }
  };
  return {
    region,
    app,
    start() {
      jobs.start();
      gcTimer = setInterval(() => void runGc(), config.gcIntervalMs);
      gcTimer.unref();
    },
    async close() {
      if (gcTimer) clearInterval(gcTimer);
      await app.close();
      await jobs.stop();
      await disks.closeAll();
      await meta.close();
    },
  };
}

export async function startServer(config: ServeConfig, out: NodeJS.WritableStream = process.stdout): Promise<RunningServer> {
  const releaseLock = acquirePidLock(join(config.dataDir, 'LOCK'));
  const hasher = new Sha256Pool();
  const running: RunningRegion[] = [];
  try {
    for (const [index, name] of config.regions.entries()) {
      const log = jsonLogger({ region: name });
      const built = await buildRegion(config, name, hasher, log);
      const port = config.port + index;
      try {
        await built.app.listen({ host: config.host, port });
      } catch (e) {
        await built.close();
        throw new Error(`region ${name} cannot listen on ${config.host}:${port}: ${(e as NodeJS.ErrnoException).code === 'EADDRINUSE' ? 'the port is in use' : (e as Error).message}`);
      }
      built.start();
      const url = `http://${config.host}:${port}`;
      running.push({ name, url, region: built.region, app: built.app, close: built.close });
      out.write(`snapferry: region ${name} ready on ${url}\n`);
    }
  } catch (e) {
    await Promise.allSettled(running.map((r) => r.close()));
    await hasher.close();
    releaseLock();
    throw e;
  }
  return {
    regions: running,
    async close() {
      await Promise.allSettled(running.map((r) => r.close()));
      await hasher.close();
      releaseLock();
    },
  };
}
