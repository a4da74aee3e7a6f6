/**
 * The V8 flags `snapferry serve` runs with (src/cli/node-flags.ts) are given in every place that
 * starts a server, since V8 takes them only at process start: the `npm start` script, the bin's
 * shebang (`npx snapferry`, `./bin/snapferry.js`). A server started without them says so on stderr
 * (test/npm-start.test.ts checks the real `npm start` process's command line).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { missingServeFlags, SERVE_NODE_FLAGS } from '../src/cli/node-flags.ts';

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
