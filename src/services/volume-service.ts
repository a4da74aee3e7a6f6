/**
 * Disk (CDS volume) use-cases: create (empty or from a snapshot), detail, list, delete, resize,
 * rollback. Long work (filling a disk, rolling back) runs as durable jobs; see volume-jobs.ts.
 */
import { ApiError } from '../domain/errors.ts';
import { newVolumeId } from '../domain/ids.ts';
import { defaultZone, zonesOf } from '../domain/region.ts';
import type { Tag } from '../domain/tag.ts';
import {
  GiB, MAX_DISK_GB, MIN_DISK_GB, REGION_BOUND_STORAGE_TYPES, STORAGE_TYPES, canDeleteVolume, canResizeVolume, canRollbackVolume,
  type StorageType, type Volume,
} from '../domain/volume.ts';
import type { Page } from '../metadata/metadata-store.ts';
import { withClientToken } from './client-token.ts';
import type { Region } from './region-context.ts';
import type { RequestContext } from './request-context.ts';
import { VOLUME_CREATE_JOB, VOLUME_ROLLBACK_JOB } from './volume-jobs.ts';

export interface CreateVolumesInput {
  cdsSizeInGB: number | null;
  snapshotId: string | null;
  purchaseCount: number | null;
  storageType: string | null;
  zoneName: string | null;
  name: string | null;
  description: string | null;
  tags: Tag[] | null;
}

/**
 * The list filters the SDKs send. Disks here are never attached to instances or clusters, are all
 * pay-as-you-go data disks: filters that ask for anything else match nothing (rather than being
 * ignored, which would answer with disks the caller did not ask for).
 */
export interface VolumeListFilter {
  zoneName?: string;
  name?: string;
  volumeIds?: string[];
  instanceId?: string;
  clusterId?: string;
  /** `postpay` or `prepay` */
  chargeFilter?: string;
  /** `cds`, `system` or `ephemeral` */
  usageFilter?: string;
}

function couldMatch(f: VolumeListFilter): boolean {
  if (f.instanceId || f.clusterId) return false;
  if (f.chargeFilter && f.chargeFilter.toLowerCase() !== 'postpay') return false;
  if (f.usageFilter && f.usageFilter.toLowerCase() !== 'cds') return false;
  return true;
}

export interface VolumeView extends Volume {
  snapshotNum: number;
}

export const MAX_PURCHASE_COUNT = 5;
const MAX_NAME = 65;
const MAX_DESC = 200;

export class VolumeService {
  constructor(private readonly region: Region) {}

  async create(ctx: RequestContext, input: CreateVolumesInput, clientToken: string | null): Promise<string[]> {
    const count = input.purchaseCount ?? 1;
    if (!Number.isInteger(count) || count < 1 || count > MAX_PURCHASE_COUNT) {
      throw new ApiError('BadRequest', `purchaseCount must be an integer from 1 to ${MAX_PURCHASE_COUNT}.`);
    }
    const storageType = (input.storageType ?? 'hp1') as StorageType;
    if (!STORAGE_TYPES.includes(storageType)) throw new ApiError('BadRequest', `storageType ${JSON.stringify(input.storageType)} is not supported.`);
    const zoneName = input.zoneName ?? defaultZone(this.region.name);
    if (!zonesOf(this.region.name).includes(zoneName)) throw new ApiError('BadRequest', `zoneName ${JSON.stringify(zoneName)} is not a zone of region ${this.region.name}.`);
    checkText('name', input.name, MAX_NAME);
    checkText('description', input.description, MAX_DESC);

    if (input.snapshotId === null) checkSize(input.cdsSizeInGB);

    // Checks that read other records run inside `perform`: a retry of a completed clientToken
    // answers the original ids even if, say, the source snapshot was deleted since.
    return withClientToken(
      this.region.meta.idempotency, ctx, 'volume.create', clientToken, { ...input },
      () => Array.from({ length: count }, newVolumeId),
      async (ids) => {
        let diskSizeInGB = input.cdsSizeInGB;
        let manifestId: string | null = null;
        if (input.snapshotId !== null) {
          const snap = await this.region.meta.snapshots.get(ctx.accountId, input.snapshotId);
          if (!snap) throw new ApiError('NoSuchObject', `The snapshot ${input.snapshotId} does not exist.`);
          if (snap.status !== 'Available' || !snap.manifestId) throw new ApiError('OperationDenied', `The snapshot ${snap.id} is ${snap.status}, not Available.`);
          diskSizeInGB ??= snap.sizeInGB;
          checkSize(diskSizeInGB);
          if (diskSizeInGB < snap.sizeInGB) throw new ApiError('Volume.DiskSizeInvalid', `cdsSizeInGB may not be smaller than the snapshot (${snap.sizeInGB} GB).`);
          manifestId = snap.manifestId;
        }
        for (const id of ids) {
          const volume: Volume = {
            id, accountId: ctx.accountId, name: input.name ?? '', desc: input.description ?? '', diskSizeInGB: diskSizeInGB!, storageType, zoneName,
            createTime: Date.now(), status: 'Creating', sourceSnapshotId: input.snapshotId, tags: input.tags ?? [], lastError: null,
            storageNode: await this.region.placeDisk(),
          };
          await this.region.meta.volumes.insertIfAbsent(volume);
          // A retry of this request finds the volume inserted before: its job goes to that volume's node.
          const placed = (await this.region.meta.volumes.getAny(id))?.storageNode ?? null;
          await this.region.jobs.enqueue({ kind: VOLUME_CREATE_JOB, key: `volume.create:${id}`, group: 'volume', payload: { volumeId: id, manifestId }, node: placed });
        }
      },
    );
  }

