/**
 * The V8 flags `snapferry serve` is meant to run with. V8 sizes its heap when the process starts
 * (v8.setFlagsFromString afterwards leaves the young generation as it was), so they are given on the
 * command line: by `npm start` (package.json), by `bin/snapferry.js`'s shebang (`npx snapferry`,
 * `./bin/snapferry.js`), and by the test and bench helpers that spawn servers. test/node-flags.test.ts
 * keeps those places equal to this list.
 *
 * `--max-semi-space-size=8`: the young generation's two semi-spaces at most 8 MiB each, instead of
 * Node 20's 16 on 64-bit. A copy allocates little on the JavaScript heap (its bytes live in pooled
 * buffers outside it), but a full young generation is still 32 MiB of resident memory per isolate
 * (the event loop's, and the hash and upload threads'). Measured on the 2-core VM, the replication
 * bench's 1 GiB copy (docs/benchmarks.md): peak RSS 286, 287, 298 MiB with V8's default, 252, 254,
 * 271 with 8 MiB (240, 271 with 4 MiB), copy times the same within the run-to-run spread.
 */
export const SERVE_NODE_FLAGS: readonly string[] = ['--max-semi-space-size=8'];

/** The flags of SERVE_NODE_FLAGS this process was started without (command line or NODE_OPTIONS). */
export function missingServeFlags(execArgv: readonly string[] = process.execArgv, nodeOptions = process.env.NODE_OPTIONS ?? ''): string[] {
  const given = new Set([...execArgv, ...nodeOptions.split(/\s+/).filter(Boolean)]);
  return SERVE_NODE_FLAGS.filter((f) => !given.has(f));
}
