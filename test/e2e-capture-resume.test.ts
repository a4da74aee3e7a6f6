/**
 * A long snapshot capture keeps its progress (docs/design.md, "Write order and crash safety"): it
 * stores a checkpoint (the manifest so far and the index below which every chunk is captured) every
 * CHECKPOINT_MIN_BYTES read, so after a kill -9 the rerun reads only what lies past its last
 * checkpoint, and the snapshot still restores bit-identical.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import Database from 'better-sqlite3';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { cliJson } from './helpers/cli.ts';
import { metric } from './helpers/metrics.ts';
import { sdkClient, send, until, waitSnapshot, waitVolume, type SdkClient } from './helpers/sdk.ts';
import { spawnServer, type SpawnedServer } from './helpers/spawned-server.ts';
import { makeImage, sha256Of } from './helpers/test-image.ts';
import { CHECKPOINT_MIN_BYTES } from '../src/repository/capture.ts';

const AK = 'resume-access-key-0000000';
const SK = 'resume-secret-key-1111111';
const GiB = 1024 ** 3;
const MiB = 1 << 20;

let server: SpawnedServer;
let work: string;
let bj: SdkClient;
let env: Record<string, string>;

before(async () => {
  work = await mkdtemp(join(tmpdir(), 'snapferry-resume-'));
  server = await spawnServer({ regions: ['bj'], env: { SNAPFERRY_ACCESS_KEY_ID: AK, SNAPFERRY_SECRET_ACCESS_KEY: SK } });
  env = { SNAPFERRY_ACCESS_KEY_ID: AK, SNAPFERRY_SECRET_ACCESS_KEY: SK, SNAPFERRY_ENDPOINT: server.urls.bj! };
  bj = sdkClient(server.urls.bj!, AK, SK);
});
after(async () => {
  await server?.dispose();
  if (work) await rm(work, { recursive: true, force: true });
});

interface CaptureJobState {
  state: string;
  checkpoint: { manifestId: string; doneBelow: number } | null;
}

/** The capture job's row, read from the region's database while the server runs (WAL allows it). */
function captureJob(snapshotId: string): CaptureJobState | null {
  const db = new Database(join(server.dataDir, 'bj', 'meta.db'), { readonly: true, fileMustExist: true });
  try {
    const row = db.prepare('SELECT state, progress FROM jobs WHERE key = ?').get(`snapshot.create:${snapshotId}`) as { state: string; progress: string | null } | undefined;
    if (!row) return null;
    const progress = row.progress ? JSON.parse(row.progress) : null;
    return { state: row.state, checkpoint: progress?.checkpoint ?? null };
  } finally {
    db.close();
  }
}

test('a capture killed after a checkpoint resumes from it: the rerun reads only past it, and the snapshot restores bit-identical', async () => {
  const image = await makeImage(join(work, 'big.img'), 2 * GiB, `resume-${Date.now()}`);
  const want = await sha256Of(image.path, 2 * GiB);
  const [volumeId] = (await send(bj, 'POST', '/v2/volume', { body: { cdsSizeInGB: 2 } })).volumeIds;
  await waitVolume(bj, volumeId);
  await cliJson(['volume', 'import', volumeId, image.path], env);
  const { snapshotId } = await send(bj, 'POST', '/v2/snapshot', { body: { volumeId, snapshotName: 'long' } });
  // Kill inside the window that matters: the job is running and has stored a checkpoint.
  const atKill = await until(async () => {
    const job = captureJob(snapshotId);
    return job?.state === 'running' && job.checkpoint ? job : null;
  }, 120_000, 'a capture checkpoint');
  await server.crash();
  const db = new Database(join(server.dataDir, 'bj', 'meta.db'), { readonly: true });
  const snapAtKill = db.prepare('SELECT status FROM snapshots WHERE id = ?').pluck().get(snapshotId);
  db.close();
  assert.equal(snapAtKill, 'Creating', 'the kill landed before the capture finished');
  assert.ok(atKill.checkpoint!.doneBelow * MiB >= CHECKPOINT_MIN_BYTES / 2, `checkpoint at chunk ${atKill.checkpoint!.doneBelow}`);

  await server.restart();
  await waitSnapshot(bj, snapshotId, 180_000);
  const reread = await metric(server.urls.bj!, 'snapferry_snapshot_bytes_read_total');
  // Everything below the checkpoint is skipped; at most the rest of the 2 GiB disk is read again
  // (after a crash every chunk of a segment that holds data counts as written: zeros included).
  const rest = 2 * GiB - atKill.checkpoint!.doneBelow * MiB;
  assert.ok(reread <= rest, `the rerun read ${reread / MiB} MiB, the part past the checkpoint is ${rest / MiB} MiB`);

  const [restored] = (await send(bj, 'POST', '/v2/volume', { body: { cdsSizeInGB: 2, snapshotId } })).volumeIds;
  await waitVolume(bj, restored, 180_000);
  const out = join(work, 'restored.img');
  await cliJson(['volume', 'export', restored, out], env);
  assert.equal(await sha256Of(out, 2 * GiB), want);
});
