import type { Tag } from './tag.ts';

export const VOLUME_STATUSES = [
  'Creating', 'Available', 'Attaching', 'NotAvailable', 'InUse', 'Detaching', 'Deleting', 'Deleted',
  'Scaling', 'Expired', 'Error', 'SnapshotProcessing', 'ImageProcessing', 'Recharging',
] as const;
export type VolumeStatus = (typeof VOLUME_STATUSES)[number];

/** Storage types BCC accepts for CDS disks. The `local*` and ephemeral kinds never leave their region. */
export const STORAGE_TYPES = [
  'hp1', 'std1', 'cloud_hp1', 'hdd', 'sata', 'ssd', 'premium_ssd', 'enhanced_ssd_pl1', 'enhanced_ssd_pl2',
  'enhanced_ssd_pl3', 'local', 'local-ssd', 'local-hdd', 'local-nvme', 'elastic_ephemeral_disk',
] as const;
export type StorageType = (typeof STORAGE_TYPES)[number];
export const REGION_BOUND_STORAGE_TYPES: ReadonlySet<string> = new Set([
  'local', 'local-ssd', 'local-hdd', 'local-nvme', 'elastic_ephemeral_disk',
]);

export const MIN_DISK_GB = 1;
export const MAX_DISK_GB = 32765;
export const GiB = 1024 ** 3;

/** A CDS disk as this service keeps it. `createTime` is epoch milliseconds. */
export interface Volume {
  id: string;
  accountId: string;
  name: string;
  desc: string;
  diskSizeInGB: number;
  storageType: StorageType;
  zoneName: string;
  createTime: number;
  status: VolumeStatus;
  sourceSnapshotId: string | null;
  tags: Tag[];
  /** Why the disk went to Error, for operators; never shown through the BCC model. */
  lastError: string | null;
  /**
   * Id of the storage process that owns the disk file. Null or absent: the region's only storage
   * process (the embedded default). Stores return it only when set.
   */
  storageNode?: string | null;
}

/** BCC: delete only in Available, Expired or Error. */
export const canDeleteVolume = (s: VolumeStatus): boolean => s === 'Available' || s === 'Expired' || s === 'Error';
/** BCC: a snapshot may be taken of an Available or InUse disk. */
export const canSnapshotVolume = (s: VolumeStatus): boolean => s === 'Available' || s === 'InUse';
/** Rollback and resize need a disk nobody is using. */
export const canRollbackVolume = (s: VolumeStatus): boolean => s === 'Available';
export const canResizeVolume = (s: VolumeStatus): boolean => s === 'Available';
/** Our data extension: range reads work on a disk that is up; writes need one with no block client. */
export const canReadVolumeData = (s: VolumeStatus): boolean => s === 'Available' || s === 'InUse';
export const canWriteVolumeData = (s: VolumeStatus): boolean => s === 'Available';
