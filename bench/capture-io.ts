/**
 * The I/O of a full capture, and nothing else: what a 1 GiB snapshot's time is bounded by on this
 * disk (docs/benchmarks.md, "the 1 GiB capture against the disk's own limits").
 *
 * A random image of --size MiB (default 768: the non-zero part of the 1 GiB mixed image) is read
 * in 4 MiB direct reads and written as 1 MiB direct chunk files, fsynced, renamed into 256 fan-out
 * directories and the directories fsynced per 64 chunks: the chunk store's pattern, without hashing
 * or any JavaScript around it. Variants, each run alternating with the others, caches dropped:
 *
 *   overlap   3 reads in flight, each buffer's 4 chunks written as soon as it lands (the capture)
 *   phased    read 64 MiB (3 in flight), then write those 64 MiB (8 in flight), never both at once
 *   fewer     overlap, writing a third of the chunks as 16 KiB (what compression at rest would
 *             write of the mixed image, whose text quarter compresses ~89x)
 *   packs     overlap, the chunks written into one 64 MiB file per 64 chunks (one fsync each)
 *
 *   node --import tsx bench/capture-io.ts [--runs 6] [--size 768] [--variants overlap,phased,fewer,packs]
 *
 * Needs root (it drops the page cache) and O_DIRECT on the bench directory's file system.
 */
import { constants as fsConstants } from 'node:fs';
import * as fsp from 'node:fs/promises';
import { join } from 'node:path';
import { alignedSharedMemory } from '../src/lib/aligned-memory.ts';
import { closeFd, fsyncFd, fsyncPath, O_DIRECT, openFd, readFd, writeFd } from '../src/lib/raw-fd.ts';
import { argValue, benchDir, dropCaches, MiB, median, randomImage } from './common.ts';

type Variant = 'overlap' | 'phased' | 'fewer' | 'packs';

const RUNS = Math.max(1, Number(argValue('runs', '6')));
const SIZE_MIB = Math.max(64, Math.floor(Number(argValue('size', '768')) / 64) * 64);
const VARIANTS = argValue('variants', 'overlap,phased,fewer,packs').split(',') as Variant[];
const READ = 4 * MiB;
const BATCH = 64;
const PHASE_CHUNKS = 64;

/** Where the chunks of one run go: chunk files (with the store's durability steps) or pack files. */
class ChunkSink {
  private unsynced: number[] = [];
  private durability: Promise<void> = Promise.resolve();
  private readonly packs = new Map<number, { fd: Promise<number>; left: number }>();

  constructor(
    private readonly dir: string,
    private readonly packed: boolean,
  ) {}

  async write(index: number, bytes: Buffer): Promise<void> {
    if (this.packed) return this.writeToPack(index, bytes);
    const tmp = join(this.dir, '.tmp', `c${index}`);
    const fd = await openFd(tmp, fsConstants.O_WRONLY | fsConstants.O_CREAT | fsConstants.O_EXCL | O_DIRECT);
    await writeFd(fd, bytes, 0, bytes.length, 0);
    closeFd(fd);
    this.unsynced.push(index);
    if (this.unsynced.length >= BATCH) this.syncBatch();
  }

  /** Waits for every batch sync; syncs what is left. */
  async finish(): Promise<void> {
    this.syncBatch();
    await this.durability;
  }

  private syncBatch(): void {
    const batch = this.unsynced;
    this.unsynced = [];
    if (batch.length === 0) return;
    this.durability = this.durability.then(async () => {
      const dirs = new Set<string>();
      await Promise.all(batch.map(async (index) => {
        const tmp = join(this.dir, '.tmp', `c${index}`);
        await fsyncPath(tmp);
        const fanOut = (index % 256).toString(16).padStart(2, '0');
        await fsp.rename(tmp, join(this.dir, fanOut, `c${index}`));
        dirs.add(fanOut);
      }));
      await Promise.all([...dirs].map((d) => fsyncPath(join(this.dir, d))));
    });
  }

