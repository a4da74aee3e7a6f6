/**
 * Cross-region replication end to end: `snapferry serve` processes, the official JavaScript SDK for
 * every BCC call, the real CLI for moving disk images in and out.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, open, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BceClient } from '../src/lib/bce-client.ts';
import { cliJson, runCli } from './helpers/cli.ts';
import { metric } from './helpers/metrics.ts';
import { sdkClient, send, sendError, until, waitSnapshot, waitVolume, type SdkClient } from './helpers/sdk.ts';
import { spawnServer, type SpawnedServer } from './helpers/spawned-server.ts';
import { makeImage, sha256Of, type TestImage } from './helpers/test-image.ts';

const AK = 'repl-access-key-000000000';
const SK = 'repl-secret-key-111111111';
const GiB = 1024 ** 3;
const MiB = 1 << 20;

let server: SpawnedServer;
let work: string;
let image: TestImage;
let imageSha: string;
const env = (region: string): Record<string, string> => ({ SNAPFERRY_ACCESS_KEY_ID: AK, SNAPFERRY_SECRET_ACCESS_KEY: SK, SNAPFERRY_ENDPOINT: server.urls[region]! });
const sdk = (region: string): SdkClient => sdkClient(server.urls[region]!, AK, SK);

/** State shared by the tests below, which build on each other in order. */
const state: { volumeId?: string; snapshotId?: string; copies?: Record<string, string> } = {};

before(async () => {
  work = await mkdtemp(join(tmpdir(), 'snapferry-repl-'));
  server = await spawnServer({ env: { SNAPFERRY_ACCESS_KEY_ID: AK, SNAPFERRY_SECRET_ACCESS_KEY: SK } });
  image = await makeImage(join(work, 'disk.img'), GiB - 4096 - 700);
  imageSha = await sha256Of(image.path, GiB);
});
after(async () => {
  await server?.dispose();
  if (work) await rm(work, { recursive: true, force: true });
});

/** Distinct non-zero 1 MiB chunks of the first `length` bytes of a file (zero-padded past its end). */
async function distinctChunksOf(path: string, length: number): Promise<number> {
  const fh = await open(path, 'r');
  const seen = new Set<string>();
  try {
    const buf = Buffer.alloc(MiB);
    const zero = Buffer.alloc(MiB);
    for (let at = 0; at < length; at += MiB) {
      buf.fill(0);
      await fh.read(buf, 0, MiB, at);
      if (!buf.equals(zero)) seen.add(createHash('sha256').update(buf).digest('hex'));
    }
  } finally {
    await fh.close();
  }
  return seen.size;
}

async function exportSha(region: string, volumeId: string): Promise<string> {
  const out = join(work, `${region}-${volumeId}.img`);
  await cliJson(['volume', 'export', volumeId, out], env(region));
  const sha = await sha256Of(out, GiB);
  await rm(out);
  return sha;
}

