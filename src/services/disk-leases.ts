import { ApiError } from '../domain/errors.ts';

export type LeaseHolder = 'block-client' | 'http-write' | 'maintenance';

/**
 * Who may change a disk's bytes right now: one holder at a time (an NBD writer, an HTTP data write,
 * or a maintenance job such as rollback). In memory: these are all of this process, and a crash
 * ends them all.
 */
export class DiskLeases {
  private readonly holders = new Map<string, LeaseHolder>();

  holder(volumeId: string): LeaseHolder | null {
    return this.holders.get(volumeId) ?? null;
  }

  /** Takes the lease or throws OperationDenied naming who holds it. Returns the release function. */
  acquire(volumeId: string, who: LeaseHolder): () => void {
    const current = this.holders.get(volumeId);
    if (current) throw new ApiError('OperationDenied', `The disk ${volumeId} is busy (${describe(current)}).`);
    this.holders.set(volumeId, who);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      if (this.holders.get(volumeId) === who) this.holders.delete(volumeId);
    };
  }
}

function describe(who: LeaseHolder): string {
  return who === 'block-client' ? 'a block client has it open' : who === 'http-write' ? 'a data write is in progress' : 'a maintenance operation is running';
}
