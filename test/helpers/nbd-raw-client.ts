/**
 * A minimal NBD client over a raw socket, written from the protocol spec, for tests that need to
 * send exact bytes (malformed options, bad magic, garbage) and inspect exact replies.
 */
import net from 'node:net';
import tls from 'node:tls';
import * as C from '../../src/blockdev/nbd/constants.ts';
import { ArrivalSignal, ByteQueue } from './byte-queue.ts';

export interface OptionReply {
  option: number;
  type: number;
  data: Buffer;
}

export interface SimpleReply {
  kind: 'simple';
  error: number;
  cookie: bigint;
  /** Only filled by readReply when the caller says how much data a successful read carries. */
  data: Buffer | null;
}

export interface StructuredChunk {
  kind: 'structured';
  flags: number;
  type: number;
  cookie: bigint;
  payload: Buffer;
}

export class RawNbdClient {
  private readonly received = new ByteQueue();
  private readonly arrival = new ArrivalSignal();
  private ended = false;
  readonly closed: Promise<void>;

  private constructor(readonly socket: net.Socket) {
    socket.on('data', (d: Buffer) => {
      this.received.push(d);
      this.wake();
    });
    socket.on('error', () => {});
    this.closed = new Promise((resolve) =>
      socket.once('close', () => {
        this.ended = true;
        this.wake();
        resolve();
      }),
    );
    socket.once('end', () => {
      this.ended = true;
      this.wake();
    });
  }

