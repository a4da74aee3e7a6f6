/**
 * The handshake phase: fixed newstyle greeting and option haggling, ending either in transmission
 * (NBD_OPT_GO / NBD_OPT_EXPORT_NAME with an opened export) or in a clean abort.
 *
 * TLS (NBD_OPT_STARTTLS, see tls.ts for the modes): after NBD_REP_ACK the same socket carries a
 * TLS session and haggling goes on inside it, with the exports of the account the client's
 * pre-shared key belongs to. What was negotiated in plaintext (structured replies, the metadata
 * context) is forgotten at the upgrade: a man in the middle could have chosen it.
 */
import type { Socket } from 'node:net';
import { ExportUnavailableError, type ExportDescription, type ExportProvider, type OpenedExport } from '../block-target.ts';
import {
  BASE_ALLOCATION,
  BASE_ALLOCATION_CONTEXT_ID,
  KNOWN_CLIENT_FLAGS,
  MAX_OPTION_LENGTH,
  MAX_PAYLOAD_SIZE,
  MAX_STRING_LENGTH,
  MIN_BLOCK_SIZE,
  NBD_FLAG_C_FIXED_NEWSTYLE,
  NBD_FLAG_C_NO_ZEROES,
  NBD_FLAG_FIXED_NEWSTYLE,
  NBD_FLAG_HAS_FLAGS,
  NBD_FLAG_NO_ZEROES,
  NBD_FLAG_READ_ONLY,
  NBD_FLAG_SEND_CACHE,
  NBD_FLAG_SEND_DF,
  NBD_FLAG_SEND_FLUSH,
  NBD_FLAG_SEND_FUA,
  NBD_FLAG_SEND_TRIM,
  NBD_FLAG_SEND_WRITE_ZEROES,
  NBD_INFO_BLOCK_SIZE,
  NBD_INFO_DESCRIPTION,
  NBD_INFO_EXPORT,
  NBD_INFO_NAME,
  NBD_OPT_ABORT,
  NBD_OPT_EXPORT_NAME,
  NBD_OPT_GO,
  NBD_OPT_INFO,
  NBD_OPT_LIST,
  NBD_OPT_LIST_META_CONTEXT,
  NBD_OPT_SET_META_CONTEXT,
  NBD_OPT_STARTTLS,
  NBD_OPT_STRUCTURED_REPLY,
  NBD_REP_ACK,
  NBD_REP_ERR_INVALID,
  NBD_REP_ERR_POLICY,
  NBD_REP_ERR_TLS_REQD,
  NBD_REP_ERR_UNKNOWN,
  NBD_REP_ERR_UNSUP,
  NBD_REP_INFO,
  NBD_REP_META_CONTEXT,
  NBD_REP_SERVER,
  PREFERRED_BLOCK_SIZE,
} from './constants.ts';
import { ProtocolError, errorMessage } from './errors.ts';
import type { NbdLogFields, NbdLogFn } from './log.ts';
import { ConnectionClosedError, type NbdReader } from './socket-reader.ts';
import type { NbdTlsMode } from './tls.ts';
import {
  decodeOptionHeader,
  encodeExportNameReply,
  encodeInfoBlockSize,
  encodeInfoExport,
  encodeInfoString,
  encodeMetaContext,
  encodeOptionReply,
  encodeServerEntry,
  encodeServerGreeting,
} from './wire.ts';

/** What the handshake agreed on, when it ends in transmission. */
export interface NegotiatedExport {
  exportName: string;
  opened: OpenedExport;
  structuredReplies: boolean;
  /** Context id to use in block status replies, or null when base:allocation was not selected. */
  baseAllocationContextId: number | null;
  transmissionFlags: number;
  /** The account the client authenticated as with TLS-PSK; null for a plaintext client. */
  accountId: string | null;
}

/** The connection after a successful STARTTLS: where haggling goes on, and what it may reach. */
export interface UpgradedTransport {
  socket: Socket;
  reader: NbdReader;
  accountId: string;
  exports: ExportProvider;
}

export interface HandshakeTls {
  mode: NbdTlsMode;
  /**
   * Runs the TLS handshake on the connection's socket (the ACK is already queued on it, and its
   * plaintext reader released); rejects when the client does not prove a known key.
   */
  start(): Promise<UpgradedTransport>;
}

