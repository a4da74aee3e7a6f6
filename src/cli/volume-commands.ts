/**
 * `snapferry volume create|list|show|delete|import|export`.
 *
 * import streams a raw image into a disk: all-zero pieces are not sent (they are zeroed on the server
 * with a bodyless request, which costs no data write), a tail that is not a multiple of 512 bytes is
 * padded with zeros. export streams a disk into a raw file, leaving holes where the disk reads zero.
 */
import { open, stat } from 'node:fs/promises';
import type { Command } from 'commander';
import { isAllZero } from '../lib/all-zero.ts';
import { mapLimit } from '../lib/map-limit.ts';
import { Progress, formatBytes } from './progress.ts';
import { listAll, runClientCommand, waitUntil, type ClientContext, type ClientFlags } from './client-context.ts';

const PIECE = 4 << 20;
/** Zero detection granularity on import: the service's chunk size, so skipped blocks are whole chunks. */
const ZERO_BLOCK = 1 << 20;
const SECTOR = 512;
const PARALLEL = 4;
const GiB = 1024 ** 3;

interface VolumeModel {
  id: string;
  name: string;
  diskSizeInGB: number;
  status: string;
  zoneName: string;
  storageType: string;
  createTime: string;
  sourceSnapshotId: string;
  snapshotNum: string;
}

export function volumeCommands(program: Command, common: (c: Command) => Command): void {
  const volume = program.command('volume').description('disks (CDS volumes)');

  common(volume.command('create').description('create a disk'))
    .option('--size <GB>', 'size in GiB')
    .option('--snapshot <id>', 'fill the disk from this snapshot')
    .option('--name <name>', 'name')
    .option('--count <n>', 'how many disks', '1')
    .option('--zone <zone>', 'zone, e.g. cn-bj-a')
    .option('--wait', 'wait until the disk is Available')
    .action((o: ClientFlags & { size?: string; snapshot?: string; name?: string; count: string; zone?: string; wait?: boolean }) =>
      runClientCommand(o, async (ctx) => {
        const res = await ctx.client.json<{ volumeIds: string[] }>({
          method: 'POST', path: '/v2/volume',
          json: { cdsSizeInGB: o.size ? Number(o.size) : undefined, snapshotId: o.snapshot, name: o.name, purchaseCount: Number(o.count), zoneName: o.zone },
        });
        const volumes = o.wait ? await Promise.all(res.volumeIds.map((id) => waitForVolume(ctx, id))) : null;
        ctx.print(volumes ?? res, () => (volumes ? volumes.map(describe).join('\n') : res.volumeIds.join('\n')));
      }),
    );

  common(volume.command('list').description('list disks'))
    .action((o: ClientFlags) =>
      runClientCommand(o, async (ctx) => {
        const all = await listAll<VolumeModel>(ctx, '/v2/volume', 'volumes');
        ctx.print(all, () => (all.length ? all.map(describe).join('\n') : 'no disks'));
      }),
    );

  common(volume.command('show').argument('<volumeId>').description('show one disk'))
    .action((id: string, o: ClientFlags) =>
      runClientCommand(o, async (ctx) => {
        const { volume: v } = await ctx.client.json<{ volume: VolumeModel }>({ method: 'GET', path: `/v2/volume/${id}` });
        ctx.print(v, () => describe(v));
      }),
    );

  common(volume.command('delete').argument('<volumeId>').description('delete a disk'))
    .action((id: string, o: ClientFlags) =>
      runClientCommand(o, async (ctx) => {
        await ctx.client.json({ method: 'DELETE', path: `/v2/volume/${id}` });
        ctx.print({ deleted: id }, () => `deleted ${id}`);
      }),
    );

  common(volume.command('import').argument('<volumeId>').argument('<file>').description('write a raw image into a disk'))
    .action((id: string, file: string, o: ClientFlags) => runClientCommand(o, (ctx) => importImage(ctx, id, file)));

  common(volume.command('export').argument('<volumeId>').argument('<file>').description('read a disk into a raw (sparse) image file'))
    .action((id: string, file: string, o: ClientFlags) => runClientCommand(o, (ctx) => exportImage(ctx, id, file)));
}

function describe(v: VolumeModel): string {
  return `${v.id}  ${v.status.padEnd(10)} ${String(v.diskSizeInGB).padStart(5)} GiB  ${v.zoneName}  ${v.storageType}  ${v.name || '-'}${v.sourceSnapshotId ? `  from ${v.sourceSnapshotId}` : ''}`;
}

async function waitForVolume(ctx: ClientContext, id: string): Promise<VolumeModel> {
  const { volume } = await waitUntil(
    () => ctx.client.json<{ volume: VolumeModel }>({ method: 'GET', path: `/v2/volume/${id}` }),
    (r) => r.volume.status !== 'Creating' && r.volume.status !== 'SnapshotProcessing',
  );
  if (volume.status !== 'Available') throw new Error(`disk ${id} ended ${volume.status}`);
  return volume;
}

