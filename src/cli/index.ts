/** The `snapferry` command line: `serve`, and client commands that talk to one region. */
import { Command } from 'commander';
import { adminCommands } from './admin-commands.ts';
import { nbdPskCommand } from './nbd-psk-command.ts';
import { serveCommand } from './serve-command.ts';
import { snapshotCommands } from './snapshot-commands.ts';
import { volumeCommands } from './volume-commands.ts';

const program = new Command();
program.name('snapferry').description('Block-storage snapshots with a BCC-compatible API and cross-region replication');

program
  .command('serve')
  .description('run the service: one HTTP API (and NBD server) per region')
  .option('--data-dir <dir>', 'where metadata, chunks and disks live', undefined)
  .option('--regions <list>', 'regions to serve, comma-separated (default bj,gz,hkg)')
  .option('--host <host>', 'address to listen on (default 127.0.0.1)')
  .option('--port <port>', 'HTTP port of the first region; the i-th region uses port+i (default 8801)')
  .option('--nbd-port <port>', 'NBD port of the first region; the i-th uses nbd-port+i (default 10809)')
  .option('--nbd-tls <mode>', 'NBD TLS with a pre-shared key per account: require, on or off (default require; on when --host is loopback)')
  .option('--peer <region=url>', 'a region served by another process, e.g. hkg=http://10.0.0.3:8803 (repeatable)', (v: string, prev: string[]) => [...prev, v], [] as string[])
  .option('--config <file>', 'JSON config file (accounts, peers, limits, where each region keeps metadata and chunks)')
  .option('--role <list>', 'what this process does: a comma list of api, storage, worker (default all three)')
  .option('--advertise-url <url>', 'how the other processes of the region reach this one (default http://host:port)')
  .action((opts) => serveCommand(opts));

/** Options every client command takes. */
const common = (c: Command): Command =>
  c
    .option('--endpoint <url>', 'the region to talk to (env SNAPFERRY_ENDPOINT, default http://127.0.0.1:8801)')
    .option('--json', 'print machine-readable JSON');

volumeCommands(program, common);
snapshotCommands(program, common);
adminCommands(program);
nbdPskCommand(program);

await program.parseAsync(process.argv);
