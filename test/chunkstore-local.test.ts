import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import * as fsp from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { ChunkIntegrityError, ChunkNotFoundError } from '../src/chunkstore/chunk-store.ts';
import { ChunksLostError } from '../src/chunkstore/chunk-store.ts';
import { type FaultPoint, LocalDirChunkStore, type LocalDirStoreOptions } from '../src/chunkstore/local-dir-store.ts';
import { alignedSharedMemory } from '../src/lib/aligned-memory.ts';
import { PathProbe } from '../src/lib/path-probe.ts';
import { Sha256Pool } from '../src/lib/sha256-pool.ts';
import { blob, chunkStoreContract, compressible, frameOf, sha256 } from './helpers/chunkstore-contract.ts';

async function tempRoot(): Promise<string> {
  return fsp.mkdtemp(join(tmpdir(), 'snapferry-chunkstore-'));
}

/**
 * Flips one byte of whatever file currently holds `id` (its temp file if pending, else the final
 * file in either form), at `at` (default the first byte).
 */
async function corruptIn(root: string, id: string, at = 0): Promise<void> {
  const tmp = (await fsp.readdir(join(root, '.tmp'))).filter((n) => n.startsWith(`${id}.`));
  const plain = join(root, id.slice(0, 2), id);
  const path = tmp.length > 0 ? join(root, '.tmp', tmp[0]!) : existsSync(plain) ? plain : `${plain}.zst`;
  const fh = await fsp.open(path, 'r+');
  try {
    const one = Buffer.alloc(1);
    await fh.read(one, 0, 1, at);
    one[0]! ^= 0x5a;
    await fh.write(one, 0, 1, at);
  } finally {
    await fh.close();
  }
}

async function listIds(store: LocalDirChunkStore): Promise<string[]> {
  const ids: string[] = [];
  for await (const b of store.list()) ids.push(b.id);
  return ids;
}

async function makeLocal(options: LocalDirStoreOptions = {}) {
  const root = await tempRoot();
  const store = await LocalDirChunkStore.open(root, options);
  return {
    root,
    store,
    cleanup: () => fsp.rm(root, { recursive: true, force: true }),
    corrupt: (id: string) => corruptIn(root, id),
  };
}

chunkStoreContract('LocalDirChunkStore', () => makeLocal());

const pool = new Sha256Pool({ size: 2, inlineBelow: 0 });
after(() => pool.close());
chunkStoreContract('LocalDirChunkStore hashing on a Sha256Pool', () => makeLocal({ hasher: (b) => pool.hash(b) }));
// As a server runs it: has/touch batches answered on the probe's workers (every batch of 8 or more ids).
const probe = new PathProbe({ size: 2, inlineBelow: 8 });
after(() => probe.close());
chunkStoreContract('LocalDirChunkStore answering presence on a worker probe', () => makeLocal({ hasher: (b) => pool.hash(b), probe }));

async function tmpFiles(root: string): Promise<string[]> {
  return fsp.readdir(join(root, '.tmp'));
}

function errno(code: string): NodeJS.ErrnoException {
  const e = new Error(`${code}: injected`) as NodeJS.ErrnoException;
  e.code = code;
  return e;
}

