// The minified bundle stays small enough for a mini-program package (2 MB in all): under 30 KB.
// `npm run build` (or `cargo xtask test`) makes it.

import test from 'node:test';
import assert from 'node:assert/strict';
import { statSync } from 'node:fs';

const LIMIT = 30 * 1024;

test('the minified SDK is under 30 KB', () => {
  const size = statSync(new URL('../dist/liaotian-client.min.js', import.meta.url)).size;
  assert.ok(size > 10 * 1024, `${size} bytes: not the whole SDK?`);
  assert.ok(size < LIMIT, `${size} bytes, limit ${LIMIT}`);
});

test('the CommonJS build loads with require() and exports the client', async () => {
  const { createRequire } = await import('node:module');
  const sdk = createRequire(import.meta.url)('../dist/index.js');
  for (const name of ['Client', 'Auth', 'webTransport', 'wxTransport', 'wxStorage', 'attachWx']) {
    assert.equal(typeof sdk[name], 'function', name);
  }
});
