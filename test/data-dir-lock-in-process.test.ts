/**
 * One process per data dir, in-process and fast (the spawned-process races are in
 * data-dir-lock.test.ts): a second server on the same data dir, by the same path or another one,
 * is refused while the first holds the kernel lock, and starts once it is released.
 */
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, symlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { loadServeConfig } from '../src/config.ts';
import { DataDirLockedError } from '../src/lib/data-dir-lock.ts';
import { startServer, type RunningServer } from '../src/main.ts';
import { freePortRange } from './helpers/spawned-server.ts';

const KEYS = { SNAPFERRY_ACCESS_KEY_ID: 'lock-test-ak-0123456789', SNAPFERRY_SECRET_ACCESS_KEY: 'lock-test-sk' };
const dirs: string[] = [];
after(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

test('data-dir lock: a second startServer on the same data dir (also through a symlink) is refused until the first closes', async () => {
  const dataDir = await mkdtemp(join(tmpdir(), 'snapferry-lock-'));
  const other = await mkdtemp(join(tmpdir(), 'snapferry-lock-'));
  dirs.push(dataDir, other);
  const alias = join(other, 'alias');
  await symlink(dataDir, alias);
  const devNull = new Writable({ write: (_c, _e, cb) => cb() });
  const config = async (dir: string) => loadServeConfig({ dataDir: dir, regions: 'bj', port: String(await freePortRange(1)), nbdPort: String(await freePortRange(1)) }, KEYS);
  const first: RunningServer = await startServer(await config(dataDir), devNull);
  let firstOpen = true;
  let again: RunningServer | null = null;
  try {
    for (const dir of [dataDir, alias]) {
      let second: RunningServer | null = null;
      try {
        second = await startServer(await config(dir), devNull);
      } catch (e) {
        assert.ok(e instanceof DataDirLockedError, String(e));
        assert.equal((e as Error).message, `the data dir ${dir} is in use by another snapferry process`);
      }
      if (second) {
        await second.close();
        assert.fail(`a second server started on ${dir} while the first held it`);
      }
    }
    await first.close();
    firstOpen = false;
    again = await startServer(await config(dataDir), devNull);
  } finally {
    if (firstOpen) await first.close();
    await again?.close();
  }
});
