/**
 * Composition root: the only module that picks concrete implementations (SQLite metadata, local
 * directory chunk stores) and wires a region together: stores, repository, disks, job runner,
 * services, HTTP app, replication peers. `startServer` runs every configured region in this process;
 * regions in one process still talk to each other only over HTTP, exactly as separate processes do.
 */
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import type { FastifyInstance } from 'fastify';
import type { Credential, CredentialDirectory } from './api/authenticate.ts';
import { internalRoutes } from './api/internal-routes.ts';
import { buildRegionApp } from './api/region-app.ts';
import { remoteCopyRoutes } from './api/remote-copy-routes.ts';
import { DiskManager } from './blockdev/disk-manager.ts';
import { startNbdServer, type NbdServer } from './blockdev/nbd/index.ts';
import { LocalDirChunkStore, type LocalDirStoreOptions } from './chunkstore/local-dir-store.ts';
import type { ServeConfig } from './config.ts';
import { isKnownRegion } from './domain/region.ts';
import { JobRunner } from './jobs/job-runner.ts';
import { jsonLogger, type LogFn } from './lib/logger.ts';
import { MetricsRegistry } from './lib/metrics.ts';
import { acquireDataDirLock } from './lib/data-dir-lock.ts';
import { Sha256Pool } from './lib/sha256-pool.ts';
import { SqliteMetadataStore } from './metadata/sqlite/sqlite-metadata-store.ts';
import { copyJob } from './replication/copy-job.ts';
import { CHUNK_ENCODING_HEADER, MANIFEST_PART_MAX_BYTES, PeerClient, SERVICE_KEY_PREFIX } from './replication/peer-client.ts';
import { ReplicationMetrics } from './replication/replication-metrics.ts';
import { ChunkRepository, RepositoryMetrics } from './repository/chunk-repository.ts';
import { collectGarbage } from './repository/garbage-collector.ts';
import { Manifest } from './repository/manifest.ts';
import { scrubRepository } from './repository/scrub.ts';
import { CLIENT_TOKEN_TTL_MS } from './services/client-token.ts';
import { distrustBasesNaming } from './services/disk-base.ts';
import { DiskExports } from './services/disk-exports.ts';
import { DiskLeases } from './services/disk-leases.ts';
import { IncomingCopyService, incomingCopyMetrics } from './services/incoming-copy-service.ts';
import type { Region } from './services/region-context.ts';
import { checkRegionIntegrity } from './services/region-integrity.ts';
import { gcRoots, recoverRegion } from './services/region-recovery.ts';
import { RemoteCopyService } from './services/remote-copy-service.ts';
import { snapshotCreateJob } from './services/snapshot-jobs.ts';
import { SnapshotService } from './services/snapshot-service.ts';
import { VolumeDataService } from './services/volume-data-service.ts';
import { volumeCreateJob, volumeRollbackJob } from './services/volume-jobs.ts';
import { VolumeService } from './services/volume-service.ts';

export interface BuiltRegion {
  region: Region;
  app: FastifyInstance;
  metrics: MetricsRegistry;
  /** Runs one garbage collection now (also what `snapferry gc` and the housekeeping timer run). */
  gc(): Promise<unknown>;
  /** Starts the job runner and the periodic garbage collection. */
  start(): void;
  close(): Promise<void>;
}

export interface RunningServer {
  regions: Array<BuiltRegion & { url: string; nbd: NbdServer }>;
  close(): Promise<void>;
}

export function tenantDirectory(config: ServeConfig): CredentialDirectory {
  const byKey = new Map<string, Credential>(config.accounts.map((a) => [a.accessKeyId, { accountId: a.accountId, secretAccessKey: a.secretAccessKey }]));
  return { lookup: (ak) => byKey.get(ak) ?? null };
}

/** The regions' own credential: `snapferry-region-<name>` with the shared region secret. Never a tenant's. */
export function serviceDirectory(regionSecret: string): CredentialDirectory {
  return {
    lookup(ak) {
      const region = ak.startsWith(SERVICE_KEY_PREFIX) ? ak.slice(SERVICE_KEY_PREFIX.length) : '';
      return isKnownRegion(region) ? { accountId: `region:${region}`, secretAccessKey: regionSecret } : null;
    },
  };
}

