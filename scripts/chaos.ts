/**
 * The crash campaign: `npm run chaos [N]` runs N trials (default 20) of kill -9 at a random moment of
 * a random operation against real `snapferry serve` processes, then checks that nothing was lost
 * (test/helpers/chaos.ts says what is checked). One line per trial, then a summary table; exit code
 * 1 when any trial lost data or failed a check.
 *
 *   npm run chaos                   20 trials, campaign seed from the clock
 *   npm run chaos 30                30 trials
 *   npm run chaos -- 30 --seed 7    30 trials of campaign seed 7 (trial seeds 7000, 7001, ...)
 *   npm run chaos -- --trial 7003   replay one trial (repeatable)
 *   --read extents                  read back only the chunks that hold data (faster; default: whole disks)
 *   --strict-wire                   copies must stay within 1.1x on the wire even across crashes
 *                                   (default: 1.1x plus what a crash costs by design, see test/helpers/chaos.ts)
 *   --scale X                       multiply the data sizes by X (default 1)
 *   --keep                          keep the data dirs and server logs of failed trials
 *   --json FILE                     also write every trial's result as JSON
 */
import { writeFile } from 'node:fs/promises';
import { campaignFailed, campaignSeeds, killEverything, runCampaign, summaryTable } from '../test/helpers/chaos.ts';

function usage(msg: string): never {
  process.stderr.write(`chaos: ${msg}\nusage: npm run chaos -- [N] [--seed S] [--trial SEED ...] [--read full|extents] [--strict-wire] [--scale X] [--keep] [--json FILE]\n`);
  process.exit(2);
}

const args = process.argv.slice(2);
let trials = 20;
let seed = Math.floor(Date.now() / 1000) % 1_000_000;
const replay: number[] = [];
let readMode: 'full' | 'extents' = 'full';
let keep = false;
let strictWire = false;
let scale = 1;
let jsonFile: string | null = null;
for (let i = 0; i < args.length; i++) {
  const a = args[i]!;
  const value = (): string => args[++i] ?? usage(`${a} needs a value`);
  if (a === '--seed') seed = Number(value());
  else if (a === '--trial') replay.push(Number(value()));
  else if (a === '--read') readMode = value() === 'extents' ? 'extents' : 'full';
  else if (a === '--keep') keep = true;
  else if (a === '--strict-wire') strictWire = true;
  else if (a === '--scale') scale = Number(value());
  else if (a === '--json') jsonFile = value();
  else if (/^\d+$/.test(a)) trials = Number(a);
  else usage(`unknown argument ${a}`);
}
if (!Number.isSafeInteger(seed) || replay.some((s) => !Number.isSafeInteger(s))) usage('seeds are integers');

for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => {
    process.stderr.write(`chaos: ${signal}: stopping every server the campaign started\n`);
    killEverything();
    process.exit(130);
  });
}

const seeds = replay.length > 0 ? replay : campaignSeeds(seed, trials);
process.stdout.write(`chaos: ${seeds.length} trial(s)${replay.length ? '' : `, campaign seed ${seed}`}, read-back: ${readMode}\n`);
if (!(scale > 0)) usage('--scale needs a positive number');
const result = await runCampaign({ seeds, readMode, keep, strictWire, scale });
process.stdout.write(`\n${summaryTable(result)}\n`);
process.stdout.write(`started ${result.startedAt.toISOString()} on ${result.machine}\n`);
if (jsonFile) await writeFile(jsonFile, JSON.stringify(result, null, 2));
process.exit(campaignFailed(result) ? 1 : 0);
