/**
 * Where the direct-I/O tests run: a directory on the test directory's file system, and one on
 * tmpfs (/dev/shm) where there is one, whose O_DIRECT the code must get right or fall back from
 * with the same answer. Made before the file's tests, removed after them.
 */
import { after, before } from 'node:test';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** The directories (filled in by the `before` hook this registers); `name` goes into their names. */
export function directIoDirs(name: string): string[] {
  const dirs: string[] = [];
  before(async () => {
    dirs.push(await mkdtemp(join(tmpdir(), `snapferry-${name}-`)));
    if (existsSync('/dev/shm')) dirs.push(await mkdtemp(`/dev/shm/snapferry-${name}-`));
  });
  after(async () => {
    for (const d of dirs) await rm(d, { recursive: true, force: true });
  });
  return dirs;
}
