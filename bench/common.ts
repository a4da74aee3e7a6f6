/** Shared pieces of the benchmarks: timing, peers run as child processes, a mixed 1 GiB image. */
import { spawn } from 'node:child_process';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';

export const MiB = 1 << 20;
export const GiB = 1024 * MiB;
export const BENCH_DIR = path.resolve('.bench-data');

export async function benchDir(name: string): Promise<string> {
  const dir = path.join(BENCH_DIR, name);
  await mkdir(dir, { recursive: true });
  return dir;
}

export async function timed<T>(fn: () => Promise<T>): Promise<{ ms: number; value: T }> {
  const start = process.hrtime.bigint();
  const value = await fn();
  return { ms: Number(process.hrtime.bigint() - start) / 1e6, value };
}

export function run(cmd: string, args: string[]): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    child.stderr.on('data', (d) => (err += d));
    child.once('error', reject);
    child.once('exit', (code) => (code === 0 ? resolve() : reject(new Error(`${cmd} ${args.join(' ')} exited ${code}: ${err}`))));
  });
}

/** Drops clean pages so a read measures the disk, not the page cache (best effort: needs root). */
export async function dropCaches(): Promise<void> {
  await run('sh', ['-c', 'sync; echo 3 > /proc/sys/vm/drop_caches']).catch(() => undefined);
}

export const mibps = (bytes: number, ms: number): string => `${((bytes / MiB) / (ms / 1000)).toFixed(0)} MiB/s`;
export const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
