/**
 * Snapshot use-cases: create (captured by a durable job, see snapshot-jobs.ts), detail, list,
 * delete, modify. Remote copy lives in remote-copy-service.ts.
 */
import { ApiError } from '../domain/errors.ts';
import { newSnapshotId } from '../domain/ids.ts';
import { MAX_MANUAL_SNAPSHOTS_PER_VOLUME, canDeleteSnapshot, isValidSnapshotName, type Snapshot } from '../domain/snapshot.ts';
import type { Tag } from '../domain/tag.ts';
import { canSnapshotVolume } from '../domain/volume.ts';
import type { Page } from '../metadata/metadata-store.ts';
import { withClientToken } from './client-token.ts';
import type { Region } from './region-context.ts';
import type { RequestContext } from './request-context.ts';
import { SNAPSHOT_CREATE_JOB } from './snapshot-jobs.ts';

export interface CreateSnapshotInput {
  volumeId: string;
  snapshotName: string;
  desc: string | null;
  tags: Tag[] | null;
  retentionInDays: number | null;
}

const MAX_DESC = 200;

/** Something that may hold a snapshot's bytes busy (a remote copy reading it). */
export type SnapshotReaderCheck = (snapshotId: string) => Promise<boolean>;

export class SnapshotService {
  constructor(
    private readonly region: Region,
    private readonly isBeingRead: SnapshotReaderCheck = async () => false,
  ) {}

  async create(ctx: RequestContext, input: CreateSnapshotInput, clientToken: string | null): Promise<string> {
    if (!isValidSnapshotName(input.snapshotName)) throw new ApiError('Snapshot.SnapshotNameInvalid');
    checkDesc(input.desc);
    checkRetention(input.retentionInDays);
    return withClientToken(
      this.region.meta.idempotency, ctx, 'snapshot.create', clientToken, { ...input },
      () => newSnapshotId(),
      async (id) => {
        const volume = await this.region.meta.volumes.get(ctx.accountId, input.volumeId);
        if (!volume) throw new ApiError('NoSuchObject', `The disk ${input.volumeId} does not exist.`);
        if (!canSnapshotVolume(volume.status)) {
          throw new ApiError('OperationDenied', `The disk ${volume.id} is ${volume.status}; a snapshot needs it Available or InUse.`);
        }
        const snapshot: Snapshot = {
          id, accountId: ctx.accountId, name: input.snapshotName, desc: input.desc ?? '', volumeId: volume.id,
          sizeInGB: volume.diskSizeInGB, createTime: Date.now(), status: 'Creating', createMethod: 'MANUAL', progress: 0,
          storageType: volume.storageType, retentionInDays: input.retentionInDays, tags: input.tags ?? [],
          sourceRegion: null, sourceSnapshotId: null, manifestId: null, lastError: null,
        };
        const outcome = await this.region.meta.snapshots.insertIfAbsent(snapshot, MAX_MANUAL_SNAPSHOTS_PER_VOLUME);
        if (outcome === 'quota') throw new ApiError('Instance.SnapshotLimitExceeded', `The disk ${volume.id} already has ${MAX_MANUAL_SNAPSHOTS_PER_VOLUME} snapshots.`);
        // A rollback, resize or delete may have started between the check above and the insert.
        const now = await this.region.meta.volumes.getAny(volume.id);
        if (!now || !canSnapshotVolume(now.status)) {
          await this.region.meta.snapshots.delete(id);
          throw new ApiError('OperationDenied', `The disk ${volume.id} is ${now?.status ?? 'gone'}; a snapshot needs it Available or InUse.`);
        }
        await this.region.jobs.enqueue({
          kind: SNAPSHOT_CREATE_JOB, key: `snapshot.create:${id}`, group: `capture:${volume.id}`, payload: { snapshotId: id, volumeId: volume.id },
          node: volume.storageNode ?? null, // the capture reads the disk: it runs where the disk is
        });
      },
    );
  }

  async get(ctx: RequestContext, id: string): Promise<Snapshot> {
    const snap = await this.region.meta.snapshots.get(ctx.accountId, id);
    if (!snap) throw new ApiError('NoSuchObject', `The snapshot ${id} does not exist.`);
    return snap;
  }

  list(ctx: RequestContext, filter: { volumeId?: string }, marker: string | null, maxKeys: number): Promise<Page<Snapshot>> {
    return this.region.meta.snapshots.list(ctx.accountId, filter, { marker, maxKeys });
  }

  async delete(ctx: RequestContext, id: string): Promise<void> {
    const snap = await this.get(ctx, id);
    if (!canDeleteSnapshot(snap.status)) {
      throw new ApiError('SnapshotOperationForbidden', `The snapshot ${id} is ${snap.status}; it can be deleted only when Available or CreatedFailed.`);
    }
    if (await this.isBeingRead(id)) {
      throw new ApiError('SnapshotOperationForbidden', `The snapshot ${id} is being copied to another region; delete it after the copy ends.`);
    }
    // Its chunks are not touched here: garbage collection removes what no manifest references.
    await this.region.meta.snapshots.delete(id);
  }

  /**
   * Deletes snapshots whose `retentionInDays` has run out (BCC deletes them automatically), except
   * one a copy is still reading: it goes on a later round. Returns how many went.
   */
  async deleteExpired(now = Date.now()): Promise<number> {
    let deleted = 0;
    for (const s of await this.region.meta.snapshots.listByStatus(['Available', 'CreatedFailed'])) {
      if (s.retentionInDays === null || s.createTime + s.retentionInDays * 86_400_000 > now) continue;
      if (await this.isBeingRead(s.id)) continue;
      await this.region.meta.snapshots.delete(s.id);
      this.region.log('info', 'snapshot expired and was deleted', { snapshotId: s.id, retentionInDays: s.retentionInDays });
      deleted++;
    }
    return deleted;
  }

  async modify(ctx: RequestContext, id: string, patch: { snapshotName: string | null; desc: string | null; retentionInDays: number | null }): Promise<void> {
    await this.get(ctx, id);
    if (patch.snapshotName !== null && !isValidSnapshotName(patch.snapshotName)) throw new ApiError('Snapshot.SnapshotNameInvalid');
    checkDesc(patch.desc);
    checkRetention(patch.retentionInDays);
    await this.region.meta.snapshots.update(id, {
      name: patch.snapshotName ?? undefined,
      desc: patch.desc ?? undefined,
      retentionInDays: patch.retentionInDays ?? undefined,
    });
  }
}

function checkDesc(desc: string | null): void {
  if (desc !== null && desc.length > MAX_DESC) throw new ApiError('BadRequest', `desc must be at most ${MAX_DESC} characters.`);
}

function checkRetention(days: number | null): void {
  if (days !== null && (!Number.isInteger(days) || days < 1 || days > 65535)) throw new ApiError('BadRequest', 'retentionInDays must be an integer from 1 to 65535.');
}
