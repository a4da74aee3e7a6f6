import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { ERROR_CATALOG } from '../src/domain/errors.ts';

test('docs/api.md lists exactly the error catalog, with the same statuses and messages', () => {
  const doc = readFileSync(new URL('../docs/api.md', import.meta.url), 'utf8');
  const section = doc.slice(doc.indexOf('## Error catalog'));
  const rows = [...section.matchAll(/^\| `([^`]+)` \| (\d{3}) \| (.+) \|$/gm)].map((m) => [m[1], Number(m[2]), m[3]]);
  const catalog = Object.entries(ERROR_CATALOG).map(([code, e]) => [code, e.status, e.message]);
  assert.deepEqual(rows, catalog);
});

test('every status in the catalog is an error status; only integrity, internal and unavailable-service errors are 5xx', () => {
  for (const [code, e] of Object.entries(ERROR_CATALOG)) {
    assert.ok(e.status >= 400 && e.status < 600, code);
    // Bad input is never a 5xx. ServiceUnavailable is no answer about the input: a process the
    // request needs (a disk's storage process) is not running, or the server is shutting down.
    if (e.status >= 500) assert.ok(['IntegrityError', 'InternalError', 'ServiceUnavailable'].includes(code), `${code} must not be a 5xx`);
  }
});
