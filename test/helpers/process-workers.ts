/**
 * The worker threads a test's regions share, as startServer makes them for a process (one worker
 * each: tests run side by side on two cores), and their close.
 */
import type { ProcessWorkers } from '../../src/main.ts';
import { PathProbe } from '../../src/lib/path-probe.ts';
import { Sha256Pool } from '../../src/lib/sha256-pool.ts';

export function testWorkers(): ProcessWorkers & { close(): Promise<void> } {
  const hasher = new Sha256Pool({ size: 1 });
  const probe = new PathProbe({ size: 1 });
  return { hasher, probe, close: async () => void (await Promise.all([hasher.close(), probe.close()])) };
}
