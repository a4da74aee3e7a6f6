/**
 * Byte layouts of the NBD messages this server reads and writes (all big-endian). Pure functions:
 * no I/O, no state.
 */
import {
  NBD_REP_MAGIC,
  NBD_REQUEST_MAGIC,
  NBD_SIMPLE_REPLY_MAGIC,
  NBD_STRUCTURED_REPLY_MAGIC,
  NBD_REPLY_FLAG_DONE,
  NBD_REPLY_TYPE_BLOCK_STATUS,
  NBD_REPLY_TYPE_ERROR,
  NBD_REPLY_TYPE_NONE,
  NBD_REPLY_TYPE_OFFSET_DATA,
  SIMPLE_REPLY_HEADER_SIZE,
  STRUCTURED_REPLY_HEADER_SIZE,
} from './constants.ts';

const TWO_32 = 0x1_0000_0000;

/**
 * Reads an unsigned 64-bit value as a number. Values above 2^53 lose precision but stay above
 * 2^53, which is all the callers need (they compare offsets against export sizes).
 */
export function readU64(buf: Buffer, pos: number): number {
  return buf.readUInt32BE(pos) * TWO_32 + buf.readUInt32BE(pos + 4);
}

/** Writes a non-negative integer (at most 2^53 - 1) as an unsigned 64-bit value. */
export function writeU64(buf: Buffer, value: number, pos: number): void {
  buf.writeUInt32BE(Math.floor(value / TWO_32), pos);
  buf.writeUInt32BE(value % TWO_32, pos + 4);
}

// ---- handshake ----------------------------------------------------------------------------------

/** The server's opening: NBDMAGIC, IHAVEOPT, 16-bit handshake flags. */
export function encodeServerGreeting(handshakeFlags: number): Buffer {
  const buf = Buffer.alloc(18);
  buf.write('NBDMAGIC', 0, 'latin1');
  buf.write('IHAVEOPT', 8, 'latin1');
  buf.writeUInt16BE(handshakeFlags, 16);
  return buf;
}

export function isOptsMagic(buf: Buffer, pos: number): boolean {
  return buf.toString('latin1', pos, pos + 8) === 'IHAVEOPT';
}

export interface OptionHeader {
  option: number;
  length: number;
}

/** Parses the 16-byte option header; returns null if the magic is not IHAVEOPT. */
export function decodeOptionHeader(buf: Buffer): OptionHeader | null {
  if (!isOptsMagic(buf, 0)) return null;
  return { option: buf.readUInt32BE(8), length: buf.readUInt32BE(12) };
}

/** One fixed-newstyle option reply: magic, option, reply type, length, payload. */
export function encodeOptionReply(option: number, replyType: number, payload?: Buffer): Buffer {
  const len = payload?.length ?? 0;
  const buf = Buffer.allocUnsafe(20 + len);
  buf.writeBigUInt64BE(NBD_REP_MAGIC, 0);
  buf.writeUInt32BE(option, 8);
  buf.writeUInt32BE(replyType, 12);
  buf.writeUInt32BE(len, 16);
  if (payload) payload.copy(buf, 20);
  return buf;
}

/** Payload of an NBD_REP_SERVER reply: name length, name, optional description. */
export function encodeServerEntry(name: string, description?: string): Buffer {
  const nameBuf = Buffer.from(name, 'utf8');
  const descBuf = Buffer.from(description ?? '', 'utf8');
  const buf = Buffer.allocUnsafe(4 + nameBuf.length + descBuf.length);
  buf.writeUInt32BE(nameBuf.length, 0);
  nameBuf.copy(buf, 4);
  descBuf.copy(buf, 4 + nameBuf.length);
  return buf;
}

/** Payload of NBD_REP_INFO / NBD_INFO_EXPORT (also the size + flags part of EXPORT_NAME's reply). */
export function encodeInfoExport(infoType: number, size: number, transmissionFlags: number): Buffer {
  const buf = Buffer.allocUnsafe(12);
  buf.writeUInt16BE(infoType, 0);
  writeU64(buf, size, 2);
  buf.writeUInt16BE(transmissionFlags, 10);
  return buf;
}

/** Payload of NBD_REP_INFO carrying a string (NBD_INFO_NAME, NBD_INFO_DESCRIPTION). */
export function encodeInfoString(infoType: number, text: string): Buffer {
  const textBuf = Buffer.from(text, 'utf8');
  const buf = Buffer.allocUnsafe(2 + textBuf.length);
  buf.writeUInt16BE(infoType, 0);
  textBuf.copy(buf, 2);
  return buf;
}

export function encodeInfoBlockSize(infoType: number, min: number, preferred: number, max: number): Buffer {
  const buf = Buffer.allocUnsafe(14);
  buf.writeUInt16BE(infoType, 0);
  buf.writeUInt32BE(min, 2);
  buf.writeUInt32BE(preferred, 6);
  buf.writeUInt32BE(max, 10);
  return buf;
}

/** Payload of NBD_REP_META_CONTEXT: context id, name. */
export function encodeMetaContext(id: number, name: string): Buffer {
  const nameBuf = Buffer.from(name, 'utf8');
  const buf = Buffer.allocUnsafe(4 + nameBuf.length);
  buf.writeUInt32BE(id, 0);
  nameBuf.copy(buf, 4);
  return buf;
}

