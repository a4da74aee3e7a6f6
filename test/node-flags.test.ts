/**
 * The V8 flags `snapferry serve` runs with (src/cli/node-flags.ts) are given in every place that
 * starts a server, since V8 takes them only at process start: the `npm start` script, the bin's
 * shebang (`npx snapferry`, `./bin/snapferry.js`). A server started without them says so on stderr
 * (test/npm-start.test.ts checks the real `npm start` process's command line).
 *
 * The bin also sizes libuv's thread pool (UV_THREADPOOL_SIZE, 8 unless the operator set it): the
 * pool reads it once, when it starts, so only an entry that runs before any asynchronous file call
 * can set it (bin/snapferry.js says why it is CommonJS for that).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { missingServeFlags, SERVE_NODE_FLAGS } from '../src/cli/node-flags.ts';
import { spawnServer } from './helpers/spawned-server.ts';

const ROOT = new URL('..', import.meta.url);

test('npm start and the bin\'s shebang carry exactly the serve flags', () => {
  const start = JSON.parse(readFileSync(new URL('package.json', ROOT), 'utf8')).scripts.start as string;
  assert.equal(start, `exec node ${SERVE_NODE_FLAGS.join(' ')} bin/snapferry.js serve`);
  const shebang = readFileSync(new URL('bin/snapferry.js', ROOT), 'utf8').split('\n')[0];
  assert.equal(shebang, `#!/usr/bin/env -S node ${SERVE_NODE_FLAGS.join(' ')}`);
});

test('a flag counts as given on the command line or in NODE_OPTIONS, and only exactly', () => {
  const [flag] = SERVE_NODE_FLAGS;
  assert.deepEqual(missingServeFlags([], ''), [...SERVE_NODE_FLAGS]);
  assert.deepEqual(missingServeFlags([flag!], ''), []);
  assert.deepEqual(missingServeFlags(['--import', 'tsx'], `--trace-warnings  ${flag}`), []);
  assert.deepEqual(missingServeFlags(['--max-semi-space-size=16'], ''), [...SERVE_NODE_FLAGS], 'another value is not the flag');
});

test('a server started through the bin runs 8 thread-pool threads, or as many as UV_THREADPOOL_SIZE says', async () => {
  // Threads of the server process once it serves: the same in each but for the pool's (libuv starts
  // all of its threads at its first use, which startup's file calls are).
  const threadsOf = async (env: Record<string, string>): Promise<number> => {
    const server = await spawnServer({ regions: ['bj'], env });
    try {
      return readdirSync(`/proc/${server.child.pid}/task`).length;
    } finally {
      await server.dispose();
    }
  };
  const unset = await threadsOf({ UV_THREADPOOL_SIZE: '' }); // empty counts as unset
  const four = await threadsOf({ UV_THREADPOOL_SIZE: '4' });
  const six = await threadsOf({ UV_THREADPOOL_SIZE: '6' });
  assert.equal(six - four, 2, 'the operator\'s size is the one the pool starts with');
  assert.equal(unset - four, 4, 'without one, the pool has 8 threads');
});
