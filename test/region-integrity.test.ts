/**
 * `snapferry check` (services/region-integrity.ts, MetadataStore.integrityCheck): a sound region
 * passes; each kind of damage a crash or a bug could leave is reported, by a spawned server through
 * the real CLI (exit code 3, --json), with the damage made by hand in the data dir.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtemp, open, readdir, rm, unlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { BceClient } from '../src/lib/bce-client.ts';
import { SqliteMetadataStore } from '../src/metadata/sqlite/sqlite-metadata-store.ts';
import { runCli } from './helpers/cli.ts';
import { snapshot, volume } from './helpers/metadata-contract.ts';
import { sdkClient, send, waitSnapshot, waitVolume, type SdkClient } from './helpers/sdk.ts';
import { spawnServer, type SpawnedServer } from './helpers/spawned-server.ts';

const AK = 'check-access-key-0000000';
const SK = 'check-secret-key-1111111';
const MiB = 1 << 20;
const keys = { SNAPFERRY_ACCESS_KEY_ID: AK, SNAPFERRY_SECRET_ACCESS_KEY: SK, SNAPFERRY_REGION_SECRET: 'check-region-secret-2222' };

let server: SpawnedServer;
let bj: SdkClient;

before(async () => {
  server = await spawnServer({ regions: ['bj'], env: keys });
  bj = sdkClient(server.urls.bj!, AK, SK);
});
after(async () => {
  await server?.dispose();
});

async function check(): Promise<{ code: number | null; report: any; text: string }> {
  const json = await runCli(['check', '--endpoint', server.urls.bj!, '--json'], keys);
  const human = await runCli(['check', '--endpoint', server.urls.bj!], keys);
  assert.equal(human.code, json.code, human.stderr);
  return { code: json.code, report: JSON.parse(json.stdout), text: human.stdout };
}

/** A disk with `blocks` (one per MiB, at 2 MiB steps) and a snapshot of it. */
async function diskAndSnapshot(blocks: Buffer[]): Promise<{ volumeId: string; snapshotId: string }> {
  const [volumeId] = (await send(bj, 'POST', '/v2/volume', { body: { cdsSizeInGB: 1 } })).volumeIds;
  await waitVolume(bj, volumeId);
  const raw = new BceClient(server.urls.bj!, { accessKeyId: AK, secretAccessKey: SK });
  for (const [i, b] of blocks.entries()) await raw.json({ method: 'PUT', path: `/v2/volume/${volumeId}/data`, query: { offset: String(i * 2 * MiB) }, body: b });
  await raw.close();
  const { snapshotId } = await send(bj, 'POST', '/v2/snapshot', { body: { volumeId, snapshotName: 'checked' } });
  await waitSnapshot(bj, snapshotId);
  return { volumeId, snapshotId };
}

/** The file that holds blob `id` under a chunk-store root (whatever its fan-out). */
async function blobFile(root: string, id: string): Promise<string> {
  for (const entry of await readdir(root, { recursive: true, withFileTypes: true })) {
    if (entry.isFile() && entry.name === id) return join(entry.parentPath ?? (entry as any).path, entry.name);
  }
  throw new Error(`no file for ${id} under ${root}`);
}

const block = (seed: string): Buffer => {
  const out = Buffer.alloc(MiB);
  for (let at = 0; at < MiB; at += 32) createHash('sha256').update(`${seed}:${at}`).digest().copy(out, at);
  return out;
};
const idOf = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

test('a sound region passes: exit 0, every chunk of every Available snapshot read and hashed', async () => {
  await diskAndSnapshot([block('a'), block('b'), block('a')]);
  const { code, report, text } = await check();
  assert.equal(code, 0, JSON.stringify(report));
  assert.deepEqual(report.problems, []);
  assert.equal(report.snapshotsChecked, 1);
  assert.equal(report.chunksChecked, 2, 'a chunk repeated in a manifest is read once');
  assert.equal(report.bytesChecked, 2 * MiB);
  assert.match(text, /no problems found/);
});