export interface HandshakeContext {
  socket: Socket;
  reader: NbdReader;
  /** The exports of a plaintext client (all of them). */
  exports: ExportProvider;
  /** Null when the server has no TLS at all: NBD_OPT_STARTTLS is then NBD_REP_ERR_UNSUP. */
  tls: HandshakeTls | null;
  log: NbdLogFn;
  fields: NbdLogFields;
  /**
   * Called when an export is busy: waits for a departing client of this server to release it and
   * resolves true if there was one (the open is then retried once).
   */
  waitForRelease?: (exportName: string) => Promise<boolean>;
}

/** The transmission flags we advertise for an export. */
export function transmissionFlagsFor(readOnly: boolean, structuredReplies: boolean): number {
  // No NBD_FLAG_CAN_MULTI_CONN: the service allows one writer per disk and keeps no shared cache
  // promise across connections.
  let flags = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_CACHE;
  if (readOnly) flags |= NBD_FLAG_READ_ONLY;
  else flags |= NBD_FLAG_SEND_FUA | NBD_FLAG_SEND_TRIM | NBD_FLAG_SEND_WRITE_ZEROES;
  if (structuredReplies) flags |= NBD_FLAG_SEND_DF;
  return flags;
}

const EMPTY = Buffer.alloc(0);

/** An option's request failed with an error reply (negotiation continues). */
class OptionRefused extends Error {
  constructor(
    readonly replyType: number,
    message: string,
  ) {
    super(message);
  }
}

/**
 * Runs the handshake. Resolves with the negotiated export (the caller owns `opened` and must release
 * it), or null when the client ended negotiation with NBD_OPT_ABORT. Throws ProtocolError when the
 * client must be hard-disconnected and ConnectionClosedError when it went away.
 */
export async function negotiate(ctx: HandshakeContext): Promise<NegotiatedExport | null> {
  return new Handshake(ctx).run();
}

class Handshake {
  private structuredReplies = false;
  private noZeroes = false;
  /** Result of the last NBD_OPT_SET_META_CONTEXT: export it referred to, and whether it selected base:allocation. */
  private metaContext: { exportName: string; baseAllocation: boolean } | null = null;
  /** Where haggling happens; replaced by the TLS socket and its reader after STARTTLS. */
  private socket: Socket;
  private reader: NbdReader;
  private exports: ExportProvider;
  private accountId: string | null = null;
  private tlsUp = false;

  constructor(private readonly ctx: HandshakeContext) {
    this.socket = ctx.socket;
    this.reader = ctx.reader;
    this.exports = ctx.exports;
  }

  /** FORCEDTLS: until TLS is up, only STARTTLS and ABORT are served. */
  private get tlsRequired(): boolean {
    return this.ctx.tls?.mode === 'require' && !this.tlsUp;
  }

  async run(): Promise<NegotiatedExport | null> {
    this.send(encodeServerGreeting(NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES));
    const clientFlags = (await this.reader.read(4)).readUInt32BE(0);
    if ((clientFlags & ~KNOWN_CLIENT_FLAGS) !== 0) {
      throw new ProtocolError(`unknown client flags 0x${clientFlags.toString(16)}`);
    }
    if ((clientFlags & NBD_FLAG_C_FIXED_NEWSTYLE) === 0) {
      throw new ProtocolError('client does not support fixed newstyle negotiation');
    }
    this.noZeroes = (clientFlags & NBD_FLAG_C_NO_ZEROES) !== 0;

    for (;;) {
      const header = decodeOptionHeader(await this.reader.read(16));
      if (!header) throw new ProtocolError('bad option magic');
      if (header.length > MAX_OPTION_LENGTH) {
        throw new ProtocolError(`option ${header.option} data too long (${header.length} bytes)`);
      }
      const data = header.length > 0 ? Buffer.from(await this.reader.read(header.length)) : EMPTY;
      const { option } = header;

      if (option === NBD_OPT_EXPORT_NAME) {
        // It cannot be answered with an error: the spec asks for a disconnect.
        if (this.tlsRequired) throw new ProtocolError('NBD_OPT_EXPORT_NAME before TLS on a server that requires TLS');
        return this.exportName(data);
      }
      if (option === NBD_OPT_ABORT) {
        // Any data is ignored, as the spec asks.
        this.reply(option, NBD_REP_ACK);
        return null;
      }
      try {
        if (this.tlsRequired && option !== NBD_OPT_STARTTLS) {
          throw new OptionRefused(NBD_REP_ERR_TLS_REQD, 'this server requires TLS: send NBD_OPT_STARTTLS first');
        }
        const result = await this.option(option, data);
        if (result) return result;
      } catch (err) {
        if (!(err instanceof OptionRefused)) throw err;
        this.ctx.log('debug', 'nbd option refused', {
          ...this.ctx.fields,
          option,
          reply: err.replyType >>> 0,
          reason: err.message,
        });
        this.reply(option, err.replyType, Buffer.from(err.message, 'utf8'));
      }
    }
  }