  async get(ctx: RequestContext, id: string): Promise<VolumeView> {
    const volume = await this.mustGet(ctx, id);
    return { ...volume, snapshotNum: await this.region.meta.snapshots.countByVolume(id) };
  }

  async list(ctx: RequestContext, filter: VolumeListFilter, marker: string | null, maxKeys: number): Promise<Page<VolumeView>> {
    if (!couldMatch(filter)) return { items: [], nextMarker: null };
    const page = await this.region.meta.volumes.list(ctx.accountId, { zoneName: filter.zoneName, name: filter.name, ids: filter.volumeIds }, { marker, maxKeys });
    const items = await Promise.all(page.items.map(async (v) => ({ ...v, snapshotNum: await this.region.meta.snapshots.countByVolume(v.id) })));
    return { items, nextMarker: page.nextMarker };
  }

  async delete(ctx: RequestContext, id: string): Promise<void> {
    const volume = await this.mustGet(ctx, id);
    if (!canDeleteVolume(volume.status) || this.region.leases.holder(id)) {
      throw new ApiError('Volume.DiskStatusCannotBeDeleted', `The disk ${id} is ${volume.status}; it can be deleted only when Available, Expired or Error.`);
    }
    const release = this.region.leases.acquire(id, 'maintenance');
    try {
      const marked = await this.region.meta.volumes.update(id, { status: 'Deleting' }, ['Available', 'Expired', 'Error']);
      if (!marked) throw new ApiError('Volume.DiskStatusCannotBeDeleted');
      if (await this.snapshotInProgress(id)) {
        await this.region.meta.volumes.update(id, { status: volume.status }, ['Deleting']);
        throw new ApiError('Volume.DiskStatusCannotBeDeleted', `A snapshot of ${id} is being taken; delete the disk when it is done.`);
      }
      // The record goes first: a crash after it leaves only unreferenced files, which recovery removes.
      await this.region.meta.volumes.delete(id);
      await this.region.meta.diskBases.delete(id);
      await this.region.disks.delete(id);
    } finally {
      release();
    }
  }

