/**
 * Wire-level emulation of Baidu's official Go SDK (github.com/baidubce/bce-sdk-go) and Python SDK
 * (baidubce/bce-sdk-python), which cannot be run here (no Go module proxy, no PyPI). Requests are
 * written as raw bytes on a TCP socket, exactly as each SDK's HTTP stack puts them on the wire:
 * request line, header names/case/order, query encoding, JSON body bytes, and the Authorization
 * header computed the way that SDK computes it (its header selection, its canonical URI and query).
 * Every signature is also recomputed with the project's own signer (src/lib/bce-auth.ts) so a test
 * can assert the two agree.
 *
 * Written from reading the SDK sources (behaviour only; no SDK code is reproduced):
 *   Go:     bce/client.go, bce/request.go, bce/builder.go, bce/config.go, bce/response.go,
 *           auth/signer.go, http/request.go, http/client.go, util/string.go, util/time.go
 *   Python: baidubce/http/bce_http_client.py, baidubce/auth/bce_v1_signer.py, baidubce/utils.py,
 *           baidubce/http/handler.py, baidubce/services/bcc/bcc_client.py
 */
import { createHash, createHmac, randomUUID } from 'node:crypto';
import { connect, type Socket } from 'node:net';
import { computeSignature, formatTimestamp, uriEncode } from '../../src/lib/bce-auth.ts';

export interface Endpoint {
  /** e.g. http://127.0.0.1:20001 */
  url: string;
  ak: string;
  sk: string;
  /** Go only: send on this kept-alive connection instead of a fresh one. */
  conn?: RawConnection;
}

export interface RawResponse {
  status: number;
  reason: string;
  /** Lower-case names. */
  headers: Record<string, string>;
  body: Buffer;
}

export interface WireExchange {
  sdk: 'go' | 'python';
  /** The request head exactly as written (request line + headers), for messages. */
  head: string;
  /** The request body as sent ('' for none). */
  requestBody: string;
  authorization: string;
  /** The signedHeaders field of the Authorization header ('' for Python). */
  signedHeaders: string;
  /** Our SDK-style signature and the one src/lib/bce-auth.ts computes for the same input. */
  signature: string;
  projectSignature: string;
  status: number;
  headers: Record<string, string>;
  text: string;
  /** Parsed body, or undefined when the body is empty (or not JSON). */
  json: any;
}

// ---------------------------------------------------------------------------------------------
// Raw HTTP/1.1: write request bytes, read one response. Python opens a connection per request
// (bce_http_client._get_connection); Go's transport keeps connections alive and reuses them.

type Parsed = { res: RawResponse; consumed: number } | null;

/** One complete response at the start of `buf`, or null if more bytes are needed. */
function parseResponse(buf: Buffer, ended: boolean): Parsed {
  const end = buf.indexOf('\r\n\r\n');
  if (end < 0) {
    if (ended) throw new Error('connection closed before the response headers');
    return null;
  }
  const lines = buf.subarray(0, end).toString('latin1').split('\r\n');
  const m = /^HTTP\/1\.[01] (\d{3}) ?(.*)$/.exec(lines[0]!);
  if (!m) throw new Error(`bad status line ${JSON.stringify(lines[0])}`);
  const headers: Record<string, string> = {};
  for (const line of lines.slice(1)) {
    const colon = line.indexOf(':');
    const name = line.slice(0, colon).trim().toLowerCase();
    const value = line.slice(colon + 1).trim();
    headers[name] = headers[name] === undefined ? value : `${headers[name]}, ${value}`;
  }
  const status = Number(m[1]);
  const start = end + 4;
  const body = buf.subarray(start);
  const done = (b: Buffer, consumed: number): Parsed => ({ res: { status, reason: m[2]!, headers, body: b }, consumed });
  if ((headers['transfer-encoding'] ?? '').toLowerCase().includes('chunked')) {
    const parts: Buffer[] = [];
    let pos = 0;
    for (;;) {
      const lineEnd = body.indexOf('\r\n', pos);
      if (lineEnd < 0) break;
      const size = parseInt(body.subarray(pos, lineEnd).toString('latin1'), 16);
      if (size === 0) {
        if (body.length >= lineEnd + 4) return done(Buffer.concat(parts), start + lineEnd + 4);
        break;
      }
      if (body.length < lineEnd + 2 + size + 2) break;
      parts.push(body.subarray(lineEnd + 2, lineEnd + 2 + size));
      pos = lineEnd + 2 + size + 2;
    }
    if (ended) throw new Error('connection closed inside a chunked body');
    return null;
  }
  if (headers['content-length'] !== undefined) {
    const len = Number(headers['content-length']);
    if (body.length >= len) return done(body.subarray(0, len), start + len);
    if (ended) throw new Error(`connection closed after ${body.length} of ${len} body bytes`);
    return null;
  }
  if (status === 204 || status === 304) return done(Buffer.alloc(0), start);
  return ended ? done(body, buf.length) : null;
}

