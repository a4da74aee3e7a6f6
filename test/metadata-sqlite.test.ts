import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import Database from 'better-sqlite3';
import { SqliteMetadataStore } from '../src/metadata/sqlite/sqlite-metadata-store.ts';
import { MIGRATIONS } from '../src/metadata/sqlite/migrations.ts';
import { metadataContract, volume } from './helpers/metadata-contract.ts';

metadataContract('SQLite', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'snapferry-meta-'));
  const store = new SqliteMetadataStore(join(dir, 'meta.db'));
  return { store, cleanup: async () => { await store.close(); await rm(dir, { recursive: true, force: true }); } };
});

test('SQLite: data survives reopening; a database from a newer program is refused', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'snapferry-meta-'));
  try {
    const file = join(dir, 'meta.db');
    const v = volume();
    const first = new SqliteMetadataStore(file);
    await first.volumes.insertIfAbsent(v);
    await first.close();
    const second = new SqliteMetadataStore(file);
    assert.deepEqual(await second.volumes.getAny(v.id), v);
    assert.equal(second.shared, false, 'one process owns a SQLite store');
    await second.close();
    const raw = new Database(file);
    raw.prepare('INSERT INTO schema_migrations (version, applied_at) VALUES (999, 0)').run();
    raw.close();
    assert.throws(() => new SqliteMetadataStore(file), /schema version 999 is newer/);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('SQLite: a database written by schema version 1 is brought forward and keeps its data', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'snapferry-meta-'));
  try {
    const file = join(dir, 'meta.db');
    // A region database as the first release left it: only migration 1, one incoming copy in flight.
    const old = new Database(file);
    old.exec('CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)');
    old.exec(MIGRATIONS.find((m) => m.version === 1)!.sql);
    old.prepare('INSERT INTO schema_migrations (version, applied_at) VALUES (1, 0)').run();
    old.prepare(
      `INSERT INTO snapshots (id, account_id, name, desc, volume_id, size_gb, create_time, status, create_method, progress, storage_type, tags, source_region, source_snapshot_id)
       VALUES ('s-old00001', 'acct', 'old', '', '', 1, 1000, 'Creating', 'MANUAL', 40, 'hp1', '[]', 'gz', 's-gz000001')`,
    ).run();
    old.prepare(
      `INSERT INTO volumes (id, account_id, name, desc, size_gb, storage_type, zone_name, create_time, status, source_snapshot_id, tags)
       VALUES ('v-old00001', 'acct', 'old', '', 1, 'hp1', 'cn-bj-a', 1000, 'Available', NULL, '[]')`,
    ).run();
    old.prepare("INSERT INTO jobs (kind, key, grp, payload, state, run_after, created_at, updated_at) VALUES ('k', 'old-job', 'g', '{}', 'queued', 0, 0, 0)").run();
    old.close();
    const store = new SqliteMetadataStore(file);
    try {
      assert.equal((await store.snapshots.getAny('s-old00001'))?.progress, 40);
      assert.deepEqual((await store.snapshots.listSilentIncoming(2000)).map((s) => s.id), ['s-old00001']);
      await store.snapshots.touch('s-old00001', 5000);
      assert.deepEqual(await store.snapshots.listSilentIncoming(2000), []);
      // Version 5: a job from before has token 0 and no node; the first claim issues token 1.
      const job = (await store.jobs.getByKey('old-job'))!;
      assert.deepEqual([job.leaseToken, job.node], [0, null]);
      const claimed = (await store.jobs.claim(['k'], 'w', Date.now(), 1000, () => 1, 'storage-a'))!;
      assert.deepEqual([claimed.key, claimed.leaseToken], ['old-job', 1]);
      await store.jobs.finish(claimed.id, 1, 'done', null);
      const v = (await store.volumes.getAny('v-old00001'))!;
      assert.equal(v.storageNode, undefined);
      assert.deepEqual(await store.volumes.countByNode(), {});
      assert.equal(await store.locks.tryAcquire('gc', 'p', 1, 1000), true);
      assert.deepEqual(await store.integrityCheck(), []);
    } finally {
      await store.close();
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
