/**
 * The disks of one region: `{dir}/{volumeId}.img` (sparse) and `{dir}/{volumeId}.map` (ChunkMap).
 * Opened disks are cached; one Disk object per volume, shared by the NBD server, the HTTP data
 * routes and snapshot captures, so that copy-on-write sees every writer.
 */
import { mkdir, open, readdir, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { ChunkMap } from './chunk-map.ts';
import { Disk } from './disk.ts';

export class DiskManager {
  private readonly opened = new Map<string, Promise<Disk>>();

  constructor(
    private readonly dir: string,
    readonly chunkSize: number,
  ) {}

  async init(): Promise<void> {
    await mkdir(this.dir, { recursive: true });
  }

  private imagePath(id: string): string {
    return join(this.dir, `${id}.img`);
  }

  private mapPath(id: string): string {
    return join(this.dir, `${id}.map`);
  }

  /**
   * Creates an empty (all-zero, sparse) disk of `size` bytes. Idempotent: when a disk of this id
   * exists already it is truncated back to empty, so a retried creation starts clean.
   */
  async create(id: string, size: number): Promise<void> {
    await this.forget(id);
    const fh = await open(this.imagePath(id), 'w');
    try {
      await fh.truncate(size);
      await fh.sync();
    } finally {
      await fh.close();
    }
    const map = await ChunkMap.create(this.mapPath(id), this.chunkSize, Math.ceil(size / this.chunkSize));
    await map.close();
  }

  /** Ids of every disk with files here. */
  async list(): Promise<string[]> {
    const names = await readdir(this.dir).catch(() => [] as string[]);
    return [...new Set(names.filter((n) => /\.(img|map)$/.test(n)).map((n) => n.replace(/\.(img|map)$/, '')))];
  }

  open(id: string): Promise<Disk> {
    let disk = this.opened.get(id);
    if (!disk) {
      disk = (async () => {
        const map = await ChunkMap.open(this.mapPath(id));
        const { size } = await stat(this.imagePath(id));
        return Disk.open(id, this.imagePath(id), map, size);
      })();
      disk.catch(() => this.opened.delete(id));
      this.opened.set(id, disk);
    }
    return disk;
  }

  async delete(id: string): Promise<void> {
    await this.forget(id);
    await rm(this.imagePath(id), { force: true });
    await rm(this.mapPath(id), { force: true });
  }

  async closeAll(): Promise<void> {
    const all = [...this.opened.keys()];
    await Promise.allSettled(all.map((id) => this.forget(id)));
  }

  private async forget(id: string): Promise<void> {
    const disk = this.opened.get(id);
    if (!disk) return;
    this.opened.delete(id);
    await (await disk.catch(() => null))?.close();
  }
}
