/**
 * Fixtures for replication tests on in-process regions: source snapshots built straight into a
 * region's stores (no disk writes, no capture: any size of manifest, any pattern of repeats), the
 * manifest plan of the copy protocol driven by hand, and the sha256 of a disk restored from a copy.
 */
import { createHash, randomBytes } from 'node:crypto';
import assert from 'node:assert/strict';
import { BceClient } from '../../src/lib/bce-client.ts';
import { Manifest } from '../../src/repository/manifest.ts';
import type { Region } from '../../src/services/region-context.ts';
import { ALICE } from './region-harness.ts';
import type { LiveRegion, RegionSet } from './region-set.ts';
import type { Keys } from './signed-request.ts';

export const MiB = 1 << 20;
export const GiB = 1024 ** 3;
export const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

export interface SyntheticSnapshot {
  snapshotId: string;
  manifestId: string;
  manifestBytes: Buffer;
  /** Distinct non-zero chunk ids, in first-seen order. */
  distinct: string[];
}

/**
 * An Available snapshot of Alice's in `region` whose chunk i is `chunks[i]` (null: zero), stored as
 * a capture would store it (chunks durable, then the manifest, then the record). `repeatAll`
 * repeats the given chunks that many times in a row along the disk.
 */
export async function syntheticSnapshot(region: Region, chunks: Array<Buffer | null>, opts: { sizeInGB?: number; name?: string } = {}): Promise<SyntheticSnapshot> {
  const sizeInGB = opts.sizeInGB ?? 1;
  const repo = region.repo;
  const manifest = Manifest.empty(sizeInGB * GiB, repo.chunkSize);
  const writer = repo.chunks.writer();
  const distinct: string[] = [];
  const seen = new Set<string>();
  for (const [i, c] of chunks.entries()) {
    if (!c) continue;
    const id = sha(c);
    if (!seen.has(id)) {
      seen.add(id);
      distinct.push(id);
      await writer.put(id, c);
    }
    manifest.set(i, id);
  }
  await writer.sync();
  return publishManifest(region, manifest, sizeInGB, opts.name ?? 'synthetic', distinct);
}

/** Stores `manifest` (or its encoding; the caller stored its chunks) and an Available snapshot naming it. */
export async function publishManifest(region: Region, manifest: Manifest | Buffer, sizeInGB: number, name: string, distinct: string[]): Promise<SyntheticSnapshot> {
  const manifestBytes = Buffer.isBuffer(manifest) ? manifest : manifest.encode();
  const manifestId = sha(manifestBytes);
  const mw = region.repo.manifests.writer();
  await mw.putHashed(manifestId, manifestBytes);
  await mw.sync();
  const snapshotId = `s-${randomBytes(4).toString('hex')}`;
  await region.meta.snapshots.insertIfAbsent({
    id: snapshotId, accountId: ALICE.accountId, name, desc: '', volumeId: 'v-synthetc', sizeInGB, createTime: Date.now(),
    status: 'Available', createMethod: 'MANUAL', progress: 100, storageType: 'hp1', retentionInDays: null, tags: [],
    sourceRegion: null, sourceSnapshotId: null, manifestId, lastError: null,
  });
  return { snapshotId, manifestId, manifestBytes, distinct };
}

/** `n` distinct chunks of fresh random bytes. */
export const randomChunks = (n: number, size = MiB): Buffer[] => Array.from({ length: n }, () => randomBytes(size));

/** Starts a copy of `snapshotId` from `source` to `dest`; answers the destination snapshot id. */
export async function startCopy(source: LiveRegion, snapshotId: string, dest: string): Promise<string> {
  const res = await source.call('PUT', `/v2/snapshot/remote_copy/${snapshotId}`, { destRegionInfos: [{ destRegion: dest }] });
  assert.equal(res.status, 200, JSON.stringify(res.json));
  return res.json.result[0].snapshotId;
}

/** The source's view of one copy (our GET remote_copy extension). */
export async function copyStatus(source: LiveRegion, snapshotId: string, copyId: string): Promise<any> {
  const res = await source.call('GET', `/v2/snapshot/remote_copy/${snapshotId}`);
  assert.equal(res.status, 200, JSON.stringify(res.json));
  return res.json.copies.find((c: any) => c.snapshotId === copyId);
}

export async function snapshotAt(r: LiveRegion, id: string): Promise<any> {
  return (await r.call('GET', `/v2/snapshot/${id}`)).json?.snapshot;
}

