/**
 * A restore reads each chunk into reused buffers (ChunkRepository.readVerified) and still checks
 * every one as `get` does: a damaged plain file, a compressed chunk whose frame decodes to other
 * bytes, and a frame that does not decode all fail the restore, and the damaged chunk's place on
 * the disk is never written. Intact chunks, plain, compressed and a short last one, restore bit
 * for bit, with a store that reads into buffers and with one that cannot (`get` only).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { compress } from 'zstd-napi';
import { DiskManager } from '../src/blockdev/disk-manager.ts';
import { ChunkIntegrityError, type ChunkStore } from '../src/chunkstore/chunk-store.ts';
import { LocalDirChunkStore } from '../src/chunkstore/local-dir-store.ts';
import { AlignedBufferPool } from '../src/lib/aligned-memory.ts';
import { MetricsRegistry } from '../src/lib/metrics.ts';
import { Sha256Pool } from '../src/lib/sha256-pool.ts';
import { ChunkRepository, RepositoryMetrics } from '../src/repository/chunk-repository.ts';
import { Manifest } from '../src/repository/manifest.ts';
import { restoreDisk } from '../src/repository/restore.ts';

const MiB = 1 << 20;
const CHUNK = MiB;
const DISK = 4 * MiB - 4096; // the last chunk is short
const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');
const text = (n: number): Buffer => Buffer.alloc(n, 'all work and no play makes a dull chunk. ');

async function world(getOnly = false) {
  const dir = await mkdtemp(join(tmpdir(), 'snapferry-restore-'));
  const pool = new Sha256Pool({ size: 2 });
  const store = await LocalDirChunkStore.open(join(dir, 'chunks'), { hasher: (b) => pool.hash(b) });
  // A store that cannot read into a caller's buffer: everything goes through `get`.
  const chunks: ChunkStore = getOnly ? Object.assign(Object.create(store), { readInto: undefined }) : store;
  const manifests = await LocalDirChunkStore.open(join(dir, 'manifests'));
  const repo = new ChunkRepository(chunks, manifests, pool, CHUNK, new RepositoryMetrics(new MetricsRegistry()));
  const disks = new DiskManager(join(dir, 'disks'), CHUNK);
  await disks.init();
  // Chunk 0 random (kept plain), 1 text (kept compressed), 2 zeros, 3 short text tail.
  const contents = [randomBytes(CHUNK), text(CHUNK), null, text(DISK - 3 * CHUNK)];
  const manifest = Manifest.empty(DISK, CHUNK);
  const writer = store.writer();
  for (const [i, c] of contents.entries()) manifest.set(i, c ? await repo.storeChunk(c, writer) : null);
  await writer.sync();
  const expected = Buffer.concat(contents.map((c, i) => c ?? Buffer.alloc(i === 3 ? DISK - 3 * CHUNK : CHUNK)));
  let n = 0;
  const restoreInto = async (): Promise<{ bytes: () => Promise<Buffer>; error: unknown }> => {
    const id = `v-${n++}`;
    await disks.create(id, DISK);
    const held = await disks.acquire(id);
    let error: unknown = null;
    try {
      await restoreDisk(repo, manifest, held.disk, null);
    } catch (e) {
      error = e;
    }
    return { error, bytes: async () => held.disk.read(0, DISK) };
  };
  const close = async () => {
    await disks.closeAll();
    await pool.close();
    await rm(dir, { recursive: true, force: true });
  };
  return { store, repo, manifest, contents, expected, restoreInto, close };
}

for (const getOnly of [false, true]) {
  test(`intact chunks restore bit for bit${getOnly ? ' (a store without readInto)' : ''}`, async () => {
    const w = await world(getOnly);
    try {
      // The text chunks really are kept compressed, the random one plain: both read paths are taken.
      assert.ok((await stat(w.store.packedPath(w.manifest.chunkId(1)!))).isFile(), 'chunk 1 stored packed');
      assert.ok((await stat(w.store.packedPath(w.manifest.chunkId(3)!))).isFile(), 'chunk 3 stored packed');
      assert.ok((await stat(w.store.finalPath(w.manifest.chunkId(0)!))).isFile(), 'chunk 0 stored plain');
      const { error, bytes } = await w.restoreInto();
      assert.equal(error, null);
      const got = await bytes();
      for (let i = 0; i * CHUNK < DISK; i++) assert.equal(sha(got.subarray(i * CHUNK, (i + 1) * CHUNK)), sha(w.expected.subarray(i * CHUNK, (i + 1) * CHUNK)), `chunk ${i} (of ${got.length} bytes read)`);
    } finally {
      await w.close();
    }
  });
}

const damages: Array<[string, (w: Awaited<ReturnType<typeof world>>) => Promise<number>]> = [
  ['a plain chunk file with one byte flipped', async (w) => {
    const bad = Buffer.from(w.contents[0]!);
    bad[12345]! ^= 0xff;
    await writeFile(w.store.finalPath(w.manifest.chunkId(0)!), bad);
    return 0;
  }],
  ['a compressed chunk whose frame decodes to other bytes', async (w) => {
    await writeFile(w.store.packedPath(w.manifest.chunkId(1)!), compress(text(CHUNK).fill(0x41, 0, 10)));
    return 1;
  }],
  ['a compressed chunk whose frame does not decode', async (w) => {
    await writeFile(w.store.packedPath(w.manifest.chunkId(1)!), randomBytes(2000));
    return 1;
  }],
  ['a plain chunk file grown past a chunk', async (w) => {
    await writeFile(w.store.finalPath(w.manifest.chunkId(0)!), Buffer.concat([w.contents[0]!, Buffer.alloc(5000)]));
    return 0;
  }],
];

for (const [name, damage] of damages) {
  test(`${name}: the restore fails and never writes it to the disk`, async () => {
    const w = await world();
    try {
      const index = await damage(w);
      const id = w.manifest.chunkId(index)!;
      const buffers = new AlignedBufferPool(4);
      await assert.rejects(w.repo.readVerified(id, buffers, CHUNK), (e) => e instanceof ChunkIntegrityError && e.id === id);
      // Its buffers went back once each: two takes never answer the same memory.
      assert.notStrictEqual(buffers.take(CHUNK), buffers.take(CHUNK));
      const { error, bytes } = await w.restoreInto();
      assert.ok(error instanceof ChunkIntegrityError, `restore failed with ${String(error)}`);
      const chunk = (await bytes()).subarray(index * CHUNK, (index + 1) * CHUNK);
      assert.ok(chunk.every((b) => b === 0), 'the damaged chunk is not on the disk');
    } finally {
      await w.close();
    }
  });
}