/** Base URLs of every region this one can copy to: regions of this process, and configured peers. */
export function peerUrls(config: ServeConfig): Record<string, string> {
  const host = config.host === '0.0.0.0' || config.host === '::' ? '127.0.0.1' : config.host.includes(':') ? `[${config.host}]` : config.host;
  const local = Object.fromEntries(config.regions.map((r, i) => [r, `http://${host}:${config.port + i}`]));
  return { ...local, ...config.peers };
}

/** Builds one region: stores opened, recovery done; jobs not started and not listening yet. */
export interface BuildOptions {
  /** Observer of named steps of long operations (Region.steps): tests only. */
  steps?: (step: string) => Promise<void>;
  /** File-system faults injected into the local chunk store (LocalDirStoreOptions.faultHook): tests only. */
  chunkFaults?: LocalDirStoreOptions['faultHook'];
}

export async function buildRegion(config: ServeConfig, name: string, hasher: Sha256Pool, log: LogFn, options: BuildOptions = {}): Promise<BuiltRegion> {
  const dir = join(config.dataDir, name);
  await mkdir(dir, { recursive: true });
  const meta = new SqliteMetadataStore(join(dir, 'meta.db'));
  const chunks = await LocalDirChunkStore.open(join(dir, 'chunks'), { hasher: (b) => hasher.hash(b), faultHook: options.chunkFaults });
  const manifests = await LocalDirChunkStore.open(join(dir, 'manifests'), { hasher: (b) => hasher.hash(b) });
  const metrics = new MetricsRegistry();
  const repo = new ChunkRepository(chunks, manifests, hasher, config.chunkSize, new RepositoryMetrics(metrics));
  const disks = new DiskManager(join(dir, 'disks'), config.chunkSize, {
    onCloseError: (volumeId, e) => log('error', 'closing an idle disk failed', { volumeId, err: String(e) }),
  });
  await disks.init();
  const jobs = new JobRunner({
    jobs: meta.jobs,
    concurrency: 64,
    groupLimit: (group) => (group.startsWith('copy:') ? config.copyConcurrencyPerDestination : group.startsWith('capture:') ? 1 : 4),
    log,
  });
  const region: Region = { name, meta, jobs, disks, repo, leases: new DiskLeases(), log, steps: options.steps };

  const urls = peerUrls(config);
  const peers = new Map<string, PeerClient>();
  const peer = (dest: string): PeerClient | null => {
    if (dest === name || !urls[dest]) return null;
    let client = peers.get(dest);
    if (!client) {
      client = new PeerClient(dest, urls[dest]!, name, config.regionSecret);
      peers.set(dest, client);
    }
    return client;
  };
  const replicationMetrics = new ReplicationMetrics(metrics, meta.jobs, Object.keys(urls).filter((r) => r !== name));

  jobs.register(volumeCreateJob(region));
  jobs.register(volumeRollbackJob(region));
  jobs.register(snapshotCreateJob(region));
  jobs.register(
    copyJob({
      chunks, manifests, decodeManifest: (b) => Manifest.decode(b), peer, metrics: replicationMetrics, log,
      retry: { initialDelayMs: 500, maxDelayMs: 5 * 60_000, deadlineMs: config.copyDeadlineMs },
    }),
  );

  const remoteCopies = new RemoteCopyService(region, peer);
  const incoming = new IncomingCopyService(region, incomingCopyMetrics(metrics));
  const snapshots = new SnapshotService(region, (id) => remoteCopies.isBeingRead(id));
  const runGc = async (): Promise<unknown> => {
    const result = await collectGarbage({
      repo, graceMs: config.gcGraceMs,
      oldestHold: (now) => meta.gcHolds.oldestLiveStart(now),
      roots: () => gcRoots(region),
    });
    await meta.gcHolds.purgeLapsedBefore(Date.now() - 86_400_000);
    await meta.idempotency.purgeOlderThan(Date.now() - CLIENT_TOKEN_TTL_MS);
    await meta.jobs.deleteFinishedBefore(Date.now() - 7 * 86_400_000);
    return result;
  };
  const app = buildRegionApp({
    region: name,
    tenants: tenantDirectory(config),
    volumes: new VolumeService(region),
    snapshots,
    volumeData: new VolumeDataService(region),
    metrics,
    log,
    extraRoutes: [
      remoteCopyRoutes(remoteCopies),
      internalRoutes({
        services: serviceDirectory(config.regionSecret), incoming, chunkSize: config.chunkSize,
        chunkEncodingHeader: CHUNK_ENCODING_HEADER, manifestPartMaxBytes: MANIFEST_PART_MAX_BYTES, now: Date.now,
        admin: {
          scrub: async () => {
            const report = await scrubRepository(repo);
            return { ...report, disksToReread: await distrustBasesNaming(region, report.damagedChunks, report.damagedManifests) };
          },
          gc: runGc,
          check: () => checkRegionIntegrity(region),
        },
      }),
    ],
  });
  await recoverRegion(region);

  // Housekeeping on a timer. Each chore's failure is logged and does not stop the others.
  const chores: Array<[string, () => Promise<unknown>]> = [
    ['expired snapshot deletion', () => snapshots.deleteExpired()],
    ['garbage collection', runGc],
    ['failing incoming copies whose source went silent', () => incoming.failSilent(config.copyDeadlineMs)],
    ['keeping queued copies alive at their destinations', () => remoteCopies.keepAlive()],
  ];
  let housekeepingRuns = false;
  const housekeeping = async (): Promise<void> => {
    if (housekeepingRuns) return; // the previous round is still going: skip, never pile up
    housekeepingRuns = true;
    for (const [what, chore] of chores) {
      try {
        log('info', `${what} done`, { result: await chore() });
      } catch (e) {
        log('error', `${what} failed`, { err: String(e) });
      }
    }
    housekeepingRuns = false;
  };
  let housekeepingTimer: NodeJS.Timeout | null = null;
  return {
    region,
    app,
    metrics,
    gc: runGc,
    start() {
      jobs.start();
      housekeepingTimer = setInterval(() => void housekeeping(), config.gcIntervalMs);
      housekeepingTimer.unref();
    },
    async close() {
      if (housekeepingTimer) clearInterval(housekeepingTimer);
      await app.close();
      await incoming.close();
      await jobs.stop();
      await Promise.allSettled([...peers.values()].map((p) => p.close()));
      await disks.closeAll();
      await meta.close();
    },
  };
}

