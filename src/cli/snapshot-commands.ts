/** `snapferry snapshot create|list|show|delete|copy`. */
import type { Command } from 'commander';
import { MultiProgress, Progress } from './progress.ts';
import { listAll, runClientCommand, waitUntil, type ClientContext, type ClientFlags } from './client-context.ts';

interface SnapshotModel {
  id: string;
  name: string;
  sizeInGB: number;
  status: string;
  volumeId: string;
  createTime: string;
  progress: string;
  sourceRegion?: string;
  sourceSnapshotId?: string;
}

export function snapshotCommands(program: Command, common: (c: Command) => Command): void {
  const snapshot = program.command('snapshot').description('snapshots');

  common(snapshot.command('create').argument('<volumeId>').description('snapshot a disk'))
    .requiredOption('--name <name>', 'snapshot name (starts with a letter)')
    .option('--desc <text>', 'description')
    .option('--wait', 'wait until the snapshot is Available, with progress')
    .action((volumeId: string, o: ClientFlags & { name: string; desc?: string; wait?: boolean }) =>
      runClientCommand(o, async (ctx) => {
        const { snapshotId } = await ctx.client.json<{ snapshotId: string }>({ method: 'POST', path: '/v2/snapshot', json: { volumeId, snapshotName: o.name, desc: o.desc } });
        if (!o.wait) return ctx.print({ snapshotId }, () => snapshotId);
        const s = await waitForSnapshot(ctx, snapshotId, new Progress(`snapshot ${snapshotId}`, ctx.json));
        ctx.print(s, () => describe(s));
      }),
    );

  common(snapshot.command('list').description('list snapshots'))
    .option('--volume <volumeId>', 'only snapshots of this disk')
    .action((o: ClientFlags & { volume?: string }) =>
      runClientCommand(o, async (ctx) => {
        const all = await listAll<SnapshotModel>(ctx, '/v2/snapshot', 'snapshots', { volumeId: o.volume });
        ctx.print(all, () => (all.length ? all.map(describe).join('\n') : 'no snapshots'));
      }),
    );

  common(snapshot.command('show').argument('<snapshotId>').description('show one snapshot'))
    .action((id: string, o: ClientFlags) =>
      runClientCommand(o, async (ctx) => {
        const { snapshot: s } = await ctx.client.json<{ snapshot: SnapshotModel }>({ method: 'GET', path: `/v2/snapshot/${id}` });
        ctx.print(s, () => describe(s));
      }),
    );

  common(snapshot.command('copy').argument('<snapshotId>').description('copy a snapshot to other regions'))
    .requiredOption('--to <regions>', 'destination regions, comma-separated (e.g. hkg,gz)')
    .option('--name <name>', 'name of the copies (default: the source name)')
    .option('--wait', 'wait until every copy is Available, with a progress bar per destination')
    .action((id: string, o: ClientFlags & { to: string; name?: string; wait?: boolean }) => runClientCommand(o, (ctx) => copySnapshot(ctx, id, o)));

  common(snapshot.command('delete').argument('<snapshotId>').description('delete a snapshot'))
    .action((id: string, o: ClientFlags) =>
      runClientCommand(o, async (ctx) => {
        await ctx.client.json({ method: 'DELETE', path: `/v2/snapshot/${id}` });
        ctx.print({ deleted: id }, () => `deleted ${id}`);
      }),
    );
}

interface CopyStatus {
  region: string;
  snapshotId: string;
  state: 'queued' | 'running' | 'done' | 'failed';
  progress: number;
  lastError: string | null;
}

async function copySnapshot(ctx: ClientContext, id: string, o: { to: string; name?: string; wait?: boolean }): Promise<void> {
  const regions = o.to.split(',').map((r) => r.trim()).filter((r) => r !== '');
  const { result } = await ctx.client.json<{ result: Array<{ region: string; snapshotId: string }> }>({
    method: 'PUT', path: `/v2/snapshot/remote_copy/${id}`, json: { destRegionInfos: regions.map((destRegion) => ({ destRegion, name: o.name })) },
  });
  if (!o.wait) return ctx.print({ result }, () => result.map((r) => `${r.region}: ${r.snapshotId}`).join('\n'));
  const bars = new MultiProgress(result.map((r) => `${r.region} ${r.snapshotId}`), ctx.json);
  const final = await waitUntil(
    async () => (await ctx.client.json<{ copies: CopyStatus[] }>({ method: 'GET', path: `/v2/snapshot/remote_copy/${id}` })).copies.filter((c) => result.some((r) => r.snapshotId === c.snapshotId)),
    (copies) => copies.length === result.length && copies.every((c) => c.state === 'done' || c.state === 'failed'),
    (copies) => {
      for (const c of copies) bars.update(`${c.region} ${c.snapshotId}`, c.progress, c.state === 'failed' ? 'FAILED' : c.state === 'queued' ? '(queued)' : '');
    },
  );
  bars.done();
  ctx.print({ result: final }, () => final.map((c) => `${c.region}: ${c.snapshotId} ${c.state === 'done' ? 'Available' : `CreatedFailed: ${c.lastError}`}`).join('\n'));
  if (final.some((c) => c.state === 'failed')) process.exitCode = 1;
}

function describe(s: SnapshotModel): string {
  const origin = s.sourceRegion ? `  copy of ${s.sourceRegion}/${s.sourceSnapshotId}` : `  of ${s.volumeId}`;
  return `${s.id}  ${s.status.padEnd(13)} ${String(s.sizeInGB).padStart(5)} GiB  ${s.progress.padStart(3)}%  ${s.name}${origin}`;
}

export async function waitForSnapshot(ctx: ClientContext, id: string, progress: Progress, client = ctx.client): Promise<SnapshotModel> {
  const { snapshot } = await waitUntil(
    () => client.json<{ snapshot: SnapshotModel }>({ method: 'GET', path: `/v2/snapshot/${id}` }),
    (r) => r.snapshot.status !== 'Creating',
    (r) => progress.update(Number(r.snapshot.progress), 100, 'percent'),
  );
  if (snapshot.status !== 'Available') throw new Error(`snapshot ${id} ended ${snapshot.status}`);
  return snapshot;
}