/** Reply to NBD_OPT_EXPORT_NAME: size, transmission flags, and 124 zero bytes unless NO_ZEROES. */
export function encodeExportNameReply(size: number, transmissionFlags: number, noZeroes: boolean): Buffer {
  const buf = Buffer.alloc(noZeroes ? 10 : 134);
  writeU64(buf, size, 0);
  buf.writeUInt16BE(transmissionFlags, 8);
  return buf;
}

// ---- transmission -------------------------------------------------------------------------------

export interface NbdRequest {
  flags: number;
  type: number;
  /** The client's opaque 64-bit cookie ("handle"), kept as two halves to avoid BigInt work. */
  cookieHi: number;
  cookieLo: number;
  offset: number;
  length: number;
}

/** Parses a 28-byte request header at `pos`; returns null if the magic is wrong. */
export function decodeRequest(buf: Buffer, pos: number): NbdRequest | null {
  if (buf.readUInt32BE(pos) !== NBD_REQUEST_MAGIC) return null;
  return {
    flags: buf.readUInt16BE(pos + 4),
    type: buf.readUInt16BE(pos + 6),
    cookieHi: buf.readUInt32BE(pos + 8),
    cookieLo: buf.readUInt32BE(pos + 12),
    offset: readU64(buf, pos + 16),
    length: buf.readUInt32BE(pos + 24),
  };
}

export function encodeSimpleReply(error: number, req: NbdRequest): Buffer {
  const buf = Buffer.allocUnsafe(SIMPLE_REPLY_HEADER_SIZE);
  buf.writeUInt32BE(NBD_SIMPLE_REPLY_MAGIC, 0);
  buf.writeUInt32BE(error, 4);
  buf.writeUInt32BE(req.cookieHi, 8);
  buf.writeUInt32BE(req.cookieLo, 12);
  return buf;
}

/**
 * A structured reply chunk header followed by `extra` bytes of room for the fixed part of the
 * payload (the caller fills it in at offset STRUCTURED_REPLY_HEADER_SIZE). `payloadLength` is the
 * full payload length written in the header, which may include data sent as a separate buffer.
 */
export function encodeChunkHeader(
  req: NbdRequest,
  flags: number,
  type: number,
  payloadLength: number,
  extra = 0,
): Buffer {
  const buf = Buffer.allocUnsafe(STRUCTURED_REPLY_HEADER_SIZE + extra);
  buf.writeUInt32BE(NBD_STRUCTURED_REPLY_MAGIC, 0);
  buf.writeUInt16BE(flags, 4);
  buf.writeUInt16BE(type, 6);
  buf.writeUInt32BE(req.cookieHi, 8);
  buf.writeUInt32BE(req.cookieLo, 12);
  buf.writeUInt32BE(payloadLength, 16);
  return buf;
}

/** Final NBD_REPLY_TYPE_NONE chunk. */
export function encodeNoneChunk(req: NbdRequest): Buffer {
  return encodeChunkHeader(req, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_NONE, 0);
}

/**
 * Header of a final NBD_REPLY_TYPE_OFFSET_DATA chunk carrying `dataLength` bytes at `offset`; the
 * data itself is written separately (no copy).
 */
export function encodeOffsetDataHeader(req: NbdRequest, offset: number, dataLength: number, done: boolean): Buffer {
  const buf = encodeChunkHeader(req, done ? NBD_REPLY_FLAG_DONE : 0, NBD_REPLY_TYPE_OFFSET_DATA, 8 + dataLength, 8);
  writeU64(buf, offset, STRUCTURED_REPLY_HEADER_SIZE);
  return buf;
}

/** Final NBD_REPLY_TYPE_ERROR chunk with a human-readable message (truncated to fit the spec). */
export function encodeErrorChunk(req: NbdRequest, error: number, message: string): Buffer {
  let msg = Buffer.from(message, 'utf8');
  if (msg.length > 4096) msg = msg.subarray(0, 4096);
  const buf = encodeChunkHeader(req, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_ERROR, 6 + msg.length, 6 + msg.length);
  buf.writeUInt32BE(error, STRUCTURED_REPLY_HEADER_SIZE);
  buf.writeUInt16BE(msg.length, STRUCTURED_REPLY_HEADER_SIZE + 4);
  msg.copy(buf, STRUCTURED_REPLY_HEADER_SIZE + 6);
  return buf;
}

/** Final NBD_REPLY_TYPE_BLOCK_STATUS chunk: context id then (length, flags) descriptors. */
export function encodeBlockStatusChunk(
  req: NbdRequest,
  contextId: number,
  descriptors: ReadonlyArray<{ length: number; flags: number }>,
): Buffer {
  const payload = 4 + 8 * descriptors.length;
  const buf = encodeChunkHeader(req, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_BLOCK_STATUS, payload, payload);
  let pos = STRUCTURED_REPLY_HEADER_SIZE;
  buf.writeUInt32BE(contextId, pos);
  pos += 4;
  for (const d of descriptors) {
    buf.writeUInt32BE(d.length, pos);
    buf.writeUInt32BE(d.flags, pos + 4);
    pos += 8;
  }
  return buf;
}