/** A client connection that can carry several request/response exchanges in turn (keep-alive). */
export class RawConnection {
  private buf = Buffer.alloc(0);
  private ended = false;
  private failure: Error | null = null;
  private wake: (() => void) | null = null;

  private constructor(private readonly sock: Socket) {
    sock.on('data', (d: Buffer) => {
      this.buf = Buffer.concat([this.buf, d]);
      this.wake?.();
    });
    sock.on('end', () => {
      this.ended = true;
      this.wake?.();
    });
    sock.on('close', () => {
      this.ended = true;
      this.wake?.();
    });
    sock.on('error', (e) => {
      this.failure = e;
      this.wake?.();
    });
  }

  static open(url: string): Promise<RawConnection> {
    const u = new URL(url);
    return new Promise((resolve, reject) => {
      const sock = connect({ host: u.hostname, port: Number(u.port) }, () => {
        sock.off('error', reject);
        resolve(new RawConnection(sock));
      });
      sock.once('error', reject);
    });
  }

  /** True once the server closed its side (Go would dial a new connection). */
  get closed(): boolean {
    return this.ended || this.sock.destroyed;
  }

  exchange(request: Buffer, timeoutMs = 30_000): Promise<RawResponse> {
    if (this.buf.length > 0) return Promise.reject(new Error(`${this.buf.length} unexpected bytes before the request`));
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => finish(new Error(`no complete response in ${timeoutMs} ms`)), timeoutMs);
      const finish = (err: Error | null, res?: RawResponse): void => {
        clearTimeout(timer);
        this.wake = null;
        if (err) reject(err);
        else resolve(res!);
      };
      this.wake = (): void => {
        if (this.failure) return finish(this.failure);
        let parsed: Parsed;
        try {
          parsed = parseResponse(this.buf, this.ended);
        } catch (e) {
          return finish(e as Error);
        }
        if (!parsed) return;
        this.buf = this.buf.subarray(parsed.consumed);
        finish(null, parsed.res);
      };
      this.sock.write(request);
    });
  }

  close(): void {
    this.sock.destroy();
  }
}

/** One request on a fresh connection, closed afterwards. */
export async function rawHttp(url: string, request: Buffer, timeoutMs = 30_000): Promise<RawResponse> {
  const conn = await RawConnection.open(url);
  try {
    return await conn.exchange(request, timeoutMs);
  } finally {
    conn.close();
  }
}

function toExchange(sdk: 'go' | 'python', head: string, requestBody: string, authorization: string, signature: string, projectSignature: string, res: RawResponse): WireExchange {
  const text = res.body.toString('utf8');
  let json: unknown;
  if (text.trim() !== '') {
    try {
      json = JSON.parse(text);
    } catch {
      json = undefined;
    }
  }
  return {
    sdk, head, requestBody, authorization, signedHeaders: authorization.split('/')[4] ?? '', signature, projectSignature,
    status: res.status, headers: res.headers, text, json,
  };
}

const hmacHex = (key: string, msg: string): string => createHmac('sha256', key).update(msg, 'utf8').digest('hex');
const byteSort = (a: string, b: string): number => Buffer.compare(Buffer.from(a), Buffer.from(b));

// ---------------------------------------------------------------------------------------------
// Go SDK (bce-sdk-go 0.9.273)

export const GO_USER_AGENT = 'bce-sdk-go/0.9.273/go1.22.5/linux/amd64';
/** bce.DEFAULT_CONTENT_TYPE: set on every request, GET and DELETE included. */
export const GO_CONTENT_TYPE = 'application/json;charset=utf-8';
/** auth.DEFAULT_HEADERS_TO_SIGN; every other x-bce-* header except x-bce-request-id is signed too. */
const GO_HEADERS_TO_SIGN = new Set(['host', 'content-length', 'content-type', 'content-md5']);

