/**
 * Composition root: wires a region together from the stores region-stores.ts opens (SQLite or
 * PostgreSQL metadata, a local directory or an S3 bucket for chunks): repository, disks, job
 * runner, services, HTTP app, replication peers, housekeeping. `startServer` runs every configured
 * region in this process; regions in one process still talk to each other only over HTTP, exactly
 * as separate processes do.
 *
 * Roles (config.ts `ROLES`) decide what a process of a region does: `api` serves the BCC API and
 * the internal endpoints, `storage` owns disks (NBD, captures and restores of its disks), `worker`
 * runs copies, garbage collection and housekeeping. Every process answers /healthz and /metrics.
 */
import { randomUUID } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { hostname, networkInterfaces } from 'node:os';
import { join } from 'node:path';
import type { FastifyInstance } from 'fastify';
import type { Credential, CredentialDirectory } from './api/authenticate.ts';
import { internalRoutes } from './api/internal-routes.ts';
import { buildRegionApp } from './api/region-app.ts';
import { restrictRoutes } from './api/role-gate.ts';
import { diskForwarding } from './api/disk-forwarding.ts';
import { remoteCopyRoutes } from './api/remote-copy-routes.ts';
import { DiskManager } from './blockdev/disk-manager.ts';
import { nbdPskKey, startNbdServer, type NbdServer } from './blockdev/nbd/index.ts';
import type { LocalDirStoreOptions } from './chunkstore/local-dir-store.ts';
import { isShared } from './backend-config.ts';
import { ROLES, type Role, type ServeConfig } from './config.ts';
import { ApiError } from './domain/errors.ts';
import { isKnownRegion } from './domain/region.ts';
import { JobRunner } from './jobs/job-runner.ts';
import { jsonLogger, type LogFn } from './lib/logger.ts';
import { MetricsRegistry } from './lib/metrics.ts';
import { acquireDataDirLock } from './lib/data-dir-lock.ts';
import { PathProbe } from './lib/path-probe.ts';
import { Sha256Pool } from './lib/sha256-pool.ts';
import { copyJob } from './replication/copy-job.ts';
import { CHUNK_ENCODING_HEADER, MANIFEST_PART_MAX_BYTES, PeerClient, SERVICE_KEY_PREFIX } from './replication/peer-client.ts';
import { UploadThread } from './replication/upload-thread.ts';
import { ReplicationMetrics } from './replication/replication-metrics.ts';
import { openRegionStores, type RegionStores } from './region-stores.ts';
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
import { runAsSingleton } from './services/singleton.ts';
import { COPY_JOB } from './replication/copy-payload.ts';
import { SNAPSHOT_CREATE_JOB } from './services/snapshot-jobs.ts';
import { VOLUME_CREATE_JOB, VOLUME_ROLLBACK_JOB } from './services/volume-jobs.ts';

export interface BuiltRegion {
  region: Region;
  app: FastifyInstance;
  metrics: MetricsRegistry;
  /** The stores the region was opened with (tests look into the bucket through `stores.bucket`). */
  stores: RegionStores;
  /** What this process does for the region. */
  roles: ReadonlySet<Role>;
  /** Runs one garbage collection now (also what `snapferry gc` and the housekeeping timer run). */
  gc(): Promise<unknown>;
  /**
   * Starts the job runner, the periodic housekeeping (worker role) and, in a shared region, the
   * heartbeat that records `address` (where the region's other processes reach this one: its
   * HTTP base URL and NBD address) in the node registry.
   */
  start(address?: { url: string; nbd: string | null }): void;
  close(): Promise<void>;
}