async function importImage(ctx: ClientContext, id: string, file: string): Promise<void> {
  const { volume } = await ctx.client.json<{ volume: VolumeModel }>({ method: 'GET', path: `/v2/volume/${id}` });
  const size = (await stat(file)).size;
  const padded = Math.ceil(size / SECTOR) * SECTOR;
  if (padded > volume.diskSizeInGB * GiB) throw new Error(`${file} (${formatBytes(size)}) does not fit the ${volume.diskSizeInGB} GiB disk ${id}`);
  const fh = await open(file, 'r');
  const progress = new Progress(`import ${id}`, ctx.json);
  let done = 0;
  let sent = 0;
  try {
    const offsets = Array.from({ length: Math.ceil(padded / PIECE) }, (_, i) => i * PIECE);
    await mapLimit(offsets, PARALLEL, async (offset) => {
      const length = Math.min(PIECE, padded - offset);
      const piece = Buffer.alloc(length); // zero-filled: the padding of a short last sector
      await readFully(fh, piece, offset, Math.min(length, size - offset));
      // Runs of all-zero or data blocks, each sent as one request.
      for (const run of zeroRuns(piece, ZERO_BLOCK)) {
        const at = String(offset + run.start);
        if (run.zero) {
          await ctx.client.json({ method: 'PUT', path: `/v2/volume/${id}/data`, query: { offset: at, zeroLength: String(run.length) } });
        } else {
          const body = piece.subarray(run.start, run.start + run.length);
          await ctx.client.json({ method: 'PUT', path: `/v2/volume/${id}/data`, query: { offset: at }, body, headers: { 'content-type': 'application/octet-stream' } });
          sent += run.length;
        }
      }
      done += length;
      progress.update(done, padded);
    });
  } finally {
    await fh.close();
  }
  ctx.print({ volumeId: id, bytes: size, bytesSent: sent }, () => `imported ${formatBytes(size)} into ${id} (${formatBytes(sent)} sent, the rest was zeros)`);
}

async function exportImage(ctx: ClientContext, id: string, file: string): Promise<void> {
  const { extents } = await ctx.client.json<{ extents: Array<{ offset: number; length: number; zero: boolean }> }>({ method: 'GET', path: `/v2/volume/${id}/extents` });
  const size = extents.reduce((n, e) => n + e.length, 0);
  const fh = await open(file, 'w');
  const progress = new Progress(`export ${id}`, ctx.json);
  let done = size - extents.filter((e) => !e.zero).reduce((n, e) => n + e.length, 0);
  try {
    await fh.truncate(size); // a sparse file: what is never written stays a hole
    const pieces: Array<[number, number]> = [];
    for (const e of extents.filter((x) => !x.zero)) {
      for (let at = e.offset; at < e.offset + e.length; at += PIECE) pieces.push([at, Math.min(PIECE, e.offset + e.length - at)]);
    }
    await mapLimit(pieces, PARALLEL, async ([offset, length]) => {
      const res = await ctx.client.send({ method: 'GET', path: `/v2/volume/${id}/data`, headers: { range: `bytes=${offset}-${offset + length - 1}` } });
      const data = Buffer.from(await res.body.arrayBuffer());
      if (data.length !== length) throw new Error(`short read at ${offset}: ${data.length} of ${length} bytes`);
      if (!isAllZero(data)) await fh.write(data, 0, length, offset);
      done += length;
      progress.update(done, size);
    });
    await fh.sync();
  } finally {
    await fh.close();
  }
  progress.update(size, size);
  ctx.print({ volumeId: id, file, bytes: size }, () => `exported ${id} (${formatBytes(size)}) to ${file}`);
}

/** Splits `buf` into alternating runs of all-zero and non-zero blocks of `block` bytes. */
export function zeroRuns(buf: Buffer, block: number): Array<{ start: number; length: number; zero: boolean }> {
  const runs: Array<{ start: number; length: number; zero: boolean }> = [];
  for (let at = 0; at < buf.length; at += block) {
    const length = Math.min(block, buf.length - at);
    const zero = isAllZero(buf.subarray(at, at + length));
    const last = runs[runs.length - 1];
    if (last && last.zero === zero) last.length += length;
    else runs.push({ start: at, length, zero });
  }
  return runs;
}

async function readFully(fh: import('node:fs/promises').FileHandle, buf: Buffer, position: number, length: number): Promise<void> {
  let done = 0;
  while (done < length) {
    const { bytesRead } = await fh.read(buf, done, length - done, position + done);
    if (bytesRead === 0) break;
    done += bytesRead;
  }
}
