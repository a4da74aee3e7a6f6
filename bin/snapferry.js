#!/usr/bin/env -S node --max-semi-space-size=8
// Entry point for `npx snapferry` and `npm start`. The source is TypeScript run through tsx's
// loader, so there is no build step to forget: what is in src/ is what runs. The shebang's V8 flags
// are src/cli/node-flags.ts's (V8 takes them only at start).
//
// CommonJS (bin/package.json), not an ES module, for one reason: libuv sizes its thread pool from
// UV_THREADPOOL_SIZE when the pool first runs, and an ES module entry is itself read through that
// pool, before any line of it runs. A CommonJS entry is read synchronously, so the size set here
// is the one the pool starts with. Node's default of 4 threads is too few for a capture, whose
// direct reads, chunk-file writes and batch fsyncs each hold a thread for the whole device call:
// a 1 GiB snapshot took 1.09 s (median of 10) with 4 threads, 1.02 s with 8 or 16, and copies were
// no slower with 8 (docs/benchmarks.md, "2026-12-04, later").
// An operator's own UV_THREADPOOL_SIZE wins (an empty one counts as unset: libuv would read it as 1).
'use strict';
process.env.UV_THREADPOOL_SIZE ||= '8';
import('tsx/esm/api')
  .then(({ register }) => {
    register();
    return import('../src/cli/index.ts');
  })
  .catch((err) => {
    console.error(err);
    process.exitCode = 1;
  });