test('a missing chunk, a damaged chunk and a missing manifest are reported (exit 3); they name the snapshot', async () => {
  const gone = block('gone');
  const bad = block('bad');
  const { volumeId, snapshotId } = await diskAndSnapshot([gone, bad, block('kept')]);
  await unlink(await blobFile(join(server.dataDir, 'bj', 'chunks'), idOf(gone)));
  const fh = await open(await blobFile(join(server.dataDir, 'bj', 'chunks'), idOf(bad)), 'r+');
  await fh.write(Buffer.from([0x5a]), 0, 1, 4242);
  await fh.close();
  let { code, report, text } = await check();
  assert.equal(code, 3, JSON.stringify(report));
  assert.ok(report.problems.some((p: string) => p.includes(snapshotId) && p.includes('missing') && p.includes(idOf(gone))), report.problems.join('\n'));
  assert.ok(report.problems.some((p: string) => p.includes(snapshotId) && p.includes('do not hash') && p.includes(idOf(bad))), report.problems.join('\n'));
  assert.match(text, /PROBLEMS \(\d+\)/);

  const other = await diskAndSnapshot([block('c')]);
  const db = new Database(join(server.dataDir, 'bj', 'meta.db'));
  const manifestId = db.prepare('SELECT manifest_id FROM snapshots WHERE id = ?').pluck().get(other.snapshotId) as string;
  db.close();
  await unlink(await blobFile(join(server.dataDir, 'bj', 'manifests'), manifestId));
  ({ code, report } = await check());
  assert.equal(code, 3);
  assert.ok(report.problems.some((p: string) => p.includes(other.snapshotId) && p.includes(`manifest ${manifestId} is missing`)), report.problems.join('\n'));
  // The disk's base names the same manifest: the next snapshot of it would build on a manifest that is gone.
  assert.ok(report.problems.some((p: string) => p.includes(`base of disk ${other.volumeId}`)), report.problems.join('\n'));
  for (const s of [snapshotId, other.snapshotId]) await send(bj, 'DELETE', `/v2/snapshot/${s}`);
  for (const v of [volumeId, other.volumeId]) await send(bj, 'DELETE', `/v2/volume/${v}`);
});

test('every record naming a manifest with a missing chunk is reported: two snapshots of an unchanged disk and its base', async () => {
  const lost = block('shared-manifest');
  const { volumeId, snapshotId } = await diskAndSnapshot([lost]);
  const { snapshotId: again } = await send(bj, 'POST', '/v2/snapshot', { body: { volumeId, snapshotName: 'again' } });
  await waitSnapshot(bj, again);
  await unlink(await blobFile(join(server.dataDir, 'bj', 'chunks'), idOf(lost)));
  const { code, report } = await check();
  assert.equal(code, 3);
  for (const who of [`snapshot ${snapshotId}`, `snapshot ${again}`, `base of disk ${volumeId}`]) {
    assert.ok(report.problems.some((p: string) => p.startsWith(who) && p.includes(`missing (first: ${idOf(lost)})`)), `${who}:\n${report.problems.join('\n')}`);
  }
  for (const s of [snapshotId, again]) await send(bj, 'DELETE', `/v2/snapshot/${s}`);
  await send(bj, 'DELETE', `/v2/volume/${volumeId}`);
});

