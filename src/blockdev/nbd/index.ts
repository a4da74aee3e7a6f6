/**
 * NBD (Network Block Device) server exposing BlockTarget exports over TCP.
 *
 * Layout (one idea per file):
 * - constants.ts        protocol numbers (magics, options, replies, flags, commands, errors, limits)
 * - wire.ts             byte layouts of handshake and transmission messages (pure encode/decode)
 * - socket-reader.ts    exact-length reads from the socket with bounded buffering
 * - inflight-budget.ts  per-connection cap on requests and payload bytes in flight
 * - handshake.ts        fixed newstyle greeting and option negotiation (NBD_OPT_STARTTLS included)
 * - tls.ts              TLS modes, PSK derivation, the server side of the TLS-PSK handshake
 * - transmission.ts     concurrent request execution and (simple or structured) replies
 * - server.ts           listener, connection lifetime, export release, shutdown
 */
export { startNbdServer, type NbdServer, type NbdServerOptions } from './server.ts';
export type { NbdLogFn, NbdLogFields, NbdLogLevel } from './log.ts';
export {
  NBD_PSK_LABEL,
  NBD_TLS_MODES,
  defaultNbdTlsMode,
  isLoopbackHost,
  nbdPskKey,
  pskFileLine,
  type NbdPskEntry,
  type NbdTlsMode,
  type NbdTlsOptions,
} from './tls.ts';
