import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash, randomBytes, randomFillSync } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createRequire } from 'node:module';
import { after, describe, it } from 'node:test';
import { Sha256Pool, Sha256PoolClosedError, sha256Hex } from '../src/lib/sha256-pool.ts';
import { PACK_MIN_AT_REST, PACK_SAMPLE_BYTES, PACK_WORTH } from '../src/lib/zstd-pack.mjs';

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

const zstd = createRequire(import.meta.url)('zstd-napi/binding') as typeof import('zstd-napi/binding.js');

/** The content of a zstd frame, checked against the size the frame declares. */
function unzstd(frame: Buffer): Buffer {
  const size = zstd.getFrameContentSize(frame);
  assert.ok(size !== null, 'the frame declares its content size');
  const out = Buffer.alloc(size);
  assert.equal(new zstd.DCtx().decompress(out, frame), size);
  return out;
}

/** `n` bytes of repeated text lines (compress far below 90 %), distinct per `tag`. */
function textBytes(n: number, tag = 0): Buffer {
  const lines: string[] = [];
  for (let i = 0, len = 0; len < n; i++) {
    const line = `block ${tag} line ${i}: the quick brown fox jumps over the lazy dog\n`;
    lines.push(line);
    len += line.length;
  }
  return Buffer.from(lines.join('')).subarray(0, n);
}

/** A copy of `b` in a SharedArrayBuffer (the zero-copy path). */
function shared(b: Uint8Array): Buffer {
  const s = Buffer.from(new SharedArrayBuffer(b.byteLength));
  s.set(b);
  return s;
}

/** Checks a hashAndPack answer for `input` that must carry a frame. */
function assertPacked(got: { hex: string; packed: Buffer | null }, input: Uint8Array, what: string): void {
  assert.equal(got.hex, ref(input), `${what}: hex`);
  assert.ok(got.packed !== null, `${what}: packed`);
  assert.ok(got.packed.length < PACK_WORTH * input.byteLength, `${what}: ${got.packed.length} bytes is not worth it`);
  // The frame owns exactly its bytes (its own transferred ArrayBuffer, not a view into a scratch).
  assert.equal(got.packed.byteOffset, 0, `${what}: byteOffset`);
  assert.equal(got.packed.buffer.byteLength, got.packed.length, `${what}: backing store size`);
  assert.ok(unzstd(got.packed).equals(input), `${what}: frame content`);
}