/** Waits until the copy is Available at `dest` (fails fast if it fails). */
export async function waitAvailable(set: RegionSet, dest: LiveRegion, copyId: string, ms = 60_000): Promise<any> {
  return set.waitFor(async () => {
    const s = await snapshotAt(dest, copyId);
    if (s?.status === 'CreatedFailed') throw new Error(`copy ${copyId} failed: ${JSON.stringify(s)}`);
    return s?.status === 'Available' ? s : null;
  }, ms);
}

/** What a disk-content check needs from a region: a way to restore, list extents and read ranges. */
export interface DiskReader {
  /** Creates a disk from the snapshot, waits until it is Available, answers its id. */
  restore(snapshotId: string): Promise<string>;
  extents(volumeId: string): Promise<Array<{ offset: number; length: number; hole: boolean; zero: boolean }>>;
  read(volumeId: string, start: number, length: number): Promise<Buffer>;
}

/** A DiskReader over a signed HTTP client (Alice's keys unless given): spawned servers or listening in-process regions. */
export function httpDiskReader(url: string, poll: (check: () => Promise<boolean>) => Promise<unknown>, keys: Keys = { ak: ALICE.accessKeyId, sk: ALICE.secretAccessKey }): DiskReader & { close(): Promise<void> } {
  const client = new BceClient(url, { accessKeyId: keys.ak, secretAccessKey: keys.sk });
  return {
    async restore(snapshotId) {
      const { volumeIds } = await client.json<{ volumeIds: string[] }>({ method: 'POST', path: '/v2/volume', json: { snapshotId } });
      const id = volumeIds[0]!;
      await poll(async () => {
        const v = (await client.json<{ volume: { status: string } }>({ method: 'GET', path: `/v2/volume/${id}` })).volume;
        if (v.status === 'Error') throw new Error(`restore of ${snapshotId} failed`);
        return v.status === 'Available';
      });
      return id;
    },
    async extents(volumeId) {
      return (await client.json<{ extents: any[] }>({ method: 'GET', path: `/v2/volume/${volumeId}/extents` })).extents;
    },
    async read(volumeId, start, length) {
      const res = await client.send({ method: 'GET', path: `/v2/volume/${volumeId}/data`, headers: { range: `bytes=${start}-${start + length - 1}` } });
      return Buffer.from(await res.body.arrayBuffer());
    },
    close: () => client.close(),
  };
}

/**
 * Restores `snapshotId` and checks the disk is bit-identical to `chunks` laid out from offset 0
 * (null or absent: zeros): every expected chunk is read back and compared, and every range the disk
 * reports as holding data is read and must match too (so nothing lies where zeros belong).
 */
export async function assertRestoredIdentical(reader: DiskReader, snapshotId: string, chunks: Array<Buffer | null>, chunkSize: number): Promise<void> {
  const volumeId = await reader.restore(snapshotId);
  const expected = (at: number, length: number): Buffer => {
    const out = Buffer.alloc(length);
    for (let off = 0; off < length; ) {
      const i = Math.floor((at + off) / chunkSize);
      const within = (at + off) % chunkSize;
      const n = Math.min(chunkSize - within, length - off);
      chunks[i]?.copy(out, off, within, within + n);
      off += n;
    }
    return out;
  };
  const data = (await reader.extents(volumeId)).filter((e) => !e.hole && !e.zero);
  // Every expected chunk lies in a range the disk reports as data...
  for (const [i, c] of chunks.entries()) {
    if (!c) continue;
    const [start, end] = [i * chunkSize, i * chunkSize + c.length];
    let at = start;
    for (const e of data) if (e.offset <= at && e.offset + e.length > at) at = Math.min(end, e.offset + e.length);
    assert.ok(at >= end, `chunk ${i} of the restored disk is not reported as data`);
  }
  // ...and every byte of those ranges is what it must be (elsewhere the disk reads as zeros).
  for (const e of data) {
    for (let at = e.offset; at < e.offset + e.length; at += 16 * chunkSize) {
      const n = Math.min(16 * chunkSize, e.offset + e.length - at);
      assert.ok((await reader.read(volumeId, at, n)).equals(expected(at, n)), `restored bytes at ${at} (+${n}) differ`);
    }
  }
}

/** `assertRestoredIdentical` at an in-process region of a RegionSet. */
export async function assertCopyIdentical(set: RegionSet, r: LiveRegion, snapshotId: string, chunks: Array<Buffer | null>): Promise<void> {
  const reader = httpDiskReader(r.url, (check) => set.waitFor(check, 60_000));
  try {
    await assertRestoredIdentical(reader, snapshotId, chunks, r.config.chunkSize);
  } finally {
    await reader.close();
  }
}