test('cross-row rules: Available without a manifest, a running job without a lease, a stuck Creating snapshot, a disk without files', async () => {
  const first = await diskAndSnapshot([block('d')]);
  const vanished = await diskAndSnapshot([block('e')]);
  await send(bj, 'DELETE', `/v2/snapshot/${vanished.snapshotId}`);
  let { code, report } = await check();
  assert.equal(code, 0, report.problems.join('\n'));
  const before = new Set<string>(report.problems);

  const db = new Database(join(server.dataDir, 'bj', 'meta.db'));
  db.pragma('busy_timeout = 5000');
  db.prepare('UPDATE snapshots SET manifest_id = NULL WHERE id = ?').run(first.snapshotId);
  db.prepare(
    `INSERT INTO jobs (kind, key, grp, payload, state, attempts, run_after, lease_owner, lease_until, created_at, updated_at)
     VALUES ('volume.create', 'chaos-test-orphan', 'volume', '{}', 'running', 1, 0, NULL, NULL, 0, 0)`,
  ).run();
  db.prepare("UPDATE snapshots SET status = 'Creating', deleted_at = NULL WHERE id = ?").run(vanished.snapshotId);
  db.close();
  const disks = join(server.dataDir, 'bj', 'disks');
  for (const name of await readdir(disks)) if (name.startsWith(vanished.volumeId)) await rm(join(disks, name), { recursive: true, force: true });

  ({ code, report } = await check());
  assert.equal(code, 3);
  const fresh = report.problems.filter((p: string) => !before.has(p));
  const has = (re: RegExp): boolean => fresh.some((p: string) => re.test(p));
  assert.ok(has(new RegExp(`snapshot ${first.snapshotId} is Available without a manifest id`)), fresh.join('\n'));
  assert.ok(has(/job \d+ \(chaos-test-orphan\) is running without a lease/), fresh.join('\n'));
  assert.ok(has(new RegExp(`snapshot ${vanished.snapshotId} is Creating but no capture job`)), fresh.join('\n'));
  assert.ok(has(new RegExp(`volume ${vanished.volumeId} is Available but its disk files are missing`)), fresh.join('\n'));
});

test('MetadataStore.integrityCheck (SQLite): sound is []; each broken rule is one line naming the row', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'snapferry-integrity-'));
  const file = join(dir, 'meta.db');
  const store = new SqliteMetadataStore(file);
  try {
    const v = volume();
    await store.volumes.insertIfAbsent(v);
    const s = snapshot({ volumeId: v.id, status: 'Available', progress: 100, manifestId: 'a'.repeat(64) });
    await store.snapshots.insertIfAbsent(s);
    await store.diskBases.set(v.id, 'a'.repeat(64), 1);
    await store.jobs.enqueue({ kind: 'k', key: 'k1', group: 'g', payload: {} });
    assert.deepEqual(await store.integrityCheck(), []);

    const raw = new Database(file);
    raw.prepare("UPDATE snapshots SET progress = 40, manifest_id = 'not-hex' WHERE id = ?").run(s.id);
    raw.prepare("UPDATE volumes SET status = 'Melting' WHERE id = ?").run(v.id);
    raw.prepare("UPDATE jobs SET state = 'running', lease_owner = NULL WHERE key = 'k1'").run();
    raw.prepare("INSERT INTO disk_bases (volume_id, manifest_id, generation) VALUES ('v-gone0000', NULL, 0)").run();
    raw.close();
    const problems = await store.integrityCheck();
    assert.deepEqual(problems.sort(), [
      `metadata: disk base of v-gone0000, a disk that does not exist (a garbage-collection root that never goes away)`,
      `metadata: job 1 (k1) is running without a lease`,
      `metadata: snapshot ${s.id} is Available with progress 40, not 100`,
      `metadata: snapshot ${s.id} names a malformed manifest id "not-hex"`,
      `metadata: volume ${v.id} has an unknown status "Melting"`,
    ].sort());
  } finally {
    await store.close();
    await rm(dir, { recursive: true, force: true });
  }
});

test('the admin check refuses a tenant\'s keys', async () => {
  const tenant = new BceClient(server.urls.bj!, { accessKeyId: AK, secretAccessKey: SK });
  await assert.rejects(tenant.json({ method: 'POST', path: '/internal/v1/admin/check' }), (e: any) => e.status === 403);
  await tenant.close();
});
