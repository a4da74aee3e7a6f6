/**
 * The ChunkStore contract (src/chunkstore/chunk-store.ts) as node:test tests, to run against every
 * implementation: `chunkStoreContract('local dir', async () => ({ store, cleanup, corrupt }))`.
 *
 * `make` returns a fresh, empty store. `corrupt(id)`, when given, must damage the stored bytes of
 * `id` (synced or not) so that they no longer hash to `id`; without it the corruption test is skipped.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { describe, it } from 'node:test';
import {
  ChunkIntegrityError,
  ChunkNotFoundError,
  type ChunkStore,
} from '../../src/chunkstore/chunk-store.ts';
import { decodeFrame, zstd } from '../../src/lib/zstd.ts';

export interface ContractFixture {
  store: ChunkStore;
  cleanup(): Promise<void>;
  corrupt?(id: string): Promise<void>;
}

export function sha256(data: Uint8Array): string {
  return createHash('sha256').update(data).digest('hex');
}

/** Bytes that compress well (lines of text), their id, and a zstd frame of them. */
export function compressible(size = 256 << 10, seed = randomBytes(4).toString('hex')): { id: string; data: Buffer; packed: Buffer } {
  const line = `${seed} the quick brown fox jumps over the lazy dog 0123456789\n`;
  const data = Buffer.alloc(size, line);
  return { id: sha256(data), data, packed: frameOf(data) };
}

/** A zstd frame (level 1) of `data`. */
export function frameOf(data: Buffer): Buffer {
  const out = Buffer.alloc(zstd.compressBound(data.length));
  return out.subarray(0, new zstd.CCtx().compress(out, data, 1));
}

/** Random bytes and their id. */
export function blob(size = 4096): { id: string; data: Buffer } {
  const data = randomBytes(size);
  return { id: sha256(data), data };
}

async function listAll(store: ChunkStore): Promise<Map<string, { size: number; lastUsedMs: number }>> {
  const out = new Map<string, { size: number; lastUsedMs: number }>();
  for await (const e of store.list()) {
    assert.ok(!out.has(e.id), `list yielded ${e.id} twice`);
    out.set(e.id, { size: e.size, lastUsedMs: e.lastUsedMs });
  }
  return out;
}

const BAD_IDS = [
  '',
  'abc',
  'A'.repeat(64), // upper case
  'g'.repeat(64),
  '0'.repeat(63),
  '0'.repeat(65),
  `../${'0'.repeat(61)}`,
  `${'0'.repeat(62)}/x`,
  ` ${'0'.repeat(63)}`,
  `${'0'.repeat(64)}\n`,
];