export interface RunningServer {
  /** `nbd` is null where the process does not have the storage role. */
  regions: Array<BuiltRegion & { url: string; nbd: NbdServer | null }>;
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

/** How often a process of a shared region records that it is alive, and when it counts as gone. */
const HEARTBEAT_MS = 5_000;
const NODE_LIVE_MS = 20_000;
/**
 * One housekeeping round at a time per region, across its processes. Its lease is renewed while a
 * round runs and kept between rounds; a dead holder's lapses after twice the job lease.
 */
const HOUSEKEEPING_LOCK = 'housekeeping';

/** Job kinds each role runs; every process may enqueue any of them. */
const KINDS_BY_ROLE: Record<Role, string[]> = {
  api: [],
  storage: [VOLUME_CREATE_JOB, VOLUME_ROLLBACK_JOB, SNAPSHOT_CREATE_JOB],
  worker: [COPY_JOB],
};

/**
 * The id a storage process of a shared region is known by: its disks are recorded with it, and the
 * jobs on them wait for it. Kept in the region's directory so that it survives restarts (a fresh id
 * would orphan every disk of the process); other roles own nothing and take a fresh id per start.
 */
function nodeIdentity(dir: string, storage: boolean): string {
  if (!storage) return `${hostname()}-${process.pid}-${randomUUID().slice(0, 8)}`;
  const file = join(dir, 'node-id');
  try {
    return readFileSync(file, 'utf8').trim();
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
  }
  const id = `storage-${hostname()}-${randomUUID().slice(0, 8)}`;
  writeFileSync(file, `${id}\n`, { flag: 'wx', mode: 0o644 });
  return id;
}

/**
 * The worker threads every region of a process shares: the hash pool (snapshots, copies, restores,
 * verification) and the path probe (the local chunk stores' batched presence checks).
 */
export interface ProcessWorkers {
  hasher: Sha256Pool;
  probe: PathProbe;
}

export async function buildRegion(config: ServeConfig, name: string, workers: ProcessWorkers, log: LogFn, options: BuildOptions = {}): Promise<BuiltRegion> {
  const { hasher } = workers;
  const dir = join(config.dataDir, name);
  await mkdir(dir, { recursive: true });
  const backends = config.backends[name] ?? { metadata: { type: 'sqlite' as const }, chunkStore: { type: 'local' as const } };
  const shared = isShared(backends);
  const roles: ReadonlySet<Role> = config.roles ?? new Set(ROLES);
  const processId = nodeIdentity(dir, shared && roles.has('storage'));
  const stores = await openRegionStores(backends, {
    dir, region: name, processName: `snapferry ${name} ${[...roles].join(',')}`, hash: (b) => hasher.hash(b), probe: workers.probe, chunkFaults: options.chunkFaults,
  });
  const { meta, chunks, manifests } = stores;
  const metrics = new MetricsRegistry();
  const repo = new ChunkRepository(chunks, manifests, hasher, config.chunkSize, new RepositoryMetrics(metrics));
  const disks = new DiskManager(join(dir, 'disks'), config.chunkSize, {
    onCloseError: (volumeId, e) => log('error', 'closing an idle disk failed', { volumeId, err: String(e) }),
  });
  if (roles.has('storage')) await disks.init();
  // In a shared region, a storage process runs the jobs of its own disks only (KINDS_BY_ROLE), and
  // jobs without a node (copies) go to any worker.
  const node = shared && roles.has('storage') ? processId : null;
  const jobs = new JobRunner({
    jobs: meta.jobs,
    concurrency: 64,
    groupLimit: (group) => (group.startsWith('copy:') ? config.copyConcurrencyPerDestination : group.startsWith('capture:') ? 1 : 4),
    leaseMs: config.jobLeaseMs ?? 30_000,
    node,
    runKinds: [...roles].flatMap((r) => KINDS_BY_ROLE[r]),
    // Several workers share a shared region's queue: each runs its share of the copies (the
    // embedded layout keeps only the per-destination cap).
    kindLimit: shared ? (kind) => (kind === COPY_JOB ? config.copiesPerWorker : Infinity) : undefined,
    log,
  });
  const placeDisk = async (): Promise<string | null> => {
    if (!shared) return null;
    // The live storage process with the fewest disks. A disk is placed once and stays there.
    const now = Date.now();
    const live = (await meta.nodes.listLive(now, NODE_LIVE_MS)).filter((n) => n.roles.includes('storage'));
    if (live.length === 0) throw new ApiError('ServiceUnavailable', 'No storage process of this region is running; start one (snapferry serve --role storage) and retry.');
    const counts = await meta.volumes.countByNode();
    return live.reduce((best, n) => ((counts[n.id] ?? 0) < (counts[best.id] ?? 0) ? n : best)).id;
  };
  const region: Region = { name, meta, jobs, disks, repo, leases: new DiskLeases(), node, placeDisk, log, steps: options.steps };

  const urls = peerUrls(config);
  const peers = new Map<string, PeerClient>();
  // One thread sends this region's chunk uploads to all its peers (started at the first upload).
  const uploadThread = new UploadThread();
  const peer = (dest: string): PeerClient | null => {
    if (dest === name || !urls[dest]) return null;
    let client = peers.get(dest);
    if (!client) {
      client = new PeerClient(dest, urls[dest]!, name, config.regionSecret, { uploadThread });
      peers.set(dest, client);
    }
    return client;
  };
  const replicationMetrics = new ReplicationMetrics(metrics, meta.jobs, Object.keys(urls).filter((r) => r !== name));

  // Every process registers every kind (an api process enqueues captures and copies that others
  // run); which kinds it claims is its roles' (runKinds above).
  jobs.register(volumeCreateJob(region));
  jobs.register(volumeRollbackJob(region));
  jobs.register(snapshotCreateJob(region));
  jobs.register(
    copyJob({
      chunks, manifests, decodeManifest: (b) => Manifest.decode(b), peer, metrics: replicationMetrics, log, readBuffers: repo.readBuffers,
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
    // Index rows of puts and deletes that died midway (S3 store), with the cutoff this run used.
    for (const store of [chunks, manifests]) await store.sweepAbandoned?.(result.cutoffMs);
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
    metricsToken: config.metricsToken,
    log,
    debugLog: (msg, fields) => log('debug', msg, fields),
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
  // In a shared region, requests that touch a disk's bytes go to the storage process that has it.
  if (shared && roles.has('api')) {
    const tenants = tenantDirectory(config);
    diskForwarding(app, {
      log,
      ownerOf: async (volumeId, accessKeyId) => {
        const v = await meta.volumes.getAny(volumeId);
        // Not this caller's disk (or no disk): answered here, exactly like a missing one.
        if (!v || !accessKeyId || tenants.lookup(accessKeyId)?.accountId !== v.accountId) return { here: true };
        if (!v.storageNode || v.storageNode === node) return { here: true };
        const owner = await meta.nodes.get(v.storageNode);
        if (!owner || owner.heartbeatAt < Date.now() - NODE_LIVE_MS) {
          throw new ApiError('ServiceUnavailable', `The storage process that holds disk ${volumeId} is not running; retry when it is back.`);
        }
        return { url: owner.url };
      },
    });
  }
  // A process without the api role answers /healthz, /metrics and the operator's admin calls (gc,
  // scrub, check); a storage process also the disk routes api processes forward to a disk's owner.
  if (!roles.has('api')) restrictRoutes(app, ['/healthz', '/metrics', '/internal/v1/admin/', ...(roles.has('storage') ? ['/v2/volume/'] : [])], log);
  try {
    await recoverRegion(region, { shared, storage: roles.has('storage') });
  } catch (e) {
    await stores.close();
    throw e;
  }

  // Housekeeping on a timer, by worker processes, one of them at a time per region (the lock is in
  // the metadata store). Each chore's failure is logged and does not stop the others.
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
    try {
      const ran = await runAsSingleton(meta.locks, HOUSEKEEPING_LOCK, processId, 2 * config.jobLeaseMs, async () => {
        for (const [what, chore] of chores) {
          try {
            log('info', `${what} done`, { result: await chore() });
          } catch (e) {
            log('error', `${what} failed`, { err: String(e) });
          }
        }
      });
      if (!ran) log('info', 'housekeeping skipped: another process of the region runs it now');
    } catch (e) {
      log('error', 'housekeeping could not start', { err: String(e) });
    } finally {
      housekeepingRuns = false;
    }
  };
  let housekeepingTimer: NodeJS.Timeout | null = null;
  let heartbeatTimer: NodeJS.Timeout | null = null;
  const startedAt = Date.now();
  return {
    region,
    app,
    metrics,
    stores,
    roles,
    gc: runGc,
    start(address) {
      jobs.start();
      if (roles.has('worker')) {
        housekeepingTimer = setInterval(() => void housekeeping(), config.gcIntervalMs);
        housekeepingTimer.unref();
      }
      if (shared && address) {
        // The node registry: where api processes find a disk's storage process, and which storage
        // processes may take new disks.
        const beat = (): void => {
          meta.nodes
            .heartbeat({ id: processId, roles: [...roles], url: address.url, nbdAddress: address.nbd, startedAt }, Date.now())
            .catch((e: unknown) => log('warn', 'could not record this process in the node registry', { err: String(e) }));
        };
        beat();
        heartbeatTimer = setInterval(beat, HEARTBEAT_MS);
        heartbeatTimer.unref();
      }
    },
    async close() {
      if (housekeepingTimer) clearInterval(housekeepingTimer);
      if (heartbeatTimer) clearInterval(heartbeatTimer);
      await app.close();
      await incoming.close();
      await jobs.stop();
      await Promise.allSettled([...peers.values()].map((p) => p.close()));
      await uploadThread.close();
      await disks.closeAll();
      if (shared) await meta.nodes.remove(processId).catch(() => undefined);
      await meta.locks.release(HOUSEKEEPING_LOCK, processId).catch(() => undefined);
      await stores.close();
    },
  };
}

export async function startServer(config: ServeConfig, out: NodeJS.WritableStream = process.stdout): Promise<RunningServer> {
  const releaseLocks = lockDataDir(config);
  const workers: ProcessWorkers = { hasher: new Sha256Pool(), probe: new PathProbe() };
  // Started while the regions open, not by the first snapshot, copy or "which do you lack".
  workers.hasher.warm();
  workers.probe.warm();
  const running: Array<BuiltRegion & { url: string; nbd: NbdServer | null }> = [];
  const closeAll = async (): Promise<void> => {
    // Block clients first (their disks go back to Available), then HTTP, jobs and stores.
    await Promise.allSettled(running.map((r) => r.nbd?.close()));
    await Promise.allSettled(running.map((r) => r.close()));
    await Promise.all([workers.hasher.close(), workers.probe.close()]);
    releaseLocks();
  };
  try {
    for (const [index, name] of config.regions.entries()) {
      const built = await buildRegion(config, name, workers, jsonLogger({ region: name }));
      const port = config.port + index;
      try {
        await built.app.listen({ host: config.host, port });
      } catch (e) {
        await built.close();
        const why = (e as NodeJS.ErrnoException).code === 'EADDRINUSE' ? 'the port is in use' : (e as Error).message;
        throw new Error(`region ${name} cannot listen on ${config.host}:${port}: ${why}`);
      }
      // Disks are served where they live: by storage processes only.
      let nbd: NbdServer | null = null;
      if (built.roles.has('storage')) {
        try {
          const exports = new DiskExports(built.region);
          const tenants = tenantDirectory(config);
          nbd = await startNbdServer({
            host: config.host,
            port: config.nbdPort + index,
            exports,
            // PSK identities are tenants' access key ids only: the regions' service key opens no disk.
            tls: {
              mode: config.nbdTls,
              keyFor: (identity) => {
                const c = tenants.lookup(identity);
                return c ? { accountId: c.accountId, key: nbdPskKey(c.secretAccessKey) } : null;
              },
              exportsFor: (accountId) => exports.forAccount(accountId),
            },
            log: (level, msg, fields) => level !== 'debug' && built.region.log(level, msg, fields),
          });
        } catch (e) {
          await built.close();
          const why = (e as NodeJS.ErrnoException).code === 'EADDRINUSE' ? 'the port is in use' : (e as Error).message;
          throw new Error(`region ${name} cannot serve NBD on ${config.host}:${config.nbdPort + index}: ${why}`);
        }
      }
      const url = `http://${config.host}:${port}`;
      running.push({ ...built, url, nbd });
    }
    // Jobs start once every region of this process listens: a copy to a neighbour finds it up.
    for (const r of running) {
      const reachable = reachableHost(config.host);
      r.start({ url: config.advertiseUrl ?? `http://${reachable}:${config.port + config.regions.indexOf(r.region.name)}`, nbd: r.nbd ? `${reachable}:${r.nbd.port}` : null });
      const roles = r.roles.size === ROLES.length ? '' : ` as ${[...r.roles].join(',')}`;
      out.write(`snapferry: region ${r.region.name} ready on ${r.url}${r.nbd ? ` (nbd ${config.host}:${r.nbd.port})` : ''}${roles}\n`);
    }
  } catch (e) {
    await closeAll();
    throw e;
  }
  return { regions: running, close: closeAll };
}

/**
 * The host other processes reach this one at: the listen address, unless it is a wildcard
 * (0.0.0.0, ::), which names no machine; then the machine's first non-loopback IPv4 address (a
 * multi-homed machine should say which with --advertise-url).
 */
function reachableHost(host: string): string {
  if (host !== '0.0.0.0' && host !== '::') return host.includes(':') ? `[${host}]` : host;
  for (const addrs of Object.values(networkInterfaces())) {
    for (const a of addrs ?? []) if (a.family === 'IPv4' && !a.internal) return a.address;
  }
  return '127.0.0.1';
}

/**
 * The data-dir locks this process needs (see docs/design.md, "one process per data dir"). What is
 * local must have one owner: an embedded region's whole directory (SQLite, chunks, disks), and a
 * shared region's disks, owned by its storage process. A process serving any embedded region takes
 * the data dir's lock, as before; every region whose directory holds something of this process's
 * own is locked too, so an embedded process and a storage process of a shared region never share
 * a region directory. Processes of a shared region without the storage role own nothing local
 * and take no lock: several of them (and its storage process) may run from one data dir.
 */
function lockDataDir(config: ServeConfig): () => void {
  const releases: Array<() => void> = [];
  const release = (): void => {
    for (const r of releases.splice(0).reverse()) r();
  };
  try {
    const backends = config.regions.map((name) => ({ name, shared: isShared(config.backends[name] ?? { metadata: { type: 'sqlite' }, chunkStore: { type: 'local' } }) }));
    if (backends.some((b) => !b.shared)) releases.push(acquireDataDirLock(config.dataDir));
    for (const b of backends) {
      if (!b.shared || config.roles.has('storage')) releases.push(acquireDataDirLock(join(config.dataDir, b.name)));
    }
  } catch (e) {
    release();
    throw e;
  }
  return release;
}
