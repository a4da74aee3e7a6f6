/**
 * TLS with pre-shared keys for the NBD server: the modes, the key derivation, and the in-place
 * upgrade of a connection's socket after NBD_OPT_STARTTLS was acknowledged.
 *
 * - The PSK identity is an account's access key id; its key is derived from the account's secret
 *   (`nbdPskKey`), so nothing new is stored, rotating the secret rotates the key, and a PSK file
 *   (which sits on the client host) does not reveal the secret that signs API requests.
 * - TLS 1.3 (what libnbd and QEMU, both through GnuTLS, negotiate: PSK with an ECDHE key share),
 *   and TLS 1.2, which the NBD spec makes mandatory, with ECDHE-PSK suites only: every session has
 *   forward secrecy; plain-PSK and DHE-PSK suites are not offered.
 * - The account a connection acts as is only ever the one whose key this connection's handshake
 *   proved (`pskCallback`); no session ticket can stand in for it (every connection has its own TLS
 *   context, hence its own random ticket key; see `upgrade`).
 * - An unknown identity is answered with a decoy key (HMAC of the identity under a per-server
 *   random secret) rather than refused outright, so a wrong identity and a wrong key fail the same
 *   way (the client's binder does not verify) and access key ids cannot be probed.
 */
import { createHmac, randomBytes } from 'node:crypto';
import { isIP, type Socket } from 'node:net';
import tls from 'node:tls';
import type { ExportProvider } from '../block-target.ts';

/**
 * - `off`: no TLS; NBD_OPT_STARTTLS is refused with NBD_REP_ERR_POLICY; every client sees every export.
 * - `on`: TLS at the client's choice: a TLS client sees only its account's exports, a plaintext
 *   client sees every export (as without TLS). For loopback, where plaintext is as private as the host.
 * - `require`: every option but STARTTLS and ABORT answers NBD_REP_ERR_TLS_REQD until TLS is up;
 *   NBD_OPT_EXPORT_NAME before TLS is a hard disconnect.
 */
export type NbdTlsMode = 'off' | 'on' | 'require';

export const NBD_TLS_MODES: readonly NbdTlsMode[] = ['off', 'on', 'require'];

/** The key a PSK identity must prove, and the account it then acts as. */
export interface NbdPskEntry {
  accountId: string;
  key: Buffer;
}

export interface NbdTlsOptions {
  mode: NbdTlsMode;
  /** Looks up a PSK identity (an access key id); null when it names no account. */
  keyFor(identity: string): NbdPskEntry | null;
  /** The exports a client authenticated as `accountId` may list, describe and open. */
  exportsFor(accountId: string): ExportProvider;
}

// The key derivation lives in lib/ (the CLI derives the same key): re-exported for the NBD API.
export { NBD_PSK_LABEL, nbdPskKey, pskFileLine } from '../../lib/nbd-psk.ts';

/** `require` unless the address is loopback (then `on`): plaintext NBD must never leave the host. */
export function defaultNbdTlsMode(host: string): NbdTlsMode {
  return isLoopbackHost(host) ? 'on' : 'require';
}

export function isLoopbackHost(host: string): boolean {
  const h = host.replace(/^\[|\]$/g, '').toLowerCase();
  if (h === 'localhost' || h === '::1') return true;
  if (isIP(h) === 4) return h.startsWith('127.');
  if (h.startsWith('::ffff:')) return isIP(h.slice(7)) === 4 && h.slice(7).startsWith('127.');
  return false;
}

/**
 * TLS 1.3 suites (with the legacy PSK callback OpenSSL uses the SHA-256 ones), then TLS 1.2
 * ECDHE-PSK suites, strongest first.
 */
const CIPHERS = [
  'TLS_AES_128_GCM_SHA256',
  'TLS_CHACHA20_POLY1305_SHA256',
  'TLS_AES_256_GCM_SHA384',
  'ECDHE-PSK-CHACHA20-POLY1305',
  'ECDHE-PSK-AES256-CBC-SHA384',
  'ECDHE-PSK-AES128-CBC-SHA256',
].join(':');

/** The PSK identity hint a TLS 1.2 client would see (TLS 1.3 has none; harmless either way). */
const IDENTITY_HINT = 'snapferry-nbd';

