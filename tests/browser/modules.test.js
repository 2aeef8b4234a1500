// The dashboard's module layout, checked without a browser: a page imports shared modules, never another page,
// so a page can change without breaking the others.

import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

const pages = path.join(path.dirname(fileURLToPath(import.meta.url)), '../../web/assets/js/pages');

test('no page imports from another page', () => {
  const files = readdirSync(pages).filter((name) => name.endsWith('.js'));
  assert.ok(files.length > 10, `the pages are in ${pages}`);
  for (const name of files) {
    const source = readFileSync(path.join(pages, name), 'utf8');
    const specifiers = [...source.matchAll(/\bfrom\s+'([^']+)'|\bimport\(\s*'([^']+)'\s*\)/g)].map((m) => m[1] || m[2]);
    assert.ok(specifiers.length > 0, `${name} imports something`);
    for (const specifier of specifiers) {
      assert.ok(specifier.startsWith('../'), `${name} imports ${specifier}, a page: move what they share to a shared module`);
    }
  }
});
