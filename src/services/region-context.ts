import type { DiskManager } from '../blockdev/disk-manager.ts';
import type { JobRunner } from '../jobs/job-runner.ts';
import type { MetadataStore } from '../metadata/metadata-store.ts';
import type { ChunkRepository } from '../repository/chunk-repository.ts';
import type { DiskLeases } from './disk-leases.ts';

/** Everything a region's services work with; built once per region by main.ts. */
export interface Region {
  readonly name: string;
  readonly meta: MetadataStore;
  readonly jobs: JobRunner;
  readonly disks: DiskManager;
  readonly repo: ChunkRepository;
  readonly leases: DiskLeases;
  log(level: 'info' | 'warn' | 'error', msg: string, fields?: Record<string, unknown>): void;
}
