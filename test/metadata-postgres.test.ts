/**
 * The PostgreSQL metadata store on a real server: the contract suite every MetadataStore runs, then
 * what only a database shared by several processes can get wrong. Each "process" is its own
 * store (its own pool of connections) on one database; claims, quota inserts and hold races run on
 * both at once.
 *
 * The server comes from SNAPFERRY_TEST_PG_URL (`.ci/run` starts one for the whole run through
 * scripts/with-postgres.sh); without it this file fails and says how to start one, unless
 * SNAPFERRY_SKIP_PG=1 asks to skip. Each test gets a fresh database and drops it.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { PostgresMetadataStore } from '../src/metadata/postgres/postgres-metadata-store.ts';
import { createPool, MetadataOpenError, withTransaction } from '../src/metadata/postgres/connection.ts';
import { MIGRATIONS, SCHEMA_VERSION } from '../src/metadata/postgres/migrations.ts';
import { JobRunner } from '../src/jobs/job-runner.ts';
import { LeaseLostError } from '../src/metadata/metadata-store.ts';
import { metadataContract, snapshot, volume } from './helpers/metadata-contract.ts';
import { chunkIndexContract } from './helpers/chunk-index-contract.ts';
import { admin, freePort, freshDatabase, PG_URL_MISSING, withDatabase, wrongPasswordServer } from './helpers/postgres-server.ts';

const serverUrl = process.env.SNAPFERRY_TEST_PG_URL ?? null;
const skip = serverUrl === null && process.env.SNAPFERRY_SKIP_PG === '1';

if (serverUrl === null && !skip) {
  test('PostgreSQL metadata store: a PostgreSQL server to test against', () => {
    throw new Error(PG_URL_MISSING);
  });
} else if (skip) {
  test('PostgreSQL metadata store', { skip: 'SNAPFERRY_SKIP_PG=1: PostgreSQL tests skipped on purpose' }, () => undefined);
} else {
  suite(serverUrl!);
}

/** Waits until a session of `appName` waits for a lock (true), or `gaveUp()` turns true or 5 s pass (false). */
async function waitForLockWait(url: string, appName: string, gaveUp: () => boolean = () => false): Promise<boolean> {
  for (let i = 0; i < 500; i++) {
    const { rowCount } = await admin(url, "SELECT 1 FROM pg_stat_activity WHERE application_name = $1 AND wait_event_type = 'Lock'", [appName]);
    if (rowCount! > 0) return true;
    if (gaveUp()) return false;
    await new Promise((r) => setTimeout(r, 10));
  }
  if (gaveUp()) return false;
  throw new Error(`no session of ${appName} ever waited for a lock`);
}

