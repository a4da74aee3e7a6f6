/**
 * An account's NBD pre-shared key, derived from its secret: HMAC-SHA256(secretAccessKey,
 * "snapferry-nbd-psk-v1"), 32 bytes. The server (blockdev/nbd/tls.ts) and `snapferry nbd-psk`
 * (cli/) both derive it here, so nothing new is stored and rotating the secret rotates the key.
 */
import { createHmac } from 'node:crypto';

/** Label of the key derivation; a new scheme gets a new label, never a changed meaning. */
export const NBD_PSK_LABEL = 'snapferry-nbd-psk-v1';

export function nbdPskKey(secretAccessKey: string): Buffer {
  return createHmac('sha256', secretAccessKey).update(NBD_PSK_LABEL).digest();
}

/** A line of a psktool-format key file (what GnuTLS clients read): `identity:hexkey`. */
export function pskFileLine(accessKeyId: string, secretAccessKey: string): string {
  return `${accessKeyId}:${nbdPskKey(secretAccessKey).toString('hex')}`;
}
