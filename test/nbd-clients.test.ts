/**
 * The NBD server against the real Debian clients: qemu-img, qemu-io (QEMU's NBD client), nbdcopy
 * and nbdinfo (libnbd). Every child process is killed in `after`, also when a test fails.
 */
import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import * as C from '../src/blockdev/nbd/constants.ts';
import { GRANULE, type TargetHooks } from './helpers/file-block-target.ts';
import {
  pseudoRandom,
  runTool,
  runToolOk,
  sha256,
  sha256File,
  spawnTool,
  startTestServer,
  waitFor,
  type TestServer,
} from './helpers/nbd-harness.ts';
import { RawNbdClient } from './helpers/nbd-raw-client.ts';

const MiB = 1024 * 1024;
const IMAGE_SIZE = 6 * MiB + 3 * 512;

/** A raw image with a non-trivial layout: random, zero, text and mixed regions at odd boundaries. */
function makeImage(): Buffer {
  const img = Buffer.alloc(IMAGE_SIZE);
  pseudoRandom(1_500_000, 1).copy(img, 0); // random, ends mid-granule
  // 1_500_000 .. 2_600_000 stays zero (covers whole 64 KiB granules)
  const text = Buffer.from('snapferry nbd test: lorem ipsum dolor sit amet, consectetur adipiscing\n'.repeat(20_000));
  text.copy(img, 2_600_000, 0, 1_000_001);
  pseudoRandom(333_333, 2).copy(img, 3_700_001);
  // sparse islands of data in a zero sea
  for (let off = 4 * MiB; off < 5 * MiB; off += 200_000) pseudoRandom(777, off).copy(img, off + 13);
  pseudoRandom(4096, 3).copy(img, IMAGE_SIZE - 4096); // data right up to the end
  return img;
}

interface MapEntry {
  offset: number;
  length: number;
  type: number;
  description: string;
}

async function nbdinfoMap(uri: string): Promise<MapEntry[]> {
  const r = await runToolOk('nbdinfo', ['--map', '--json', uri]);
  return JSON.parse(r.stdout) as MapEntry[];
}

