/**
 * Operator commands, signed with the regions' service credential (not a tenant's keys):
 *   snapferry scrub   re-hash every chunk and manifest of a region, remove and report damaged ones
 *   snapferry gc      collect chunks and manifests no snapshot or disk references (after the grace period)
 *   snapferry check   integrity check of a region: metadata, manifests, chunks, disk files (exit 3 on problems)
 * The secret comes from SNAPFERRY_REGION_SECRET, or from <data-dir>/credentials.json with --data-dir.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Command } from 'commander';
import { BceClient, BceError } from '../lib/bce-client.ts';

interface AdminFlags {
  endpoint?: string;
  dataDir?: string;
  region?: string;
  json?: boolean;
}

function regionSecret(flags: AdminFlags): string {
  if (process.env.SNAPFERRY_REGION_SECRET) return process.env.SNAPFERRY_REGION_SECRET;
  const dir = flags.dataDir ?? './snapferry-data';
  try {
    return (JSON.parse(readFileSync(join(dir, 'credentials.json'), 'utf8')) as { regionSecret: string }).regionSecret;
  } catch (e) {
    throw new Error(`no region secret: set SNAPFERRY_REGION_SECRET or point --data-dir at the server's data dir (${(e as Error).message})`);
  }
}

async function adminCall(flags: AdminFlags, action: 'scrub' | 'gc' | 'check', human: (r: any) => string): Promise<void> {
  const endpoint = flags.endpoint ?? process.env.SNAPFERRY_ENDPOINT ?? 'http://127.0.0.1:8801';
  let client: BceClient | null = null;
  try {
    // The key id names a region; which one does not matter to the server, only the secret does.
    // A scrub or check of a large region answers only when it is done: wait for it (up to 6 h).
    client = new BceClient(endpoint, { accessKeyId: `snapferry-region-${flags.region ?? 'bj'}`, secretAccessKey: regionSecret(flags) }, { headersTimeoutMs: 6 * 3600_000 });
    const result = await client.json({ method: 'POST', path: `/internal/v1/admin/${action}` });
    process.stdout.write(flags.json ? JSON.stringify(result, null, 2) + '\n' : human(result) + '\n');
    if (action === 'scrub' && ((result as any).damagedChunks.length > 0 || (result as any).damagedManifests.length > 0)) process.exitCode = 3;
    if (action === 'check' && (result as any).problems.length > 0) process.exitCode = 3;
  } catch (e) {
    process.stderr.write(`error: ${e instanceof BceError ? `${e.code}: ` : ''}${(e as Error).message}\n`);
    process.exitCode = 1;
  } finally {
    await client?.close();
  }
}

export function adminCommands(program: Command): void {
  const common = (c: Command): Command =>
    c
      .option('--endpoint <url>', 'the region (env SNAPFERRY_ENDPOINT, default http://127.0.0.1:8801)')
      .option('--data-dir <dir>', 'read the region secret from this data dir (default ./snapferry-data)')
      .option('--json', 'print machine-readable JSON');

  common(program.command('scrub').description('re-hash every stored chunk of a region; damaged ones are removed and reported (exit code 3)'))
    .action((o: AdminFlags) =>
      adminCall(o, 'scrub', (r) =>
        [
          `checked ${r.chunksChecked} chunks and ${r.manifestsChecked} manifests (${r.bytesChecked} bytes)`,
          r.damagedChunks.length || r.damagedManifests.length
            ? `DAMAGED: ${[...r.damagedChunks.map((id: string) => `chunk ${id}`), ...r.damagedManifests.map((id: string) => `manifest ${id}`)].join('\n  ')}`
            : 'no damage found',
        ].join('\n'),
      ),
    );

  common(program.command('gc').description('collect unreferenced chunks and manifests now'))
    .action((o: AdminFlags) => adminCall(o, 'gc', (r) => `deleted ${r.chunksDeleted} chunks (${r.bytesFreed} bytes) and ${r.manifestsDeleted} manifests; kept ${r.chunksKept} chunks`));

  common(program.command('check').description('integrity check of a region: metadata, manifests, chunks and disk files; changes nothing (exit code 3 on problems)'))
    .action((o: AdminFlags) =>
      adminCall(o, 'check', (r) =>
        [
          `checked ${r.snapshotsChecked} snapshots, ${r.manifestsChecked} manifests, ${r.chunksChecked} chunks (${r.bytesChecked} bytes), ${r.volumesChecked} disks in ${(r.durationMs / 1000).toFixed(1)} s`,
          r.problems.length ? `PROBLEMS (${r.problems.length}):\n  ${r.problems.join('\n  ')}` : 'no problems found',
        ].join('\n'),
      ),
    );
}
