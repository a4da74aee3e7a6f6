import type { ListOptions } from '../metadata-store.ts';
import type { Db } from './database.ts';

/**
 * Marker paging in creation order. The marker is the id of the first item of the page (inclusive,
 * bcc-api.md §1); rows are ordered by their insertion sequence. A marker naming a deleted row still
 * works, because deleted rows keep their place; an unknown marker yields an empty page. A marker is
 * looked up among the caller's own rows only (`params.accountId`): another account's id behaves
 * exactly like an unknown one, so a marker cannot reveal that someone else's resource exists.
 */
export function pageBySeq<R extends { id: string }>(
  db: Db,
  table: 'volumes' | 'snapshots',
  where: string,
  params: Record<string, unknown>,
  page: ListOptions,
): { items: R[]; nextMarker: string | null } {
  if (typeof params.accountId !== 'string') throw new Error('pageBySeq: params.accountId is required');
  let from = 0;
  if (page.marker !== null) {
    const seq = db.prepare(`SELECT seq FROM ${table} WHERE id = ? AND account_id = ?`).pluck().get(page.marker, params.accountId) as number | undefined;
    if (seq === undefined) return { items: [], nextMarker: null };
    from = seq;
  }
  const rows = db
    .prepare(`SELECT * FROM ${table} WHERE ${where} AND deleted_at IS NULL AND seq >= @from ORDER BY seq LIMIT @limit`)
    .all({ ...params, from, limit: page.maxKeys + 1 }) as R[];
  const more = rows.length > page.maxKeys;
  return { items: more ? rows.slice(0, page.maxKeys) : rows, nextMarker: more ? rows[page.maxKeys]!.id : null };
}
