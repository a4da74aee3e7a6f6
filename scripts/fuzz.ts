/**
 * The long fuzz campaign: `npm run fuzz [-- --runs N] [--seed S] [--only http|nbd]`.
 *
 * HTTP: N cases (default 5000) of each family of test/helpers/http-fuzz.ts (every public route,
 * the internal routes with the regions' and tenants' keys, mutated requests, raw garbage) against a
 * real region listening on loopback, with every property of the bounded run in `npm test`
 * (test/fuzz-http.test.ts) checked on every case and batch. NBD: the handshake fuzz of
 * test/nbd-handshake-fuzz.test.ts and the command fuzz of test/nbd-command-fuzz.test.ts, each with
 * N/10 cases per property (at least 150), run as those test files with NBD_FUZZ_RUNS and the seed
 * (NBD_FUZZ_SEED, NBD_CMD_FUZZ_SEED); the command fuzz prints what its cases reached.
 *
 * The seed defaults to the clock and is printed; a failure prints the case, the seed and the
 * fast-check path, and exits 1. `--seed S` replays a campaign (the server's own ids differ, so a
 * stateful failure may need a few runs).
 */
import { spawnSync } from 'node:child_process';
import { runHttpFuzz, startFuzzTarget } from '../test/helpers/http-fuzz.ts';

function usage(msg: string): never {
  process.stderr.write(`fuzz: ${msg}\nusage: npm run fuzz -- [--runs N] [--seed S] [--only http|nbd]\n`);
  process.exit(2);
}

const args = process.argv.slice(2);
let runs = 5000;
let seed = Math.floor(Date.now() / 1000) % 1_000_000_000;
let only: 'http' | 'nbd' | null = null;
for (let i = 0; i < args.length; i++) {
  const a = args[i]!;
  const value = (): string => args[++i] ?? usage(`${a} needs a value`);
  if (a === '--runs') runs = Number(value());
  else if (a === '--seed') seed = Number(value());
  else if (a === '--only') {
    const v = value();
    if (v !== 'http' && v !== 'nbd') usage('--only takes http or nbd');
    only = v;
  } else usage(`unknown argument ${a}`);
}
if (!Number.isSafeInteger(runs) || runs < 1) usage('--runs needs a positive integer');
if (!Number.isSafeInteger(seed)) usage('--seed needs an integer');

const mib = (n: number): string => `${Math.round(n / 2 ** 20)} MiB`;
let failed = false;
process.stdout.write(`fuzz: seed ${seed}, ${runs} HTTP cases per family\n`);

if (only !== 'nbd') {
  const started = Date.now();
  const t = await startFuzzTarget();
  try {
    await runHttpFuzz(t, {
      seed,
      runs: { public: runs, internal: runs, mutated: runs, garbage: Math.max(1, Math.ceil(runs / 4)) },
      progress: (line) => process.stdout.write(`${line}\n`),
      keepGoing: true,
    });
  } catch (e) {
    failed = true;
    process.stdout.write(`\nHTTP FAILED: ${(e as Error).message}\n`);
  }
  const s = t.stats;
  const rssEnd = process.memoryUsage().rss;
  process.stdout.write(
    `\nHTTP: ${s.cases} cases in ${((Date.now() - started) / 1000).toFixed(0)} s ${JSON.stringify(s.byFamily)}\n` +
      `  statuses ${JSON.stringify(s.byStatus)}\n  codes ${JSON.stringify(s.byCode)}\n` +
      `  answered ${s.answered}, closed without an answer ${s.closedWithoutAnswer}, reset by the client ${s.resetByClient}, follow-ups answered ${s.followUps}\n` +
      `  slowest ${s.slowestMs} ms (${s.slowestCase})\n` +
      (s.slowCases.length > 0 ? `  over 5 s:\n${s.slowCases.map((c) => `    ${c}`).join('\n')}\n` : '') +
      `  RSS (this process, server included) ${mib(s.rssStart)} at the start, ${mib(s.rssMax)} at most, ${mib(rssEnd)} at the end; ${s.batches} batches checked\n`,
  );
  await t.live.close();
}

if (only !== 'http') {
  const nbdRuns = Math.max(150, Math.ceil(runs / 10));
  /** Runs one NBD fuzz file as a test file of its own, with the campaign's case count and seed. */
  const runNbdFile = (title: string, file: string, properties: number, reporter: 'dot' | 'spec', env: Record<string, string>): void => {
    process.stdout.write(`\nNBD ${title} fuzz: ${nbdRuns} cases per property, seed ${seed}\n`);
    const started = Date.now();
    const r = spawnSync(process.execPath, ['--import', 'tsx', '--test', `--test-reporter=${reporter}`, file], {
      stdio: 'inherit',
      env: { ...process.env, NBD_FUZZ_RUNS: String(nbdRuns), ...env },
    });
    process.stdout.write(`NBD ${title}: ${r.status === 0 ? 'passed' : 'FAILED'} in ${((Date.now() - started) / 1000).toFixed(0)} s (${properties} properties x ${nbdRuns} cases)\n`);
    if (r.status !== 0) failed = true;
  };
  runNbdFile('handshake', 'test/nbd-handshake-fuzz.test.ts', 3, 'dot', { NBD_FUZZ_SEED: String(seed) });
  // NBD_FUZZ_STATS: the command fuzz prints its counts per property (commands, replies by command and
  // error, endings, peak RSS growth) on stderr, which the spec reporter shows and the dot one drops.
  runNbdFile('command', 'test/nbd-command-fuzz.test.ts', 2, 'spec', { NBD_CMD_FUZZ_SEED: String(seed), NBD_FUZZ_STATS: '1' });
}

process.exit(failed ? 1 : 0);
