// The dashboard's line diff, checked without a browser: it has no DOM dependency.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { diffLines } from '../../web/assets/js/diff.js';

const render = (lines) => lines.map((l) => `${l.op}${l.text}`).join('\n');

test('identical texts are all context', () => {
  assert.ok(diffLines('a\nb', 'a\nb').every((l) => l.op === ' '));
});

test('a changed line in the middle is one removal and one addition, with line numbers', () => {
  const lines = diffLines('a\nb\nc', 'a\nB\nc');
  assert.equal(render(lines), ' a\n-b\n+B\n c');
  assert.deepEqual(lines.map((l) => [l.a, l.b]), [[1, 1], [2, null], [null, 2], [3, 3]]);
});

test('insertions and deletions keep the longest common subsequence', () => {
  assert.equal(render(diffLines('x\na\nb\nc\ny', 'x\nb\nc\nd\ny')), ' x\n-a\n b\n c\n+d\n y');
});

test('everything replaced', () => {
  assert.equal(render(diffLines('a', 'b')), '-a\n+b');
});
