/**
 * `npm run bench`: every benchmark, each beside its peer tool measured in the same run (cp, rsync,
 * nbdkit), so the ratios mean something on a shared machine; then issue 10's table of ratios against
 * its targets, and everything in bench/results.json. The numbers in docs/benchmarks.md come from here.
 *
 *   npm run bench -- [--size 1024,4096] [--runs N] [--only snapshot,replication,nbd,scaled]
 *
 * `--size` is in MiB (the mixed image's sizes, default 1024 and 4096); bench/replication.ts takes
 * GiB, so it is handed the same sizes in GiB. Other arguments go to every benchmark unchanged.
 */
import { spawn } from 'node:child_process';
import { readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { MiB, argValue, benchDir, loadAverage, machineLimits, median } from './common.ts';
import type { SnapshotBenchResults } from './snapshot.ts';

process.env.SNAPFERRY_LOG_LEVEL ??= 'warn';

const sizesMiB = argValue('size', '1024,4096').split(',').map(Number).filter((n) => n > 0);
const only = argValue('only', '').split(',').filter(Boolean);
/** Arguments for every benchmark: ours minus --size (given per benchmark) and --only. */
const passThrough = ((): string[] => {
  const out: string[] = [];
  const argv = process.argv.slice(2);
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--size' || a === '--only') i++;
    else if (!a.startsWith('--size=') && !a.startsWith('--only=')) out.push(a);
  }
  return out;
})();

const dir = await benchDir('run');
const snapshotResultsFile = path.join(dir, 'snapshot-results.json');
const benches = [
  { key: 'snapshot', title: 'snapshot create vs cp', file: 'bench/snapshot.ts', args: ['--size', sizesMiB.join(',')] },
  { key: 'replication', title: 'remote copy vs rsync', file: 'bench/replication.ts', args: ['--size', sizesMiB.map((m) => Math.max(1, Math.round(m / 1024))).join(',')] },
  { key: 'nbd', title: 'NBD (nbdcopy) vs nbdkit', file: 'bench/nbd.ts', args: [] },
  { key: 'scaled', title: 'scaled region (PostgreSQL + Ceph RGW) vs embedded', file: 'bench/scaled.ts', args: [] },
].filter((b) => only.length === 0 || only.includes(b.key));

const started = new Date().toISOString();
console.log(`load average at start: ${await loadAverage()}; measuring the machine's limits ...`);
const limits = await machineLimits(dir);
/** The two page-cache fills (MachineLimits.pageCacheFillMiBps): pages first touched, pages just freed. */
function fills(l: typeof limits): string {
  return `${l.pageCacheFillMiBps[0].toFixed(0)} MiB/s first, ${l.pageCacheFillMiBps[1].toFixed(0)} MiB/s again`;
}
console.log(`disk write (dd of 1 GiB random, conv=fsync) ${limits.diskWriteMiBps.toFixed(0)} MiB/s, past the page cache (oflag=direct) ${limits.diskDirectWriteMiBps.toFixed(0)} MiB/s; page-cache fill of 4 GiB ${fills(limits)}; cold read (dd, one stream) ${limits.diskReadMiBps.toFixed(0)} MiB/s; SHA-256 ${limits.sha256MiBpsPerCore.toFixed(0)} MiB/s per core; ${limits.cores} cores`);

const outputs = new Map<string, string>();
for (const b of benches) {
  console.log(`\n## ${b.title}  (${b.file})\n`);
  await rm(snapshotResultsFile, { force: true });
  let out = '';
  const code = await new Promise<number | null>((resolve) => {
    const child = spawn(process.execPath, ['--import', 'tsx', b.file, ...b.args, ...passThrough], {
      stdio: ['ignore', 'pipe', 'inherit'],
      env: { ...process.env, BENCH_RESULTS_FILE: snapshotResultsFile },
    });
    child.stdout.on('data', (d: Buffer) => {
      process.stdout.write(d);
      out += d;
    });
    child.once('exit', resolve);
  });
  outputs.set(b.key, out);
  if (code !== 0) {
    console.error(`${b.file} failed with exit code ${code}`);
    process.exitCode = 1;
  }
  if (b.key === 'snapshot') outputs.set('snapshot-json', await readFile(snapshotResultsFile, 'utf8').catch(() => ''));
}