  static async connect(port: number): Promise<RawNbdClient> {
    const socket = net.connect({ port, host: '127.0.0.1', noDelay: true });
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('error', reject);
    });
    return new RawNbdClient(socket);
  }

  /**
   * NBD_OPT_STARTTLS, then a TLS 1.3 PSK handshake on the same socket (Node's client, not GnuTLS:
   * for exact-bytes tests inside TLS). Resolves with a client speaking through TLS; rejects with the
   * option reply type (as `refused`) if the server does not acknowledge, or with the TLS error.
   */
  async startTls(identity: string, key: Buffer): Promise<RawNbdClient> {
    this.sendOption(C.NBD_OPT_STARTTLS);
    const r = await this.readOptionReply();
    if (r.type !== C.NBD_REP_ACK) throw Object.assign(new Error(`STARTTLS refused: 0x${r.type.toString(16)} ${r.data.toString()}`), { refused: r.type });
    if (this.received.length > 0) throw new Error('bytes after the STARTTLS ACK');
    const socket = tls.connect({
      socket: this.socket,
      minVersion: 'TLSv1.3',
      checkServerIdentity: () => undefined,
      pskCallback: () => ({ identity, psk: key }),
    });
    await new Promise<void>((resolve, reject) => {
      socket.once('secureConnect', () => resolve());
      socket.once('error', reject);
    });
    return new RawNbdClient(socket);
  }

  write(data: Buffer): void {
    this.socket.write(data);
  }

  destroy(): void {
    this.socket.destroy();
  }

  /** Reads exactly n bytes; rejects if the connection ends first or nothing arrives in time. */
  async read(n: number, timeoutMs = 5000): Promise<Buffer> {
    const deadline = Date.now() + timeoutMs;
    while (this.received.length < n) {
      if (this.ended) throw new Error(`connection ended with ${this.received.length}/${n} bytes`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out reading ${n} bytes (have ${this.received.length})`);
      await this.arrival.wait(left);
    }
    return this.received.take(n);
  }

  /** Resolves true if the server closes the connection within the timeout (unread bytes are dropped). */
  async closedByServer(timeoutMs = 5000): Promise<boolean> {
    const timeout = new Promise<false>((resolve) => setTimeout(() => resolve(false), timeoutMs).unref());
    return Promise.race([
      new Promise<true>((resolve) => {
        const check = () => (this.ended ? resolve(true) : void 0);
        this.socket.once('end', check);
        this.socket.once('close', check);
        check();
      }),
      timeout,
    ]);
  }

  get pendingBytes(): number {
    return this.received.length;
  }

  private wake(): void {
    this.arrival.notify();
  }

  // ---- handshake ------------------------------------------------------------------------------

  /** Reads the 18-byte greeting; returns the handshake flags. */
  async readGreeting(): Promise<number> {
    const g = await this.read(18);
    if (g.toString('latin1', 0, 16) !== 'NBDMAGICIHAVEOPT') throw new Error(`bad greeting ${g.toString('hex')}`);
    return g.readUInt16BE(16);
  }

  sendClientFlags(flags: number): void {
    const b = Buffer.alloc(4);
    b.writeUInt32BE(flags >>> 0, 0);
    this.write(b);
  }

  /** Greeting + client flags (fixed newstyle, and NO_ZEROES unless told otherwise). */
  async start(clientFlags = C.NBD_FLAG_C_FIXED_NEWSTYLE | C.NBD_FLAG_C_NO_ZEROES): Promise<void> {
    await this.readGreeting();
    this.sendClientFlags(clientFlags);
  }

  sendOption(option: number, data: Buffer = Buffer.alloc(0), lengthOverride?: number): void {
    const h = Buffer.alloc(16);
    h.write('IHAVEOPT', 0, 'latin1');
    h.writeUInt32BE(option >>> 0, 8);
    h.writeUInt32BE(lengthOverride ?? data.length, 12);
    this.write(Buffer.concat([h, data]));
  }

  async readOptionReply(): Promise<OptionReply> {
    const h = await this.read(20);
    if (h.readBigUInt64BE(0) !== C.NBD_REP_MAGIC) throw new Error(`bad option reply magic ${h.toString('hex')}`);
    const len = h.readUInt32BE(16);
    const data = len > 0 ? Buffer.from(await this.read(len)) : Buffer.alloc(0);
    return { option: h.readUInt32BE(8), type: h.readUInt32BE(12), data };
  }

  /** Reads replies until a final one (ACK or error); returns all of them, final last. */
  async readOptionReplies(): Promise<OptionReply[]> {
    const out: OptionReply[] = [];
    for (;;) {
      const r = await this.readOptionReply();
      out.push(r);
      if (r.type === C.NBD_REP_ACK || r.type >= 0x80000000) return out;
    }
  }

  static goData(name: string, infos: number[] = []): Buffer {
    const n = Buffer.from(name, 'utf8');
    const b = Buffer.alloc(4 + n.length + 2 + 2 * infos.length);
    b.writeUInt32BE(n.length, 0);
    n.copy(b, 4);
    b.writeUInt16BE(infos.length, 4 + n.length);
    infos.forEach((x, i) => b.writeUInt16BE(x, 4 + n.length + 2 + 2 * i));
    return b;
  }

  static metaData(name: string, queries: string[]): Buffer {
    const parts: Buffer[] = [];
    const n = Buffer.from(name, 'utf8');
    const h = Buffer.alloc(4);
    h.writeUInt32BE(n.length, 0);
    parts.push(h, n);
    const c = Buffer.alloc(4);
    c.writeUInt32BE(queries.length, 0);
    parts.push(c);
    for (const q of queries) {
      const qb = Buffer.from(q, 'utf8');
      const l = Buffer.alloc(4);
      l.writeUInt32BE(qb.length, 0);
      parts.push(l, qb);
    }
    return Buffer.concat(parts);
  }

  /**
   * Full handshake into transmission via NBD_OPT_GO. Returns export size and transmission flags;
   * throws with the server's error reply if GO fails.
   */
  async handshake(
    exportName: string,
    opts: { structured?: boolean; blockStatus?: boolean } = {},
  ): Promise<{ size: number; flags: number; contextId: number | null }> {
    await this.start();
    if (opts.structured || opts.blockStatus) {
      this.sendOption(C.NBD_OPT_STRUCTURED_REPLY);
      const r = await this.readOptionReply();
      if (r.type !== C.NBD_REP_ACK) throw new Error(`structured reply refused: ${r.type}`);
    }
    let contextId: number | null = null;
    if (opts.blockStatus) {
      this.sendOption(C.NBD_OPT_SET_META_CONTEXT, RawNbdClient.metaData(exportName, [C.BASE_ALLOCATION]));
      for (const r of await this.readOptionReplies()) {
        if (r.type === C.NBD_REP_META_CONTEXT) contextId = r.data.readUInt32BE(0);
        else if (r.type !== C.NBD_REP_ACK) throw new Error(`set meta context refused: ${r.type}`);
      }
    }
    this.sendOption(C.NBD_OPT_GO, RawNbdClient.goData(exportName, [C.NBD_INFO_BLOCK_SIZE]));
    let size = -1;
    let flags = -1;
    for (const r of await this.readOptionReplies()) {
      if (r.type === C.NBD_REP_INFO && r.data.readUInt16BE(0) === C.NBD_INFO_EXPORT) {
        size = Number(r.data.readBigUInt64BE(2));
        flags = r.data.readUInt16BE(10);
      } else if (r.type >= 0x80000000) {
        throw new Error(`GO refused: 0x${r.type.toString(16)} ${r.data.toString()}`);
      }
    }
    return { size, flags, contextId };
  }

  // ---- transmission ---------------------------------------------------------------------------

  sendRequest(req: { type: number; flags?: number; cookie: bigint; offset: number | bigint; length: number }, payload?: Buffer): void {
    const h = Buffer.alloc(28);
    h.writeUInt32BE(C.NBD_REQUEST_MAGIC, 0);
    h.writeUInt16BE(req.flags ?? 0, 4);
    h.writeUInt16BE(req.type, 6);
    h.writeBigUInt64BE(req.cookie, 8);
    h.writeBigUInt64BE(BigInt(req.offset), 16);
    h.writeUInt32BE(req.length >>> 0, 24);
    this.write(payload ? Buffer.concat([h, payload]) : h);
  }

  async readSimpleReply(dataLength = 0): Promise<SimpleReply> {
    const r = await this.readReply(() => dataLength);
    if (r.kind !== 'simple') throw new Error(`expected a simple reply, got structured type ${r.type}`);
    return r;
  }

  async readChunk(): Promise<StructuredChunk> {
    const r = await this.readReply(() => 0);
    if (r.kind !== 'structured') throw new Error(`expected a structured chunk, got simple reply error=${r.error}`);
    return r;
  }

  /**
   * Reads the next reply of either kind. For a successful simple reply, `readLength(cookie)` says
   * how many data bytes follow (the length of the read with that cookie, 0 for other commands).
   */
  async readReply(readLength: (cookie: bigint) => number): Promise<SimpleReply | StructuredChunk> {
    const magic = (await this.read(4)).readUInt32BE(0);
    if (magic === C.NBD_SIMPLE_REPLY_MAGIC) {
      const rest = await this.read(12);
      const error = rest.readUInt32BE(0);
      const cookie = rest.readBigUInt64BE(4);
      const n = error === 0 ? readLength(cookie) : 0;
      const data = n > 0 ? Buffer.from(await this.read(n)) : null;
      return { kind: 'simple', error, cookie, data };
    }
    if (magic === C.NBD_STRUCTURED_REPLY_MAGIC) {
      const rest = await this.read(16);
      const len = rest.readUInt32BE(12);
      const payload = len > 0 ? Buffer.from(await this.read(len)) : Buffer.alloc(0);
      return { kind: 'structured', flags: rest.readUInt16BE(0), type: rest.readUInt16BE(2), cookie: rest.readBigUInt64BE(4), payload };
    }
    throw new Error(`bad reply magic 0x${magic.toString(16)}`);
  }

  /** Simple-reply read helper: returns the data or throws with the NBD error. */
  async readAt(offset: number, length: number, cookie = 0x1234n): Promise<Buffer> {
    this.sendRequest({ type: C.NBD_CMD_READ, cookie, offset, length });
    const r = await this.readSimpleReply(length);
    if (r.error !== 0) throw new Error(`read failed with error ${r.error}`);
    if (r.cookie !== cookie) throw new Error('cookie mismatch');
    return r.data ?? Buffer.alloc(0);
  }

  async writeAt(offset: number, data: Buffer, cookie = 0x5678n, flags = 0): Promise<number> {
    this.sendRequest({ type: C.NBD_CMD_WRITE, cookie, offset, length: data.length, flags }, data);
    const r = await this.readSimpleReply();
    if (r.cookie !== cookie) throw new Error('cookie mismatch');
    return r.error;
  }

  /** Sends NBD_CMD_DISC and waits for the server to close. */
  async disconnect(): Promise<void> {
    this.sendRequest({ type: C.NBD_CMD_DISC, cookie: 0n, offset: 0, length: 0 });
    await this.closedByServer();
    this.destroy();
  }
}
