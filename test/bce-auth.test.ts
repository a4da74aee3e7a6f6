import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import {
  canonicalRequest, computeSignature, parseAuthorization, sign, signingKey, parseRawQuery,
  uriEncode, parseTimestamp, signaturesEqual, AuthHeaderParseError, type QueryPairs,
} from '../src/lib/bce-auth.ts';

interface Vector {
  name: string; accessKeyId: string; secretAccessKey: string; timestamp: string; expirationSeconds: number;
  method: string; path: string; query: Record<string, string | null>; headers: Record<string, string>;
  signedHeaders: string[] | null; canonicalRequest?: string; signingKey?: string; authorization: string; alsoValid?: string[];
}
// The steering repo's shared/ sits beside the project in CI and on developer machines; the fixture
// is a copy for a checkout without it. When both exist they must agree.
const shared = new URL('../../shared/bce-auth-v1-vectors.json', import.meta.url);
const fixture = new URL('./fixtures/bce-auth-v1-vectors.json', import.meta.url);
const vectorText = readFileSync(existsSync(shared) ? shared : fixture, 'utf8');
const vectors: Vector[] = JSON.parse(vectorText).vectors;

test('the fixture copy of the vectors matches shared/ when shared/ is there', () => {
  assert.deepEqual(JSON.parse(readFileSync(fixture, 'utf8')), JSON.parse(vectorText));
});

for (const v of vectors) {
  const query: QueryPairs = Object.entries(v.query);
  const base = { ...v, query };

  test(`vector ${v.name}: signing reproduces the SDK's Authorization`, () => {
    assert.equal(sign(base), v.authorization);
    if (v.canonicalRequest) assert.equal(canonicalRequest(base), v.canonicalRequest);
    if (v.signingKey) {
      assert.equal(signingKey(v.secretAccessKey, `bce-auth-v1/${v.accessKeyId}/${v.timestamp}/${v.expirationSeconds}`), v.signingKey);
    }
  });

  for (const header of [v.authorization, ...(v.alsoValid ?? [])]) {
    test(`vector ${v.name}: verifying ${header.includes('//') ? 'empty signed-headers field' : 'explicit signed headers'}`, () => {
      const parsed = parseAuthorization(header);
      const expected = computeSignature({ ...base, signedHeaders: parsed.signedHeaders, timestamp: parsed.timestamp, expirationSeconds: parsed.expirationSeconds });
      assert.ok(signaturesEqual(expected, parsed.signature));
      const wrong = computeSignature({ ...base, secretAccessKey: v.secretAccessKey + 'x', signedHeaders: parsed.signedHeaders });
      assert.ok(!signaturesEqual(wrong, parsed.signature));
    });
  }
}

test('uriEncode keeps unreserved characters and encodes the rest as upper-case UTF-8 bytes', () => {
  assert.equal(uriEncode('a-Z_0.~'), 'a-Z_0.~');
  assert.equal(uriEncode('a b/c'), 'a%20b%2Fc');
  assert.equal(uriEncode('/v2/a b', true), '/v2/a%20b');
  assert.equal(uriEncode('快'), '%E5%BF%AB');
});

/** RFC 3986 by the definition, byte by byte: what uriEncode's fast paths must agree with. */
function referenceUriEncode(value: string, keepSlash: boolean): string {
  let out = '';
  for (const byte of Buffer.from(value, 'utf8')) {
    const ch = String.fromCharCode(byte);
    if (/[A-Za-z0-9\-_.~]/.test(ch) || (keepSlash && ch === '/')) out += ch;
    else out += '%' + byte.toString(16).toUpperCase().padStart(2, '0');
  }
  return out;
}

test('uriEncode agrees with byte-by-byte RFC 3986 on every kind of character, lone surrogates included', () => {
  const alphabet = ['a', 'Z', '0', '-', '_', '.', '~', '/', ' ', '!', "'", '(', ')', '*', '%', ':', '+', '=', '&', '?', '#', '\u00e9', '\u5feb', '\ud83d\ude00', '\ud800', '\udfff', '\u0000', '\u007f'];
  let seed = 7;
  const next = (): number => (seed = (seed * 1103515245 + 12345) & 0x7fffffff);
  for (let i = 0; i < 3000; i++) {
    let s = '';
    for (let n = next() % 12; n > 0; n--) s += alphabet[next() % alphabet.length];
    for (const keepSlash of [false, true]) assert.equal(uriEncode(s, keepSlash), referenceUriEncode(s, keepSlash), JSON.stringify(s));
  }
});

test('bare query flags sign like an empty value: ?rollback and ?rollback= are the same request', () => {
  const a = parseRawQuery('rollback');
  const b = parseRawQuery('rollback=');
  const req = (q: QueryPairs) => canonicalRequest({ method: 'PUT', path: '/v2/volume/v-1', query: q, headers: { host: 'h' }, signedHeaders: ['host'] });
  assert.equal(req(a), req(b));
  assert.deepEqual(parseRawQuery('a=1&b=%20x+&&c'), [['a', '1'], ['b', ' x+'], ['c', null]]);
  assert.throws(() => parseRawQuery('a=%zz'), URIError);
});

test('parseAuthorization rejects malformed headers', () => {
  for (const bad of [
    'garbage', 'bce-auth-v2/ak/2021-12-03T06:42:19Z/1800//' + 'a'.repeat(64),
    'bce-auth-v1/ak/2021-12-03 06:42:19/1800//' + 'a'.repeat(64),
    'bce-auth-v1/ak/2021-02-31T06:42:19Z/1800//' + 'a'.repeat(64),
    'bce-auth-v1/ak/2021-12-03T06:42:19Z/-1//' + 'a'.repeat(64),
    'bce-auth-v1/ak/2021-12-03T06:42:19Z/1800//short',
    'bce-auth-v1//2021-12-03T06:42:19Z/1800//' + 'a'.repeat(64),
  ]) {
    assert.throws(() => parseAuthorization(bad), AuthHeaderParseError, bad);
  }
  assert.equal(parseTimestamp('2021-12-03T06:42:19Z'), Date.UTC(2021, 11, 3, 6, 42, 19));
});