function suite(server: string): void {
  metadataContract('PostgreSQL', async () => {
    const db = await freshDatabase(server);
    const store = await PostgresMetadataStore.open(db.url);
    return { store, cleanup: async () => { await store.close(); await db.drop(); } };
  });

  chunkIndexContract('PostgreSQL', async () => {
    const db = await freshDatabase(server);
    const store = await PostgresMetadataStore.open(db.url);
    return { index: store.chunkIndex, cleanup: async () => { await store.close(); await db.drop(); } };
  });

  /** A fresh database and `n` stores on it (n "processes"); everything is closed and dropped after. */
  const withStores = (n: number, fn: (stores: PostgresMetadataStore[], url: string) => Promise<void>) => async () => {
    const db = await freshDatabase(server);
    const stores: PostgresMetadataStore[] = [];
    try {
      for (let i = 0; i < n; i++) stores.push(await PostgresMetadataStore.open(db.url, { applicationName: `snapferry-test-p${i}` }));
      await fn(stores, db.url);
    } finally {
      await Promise.all(stores.map((s) => s.close()));
      await db.drop();
    }
  };

  test('PostgreSQL: data survives reopening; a schema newer than the program is refused', withStores(0, async (_, url) => {
    const v = volume({ desc: 'quotes \' " and unicode 雪', tags: [{ tagKey: 'k', tagValue: 'v' }] });
    const first = await PostgresMetadataStore.open(url);
    await first.volumes.insertIfAbsent(v);
    await first.close();
    const second = await PostgresMetadataStore.open(url);
    assert.deepEqual(await second.volumes.getAny(v.id), v);
    assert.equal(second.shared, true, 'several processes may share a PostgreSQL store');
    await second.close();
    const versions = await admin(url, 'SELECT version FROM schema_migrations ORDER BY version');
    assert.deepEqual(versions.rows.map((r) => r.version), Array.from({ length: SCHEMA_VERSION }, (_, i) => i + 1));
    await admin(url, 'INSERT INTO schema_migrations (version, applied_at) VALUES (999, 0)');
    await assert.rejects(PostgresMetadataStore.open(url), /schema version 999 is newer than this program understands/);
  }));

  test('PostgreSQL: a database at schema version 1 is brought forward and keeps its data', withStores(0, async (_, url) => {
    const pool = createPool(url);
    try {
      await pool.query('CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at BIGINT NOT NULL)');
      await pool.query(MIGRATIONS.find((m) => m.version === 1)!.sql);
      await pool.query('INSERT INTO schema_migrations VALUES (1, 0)');
      await pool.query(
        `INSERT INTO snapshots (id, account_id, name, description, volume_id, size_gb, create_time, status, create_method, progress, storage_type, tags)
         VALUES ('s-old00001', 'acct', 'old', '', 'v-1', 1, 1000, 'Creating', 'MANUAL', 40, 'hp1', '[]')`,
      );
    } finally {
      await pool.end();
    }
    const store = await PostgresMetadataStore.open(url);
    try {
      assert.equal((await store.snapshots.getAny('s-old00001'))?.progress, 40);
      assert.ok(await store.chunkIndex.beginPut('chunks', 'a'.repeat(64), 1));
      assert.deepEqual(await store.integrityCheck(), []);
    } finally {
      await store.close();
    }
  }));

  test('PostgreSQL: processes starting at once migrate once (advisory lock), and all open', withStores(0, async (_, url) => {
    const stores = await Promise.all(Array.from({ length: 6 }, () => PostgresMetadataStore.open(url)));
    try {
      const rows = (await admin(url, 'SELECT version, count(*)::int AS n FROM schema_migrations GROUP BY version ORDER BY version')).rows;
      assert.deepEqual(rows, MIGRATIONS.map((m) => ({ version: m.version, n: 1 })));
      assert.equal(await stores[5]!.volumes.insertIfAbsent(volume()), true);
    } finally {
      await Promise.all(stores.map((s) => s.close()));
    }
  }));

  test('PostgreSQL: regions may share a database, one schema each', withStores(0, async (_, url) => {
    const bj = await PostgresMetadataStore.open(url, { schema: 'region_bj' });
    const gz = await PostgresMetadataStore.open(url, { schema: 'region_gz' });
    try {
      const v = volume();
      await bj.volumes.insertIfAbsent(v);
      assert.deepEqual(await bj.volumes.getAny(v.id), v);
      assert.equal(await gz.volumes.getAny(v.id), null);
      await assert.rejects(PostgresMetadataStore.open(url, { schema: 'Bad-Name' }), /invalid PostgreSQL schema name/);
    } finally {
      await Promise.all([bj.close(), gz.close()]);
    }
  }));

  test('PostgreSQL: open fails at once with an error that says what to fix', async () => {
    const port = await freePort();
    await assert.rejects(PostgresMetadataStore.open(`postgres://postgres@127.0.0.1:${port}/x`), (err: Error) => {
      assert.ok(err instanceof MetadataOpenError);
      assert.match(err.message, new RegExp(`cannot connect to PostgreSQL at 127.0.0.1:${port}: connection refused`));
      return true;
    });
    await assert.rejects(PostgresMetadataStore.open(withDatabase(server, 'sf_no_such_database')), /database "sf_no_such_database" does not exist .*createdb/);
    const noRole = new URL(server);
    noRole.username = 'sf_no_such_role';
    await assert.rejects(PostgresMetadataStore.open(noRole.toString()), /does not let user "sf_no_such_role" connect .*role "sf_no_such_role" does not exist/);
    const fake = await wrongPasswordServer();
    try {
      await assert.rejects(PostgresMetadataStore.open(`postgres://snapferry:secret@127.0.0.1:${fake.port}/meta`), (err: Error) => {
        assert.match(err.message, /refused the password of user "snapferry"/);
        assert.doesNotMatch(err.message, /secret/, 'the password is never printed');
        return true;
      });
    } finally {
      await fake.close();
    }
  });

  test('PostgreSQL: dropped connections fail only the calls that used them; the pool reconnects', withStores(1, async ([store], url) => {
    const v = volume();
    await store!.volumes.insertIfAbsent(v);
    // Idle connections killed by the server (a restart, a failover): no crash, the next call reconnects.
    const killed = await admin(url, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'snapferry-test-p0'");
    assert.ok(killed.rowCount! >= 1);
    await new Promise((r) => setTimeout(r, 100));
    assert.deepEqual(await store!.volumes.getAny(v.id), v);

    // A connection killed inside a transaction: the call rejects, the connection is dropped, the next call works.
    const pool = createPool(url, { applicationName: 'snapferry-test-tx' });
    try {
      await assert.rejects(withTransaction(pool, async (tx) => {
        await tx.query('SELECT 1');
        await admin(url, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'snapferry-test-tx'");
        await tx.query('SELECT 1');
      }), /terminat|connection/);
      assert.equal((await pool.query('SELECT 41 + 1 AS n')).rows[0].n, 42);
    } finally {
      await pool.end();
    }
  }));

  test('PostgreSQL: a job whose store call loses its connection is retried by the job runner', withStores(2, async ([a, b], url) => {
    const vol = 'v-blocked';
    let attempts = 0;
    const retries: unknown[] = [];
    const log = (level: string, msg: string, fields?: Record<string, unknown>): void => {
      if (msg.includes('will retry')) retries.push(fields?.reason);
    };
    const runner = new JobRunner({ jobs: a!.jobs, concurrency: 1, pollMs: 20, leaseMs: 60_000, log });
    const finished = new Promise<void>((resolve) => {
      runner.register({
        kind: 'snap',
        retry: { initialDelayMs: 10, maxDelayMs: 10, deadlineMs: 60_000 },
        run: async () => {
          attempts++;
          assert.equal(await a!.snapshots.insertIfAbsent(snapshot({ volumeId: vol }), 5), 'inserted');
          resolve();
        },
        onPermanentFailure: async () => undefined,
      });
    });
    // Another process holds the volume's quota lock, so the first attempt's insert waits on it; the
    // server then kills that connection (as a failover would).
    const lockHolder = createPool(url, { applicationName: 'snapferry-test-lock' });
    let locked!: () => void;
    const lockTaken = new Promise<void>((resolve) => (locked = resolve));
    const tx = withTransaction(lockHolder, async (c) => {
      await c.query("SELECT pg_advisory_xact_lock(hashtextextended('snapferry:volume-snapshots:' || current_schema() || ':' || $1, 0))", [vol]);
      locked();
      for (let i = 0; ; i++) {
        const waiting = await admin(url, "SELECT pid FROM pg_stat_activity WHERE application_name = 'snapferry-test-p0' AND wait_event_type = 'Lock'");
        if (waiting.rowCount === 1) {
          await admin(url, 'SELECT pg_terminate_backend($1)', [waiting.rows[0].pid]);
          return;
        }
        if (i > 500) throw new Error('the job never waited for the lock');
        await new Promise((r) => setTimeout(r, 10));
      }
    });
    await lockTaken;
    runner.start();
    await runner.enqueue({ kind: 'snap', key: 'j1', group: 'g', payload: {} });
    try {
      await tx;
      await finished;
      await new Promise((r) => setTimeout(r, 50));
      const job = await b!.jobs.getByKey('j1');
      assert.equal(attempts, 2);
      assert.equal(job?.attempts, 2);
      assert.equal(job?.state, 'done');
      assert.equal(retries.length, 1);
      assert.match(String(retries[0]), /terminat/, 'the dropped connection was a transient failure, retried');
      assert.equal(await b!.snapshots.countByVolume(vol), 1);
    } finally {
      await runner.stop();
      await lockHolder.end();
    }
  }));

  test('PostgreSQL: two processes claiming one queue at once never get the same job', withStores(2, async (stores) => {
    const N = 120;
    for (let i = 0; i < N; i++) await stores[0]!.jobs.enqueue({ kind: 'k', key: `j${i}`, group: `g${i % 7}`, payload: { i } });
    const now = Date.now();
    const claimed: number[] = [];
    // 10 claimers, 5 per process, each claiming until the queue is empty.
    await Promise.all(Array.from({ length: 10 }, async (_, c) => {
      const store = stores[c % 2]!;
      for (;;) {
        const job = await store.jobs.claim(['k'], `w${c}`, now, 60_000, () => Infinity, null);
        if (!job) return;
        claimed.push(job.id);
      }
    }));
    assert.equal(claimed.length, N);
    assert.equal(new Set(claimed).size, N, 'no job claimed twice');
  }));

  test('PostgreSQL: 10 claimers in two processes never exceed a group cap of 2', withStores(2, async (stores) => {
    for (let i = 0; i < 40; i++) await stores[0]!.jobs.enqueue({ kind: 'copy', key: `c${i}`, group: `copy:${['hkg', 'gz'][i % 2]}`, payload: {} });
    await stores[0]!.jobs.enqueue({ kind: 'copy', key: 'free', group: 'uncapped', payload: {} });
    const cap = (g: string): number => (g === 'uncapped' ? Infinity : 2);
    for (let round = 0; round < 8; round++) {
      const now = Date.now();
      const got = (await Promise.all(Array.from({ length: 10 }, (_, c) => stores[c % 2]!.jobs.claim(['copy'], `w${c}`, now, 60_000, cap, null)))).filter((j) => j !== null);
      const running = await stores[1]!.jobs.list(['running']);
      const perGroup = new Map<string, number>();
      for (const j of running) perGroup.set(j.group, (perGroup.get(j.group) ?? 0) + 1);
      assert.ok((perGroup.get('copy:hkg') ?? 0) <= 2 && (perGroup.get('copy:gz') ?? 0) <= 2, `round ${round}: ${JSON.stringify([...perGroup])}`);
      assert.equal(perGroup.get('copy:hkg'), 2, `round ${round}: the cap is also reached, not only respected`);
      assert.equal(perGroup.get('copy:gz'), 2);
      if (round === 0) assert.equal(got.length, 5, 'two per capped group and the uncapped one');
      // Finish what this round claimed, so the next round claims again at the boundary.
      for (const j of got) if (j!.group !== 'uncapped') await stores[0]!.jobs.finish(j!.id, j!.leaseToken, 'done', null);
    }
  }));

  test('PostgreSQL: an expired lease is taken over by exactly one process, and every claim bumps the fencing token', withStores(2, async (stores, url) => {
    const job = await stores[0]!.jobs.enqueue({ kind: 'k', key: 'lease', group: 'g', payload: {} });
    const t = Date.now();
    const first = (await stores[0]!.jobs.claim(['k'], 'w0', t, 1000, () => 1, null))!;
    assert.equal(first.leaseToken, 1);
    const takers = await Promise.all(Array.from({ length: 8 }, (_, i) => stores[i % 2]!.jobs.claim(['k'], `w${i + 1}`, t + 2000, 1000, () => 1, null)));
    const won = takers.filter((j) => j !== null);
    assert.equal(won.length, 1);
    assert.equal(won[0]!.leaseToken, 2);
    const token = await admin(url, 'SELECT lease_token, attempts FROM jobs WHERE id = $1', [job.id]);
    assert.deepEqual(token.rows[0], { lease_token: '2', attempts: 2 });
  }));

  test('PostgreSQL COORD-1: a stale holder racing the new holder from another process changes nothing', withStores(2, async ([p1, p2]) => {
    // Per round: p1 claimed the job and stalled past its lease; p2 claims it again while p1, waking
    // up, saves progress and finishes, all at once. p1's writes are refused whatever the interleaving.
    for (let round = 0; round < 20; round++) {
      const job = await p1!.jobs.enqueue({ kind: 'k', key: `race-${round}`, group: 'g', payload: {} });
      const t = Date.now(); // not before the enqueue: the job is runnable from its enqueue on
      const stale = (await p1!.jobs.claim(['k'], 'p1', t, 1000, () => Infinity, null))!;
      assert.equal(stale.id, job.id);
      const [claimed, saved, finished] = await Promise.allSettled([
        p2!.jobs.claim(['k'], 'p2', t + 1000, 60_000, () => Infinity, null),
        p1!.jobs.saveProgress(stale.id, stale.leaseToken, { stale: true }),
        p1!.jobs.finish(stale.id, stale.leaseToken, 'done', null),
      ]);
      assert.equal(claimed.status, 'fulfilled');
      const taken = (claimed as PromiseFulfilledResult<Awaited<ReturnType<typeof p2.jobs.claim>>>).value;
      const row = (await p2!.jobs.get(job.id))!;
      if (taken) {
        // p2 holds it: p1's finish, had it come first, would have left nothing to claim.
        assert.equal(finished.status, 'rejected', `round ${round}: the stale finish was refused`);
        assert.ok((finished as PromiseRejectedResult).reason instanceof LeaseLostError);
        assert.deepEqual([row.state, row.leaseOwner, row.leaseToken], ['running', 'p2', stale.leaseToken + 1]);
        if (saved.status === 'rejected') assert.ok(saved.reason instanceof LeaseLostError);
        await p2!.jobs.finish(job.id, taken.leaseToken, 'done', null);
      } else {
        // p2's claim came after p1's finish, or skipped the row while p1 was writing it (SKIP
        // LOCKED): either way p1 was still the holder when it finished.
        assert.equal(finished.status, 'fulfilled', `round ${round}: nobody holds the job and p1 did not finish it`);
        assert.deepEqual([row.state, row.leaseToken], ['done', stale.leaseToken]);
      }
    }
  }));

  test('PostgreSQL COORD-3: two processes racing for a lock 50 times: exactly one wins each round', withStores(2, async ([p1, p2]) => {
    const wins = { p1: 0, p2: 0 };
    for (let round = 0; round < 50; round++) {
      // Each round a fresh name (both find it free) or the lapse of the last round's lock (both find it lapsed).
      const name = round % 2 === 0 ? `housekeeping-${round}` : 'gc';
      const now = 1_000_000 + round * 100_000;
      const [a, b] = await Promise.all([p1!.locks.tryAcquire(name, 'p1', now, 30_000), p2!.locks.tryAcquire(name, 'p2', now, 30_000)]);
      assert.equal(Number(a) + Number(b), 1, `round ${round}: p1 ${a}, p2 ${b}`);
      if (a) wins.p1++;
      else wins.p2++;
      const winner = a ? p1! : p2!;
      const loser = a ? p2! : p1!;
      assert.equal(await loser.locks.tryAcquire(name, a ? 'p2' : 'p1', now + 1, 30_000), false, `round ${round}: the loser stays out`);
      assert.equal(await winner.locks.tryAcquire(name, a ? 'p1' : 'p2', now + 2, 30_000), true, `round ${round}: the winner extends`);
    }
    assert.equal(wins.p1 + wins.p2, 50);
  }));

  test('PostgreSQL: two concurrent inserts at the quota boundary: exactly one wins', withStores(2, async (stores) => {
    for (let round = 0; round < 15; round++) {
      const vol = `v-quota${round}`;
      assert.equal(await stores[0]!.snapshots.insertIfAbsent(snapshot({ volumeId: vol }), 2), 'inserted');
      const results = await Promise.all(Array.from({ length: 6 }, (_, i) => stores[i % 2]!.snapshots.insertIfAbsent(snapshot({ volumeId: vol }), 2)));
      assert.deepEqual(results.filter((r) => r === 'inserted').length, 1, `round ${round}: ${results.join(',')}`);
      assert.equal(await stores[1]!.snapshots.countByVolume(vol), 2);
    }
  }));

  test('PostgreSQL: one clientToken and one job key claimed by two processes at once: one record', withStores(2, async (stores) => {
    const rec = { scope: 'acct/bj/op', token: 't', paramsHash: 'h', result: { n: 1 }, completed: false, lastUsedAt: 1 };
    const won = await Promise.all(Array.from({ length: 8 }, (_, i) => stores[i % 2]!.idempotency.insertIfAbsent({ ...rec, result: { n: i } })));
    assert.equal(won.filter(Boolean).length, 1);
    const jobs = await Promise.all(Array.from({ length: 8 }, (_, i) => stores[i % 2]!.jobs.enqueue({ kind: 'k', key: 'same', group: 'g', payload: { i } })));
    assert.equal(new Set(jobs.map((j) => j.id)).size, 1);
  }));

  test('PostgreSQL GC-3: a hold a collection found lapsed stays dead, whatever the writer\'s clock says', withStores(2, async ([writer, gc]) => {
    // The writer's clock is 30 s behind the collector's. By the writer's clock its hold is still live.
    const t = 5_000_000;
    const hold = await writer!.gcHolds.open('capture', t, 60_000);
    const s = snapshot();
    await writer!.snapshots.insertIfAbsent(s);
    assert.equal(await gc!.gcHolds.oldestLiveStart(t + 61_000), null, 'lapsed at the collector\'s clock: not protected');
    assert.equal(await writer!.gcHolds.renew(hold.id, t + 31_000, 60_000), false, 'and never revived by a lagging clock');
    assert.equal(await writer!.snapshots.publishUnderHold(s.id, { status: 'Available', manifestId: 'm', progress: 100 }, hold.id, t + 31_000), null);
    assert.equal((await gc!.snapshots.getAny(s.id))?.status, 'Creating');
    // One clock, the hold lapsed: a renewal racing the publication cannot rescue it; both refuse.
    const late = await writer!.gcHolds.open('capture', t, 60_000);
    const s2 = snapshot();
    await writer!.snapshots.insertIfAbsent(s2);
    const [renewed, published] = await Promise.all([
      gc!.gcHolds.renew(late.id, t + 60_001, 60_000),
      writer!.snapshots.publishUnderHold(s2.id, { status: 'Available', manifestId: 'm2', progress: 100 }, late.id, t + 60_001),
    ]);
    assert.deepEqual([renewed, published], [false, null]);
  }));

  test('PostgreSQL GC-3/GC-4: renew and publish racing a collection: whatever is published, the collection protected', withStores(3, async ([writer, renewer, gc]) => {
    // Each round: a hold that lapses at L by the collector's clock, a writer whose clock says L - 1
    // (renew and publish from two processes at once), and a collection (holds, then roots) at L + 1.
    // Whatever the interleaving, a published manifest was either counted through its hold or read as a root.
    let published = 0;
    let refused = 0;
    for (let round = 0; round < 20; round++) {
      const t = 10_000_000 + round * 1_000_000;
      const lapse = t + 60_000;
      const hold = await writer!.gcHolds.open('capture', t, 60_000);
      const s = snapshot();
      await writer!.snapshots.insertIfAbsent(s);
      const manifestId = `m${round}`;
      const collect = (async () => {
        await new Promise((r) => setTimeout(r, round % 4));
        const oldest = await gc!.gcHolds.oldestLiveStart(lapse + 1);
        const roots = await gc!.snapshots.manifestIds();
        return { counted: oldest !== null && oldest <= t, rooted: roots.includes(manifestId) };
      })();
      const [seen, , pub] = await Promise.all([
        collect,
        renewer!.gcHolds.renew(hold.id, lapse - 1, 60_000),
        (async () => {
          await new Promise((r) => setTimeout(r, (round * 7) % 3));
          return writer!.snapshots.publishUnderHold(s.id, { status: 'Available', manifestId, progress: 100 }, hold.id, lapse - 1);
        })(),
      ]);
      if (pub) {
        published++;
        assert.ok(seen.counted || seen.rooted, `round ${round}: published ${manifestId} but the collection neither counted its hold nor read it as a root`);
      } else refused++;
      await writer!.gcHolds.close(hold.id);
    }
    assert.equal(published + refused, 20);
  }));

  test('PostgreSQL GC-3: a publication checked live but not yet committed makes a collection wait (FOR UPDATE on the hold)', withStores(3, async ([writer, , gc], url) => {
    // Made deterministic: another session locks the snapshot's row, so the publication stops between
    // its hold check and its update. A collection that finds the hold lapsed runs meanwhile. It must
    // not finish its read of holds and roots until the publication committed, or it would miss both.
    const t = 90_000_000;
    const hold = await writer!.gcHolds.open('capture', t, 60_000);
    const s = snapshot();
    await writer!.snapshots.insertIfAbsent(s);
    const locker = createPool(url, { applicationName: 'snapferry-test-rowlock' });
    let release!: () => void;
    const released = new Promise<void>((resolve) => (release = resolve));
    let rowLocked!: () => void;
    const rowLockTaken = new Promise<void>((resolve) => (rowLocked = resolve));
    const holding = withTransaction(locker, async (c) => {
      await c.query('SELECT 1 FROM snapshots WHERE id = $1 FOR UPDATE', [s.id]);
      rowLocked();
      await released;
    });
    try {
      await rowLockTaken;
      const publishing = writer!.snapshots.publishUnderHold(s.id, { status: 'Available', manifestId: 'mw', progress: 100 }, hold.id, t + 59_000);
      await waitForLockWait(url, 'snapferry-test-p0');
      let collected = false;
      const collecting = (async () => {
        const oldest = await gc!.gcHolds.oldestLiveStart(t + 61_000);
        const roots = await gc!.snapshots.manifestIds();
        collected = true;
        return { counted: oldest !== null, rooted: roots.includes('mw') };
      })();
      const waited = await waitForLockWait(url, 'snapferry-test-p2', () => collected);
      assert.equal(waited, true, 'the collection waits for the publication holding the hold');
      release();
      await holding;
      const [published, seen] = await Promise.all([publishing, collecting]);
      assert.equal(published?.status, 'Available', 'checked live by its own clock, committed first');
      assert.ok(seen.counted || seen.rooted, 'the collection read the published manifest as a root');
    } finally {
      release();
      await holding.catch(() => undefined);
      await locker.end();
    }
  }));

  test('PostgreSQL chunk index: a touch and a delete claim of one blob from two processes never both succeed', withStores(2, async ([a, b]) => {
    const ids = Array.from({ length: 300 }, (_, i) => i.toString(16).padStart(64, '0'));
    for (const id of ids) await a!.chunkIndex.markUsed('chunks', id, (await a!.chunkIndex.beginPut('chunks', id, 1000))!, 1, 1000);
    // A copy asks "which do you lack" (touching what it finds) while a collection claims the same
    // blobs with a cutoff the touch passes: each blob is either reported (and then kept) or claimed.
    const [found, claims] = await Promise.all([
      a!.chunkIndex.present('chunks', ids, 5000),
      Promise.all(ids.map((id) => b!.chunkIndex.claimForDelete('chunks', id, { cutoffMs: 4000, now: 5000, staleClaimBeforeMs: -Infinity }))),
    ]);
    ids.forEach((id, i) => assert.notEqual(found.has(id), claims[i] !== null, `${id}: reported ${found.has(id)}, claimed ${claims[i] !== null}`));
    // Two touches of overlapping sets in opposite orders, many times at once: no deadlock.
    const reversed = [...ids].reverse();
    await Promise.all(Array.from({ length: 10 }, (_, i) => (i % 2 ? a : b)!.chunkIndex.present('chunks', i % 2 ? ids : reversed, 6000 + i)));
  }));

  test('PostgreSQL: integrityCheck is clean on a sound database and names broken rows', withStores(1, async ([store], url) => {
    await admin(url, 'CREATE EXTENSION IF NOT EXISTS amcheck');
    await store!.volumes.insertIfAbsent(volume());
    await store!.snapshots.insertIfAbsent(snapshot({ status: 'Available', progress: 100, manifestId: 'a'.repeat(64) }));
    assert.deepEqual(await store!.integrityCheck(), []);
    const broken = snapshot({ status: 'Available', progress: 40 });
    await store!.snapshots.insertIfAbsent(broken);
    await store!.diskBases.set('v-gone0000', 'b'.repeat(64), 1);
    const problems = await store!.integrityCheck();
    assert.deepEqual(problems, [
      `metadata: snapshot ${broken.id} is Available without a manifest id`,
      `metadata: snapshot ${broken.id} is Available with progress 40, not 100`,
      'metadata: disk base of v-gone0000, a disk that does not exist (a garbage-collection root that never goes away)',
    ]);
    await assert.rejects(admin(url, "INSERT INTO jobs (kind, key, grp, payload, state, run_after, created_at, updated_at) VALUES ('k', 'x', 'g', '{}', 'running', 0, 0, 0)"), /jobs_running_is_leased/);
  }));
}
