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
  /**
   * The storage process this one is, in a region several processes share (its disks are recorded
   * with this id, and the jobs on them run here); null in the embedded layout and in processes
   * without the storage role.
   */
  readonly node: string | null;
  /** Picks the storage process a new disk will live on (null: the embedded layout's only one). */
  placeDisk(): Promise<string | null>;
  /**
   * Observer of named steps of long operations ('capture:frozen', ...): tests run a garbage
   * collection or a crash at each one. Absent in production.
   */
  readonly steps?: (step: string) => Promise<void>;
  log(level: 'info' | 'warn' | 'error', msg: string, fields?: Record<string, unknown>): void;
}
