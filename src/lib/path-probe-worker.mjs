// The worker side of path-probe.ts: a batch of "first existing file among these alternatives"
// questions answered with synchronous calls, one after another, off the event loop.
import { statSync, utimesSync } from 'node:fs';
import { parentPort } from 'node:worker_threads';

const ABSENT = new Set(['ENOENT', 'ENOTDIR']);

parentPort.on('message', ({ task, op, paths, counts, seconds }) => {
  const n = counts.length;
  const index = new Int32Array(n).fill(-1);
  const size = new Float64Array(n);
  const mtimeMs = new Float64Array(n);
  try {
    let at = 0;
    for (let i = 0; i < n; i++) {
      for (let k = 0; k < counts[i]; k++) {
        const path = paths[at + k];
        if (op === 'stat' ? statFile(path, i, size, mtimeMs) : setTimes(path, seconds)) {
          index[i] = k;
          break;
        }
      }
      at += counts[i];
    }
  } catch (err) {
    parentPort.postMessage({ task, error: { message: String(err?.message ?? err), code: err?.code } });
    return;
  }
  parentPort.postMessage({ task, index, size, mtimeMs }, [index.buffer, size.buffer, mtimeMs.buffer]);
});

function statFile(path, i, size, mtimeMs) {
  let st;
  try {
    st = statSync(path, { throwIfNoEntry: false });
  } catch (err) {
    if (ABSENT.has(err?.code)) return false;
    throw err;
  }
  if (!st || !st.isFile()) return false;
  size[i] = st.size;
  mtimeMs[i] = st.mtimeMs;
  return true;
}

function setTimes(path, seconds) {
  try {
    utimesSync(path, seconds, seconds);
    return true;
  } catch (err) {
    if (ABSENT.has(err?.code)) return false;
    throw err;
  }
}
