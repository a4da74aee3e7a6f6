/**
 * Remote copy throughput, beside rsync of the same image: a full copy of a 1 GiB disk snapshot
 * (bj -> hkg over loopback HTTP, two regions in one process, as `npm start` runs them), then an
 * incremental copy after a 1% change, against `rsync` of the whole image and rsync's delta transfer
 * of the changed image onto the previous copy.
 *
 *   node --import tsx bench/replication.ts
 */
import { randomBytes } from 'node:crypto';
import { open, rm } from 'node:fs/promises';
import path from 'node:path';
import { loadServeConfig } from '../src/config.ts';
import { BceClient } from '../src/lib/bce-client.ts';
import { startServer } from '../src/main.ts';
import { freePortRange } from '../test/helpers/spawned-server.ts';
import { makeImage } from '../test/helpers/test-image.ts';
import { GiB, MiB, benchDir, mibps, run, timed } from './common.ts';

async function until(fn: () => Promise<boolean>): Promise<void> {
  while (!(await fn())) await new Promise((r) => setTimeout(r, 20));
}

export async function replicationBench(): Promise<string[]> {
  const dir = await benchDir('replication');
  await rm(path.join(dir, 'data'), { recursive: true, force: true });
  const image = await makeImage(path.join(dir, 'image.raw'), GiB, 'bench');
  const port = await freePortRange(2);
  const nbdPort = await freePortRange(2);
  const env = { SNAPFERRY_ACCESS_KEY_ID: 'bench', SNAPFERRY_SECRET_ACCESS_KEY: 'bench-secret' };
  const config = loadServeConfig({ dataDir: path.join(dir, 'data'), regions: 'bj,hkg', port: String(port), nbdPort: String(nbdPort) }, env);
  const devnull = { write: () => true } as unknown as NodeJS.WritableStream;
  const server = await startServer(config, devnull);
  const bj = new BceClient(`http://127.0.0.1:${port}`, { accessKeyId: 'bench', secretAccessKey: 'bench-secret' });
  const hkg = new BceClient(`http://127.0.0.1:${port + 1}`, { accessKeyId: 'bench', secretAccessKey: 'bench-secret' });
  const lines: string[] = [];
  try {
    const { volumeIds } = await bj.json<{ volumeIds: string[] }>({ method: 'POST', path: '/v2/volume', json: { cdsSizeInGB: 1 } });
    const vol = volumeIds[0]!;
    await until(async () => (await bj.json<any>({ method: 'GET', path: `/v2/volume/${vol}` })).volume.status === 'Available');
    const fh = await open(image.path, 'r');
    const buf = Buffer.alloc(4 * MiB);
    for (let at = 0; at < GiB; at += buf.length) {
      await fh.read(buf, 0, buf.length, at);
      await bj.json({ method: 'PUT', path: `/v2/volume/${vol}/data`, query: { offset: String(at) }, body: buf });
    }
    await fh.close();

    const snapshotAndCopy = async (name: string): Promise<{ ms: number; bytes: number }> => {
      const { snapshotId } = await bj.json<{ snapshotId: string }>({ method: 'POST', path: '/v2/snapshot', json: { volumeId: vol, snapshotName: name } });
      await until(async () => (await bj.json<any>({ method: 'GET', path: `/v2/snapshot/${snapshotId}` })).snapshot.status === 'Available');
      const sentBefore = await sentBytes(port, config.metricsToken);
      const copy = await timed(async () => {
        const { result } = await bj.json<any>({ method: 'PUT', path: `/v2/snapshot/remote_copy/${snapshotId}`, json: { destRegionInfos: [{ destRegion: 'hkg' }] } });
        await until(async () => (await hkg.json<any>({ method: 'GET', path: `/v2/snapshot/${result[0].snapshotId}` })).snapshot.status === 'Available');
      });
      return { ms: copy.ms, bytes: (await sentBytes(port, config.metricsToken)) - sentBefore };
    };
    const full = await snapshotAndCopy('full');
    const rsyncFull = await timed(() => run('rsync', ['--whole-file', image.path, path.join(dir, 'rsync-copy.raw')]));

    for (let i = 0; i < 10; i++) {
      const offset = (i * 97 + 5) * MiB;
      const data = randomBytes(MiB);
      await bj.json({ method: 'PUT', path: `/v2/volume/${vol}/data`, query: { offset: String(offset) }, body: data });
      const img = await open(image.path, 'r+');
      await img.write(data, 0, data.length, offset);
      await img.close();
    }
    const incremental = await snapshotAndCopy('incremental');
    const rsyncDelta = await timed(() => run('rsync', ['--no-whole-file', '--inplace', image.path, path.join(dir, 'rsync-copy.raw')]));

    lines.push(`1 GiB disk, ${(image.dataBytes / MiB).toFixed(0)} MiB non-zero; bj -> hkg over loopback HTTP`);
    lines.push(`remote copy, full              ${full.ms.toFixed(0)} ms  ${mibps(GiB, full.ms)} of disk  (${(full.bytes / MiB).toFixed(0)} MiB on the wire)`);
    lines.push(`rsync --whole-file             ${rsyncFull.ms.toFixed(0)} ms  ${mibps(GiB, rsyncFull.ms)}  (ratio rsync/ours: ${(rsyncFull.ms / full.ms).toFixed(2)})`);
    lines.push(`remote copy after 1% change    ${incremental.ms.toFixed(0)} ms  (${(incremental.bytes / MiB).toFixed(1)} MiB on the wire for 10 MiB changed)`);
    lines.push(`rsync delta (--no-whole-file)  ${rsyncDelta.ms.toFixed(0)} ms  (ratio rsync/ours: ${(rsyncDelta.ms / incremental.ms).toFixed(2)})`);
  } finally {
    await bj.close();
    await hkg.close();
    await server.close();
  }
  return lines;
}

async function sentBytes(port: number, token: string): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`, { headers: { authorization: `Bearer ${token}` } })).text();
  const m = /^snapferry_replication_bytes_sent_total\{destination="hkg"\} (\d+)/m.exec(text);
  return m ? Number(m[1]) : 0;
}

if (import.meta.url === `file://${process.argv[1]}`) {
  for (const l of await replicationBench()) console.log(l);
}
