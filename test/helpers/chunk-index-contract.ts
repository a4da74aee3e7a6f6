/**
 * The ChunkIndex contract (src/chunkstore/chunk-index.ts) as node:test tests, to run against every
 * implementation (in memory, SQLite, PostgreSQL): `chunkIndexContract('sqlite', async () => ({ index, cleanup }))`.
 * `make` returns a fresh, empty index.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { describe, it } from 'node:test';
import type { ChunkIndex, ChunkIndexEntry } from '../../src/chunkstore/chunk-index.ts';

export interface ChunkIndexFixture {
  index: ChunkIndex;
  cleanup(): Promise<void>;
}

const NS = 'chunks';
const newId = (): string => randomBytes(32).toString('hex');
const never = -Infinity;

async function rows(index: ChunkIndex, ns = NS): Promise<Map<string, ChunkIndexEntry>> {
  const out = new Map<string, ChunkIndexEntry>();
  for await (const e of index.list(ns)) {
    assert.ok(!out.has(e.id), `list yielded ${e.id} twice`);
    out.set(e.id, e);
  }
  return out;
}

export function chunkIndexContract(name: string, make: () => Promise<ChunkIndexFixture>): void {
  const withIndex = (fn: (index: ChunkIndex) => Promise<void>) => async () => {
    const f = await make();
    try {
      await fn(f.index);
    } finally {
      await f.cleanup();
    }
  };

  describe(`ChunkIndex contract: ${name}`, () => {
    it('beginPut -> storing (not present), markUsed -> present with its size', withIndex(async (ix) => {
      const id = newId();
      const epoch = await ix.beginPut(NS, id, 1000);
      assert.equal(typeof epoch, 'string');
      assert.deepEqual(await ix.present(NS, [id]), new Set(), 'a storing row is not present');
      assert.deepEqual((await rows(ix)).get(id), { id, state: 'storing', size: 0, lastUsedMs: 1000, claimedAtMs: null });
      assert.equal(await ix.markUsed(NS, id, epoch!, 77, 2000), true);
      assert.deepEqual(await ix.present(NS, [id]), new Set([id]));
      assert.deepEqual((await rows(ix)).get(id), { id, state: 'present', size: 77, lastUsedMs: 2000, claimedAtMs: null });
    }));

    it('beginPut of a storing or present row keeps its epoch and refreshes its last use; times only grow', withIndex(async (ix) => {
      const id = newId();
      const e1 = await ix.beginPut(NS, id, 1000);
      assert.equal(await ix.beginPut(NS, id, 1500), e1);
      assert.equal(await ix.markUsed(NS, id, e1!, 5, 3000), true);
      assert.equal(await ix.beginPut(NS, id, 2000), e1, 'present: same incarnation');
      assert.equal((await rows(ix)).get(id)?.lastUsedMs, 3000, 'an older clock does not move last use back');
      assert.equal(await ix.markUsed(NS, id, e1!, 5, 2500), true);
      assert.equal((await rows(ix)).get(id)?.lastUsedMs, 3000);
      await ix.present(NS, [id], 2800);
      assert.equal((await rows(ix)).get(id)?.lastUsedMs, 3000);
      await ix.present(NS, [id], 4000);
      assert.equal((await rows(ix)).get(id)?.lastUsedMs, 4000);
    }));

    it('markUsed with another epoch, or of an absent id, fails and creates nothing', withIndex(async (ix) => {
      const id = newId();
      assert.equal(await ix.markUsed(NS, id, 'no-such-epoch', 1, 1000), false);
      assert.equal((await rows(ix)).size, 0);
      const e = await ix.beginPut(NS, id, 1000);
      assert.equal(await ix.markUsed(NS, id, `${e}x`, 1, 1000), false);
      assert.deepEqual(await ix.present(NS, [id]), new Set());
    }));

    it('claimForDelete honours the cutoff; a claimed row is neither present nor joinable, and a put of the old epoch fails', withIndex(async (ix) => {
      const id = newId();
      const e1 = await ix.beginPut(NS, id, 1000);
      await ix.markUsed(NS, id, e1!, 9, 1000);
      assert.equal(await ix.claimForDelete(NS, id, { cutoffMs: 1000, now: 5000, staleClaimBeforeMs: never }), null, 'used at the cutoff: kept');
      const c = await ix.claimForDelete(NS, id, { cutoffMs: 1001, now: 5000, staleClaimBeforeMs: never });
      assert.equal(typeof c, 'string');
      assert.notEqual(c, e1);
      assert.equal((await rows(ix)).get(id)?.state, 'deleting');
      assert.equal((await rows(ix)).get(id)?.claimedAtMs, 5000);
      assert.deepEqual(await ix.present(NS, [id], 6000), new Set(), 'touch does not report a row being deleted');
      assert.equal(await ix.beginPut(NS, id, 6000), null);
      assert.equal(await ix.markUsed(NS, id, e1!, 9, 6000), false);
      assert.equal(await ix.claimForDelete(NS, id, { cutoffMs: Infinity, now: 6000, staleClaimBeforeMs: 5000 }), null, 'a live claim is not taken');
      await ix.forget(NS, id, e1!);
      assert.equal((await rows(ix)).get(id)?.state, 'deleting', 'forget under another epoch does nothing');
      await ix.forget(NS, id, c!);
      assert.equal((await rows(ix)).size, 0);
      const e2 = await ix.beginPut(NS, id, 7000);
      assert.ok(e2 !== null && e2 !== e1 && e2 !== c, 'a new incarnation has a new epoch');
      assert.equal(await ix.markUsed(NS, id, e1!, 9, 7000), false, 'the first incarnation stays dead');
    }));

    it('a storing row can be claimed (an abandoned put); absent ids only with force', withIndex(async (ix) => {
      const id = newId();
      const e = await ix.beginPut(NS, id, 1000);
      const c = await ix.claimForDelete(NS, id, { cutoffMs: 2000, now: 3000, staleClaimBeforeMs: never });
      assert.ok(c);
      assert.equal(await ix.markUsed(NS, id, e!, 1, 3000), false);
      await ix.forget(NS, id, c);
      const absent = newId();
      assert.equal(await ix.claimForDelete(NS, absent, { cutoffMs: Infinity, now: 3000, staleClaimBeforeMs: never }), null);
      assert.equal((await rows(ix)).size, 0);
      const t = await ix.claimForDelete(NS, absent, { cutoffMs: Infinity, now: 3000, staleClaimBeforeMs: never, force: true });
      assert.ok(t, 'force claims an absent id (a tombstone)');
      assert.equal(await ix.beginPut(NS, absent, 3500), null, 'a put waits for the tombstone');
      await ix.forget(NS, absent, t);
      assert.ok(await ix.beginPut(NS, absent, 4000));
    }));

    it('force claims a present row whatever its last use, but not a live claim', withIndex(async (ix) => {
      const id = newId();
      const e = await ix.beginPut(NS, id, 1000);
      await ix.markUsed(NS, id, e!, 1, 9000);
      const c = await ix.claimForDelete(NS, id, { cutoffMs: 0, now: 9500, staleClaimBeforeMs: 0, force: true });
      assert.ok(c);
      assert.equal(await ix.claimForDelete(NS, id, { cutoffMs: 0, now: 9600, staleClaimBeforeMs: 9000, force: true }), null);
    }));

    it('a stale claim is taken over under a new epoch; the old claimer can no longer forget it', withIndex(async (ix) => {
      const id = newId();
      const e = await ix.beginPut(NS, id, 1000);
      await ix.markUsed(NS, id, e!, 1, 1000);
      const c1 = await ix.claimForDelete(NS, id, { cutoffMs: 2000, now: 2000, staleClaimBeforeMs: never });
      assert.ok(c1);
      assert.equal(await ix.claimForDelete(NS, id, { cutoffMs: -Infinity, now: 2500, staleClaimBeforeMs: 2000 }), null, 'not older than the lease yet');
      const c2 = await ix.claimForDelete(NS, id, { cutoffMs: -Infinity, now: 9000, staleClaimBeforeMs: 2001 });
      assert.ok(c2 && c2 !== c1);
      await ix.forget(NS, id, c1);
      assert.equal((await rows(ix)).get(id)?.state, 'deleting');
      await ix.forget(NS, id, c2);
      assert.equal((await rows(ix)).size, 0);
    }));

    it('present: exactly the present subset, duplicates, empty input, large batches; touch refreshes only those', withIndex(async (ix) => {
      const ids = Array.from({ length: 1200 }, newId);
      for (const [i, id] of ids.entries()) {
        const e = await ix.beginPut(NS, id, 1000);
        if (i % 3 !== 0) await ix.markUsed(NS, id, e!, i, 1000);
      }
      const expected = new Set(ids.filter((_, i) => i % 3 !== 0));
      const absent = Array.from({ length: 50 }, newId);
      assert.deepEqual(await ix.present(NS, [...ids, ...absent, ...ids.slice(0, 10)]), expected);
      assert.deepEqual(await ix.present(NS, []), new Set());
      assert.deepEqual(await ix.present(NS, ids, 5000), expected);
      const all = await rows(ix);
      for (const [i, id] of ids.entries()) assert.equal(all.get(id)?.lastUsedMs, i % 3 === 0 ? 1000 : 5000);
    }));

    it('namespaces are separate; list pages through every row once', withIndex(async (ix) => {
      const ids = Array.from({ length: 2345 }, newId);
      for (const id of ids) await ix.beginPut(NS, id, 1);
      const other = newId();
      await ix.beginPut('manifests', other, 1);
      const listed = await rows(ix);
      assert.equal(listed.size, ids.length);
      assert.ok(!listed.has(other));
      assert.deepEqual([...(await rows(ix, 'manifests')).keys()], [other]);
      assert.deepEqual(await ix.present('manifests', ids), new Set());
    }));

    it('sync resolves, with and without writes before it, and changes nothing', withIndex(async (ix) => {
      await ix.sync();
      const id = newId();
      const e = await ix.beginPut(NS, id, 1000);
      await ix.markUsed(NS, id, e!, 3, 1000);
      await Promise.all([ix.sync(), ix.sync()]);
      assert.deepEqual((await rows(ix)).get(id), { id, state: 'present', size: 3, lastUsedMs: 1000, claimedAtMs: null });
    }));

    it('concurrent claims of one row: exactly one wins; concurrent beginPuts share one epoch', withIndex(async (ix) => {
      const id = newId();
      const epochs = await Promise.all(Array.from({ length: 20 }, () => ix.beginPut(NS, id, 1000)));
      assert.equal(new Set(epochs).size, 1);
      assert.ok(epochs[0]);
      await ix.markUsed(NS, id, epochs[0]!, 1, 1000);
      const claims = await Promise.all(Array.from({ length: 20 }, () => ix.claimForDelete(NS, id, { cutoffMs: 5000, now: 5000, staleClaimBeforeMs: never })));
      assert.equal(claims.filter((c) => c !== null).length, 1);
    }));
  });
}