  /** Handles one option other than EXPORT_NAME/ABORT; resolves with the export when GO succeeded. */
  private async option(option: number, data: Buffer): Promise<NegotiatedExport | null> {
    switch (option) {
      case NBD_OPT_LIST:
        await this.list(data);
        return null;
      case NBD_OPT_INFO:
      case NBD_OPT_GO:
        return this.infoOrGo(option, data);
      case NBD_OPT_STRUCTURED_REPLY:
        if (data.length !== 0) throw new OptionRefused(NBD_REP_ERR_INVALID, 'NBD_OPT_STRUCTURED_REPLY takes no data');
        this.structuredReplies = true;
        this.reply(option, NBD_REP_ACK);
        return null;
      case NBD_OPT_LIST_META_CONTEXT:
      case NBD_OPT_SET_META_CONTEXT:
        this.metaContextOption(option, data);
        return null;
      case NBD_OPT_STARTTLS:
        await this.startTls(data);
        return null;
      default:
        throw new OptionRefused(NBD_REP_ERR_UNSUP, `option ${option} is not supported`);
    }
  }

  private async startTls(data: Buffer): Promise<void> {
    const tls = this.ctx.tls;
    if (!tls) throw new OptionRefused(NBD_REP_ERR_UNSUP, 'TLS is not supported by this server');
    if (tls.mode === 'off') throw new OptionRefused(NBD_REP_ERR_POLICY, 'TLS is turned off on this server');
    if (this.tlsUp) throw new OptionRefused(NBD_REP_ERR_INVALID, 'TLS is already in use');
    if (data.length !== 0) throw new OptionRefused(NBD_REP_ERR_INVALID, 'NBD_OPT_STARTTLS takes no data');
    // Bytes already here were sent before the client could have seen our ACK: plaintext that would
    // otherwise be taken as coming from inside the TLS session (STARTTLS command injection).
    if (this.reader.bufferedBytes > 0) throw new ProtocolError('data pipelined after NBD_OPT_STARTTLS');
    // No await between here and the TLS socket taking over: whatever arrives next is TLS.
    this.reader.release();
    this.reply(NBD_OPT_STARTTLS, NBD_REP_ACK);
    const up = await tls.start();
    this.socket = up.socket;
    this.reader = up.reader;
    this.exports = up.exports;
    this.accountId = up.accountId;
    this.tlsUp = true;
    this.structuredReplies = false;
    this.metaContext = null;
  }

  private async list(data: Buffer): Promise<void> {
    if (data.length !== 0) throw new OptionRefused(NBD_REP_ERR_INVALID, 'NBD_OPT_LIST takes no data');
    let entries: Array<{ name: string; description?: string }>;
    try {
      entries = await this.exports.list();
    } catch (err) {
      this.ctx.log('error', 'nbd export listing failed', { ...this.ctx.fields, error: errorMessage(err) });
      throw new OptionRefused(NBD_REP_ERR_POLICY, 'listing exports failed');
    }
    for (const e of entries) {
      this.reply(NBD_OPT_LIST, NBD_REP_SERVER, encodeServerEntry(e.name, e.description));
    }
    this.reply(NBD_OPT_LIST, NBD_REP_ACK);
  }