// ---- issue 10's table ----
const snap = outputs.get('snapshot-json') ? (JSON.parse(outputs.get('snapshot-json')!) as SnapshotBenchResults) : null;
const repl = outputs.has('replication') ? await readFile('bench/results-replication.json', 'utf8').then((t) => JSON.parse(t)).catch(() => null) : null;
const nbd = parseNbd(outputs.get('nbd') ?? '');

const s = (ms: number): string => `${(ms / 1000).toFixed(2)} s`;
const verdict = (ok: boolean): string => (ok ? 'met' : '**not met**');
const rows: string[] = [];
const columns = sizesMiB.map((m) => (m % 1024 === 0 ? `${m / 1024} GiB image` : `${m} MiB image`));
rows.push(`| | ${columns.join(' | ')} | target |`);
rows.push(`|---|${columns.map(() => '---|').join('')}---|`);
const targetFull = (m: number): number => (m >= 4096 ? 0.7 : 1.0);
if (snap) {
  rows.push(`| full snapshot, time / \`cp\`+\`sync\` | ${snap.mixed.map((r) => `**${(r.fullSnapshot.ms / r.cpSync.ms).toFixed(2)}** (${s(r.fullSnapshot.ms)} vs ${s(r.cpSync.ms)}) ${verdict(r.fullSnapshot.ms / r.cpSync.ms <= targetFull(r.sizeMiB))}`).join(' | ')} | <= 1.0 (1 GiB), <= 0.7 (4 GiB) |`);
  if (snap.mixed.some((r) => r.warm)) {
    rows.push(`| the same, page cache kept (a second disk snapshotted right after it was loaded) | ${snap.mixed.map((r) => (r.warm ? `**${(r.warm.fullSnapshot.ms / r.warm.cpSync.ms).toFixed(2)}** (${s(r.warm.fullSnapshot.ms)} vs ${s(r.warm.cpSync.ms)}) ${verdict(r.warm.fullSnapshot.ms / r.warm.cpSync.ms <= targetFull(r.sizeMiB))}` : 'not measured')).join(' | ')} | <= 1.0 (1 GiB), <= 0.7 (4 GiB) |`);
  }
  rows.push(`| incremental snapshot after 1 % changed | ${snap.mixed.map((r) => `${s(r.incrementalSnapshot.ms)} (${((r.incrementalSnapshot.ms / r.fullSnapshot.ms) * 100).toFixed(1)} % of the full one)`).join(' | ')} | |`);
  rows.push(`| new disk from the full snapshot (restore), time / \`cp\`+\`sync\` | ${snap.mixed.map((r) => (r.restore ? `${(r.restore.ms / r.cpSync.ms).toFixed(2)} (${s(r.restore.ms)} vs ${s(r.cpSync.ms)})` : 'not measured')).join(' | ')} | |`);
}
if (repl?.sizes) {
  const bySize = (m: number): any => repl.sizes.find((x: any) => x.sizeGiB === Math.max(1, Math.round(m / 1024)));
  const targetCopy = (m: number): number => (m >= 4096 ? 0.6 : 1.0);
  rows.push(`| full copy, time / \`rsync --whole-file\`+\`sync\` | ${sizesMiB.map((m) => {
    const r = bySize(m);
    if (!r) return '';
    const ours = median(r.full.map((f: any) => f.ms));
    const theirs = median(r.full.map((f: any) => f.rsyncMs));
    return `**${(ours / theirs).toFixed(2)}** (${s(ours)} vs ${s(theirs)}) ${verdict(ours / theirs <= targetCopy(m))}`;
  }).join(' | ')} | <= 1.0 (1 GiB), <= 0.6 (4 GiB) |`);
  rows.push(`| incremental copy after 1 % changed, time / rsync's delta+\`sync\`; on the wire / changed | ${sizesMiB.map((m) => {
    const r = bySize(m);
    if (!r) return '';
    const ratio = r.incremental.ms / r.incremental.rsyncDeltaMs;
    const wire = r.incremental.wireBytes / r.incremental.changedBytes;
    return `**${ratio.toFixed(3)}**; ${wire.toFixed(2)}x${m >= 4096 ? ` ${verdict(ratio <= 0.1 && wire <= 1.2)}` : ''}`;
  }).join(' | ')} | <= 0.1 and <= 1.2x (4 GiB) |`);
}
const extra: Array<[string, string, string]> = [];
if (snap?.incompressible) {
  const r = snap.incompressible;
  extra.push(['snapshot of 1 GiB incompressible data', `${s(r.snapshot.ms)}: ${(r.sizeMiB / (r.snapshot.ms / 1000)).toFixed(0)} MiB/s; / \`cp\`+\`sync\` ${(r.snapshot.ms / r.cpSync.ms).toFixed(2)} (${s(r.cpSync.ms)})`, '']);
}
if (repl?.incompressible) {
  const r = repl.incompressible;
  const mibps = r.bytes / MiB / (r.ms / 1000);
  extra.push(['copy of incompressible data, loopback', `${mibps.toFixed(0)} MiB/s (${(r.bytes / MiB).toFixed(0)} MiB in ${s(r.ms)}) ${verdict(mibps >= 300)}`, '>= 300 MiB/s']);
}
if (snap?.sparse) {
  const r = snap.sparse;
  extra.push(['1 TiB disk, 1 GiB of random data written: first snapshot; copy', `${s(r.snapshot.ms)} (${(r.writtenMiB / (r.snapshot.ms / 1000)).toFixed(0)} MiB/s of data; \`cp\`+\`sync\` of the sparse file ${s(r.cpSync.ms)})${r.copy ? `; ${s(r.copy.ms)} (${(r.writtenMiB / (r.copy.ms / 1000)).toFixed(0)} MiB/s)` : ''}`, 'cost follows the written GiB']);
}
if (nbd) {
  const pair = (r?: NbdRatio) => `write ${r?.write ?? '?'}, read ${r?.read ?? '?'}`;
  extra.push(['NBD through the disk path / `nbdkit file` (nbdcopy defaults; --connections=1; --flush)', `${pair(nbd.defaults)}; ${pair(nbd.single)}; ${pair(nbd.durable)} ${verdict(!!nbd.defaults && nbd.defaults.write >= 0.9 && nbd.defaults.read >= 0.9)}`, '>= 0.9']);
}
const rssPeaks = [
  ...(snap ? [...snap.mixed.map((r) => r.peakRssBytes), snap.incompressible?.peakRssBytes ?? 0, snap.sparse?.peakRssBytes ?? 0] : []),
  repl?.peakRssBytes ?? 0,
];
const peakRss = Math.max(0, ...rssPeaks);
if (peakRss > 0) extra.push(['server peak RSS (VmHWM, every scenario, imports included)', `${(peakRss / MiB).toFixed(0)} MiB ${verdict(peakRss <= 300 * MiB)}`, '<= 300 MiB']);
const table = [...rows, '', '| | measured | target |', '|---|---|---|', ...extra.map(([what, value, target]) => `| ${what} | ${value} | ${target} |`)];