export interface GoRequest {
  method: 'GET' | 'POST' | 'PUT' | 'DELETE';
  /** e.g. /v2/volume/v-abc */
  path: string;
  /**
   * Query parameters in the order a Go map happened to iterate them (the real order is random).
   * An empty value is written as a bare key (`?resize`), signed as `resize=`.
   */
  params?: Array<[string, string]>;
  /** The json.Marshal output, byte for byte; undefined: no body (GET, DELETE). */
  body?: string;
  /** Signing time (ms); default now. */
  at?: number;
  requestId?: string;
  /** Wrong-secret tests: sign with this secret instead. */
  signWithSecret?: string;
  /** A kept-alive connection to send on, as Go's transport reuses them; default a fresh one. */
  conn?: RawConnection;
}

/**
 * One Go SDK call as BceClient.SendRequest puts it on the wire: BuildHttpRequest adds
 * x-bce-request-id; buildHttpRequest adds Host, User-Agent, x-bce-date and the default Content-Type;
 * BceRequest.SetBody adds Content-Md5 (base64) and Content-Length; BceV1Signer signs with an explicit
 * signedHeaders list; net/http writes Host, User-Agent, Content-Length, the map sorted by key, then
 * the transport's Accept-Encoding.
 */
export async function goSend(ep: Endpoint, r: GoRequest): Promise<WireExchange> {
  const host = new URL(ep.url).host;
  const date = formatTimestamp(r.at ?? Date.now());
  const params = r.params ?? [];
  const body = r.body === undefined ? undefined : Buffer.from(r.body, 'utf8');

  // The SDK's header map (keys exactly as the SDK sets them).
  const map: Record<string, string> = {
    'x-bce-request-id': r.requestId ?? randomUUID(),
    Host: host,
    'User-Agent': GO_USER_AGENT,
    'x-bce-date': date,
    'Content-Type': GO_CONTENT_TYPE,
  };
  if (body && body.length > 0) {
    map['Content-Md5'] = createHash('md5').update(body).digest('base64');
    map['Content-Length'] = String(body.length);
  }

  // auth/signer.go: canonical URI keeps '/', query `k=` for empty values, headers `name:value`
  // percent-encoded, everything sorted; expiration 1800 s.
  const canonicalUri = '/' + uriEncode(r.path.replace(/^\//, ''), true);
  const canonicalQuery = params
    .filter(([k]) => k.toLowerCase() !== 'authorization')
    .map(([k, v]) => (v === '' ? `${uriEncode(k)}=` : `${uriEncode(k)}=${uriEncode(v)}`))
    .sort(byteSort)
    .join('&');
  const lines: string[] = [];
  const names: string[] = [];
  for (const [k, v] of Object.entries(map)) {
    const lk = k.toLowerCase();
    if (lk === 'authorization') continue;
    if (GO_HEADERS_TO_SIGN.has(lk) || (lk.startsWith('x-bce-') && lk !== 'x-bce-request-id')) {
      const val = v.trim();
      if (val === '') continue;
      lines.push(`${uriEncode(lk)}:${uriEncode(val)}`);
      names.push(lk);
    }
  }
  lines.sort(byteSort);
  names.sort(byteSort);
  const info = `bce-auth-v1/${ep.ak}/${date}/1800`;
  const secret = r.signWithSecret ?? ep.sk;
  const signature = hmacHex(hmacHex(secret, info), [r.method, canonicalUri, canonicalQuery, lines.join('\n')].join('\n'));
  const authorization = `${info}/${names.join(';')}/${signature}`;
  map.Authorization = authorization;

  const projectSignature = computeSignature({
    method: r.method, path: r.path, query: params.map(([k, v]) => [k, v === '' ? null : v] as const),
    headers: Object.fromEntries(Object.entries(map).filter(([k]) => k !== 'Authorization').map(([k, v]) => [k.toLowerCase(), v])),
    signedHeaders: names, accessKeyId: ep.ak, secretAccessKey: secret, timestamp: date, expirationSeconds: 1800,
  });

  // http/request.go QueryString: bare key for an empty value.
  const query = params.map(([k, v]) => (v === '' ? uriEncode(k) : `${uriEncode(k)}=${uriEncode(v)}`)).join('&');
  let head = `${r.method} ${r.path}${query ? `?${query}` : ''} HTTP/1.1\r\n`;
  head += `Host: ${host}\r\n`;
  head += `User-Agent: ${GO_USER_AGENT}\r\n`;
  // net/http sends Content-Length for a body; for POST/PUT without one it sends 0; never for GET/DELETE.
  if (body && body.length > 0) head += `Content-Length: ${body.length}\r\n`;
  else if (r.method === 'POST' || r.method === 'PUT') head += 'Content-Length: 0\r\n';
  const excluded = new Set(['Host', 'User-Agent', 'Content-Length']);
  for (const k of Object.keys(map).filter((k) => !excluded.has(k)).sort(byteSort)) head += `${k}: ${map[k]}\r\n`;
  head += 'Accept-Encoding: gzip\r\n\r\n';
  const bytes = Buffer.concat([Buffer.from(head, 'latin1'), body ?? Buffer.alloc(0)]);
  const conn = r.conn ?? ep.conn;
  const res = conn ? await conn.exchange(bytes) : await rawHttp(ep.url, bytes);
  return toExchange('go', head, r.body ?? '', authorization, signature, projectSignature, res);
}

/** encoding/json Marshal of a value already laid out in struct field order: compact, HTML-escaped. */
export function goJson(value: unknown): string {
  return JSON.stringify(value)
    .replace(/</g, '\\u003c').replace(/>/g, '\\u003e').replace(/&/g, '\\u0026')
    .replace(/\u2028/g, '\\u2028').replace(/\u2029/g, '\\u2029');
}

/** A struct field for goStruct: its json tag, Go kind, value (undefined = zero value) and omitempty. */
export type GoField = [tag: string, kind: 'string' | 'int' | 'bool' | 'ptr' | 'slice' | 'iface', value: unknown, omitempty?: 'omitempty'];

/**
 * What json.Marshal makes of a struct: fields in declaration order; a zero value is dropped when the
 * tag says omitempty and written as "" / 0 / false / null otherwise (nil pointer and nil slice: null).
 */
export function goStruct(fields: GoField[]): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [tag, kind, value, omit] of fields) {
    const zero = kind === 'string' ? '' : kind === 'int' ? 0 : kind === 'bool' ? false : null;
    const v = value === undefined ? zero : value;
    const empty = v === zero || v === null || (Array.isArray(v) && v.length === 0);
    if (omit && empty) continue;
    out[tag] = v;
  }
  return out;
}

