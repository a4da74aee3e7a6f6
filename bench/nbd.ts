/**
 * NBD server throughput: our server (file-backed target) against `nbdkit file`, both driven by the
 * same nbdcopy invocation over TCP loopback.
 *
 *   node --import tsx bench/nbd.ts [--size-mib=1024] [--runs=3] [--keep]
 *
 * For each server and each client flag set it measures:
 *   write: nbdcopy SOURCE.raw -> export     (export backed by a fresh sparse file)
 *   read:  nbdcopy export -> OUT.raw        (checked bit-identical to the source afterwards)
 * Throughput is the image's logical size divided by wall time (zero regions are skipped by both
 * servers via block status / write-zeroes, exactly as in production copies).
 *
 * Flag sets (bench/run.ts reads their labels): nbdcopy's defaults (nbdkit advertises multi-conn, so
 * nbdcopy opens several connections to it: 2 on this 2-core machine, counted with `nbdkit -v`, while
 * our server, which never advertises multi-conn, gets 1); `--connections=1` for both, which compares the servers per connection; and
 * `--flush` (defaults plus a flush before nbdcopy exits), which makes both servers do the same durable
 * work: the write is timed until the export's bytes are on the device (nbdkit fdatasyncs its file,
 * we the disk's segment files), the read until its output file is.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, open, rm, stat } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { startNbdServer } from '../src/blockdev/nbd/index.ts';
import { FileExportProvider } from '../test/helpers/file-block-target.ts';
import { DiskManager } from '../src/blockdev/disk-manager.ts';
import type { ExportProvider } from '../src/blockdev/block-target.ts';

const MiB = 1024 * 1024;
const args = new Map(
  process.argv.slice(2).map((a) => {
    const [k, v] = a.replace(/^--/, '').split('=');
    return [k, v ?? 'true'] as const;
  }),
);
const SIZE = Number(args.get('size-mib') ?? 1024) * MiB;
const RUNS = Number(args.get('runs') ?? 3);
const KEEP = args.has('keep');
const DIR = path.resolve('.bench-data/nbd');

const children = new Set<ChildProcess>();
function killChildren(): void {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
}
process.on('exit', killChildren);
for (const sig of ['SIGINT', 'SIGTERM'] as const) {
  process.on(sig, () => {
    killChildren();
    process.exit(130);
  });
}

function run(cmd: string, argv: string[]): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, argv, { stdio: ['ignore', 'ignore', 'pipe'] });
    children.add(child);
    let stderr = '';
    child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', reject);
    child.on('close', (code, signal) => {
      children.delete(child);
      if (code === 0) resolve();
      else reject(new Error(`${cmd} ${argv.join(' ')} failed (${code ?? signal}): ${stderr}`));
    });
  });
}

async function freePort(): Promise<number> {
  const srv = net.createServer();
  await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve));
  const { port } = srv.address() as net.AddressInfo;
  await new Promise<void>((resolve) => srv.close(() => resolve()));
  return port;
}

async function waitForPort(port: number, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = net.connect(port, '127.0.0.1');
      s.once('connect', () => {
        s.destroy();
        resolve(true);
      });
      s.once('error', () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > deadline) throw new Error(`port ${port} did not open`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function sha256(file: string, length: number): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(file, { start: 0, end: length - 1, highWaterMark: 4 * MiB })) {
    h.update(chunk as Buffer);
  }
  return h.digest('hex');
}

/** Deterministic mixed image: random, text, zero (left sparse) and half-zero 1 MiB blocks. */
async function makeImage(file: string): Promise<void> {
  const fh = await open(file, 'w');
  try {
    let seed = 0x5eed;
    const rand = () => {
      seed = (seed * 1103515245 + 12345) & 0x7fffffff;
      return seed / 0x7fffffff;
    };
    const text = Buffer.from(
      'snapferry nbd benchmark: the quick brown fox jumps over the lazy dog 0123456789\n'.repeat(14_000),
    ).subarray(0, MiB);
    for (let off = 0; off < SIZE; off += MiB) {
      const r = rand();
      let block: Buffer | null;
      if (r < 0.45) block = randomBytes(MiB);
      else if (r < 0.65) block = text;
      else if (r < 0.85) block = null; // zeros, left as a hole
      else {
        block = Buffer.alloc(MiB);
        for (let k = 0; k < MiB; k += 128 * 1024) randomBytes(64 * 1024).copy(block, k);
      }
      if (block) await fh.write(block, 0, MiB, off);
    }
    await fh.truncate(SIZE);
  } finally {
    await fh.close();
  }
}

async function freshFile(file: string): Promise<void> {
  await rm(file, { force: true });
  const fh = await open(file, 'w');
  await fh.truncate(SIZE);
  await fh.close();
}

interface Target {
  name: string;
  /** Starts a server exporting a fresh empty file; returns the URI and a stop function. */
  start(file: string): Promise<{ uri: string; stop(): Promise<void> }>;
}

