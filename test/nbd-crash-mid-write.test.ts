/**
 * Invariant: a crash never leaves garbage on a disk, and loses no acknowledged write (kill -9 is a
 * process crash, not a power loss: what the server wrote is in the kernel's page cache). Against a
 * real disk of a spawned `snapferry serve` (the plain-file target of the protocol tests knows nothing
 * of chunk maps): the server is killed with -9 while a block client has 16 writes in flight; after
 * the restart every block holds its old bytes or the new ones, every write acknowledged (with FUA,
 * before a completed flush, or plainly) holds the new ones. And a client that dies in the middle of a
 * write's payload leaves that block as it was.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import * as C from '../src/blockdev/nbd/constants.ts';
import { RawNbdClient } from './helpers/nbd-raw-client.ts';
import { BLOCK, classify, oldBlock, oldRange, permutation, recordBlock } from './helpers/block-records.ts';
import { NbdBlockClient } from './helpers/nbd-block-client.ts';
import { until } from './helpers/sdk.ts';
import { useOneRegion } from './helpers/one-region.ts';

const run = promisify(execFile);
const AK = 'crashw-access-key-0000000';
const SK = 'crashw-secret-key-1111111';

const MiB = 1 << 20;
const region = useOneRegion(AK, SK);
const { newDisk, readData } = region;
const status = (id: string): Promise<string> => region.volumeStatus(id);
const nbdUrl = (volumeId: string): string => `nbd://127.0.0.1:${region.server.nbdPort}/${volumeId}`;

test('nbd crash: kill -9 of the server mid-write: after restart every block holds its old bytes or the new ones, never garbage, and every acknowledged write (FUA, flushed or plain) holds the new ones', async () => {
  // Chunks 0-63 hold old data, 64-127 were never written (old = zeros): writes land on both.
  const id = await newDisk();
  const span = 128 * MiB;
  const blocks = span / BLOCK;
  const holeFrom = blocks / 2;
  const client = await NbdBlockClient.open(region.server.nbdPort, id);
  for (let first = 0; first < holeFrom; first += 256) await client.write(first * BLOCK, oldRange(first, 256));
  await client.flush();
  const order = permutation(blocks, 0xc4a54);
  const acked = new Uint8Array(blocks); // 1: acknowledged without FUA, 2: with FUA
  const durable = new Uint8Array(blocks); // acknowledged with FUA, or before a flush that completed
  let sent = 0;
  let ackedCount = 0;
  let failure: Error | null = null;
  // 16 writes in flight, alternately with and without FUA, and a flush after every 64 writes.
  const worker = async (): Promise<void> => {
    while (failure === null && sent < blocks) {
      const i = sent++;
      const fua = i % 2 === 0;
      try {
        if (i % 64 === 63) {
          const covered = acked.reduce<number[]>((out, a, j) => (a === 1 && !durable[j] ? (out.push(j), out) : out), []);
          await client.flush();
          for (const j of covered) durable[j] = 1;
        }
        await client.write(order[i]! * BLOCK, recordBlock(i, order[i]!), { fua });
        acked[i] = fua ? 2 : 1;
        if (fua) durable[i] = 1;
        ackedCount++;
      } catch (e) {
        failure = e as Error;
      }
    }
  };
  const workers = Array.from({ length: 16 }, worker);
  try {
    await until(async () => ackedCount >= 3000 || failure !== null, 60_000, '3000 writes acknowledged');
    assert.equal(failure, null, 'no write failed before the kill');
    await region.server.crash();
    await Promise.all(workers);
  } finally {
    client.destroy();
  }
  assert.ok(failure !== null, 'the writes were cut off by the kill');
  assert.ok(sent > ackedCount, 'writes were in flight at the kill');
  await region.server.restart();
  assert.equal(await status(id), 'Available', 'no block client survives a restart');

  const bytes = await readData(id, 0, span);
  let newer = 0;
  for (let i = 0; i < blocks; i++) {
    const b = order[i]!;
    const got = bytes.subarray(b * BLOCK, (b + 1) * BLOCK);
    const isNew = got.equals(recordBlock(i, b));
    const isOld = b < holeFrom ? got.equals(oldBlock(b)) : got.equals(Buffer.alloc(BLOCK));
    assert.ok(isNew || isOld, `block ${b} (write ${i}, ${acked[i] ? 'acknowledged' : 'not acknowledged'}) holds neither its old bytes nor the new ones`);
    if (i >= sent) assert.ok(isOld, `block ${b} holds write ${i}, which was never sent`);
    if (durable[i]) assert.ok(isNew, `block ${b}: write ${i} was acknowledged ${acked[i] === 2 ? 'with FUA' : 'before a completed flush'} but is lost`);
    if (isNew) newer++;
  }
  assert.ok(newer >= ackedCount, `every acknowledged write survived a process crash (${newer} new blocks, ${ackedCount} acknowledged)`);
  // The disk is usable: a new client writes and reads it.
  await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x66 0 65536', '-c', 'read -P 0x66 0 65536', nbdUrl(id)]);
});

test('nbd crash: a block client that dies in the middle of a write payload, with writes in flight: the disk is released, the cut write is not applied, acknowledged writes are', async () => {
  const id = await newDisk();
  const prefill = await NbdBlockClient.open(region.server.nbdPort, id);
  await prefill.write(0, oldRange(0, 64), { fua: true });
  await prefill.disconnect();
  await until(async () => (await status(id)) === 'Available', 10_000, 'released after the prefill');

  const raw = await RawNbdClient.connect(region.server.nbdPort);
  try {
    await raw.handshake(id);
    for (let i = 0; i < 8; i++) {
      assert.equal(await raw.writeAt(i * BLOCK, recordBlock(i, i), BigInt(i + 1)), 0);
    }
    // Four whole writes whose replies are not awaited, then a 16-block write cut after 10 KiB.
    for (let i = 8; i < 12; i++) raw.sendRequest({ type: C.NBD_CMD_WRITE, cookie: BigInt(i + 1), offset: i * BLOCK, length: BLOCK }, recordBlock(i, i));
    const cut = Buffer.concat(Array.from({ length: 16 }, (_, k) => recordBlock(100 + k, 20 + k)));
    raw.sendRequest({ type: C.NBD_CMD_WRITE, cookie: 99n, offset: 20 * BLOCK, length: cut.length }, cut.subarray(0, 10 * 1024));
  } finally {
    raw.destroy();
  }
  await until(async () => (await status(id)) === 'Available', 10_000, 'released after the client died');
  assert.equal((await fetch(`${region.server.urls.bj}/healthz`)).status, 200);
  const bytes = await readData(id, 0, 64 * BLOCK);
  for (let b = 0; b < 64; b++) {
    const c = classify(bytes.subarray(b * BLOCK, (b + 1) * BLOCK), b);
    if (b < 8) assert.deepEqual(c, { kind: 'record', seq: b }, `acknowledged write ${b}`);
    else if (b < 12) assert.ok(c.kind === 'old' || (c.kind === 'record' && c.seq === b), `block ${b}: old or its whole write`);
    else assert.deepEqual(c, { kind: 'old' }, `block ${b} was never written whole`);
  }
});