  private async infoOrGo(option: number, data: Buffer): Promise<NegotiatedExport | null> {
    // 32-bit name length, name, 16-bit request count, 16-bit requests.
    if (data.length < 6) throw new OptionRefused(NBD_REP_ERR_INVALID, 'option data too short');
    const nameLength = data.readUInt32BE(0);
    if (nameLength > data.length - 6) throw new OptionRefused(NBD_REP_ERR_INVALID, 'export name length exceeds option data');
    const name = this.decodeString(data, 4, nameLength, 'export name');
    const count = data.readUInt16BE(4 + nameLength);
    if (data.length !== 4 + nameLength + 2 + 2 * count) {
      throw new OptionRefused(NBD_REP_ERR_INVALID, 'information request list does not match option length');
    }
    const requested = new Set<number>();
    for (let i = 0; i < count; i++) requested.add(data.readUInt16BE(4 + nameLength + 2 + 2 * i));

    // INFO only describes: it must not take the export from anyone (or mark a disk in use).
    if (option !== NBD_OPT_GO) {
      const d = await this.describe(name);
      this.replyInfo(option, name, d.size, transmissionFlagsFor(d.readOnly, this.structuredReplies), requested, d.description);
      return null;
    }
    const opened = await this.open(name);
    try {
      const flags = transmissionFlagsFor(opened.readOnly, this.structuredReplies);
      const description = requested.has(NBD_INFO_DESCRIPTION) ? await this.describe(name).then((d) => d.description, () => undefined) : undefined;
      this.replyInfo(option, name, opened.target.size, flags, requested, description);
      return this.negotiated(name, opened, flags);
    } catch (err) {
      await releaseQuietly(opened, this.ctx);
      throw err;
    }
  }

  private replyInfo(option: number, name: string, size: number, flags: number, requested: Set<number>, description: string | undefined): void {
    this.reply(option, NBD_REP_INFO, encodeInfoExport(NBD_INFO_EXPORT, size, flags));
    if (requested.has(NBD_INFO_NAME)) this.reply(option, NBD_REP_INFO, encodeInfoString(NBD_INFO_NAME, name));
    if (requested.has(NBD_INFO_DESCRIPTION) && description) this.reply(option, NBD_REP_INFO, encodeInfoString(NBD_INFO_DESCRIPTION, description));
    // Our constraints are the spec's defaults; we state them whether asked or not (clients ignore
    // information they did not ask for) so that clients do not fall back to 512-byte alignment.
    this.reply(option, NBD_REP_INFO, encodeInfoBlockSize(NBD_INFO_BLOCK_SIZE, MIN_BLOCK_SIZE, PREFERRED_BLOCK_SIZE, MAX_PAYLOAD_SIZE));
    this.reply(option, NBD_REP_ACK);
  }

  private async exportName(data: Buffer): Promise<NegotiatedExport> {
    if (data.length > MAX_STRING_LENGTH) throw new ProtocolError('NBD_OPT_EXPORT_NAME: export name too long');
    const name = data.toString('utf8');
    let opened: OpenedExport;
    try {
      opened = await this.open(name);
    } catch (err) {
      // The protocol offers no way to report an error here: hard disconnect.
      throw new ProtocolError(`NBD_OPT_EXPORT_NAME '${name}' refused: ${errorMessage(err)}`);
    }
    try {
      const flags = transmissionFlagsFor(opened.readOnly, this.structuredReplies);
      this.send(encodeExportNameReply(opened.target.size, flags, this.noZeroes));
      return this.negotiated(name, opened, flags);
    } catch (err) {
      await releaseQuietly(opened, this.ctx);
      throw err;
    }
  }

  private negotiated(name: string, opened: OpenedExport, flags: number): NegotiatedExport {
    const meta = this.metaContext;
    const base = meta !== null && meta.baseAllocation && meta.exportName === name && this.structuredReplies;
    return {
      exportName: name,
      opened,
      structuredReplies: this.structuredReplies,
      baseAllocationContextId: base ? BASE_ALLOCATION_CONTEXT_ID : null,
      transmissionFlags: flags,
      accountId: this.accountId,
    };
  }