export async function startServer(config: ServeConfig, out: NodeJS.WritableStream = process.stdout): Promise<RunningServer> {
  const releaseLock = acquireDataDirLock(config.dataDir);
  const hasher = new Sha256Pool();
  const running: Array<BuiltRegion & { url: string; nbd: NbdServer }> = [];
  const closeAll = async (): Promise<void> => {
    // Block clients first (their disks go back to Available), then HTTP, jobs and stores.
    await Promise.allSettled(running.map((r) => r.nbd.close()));
    await Promise.allSettled(running.map((r) => r.close()));
    await hasher.close();
    releaseLock();
  };
  try {
    for (const [index, name] of config.regions.entries()) {
      const built = await buildRegion(config, name, hasher, jsonLogger({ region: name }));
      const port = config.port + index;
      try {
        await built.app.listen({ host: config.host, port });
      } catch (e) {
        await built.close();
        const why = (e as NodeJS.ErrnoException).code === 'EADDRINUSE' ? 'the port is in use' : (e as Error).message;
        throw new Error(`region ${name} cannot listen on ${config.host}:${port}: ${why}`);
      }
      let nbd: NbdServer;
      try {
        nbd = await startNbdServer({ host: config.host, port: config.nbdPort + index, exports: new DiskExports(built.region), log: (level, msg, fields) => level !== 'debug' && built.region.log(level, msg, fields) });
      } catch (e) {
        await built.close();
        const why = (e as NodeJS.ErrnoException).code === 'EADDRINUSE' ? 'the port is in use' : (e as Error).message;
        throw new Error(`region ${name} cannot serve NBD on ${config.host}:${config.nbdPort + index}: ${why}`);
      }
      const url = `http://${config.host}:${port}`;
      running.push({ ...built, url, nbd });
    }
    // Jobs start once every region of this process listens: a copy to a neighbour finds it up.
    for (const r of running) {
      r.start();
      out.write(`snapferry: region ${r.region.name} ready on ${r.url} (nbd ${config.host}:${r.nbd.port})\n`);
    }
  } catch (e) {
    await closeAll();
    throw e;
  }
  return { regions: running, close: closeAll };
}
