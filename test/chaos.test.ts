/**
 * The crash campaign in short (the full one: `npm run chaos`, docs/reliability.md): four seeded
 * trials, each a different operation cut by kill -9 — a copy with one process per region (the
 * destination killed), a snapshot with one process, garbage collection racing deletes and new
 * snapshots of the same data, an import — then restart and the campaign's checks (every Available
 * snapshot restores exactly, the copy completes within its bound of bytes on the wire, `snapferry
 * check` passes in both regions).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { campaignFailed, runCampaign, summaryTable, trialShape } from './helpers/chaos.ts';

// seed % 10 picks operation and layout: 7 copy/two, 6 snapshot/one, 3 gc/two, 0 import/one; for the
// copy, the next digit picks the destination as the process killed.
const SEEDS = [424217, 424206, 424203, 424200];

test('crash campaign, short: kill -9 during copy, snapshot, gc and import loses nothing', { timeout: 240_000 }, async () => {
  assert.deepEqual(SEEDS.map((s) => trialShape(s).op), ['copy', 'snapshot', 'gc', 'import']);
  const lines: string[] = [];
  const result = await runCampaign({ seeds: SEEDS, readMode: 'extents', scale: 0.5, log: (l) => lines.push(l) });
  const report = `${lines.join('\n')}\n${summaryTable(result)}`;
  assert.ok(!campaignFailed(result), report);
  assert.ok(result.trials.every((t) => t.faults.length > 0), report);
  assert.ok(result.trials[0]!.faults.some((f) => f.kind === 'copy-dest') && result.trials[0]!.wire !== null, report);
  assert.ok(result.trials.reduce((n, t) => n + t.snapshotsVerified, 0) >= SEEDS.length, report);
});
