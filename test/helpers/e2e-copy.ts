/**
 * Helpers for replication tests against spawned `snapferry serve` processes: a fresh disk written
 * with given chunks and snapshotted, a copy started through the official SDK, the chunk files a
 * region holds durably (read from its data dir after a kill -9), and the recorded job state.
 */
import { access } from 'node:fs/promises';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { BceClient } from '../../src/lib/bce-client.ts';
import { MiB, sha } from './copy-fixtures.ts';
import { send, sdkClient, waitSnapshot, waitVolume } from './sdk.ts';

export interface Tenant {
  ak: string;
  sk: string;
}

/**
 * Creates a 1 GB disk in the region at `url`, writes `chunks` from offset 0 (4 MiB requests) and
 * snapshots it. Answers the snapshot id.
 */
export async function snapshotOf(url: string, tenant: Tenant, chunks: Buffer[], name: string): Promise<string> {
  const sdk = sdkClient(url, tenant.ak, tenant.sk);
  const [volumeId] = (await send(sdk, 'POST', '/v2/volume', { body: { cdsSizeInGB: 1, name } })).volumeIds;
  await waitVolume(sdk, volumeId);
  const raw = new BceClient(url, { accessKeyId: tenant.ak, secretAccessKey: tenant.sk });
  try {
    for (let i = 0; i < chunks.length; i += 4) {
      const body = Buffer.concat(chunks.slice(i, i + 4));
      await raw.json({ method: 'PUT', path: `/v2/volume/${volumeId}/data`, query: { offset: String(i * MiB) }, body });
    }
  } finally {
    await raw.close();
  }
  const { snapshotId } = await send(sdk, 'POST', '/v2/snapshot', { body: { volumeId, snapshotName: name } });
  await waitSnapshot(sdk, snapshotId);
  return snapshotId;
}

export async function copyTo(url: string, tenant: Tenant, snapshotId: string, dest: string): Promise<string> {
  const { result } = await send(sdkClient(url, tenant.ak, tenant.sk), 'PUT', `/v2/snapshot/remote_copy/${snapshotId}`, { body: { destRegionInfos: [{ destRegion: dest }] } });
  return result[0].snapshotId;
}

/** How many of `ids` are durable chunk files of `region` under `dataDir` (the local store's layout: plain, or `.zst`). */
export async function durableChunks(dataDir: string, region: string, ids: Iterable<string>): Promise<number> {
  let n = 0;
  for (const id of ids) {
    const plain = join(dataDir, region, 'chunks', id.slice(0, 2), id);
    for (const path of [plain, `${plain}.zst`]) {
      try {
        await access(path);
        n++;
        break;
      } catch {
        /* not in this form */
      }
    }
  }
  return n;
}

/** The copy job's saved progress as recorded in the source region's database (read while the server is down). */
export function recordedCopyProgress(dataDir: string, region: string, destSnapshotId: string): { percent: number; confirmedBytes: number } | null {
  const db = new Database(join(dataDir, region, 'meta.db'));
  try {
    const rows = db.prepare("SELECT payload, progress FROM jobs WHERE kind = 'snapshot.copy'").all() as Array<{ payload: string; progress: string | null }>;
    const row = rows.find((r) => JSON.parse(r.payload).destSnapshotId === destSnapshotId);
    return row?.progress ? JSON.parse(row.progress) : null;
  } finally {
    db.close();
  }
}

/** `count` distinct chunks of fresh random bytes, then `repeats` positions repeating the first ones. */
export function freshChunks(count: number, repeats: number, random: (n: number) => Buffer): { chunks: Buffer[]; distinct: Set<string> } {
  const distinctChunks = Array.from({ length: count }, () => random(MiB));
  const chunks = [...distinctChunks, ...Array.from({ length: repeats }, (_, i) => distinctChunks[i % count]!)];
  return { chunks, distinct: new Set(distinctChunks.map(sha)) };
}
