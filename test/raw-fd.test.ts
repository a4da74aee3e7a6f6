/**
 * A file opened past the page cache that the file system refuses a direct transfer on (EINVAL:
 * an unaligned buffer here; on some file systems any direct transfer) still gets its bytes
 * through: PerhapsDirectFile reopens it buffered, without re-creating or emptying it.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { constants } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { O_DIRECT, PerhapsDirectFile, writeFd } from '../src/lib/raw-fd.ts';

const WRITE_NEW = constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL;

test('a direct write refused as unaligned goes on buffered into the file it created', { skip: O_DIRECT === 0 && 'no O_DIRECT here' }, async () => {
  const dir = await mkdtemp(join(tmpdir(), 'snapferry-rawfd-'));
  try {
    const path = join(dir, 'new');
    const file = await PerhapsDirectFile.open(path, WRITE_NEW, true);
    assert.equal(file.direct, true, 'the test directory takes O_DIRECT at open');
    // One byte past a page boundary and an odd length: no file system takes that past its cache.
    const data = Buffer.concat([Buffer.alloc(1), randomBytes(12_345)]).subarray(1);
    let wrote = 0;
    let fellBack = 0;
    try {
      while (wrote < data.length) {
        try {
          wrote += await writeFd(file.fd, data, wrote, data.length - wrote, wrote);
        } catch (err) {
          if (!(await file.fellBackFrom(err))) throw err;
          fellBack++;
        }
      }
    } finally {
      file.close();
    }
    assert.equal(fellBack, 1, 'one refusal, then buffered');
    assert.equal(file.direct, false);
    assert.equal(file.fd, -1, 'closed');
    assert.ok((await readFile(path)).equals(data), 'every byte arrived, in a file opened again rather than created again');
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('any other failure is not a reason to fall back, and a buffered file never does', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'snapferry-rawfd-'));
  try {
    const direct = await PerhapsDirectFile.open(join(dir, 'a'), WRITE_NEW, true);
    const eio = Object.assign(new Error('EIO'), { code: 'EIO' });
    assert.equal(await direct.fellBackFrom(eio), false);
    const fd = direct.fd;
    assert.ok(fd >= 0, 'still open');
    direct.close();
    direct.close(); // twice is harmless: the number is forgotten at the first
    const buffered = await PerhapsDirectFile.open(join(dir, 'b'), WRITE_NEW, false);
    assert.equal(buffered.direct, false);
    assert.equal(await buffered.fellBackFrom(Object.assign(new Error('EINVAL'), { code: 'EINVAL' })), false);
    buffered.close();
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
