import { ApiError } from '../domain/errors.ts';
import { checkClientToken } from '../services/client-token.ts';

export type Query = Record<string, string | string[] | undefined>;

export function queryString(q: Query, name: string): string | null {
  const v = q[name];
  const s = Array.isArray(v) ? v[0] : v;
  return s === undefined || s === '' ? null : s;
}

/** A bare flag such as `?rollback` or `?rollback=`. */
export const queryFlag = (q: Query, name: string): boolean => q[name] !== undefined;

export function clientTokenOf(q: Query): string | null {
  return checkClientToken(queryString(q, 'clientToken'));
}

export const DEFAULT_MAX_KEYS = 1000;

/** `marker` and `maxKeys` (1..1000, default 1000; 0 means "not given"). */
export function paging(q: Query): { marker: string | null; maxKeys: number } {
  const raw = queryString(q, 'maxKeys');
  let maxKeys = DEFAULT_MAX_KEYS;
  if (raw !== null) {
    if (!/^\d+$/.test(raw)) throw new ApiError('BadRequest', 'maxKeys must be an integer from 1 to 1000.');
    const n = Number(raw);
    if (n > DEFAULT_MAX_KEYS) throw new ApiError('BadRequest', 'maxKeys must be an integer from 1 to 1000.');
    if (n > 0) maxKeys = n;
  }
  return { marker: queryString(q, 'marker'), maxKeys };
}