test('a 1 GiB snapshot is copied bj -> hkg and bj -> gz in one call; each copy restores bit-identical', async () => {
  const bj = sdk('bj');
  const [volumeId] = (await send(bj, 'POST', '/v2/volume', { body: { cdsSizeInGB: 1, name: 'repl-src' } })).volumeIds;
  await waitVolume(bj, volumeId);
  await cliJson(['volume', 'import', volumeId, image.path], env('bj'));
  const { snapshotId } = await send(bj, 'POST', '/v2/snapshot', { body: { volumeId, snapshotName: 'repl-1' } });
  await waitSnapshot(bj, snapshotId);

  const res = await send(bj, 'PUT', `/v2/snapshot/remote_copy/${snapshotId}`, {
    params: { clientToken: 'copy-1' },
    body: { destRegionInfos: [{ name: 'to-hkg', destRegion: 'hkg' }, { destRegion: 'gz' }] },
  });
  assert.deepEqual(res.result.map((r: any) => r.region), ['hkg', 'gz']);
  for (const r of res.result) assert.match(r.snapshotId, /^s-[A-Za-z0-9]{8}$/);
  // A retry with the same token returns the same ids and starts nothing new.
  const again = await send(bj, 'PUT', `/v2/snapshot/remote_copy/${snapshotId}`, {
    params: { clientToken: 'copy-1' },
    body: { destRegionInfos: [{ name: 'to-hkg', destRegion: 'hkg' }, { destRegion: 'gz' }] },
  });
  assert.deepEqual(again.result, res.result);
  assert.deepEqual(
    await sendError(bj, 'PUT', `/v2/snapshot/remote_copy/${snapshotId}`, { params: { clientToken: 'copy-1' }, body: { destRegionInfos: [{ destRegion: 'hkg' }] } }),
    { status: 403, code: 'IdempotentParameterMismatch' },
  );

  const copies: Record<string, string> = {};
  for (const { region, snapshotId: copyId } of res.result) {
    copies[region] = copyId;
    const seen = new Set<string>();
    const copy = await until(async () => {
      const s = (await send(sdk(region), 'GET', `/v2/snapshot/${copyId}`)).snapshot;
      seen.add(s.progress);
      return s.status === 'Available' ? s : null;
    }, 300_000, `copy in ${region}`);
    assert.equal(copy.progress, '100');
    assert.equal(copy.sizeInGB, 1);
    assert.equal(copy.volumeId, '');
    assert.equal(copy.sourceRegion, 'bj');
    assert.equal(copy.sourceSnapshotId, snapshotId);
    assert.equal(copy.name, region === 'hkg' ? 'to-hkg' : 'repl-1');
    for (const p of seen) assert.ok(Number(p) >= 0 && Number(p) <= 100);
  }
  // Nothing was sent twice: each destination got each distinct non-zero chunk of the disk exactly once
  // (the text stripes repeat one chunk; the disk is the image zero-padded to 1 GiB).
  const distinct = await distinctChunksOf(image.path, GiB);
  for (const dest of ['hkg', 'gz']) {
    assert.equal(await metric(server.urls.bj!, 'snapferry_replication_chunks_sent_total', { destination: dest }), distinct, `chunks sent to ${dest}`);
    assert.equal(await metric(server.urls[dest]!, 'snapferry_incoming_chunks_received_total', { result: 'stored' }), distinct, `chunks stored by ${dest}`);
  }
  // Text ranges compress: fewer bytes on the wire than the data itself.
  const wire = await metric(server.urls.bj!, 'snapferry_replication_bytes_sent_total', { destination: 'hkg' });
  assert.ok(wire < image.dataBytes, `wire ${wire} should be below the ${image.dataBytes} data bytes`);
  // Compression at rest (CS-4): the text chunks are kept as zstd frames where they were captured
  // and where they were copied to (the destination keeps the frame it received); the restores
  // below read them back bit-identical.
  for (const region of ['bj', 'hkg', 'gz']) {
    const packed = await packedChunkFiles(join(server.dataDir, region, 'chunks'));
    assert.ok(packed >= 1, `${region} keeps its text chunks packed (${packed} .zst files)`);
  }

  for (const region of ['hkg', 'gz']) {
    const c = sdk(region);
    const [restored] = (await send(c, 'POST', '/v2/volume', { body: { snapshotId: copies[region] } })).volumeIds;
    const v = await waitVolume(c, restored);
    assert.equal(v.sourceSnapshotId, copies[region]);
    assert.equal(await exportSha(region, restored), imageSha, `restored disk in ${region} differs`);
  }
  Object.assign(state, { volumeId, snapshotId, copies });
});

test('after a 1% change the next copy sends about 1% (at most 1.2x the changed bytes)', async () => {
  assert.ok(state.volumeId, 'needs the first test');
  const bj = sdk('bj');
  const raw = new BceClient(server.urls.bj!, { accessKeyId: AK, secretAccessKey: SK });
  const changed = 10 * MiB; // ~1% of 1 GiB, in 10 scattered 1 MiB writes of fresh random data
  for (let i = 0; i < 10; i++) {
    await raw.json({ method: 'PUT', path: `/v2/volume/${state.volumeId}/data`, query: { offset: String((i * 97 + 13) * MiB) }, body: randomBytes(MiB) });
  }
  await raw.close();
  const { snapshotId } = await send(bj, 'POST', '/v2/snapshot', { body: { volumeId: state.volumeId, snapshotName: 'repl-2' } });
  await waitSnapshot(bj, snapshotId);
  const before = await metric(server.urls.bj!, 'snapferry_replication_bytes_sent_total', { destination: 'hkg' });
  const { result } = await send(bj, 'PUT', `/v2/snapshot/remote_copy/${snapshotId}`, { body: { destRegionInfos: [{ destRegion: 'hkg' }] } });
  await waitSnapshot(sdk('hkg'), result[0].snapshotId, 120_000);
  const sent = (await metric(server.urls.bj!, 'snapferry_replication_bytes_sent_total', { destination: 'hkg' })) - before;
  assert.ok(sent > 0.9 * changed && sent <= 1.2 * changed, `sent ${sent} bytes for ${changed} changed`);
  state.copies!.hkg2 = result[0].snapshotId;
});

