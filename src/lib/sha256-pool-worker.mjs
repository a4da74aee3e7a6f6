// Worker side of src/lib/sha256-pool.ts. Plain JavaScript on purpose: a worker started from a
// `.ts` file is not run through tsx's loader (neither with `node --import tsx` nor with tsx's
// register() as bin/snapferry.js uses it), so a TypeScript worker would fail to start.
//
// Protocol (all messages are plain objects):
//   in  { type: 'slots', slots: SharedArrayBuffer[] }      replace this worker's input slots
//   in  { type: 'hash', task, slot, length, final }        hash slots[slot][0, length); when final
//                                                          is false, keep the digest state open
//                                                          and wait for more parts of `task`
//   in  { type: 'hash', task, slot, length, final: true, shared, offset }
//                                                          hash the caller's own SharedArrayBuffer
//                                                          `shared`[offset, offset + length) instead
//   in  ... pack: { level }                                (hashAndPack) on the only message of a
//                                                          task sent whole: also compress the input
//                                                          by the rule of zstd-pack.mjs, at the
//                                                          pool's zstd level
//   out { type: 'done', task, slot, hex }                  final part hashed: hex digest
//   out { type: 'done', task, slot, hex, packed }          ...of a task with `pack`: `packed` is a
//                                                          zstd frame in an ArrayBuffer of exactly
//                                                          its length, in the transfer list, or null
//   out { type: 'part', task, slot }                       a non-final part consumed, slot is free
import { parentPort } from 'node:worker_threads';
import { createHash } from 'node:crypto';
import { PACK_MIN_AT_REST, Packer } from './zstd-pack.mjs';

let slots = [];
/** Open digests of multi-part tasks, by task number. */
const open = new Map();

// Made at the first `pack` task, so workers of a pool that only hashes do not load zstd. One per
// worker, reused: a worker runs one task at a time.
let packer = null;

/**
 * A zstd frame of `input` in an ArrayBuffer of its own, or null when it does not pay. A
 * compression error (or a binding that does not load) is no frame: the hash must not fail because
 * of it.
 */
function pack(input, { level }) {
  try {
    packer ??= new Packer();
    const n = packer.pack(input, PACK_MIN_AT_REST, level);
    if (n === 0) return null;
    // Copied out of the scratch buffer (reused by the next task) into memory of exactly the frame's
    // size, which the reply transfers rather than clones.
    const out = new ArrayBuffer(n);
    new Uint8Array(out).set(packer.scratch.subarray(0, n));
    return out;
  } catch {
    return null;
  }
}

parentPort.on('message', (msg) => {
  if (msg.type === 'slots') {
    slots = msg.slots;
    return;
  }
  if (msg.type !== 'hash') return;
  const { task, slot, length, final } = msg;
  let h = open.get(task);
  // Only a task that arrives in one message is compressed (the pool sends `pack` on no other).
  const whole = h === undefined && final;
  if (h === undefined) h = createHash('sha256');
  const input = msg.shared ? new Uint8Array(msg.shared, msg.offset, length) : new Uint8Array(slots[slot], 0, length);
  h.update(input);
  if (final) {
    open.delete(task);
    const hex = h.digest('hex');
    if (msg.pack) {
      const packed = whole ? pack(input, msg.pack) : null;
      parentPort.postMessage({ type: 'done', task, slot, hex, packed }, packed ? [packed] : []);
    } else {
      parentPort.postMessage({ type: 'done', task, slot, hex });
    }
  } else {
    open.set(task, h);
    parentPort.postMessage({ type: 'part', task, slot });
  }
});