describe('NBD server with real clients', () => {
  let ts: TestServer;
  let image: Buffer;
  let imagePath: string;
  const bigHooks: TargetHooks = {};

  before(async () => {
    ts = await startTestServer([
      { name: 'disk', size: IMAGE_SIZE, description: 'conversion target' },
      { name: 'upload', size: IMAGE_SIZE },
      { name: 'scratch', size: 4 * MiB },
      { name: 'mapped', size: 8 * MiB },
      { name: 'big', size: 256 * MiB, description: 'for the kill test', hooks: bigHooks },
      { name: 'golden', size: 2 * MiB, readOnly: true, description: 'read-only' },
    ]);
    image = makeImage();
    imagePath = path.join(ts.dir, 'source.raw');
    await writeFile(imagePath, image);
  });

  after(async () => {
    await ts?.cleanup();
  });

  it('qemu-img convert into an export, nbdcopy back out: bit-identical', async () => {
    await runToolOk('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', imagePath, ts.uri('disk')]);
    // The backing file got exactly the image.
    assert.equal(await sha256File(ts.file('disk')), sha256(image));

    // qemu's own comparison through the server (exit 0 means identical).
    const cmp = await runToolOk('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', imagePath, ts.uri('disk')]);
    assert.match(cmp.stdout, /Images are identical/);

    const out = path.join(ts.dir, 'out.raw');
    await runToolOk('nbdcopy', [ts.uri('disk'), out]);
    assert.equal(await sha256File(out, IMAGE_SIZE), sha256(image), 'nbdcopy output differs from the source');

    // The 1.1 MB zero run contains whole granules that were never written: reported as holes.
    const map = await nbdinfoMap(ts.uri('disk'));
    const holeAt = (off: number) => map.find((e) => e.offset <= off && off < e.offset + e.length);
    assert.equal(holeAt(1_600_000)?.type, C.NBD_STATE_HOLE | C.NBD_STATE_ZERO);
    assert.equal(holeAt(100)?.type, 0);
    assert.equal(holeAt(IMAGE_SIZE - 1)?.type, 0);
    assert.equal(
      map.reduce((s, e) => s + e.length, 0),
      IMAGE_SIZE,
      'map covers the export exactly',
    );

    const st = ts.provider.stats('disk');
    assert.equal(st.open, false);
    assert.equal(st.opens, st.releases);
    assert.equal(st.doubleReleases, 0);
  });

  it('nbdcopy uploads into an export with many requests in flight: bit-identical', async () => {
    // Small requests, so the 6 MiB go as ~100 pipelined writes plus zeroing of the holes.
    await runToolOk('nbdcopy', ['--request-size=65536', '--requests=32', imagePath, ts.uri('upload')]);
    assert.equal(await sha256File(ts.file('upload')), sha256(image));
    await runToolOk('nbdcopy', ['--flush', imagePath, ts.uri('upload')]);
    assert.equal(await sha256File(ts.file('upload')), sha256(image));
  });

  it('qemu-io writes and reads at odd offsets and sizes', async () => {
    const expected = Buffer.alloc(4 * MiB);
    const ops: Array<[string, number, number, number]> = [
      ['write -P 0x5a', 1234, 7777, 0x5a],
      ['write -P 0xa5', 65535, 3, 0xa5],
      ['write -P 0x11', MiB - 1, 131_073, 0x11],
      ['write -P 0x77', 4 * MiB - 5, 5, 0x77],
      ['write -z', 1234 + 100, 333, 0], // write zeroes inside the first write
      ['discard', MiB + 4096, 65536, 0], // trim inside the third write: reads back as zero here
    ];
    const args = ['-f', 'raw', ts.uri('scratch')];
    for (const [cmd, off, len, fill] of ops) {
      args.push('-c', `${cmd} ${off} ${len}`);
      expected.fill(fill, off, off + len);
    }
    // qemu-io's own pattern verification, through the server.
    args.push('-c', 'read -P 0x5a 1234 100', '-c', 'read -P 0 1334 333', '-c', 'read -P 0x5a 1667 7344');
    args.push('-c', 'read -P 0xa5 65535 3', '-c', 'read -P 0x77 4194299 5', '-c', 'read -P 0 1052672 65536');
    const r = await runToolOk('qemu-io', args);
    assert.doesNotMatch(r.stdout + r.stderr, /fail|error/i, r.stdout + r.stderr);
    assert.equal((r.stdout.match(/^read /gm) ?? []).length, 6);

    // Read everything back with a different client and compare byte for byte.
    const out = path.join(ts.dir, 'scratch-out.raw');
    await runToolOk('nbdcopy', [ts.uri('scratch'), out]);
    const got = await readFile(out);
    const full = Buffer.concat([got, Buffer.alloc(Math.max(0, 4 * MiB - got.length))]);
    assert.ok(full.equals(expected), 'export content differs from the expected bytes');
  });

  it('nbdinfo --map reports holes for never-written ranges and data for written ones', async () => {
    // One byte in granule 3, 4 KiB at 3 MiB, 64 KiB + 1 straddling granules 80..81.
    await runToolOk('qemu-io', [
      '-f',
      'raw',
      ts.uri('mapped'),
      '-c',
      'write -P 1 200000 1',
      '-c',
      `write -P 2 ${3 * MiB} 4096`,
      '-c',
      `write -P 3 ${80 * GRANULE} ${GRANULE + 1}`,
    ]);
    const map = await nbdinfoMap(ts.uri('mapped'));
    const HZ = C.NBD_STATE_HOLE | C.NBD_STATE_ZERO;
    assert.deepEqual(
      map.map((e) => [e.offset, e.length, e.type]),
      [
        [0, 3 * GRANULE, HZ],
        [3 * GRANULE, GRANULE, 0],
        [4 * GRANULE, 3 * MiB - 4 * GRANULE, HZ],
        [3 * MiB, GRANULE, 0],
        [3 * MiB + GRANULE, 80 * GRANULE - 3 * MiB - GRANULE, HZ],
        [80 * GRANULE, 2 * GRANULE, 0],
        [82 * GRANULE, 8 * MiB - 82 * GRANULE, HZ],
      ],
    );
    assert.deepEqual(
      map.map((e) => e.description),
      ['hole,zero', 'data', 'hole,zero', 'data', 'hole,zero', 'data', 'hole,zero'],
    );
  });

  it('nbdinfo --list lists every export with its description', async () => {
    const r = await runToolOk('nbdinfo', ['--list', '--json', `nbd://127.0.0.1:${ts.port}`]);
    const info = JSON.parse(r.stdout) as {
      protocol: string;
      structured: boolean;
      exports: Array<Record<string, unknown>>;
    };
    assert.equal(info.protocol, 'newstyle-fixed');
    assert.equal(info.structured, true);
    const byName = new Map(info.exports.map((e) => [e['export-name'] as string, e]));
    assert.deepEqual([...byName.keys()].sort(), ['big', 'disk', 'golden', 'mapped', 'scratch', 'upload']);
    assert.equal(byName.get('disk')!.description, 'conversion target');
    assert.equal(byName.get('disk')!['export-size'], IMAGE_SIZE);
    assert.equal(byName.get('disk')!.can_multi_conn, false);
    assert.equal(byName.get('disk')!.is_read_only, false);
    assert.equal(byName.get('disk')!.block_size_minimum, 1);
    assert.equal(byName.get('disk')!.block_size_preferred, 4096);
    assert.equal(byName.get('disk')!.block_size_maximum, 32 * MiB);
    assert.equal(byName.get('golden')!.is_read_only, true);
    assert.deepEqual(byName.get('golden')!.contexts, ['base:allocation']);
    // --list opens each export for NBD_OPT_INFO and must give every one back.
    for (const name of byName.keys()) {
      const st = ts.provider.stats(name);
      assert.equal(st.open, false, `${name} left open`);
      assert.equal(st.opens, st.releases);
    }
  });

  it('an unknown export name fails cleanly and the server keeps serving', async () => {
    const r = await runTool('nbdinfo', [ts.uri('no-such-disk')]);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /opt_go|No such|export/i);
    assert.ok(ts.logs.some((l) => l.msg === 'nbd export unavailable' && l.fields.export === 'no-such-disk'));
    // qemu's client too.
    const q = await runTool('qemu-io', ['-f', 'raw', '-c', 'read 0 512', ts.uri('no-such-disk')]);
    assert.notEqual(q.code, 0);
    assert.match(q.stderr, /server reported: no export named 'no-such-disk'/);
    // Still serving.
    const ok = await runToolOk('nbdinfo', ['--json', ts.uri('disk')]);
    assert.equal((JSON.parse(ok.stdout) as { exports: Array<{ 'export-size': number }> }).exports[0]['export-size'], IMAGE_SIZE);
  });

  it('a busy export is refused with the reason, and usable again once released', async () => {
    const holder = await RawNbdClient.connect(ts.port);
    try {
      await holder.handshake('scratch');
      const r = await runTool('nbdinfo', [ts.uri('scratch')]);
      assert.notEqual(r.code, 0, 'second client must be refused while the export is held');
      assert.match(r.stderr, /opt_go/);
      // qemu shows NBD_REP_ERR_POLICY and the server's reason text.
      const q = await runTool('qemu-io', ['-f', 'raw', '-c', 'read 0 1', ts.uri('scratch')]);
      assert.notEqual(q.code, 0);
      assert.match(q.stderr, /Denied by server for option 7/);
      assert.match(q.stderr, /server reported: export 'scratch' is in use by another client/);
      assert.ok(ts.logs.some((l) => l.msg === 'nbd export unavailable' && l.fields.reason === 'busy'));
    } finally {
      await holder.disconnect();
    }
    await ts.provider.waitUntilReleased('scratch');
    await runToolOk('qemu-io', ['-f', 'raw', '-c', 'read -P 0x5a 1234 100', ts.uri('scratch')]);
  });

  it('a read-only export can be read but not written by qemu-io', async () => {
    const r = await runTool('qemu-io', ['-f', 'raw', '-c', 'write -P 1 0 512', ts.uri('golden')]);
    // The export advertises NBD_FLAG_READ_ONLY, so qemu refuses a read-write open.
    assert.notEqual(r.code, 0);
    assert.match(r.stdout + r.stderr, /Permission denied|read-only|read only/i);
    const ro = await runToolOk('qemu-io', ['-r', '-f', 'raw', '-c', 'read -P 0 0 65536', ts.uri('golden')]);
    assert.doesNotMatch(ro.stdout, /fail/i);
    // The server releases an export when it sees the client's socket close, just after qemu-io exits.
    await waitFor(() => !ts.provider.stats('golden').open, 5000, 'release of the read-only export');
    const st = ts.provider.stats('golden');
    assert.equal(st.opens, st.releases);
  });

  it('a client SIGKILLed in the middle of a large write stream leaves the server up and the export released', async () => {
    const srcPath = path.join(ts.dir, 'big-source.raw');
    await writeFile(srcPath, pseudoRandom(128 * MiB, 99));
    const provider = ts.provider;
    const before = provider.stats('big');

    let writes = 0;
    let killed = false;
    const tool = spawnTool('nbdcopy', ['--flush', srcPath, ts.uri('big')]);
    // Kill the client from inside the server's write path, so it dies with requests in flight
    // (and, as nbdcopy streams 256 KiB writes back to back, most likely in the middle of a payload).
    bigHooks.beforeIo = async (op) => {
      if (op !== 'write') return;
      writes++;
      if (writes === 8 && !killed) {
        killed = true;
        tool.child.kill('SIGKILL');
      }
      if (killed) await new Promise((r) => setTimeout(r, 50));
    };
    try {
      const res = await tool.result;
      assert.equal(res.signal, 'SIGKILL', `nbdcopy was not killed mid-stream: ${res.code} ${res.stderr}`);
      await waitFor(() => !provider.stats('big').open, 10_000, 'export release after client death');
    } finally {
      bigHooks.beforeIo = undefined;
    }
    const st = provider.stats('big');
    assert.equal(st.opens, before.opens + 1);
    assert.equal(st.releases, before.releases + 1);
    assert.equal(st.doubleReleases, 0);
    assert.ok(writes >= 8);
    assert.ok(
      ts.logs.some(
        (l) =>
          l.msg === 'nbd client disconnected' &&
          l.fields.export === 'big' &&
          l.fields.reason === 'connection closed by client',
      ),
      'disconnect of the killed client is logged',
    );

    // A second client can open the export and use it.
    const r = await runToolOk('qemu-io', ['-f', 'raw', '-c', 'write -P 0x42 0 4096', '-c', 'read -P 0x42 0 4096', ts.uri('big')]);
    assert.doesNotMatch(r.stdout, /fail/i);
    await waitFor(() => !provider.stats('big').open, 5_000, 'release after qemu-io');
  });
});
