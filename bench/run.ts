/**
 * `npm run bench`: every benchmark, each beside its peer tool measured in the same run (cp, rsync,
 * nbdkit), so the ratios mean something on a shared machine. Results go to stdout; the numbers in
 * docs/benchmarks.md come from here.
 */
import { spawn } from 'node:child_process';

process.env.SNAPFERRY_LOG_LEVEL ??= 'warn';

const benches = [
  ['snapshot create vs cp', 'bench/snapshot.ts'],
  ['remote copy vs rsync', 'bench/replication.ts'],
  ['NBD (nbdcopy) vs nbdkit', 'bench/nbd.ts'],
  ['scaled region (PostgreSQL + Ceph RGW) vs embedded', 'bench/scaled.ts'],
] as const;

for (const [title, file] of benches) {
  console.log(`\n## ${title}  (${file})\n`);
  const code = await new Promise<number | null>((resolve) => {
    const child = spawn(process.execPath, ['--import', 'tsx', file, ...process.argv.slice(2)], { stdio: ['ignore', 'inherit', 'inherit'] });
    child.once('exit', resolve);
  });
  if (code !== 0) {
    console.error(`${file} failed with exit code ${code}`);
    process.exitCode = 1;
  }
}