// What a Go response struct accepts: encoding/json fails the whole call on a type mismatch.
export type GoType = 'string' | 'int' | 'bool' | { slice: GoType } | { struct: Record<string, GoType> };

/**
 * Type errors json.Unmarshal would report decoding `value` into a Go value of type `t`. JSON null is
 * accepted everywhere (the field keeps its zero value); unknown keys are ignored; keys match the
 * json tag exactly or, failing that, case-insensitively, as encoding/json does.
 */
export function goDecodeErrors(t: GoType, value: unknown, path = '$'): string[] {
  if (value === null) return [];
  if (t === 'string') return typeof value === 'string' ? [] : [`${path}: cannot unmarshal ${jsonKind(value)} into Go string`];
  if (t === 'int') return typeof value === 'number' && Number.isInteger(value) ? [] : [`${path}: cannot unmarshal ${jsonKind(value)} into Go int`];
  if (t === 'bool') return typeof value === 'boolean' ? [] : [`${path}: cannot unmarshal ${jsonKind(value)} into Go bool`];
  if ('slice' in t) {
    if (!Array.isArray(value)) return [`${path}: cannot unmarshal ${jsonKind(value)} into Go slice`];
    return value.flatMap((v, i) => goDecodeErrors(t.slice, v, `${path}[${i}]`));
  }
  if (typeof value !== 'object' || Array.isArray(value)) return [`${path}: cannot unmarshal ${jsonKind(value)} into Go struct`];
  const errors: string[] = [];
  for (const [key, v] of Object.entries(value as Record<string, unknown>)) {
    const tag = key in t.struct ? key : Object.keys(t.struct).find((f) => f.toLowerCase() === key.toLowerCase());
    if (tag !== undefined) errors.push(...goDecodeErrors(t.struct[tag]!, v, `${path}.${key}`));
  }
  return errors;
}

function jsonKind(v: unknown): string {
  if (Array.isArray(v)) return 'array';
  if (typeof v === 'number') return `number ${v}`;
  return typeof v;
}

