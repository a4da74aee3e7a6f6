import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import Database from 'better-sqlite3';
import { SqliteMetadataStore } from '../src/metadata/sqlite/sqlite-metadata-store.ts';
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
    await second.close();
    const raw = new Database(file);
    raw.prepare('INSERT INTO schema_migrations (version, applied_at) VALUES (999, 0)').run();
    raw.close();
    assert.throws(() => new SqliteMetadataStore(file), /schema version 999 is newer/);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
