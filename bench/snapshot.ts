/**
 * Snapshot create throughput on a 1 GiB disk, beside `cp` of the same image (with and without a
 * final sync, since a snapshot is durable when it turns Available), and the cost of an incremental
 * snapshot after a 1% change.
 *
 *   node --import tsx bench/snapshot.ts [--runs=3]
 */
import { randomBytes } from 'node:crypto';
import { rm } from 'node:fs/promises';
import path from 'node:path';
import { DiskManager } from '../src/blockdev/disk-manager.ts';
import { LocalDirChunkStore } from '../src/chunkstore/local-dir-store.ts';
import { MetricsRegistry } from '../src/lib/metrics.ts';
import { Sha256Pool } from '../src/lib/sha256-pool.ts';
import { captureDisk } from '../src/repository/capture.ts';
import { ChunkRepository, RepositoryMetrics } from '../src/repository/chunk-repository.ts';
import { makeImage } from '../test/helpers/test-image.ts';
import { GiB, MiB, benchDir, dropCaches, median, mibps, run, timed } from './common.ts';

const RUNS = Number(process.argv.find((a) => a.startsWith('--runs='))?.split('=')[1] ?? 3);

export async function snapshotBench(): Promise<string[]> {
  const dir = await benchDir('snapshot');
  const image = await makeImage(path.join(dir, 'image.raw'), GiB, 'bench');
  const lines: string[] = [];
  const cp: number[] = [];
  const cpSync: number[] = [];
  const full: number[] = [];
  const incremental: number[] = [];
  const pool = new Sha256Pool();
  try {
    for (let r = 0; r < RUNS; r++) {
      await rm(path.join(dir, 'copy.raw'), { force: true });
      await dropCaches();
      cp.push((await timed(() => run('cp', [image.path, path.join(dir, 'copy.raw')]))).ms);
      await rm(path.join(dir, 'copy.raw'), { force: true });
      await dropCaches();
      cpSync.push((await timed(() => run('sh', ['-c', `cp '${image.path}' '${path.join(dir, 'copy.raw')}' && sync`]))).ms);

      // A disk holding the image, and an empty repository: the full first snapshot.
      const root = path.join(dir, `run-${r}`);
      await rm(root, { recursive: true, force: true });
      const disks = new DiskManager(path.join(root, 'disks'), MiB);
      await disks.init();
      await disks.create('v-bench', GiB);
      const { disk } = await disks.acquire('v-bench'); // closeAll below closes it
      const { open } = await import('node:fs/promises');
      const fh = await open(image.path, 'r');
      const buf = Buffer.alloc(4 * MiB);
      for (let at = 0; at < GiB; at += buf.length) {
        await fh.read(buf, 0, buf.length, at);
        await disk.write(at, buf, false);
      }
      await fh.close();
      await disk.flush();
      const hasher = { hash: (b: Buffer) => pool.hash(b) };
      const repo = new ChunkRepository(
        await LocalDirChunkStore.open(path.join(root, 'chunks'), { hasher: hasher.hash }),
        await LocalDirChunkStore.open(path.join(root, 'manifests'), { hasher: hasher.hash }),
        hasher, MiB, new RepositoryMetrics(new MetricsRegistry()),
      );
      await dropCaches();
      const first = await timed(() => captureDisk(repo, disk, { manifest: null, generation: 0 }));
      full.push(first.ms);
      // 1% of the disk rewritten in ten scattered 1 MiB writes, then the next snapshot.
      for (let i = 0; i < 10; i++) await disk.write((i * 97 + 5) * MiB, randomBytes(MiB), false);
      const next = await timed(() => captureDisk(repo, disk, { manifest: first.value.manifest, generation: first.value.generation }));
      incremental.push(next.ms);
      await disks.closeAll();
      await rm(root, { recursive: true, force: true });
    }
  } finally {
    await pool.close();
  }
  const size = image.size;
  lines.push(`image: 1 GiB, ${(image.dataBytes / MiB).toFixed(0)} MiB of it non-zero (random and text), median of ${RUNS} runs`);
  lines.push(`cp (page cache only)           ${median(cp).toFixed(0)} ms  ${mibps(size, median(cp))}`);
  lines.push(`cp + sync (durable)            ${median(cpSync).toFixed(0)} ms  ${mibps(size, median(cpSync))}`);
  lines.push(`snapshot create, first (full)  ${median(full).toFixed(0)} ms  ${mibps(size, median(full))}  (ratio to cp+sync: ${(median(cpSync) / median(full)).toFixed(2)})`);
  lines.push(`snapshot create after 1% change ${median(incremental).toFixed(0)} ms  (${(median(incremental) / median(full) * 100).toFixed(1)}% of the full snapshot's time)`);
  return lines;
}

if (import.meta.url === `file://${process.argv[1]}`) {
  for (const l of await snapshotBench()) console.log(l);
}