const S = 'string' as const;
const I = 'int' as const;
const B = 'bool' as const;
const sliceOf = (t: GoType): GoType => ({ slice: t });
const struct = (fields: Record<string, GoType>): GoType => ({ struct: fields });

/** Response structs of services/bcc/api/model.go (and model/tag.go, bce/error.go) the calls decode into. */
export const GO_TYPES = (() => {
  const TagModel = struct({ tagKey: S, tagValue: S });
  const VolumeAttachmentModel = struct({ volumeId: S, instanceId: S, device: S, serial: S });
  const AutoSnapshotPolicyModel = struct({
    createdTime: S, id: S, status: S, retentionDays: I, updatedTime: S, deletedTime: S, lastExecuteTime: S,
    volumeCount: I, name: S, timePoints: sliceOf(I), repeatWeekdays: sliceOf(I),
  });
  const VolumeModel = struct({
    type: S, storageType: S, id: S, name: S, diskSizeInGB: I, paymentTiming: S, expireTime: S, status: S,
    ebcDiskSize: I, desc: S, attachments: sliceOf(VolumeAttachmentModel), zoneName: S, autoSnapshotPolicy: AutoSnapshotPolicyModel,
    createTime: S, isSystemVolume: B, regionId: S, sourceSnapshotId: S, snapshotNum: S, tags: sliceOf(TagModel),
    resGroupInfos: sliceOf(struct({ groupId: S, groupName: S })), enableAutoRenew: B, autoRenewTime: I, encrypted: B,
    encryptKey: S, encryptKeySpec: S, clusterId: S, roleName: S, createdFrom: S, releaseTime: S, volumeId: S,
    productCategory: S, enableDeleteProtection: B,
  });
  const SnapshotModel = struct({
    id: S, name: S, sizeInGB: I, createTime: S, status: S, createMethod: S, volumeId: S, desc: S, expireTime: S,
    package: B, templateId: S, insnapId: S, encrypted: B, progress: S,
  });
  return {
    CreateCDSVolumeResult: struct({ volumeIds: sliceOf(S), warningList: sliceOf(S) }),
    ListCDSVolumeResult: struct({ marker: S, isTruncated: B, nextMarker: S, maxKeys: I, volumes: sliceOf(VolumeModel) }),
    GetVolumeDetailResult: struct({ volume: VolumeModel }),
    ResizeCDSVolumeResult: struct({ warningList: sliceOf(S) }),
    CreateSnapshotResult: struct({ snapshotId: S }),
    ListSnapshotResult: struct({ marker: S, isTruncated: B, nextMarker: S, maxKeys: I, snapshots: sliceOf(SnapshotModel) }),
    GetSnapshotDetailResult: struct({ snapshot: SnapshotModel }),
    RemoteCopySnapshotResult: struct({ result: sliceOf(struct({ region: S, snapshotId: S })) }),
    /** bce.BceServiceError, filled from an error body (fields match case-insensitively). */
    BceServiceError: struct({ Code: S, Message: S, RequestId: S }),
  };
})();

// ---------------------------------------------------------------------------------------------
// Python SDK (bce-sdk-python 0.9.72, Python 3)

export const PY_USER_AGENT = 'bce-sdk-python/0.9.72/3.11.9 (main, Apr  2 2024, 08:25:04) [GCC 12.2.0]/linux';
/** bce_v1_signer default set when headers_to_sign is None; every x-bce-* header is signed as well. */
const PY_HEADERS_TO_SIGN = new Set(['host', 'content-md5', 'content-length', 'content-type']);

export interface PyRequest {
  method: 'GET' | 'POST' | 'PUT' | 'DELETE';
  path: string;
  /** The params dict in insertion order; null is Python's None (`'rollback': None`). Absent: params=None. */
  params?: Array<[string, string | number | null]> | null;
  /** The json.dumps output; undefined: body=None. */
  body?: string;
  at?: number;
  signWithSecret?: string;
}

/**
 * One Python SDK call as bce_http_client.send_request puts it on the wire: headers User-Agent, Host
 * (with the port when it is not 80), Content-Length (0 without a body, GET and DELETE included),
 * Authorization with an EMPTY signedHeaders field, x-bce-date; no Content-Type, no
 * x-bce-request-id, no Accept-Encoding. The query is the sorted `k=v` string, `k=` for None.
 */
