/** Statement builders shared by the PostgreSQL repositories (numbered `$n` parameters). */
import type { ListOptions, Page } from '../metadata-store.ts';
import type { Queryable } from './connection.ts';

/**
 * `a = $k, b = $k+1 ...` from a patch whose keys map to column names; `values` continue the
 * caller's parameter list. Arrays (tags) are stored as JSON text, like every JSON value here.
 */
export function setClause(patch: Record<string, unknown>, columns: Record<string, string>, values: unknown[]): string {
  const parts: string[] = [];
  for (const [key, value] of Object.entries(patch)) {
    const column = columns[key];
    if (!column) throw new Error(`unknown field ${key}`);
    if (value === undefined) continue;
    values.push(Array.isArray(value) ? JSON.stringify(value) : value);
    parts.push(`${column} = $${values.length}`);
  }
  return parts.join(', ');
}

/**
 * `UPDATE table SET <patch> WHERE id AND not deleted [AND status = ANY(...)] RETURNING *`: the
 * updated row, or null when none matched. One statement, so the guard and the write are atomic
 * across processes (a concurrent writer of the row is waited for and the guard re-checked on its
 * result). An empty patch returns the row when it exists.
 */
export async function guardedUpdate<R>(
  db: Queryable,
  table: 'volumes' | 'snapshots',
  id: string,
  patch: Record<string, unknown>,
  columns: Record<string, string>,
  fromStatuses?: readonly string[],
): Promise<R | null> {
  const values: unknown[] = [id];
  const set = setClause(patch, columns, values);
  let guard = '';
  if (fromStatuses) {
    values.push([...fromStatuses]);
    guard = ` AND status = ANY($${values.length})`;
  }
  const sql = set === ''
    ? `SELECT * FROM ${table} WHERE id = $1 AND deleted_at IS NULL${guard}`
    : `UPDATE ${table} SET ${set} WHERE id = $1 AND deleted_at IS NULL${guard} RETURNING *`;
  const { rows } = await db.query(sql, values);
  return (rows[0] as R | undefined) ?? null;
}

/**
 * Marker paging in creation order, as `sqlite/paging.ts`: the marker is the id of the first item
 * of the page (inclusive); a marker naming a deleted row keeps its place; an unknown marker yields
 * an empty page. One statement (the marker's seq is a subquery).
 * Concurrent inserts take their seq when they run but become visible when they commit, so a page
 * read meanwhile may miss a row with a lower seq: it appeared after the listing began.
 */
export async function pageBySeq<R extends { id: string }>(
  db: Queryable,
  table: 'volumes' | 'snapshots',
  accountId: string,
  where: string,
  values: unknown[],
  page: ListOptions,
): Promise<Page<R>> {
  const params = [...values];
  let from = '0';
  if (page.marker !== null) {
    // The marker is looked up in the caller's account only: another account's id answers exactly
    // like an unknown one, so a marker cannot tell that someone else's resource exists.
    params.push(page.marker, accountId);
    from = `(SELECT seq FROM ${table} WHERE id = $${params.length - 1} AND account_id = $${params.length})`;
  }
  params.push(page.maxKeys + 1);
  const { rows } = await db.query(
    `SELECT * FROM ${table} WHERE ${where} AND deleted_at IS NULL AND seq >= ${from} ORDER BY seq LIMIT $${params.length}`,
    params,
  );
  const more = rows.length > page.maxKeys;
  return { items: (more ? rows.slice(0, page.maxKeys) : rows) as R[], nextMarker: more ? (rows[page.maxKeys] as R).id : null };
}
