import { createHash } from 'node:crypto';
import { ApiError } from '../domain/errors.ts';
import type { IdempotencyRepository } from '../metadata/metadata-store.ts';
import type { RequestContext } from './request-context.ts';

/** Remembered at least this long after last use (bcc-api.md §1: at least 24 h). */
export const CLIENT_TOKEN_TTL_MS = 48 * 3600 * 1000;

/** Validates a clientToken: optional; at most 64 printable ASCII characters. */
export function checkClientToken(token: string | undefined | null): string | null {
  if (token === undefined || token === null || token === '') return null;
  if (token.length > 64 || !/^[\x21-\x7e]+$/.test(token)) {
    throw new ApiError('InappropriateJSON', 'clientToken must be at most 64 printable ASCII characters.');
  }
  return token;
}

/**
 * Runs a create operation at most once per (account, region, operation, clientToken).
 *
 * The result (the ids the caller will be told) is planned and persisted before any work starts;
 * `perform` then creates the resources under exactly those ids and must itself be idempotent (insert
 * if absent, enqueue by key). A crash between the two leaves an incomplete record; the retry runs
 * `perform` again with the same plan and so finishes the work instead of starting new work. A retry
 * of a completed record does nothing and answers the same result.
 *
 * Rejected alternative: one database transaction across the record and the resources. It would tie
 * every store to one transaction scope, which the per-aggregate interfaces deliberately avoid.
 */
export async function withClientToken<R>(
  repo: IdempotencyRepository,
  ctx: RequestContext,
  operation: string,
  token: string | null,
  params: unknown,
  plan: () => R,
  perform: (planned: R) => Promise<void>,
): Promise<R> {
  if (token === null) {
    const planned = plan();
    await perform(planned);
    return planned;
  }
  const scope = `${ctx.accountId}/${ctx.region}/${operation}`;
  const paramsHash = createHash('sha256').update(stableJson(params)).digest('hex');
  const now = Date.now();
  let record = await repo.get(scope, token);
  if (!record) {
    const candidate = { scope, token, paramsHash, result: plan() as unknown, completed: false, lastUsedAt: now };
    if (await repo.insertIfAbsent(candidate)) record = candidate;
    else record = await repo.get(scope, token);
    if (!record) throw new Error('idempotency record vanished');
  }
  if (record.paramsHash !== paramsHash) throw new ApiError('IdempotentParameterMismatch');
  await repo.touch(scope, token, now);
  const planned = record.result as R;
  if (!record.completed) {
    await perform(planned);
    await repo.markCompleted(scope, token);
  }
  return planned;
}

/** JSON with sorted keys, so that `{a,b}` and `{b,a}` are the same parameters. */
export function stableJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(stableJson).join(',')}]`;
  if (value && typeof value === 'object') {
    return `{${Object.keys(value)
      .sort()
      .filter((k) => (value as Record<string, unknown>)[k] !== undefined)
      .map((k) => `${JSON.stringify(k)}:${stableJson((value as Record<string, unknown>)[k])}`)
      .join(',')}}`;
  }
  return JSON.stringify(value ?? null);
}
