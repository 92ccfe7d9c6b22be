// The package as its users import it: by name, through package.json's
// "exports" (Node resolves a package's own name from inside it).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import * as byPath from '../imclient.js';

test('"imclient" resolves to imclient.js', async () => {
  const byName = await import('imclient');
  assert.equal(byName.IMClient, byPath.IMClient);
  assert.equal(byName.CloseCodes, byPath.CloseCodes);
  assert.deepEqual(Object.keys(byName).sort(), ['CloseCodes', 'IMClient']);
});

test('the types declare every runtime export', async () => {
  const dts = await readFile(new URL('../imclient.d.ts', import.meta.url), 'utf8');
  for (const name of Object.keys(byPath)) {
    assert.match(dts, new RegExp(`export declare (const|class) ${name}\\b`), `${name} has no declaration`);
  }
});