  private metaContextOption(option: number, data: Buffer): void {
    const isSet = option === NBD_OPT_SET_META_CONTEXT;
    // A SET replaces the previous selection even when it fails.
    if (isSet) this.metaContext = null;
    // 32-bit export name length, name, 32-bit query count, queries (32-bit length + string).
    if (data.length < 8) throw new OptionRefused(NBD_REP_ERR_INVALID, 'option data too short');
    const nameLength = data.readUInt32BE(0);
    if (nameLength > data.length - 8) throw new OptionRefused(NBD_REP_ERR_INVALID, 'export name length exceeds option data');
    const exportName = this.decodeString(data, 4, nameLength, 'export name');
    const count = data.readUInt32BE(4 + nameLength);
    let pos = 8 + nameLength;
    const queries: string[] = [];
    for (let i = 0; i < count; i++) {
      if (pos + 4 > data.length) throw new OptionRefused(NBD_REP_ERR_INVALID, 'query count exceeds option data');
      const len = data.readUInt32BE(pos);
      pos += 4;
      if (len > data.length - pos) throw new OptionRefused(NBD_REP_ERR_INVALID, 'query length exceeds option data');
      queries.push(this.decodeString(data, pos, len, 'query'));
      pos += len;
    }
    if (pos !== data.length) throw new OptionRefused(NBD_REP_ERR_INVALID, 'trailing bytes after queries');

    if (isSet) {
      if (!this.structuredReplies) {
        throw new OptionRefused(NBD_REP_ERR_INVALID, 'NBD_OPT_SET_META_CONTEXT requires structured replies');
      }
      const base = queries.includes(BASE_ALLOCATION);
      this.metaContext = { exportName, baseAllocation: base };
      if (base) this.reply(option, NBD_REP_META_CONTEXT, encodeMetaContext(BASE_ALLOCATION_CONTEXT_ID, BASE_ALLOCATION));
    } else {
      // Zero queries list everything; 'base:' is the namespace wildcard. Unknown namespaces and
      // unknown leaf names are ignored, as the spec requires.
      const base = queries.length === 0 || queries.some((q) => q === 'base:' || q === BASE_ALLOCATION);
      if (base) this.reply(option, NBD_REP_META_CONTEXT, encodeMetaContext(0, BASE_ALLOCATION));
    }
    this.reply(option, NBD_REP_ACK);
  }

  private async open(name: string): Promise<OpenedExport> {
    try {
      try {
        return await this.exports.open(name);
      } catch (err) {
        const busy = err instanceof ExportUnavailableError && err.reason === 'busy';
        if (!busy || !this.ctx.waitForRelease || !(await this.ctx.waitForRelease(name))) throw err;
        return await this.exports.open(name);
      }
    } catch (err) {
      if (err instanceof ExportUnavailableError) {
        this.ctx.log('info', 'nbd export unavailable', {
          ...this.ctx.fields,
          export: name,
          reason: err.reason,
          error: err.message,
        });
        throw new OptionRefused(err.reason === 'unknown' ? NBD_REP_ERR_UNKNOWN : NBD_REP_ERR_POLICY, err.message);
      }
      this.ctx.log('error', 'nbd export open failed', { ...this.ctx.fields, export: name, error: errorMessage(err) });
      throw new OptionRefused(NBD_REP_ERR_UNKNOWN, `export '${name}' is not available`);
    }
  }

  private async describe(name: string): Promise<ExportDescription> {
    try {
      return await this.exports.describe(name);
    } catch (err) {
      if (err instanceof ExportUnavailableError) {
        throw new OptionRefused(err.reason === 'unknown' ? NBD_REP_ERR_UNKNOWN : NBD_REP_ERR_POLICY, err.message);
      }
      this.ctx.log('error', 'nbd export describe failed', { ...this.ctx.fields, export: name, error: errorMessage(err) });
      throw new OptionRefused(NBD_REP_ERR_UNKNOWN, `export '${name}' is not available`);
    }
  }

  private decodeString(data: Buffer, pos: number, length: number, what: string): string {
    if (length > MAX_STRING_LENGTH) throw new OptionRefused(NBD_REP_ERR_INVALID, `${what} too long`);
    const bytes = data.subarray(pos, pos + length);
    if (bytes.includes(0)) throw new OptionRefused(NBD_REP_ERR_INVALID, `${what} contains NUL`);
    return bytes.toString('utf8');
  }

  private reply(option: number, type: number, payload?: Buffer): void {
    this.send(encodeOptionReply(option, type, payload));
  }

  private send(buf: Buffer): void {
    const s = this.socket;
    if (s.destroyed || s.writableEnded) throw new ConnectionClosedError('connection closed');
    s.write(buf);
  }
}

async function releaseQuietly(opened: OpenedExport, ctx: HandshakeContext): Promise<void> {
  try {
    await opened.release();
  } catch (err) {
    ctx.log('error', 'nbd export release failed', { ...ctx.fields, error: errorMessage(err) });
  }
}