describe('LocalDirChunkStore specifics', () => {
  describe('compression at rest (CS-4)', () => {
    it('a blob put with a smaller packed form is kept as root/ab/<id>.zst only, and reads back plain after a reopen', async () => {
      const { root, store, cleanup } = await makeLocal();
      try {
        const c = compressible(1 << 20);
        await store.putHashed(c.id, c.data, c.packed);
        await store.sync();
        const dir = join(root, c.id.slice(0, 2));
        assert.deepEqual(await fsp.readdir(dir), [`${c.id}.zst`]);
        assert.deepEqual(await fsp.readFile(join(dir, `${c.id}.zst`)), c.packed);
        assert.ok(c.packed.length < 20_000, `1 MiB of text takes ${c.packed.length} bytes`);
        const again = await LocalDirChunkStore.open(root);
        assert.deepEqual(await again.get(c.id), c.data);
        assert.equal(await again.verify(c.id), 'ok');
      } finally {
        await cleanup();
      }
    });

    it('a packed form no smaller than the blob is not used; nor any with storePacked: false', async () => {
      const { root, store, cleanup } = await makeLocal();
      const off = await makeLocal({ storePacked: false });
      try {
        const r = blob(300_000);
        await store.putHashed(r.id, r.data, frameOf(r.data)); // random: the frame is larger
        const c = compressible();
        await off.store.putHashed(c.id, c.data, c.packed);
        await store.sync();
        await off.store.sync();
        assert.deepEqual(await fsp.readdir(join(root, r.id.slice(0, 2))), [r.id]);
        assert.deepEqual(await fsp.readdir(join(off.root, c.id.slice(0, 2))), [c.id]);
        assert.equal(off.store.storesPacked, false);
        assert.deepEqual(await off.store.get(c.id), c.data);
      } finally {
        await cleanup();
        await off.cleanup();
      }
    });

    it('a byte flipped inside a stored frame is caught: get throws ChunkIntegrityError, verify names the hash, scrub-style delete then a put heals it', async () => {
      const { root, store, cleanup } = await makeLocal();
      try {
        const c = compressible(1 << 20);
        await store.putHashed(c.id, c.data, c.packed);
        await store.sync();
        // Past the frame header: zstd frames carry no checksum by default, so this decodes to other
        // bytes (or fails to decode); either way only the re-hash after decoding can tell.
        await corruptIn(root, c.id, Math.floor(c.packed.length / 2));
        await assert.rejects(store.get(c.id), (e: unknown) => e instanceof ChunkIntegrityError && e.id === c.id);
        const verdict = await store.verify(c.id);
        assert.ok(typeof verdict === 'object' && verdict.actual !== c.id);
        await store.delete(c.id);
        await store.putHashed(c.id, c.data, c.packed);
        await store.sync();
        assert.deepEqual(await store.get(c.id), c.data);
      } finally {
        await cleanup();
      }
    });

    it('a damaged plain file (wrong size) is replaced by a packed put: one form is left, and it reads back', async () => {
      const { root, store, cleanup } = await makeLocal();
      try {
        const c = compressible();
        await store.putHashed(c.id, c.data);
        await store.sync();
        const plain = join(root, c.id.slice(0, 2), c.id);
        await fsp.truncate(plain, 100);
        assert.equal(await store.putHashed(c.id, c.data, c.packed), true, 'the damaged file is not trusted');
        await store.sync();
        assert.deepEqual(await fsp.readdir(join(root, c.id.slice(0, 2))), [`${c.id}.zst`]);
        assert.deepEqual(await store.get(c.id), c.data);
        assert.deepEqual([...(await listIds(store))], [c.id]);
      } finally {
        await cleanup();
      }
    });

    it('a store written before compression at rest (plain files) is read as it is, and a packed put of a chunk it holds stores nothing', async () => {
      const { root, store, cleanup } = await makeLocal();
      try {
        const c = compressible();
        await store.putHashed(c.id, c.data, null);
        await store.sync();
        assert.equal(await store.putHashed(c.id, c.data, c.packed), false);
        await store.sync();
        assert.deepEqual(await fsp.readdir(join(root, c.id.slice(0, 2))), [c.id]);
        assert.deepEqual(await store.get(c.id), c.data);
      } finally {
        await cleanup();
      }
    });

    it('GC-2 holds for packed blobs: a put or touch refreshes the .zst file, deleteIfUnusedSince honours it', async () => {
      const { root, store, cleanup } = await makeLocal();
      try {
        const c = compressible();
        await store.putHashed(c.id, c.data, c.packed);
        await store.sync();
        const path = join(root, c.id.slice(0, 2), `${c.id}.zst`);
        const old = new Date(Date.now() - 3_600_000);
        await fsp.utimes(path, old, old);
        const cutoff = Date.now() - 60_000;
        assert.deepEqual(await store.touch([c.id]), new Set([c.id]));
        assert.equal(await store.deleteIfUnusedSince(c.id, cutoff), false, 'touched after the cutoff: kept');
        await fsp.utimes(path, old, old);
        assert.equal(await store.putHashed(c.id, c.data, c.packed), false);
        assert.equal(await store.deleteIfUnusedSince(c.id, cutoff), false, 'put after the cutoff: kept');
        await fsp.utimes(path, old, old);
        assert.equal(await store.deleteIfUnusedSince(c.id, cutoff), true);
        assert.equal(existsSync(path), false);
      } finally {
        await cleanup();
      }
    });
  });

  it('creates the 256 fan-out directories and .tmp on open', async () => {
    const { root, cleanup } = await makeLocal();
    try {
      const names = await fsp.readdir(root);
      assert.equal(names.filter((n) => /^[0-9a-f]{2}$/.test(n)).length, 256);
      assert.ok(names.includes('.tmp'));
    } finally {
      await cleanup();
    }
  });

  it('open removes leftovers in .tmp (a crash before sync) and keeps synced chunks', async () => {
    const root = await tempRoot();
    try {
      const s1 = await LocalDirChunkStore.open(root);
      const kept = blob();
      const lost = blob();
      await s1.put(kept.id, kept.data);
      await s1.sync();
      await s1.put(lost.id, lost.data); // never synced: "crash" now
      await fsp.writeFile(join(root, '.tmp', 'junk'), 'x');
      await fsp.mkdir(join(root, '.tmp', 'subdir'));
      await fsp.writeFile(join(root, '.tmp', 'subdir', 'f'), 'y');

      const s2 = await LocalDirChunkStore.open(root);
      assert.deepEqual(await tmpFiles(root), []);
      assert.deepEqual(await s2.get(kept.id), kept.data);
      await assert.rejects(s2.get(lost.id), ChunkNotFoundError);
      assert.deepEqual(await s2.has([kept.id, lost.id]), new Set([kept.id]));
    } finally {
      await fsp.rm(root, { recursive: true, force: true });
    }
  });

  it('a chunk put but not synced is only in .tmp; after sync it is at root/ab/<id> and .tmp is empty', async () => {
    const { root, store, cleanup } = await makeLocal();
    try {
      const { id, data } = blob(70_000);
      const finalPath = join(root, id.slice(0, 2), id);
      assert.equal(store.finalPath(id), finalPath);
      await store.put(id, data);
      assert.equal(existsSync(finalPath), false);
      const tmp = await tmpFiles(root);
      assert.equal(tmp.length, 1);
      assert.ok(tmp[0]!.startsWith(`${id}.`));
      assert.equal(store.pendingCount, 1);
      await store.sync();
      assert.equal(store.pendingCount, 0);
      assert.deepEqual(await fsp.readFile(finalPath), data);
      assert.deepEqual(await tmpFiles(root), []);
    } finally {
      await cleanup();
    }
  });

  it('concurrent puts of the same id write a single temp file', async () => {
    const { root, store, cleanup } = await makeLocal();
    try {
      const { id, data } = blob(100_000);
      await Promise.all(Array.from({ length: 20 }, () => store.put(id, data)));
      assert.equal((await tmpFiles(root)).length, 1);
      await store.sync();
      assert.deepEqual(await tmpFiles(root), []);
      assert.deepEqual(await fsp.readFile(store.finalPath(id)), data);
    } finally {
      await cleanup();
    }
  });

  it('list ignores files that are not chunks and chunks in the wrong fan-out directory', async () => {
    const { root, store, cleanup } = await makeLocal();
    try {
      const a = blob();
      await store.put(a.id, a.data);
      await store.sync();
      const other = blob().id;
      const wrongDir = other.startsWith('00') ? '01' : '00';
      await fsp.writeFile(join(root, wrongDir, other), 'misplaced');
      await fsp.writeFile(join(root, a.id.slice(0, 2), 'README'), 'not a chunk');
      await fsp.writeFile(join(root, 'stray-file'), 'x');
      const ids: string[] = [];
      for await (const e of store.list()) ids.push(e.id);
      assert.deepEqual(ids, [a.id]);
    } finally {
      await cleanup();
    }
  });

  it('a truncated chunk file fails get with ChunkIntegrityError; put of the right bytes repairs it', async () => {
    const { root, store, cleanup } = await makeLocal();
    try {
      const { id, data } = blob(10_000);
      await store.put(id, data);
      await store.sync();
      await fsp.truncate(store.finalPath(id), 5000);
      await assert.rejects(store.get(id), ChunkIntegrityError);
      assert.deepEqual(await store.verify(id), { actual: sha256(data.subarray(0, 5000)) });
      assert.equal((await store.readUnverified(id)).length, 5000);
      await store.put(id, data); // wrong size on disk: stored again
      assert.deepEqual(await store.get(id), data);
      await store.sync();
      assert.deepEqual(await fsp.readFile(join(root, id.slice(0, 2), id)), data);
      assert.equal(await store.verify(id), 'ok');
      assert.equal(await store.verify(blob().id), 'missing');
    } finally {
      await cleanup();
    }
  });

  it('a write failure (ENOSPC) rejects the put and leaves no file anywhere', async () => {
    const { root, cleanup } = await makeLocal();
    try {
      const store = await LocalDirChunkStore.open(root, {
        faultHook: (op) => {
          if (op === 'write') throw errno('ENOSPC');
        },
      });
      const { id, data } = blob();
      await assert.rejects(store.put(id, data), (e: NodeJS.ErrnoException) => e.code === 'ENOSPC');
      assert.deepEqual(await tmpFiles(root), []);
      assert.equal(existsSync(store.finalPath(id)), false);
      assert.equal((await store.has([id])).size, 0);
      await store.sync();
      assert.equal(existsSync(store.finalPath(id)), false);
    } finally {
      await cleanup();
    }
  });

  it('a failed fsync rejects sync and drops that chunk (never renamed); others are synced', async () => {
    const { root, cleanup } = await makeLocal();
    try {
      const bad = blob();
      const good = Array.from({ length: 5 }, () => blob());
      const store = await LocalDirChunkStore.open(root, {
        faultHook: (op, path) => {
          if (op === 'fsync' && path.includes(bad.id)) throw errno('EIO');
        },
      });
      await store.put(bad.id, bad.data);
      for (const g of good) await store.put(g.id, g.data);
      await assert.rejects(store.sync(), (e: NodeJS.ErrnoException) => e.code === 'EIO');
      assert.equal(existsSync(store.finalPath(bad.id)), false);
      assert.equal((await store.has([bad.id])).size, 0);
      await assert.rejects(store.get(bad.id), ChunkNotFoundError);
      for (const g of good) assert.deepEqual(await fsp.readFile(store.finalPath(g.id)), g.data);
      assert.deepEqual(await tmpFiles(root), []);
    } finally {
      await cleanup();
    }
  });

  it('CS-3: a failed fsync fails only the writers whose bytes it touched', async () => {
    const { root, cleanup } = await makeLocal();
    try {
      const x = blob();
      const y = blob();
      const z = blob();
      let fail = true;
      const store = await LocalDirChunkStore.open(root, {
        faultHook: (op, path) => {
          if (fail && op === 'fsync' && path.includes(x.id)) throw errno('EIO');
        },
      });
      const first = store.writer();
      const deduper = store.writer();
      const bystander = store.writer();
      await first.put(x.id, x.data);
      assert.equal(await deduper.put(x.id, x.data), false, 'found pending: the second writer relies on it');
      await deduper.put(y.id, y.data);
      await bystander.put(z.id, z.data);
      // The bystander never touched x: its sync succeeds although x's fsync fails in the same pass.
      await bystander.sync();
      assert.deepEqual(await fsp.readFile(store.finalPath(z.id)), z.data);
      // Both writers that relied on x learn that x is gone, and only x.
      await assert.rejects(first.sync(), (e: unknown) => e instanceof ChunksLostError && e.ids.length === 1 && e.ids[0] === x.id);
      await assert.rejects(deduper.sync(), (e: unknown) => e instanceof ChunksLostError && e.ids.length === 1 && e.ids[0] === x.id);
      assert.equal((await store.has([x.id])).size, 0, 'a lost chunk is not reported present');
      assert.deepEqual(await fsp.readFile(store.finalPath(y.id)), y.data, "the deduper's own chunk is durable");
      // Nothing sticks: later writers and syncs are unaffected; a new put of x stores it afresh.
      fail = false;
      await store.sync();
      const again = store.writer();
      assert.equal(await again.put(x.id, x.data), true);
      await again.sync();
      assert.deepEqual(await fsp.readFile(store.finalPath(x.id)), x.data);
    } finally {
      await cleanup();
    }
  });

  it('GC-2: put of a present chunk and touch refresh its mtime; deleteIfUnusedSince honours it', async () => {
    const { root, cleanup } = await makeLocal();
    try {
      const store = await LocalDirChunkStore.open(root);
      const a = blob();
      await store.put(a.id, a.data);
      await store.sync();
      const old = (Date.now() - 7200_000) / 1000;
      await fsp.utimes(store.finalPath(a.id), old, old);
      const cutoff = Date.now() - 3600_000;
      assert.equal(await store.put(a.id, a.data), false);
      assert.ok((await fsp.stat(store.finalPath(a.id))).mtimeMs > cutoff, 'a dedup put is a use');
      assert.equal(await store.deleteIfUnusedSince(a.id, cutoff), false);
      await fsp.utimes(store.finalPath(a.id), old, old);
      assert.deepEqual(await store.touch([a.id]), new Set([a.id]));
      assert.equal(await store.deleteIfUnusedSince(a.id, cutoff), false, 'touched: kept');
      await fsp.utimes(store.finalPath(a.id), old, old);
      assert.equal(await store.deleteIfUnusedSince(a.id, cutoff), true, 'unused since the cutoff: deleted');
      assert.deepEqual(await store.touch([a.id]), new Set(), 'gone is reported absent');
    } finally {
      await cleanup();
    }
  });

  it('a failed rename keeps the chunk pending and readable; the next sync places it', async () => {
    const { root, cleanup } = await makeLocal();
    try {
      let failRename = true;
      const store = await LocalDirChunkStore.open(root, {
        faultHook: (op) => {
          if (op === 'rename' && failRename) throw errno('EIO');
        },
      });
      const { id, data } = blob();
      await store.put(id, data);
      await assert.rejects(store.sync(), (e: NodeJS.ErrnoException) => e.code === 'EIO');
      assert.equal(existsSync(store.finalPath(id)), false);
      assert.deepEqual(await store.get(id), data);
      failRename = false;
      await store.sync();
      assert.deepEqual(await fsp.readFile(store.finalPath(id)), data);
    } finally {
      await cleanup();
    }
  });

  it('groups fsyncs: one per pending file, then one per touched fan-out directory, bounded concurrency', async () => {
    const { root, cleanup } = await makeLocal();
    try {
      const ops: Array<{ op: FaultPoint; path: string }> = [];
      let running = 0;
      let maxRunning = 0;
      const store = await LocalDirChunkStore.open(root, {
        syncConcurrency: 4,
        faultHook: async (op, path) => {
          ops.push({ op, path });
          if (op === 'fsync') {
            running++;
            maxRunning = Math.max(maxRunning, running);
            await new Promise((r) => setTimeout(r, 2));
            running--;
          }
        },
      });
      const blobs = Array.from({ length: 40 }, () => blob(100));
      for (const b of blobs) await store.put(b.id, b.data);
      ops.length = 0;
      await store.sync();
      const fsyncs = ops.filter((o) => o.op === 'fsync');
      const dirsyncs = ops.filter((o) => o.op === 'dirsync').map((o) => o.path);
      assert.equal(fsyncs.length, 40);
      assert.ok(maxRunning > 1 && maxRunning <= 4, `max parallel fsyncs ${maxRunning}`);
      const dirs = new Set(blobs.map((b) => join(root, b.id.slice(0, 2))));
      assert.equal(dirsyncs.length, dirs.size);
      assert.deepEqual(new Set(dirsyncs), dirs);
      // Every rename comes after its own file's fsync.
      for (const b of blobs) {
        const f = ops.findIndex((o) => o.op === 'fsync' && o.path.includes(b.id));
        const r = ops.findIndex((o) => o.op === 'rename' && o.path.endsWith(b.id));
        assert.ok(f >= 0 && r > f);
      }
      ops.length = 0;
      await store.sync();
      assert.equal(ops.length, 0);
    } finally {
      await cleanup();
    }
  });

  it('a failed directory fsync is retried at the next sync', async () => {
    const { root, cleanup } = await makeLocal();
    try {
      let fail = true;
      const dirsyncs: string[] = [];
      const store = await LocalDirChunkStore.open(root, {
        faultHook: (op, path) => {
          if (op !== 'dirsync') return;
          dirsyncs.push(path);
          if (fail) throw errno('EIO');
        },
      });
      const { id, data } = blob();
      await store.put(id, data);
      await assert.rejects(store.sync());
      fail = false;
      await store.sync();
      assert.deepEqual(dirsyncs, [join(root, id.slice(0, 2)), join(root, id.slice(0, 2))]);
    } finally {
      await cleanup();
    }
  });

  it('recreates a fan-out directory removed behind its back', async () => {
    const { root, store, cleanup } = await makeLocal();
    try {
      const { id, data } = blob();
      await fsp.rm(join(root, id.slice(0, 2)), { recursive: true });
      await store.put(id, data);
      await store.sync();
      assert.deepEqual(await fsp.readFile(store.finalPath(id)), data);
    } finally {
      await cleanup();
    }
  });

  // A real full file system: a 1 MiB tmpfs. Needs root and mount(8); skipped elsewhere.
  const canMount = process.getuid?.() === 0 && process.platform === 'linux';
  it('on a really full file system, put rejects with ENOSPC and leaves no partial file', { skip: !canMount && 'needs root to mount a tmpfs' }, async (t) => {
    const mnt = await tempRoot();
    try {
      try {
        execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', mnt], { stdio: 'ignore' });
      } catch {
        t.skip('mount not permitted here');
        return;
      }
      try {
        const store = await LocalDirChunkStore.open(join(mnt, 'store'));
        const small = blob(300 * 1024);
        await store.put(small.id, small.data);
        await store.sync();
        const big = blob(900 * 1024);
        await assert.rejects(store.put(big.id, big.data), (e: NodeJS.ErrnoException) => e.code === 'ENOSPC');
        assert.deepEqual(await tmpFiles(join(mnt, 'store')), []);
        assert.equal(existsSync(store.finalPath(big.id)), false);
        assert.equal((await store.has([big.id])).size, 0);
        await store.sync();
        assert.deepEqual(await store.get(small.id), small.data);
        // Space is back after the failed put: a chunk that fits can still be stored.
        const fits = blob(200 * 1024);
        await store.put(fits.id, fits.data);
        await store.sync();
        assert.deepEqual(await store.get(fits.id), fits.data);
      } finally {
        execFileSync('umount', [mnt], { stdio: 'ignore' });
      }
    } finally {
      await fsp.rm(mnt, { recursive: true, force: true });
    }
  });

  describe('direct I/O (page-aligned memory past the page cache)', () => {
    const aligned = (bytes: Buffer): Buffer => {
      const into = Buffer.from(alignedSharedMemory(bytes.length), 0, bytes.length);
      bytes.copy(into);
      return into;
    };

    for (const where of ['ext4 (the test temp dir)', 'tmpfs (/dev/shm: O_DIRECT may be refused)']) {
      it(`puts aligned and unaligned bytes and reads them back into aligned and plain buffers, pending and synced, whole and short: ${where}`, async () => {
        const root = where.startsWith('tmpfs') ? await fsp.mkdtemp('/dev/shm/snapferry-direct-') : await tempRoot();
        try {
          const store = await LocalDirChunkStore.open(root);
          const full = blob(1 << 20);
          const short = blob(1000); // not a whole block: the tail reads buffered
          const odd = blob((1 << 20) - 512); // an unaligned length: written buffered
          const plain = blob(64 << 10); // not known to be aligned: written buffered
          await store.putHashed(full.id, aligned(full.data));
          await store.putHashed(odd.id, aligned(Buffer.concat([odd.data, Buffer.alloc(512)])).subarray(0, odd.data.length));
          await store.put(short.id, short.data);
          await store.put(plain.id, plain.data);
          const check = async (): Promise<void> => {
            for (const b of [full, short, odd, plain]) {
              const into = Buffer.from(alignedSharedMemory(1 << 20), 0, 1 << 20).fill(0xee);
              const { length: n, encoding } = await store.readInto(b.id, into);
              assert.equal(n, b.data.length);
              assert.equal(encoding, 'raw');
              assert.ok(into.subarray(0, n).equals(b.data), `bytes of a ${b.data.length}-byte blob read into aligned memory`);
              const unaligned = Buffer.alloc((1 << 20) + 1).subarray(1);
              assert.equal((await store.readInto(b.id, unaligned)).length, b.data.length);
              assert.ok(unaligned.subarray(0, b.data.length).equals(b.data), 'and into a plain buffer');
              assert.deepEqual(await store.get(b.id), b.data);
            }
          };
          await check(); // pending: read from the temp files
          await store.sync();
          await check(); // synced: from the final files
          await assert.rejects(store.readInto(sha256(Buffer.from('nothing')), Buffer.alloc(4096)), ChunkNotFoundError);
          await assert.rejects(store.readInto(full.id, Buffer.alloc(4096)), RangeError, 'a buffer too small is refused, not overrun');
          // What is on disk survives a reopen (the durable files are whole).
          const again = await LocalDirChunkStore.open(root);
          for (const b of [full, short, odd, plain]) assert.deepEqual(await again.get(b.id), b.data);
        } finally {
          await fsp.rm(root, { recursive: true, force: true });
        }
      });
    }
  });
});
