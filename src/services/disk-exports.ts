/**
 * Disks as NBD exports (export name = disk id). Opening an export takes the disk's lease as its
 * block client and turns it `InUse`; the release (the client disconnects, or is cut off) turns it
 * `Available` again. One client at a time: NBD gives no way to tell a reader from a writer before
 * the first write, so a second client is refused with the reason in the protocol's error reply.
 *
 * Account scoping: `forAccount(id)` is what a client authenticated with that account's TLS
 * pre-shared key sees (blockdev/nbd/tls.ts): its list shows only that account's disks, and another
 * account's disk id is refused exactly like a missing one ('unknown', before any lease or state is
 * looked at, so neither "busy" nor "not Available" can leak that it exists). The unscoped provider
 * (every disk of the region) is what a plaintext client gets where TLS is `off` or `on`.
 */
import { ExportUnavailableError, type ExportDescription, type ExportProvider, type OpenedExport } from '../blockdev/block-target.ts';
import type { DiskHandle } from '../blockdev/disk-manager.ts';
import { GiB } from '../domain/volume.ts';
import { isApiError } from '../domain/errors.ts';
import type { Region } from './region-context.ts';

export class DiskExports implements ExportProvider {
  /** `accountId`: only that account's disks; undefined: every disk of the region. */
  constructor(
    private readonly region: Region,
    private readonly accountId?: string,
  ) {}

  /** The exports a client authenticated as `accountId` may reach. */
  forAccount(accountId: string): DiskExports {
    return new DiskExports(this.region, accountId);
  }

  async list(): Promise<Array<{ name: string; description?: string }>> {
    const volumes = (await this.region.meta.volumes.listByStatus(['Available', 'InUse'])).filter((v) => this.accountId === undefined || v.accountId === this.accountId);
    return volumes.map((v) => ({ name: v.id, description: v.name || `${v.diskSizeInGB} GiB disk` }));
  }

  /** The disk named `name`, if this provider may reach it (another account's disk reads as missing). */
  private async find(name: string) {
    return this.accountId === undefined ? this.region.meta.volumes.getAny(name) : this.region.meta.volumes.get(this.accountId, name);
  }

  async describe(name: string): Promise<ExportDescription> {
    const volume = await this.find(name);
    if (!volume) throw new ExportUnavailableError(`no disk ${name} in region ${this.region.name}`, 'unknown');
    return { size: volume.diskSizeInGB * GiB, readOnly: false, description: volume.name || `${volume.diskSizeInGB} GiB disk` };
  }

  async open(name: string): Promise<OpenedExport> {
    const volume = await this.find(name);
    if (!volume) throw new ExportUnavailableError(`no disk ${name} in region ${this.region.name}`, 'unknown');
    let release: () => void;
    try {
      release = this.region.leases.acquire(name, 'block-client');
    } catch (e) {
      if (isApiError(e)) throw new ExportUnavailableError(e.message, 'busy');
      throw e;
    }
    let held: DiskHandle | null = null;
    try {
      const marked = await this.region.meta.volumes.update(name, { status: 'InUse' }, ['Available']);
      if (!marked) throw new ExportUnavailableError(`disk ${name} is ${volume.status}; a block client needs it Available`, 'state');
      // Held for the whole connection: the disk is not closed while the client can use it.
      held = await this.region.disks.acquire(name);
      const disk = held.disk;
      const heldDisk = held;
      this.region.log('info', 'block client attached', { volumeId: name });
      let released = false;
      return {
        target: disk,
        readOnly: false,
        release: async () => {
          if (released) return;
          released = true;
          try {
            await this.region.meta.volumes.update(name, { status: 'Available' }, ['InUse']);
          } finally {
            heldDisk.release();
            release();
            this.region.log('info', 'block client detached', { volumeId: name });
          }
        },
      };
    } catch (e) {
      held?.release();
      release();
      throw e;
    }
  }
}
