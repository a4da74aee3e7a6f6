import type { Tag } from './tag.ts';

export type SnapshotStatus = 'Creating' | 'Available' | 'CreatedFailed' | 'NotAvailable';

export const MAX_MANUAL_SNAPSHOTS_PER_VOLUME = 512;

/** A snapshot as this service keeps it. `createTime` is epoch milliseconds. */
export interface Snapshot {
  id: string;
  accountId: string;
  name: string;
  desc: string;
  /** The disk it was taken of; '' for a copy received from another region. */
  volumeId: string;
  sizeInGB: number;
  createTime: number;
  status: SnapshotStatus;
  createMethod: 'MANUAL' | 'AUTO';
  /** 0..100 */
  progress: number;
  /** The storage type of the disk it was taken of: decides whether it may leave its region. */
  storageType: string;
  retentionInDays: number | null;
  tags: Tag[];
  /** Set on copies: where the bytes came from. */
  sourceRegion: string | null;
  sourceSnapshotId: string | null;
  /** sha256 of the encoded manifest, set once the manifest is durable; null while Creating. */
  manifestId: string | null;
  lastError: string | null;
}

export const canDeleteSnapshot = (s: SnapshotStatus): boolean => s === 'Available' || s === 'CreatedFailed';

/** BCC: 1-65 chars, starts with a letter; letters, digits, CJK, `-_ /.`. */
const SNAPSHOT_NAME = /^[A-Za-z\u4e00-\u9fff][A-Za-z0-9\u4e00-\u9fff\-_ /.]{0,64}$/u;
export const isValidSnapshotName = (name: string): boolean => SNAPSHOT_NAME.test(name);
