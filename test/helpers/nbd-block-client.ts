/**
 * A real NBD client for tests that need to know exactly which of their writes the server had
 * acknowledged at a given instant (point-in-time snapshots, kill -9 mid-write): reads, writes (with
 * or without FUA) and flushes, any number in flight, replies matched by cookie. Built on the raw
 * protocol client (nbd-raw-client.ts); knows nothing of the server under test.
 */
import * as C from '../../src/blockdev/nbd/constants.ts';
import { RawNbdClient } from './nbd-raw-client.ts';

export class NbdError extends Error {
  override name = 'NbdError';
  constructor(readonly errno: number, what: string) {
    super(`${what} failed with NBD error ${errno}`);
  }
}

interface Pending {
  readLength: number;
  resolve: (data: Buffer | null) => void;
  reject: (e: Error) => void;
}

export class NbdBlockClient {
  private nextCookie = 1n;
  private readonly pending = new Map<bigint, Pending>();
  private broken: Error | null = null;
  private reading = false;

  private constructor(
    private readonly raw: RawNbdClient,
    readonly size: number,
  ) {}

  static async open(port: number, exportName: string): Promise<NbdBlockClient> {
    const raw = await RawNbdClient.connect(port);
    try {
      const { size } = await raw.handshake(exportName);
      return new NbdBlockClient(raw, size);
    } catch (e) {
      raw.destroy();
      throw e;
    }
  }

  /** The connection failed (server gone or protocol error); every later request rejects with it. */
  get error(): Error | null {
    return this.broken;
  }

  write(offset: number, data: Buffer, opts: { fua?: boolean } = {}): Promise<void> {
    return this.request({ type: C.NBD_CMD_WRITE, flags: opts.fua ? C.NBD_CMD_FLAG_FUA : 0, offset, length: data.length }, data, 0, 'write').then(() => undefined);
  }

  flush(): Promise<void> {
    return this.request({ type: C.NBD_CMD_FLUSH, flags: 0, offset: 0, length: 0 }, undefined, 0, 'flush').then(() => undefined);
  }

  async read(offset: number, length: number): Promise<Buffer> {
    return (await this.request({ type: C.NBD_CMD_READ, flags: 0, offset, length }, undefined, length, 'read')) ?? Buffer.alloc(0);
  }

  /** NBD_CMD_DISC, then waits for the server to close the connection. */
  async disconnect(): Promise<void> {
    if (this.broken) return;
    await this.raw.disconnect();
  }

  destroy(): void {
    this.raw.destroy();
  }

  private request(req: { type: number; flags: number; offset: number; length: number }, payload: Buffer | undefined, readLength: number, what: string): Promise<Buffer | null> {
    if (this.broken) return Promise.reject(this.broken);
    const cookie = this.nextCookie++;
    return new Promise((resolve, reject) => {
      this.pending.set(cookie, {
        readLength,
        resolve,
        reject: (e) => reject(e instanceof NbdError ? e : new Error(`${what} at ${req.offset}: ${e.message}`)),
      });
      this.raw.sendRequest({ ...req, cookie }, payload);
      if (!this.reading) void this.readLoop();
    });
  }

  /** Reads replies while requests are outstanding (the raw client's reads time out when idle). */
  private async readLoop(): Promise<void> {
    this.reading = true;
    try {
      while (this.pending.size > 0) {
        const reply = await this.raw.readReply((cookie) => this.pending.get(cookie)?.readLength ?? 0);
        if (reply.kind !== 'simple') throw new Error(`unexpected structured reply type ${reply.type}`);
        const p = this.pending.get(reply.cookie);
        if (!p) throw new Error(`reply for unknown cookie ${reply.cookie}`);
        this.pending.delete(reply.cookie);
        if (reply.error !== 0) p.reject(new NbdError(reply.error, 'request'));
        else p.resolve(reply.data);
      }
    } catch (e) {
      this.broken = e instanceof Error ? e : new Error(String(e));
      for (const p of this.pending.values()) p.reject(this.broken);
      this.pending.clear();
    } finally {
      this.reading = false;
    }
  }
}
