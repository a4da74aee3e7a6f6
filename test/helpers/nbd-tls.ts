/**
 * TLS-PSK helpers for the NBD tests: the key lookup a server gets (as main.ts builds it from the
 * accounts), PSK files for GnuTLS clients, and the URIs / QEMU options that use them.
 */
import { chmod, mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { nbdPskKey, type NbdPskEntry } from '../../src/blockdev/nbd/index.ts';

export interface PskAccount {
  accountId: string;
  accessKeyId: string;
  secretAccessKey: string;
}

/** keyFor of NbdTlsOptions over a list of accounts: identity = access key id. */
export function keysOf(accounts: PskAccount[]): (identity: string) => NbdPskEntry | null {
  const byKey = new Map(accounts.map((a) => [a.accessKeyId, a]));
  return (identity) => {
    const a = byKey.get(identity);
    return a ? { accountId: a.accountId, key: nbdPskKey(a.secretAccessKey) } : null;
  };
}

/** Writes a psktool-format file (mode 0600) holding `line` and returns its path. */
export async function writePskFile(file: string, line: string): Promise<string> {
  await mkdir(path.dirname(file), { recursive: true });
  await writeFile(file, line.endsWith('\n') ? line : `${line}\n`, { mode: 0o600 });
  await chmod(file, 0o600);
  return file;
}

/** libnbd's URI for a TLS-PSK connection (nbdinfo, nbdcopy). */
export function nbdsUri(identity: string, port: number, exportName: string, pskFile: string): string {
  return `nbds://${encodeURIComponent(identity)}@127.0.0.1:${port}/${exportName}?tls-psk-file=${pskFile}`;
}

/** QEMU's `--object` for PSK credentials: `dir` must hold `keys.psk`. */
export function qemuPskObject(dir: string, identity: string, extra = ''): string {
  return `tls-creds-psk,id=tls0,endpoint=client,dir=${dir},username=${identity}${extra}`;
}

/** QEMU's `--image-opts` for an NBD export over those credentials. */
export function qemuNbdOpts(port: number, exportName: string): string {
  return `driver=nbd,host=127.0.0.1,port=${port},export=${exportName},tls-creds=tls0`;
}
