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
//   out { type: 'done', task, slot, hex }                  final part hashed: hex digest
//   out { type: 'part', task, slot }                       a non-final part consumed, slot is free
import { parentPort } from 'node:worker_threads';
import { createHash } from 'node:crypto';

let slots = [];
/** Open digests of multi-part tasks, by task number. */
const open = new Map();

parentPort.on('message', (msg) => {
  if (msg.type === 'slots') {
    slots = msg.slots;
    return;
  }
  if (msg.type !== 'hash') return;
  const { task, slot, length, final } = msg;
  let h = open.get(task);
  if (h === undefined) h = createHash('sha256');
  h.update(msg.shared ? new Uint8Array(msg.shared, msg.offset, length) : new Uint8Array(slots[slot], 0, length));
  if (final) {
    open.delete(task);
    parentPort.postMessage({ type: 'done', task, slot, hex: h.digest('hex') });
  } else {
    open.set(task, h);
    parentPort.postMessage({ type: 'part', task, slot });
  }
});