export function chunkStoreContract(
  name: string,
  make: () => Promise<ContractFixture>,
): void {
  const withStore = (fn: (f: ContractFixture) => Promise<void>) => async () => {
    const f = await make();
    try {
      await fn(f);
    } finally {
      await f.cleanup();
    }
  };

  describe(`ChunkStore contract: ${name}`, () => {
    it('put then get returns the same bytes; has and list see it', withStore(async ({ store }) => {
      const { id, data } = blob(10_000);
      await store.put(id, data);
      assert.deepEqual(await store.get(id), data);
      assert.deepEqual(await store.has([id]), new Set([id]));
      const listed = await listAll(store);
      assert.equal(listed.size, 1);
      assert.equal(listed.get(id)?.size, data.length);
      assert.equal(typeof listed.get(id)?.lastUsedMs, 'number');
    }));

    it('a put is visible to get/has/list before sync, and still after it', withStore(async ({ store }) => {
      const a = blob(5000);
      await store.put(a.id, a.data);
      assert.deepEqual(await store.get(a.id), a.data);
      assert.ok((await store.has([a.id])).has(a.id));
      assert.ok((await listAll(store)).has(a.id));
      await store.sync();
      assert.deepEqual(await store.get(a.id), a.data);
      assert.ok((await store.has([a.id])).has(a.id));
      assert.equal((await listAll(store)).get(a.id)?.size, 5000);
    }));

    it('putHashed stores without re-hashing, yet get still refuses bytes that do not match the id', withStore(async ({ store }) => {
      const good = blob(4000);
      await store.putHashed(good.id, good.data);
      await store.sync();
      assert.deepEqual(await store.get(good.id), good.data);
      // A caller that lied about the id: the bytes are kept under it, but never served as it.
      const other = blob(4000);
      const liar = blob(4000).id;
      await store.putHashed(liar, other.data);
      await assert.rejects(store.get(liar), (e: unknown) => e instanceof ChunkIntegrityError && e.id === liar);
    }));

    it('put is idempotent: a second put of the same id resolves and stores one blob', withStore(async ({ store }) => {
      const { id, data } = blob();
      assert.equal(await store.put(id, data), true, 'the first put stores');
      assert.equal(await store.put(id, Buffer.from(data)), false, 'a put while pending finds it there');
      await store.sync();
      assert.equal(await store.put(id, data), false, 'a put after sync finds it there');
      assert.deepEqual(await store.get(id), data);
      assert.deepEqual([...(await listAll(store)).keys()], [id]);
    }));

    it('put verifies the hash: wrong bytes throw ChunkIntegrityError and store nothing', withStore(async ({ store }) => {
      const { id, data } = blob();
      const wrong = Buffer.from(data);
      wrong[17]! ^= 1;
      await assert.rejects(store.put(id, wrong), (e: unknown) => {
        assert.ok(e instanceof ChunkIntegrityError);
        assert.equal(e.id, id);
        assert.equal(e.actual, sha256(wrong));
        return true;
      });
      assert.equal((await store.has([id])).size, 0);
      await assert.rejects(store.get(id), ChunkNotFoundError);
      await store.sync();
      assert.equal((await listAll(store)).size, 0);
      // A wrong put of an id that is present does not disturb it, and still throws.
      await store.put(id, data);
      await assert.rejects(store.put(id, wrong), ChunkIntegrityError);
      assert.deepEqual(await store.get(id), data);
    }));

    it('get of a missing id throws ChunkNotFoundError', withStore(async ({ store }) => {
      const { id } = blob();
      await assert.rejects(store.get(id), (e: unknown) => e instanceof ChunkNotFoundError && e.id === id);
    }));

    it('get re-hashes: damaged bytes are never returned (before and after sync)', withStore(async (f) => {
      const { store, corrupt } = f;
      if (!corrupt) return;
      const a = blob(3000);
      const b = blob(3000);
      await store.put(a.id, a.data);
      await store.sync();
      await corrupt(a.id);
      await assert.rejects(store.get(a.id), (e: unknown) => e instanceof ChunkIntegrityError && e.id === a.id && e.actual !== a.id);
      await store.put(b.id, b.data); // pending, not synced
      await corrupt(b.id);
      await assert.rejects(store.get(b.id), ChunkIntegrityError);
      // has() is a presence check only.
      assert.deepEqual(await store.has([a.id, b.id]), new Set([a.id, b.id]));
    }));

    it('has returns exactly the present subset (duplicates and empty input allowed)', withStore(async ({ store }) => {
      const present = [blob(), blob(), blob()];
      const absent = [blob(), blob()];
      await store.put(present[0]!.id, present[0]!.data);
      await store.put(present[1]!.id, present[1]!.data);
      await store.sync();
      await store.put(present[2]!.id, present[2]!.data); // pending
      const ask = [absent[0]!.id, present[0]!.id, present[1]!.id, present[0]!.id, present[2]!.id, absent[1]!.id];
      assert.deepEqual(await store.has(ask), new Set(present.map((p) => p.id)));
      assert.deepEqual(await store.has([]), new Set());
    }));

    it('has handles a large batch', withStore(async ({ store }) => {
      const blobs = Array.from({ length: 300 }, () => blob(64));
      await Promise.all(blobs.slice(0, 150).map((b) => store.put(b.id, b.data)));
      await store.sync();
      const got = await store.has(blobs.map((b) => b.id));
      assert.deepEqual(got, new Set(blobs.slice(0, 150).map((b) => b.id)));
    }));

    it('delete removes a blob (synced or pending); deleting a missing id is fine', withStore(async ({ store }) => {
      const a = blob();
      const b = blob();
      await store.put(a.id, a.data);
      await store.sync();
      await store.put(b.id, b.data);
      await store.delete(a.id);
      await store.delete(b.id);
      await store.delete(blob().id);
      await assert.rejects(store.get(a.id), ChunkNotFoundError);
      await assert.rejects(store.get(b.id), ChunkNotFoundError);
      assert.equal((await store.has([a.id, b.id])).size, 0);
      await store.sync();
      assert.equal((await listAll(store)).size, 0);
      await assert.rejects(store.get(b.id), ChunkNotFoundError);
      // And it can be stored again.
      await store.put(a.id, a.data);
      await store.sync();
      assert.deepEqual(await store.get(a.id), a.data);
    }));

    it('list yields every id once with its size (synced and pending)', withStore(async ({ store }) => {
      const synced = Array.from({ length: 40 }, (_, i) => blob(100 + i));
      const pending = Array.from({ length: 10 }, (_, i) => blob(500 + i));
      for (const b of synced) await store.put(b.id, b.data);
      await store.sync();
      for (const b of pending) await store.put(b.id, b.data);
      const listed = await listAll(store);
      assert.equal(listed.size, 50);
      for (const b of [...synced, ...pending]) assert.equal(listed.get(b.id)?.size, b.data.length, b.id);
    }));

    it('an empty blob is a valid blob', withStore(async ({ store }) => {
      const data = Buffer.alloc(0);
      const id = sha256(data);
      await store.put(id, data);
      assert.equal((await store.get(id)).length, 0);
      await store.sync();
      assert.equal((await store.get(id)).length, 0);
      assert.equal((await listAll(store)).get(id)?.size, 0);
    }));

    it('stored bytes are independent of the caller buffers', withStore(async ({ store }) => {
      const { id, data } = blob();
      const mine = Buffer.from(data);
      await store.put(id, mine);
      mine.fill(7); // after put resolved
      const got = await store.get(id);
      assert.deepEqual(got, data);
      got.fill(9);
      assert.deepEqual(await store.get(id), data);
      await store.sync();
      assert.deepEqual(await store.get(id), data);
    }));

    it('sync with nothing pending resolves; concurrent syncs all resolve', withStore(async ({ store }) => {
      await store.sync();
      const blobs = Array.from({ length: 20 }, () => blob(2000));
      const puts = blobs.map(async (b, i) => {
        await store.put(b.id, b.data);
        if (i % 5 === 0) await store.sync();
      });
      await Promise.all([...puts, store.sync(), store.sync()]);
      await store.sync();
      for (const b of blobs) assert.deepEqual(await store.get(b.id), b.data);
    }));

    it('ids that are not 64 lower-case hex characters throw RangeError', withStore(async ({ store }) => {
      const data = Buffer.from('x');
      for (const bad of BAD_IDS) {
        await assert.rejects(async () => store.put(bad, data), RangeError, `put ${JSON.stringify(bad)}`);
        await assert.rejects(async () => store.get(bad), RangeError, `get ${JSON.stringify(bad)}`);
        await assert.rejects(async () => store.has([bad]), RangeError, `has ${JSON.stringify(bad)}`);
        await assert.rejects(async () => store.has([blob().id, bad]), RangeError, `has mixed ${JSON.stringify(bad)}`);
        await assert.rejects(async () => store.delete(bad), RangeError, `delete ${JSON.stringify(bad)}`);
      }
      assert.equal((await listAll(store)).size, 0);
    }));

    it('concurrent puts of the same id all resolve and store one intact blob', withStore(async ({ store }) => {
      const { id, data } = blob(256 * 1024);
      const wrong = Buffer.from(data);
      wrong[0]! ^= 0xff;
      const results = await Promise.allSettled([
        ...Array.from({ length: 16 }, () => store.put(id, Buffer.from(data))),
        store.put(id, wrong),
        store.sync(),
        ...Array.from({ length: 16 }, () => store.put(id, data)),
      ]);
      const rejected = results.filter((r) => r.status === 'rejected');
      assert.equal(rejected.length, 1);
      assert.ok((rejected[0] as PromiseRejectedResult).reason instanceof ChunkIntegrityError);
      const stored = results.filter((r) => r.status === 'fulfilled' && r.value === true);
      assert.equal(stored.length, 1, 'exactly one of the racing puts reports that it stored the blob');
      assert.deepEqual(await store.get(id), data);
      await store.sync();
      assert.deepEqual(await store.get(id), data);
      assert.deepEqual([...(await listAll(store))].map(([k, v]) => [k, v.size]), [[id, data.length]]);
    }));

    it('concurrent puts, gets, deletes and syncs of many ids stay consistent', withStore(async ({ store }) => {
      const blobs = Array.from({ length: 60 }, () => blob(8192));
      await Promise.all(
        blobs.map(async (b, i) => {
          await store.put(b.id, b.data);
          if (i % 7 === 0) await store.sync();
          assert.deepEqual(await store.get(b.id), b.data);
          if (i % 3 === 0) await store.delete(b.id);
        }),
      );
      await store.sync();
      const expected = new Set(blobs.filter((_, i) => i % 3 !== 0).map((b) => b.id));
      assert.deepEqual(await store.has(blobs.map((b) => b.id)), expected);
      assert.deepEqual(new Set((await listAll(store)).keys()), expected);
      for (const [i, b] of blobs.entries()) {
        if (i % 3 === 0) await assert.rejects(store.get(b.id), ChunkNotFoundError);
        else assert.deepEqual(await store.get(b.id), b.data);
      }
    }));

    it('GC-2: a put or touch of a present blob makes it used now; deleteIfUnusedSince keeps what was used after the cutoff', withStore(async ({ store }) => {
      const a = blob();
      const b = blob();
      const before = Date.now() - 1000;
      await store.put(a.id, a.data);
      await store.put(b.id, b.data);
      await store.sync();
      // Put after the cutoff: used after it, so kept.
      assert.equal(await store.deleteIfUnusedSince(a.id, before), false);
      await new Promise((r) => setTimeout(r, 20));
      const cutoff = Date.now();
      await new Promise((r) => setTimeout(r, 20));
      assert.equal(await store.put(a.id, a.data), false);
      assert.deepEqual(await store.touch([b.id, blob().id]), new Set([b.id]), 'touch reports exactly the present ones');
      const listed = await listAll(store);
      assert.ok(listed.get(a.id)!.lastUsedMs >= cutoff, 'a dedup put refreshed last-used');
      assert.ok(listed.get(b.id)!.lastUsedMs >= cutoff, 'touch refreshed last-used');
      assert.equal(await store.deleteIfUnusedSince(a.id, cutoff), false);
      assert.equal(await store.deleteIfUnusedSince(b.id, cutoff), false);
      const later = Date.now() + 1000;
      assert.equal(await store.deleteIfUnusedSince(a.id, later), true, 'unused since the cutoff: deleted');
      assert.equal(await store.deleteIfUnusedSince(a.id, later), false, 'already gone');
      await assert.rejects(store.get(a.id), ChunkNotFoundError);
      assert.deepEqual(await store.has([b.id]), new Set([b.id]));
    }));

    it('deleteIfUnusedSince never deletes a blob that is put but not yet synced', withStore(async ({ store }) => {
      const a = blob();
      await store.put(a.id, a.data);
      assert.equal(await store.deleteIfUnusedSince(a.id, Date.now() + 60_000), false);
      await store.sync();
      assert.deepEqual(await store.get(a.id), a.data);
    }));

    it('GC-2: touch racing deleteIfUnusedSince: a blob reported present is never deleted afterwards', withStore(async ({ store }) => {
      for (let round = 0; round < 20; round++) {
        const a = blob(1024);
        await store.put(a.id, a.data);
        await store.sync();
        const cutoff = Date.now() + 5; // everything so far counts as old for this GC
        await new Promise((r) => setTimeout(r, 10));
        const [present, deleted] = await Promise.all([store.touch([a.id]), store.deleteIfUnusedSince(a.id, cutoff)]);
        if (present.has(a.id)) assert.equal(deleted, false, 'reported present, then deleted');
        assert.equal((await store.has([a.id])).has(a.id), present.has(a.id) && !deleted);
      }
    }));

    it('a writer syncs exactly its own puts, also those it found pending; sync again covers later puts', withStore(async ({ store }) => {
      const w1 = store.writer();
      const w2 = store.writer();
      const a = blob();
      const b = blob();
      await w1.put(a.id, a.data);
      assert.equal(w1.unsyncedBytes, a.data.length);
      assert.equal(await w2.put(a.id, a.data), false);
      assert.equal(w2.unsyncedBytes, a.data.length, 'relying on a pending blob counts as unsynced for this writer');
      await w2.sync();
      assert.equal(w2.unsyncedBytes, 0);
      await w1.sync();
      await w1.putHashed(b.id, b.data);
      assert.equal(w1.unsyncedBytes, b.data.length);
      await w1.sync();
      assert.deepEqual(await store.get(a.id), a.data);
      assert.deepEqual(await store.get(b.id), b.data);
      await w1.sync(); // nothing new: resolves
      assert.equal(await store.writer().put(a.id, a.data), false);
    }));

    it('a writer put verifies the hash; putHashed does not', withStore(async ({ store }) => {
      const w = store.writer();
      const { id, data } = blob();
      const wrong = Buffer.from(data);
      wrong[3]! ^= 1;
      await assert.rejects(w.put(id, wrong), ChunkIntegrityError);
      assert.equal(w.unsyncedBytes, 0);
      await w.sync();
      assert.equal((await store.has([id])).size, 0);
    }));

    it('a put racing a delete of the same id leaves either nothing or the intact blob', withStore(async ({ store }) => {
      for (let round = 0; round < 10; round++) {
        const { id, data } = blob(4096);
        if (round % 2) {
          await store.put(id, data);
          await store.sync();
        }
        await Promise.all([store.put(id, data), store.delete(id), store.sync(), store.put(id, data)]);
        await store.sync();
        const present = (await store.has([id])).has(id);
        if (present) assert.deepEqual(await store.get(id), data);
        else await assert.rejects(store.get(id), ChunkNotFoundError);
      }
    }));

    it('CS-4: a put with a packed form answers the plain bytes to get, pending and synced; has, touch, list and a second put see one blob', withStore(async ({ store }) => {
      const c = compressible();
      assert.equal(await store.putHashed(c.id, c.data, c.packed), true);
      const check = async (): Promise<void> => {
        assert.deepEqual(await store.get(c.id), c.data);
        assert.deepEqual(await store.has([c.id]), new Set([c.id]));
        assert.deepEqual(await store.touch([c.id]), new Set([c.id]));
        const listed = await listAll(store);
        assert.deepEqual([...listed.keys()], [c.id]);
        // What it takes in the store: the frame where the store keeps it, else the plain bytes.
        assert.equal(listed.get(c.id)!.size, store.storesPacked ? c.packed.length : c.data.length);
      };
      await check();
      await store.sync();
      await check();
      assert.equal(await store.put(c.id, c.data, c.packed), false, 'a second put finds it');
      assert.equal(await store.put(c.id, c.data), false, 'and so does one without a packed form');
      await check();
    }));

    it('CS-4: a packed form is never trusted over the id: a frame of other bytes put under it is caught at get, or ignored', withStore(async ({ store }) => {
      const c = compressible();
      const other = compressible(c.data.length);
      await store.putHashed(c.id, c.data, other.packed);
      await store.sync();
      if (store.storesPacked) await assert.rejects(store.get(c.id), (e: unknown) => e instanceof ChunkIntegrityError && e.id === c.id && e.actual === other.id);
      else assert.deepEqual(await store.get(c.id), c.data);
      // A frame that is not zstd at all: the same.
      const d = compressible();
      await store.putHashed(d.id, d.data, randomBytes(1000));
      if (store.storesPacked) await assert.rejects(store.get(d.id), ChunkIntegrityError);
      else assert.deepEqual(await store.get(d.id), d.data);
    }));

    it('readInto answers a blob stored packed in its stored form, which decodes to the blob (get, where there is no readInto)', withStore(async ({ store }) => {
      const c = compressible();
      const r = blob(200_000);
      await store.putHashed(c.id, c.data, c.packed);
      await store.putHashed(r.id, r.data, null);
      for (const when of ['pending', 'synced']) {
        if (when === 'synced') await store.sync();
        if (!store.readInto) {
          // readInto is optional (the S3 store has none): a copy then reads through get, which must
          // answer the blob itself, not the frame it was offered.
          assert.deepEqual(await store.get(c.id), c.data, when);
          assert.deepEqual(await store.get(r.id), r.data, when);
          continue;
        }
        const into = Buffer.alloc(c.data.length);
        const got = await store.readInto(c.id, into);
        const bytes = into.subarray(0, got.length);
        if (got.encoding === 'zstd') assert.deepEqual(decodeFrame(bytes, c.data.length), c.data, when);
        else assert.deepEqual(bytes, c.data, when);
        assert.equal(got.encoding, store.storesPacked ? 'zstd' : 'raw', when);
        const rawInto = Buffer.alloc(r.data.length);
        assert.deepEqual(await store.readInto(r.id, rawInto), { length: r.data.length, encoding: 'raw' }, when);
        assert.deepEqual(rawInto, r.data);
      }
    }));

    it('delete and deleteIfUnusedSince remove a blob stored packed', withStore(async ({ store }) => {
      const a = compressible();
      const b = compressible();
      await store.putHashed(a.id, a.data, a.packed);
      await store.putHashed(b.id, b.data, b.packed);
      await store.sync();
      await store.delete(a.id);
      assert.equal(await store.deleteIfUnusedSince(b.id, Date.now() + 60_000), true);
      for (const id of [a.id, b.id]) await assert.rejects(store.get(id), ChunkNotFoundError);
      assert.equal((await store.has([a.id, b.id])).size, 0);
      assert.equal((await listAll(store)).size, 0);
    }));
  });
}
