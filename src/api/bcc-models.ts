/**
 * The JSON models BCC answers with (bcc-api.md §3, §4): field names, types and the string-typed
 * numbers exactly as the SDKs parse them. Internal fields (account, manifest, errors) never leak.
 */
import type { Snapshot } from '../domain/snapshot.ts';
import { formatTimestamp } from '../lib/bce-auth.ts';
import type { VolumeView } from '../services/volume-service.ts';

export function volumeModel(v: VolumeView, region: string): Record<string, unknown> {
  return {
    id: v.id,
    name: v.name,
    diskSizeInGB: v.diskSizeInGB,
    paymentTiming: 'Postpaid',
    createTime: formatTimestamp(v.createTime),
    expireTime: null,
    status: v.status,
    type: 'Cds',
    storageType: v.storageType,
    desc: v.desc,
    zoneName: v.zoneName,
    regionId: region,
    isSystemVolume: false,
    attachments: [],
    sourceSnapshotId: v.sourceSnapshotId ?? '',
    snapshotNum: String(v.snapshotNum),
    encrypted: false,
    tags: v.tags,
  };
}

export function snapshotModel(s: Snapshot): Record<string, unknown> {
  const model: Record<string, unknown> = {
    id: s.id,
    name: s.name,
    sizeInGB: s.sizeInGB,
    createTime: formatTimestamp(s.createTime),
    status: s.status,
    createMethod: s.createMethod,
    volumeId: s.volumeId,
    desc: s.desc,
    expireTime: s.retentionInDays ? formatTimestamp(s.createTime + s.retentionInDays * 86_400_000) : null,
    encrypted: false,
    progress: String(s.progress),
  };
  if (s.sourceRegion) {
    model.sourceRegion = s.sourceRegion;
    model.sourceSnapshotId = s.sourceSnapshotId;
  }
  return model;
}

/** The list envelope: `nextMarker` is left out when the page is the last. */
export function listEnvelope(key: string, items: unknown[], marker: string | null, maxKeys: number, nextMarker: string | null): Record<string, unknown> {
  const out: Record<string, unknown> = { marker: marker ?? '', isTruncated: nextMarker !== null, maxKeys, [key]: items };
  if (nextMarker !== null) out.nextMarker = nextMarker;
  return out;
}