test('copying hkg -> bj back sends nothing: bj already holds every chunk', async () => {
  const copyId = state.copies!.hkg2!;
  const hkg = sdk('hkg');
  const { result } = await send(hkg, 'PUT', `/v2/snapshot/remote_copy/${copyId}`, { body: { destRegionInfos: [{ destRegion: 'bj', name: 'back-home' }] } });
  const back = await waitSnapshot(sdk('bj'), result[0].snapshotId);
  assert.equal(back.sourceRegion, 'hkg');
  assert.equal(await metric(server.urls.hkg!, 'snapferry_replication_chunks_sent_total', { destination: 'bj' }), 0);
  assert.ok((await metric(server.urls.hkg!, 'snapferry_replication_chunks_skipped_total', { destination: 'bj' })) > 0);
  // A copy of a copy is a real snapshot: it restores.
  const [v] = (await send(sdk('bj'), 'POST', '/v2/volume', { body: { snapshotId: result[0].snapshotId } })).volumeIds;
  await waitVolume(sdk('bj'), v);
});

test('error cases of remote copy answer the documented codes', async () => {
  const bj = sdk('bj');
  const id = state.snapshotId!;
  const cases: Array<[unknown, number, string]> = [
    [{ destRegionInfos: [] }, 409, 'OperationDenied'],
    [{ destRegionInfos: [{ destRegion: 'bj' }] }, 409, 'OperationDenied'],
    [{ destRegionInfos: [{ destRegion: 'sin' }] }, 409, 'OperationDenied'],
    [{ destRegionInfos: [{ destRegion: 'mars' }] }, 409, 'OperationDenied'],
    [{ destRegionInfos: [{ destRegion: 'hkg' }, { destRegion: 'hkg' }] }, 409, 'OperationDenied'],
    [{ destRegionInfos: [{ destRegion: 'hkg', name: '9-bad-name' }] }, 409, 'OperationDenied'],
    [{}, 400, 'InappropriateJSON'],
    [{ destRegionInfos: 'hkg' }, 400, 'InappropriateJSON'],
    [{ destRegionInfos: [{ name: 'x' }] }, 400, 'InappropriateJSON'],
  ];
  for (const [body, status, code] of cases) {
    assert.deepEqual(await sendError(bj, 'PUT', `/v2/snapshot/remote_copy/${id}`, { body }), { status, code }, JSON.stringify(body));
  }
  assert.deepEqual(await sendError(bj, 'PUT', '/v2/snapshot/remote_copy/s-nothere1', { body: { destRegionInfos: [{ destRegion: 'hkg' }] } }), { status: 404, code: 'NoSuchObject' });
  const notJson = await fetch(`${server.urls.bj}/v2/snapshot/remote_copy/${id}`, { method: 'PUT', body: '{' });
  assert.equal(notJson.status, 403); // unsigned: refused before the body is read
});

test('the CLI copies to several regions with --wait, printing progress lines per destination', async () => {
  const r = await runCli(['snapshot', 'copy', state.snapshotId!, '--to', 'hkg,gz', '--name', 'cli-copy', '--wait'], env('bj'));
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stderr, /hkg s-[A-Za-z0-9]{8}: 100%/);
  assert.match(r.stderr, /gz s-[A-Za-z0-9]{8}: 100%/);
  const lines = r.stdout.trim().split('\n');
  assert.equal(lines.length, 2);
  for (const line of lines) {
    const m = /^(hkg|gz): (s-[A-Za-z0-9]{8}) Available$/.exec(line);
    assert.ok(m, line);
    const copy = (await send(sdk(m[1]!), 'GET', `/v2/snapshot/${m[2]}`)).snapshot;
    assert.equal(copy.status, 'Available');
    assert.equal(copy.name, 'cli-copy');
  }
  // A failure is reported with the server's code and a non-zero exit.
  const bad = await runCli(['snapshot', 'copy', state.snapshotId!, '--to', 'bj'], env('bj'));
  assert.equal(bad.code, 1);
  assert.match(bad.stderr, /^error: OperationDenied: /m);
});

/** `.zst` chunk files under a local chunk store's fan-out directories. */
async function packedChunkFiles(root: string): Promise<number> {
  let n = 0;
  for (const dir of await readdir(root)) {
    if (dir.length !== 2) continue;
    for (const name of await readdir(join(root, dir))) if (name.endsWith('.zst')) n++;
  }
  return n;
}
