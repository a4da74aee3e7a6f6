import { ApiError } from '../domain/errors.ts';

export type LeaseHolder = 'block-client' | 'http-write' | 'maintenance';

/**
 * Who may change a disk's bytes right now: an NBD writer, HTTP data writes (any number at once: a
 * client imports with several requests in flight), or a maintenance job such as rollback. Kinds
 * exclude each other. In memory: holders all live in this process, and a crash ends them all.
 */
export class DiskLeases {
  private readonly holders = new Map<string, { who: LeaseHolder; count: number }>();

  holder(volumeId: string): LeaseHolder | null {
    return this.holders.get(volumeId)?.who ?? null;
  }

  /** Takes the lease or throws OperationDenied naming who holds it. Returns the release function. */
  acquire(volumeId: string, who: LeaseHolder): () => void {
    const current = this.holders.get(volumeId);
    if (current && !(current.who === 'http-write' && who === 'http-write')) {
      throw new ApiError('OperationDenied', `The disk ${volumeId} is busy (${describe(current.who)}).`);
    }
    if (current) current.count++;
    else this.holders.set(volumeId, { who, count: 1 });
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const held = this.holders.get(volumeId);
      if (held && held.who === who && --held.count === 0) this.holders.delete(volumeId);
    };
  }
}

function describe(who: LeaseHolder): string {
  return who === 'block-client' ? 'a block client has it open' : who === 'http-write' ? 'a data write is in progress' : 'a maintenance operation is running';
}