const finished = await loadAverage();
console.log(`\n## Issue 10's table (one run each unless --runs; load average at start ${limits.loadAverage}, at the end ${finished})\n`);
for (const l of table) console.log(l);
console.log(`\nMachine: disk write ${limits.diskWriteMiBps.toFixed(0)} MiB/s (dd conv=fsync), ${limits.diskDirectWriteMiBps.toFixed(0)} MiB/s past the page cache (oflag=direct); page-cache fill ${fills(limits)}; cold read ${limits.diskReadMiBps.toFixed(0)} MiB/s (dd, one stream), SHA-256 ${limits.sha256MiBpsPerCore.toFixed(0)} MiB/s per core, ${limits.cores} cores.`);
await writeFile('bench/results.json', `${JSON.stringify({ started, finished: new Date().toISOString(), loadAverage: { start: limits.loadAverage, end: finished }, machine: limits, sizesMiB, snapshot: snap, replication: repl, nbd, table }, null, 2)}\n`);
console.log('\nwritten: bench/results.json');

interface NbdRatio {
  write: number;
  read: number;
}

/** bench/nbd.ts's flag sets, by their label there. */
type NbdRatios = { defaults?: NbdRatio; single?: NbdRatio; durable?: NbdRatio };

/** bench/nbd.ts's ratio lines for the real disk path, by flag set (a label it does not know is left out). */
function parseNbd(text: string): NbdRatios | null {
  const byLabel = new Map<string, keyof NbdRatios>([['nbdcopy defaults', 'defaults'], ['nbdcopy --connections=1', 'single'], ['nbdcopy --flush', 'durable']]);
  const out: NbdRatios = {};
  for (const m of text.matchAll(/^ratio snapferry-disk\/nbdkit \((.+)\): write ([\d.]+), read ([\d.]+)$/gm)) {
    const name = byLabel.get(m[1]!);
    if (name) out[name] = { write: Number(m[2]), read: Number(m[3]) };
  }
  return Object.keys(out).length > 0 ? out : null;
}
