import { randomInt } from 'node:crypto';

const ALPHANUMERIC = 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789';

function randomSuffix(length: number): string {
  let out = '';
  for (let i = 0; i < length; i++) out += ALPHANUMERIC[randomInt(ALPHANUMERIC.length)];
  return out;
}

/** `v-` + 8 alphanumerics, as BCC writes volume ids. */
export const newVolumeId = (): string => `v-${randomSuffix(8)}`;
/** `s-` + 8 alphanumerics, as BCC writes snapshot ids. */
export const newSnapshotId = (): string => `s-${randomSuffix(8)}`;
export const newAccessKeyId = (): string => randomSuffix(32).toLowerCase();
export const newSecret = (): string => randomSuffix(32).toLowerCase();