describe('Sha256Pool.hashAndPack', () => {
  const MiB = 1024 * 1024;
  const pool = new Sha256Pool({ size: 2 });
  after(() => pool.close());

  it('random 1 MiB: no frame, right hex', async () => {
    const b = randomBytes(MiB);
    const got = await pool.hashAndPack(b);
    assert.equal(got.hex, ref(b));
    assert.equal(got.packed, null);
  });

  it('compressible 1 MiB: a frame below 90 % that decodes to the input, right hex', async () => {
    const b = textBytes(MiB);
    const copy = Buffer.from(b);
    assertPacked(await pool.hashAndPack(b), b, 'text');
    assert.deepEqual(b, copy); // only read
  });

  it('compressible 1 MiB in a SharedArrayBuffer (zero-copy path): a frame, right hex', async () => {
    const backing = shared(textBytes(MiB + 1000, 7));
    const view = backing.subarray(333, 333 + MiB); // an offset view: the worker must honour byteOffset
    assertPacked(await pool.hashAndPack(view), view, 'shared');
    assertPacked(await pool.hashAndPack(backing), backing, 'shared whole');
  });

  it('an input below 128 KiB that compresses well: no frame, right hex (inline or not)', async () => {
    const p0 = new Sha256Pool({ size: 1, inlineBelow: 0 });
    try {
      for (const n of [0, 1000, 100 * 1024, PACK_MIN_AT_REST - 1]) {
        const b = textBytes(n);
        for (const p of [pool, p0]) {
          const got = await p.hashAndPack(b);
          assert.equal(got.hex, ref(b), `size ${n}`);
          assert.equal(got.packed, null, `size ${n}`);
        }
      }
      // The boundary itself is considered.
      const b = textBytes(PACK_MIN_AT_REST);
      assertPacked(await pool.hashAndPack(b), b, 'PACK_MIN_AT_REST');
    } finally {
      await p0.close();
    }
  });

  it('1 MiB whose first 64 KiB are random and the rest zeros: no frame (the sample decides)', async () => {
    const b = Buffer.alloc(MiB);
    randomFillSync(b, 0, PACK_SAMPLE_BYTES);
    // The whole would compress to ~6 %: only the sample can say no.
    for (const input of [b, shared(b)]) {
      const got = await pool.hashAndPack(input);
      assert.equal(got.hex, ref(b));
      assert.equal(got.packed, null);
    }
  });

  it('1 MiB whose first 64 KiB compress and the rest is random: no frame (the whole decides)', async () => {
    const b = randomBytes(MiB);
    textBytes(PACK_SAMPLE_BYTES).copy(b);
    for (const input of [b, shared(b)]) {
      const got = await pool.hashAndPack(input);
      assert.equal(got.hex, ref(b));
      assert.equal(got.packed, null);
    }
  });

  it('an input streamed in parts (not shared, larger than a slot): right hex, no frame; shared or one slot: a frame', async () => {
    const p = new Sha256Pool({ size: 1, slotSize: 256 * 1024 });
    try {
      const b = textBytes(MiB, 3);
      const got = await p.hashAndPack(b);
      assert.equal(got.hex, ref(b));
      assert.equal(got.packed, null);
      // The same pool compresses what it sends whole: shared memory of any size, or one slot's worth.
      assertPacked(await p.hashAndPack(shared(b)), b, 'shared 1 MiB');
      const one = b.subarray(0, 256 * 1024);
      assertPacked(await p.hashAndPack(one), one, 'one slot');
      // Parts of a packed task and plain hashes interleave on the one worker without mixing up.
      const mixed = await Promise.all([p.hashAndPack(b), p.hash(b), p.hashAndPack(one), p.hashAndPack(textBytes(MiB + 5, 4))]);
      assert.deepEqual(mixed.map((r) => (typeof r === 'string' ? r : r.hex)), [ref(b), ref(b), ref(one), ref(textBytes(MiB + 5, 4))]);
      assert.equal((mixed[0] as { packed: Buffer | null }).packed, null);
      assertPacked(mixed[2] as { hex: string; packed: Buffer | null }, one, 'one slot, mixed');
    } finally {
      await p.close();
    }
  });

  it('hash() tasks carry no pack rule and compress nothing', async () => {
    const p = new Sha256Pool({ size: 1, inlineBelow: 0 });
    try {
      p.warm();
      const internals = p as unknown as { workers: Array<{ worker: { postMessage(m: unknown, t?: unknown): void } }> };
      const w = internals.workers[0]!.worker;
      const posted: Array<Record<string, unknown>> = [];
      const orig = w.postMessage.bind(w);
      w.postMessage = (m: unknown, t?: unknown) => {
        posted.push(m as Record<string, unknown>);
        orig(m, t);
      };
      const text = textBytes(MiB);
      assert.equal(await p.hash(text), ref(text));
      assert.equal(await p.hash(shared(text)), ref(text));
      assert.equal(posted.length, 2);
      for (const m of posted) assert.equal('pack' in m, false);
      posted.length = 0;
      assertPacked(await p.hashAndPack(text), text, 'after spying');
      assert.deepEqual(posted[0]!.pack, { level: 1 });
    } finally {
      await p.close();
    }
  });

  it('a compression that throws is no frame, not a failed hash; the worker packs the next task', async () => {
    const p = new Sha256Pool({ size: 1 });
    try {
      p.warm();
      const internals = p as unknown as { workers: Array<{ worker: { postMessage(m: unknown, t?: unknown): void } }> };
      const w = internals.workers[0]!.worker;
      const orig = w.postMessage.bind(w);
      let sabotage = true;
      w.postMessage = (m: unknown, t?: unknown) => {
        const msg = m as { pack?: object };
        // A BigInt level makes the binding's compress() throw (it cannot be made a number).
        orig(sabotage && msg.pack ? { ...msg, pack: { ...msg.pack, level: 1n } } : m, t);
      };
      const b = textBytes(MiB);
      const got = await p.hashAndPack(b);
      assert.equal(got.hex, ref(b));
      assert.equal(got.packed, null);
      sabotage = false;
      assertPacked(await p.hashAndPack(b), b, 'next task');
    } finally {
      await p.close();
    }
  });

  it('keeps answers straight under many concurrent hashAndPack and hash calls, mixed', async () => {
    type Job = { input: Buffer; pack: boolean; expectFrame: boolean };
    const jobs: Job[] = Array.from({ length: 40 }, (_, i): Job => {
      switch (i % 5) {
        case 0: return { input: randomBytes(MiB), pack: true, expectFrame: false };
        case 1: return { input: textBytes(MiB, i), pack: true, expectFrame: true };
        case 2: return { input: shared(textBytes(MiB, i)), pack: true, expectFrame: true };
        case 3: return { input: textBytes(100 * 1024 + i, i), pack: true, expectFrame: false };
        default: return { input: textBytes(MiB, i), pack: false, expectFrame: false };
      }
    });
    const got = await Promise.all(jobs.map((j) => (j.pack ? pool.hashAndPack(j.input) : pool.hash(j.input))));
    got.forEach((g, i) => {
      const j = jobs[i]!;
      if (!j.pack) return assert.equal(g, ref(j.input), `job ${i}`);
      const r = g as { hex: string; packed: Buffer | null };
      if (j.expectFrame) assertPacked(r, j.input, `job ${i}`);
      else {
        assert.equal(r.hex, ref(j.input), `job ${i}`);
        assert.equal(r.packed, null, `job ${i}`);
      }
    });
  });

  it('close() rejects pending hashAndPack calls with Sha256PoolClosedError, and later ones', async () => {
    const p = new Sha256Pool({ size: 1, slotsPerWorker: 1 });
    const big = textBytes(4 * MiB);
    const pending = Array.from({ length: 8 }, () => p.hashAndPack(big));
    const closing = p.close();
    const results = await Promise.allSettled(pending);
    for (const r of results) {
      if (r.status === 'rejected') assert.ok(r.reason instanceof Sha256PoolClosedError);
      else assertPacked(r.value, big, 'settled before close');
    }
    assert.ok(results.some((r) => r.status === 'rejected'));
    await closing;
    await assert.rejects(p.hashAndPack(big), Sha256PoolClosedError);
    await assert.rejects(p.hashAndPack(Buffer.alloc(1)), Sha256PoolClosedError);
  });

  it('a worker that dies fails its hashAndPack tasks; its replacement packs', async () => {
    const p = new Sha256Pool({ size: 1 });
    try {
      const b = textBytes(MiB);
      assertPacked(await p.hashAndPack(b), b, 'before');
      const inFlight = p.hashAndPack(shared(textBytes(32 * MiB)));
      const internals = p as unknown as { workers: Array<{ worker: { terminate(): Promise<number> } }> };
      await internals.workers[0]!.worker.terminate();
      await assert.rejects(inFlight, /exited unexpectedly/);
      assertPacked(await p.hashAndPack(b), b, 'after');
    } finally {
      await p.close();
    }
  });
});