/** Drives the manifest plan by hand: proposes `bytes` in parts of `partBytes`; answers status and body. */
export async function planManifest(dest: LiveRegion, keys: Keys, copyId: string, bytes: Buffer, partBytes: number, overrides: { manifestId?: string; size?: number } = {}): Promise<{ status: number; headers: Record<string, unknown>; json: any; parts: Buffer[] }> {
  const parts: Buffer[] = [];
  for (let at = 0; at < bytes.length; at += partBytes) parts.push(bytes.subarray(at, Math.min(bytes.length, at + partBytes)));
  const res = await dest.call('POST', `/internal/v1/snapshots/${copyId}/manifest`, {
    manifestId: overrides.manifestId ?? sha(bytes), size: overrides.size ?? bytes.length, parts: parts.map(sha),
  }, { keys });
  return { status: res.status, headers: res.headers, json: res.json, parts };
}

export async function putPart(dest: LiveRegion, keys: Keys, copyId: string, part: Buffer, id = sha(part)): Promise<{ status: number; headers: Record<string, unknown>; json: any }> {
  return dest.call('PUT', `/internal/v1/snapshots/${copyId}/manifest/parts/${id}`, part, { keys, headers: { 'content-type': 'application/octet-stream' } });
}

/** Plan, upload what is missing, plan again: the manifest is recorded (or the final answer is returned). */
export async function deliverManifest(dest: LiveRegion, keys: Keys, copyId: string, bytes: Buffer, partBytes = 32 * MiB): Promise<{ status: number; headers: Record<string, unknown>; json: any }> {
  const first = await planManifest(dest, keys, copyId, bytes, partBytes);
  if (first.status !== 200) return first;
  for (const i of first.json.missingParts) assert.equal((await putPart(dest, keys, copyId, first.parts[i]!)).status, 200);
  return planManifest(dest, keys, copyId, bytes, partBytes);
}

/** Reserves an incoming copy at `dest` as region `from` would. */
export async function reserveIncoming(dest: LiveRegion, keys: Keys, sizeInGB = 1, sourceRegion = 'bj'): Promise<string> {
  const id = `s-${randomBytes(4).toString('hex')}`;
  const res = await dest.call('PUT', `/internal/v1/snapshots/${id}`, {
    accountId: ALICE.accountId, name: 'incoming', desc: '', sizeInGB, storageType: 'hp1', sourceRegion, sourceSnapshotId: 's-source01',
  }, { keys });
  assert.equal(res.status, 200, JSON.stringify(res.json));
  return id;
}

/**
 * A chunk batch upload (src/domain/chunk-batch.ts) by hand: each part's listed id, encoding and
 * digest default to a raw chunk's; `header` replaces the whole list, `listDigest` the signed
 * x-bce-content-sha256 (by default the SHA-256 of the list, as the source sends it).
 */
export async function putChunkBatch(
  dest: LiveRegion, keys: Keys, copyId: string, parts: Array<{ data: Buffer; id?: string; encoding?: string; sha256?: string; length?: number }>,
  opts: { header?: string; listDigest?: string; headers?: Record<string, string> } = {},
): Promise<{ status: number; headers: Record<string, unknown>; json: any }> {
  const listed = opts.header ?? parts.map((p) => `${p.id ?? sha(p.data)}:${p.encoding ?? 'raw'}:${p.length ?? p.data.length}:${p.sha256 ?? sha(p.data)}`).join(',');
  return dest.call('PUT', `/internal/v1/snapshots/${copyId}/chunks`, Buffer.concat(parts.map((p) => p.data)), {
    keys, headers: { 'content-type': 'application/octet-stream', 'x-snapferry-chunk-batch': listed, 'x-bce-content-sha256': opts.listDigest ?? sha(Buffer.from(listed)), ...opts.headers },
  });
}

export async function putChunk(dest: LiveRegion, keys: Keys, copyId: string, data: Buffer, opts: { id?: string; encoding?: string } = {}): Promise<{ status: number; headers: Record<string, unknown>; json: any }> {
  return dest.call('PUT', `/internal/v1/snapshots/${copyId}/chunks/${opts.id ?? sha(data)}`, data, {
    keys, headers: { 'content-type': 'application/octet-stream', 'x-snapferry-chunk-encoding': opts.encoding ?? 'raw' },
  });
}
