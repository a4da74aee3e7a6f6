import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash, randomBytes, randomFillSync } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { Sha256Pool, Sha256PoolClosedError, sha256Hex } from '../src/lib/sha256-pool.ts';

const ref = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');
const POOL_URL = new URL('../src/lib/sha256-pool.ts', import.meta.url).href;
const TSX_API = import.meta.resolve('tsx/esm/api');

/**
 * Runs an ES module snippet in a fresh node: as `node --import tsx`, or through tsx's register() the
 * way bin/snapferry.js starts the server. The snippet gets `Sha256Pool` in scope.
 */
function runChild(code: string, mode: 'import' | 'register', timeoutMs = 20_000) {
  const dir = mkdtempSync(join(tmpdir(), 'snapferry-pool-'));
  const file = join(dir, 'child.mjs');
  const prelude =
    mode === 'register' ? `import { register } from ${JSON.stringify(TSX_API)};\nregister();\n` : '';
  writeFileSync(file, `${prelude}const { Sha256Pool } = await import(${JSON.stringify(POOL_URL)});\n${code}`);
  try {
    const args = mode === 'import' ? ['--import', 'tsx', file] : [file];
    return spawnSync(process.execPath, args, { encoding: 'utf8', timeout: timeoutMs });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

describe('Sha256Pool', () => {
  const pool = new Sha256Pool({ slotSize: 64 * 1024 });
  after(() => pool.close());

  it('sha256Hex matches node:crypto', () => {
    const b = randomBytes(1000);
    assert.equal(sha256Hex(b), ref(b));
  });

  it('hashes inline, single-slot and multi-part inputs correctly', async () => {
    const sizes = [0, 1, 1000, 64 * 1024 - 1, 64 * 1024, 64 * 1024 + 1, 200_000, 1024 * 1024, 3 * 1024 * 1024 + 7];
    for (const size of sizes) {
      const b = randomBytes(size);
      assert.equal(await pool.hash(b), ref(b), `size ${size}`);
    }
  });

  it('does not detach, modify or depend on the layout of the caller buffer', async () => {
    const backing = randomBytes(2 * 1024 * 1024 + 100);
    const copy = Buffer.from(backing);
    const view = backing.subarray(37, 37 + 1024 * 1024 + 5); // offset view into a larger buffer
    const u8 = new Uint8Array(backing.buffer, backing.byteOffset + 11, 300_000);
    const [h1, h2] = await Promise.all([pool.hash(view), pool.hash(u8)]);
    assert.equal(h1, ref(view));
    assert.equal(h2, ref(u8));
    assert.equal(backing.buffer.byteLength > 0, true);
    assert.equal(view.length, 1024 * 1024 + 5);
    assert.deepEqual(backing, copy);
  });

  it('hashes SharedArrayBuffer-backed input in place, leaving it untouched', async () => {
    const sab = new SharedArrayBuffer(3 * 1024 * 1024);
    const all = Buffer.from(sab);
    randomFillSync(all);
    const copy = Buffer.from(all);
    const views = [all, all.subarray(5, 5 + 2 * 1024 * 1024 + 3), new Uint8Array(sab, 1000, 70_000)];
    const got = await Promise.all(views.map((v) => pool.hash(v)));
    assert.deepEqual(got, views.map(ref));
    assert.deepEqual(all, copy);
  });

  it('keeps results straight under many concurrent hashes of mixed sizes', async () => {
    const inputs = Array.from({ length: 200 }, (_, i) => randomBytes([10, 70_000, 150_000, 1 << 20][i % 4]!));
    const got = await Promise.all(inputs.map((b) => pool.hash(b)));
    assert.deepEqual(got, inputs.map(ref));
  });

  it('uses at least one worker and the requested size', () => {
    assert.equal(new Sha256Pool({ size: 0 }).size, 1);
    assert.equal(new Sha256Pool({ size: 3 }).size, 3);
    assert.ok(new Sha256Pool().size >= 1);
  });

  it('close rejects queued hashes and later calls; it is idempotent', async () => {
    const p = new Sha256Pool({ size: 1, slotsPerWorker: 1, inlineBelow: 0 });
    const big = randomBytes(4 * 1024 * 1024);
    const pending = Array.from({ length: 8 }, () => p.hash(big));
    const closing = p.close();
    const results = await Promise.allSettled(pending);
    for (const r of results) {
      if (r.status === 'rejected') assert.ok(r.reason instanceof Sha256PoolClosedError);
      else assert.equal(r.value, ref(big));
    }
    assert.ok(results.some((r) => r.status === 'rejected'));
    await closing;
    await p.close();
    await assert.rejects(p.hash(big), Sha256PoolClosedError);
    await assert.rejects(p.hash(Buffer.alloc(1)), Sha256PoolClosedError);
  });

  it('a worker that dies fails only its own hashes and is replaced', async () => {
    const p = new Sha256Pool({ size: 1, inlineBelow: 0 });
    try {
      const b = randomBytes(1 << 20);
      assert.equal(await p.hash(b), ref(b));
      const inFlight = p.hash(randomBytes(16 << 20));
      // Kill the worker from outside, as a crash would.
      const internals = p as unknown as { workers: Array<{ worker: { terminate(): Promise<number> } }> };
      await internals.workers[0]!.worker.terminate();
      await assert.rejects(inFlight, /exited unexpectedly/);
      assert.equal(await p.hash(b), ref(b));
    } finally {
      await p.close();
    }
  });

  for (const mode of ['import', 'register'] as const) {
    it(`worker starts when run through tsx (${mode}); a forgotten pool does not keep the process alive`, () => {
      const code = `
        const pool = new Sha256Pool({ inlineBelow: 0 });
        const h = await pool.hash(Buffer.alloc(1 << 20, 1));
        console.log(h);
        // no close(): the process must still exit on its own
      `;
      const r = runChild(code, mode);
      assert.equal(r.signal, null, `child timed out (hung?): ${r.stderr}`);
      assert.equal(r.status, 0, r.stderr);
      assert.equal(r.stdout.trim(), ref(Buffer.alloc(1 << 20, 1)));
    });
  }

  it('warm() starts the workers before any hash; a warmed, idle, forgotten pool does not keep the process alive', () => {
    const code = `
      const pool = new Sha256Pool({ size: 2, inlineBelow: 0 });
      pool.warm();
      pool.warm(); // idempotent: still two workers
      console.log(pool.workers.length);
      await new Promise((r) => setTimeout(r, 200));
      console.log(await pool.hash(Buffer.alloc(1 << 20, 3)));
      // no close()
    `;
    const r = runChild(code, 'import');
    assert.equal(r.signal, null, `child timed out (hung?): ${r.stderr}`);
    assert.equal(r.status, 0, r.stderr);
    assert.deepEqual(r.stdout.trim().split('\n'), ['2', ref(Buffer.alloc(1 << 20, 3))]);
  });

  it('warm() after close() starts nothing', async () => {
    const p = new Sha256Pool({ size: 2 });
    await p.close();
    p.warm();
    assert.equal((p as unknown as { workers: unknown[] }).workers.length, 0);
    await assert.rejects(p.hash(Buffer.alloc(1 << 20)), Sha256PoolClosedError);
  });

  it('a pending hash keeps the process alive until it resolves', () => {
    const code = `
      const pool = new Sha256Pool({ inlineBelow: 0 });
      pool.hash(Buffer.alloc(8 << 20, 2)).then((h) => console.log(h));
    `;
    const r = runChild(code, 'import');
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout.trim(), ref(Buffer.alloc(8 << 20, 2)));
  });

  it('an idle pool with workers started exits cleanly after close()', () => {
    const code = `
      const pool = new Sha256Pool({ size: 2, inlineBelow: 0 });
      await Promise.all([pool.hash(Buffer.alloc(100)), pool.hash(Buffer.alloc(200))]);
      await pool.close();
      console.log('closed');
    `;
    const r = runChild(code, 'import');
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout.trim(), 'closed');
  });
});