  /** Grows a disk and/or changes its storage type (BCC's resize takes both). */
  async resize(ctx: RequestContext, id: string, change: { newSizeGB: number | null; newType: string | null }, clientToken: string | null): Promise<void> {
    await this.mustGet(ctx, id);
    await withClientToken(this.region.meta.idempotency, ctx, 'volume.resize', clientToken, { id, ...change }, () => ({}), async () => {
      const volume = await this.mustGet(ctx, id);
      if (change.newSizeGB !== null) {
        const size = change.newSizeGB;
        const acceptable = size > volume.diskSizeInGB || (size === volume.diskSizeInGB && change.newType !== null);
        if (!Number.isInteger(size) || size > MAX_DISK_GB || !acceptable) {
          throw new ApiError('Volume.DiskSizeInvalid', `newCdsSizeInGB must be an integer larger than the current ${volume.diskSizeInGB} and at most ${MAX_DISK_GB}.`);
        }
      }
      const newSizeGB = change.newSizeGB ?? volume.diskSizeInGB;
      const newType = (change.newType ?? volume.storageType) as StorageType;
      // Local and ephemeral disks stay what they are: a type change may not cross that line.
      if (!STORAGE_TYPES.includes(newType) || REGION_BOUND_STORAGE_TYPES.has(newType) !== REGION_BOUND_STORAGE_TYPES.has(volume.storageType)) {
        throw new ApiError('BadRequest', `A ${volume.storageType} disk cannot become ${JSON.stringify(change.newType)}.`);
      }
      if (newSizeGB === volume.diskSizeInGB && newType === volume.storageType) {
        throw new ApiError('BadRequest', 'The resize changes nothing: give a larger newCdsSizeInGB or another newVolumeType.');
      }
      if (!canResizeVolume(volume.status)) throw new ApiError('OperationDenied', `The disk ${id} is ${volume.status}; it must be Available to resize.`);
      const release = this.region.leases.acquire(id, 'maintenance');
      try {
        if (!(await this.region.meta.volumes.update(id, { status: 'Scaling' }, ['Available']))) throw new ApiError('OperationDenied', `The disk ${id} changed state; retry.`);
        if (await this.snapshotInProgress(id)) {
          await this.region.meta.volumes.update(id, { status: 'Available' }, ['Scaling']);
          throw new ApiError('OperationDenied', `A snapshot of ${id} is being taken; resize it when the snapshot is done.`);
        }
        try {
          if (newSizeGB > volume.diskSizeInGB) await this.region.disks.use(id, (disk) => disk.grow(newSizeGB * GiB));
          await this.region.meta.volumes.update(id, { status: 'Available', diskSizeInGB: newSizeGB, storageType: newType });
        } catch (e) {
          await this.region.meta.volumes.update(id, { status: 'Error', lastError: `resize failed: ${(e as Error).message}` });
          throw e;
        }
      } finally {
        release();
      }
    });
  }

  async rollback(ctx: RequestContext, id: string, snapshotId: string): Promise<void> {
    const volume = await this.mustGet(ctx, id);
    const snap = await this.region.meta.snapshots.get(ctx.accountId, snapshotId);
    if (!snap || snap.volumeId !== id) throw new ApiError('NoSuchObject', `The snapshot ${snapshotId} does not exist or was not taken of ${id}.`);
    if (snap.status !== 'Available' || !snap.manifestId) throw new ApiError('OperationDenied', `The snapshot ${snapshotId} is ${snap.status}, not Available.`);
    if (!canRollbackVolume(volume.status) || this.region.leases.holder(id)) {
      throw new ApiError('OperationDenied', `The disk ${id} is ${volume.status}${this.region.leases.holder(id) ? ' and busy' : ''}; it must be Available to roll back.`);
    }
    const marked = await this.region.meta.volumes.update(id, { status: 'SnapshotProcessing' }, ['Available']);
    if (!marked) throw new ApiError('OperationDenied', `The disk ${id} changed state; retry.`);
    if (await this.snapshotInProgress(id)) {
      await this.region.meta.volumes.update(id, { status: 'Available' }, ['SnapshotProcessing']);
      throw new ApiError('OperationDenied', `A snapshot of ${id} is being taken; roll back when it is done.`);
    }
    await this.region.jobs.enqueue({
      kind: VOLUME_ROLLBACK_JOB, key: `volume.rollback:${id}:${Date.now()}`, group: 'volume', payload: { volumeId: id, snapshotId, manifestId: snap.manifestId },
      node: volume.storageNode ?? null,
    });
  }

  /**
   * Whether a snapshot of the disk is being captured. Rollback, resize and delete first move the disk
   * to their own status and then ask this, while snapshot create inserts first and then re-reads the
   * disk's status: whichever of two racing requests comes second sees the other and backs off.
   */
  private async snapshotInProgress(volumeId: string): Promise<boolean> {
    return (await this.region.meta.snapshots.listByStatus(['Creating'])).some((s) => s.volumeId === volumeId);
  }

  private async mustGet(ctx: RequestContext, id: string): Promise<Volume> {
    const volume = await this.region.meta.volumes.get(ctx.accountId, id);
    if (!volume) throw new ApiError('NoSuchObject', `The disk ${id} does not exist.`);
    return volume;
  }
}

function checkSize(sizeGB: number | null): void {
  if (sizeGB === null || !Number.isInteger(sizeGB) || sizeGB < MIN_DISK_GB || sizeGB > MAX_DISK_GB) throw new ApiError('Volume.DiskSizeInvalid');
}

function checkText(field: string, value: string | null, max: number): void {
  if (value !== null && value.length > max) throw new ApiError('BadRequest', `${field} must be at most ${max} characters.`);
}