/** Identities longer than this are not access key ids (the TLS limit is 2^16-1 bytes). */
const MAX_IDENTITY_LENGTH = 256;

export class TlsHandshakeError extends Error {
  override name = 'TlsHandshakeError';
  constructor(
    message: string,
    /** The identity the client offered, if it got that far (an access key id, not a secret). */
    readonly identity: string | null,
  ) {
    super(message);
  }
}

export interface TlsSession {
  socket: tls.TLSSocket;
  identity: string;
  accountId: string;
  protocol: string | null;
  cipher: string;
}

/** Per-server state of the PSK handshake: the decoy secret and the key lookup. */
export class PskAuthenticator {
  private readonly decoySecret = randomBytes(32);

  constructor(private readonly keyFor: (identity: string) => NbdPskEntry | null) {}

  /**
   * Wraps `raw` (on which nothing else may read any more) in a server-side TLS socket and runs the
   * handshake. Resolves once the client proved a known identity's key; rejects (and destroys the
   * socket) otherwise. `onError` receives the TLS socket's later errors (it must always have a
   * listener: an unhandled 'error' would take the process down).
   */
  upgrade(raw: Socket, onError: (err: Error) => void): Promise<TlsSession> {
    let offered: string | null = null;
    let authenticated: { identity: string; accountId: string } | null = null;
    let conflicting = false;
    // @types/node's TLSSocketOptions omit the server-side PSK options that TLSSocket honours.
    const options = {
      isServer: true,
      minVersion: 'TLSv1.2',
      ciphers: CIPHERS,
      pskIdentityHint: IDENTITY_HINT,
      pskCallback: (_socket: tls.TLSSocket, identity: string) => {
        // Called once per ClientHello (twice after a HelloRetryRequest): it must be the same identity.
        if (offered !== null && offered !== identity) conflicting = true;
        offered = identity;
        let entry: NbdPskEntry | null = null;
        if (identity.length > 0 && identity.length <= MAX_IDENTITY_LENGTH) {
          try {
            entry = this.keyFor(identity);
          } catch {
            entry = null;
          }
        }
        authenticated = entry ? { identity, accountId: entry.accountId } : null;
        return entry ? entry.key : this.decoyKey(identity);
      },
    };
    const socket = new tls.TLSSocket(raw, options as tls.TLSSocketOptions);
    return new Promise<TlsSession>((resolve, reject) => {
      let settled = false;
      const fail = (message: string): void => {
        if (settled) return;
        settled = true;
        socket.destroy();
        reject(new TlsHandshakeError(message, offered));
      };
      // One listener for the socket's whole life: before 'secure' an error fails the handshake,
      // after it the caller hears of it. An 'error' without a listener would end the process.
      socket.on('error', (err: Error) => {
        if (settled) onError(err);
        else fail(`TLS handshake failed: ${err.message.split('\n')[0]}`);
      });
      // The TCP socket allows half-open connections (NBD_CMD_DISC needs them), so a client that
      // sends FIN mid-handshake closes nothing by itself: without this it would hold the connection
      // until the handshake deadline.
      socket.once('end', () => fail('connection closed during the TLS handshake'));
      socket.once('close', () => fail('connection closed during the TLS handshake'));
      socket.once('secure', () => {
        // Only an identity whose key this handshake proved authenticates the connection. (An
        // external PSK is a "resumption" to OpenSSL, so isSessionReused() says nothing here.) A
        // session ticket cannot stand in for the key: OpenSSL tries a ticket only for an identity
        // pskCallback did not answer (it answers every identity up to 256 bytes), a ticket
        // decrypts only in the context that issued it (one per connection, with a random key),
        // and a handshake that never ran pskCallback leaves `authenticated` unset: refused.
        const who = authenticated as { identity: string; accountId: string } | null;
        if (!who || conflicting) {
          fail('TLS handshake ended without a verified pre-shared key');
          return;
        }
        settled = true;
        const cipher = socket.getCipher();
        resolve({ socket, identity: who.identity, accountId: who.accountId, protocol: socket.getProtocol(), cipher: cipher.standardName ?? cipher.name });
      });
    });
  }

  private decoyKey(identity: string): Buffer {
    return createHmac('sha256', this.decoySecret).update(identity).digest();
  }
}
