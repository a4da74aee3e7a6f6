/**
 * `snapferry nbd-psk`: the caller's NBD pre-shared key, as a line of a psktool-format key file
 * (`ACCESS_KEY_ID:hexkey`), the file GnuTLS clients read: libnbd's `tls-psk-file=` (nbdinfo,
 * nbdcopy, nbdfuse), QEMU's `tls-creds-psk` (a file named `keys.psk` in its `dir=`).
 *
 * The key is HMAC-SHA256(secretAccessKey, "snapferry-nbd-psk-v1") (lib/nbd-psk.ts, which the server
 * uses too). Nothing is asked of the server: the key follows from the secret alone.
 */
import { closeSync, fchmodSync, openSync, writeSync } from 'node:fs';
import type { Command } from 'commander';
import { pskFileLine } from '../lib/nbd-psk.ts';
import { UsageError } from './client-context.ts';


interface NbdPskFlags {
  output?: string;
}

function run(flags: NbdPskFlags): void {
  try {
    const accessKeyId = process.env.SNAPFERRY_ACCESS_KEY_ID;
    const secretAccessKey = process.env.SNAPFERRY_SECRET_ACCESS_KEY;
    if (!accessKeyId || !secretAccessKey) throw new UsageError('set SNAPFERRY_ACCESS_KEY_ID and SNAPFERRY_SECRET_ACCESS_KEY (the keys of the account whose disks you will open)');
    // psktool's format separates the identity from the key with the first ':'.
    if (accessKeyId.includes(':') || /[\r\n]/.test(accessKeyId)) throw new UsageError('this access key id cannot be written in a PSK file (it contains ":" or a line break)');
    const line = pskFileLine(accessKeyId, secretAccessKey) + '\n';
    if (flags.output === undefined) {
      process.stdout.write(line);
      return;
    }
    // The file is as good as the key: readable by its owner only, whatever the umask.
    const fd = openSync(flags.output, 'w', 0o600);
    try {
      fchmodSync(fd, 0o600);
      writeSync(fd, line);
    } finally {
      closeSync(fd);
    }
  } catch (e) {
    process.stderr.write(`error: ${(e as Error).message}\n`);
    process.exitCode = e instanceof UsageError ? 2 : 1;
  }
}

export function nbdPskCommand(program: Command): void {
  program
    .command('nbd-psk')
    .description('print the NBD TLS pre-shared key of your keys as a psktool line (ACCESS_KEY_ID:hexkey), for nbdinfo/nbdcopy (tls-psk-file=) and qemu (tls-creds-psk)')
    .option('-o, --output <file>', 'write the line to this file (mode 0600) instead of stdout')
    .action((o: NbdPskFlags) => run(o));
}