  private async writeToPack(index: number, bytes: Buffer): Promise<void> {
    const number = Math.floor(index / BATCH);
    let pack = this.packs.get(number);
    if (!pack) {
      pack = { fd: openFd(join(this.dir, '.tmp', `p${number}`), fsConstants.O_WRONLY | fsConstants.O_CREAT | O_DIRECT), left: BATCH };
      this.packs.set(number, pack);
    }
    const fd = await pack.fd;
    await writeFd(fd, bytes, 0, bytes.length, (index % BATCH) * MiB);
    if (--pack.left > 0) return;
    this.durability = this.durability.then(async () => {
      await fsyncFd(fd);
      closeFd(fd);
      await fsp.rename(join(this.dir, '.tmp', `p${number}`), join(this.dir, '00', `p${number}`));
      await fsyncPath(join(this.dir, '00'));
    });
  }
}


async function freshStoreDir(dir: string): Promise<void> {
  await fsp.rm(dir, { recursive: true, force: true });
  await fsp.mkdir(join(dir, '.tmp'), { recursive: true });
  for (let i = 0; i < 256; i++) await fsp.mkdir(join(dir, i.toString(16).padStart(2, '0')));
}

async function runOnce(variant: Variant, imagePath: string, dir: string, memory: Buffer): Promise<number> {
  await freshStoreDir(dir);
  await dropCaches();
  const chunks = SIZE_MIB;
  const sink = new ChunkSink(dir, variant === 'packs');
  const chunkBytes = (index: number, buffer: Buffer, at: number): Buffer =>
    // A third of the chunks written as 16 KiB: the compressed text quarter of the mixed image.
    variant === 'fewer' && index % 3 === 2 ? buffer.subarray(at, at + 16384) : buffer.subarray(at, at + MiB);
  const image = await openFd(imagePath, fsConstants.O_RDONLY | O_DIRECT);
  const start = performance.now();
  try {
    if (variant === 'phased') {
      for (let base = 0; base < chunks; base += PHASE_CHUNKS) {
        const reads = PHASE_CHUNKS / 4;
        let nextRead = 0;
        await Promise.all(Array.from({ length: 3 }, async () => {
          while (nextRead < reads) {
            const k = nextRead++;
            await readFd(image, memory, k * READ, READ, base * MiB + k * READ);
          }
        }));
        let nextWrite = 0;
        await Promise.all(Array.from({ length: 8 }, async () => {
          while (nextWrite < PHASE_CHUNKS) {
            const k = nextWrite++;
            await sink.write(base + k, chunkBytes(base + k, memory, k * MiB));
          }
        }));
      }
    } else {
      let next = 0;
      await Promise.all(Array.from({ length: 3 }, async (_, slot) => {
        const buffer = memory.subarray(slot * READ, (slot + 1) * READ);
        while (next < chunks) {
          const first = next;
          next += 4;
          await readFd(image, buffer, 0, READ, first * MiB);
          await Promise.all([0, 1, 2, 3].map((k) => sink.write(first + k, chunkBytes(first + k, buffer, k * MiB))));
        }
      }));
    }
    await sink.finish();
  } finally {
    closeFd(image);
  }
  return performance.now() - start;
}

const dir = await benchDir('capture-io');
const image = await randomImage(dir, SIZE_MIB * MiB, 'capture-io');
const memory = Buffer.from(alignedSharedMemory(PHASE_CHUNKS * MiB), 0, PHASE_CHUNKS * MiB);
const times = new Map<Variant, number[]>(VARIANTS.map((v) => [v, []]));
for (let r = 0; r < RUNS; r++) {
  for (const variant of VARIANTS) times.get(variant)!.push(await runOnce(variant, image.path, join(dir, 'store'), memory));
}
console.log(`capture I/O of ${SIZE_MIB} MiB, ${RUNS} alternating runs each (ms):`);
for (const [variant, ms] of times) {
  const sorted = [...ms].sort((a, b) => a - b).map((x) => x.toFixed(0));
  console.log(`  ${variant.padEnd(8)} median ${median(ms).toFixed(0)}  (${sorted.join(', ')})`);
}
await fsp.rm(join(dir, 'store'), { recursive: true, force: true }); // the image stays: bench images are cached
