/**
 * Runs work under a GC hold (invariant GC-2: while the hold is live, garbage collection keeps every
 * blob used after its start). The hold is renewed at a third of its lease; a renewal that finds it
 * lapsed aborts the work, whose publication would then be refused anyway (GC-3).
 */
import type { Region } from './region-context.ts';

/** Lease of a GC hold. Long enough to ride out a stall of a few seconds, short enough that a hold of
 *  a dead process stops protecting recent garbage soon. */
export const GC_HOLD_LEASE_MS = 60_000;

export async function withGcHold<T>(region: Region, purpose: string, outer: AbortSignal, work: (holdId: string, signal: AbortSignal) => Promise<T>): Promise<T> {
  const hold = await region.meta.gcHolds.open(purpose, Date.now(), GC_HOLD_LEASE_MS);
  const abort = new AbortController();
  const onOuter = (): void => abort.abort(outer.reason);
  outer.addEventListener('abort', onOuter, { once: true });
  const renew = setInterval(() => {
    void region.meta.gcHolds.renew(hold.id, Date.now(), GC_HOLD_LEASE_MS).then(
      (live) => {
        if (!live) abort.abort(new Error('GC hold lapsed'));
      },
      (err) => region.log('warn', 'could not renew a GC hold', { purpose, err: String(err) }),
    );
  }, GC_HOLD_LEASE_MS / 3);
  renew.unref();
  try {
    return await work(hold.id, abort.signal);
  } finally {
    clearInterval(renew);
    outer.removeEventListener('abort', onOuter);
    await region.meta.gcHolds.close(hold.id).catch((err) => region.log('warn', 'could not close a GC hold', { purpose, err: String(err) }));
  }
}
