/**
 * The NBD server's two stream readers (SocketReader: `'data'` events; DirectSocketReader: the
 * kernel reads into the destination buffers) against one contract, over real loopback TCP:
 * exact-length answers in order however the bytes arrive, answers that stay the caller's (no later
 * read writes into them: NBD-2), bounded buffering while nobody reads, and a closed connection
 * failing the read waiting on it. And that the server serves plaintext connections with direct
 * reads (a Node upgrade that broke the move of an accepted socket would fall back silently).
 */
import assert from 'node:assert/strict';
import net from 'node:net';
import { once } from 'node:events';
import { afterEach, describe, it } from 'node:test';
import { adoptForDirectReads } from '../src/blockdev/nbd/direct-socket-reader.ts';
import { ConnectionClosedError, SocketReader, type NbdReader } from '../src/blockdev/nbd/socket-reader.ts';
import { pseudoRandom, startTestServer } from './helpers/nbd-harness.ts';
import { RawNbdClient } from './helpers/nbd-raw-client.ts';

const KiB = 1024;
const MiB = 1024 * KiB;

interface Pair {
  server: net.Socket;
  client: net.Socket;
  reader: NbdReader;
}

const kinds: Array<{ name: string; direct: boolean }> = [
  { name: 'SocketReader', direct: false },
  { name: 'DirectSocketReader', direct: true },
];

