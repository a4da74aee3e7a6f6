// Worker side of src/replication/upload-thread.ts: sends signed HTTP PUTs prepared by the event
// loop, so a copy's chunk uploads (the request, the body's way into the socket, the answer) do not
// run on the thread that also serves the region's API and receives other regions' chunks.
// Plain JavaScript for the reason sha256-pool-worker.mjs gives: a `.ts` worker would not be run
// through tsx's loader.
//
// Protocol (plain objects):
//   in  { type: 'put', task, origin, path, headers, connections, idleMs, pieces }
//         PUT the pieces in order as the body; each piece is { shared, offset, length }
//         (shared[offset, offset + length) of a SharedArrayBuffer: nothing is copied) or { bytes }
//         (copied into the message: small bodies)
//   in  { type: 'abort', task }        give the upload up (answered as a connection failure)
//   out { type: 'done', task, status, text, requestId }
//         the answer: status 0 when there was none (`text` then says why); `text` is the answer's
//         body. Posted once the request is over: from then on nothing here reads the body's
//         memory, which the caller may reuse.
import * as http from 'node:http';
import * as https from 'node:https';
import { parentPort } from 'node:worker_threads';

/** Keep-alive agents by origin and connection count. */
const agents = new Map();
/** Requests in flight, by task number. */
const requests = new Map();

function agentFor(origin, connections, idleMs) {
  const key = `${origin} ${connections}`;
  let agent = agents.get(key);
  if (!agent) {
    // `timeout` also lets the agent honour the server's Keep-Alive hint: an idle socket is closed
    // before the server would close it, so an upload never goes out on a socket being closed.
    const options = { keepAlive: true, maxSockets: connections, maxFreeSockets: connections, scheduling: 'lifo', timeout: idleMs };
    agent = origin.startsWith('https:') ? new https.Agent(options) : new http.Agent(options);
    agents.set(key, agent);
  }
  return agent;
}

function put(msg) {
  const url = new URL(msg.origin);
  const pieces = msg.pieces.map((p) => (p.shared ? Buffer.from(p.shared, p.offset, p.length) : Buffer.from(p.bytes.buffer, p.bytes.byteOffset, p.bytes.byteLength)));
  let answered = false;
  const answer = (status, text, requestId) => {
    if (answered) return;
    answered = true;
    requests.delete(msg.task);
    parentPort.postMessage({ type: 'done', task: msg.task, status, text, requestId });
  };
  const request = url.protocol === 'https:' ? https.request : http.request;
  const req = request(
    { agent: agentFor(msg.origin, msg.connections, msg.idleMs), host: url.hostname, port: url.port, method: 'PUT', path: msg.path, headers: msg.headers },
    (res) => {
      const parts = [];
      res.on('data', (d) => parts.push(d));
      res.once('error', (e) => answer(0, e.message, null));
      res.once('end', () => answer(res.statusCode ?? 0, Buffer.concat(parts).toString('utf8'), res.headers['x-bce-request-id'] ?? null));
      res.once('close', () => {
        if (!res.complete) answer(0, 'the connection closed before the answer was complete', null);
      });
    },
  );
  requests.set(msg.task, req);
  req.setTimeout(msg.idleMs, () => req.destroy(new Error(`no progress for ${msg.idleMs} ms`)));
  req.once('error', (e) => answer(0, e.message, null));
  // Corked, so the headers and the pieces are handed to the socket together, not one write each.
  req.cork();
  for (const piece of pieces) req.write(piece);
  req.end();
}

parentPort.on('message', (msg) => {
  if (msg.type === 'put') put(msg);
  else if (msg.type === 'abort') requests.get(msg.task)?.destroy(new Error('the upload was aborted'));
});