/** The service's real disk path: segment files + chunk map (changed-chunk tracking) + copy-on-write hooks. */
const ourDisk: Target = {
  name: 'snapferry-disk',
  async start(file) {
    const dir = `${file}.disks`;
    await rm(dir, { recursive: true, force: true });
    const disks = new DiskManager(dir, MiB);
    await disks.init();
    await disks.create('v-bench', SIZE);
    const provider: ExportProvider = {
      list: async () => [{ name: 'v-bench' }],
      describe: async () => ({ size: SIZE, readOnly: false }),
      open: async () => {
        const held = await disks.acquire('v-bench');
        return { target: held.disk, readOnly: false, release: () => held.release() };
      },
    };
    const server = await startNbdServer({ host: '127.0.0.1', port: 0, exports: provider });
    return {
      uri: `nbd://127.0.0.1:${server.port}/v-bench`,
      async stop() {
        await server.close();
        await disks.closeAll();
        await rm(dir, { recursive: true, force: true });
      },
    };
  },
};

/** The protocol server alone, over a plain file target. */
const ours: Target = {
  name: 'snapferry-file',
  async start(file) {
    const provider = new FileExportProvider();
    await provider.add({ name: 'bench', path: file, size: SIZE });
    const server = await startNbdServer({ host: '127.0.0.1', port: 0, exports: provider });
    return { uri: `nbd://127.0.0.1:${server.port}/bench`, stop: () => server.close() };
  },
};

const nbdkit: Target = {
  name: 'nbdkit-file',
  async start(file) {
    const port = await freePort();
    const child = spawn('nbdkit', ['--exit-with-parent', '-f', '-p', String(port), '-i', '127.0.0.1', 'file', file], {
      stdio: ['ignore', 'ignore', 'inherit'],
    });
    children.add(child);
    const exited = new Promise<void>((resolve) => child.once('close', () => resolve()));
    await waitForPort(port);
    return {
      uri: `nbd://127.0.0.1:${port}/`,
      async stop() {
        child.kill('SIGTERM');
        await exited;
        children.delete(child);
      },
    };
  },
};

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

async function main(): Promise<void> {
  await mkdir(DIR, { recursive: true });
  const src = path.join(DIR, 'source.raw');
  const exportFile = path.join(DIR, 'export.raw');
  const out = path.join(DIR, 'out.raw');

  console.log(`creating ${SIZE / MiB} MiB mixed image ...`);
  await makeImage(src);
  const srcHash = await sha256(src, SIZE);
  await run('sync', []);
  const allocated = (await stat(src)).blocks * 512;
  console.log(`source: ${(allocated / MiB).toFixed(0)} MiB allocated of ${SIZE / MiB} MiB, sha256 ${srcHash.slice(0, 16)}…`);

  const flagSets: Array<{ label: string; flags: string[] }> = [
    { label: 'nbdcopy defaults', flags: [] },
    { label: 'nbdcopy --connections=1', flags: ['--connections=1'] },
    { label: 'nbdcopy --flush', flags: ['--flush'] },
  ];
  const results: Array<{ flags: string; server: string; write: number; read: number }> = [];

  for (const { label, flags } of flagSets) {
    const samples = new Map<string, { write: number[]; read: number[] }>();
    for (let runIdx = 0; runIdx < RUNS; runIdx++) {
      // Alternate the order so page-cache warmth and disk state favour neither server.
      const order = runIdx % 2 === 0 ? [ourDisk, ours, nbdkit] : [nbdkit, ours, ourDisk];
      for (const target of order) {
        await freshFile(exportFile);
        await rm(out, { force: true });
        const server = await target.start(exportFile);
        try {
          // Start each timed copy with no dirty pages pending, so earlier writeback does not land on it.
          await run('sync', []);
          let t0 = process.hrtime.bigint();
          await run('nbdcopy', [...flags, src, server.uri]);
          const writeS = Number(process.hrtime.bigint() - t0) / 1e9;
          await run('sync', []);
          t0 = process.hrtime.bigint();
          await run('nbdcopy', [...flags, server.uri, out]);
          const readS = Number(process.hrtime.bigint() - t0) / 1e9;
          const s = samples.get(target.name) ?? { write: [], read: [] };
          s.write.push(SIZE / MiB / writeS);
          s.read.push(SIZE / MiB / readS);
          samples.set(target.name, s);
        } finally {
          await server.stop();
        }
        const outHash = await sha256(out, SIZE);
        if (outHash !== srcHash) throw new Error(`${target.name}: copy is not bit-identical (${label})`);
      }
    }
    for (const [serverName, s] of samples) {
      results.push({ flags: label, server: serverName, write: median(s.write), read: median(s.read) });
    }
  }

  console.log(`\nmedian of ${RUNS} runs, ${SIZE / MiB} MiB image, MiB/s (logical bytes / wall time):`);
  console.log('flags                      server        write MiB/s   read MiB/s');
  for (const r of results) {
    console.log(`${r.flags.padEnd(26)} ${r.server.padEnd(13)} ${r.write.toFixed(0).padStart(11)} ${r.read.toFixed(0).padStart(12)}`);
  }
  for (const { label } of flagSets) {
    const k = results.find((r) => r.flags === label && r.server === nbdkit.name)!;
    for (const target of [ourDisk, ours]) {
      const o = results.find((r) => r.flags === label && r.server === target.name)!;
      console.log(`ratio ${target.name}/nbdkit (${label}): write ${(o.write / k.write).toFixed(2)}, read ${(o.read / k.read).toFixed(2)}`);
    }
  }
  if (!KEEP) await rm(DIR, { recursive: true, force: true });
}

main().catch((err) => {
  console.error(err);
  killChildren();
  process.exitCode = 1;
});