export async function pySend(ep: Endpoint, r: PyRequest): Promise<WireExchange> {
  const u = new URL(ep.url);
  const date = formatTimestamp(r.at ?? Date.now());
  const body = r.body === undefined ? undefined : Buffer.from(r.body, 'utf8');
  const ak = ep.ak;
  const secret = r.signWithSecret ?? ep.sk;

  const headers: Array<[string, string]> = [
    ['User-Agent', PY_USER_AGENT],
    ['Host', u.port && u.port !== '80' ? `${u.hostname}:${u.port}` : u.hostname],
    ['Content-Length', String(body ? body.length : 0)],
  ];
  // utils.get_canonical_querystring: every pair `normalize(k)=normalize(v or '')`, sorted; the same
  // string is used for signing and on the wire.
  const pairs = (r.params ?? []).map(([k, v]) => `${uriEncode(k)}=${uriEncode(v === null ? '' : String(v))}`).sort(byteSort);
  const query = pairs.join('&');
  // bce_v1_signer.sign: canonical URI is the raw path; x-bce-date is already in the dict when the
  // final signature is computed (the first, dateless one is overwritten in the send loop).
  const signHeaders: Array<[string, string]> = [...headers, ['x-bce-date', date]];
  const lines: string[] = [];
  for (const [k, v] of signHeaders) {
    const lk = k.trim().toLowerCase();
    const val = v.trim();
    if (val === '') continue;
    if (lk.startsWith('x-bce-') || PY_HEADERS_TO_SIGN.has(lk)) lines.push(`${uriEncode(lk)}:${uriEncode(val)}`);
  }
  lines.sort(byteSort);
  const info = `bce-auth-v1/${ak}/${date}/1800`;
  const signature = hmacHex(hmacHex(secret, info), [r.method, r.path, query, lines.join('\n')].join('\n'));
  const authorization = `${info}//${signature}`;
  const projectSignature = computeSignature({
    method: r.method, path: r.path,
    query: (r.params ?? []).map(([k, v]) => [k, v === null ? null : String(v)] as const),
    headers: Object.fromEntries(signHeaders.map(([k, v]) => [k.toLowerCase(), v])),
    signedHeaders: null, accessKeyId: ak, secretAccessKey: secret, timestamp: date, expirationSeconds: 1800,
  });

  let head = `${r.method} ${r.path}${query ? `?${query}` : ''} HTTP/1.1\r\n`;
  for (const [k, v] of headers) head += `${k}: ${v}\r\n`;
  head += `Authorization: ${authorization}\r\n`;
  head += `x-bce-date: ${date}\r\n\r\n`;
  const res = await rawHttp(ep.url, Buffer.concat([Buffer.from(head, 'latin1'), body ?? Buffer.alloc(0)]));
  return toExchange('python', head, r.body ?? '', authorization, signature, projectSignature, res);
}

/** Python's json.dumps with default arguments: ', ' and ': ' separators, ensure_ascii. */
export function pyJsonDumps(value: unknown): string {
  if (value === null || value === undefined) return 'null';
  if (typeof value === 'boolean') return value ? 'true' : 'false';
  if (typeof value === 'number') return String(value);
  if (typeof value === 'string') return JSON.stringify(value).replace(/[\u0080-\uffff]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
  if (Array.isArray(value)) return `[${value.map(pyJsonDumps).join(', ')}]`;
  return `{${Object.entries(value as Record<string, unknown>).map(([k, v]) => `${pyJsonDumps(k)}: ${pyJsonDumps(v)}`).join(', ')}}`;
}

/** utils.pythonize_name: the attribute name a Python caller reads for a JSON key. */
export function pythonizeName(name: string): string {
  if (name === 'eTag') return 'etag';
  return name
    .replace(/(.)([A-Z][a-z]+)/g, '$1_$2')
    .replace(/([a-z])([0-9]{2,})/g, '$1_$2')
    .replace(/([a-z0-9])([A-Z])/g, '$1_$2')
    .toLowerCase();
}

/** handler.parse_json: json.loads with utils.dict_to_python_object on every object (keys pythonized). */
export function pyParse(value: unknown): any {
  if (Array.isArray(value)) return value.map(pyParse);
  if (value && typeof value === 'object') {
    return Object.fromEntries(Object.entries(value as Record<string, unknown>).map(([k, v]) => [pythonizeName(k), pyParse(v)]));
  }
  return value;
}

/** generate_client_token (bcc_client.py): str(uuid.uuid4()). */
export const pyClientToken = (): string => randomUUID();