for (const kind of kinds) {
  describe(`NBD stream reader contract: ${kind.name}`, () => {
    const open: Array<net.Server | net.Socket> = [];

    afterEach(() => {
      for (const x of open.splice(0)) {
        if (x instanceof net.Server) x.close();
        else x.destroy();
      }
    });

    async function pair(): Promise<Pair> {
      const listener = net.createServer({ pauseOnConnect: true, allowHalfOpen: true });
      open.push(listener);
      await new Promise<void>((resolve) => listener.listen(0, '127.0.0.1', resolve));
      const accepted = once(listener, 'connection') as Promise<[net.Socket]>;
      const client = net.connect((listener.address() as net.AddressInfo).port, '127.0.0.1');
      client.setNoDelay(true);
      open.push(client);
      const [socket] = await accepted;
      let server: net.Socket;
      let reader: NbdReader;
      if (kind.direct) {
        const adopted = adoptForDirectReads(socket, { allowHalfOpen: true });
        assert.ok(adopted, 'this Node lets an accepted socket be moved to direct reads');
        ({ socket: server, reader } = adopted);
      } else {
        server = socket;
        reader = new SocketReader(socket);
        socket.resume();
      }
      open.push(server);
      await once(client, 'connect').catch(() => {});
      return { server, client, reader };
    }

    /** Sends `data` in pieces of the given sizes (cycled), each in its own write after a short pause. */
    async function sendInPieces(client: net.Socket, data: Buffer, pieces: number[]): Promise<void> {
      let pos = 0;
      for (let i = 0; pos < data.length; i++) {
        const n = Math.min(pieces[i % pieces.length]!, data.length - pos);
        if (!client.write(data.subarray(pos, pos + n))) await once(client, 'drain');
        pos += n;
        if (i % 7 === 0) await new Promise((r) => setImmediate(r));
      }
    }

    it('answers exact lengths in order however the bytes arrive, and no later read writes into an earlier answer', async () => {
      const { client, reader } = await pair();
      // NBD's shapes: 28-byte headers, 4- and 16-byte handshake fields, small and large payloads,
      // payloads just below and above the sizes where a reader changes strategy (64 KiB).
      const sizes = [28, 4, 16, 300, 28, 262_144, 28, 1, 65_535, 65_536, 65_537, 28, 1_048_576, 7, 4096, 200_000, 28, 131_072];
      const reads = Array.from({ length: 120 }, (_, i) => ({ n: sizes[(i * 7) % sizes.length]!, into: i % 3 === 0 }));
      const total = reads.reduce((s, r) => s + r.n, 0);
      const data = pseudoRandom(total, 11);
      const sending = sendInPieces(client, data, [1, 27, 29, 4096, 65_536, 333_333, 3, 1_500_000, 100]);
      const answers: Buffer[] = [];
      for (const r of reads) {
        const into = r.into ? Buffer.alloc(r.n + 5) : undefined;
        const got = reader.tryRead(r.n, into) ?? (await reader.read(r.n, into));
        assert.equal(got.length, r.n);
        answers.push(got);
      }
      await sending;
      // Checked only now: every answer must still hold its bytes after all the reads that followed.
      let pos = 0;
      for (let i = 0; i < reads.length; i++) {
        const n = reads[i]!.n;
        assert.ok(answers[i]!.equals(data.subarray(pos, pos + n)), `answer ${i} (${n} bytes at ${pos}) changed or wrong`);
        pos += n;
      }
      assert.equal(reader.bufferedBytes, 0);
    });

    it('reads a large payload into the given buffer, also when its start arrived with a header', async () => {
      const { client, reader } = await pair();
      const data = pseudoRandom(28 + 256 * KiB, 5);
      client.write(data);
      await new Promise((r) => setTimeout(r, 50)); // header and payload are waiting at the server
      const header = reader.tryRead(28) ?? (await reader.read(28));
      assert.ok(header.equals(data.subarray(0, 28)));
      const into = Buffer.alloc(256 * KiB);
      const payload = reader.tryRead(256 * KiB, into) ?? (await reader.read(256 * KiB, into));
      assert.ok(payload.equals(data.subarray(28)));
      assert.equal(payload.buffer, into.buffer, 'the payload is a view of the buffer given');
    });

    it('buffers a bounded amount while nobody reads, and loses nothing once reading resumes', async () => {
      const { client, reader } = await pair();
      const data = pseudoRandom(16 * MiB, 3);
      const sending = new Promise<void>((resolve) => client.write(data, () => resolve()));
      await new Promise((r) => setTimeout(r, 400));
      // 16 MiB offered, none read: the reader holds at most a few MiB (the rest waits in the
      // kernel's socket buffers, the client's write blocked).
      assert.ok(reader.bufferedBytes <= 2 * MiB, `${reader.bufferedBytes} bytes buffered by the reader`);
      const all: Buffer[] = [];
      let got = 0;
      while (got < data.length) {
        const n = Math.min(300_000, data.length - got);
        const b = reader.tryRead(n) ?? (await reader.read(n));
        all.push(b);
        got += n;
      }
      await sending;
      assert.ok(Buffer.concat(all).equals(data));
    });

    for (const size of [1000, 256 * KiB]) {
      it(`a connection closed in the middle of a ${size}-byte read fails that read with ConnectionClosedError`, async () => {
        const { client, reader } = await pair();
        const reading = reader.read(size);
        client.end(pseudoRandom(size - 100, 1));
        await assert.rejects(reading, ConnectionClosedError);
      });
    }

    it('detach fails the waiting read, then drops what arrives so the peer\'s close is seen', async () => {
      const { server, client, reader } = await pair();
      const reading = reader.read(10);
      reader.detach();
      await assert.rejects(reading, ConnectionClosedError);
      const ended = once(server, 'end');
      client.end(pseudoRandom(5 * MiB, 2));
      await ended;
    });

    it('release refuses while bytes are unread', async () => {
      const { client, reader } = await pair();
      client.write(Buffer.alloc(40));
      await reader.read(30);
      assert.throws(() => reader.release(), /unread/);
      await reader.read(10);
      reader.release();
    });
  });
}

describe('NBD server: which reader serves a connection', () => {
  for (const directReads of [true, false]) {
    it(`plaintext connections are read ${directReads ? 'directly (the default)' : 'through data events (directReads: false)'}, and serve the same bytes`, async () => {
      const ts = await startTestServer([{ name: 'disk', size: 4 * MiB }], { directReads });
      try {
        const c = await RawNbdClient.connect(ts.port);
        await c.handshake('disk');
        const data = pseudoRandom(3 * MiB + 5, 9);
        await c.writeAt(1000, data);
        assert.ok((await c.readAt(1000, data.length)).equals(data));
        await c.disconnect();
        const connected = ts.logs.find((l) => l.msg === 'nbd client connected');
        assert.equal(connected?.fields.reads, directReads ? 'direct' : 'data-events');
      } finally {
        await ts.cleanup();
      }
    });
  }
});
