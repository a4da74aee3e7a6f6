/**
 * Work that one process of a region at a time should do (housekeeping: GC, expiry, keep-alives),
 * under a named lease in the metadata store, so it holds across every process sharing the region.
 *
 * The lease is renewed while the work runs (every third of its length). Losing it (a process that
 * stalled past its lease while another took over) does not stop the work midway: nothing a
 * housekeeping chore does is unsafe when two run at once (GC's deletes are guarded per blob by
 * GC-2, expiry and keep-alives are idempotent); the lock only saves the duplicate work.
 */
import type { LockRepository } from '../metadata/metadata-store.ts';

/** Runs `work` if this process gets the lock `name`; false (and nothing run) when another holds it. */
export async function runAsSingleton(locks: LockRepository, name: string, owner: string, leaseMs: number, work: () => Promise<void>): Promise<boolean> {
  if (!(await locks.tryAcquire(name, owner, Date.now(), leaseMs))) return false;
  const renew = setInterval(() => {
    locks.tryAcquire(name, owner, Date.now(), leaseMs).catch(() => undefined); // the next renewal tries again
  }, Math.max(1000, leaseMs / 3));
  renew.unref();
  try {
    await work();
  } finally {
    clearInterval(renew);
  }
  // Kept, not released: the next round of this process renews it, and the others skip until it
  // lapses (a process that stops releases it in BuiltRegion.close).
  return true;
}
