// The dashboard's reading of packages, checked without a browser: what changed between two versions'
// dependencies and locks, and a run's environment state from its log's system lines.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { environmentTracker, environmentSummary, packageChanges } from '../../web/assets/js/packages.js';

const pkg = (name, version, hashes = [`sha256:${name}${version}`], marker = null) => ({ name, version, marker, hashes });
const version = (dependencies, locked, requiresPython = null) => ({ dependencies, requires_python: requiresPython, locked_packages: locked });

test('identical packages are unchanged', () => {
  const v = version(['demo-pkg>=1'], [pkg('demo-pkg', '1.0.0')], '>=3.8');
  assert.equal(packageChanges(v, v).unchanged, true);
});

test('requirements, requires-python and locked packages added, removed and changed', () => {
  const older = version(['a>=1', 'b'], [pkg('a', '1.0'), pkg('b', '2.0'), pkg('c', '3.0')], '>=3.8');
  const newer = version(['a>=1', 'd'], [pkg('d', '0.1'), pkg('a', '1.1'), pkg('c', '3.0', ['sha256:other'])], '>=3.10');
  const changes = packageChanges(older, newer);
  assert.equal(changes.unchanged, false);
  assert.deepEqual(changes.requirements, { added: ['d'], removed: ['b'] });
  assert.deepEqual(changes.requiresPython, { from: '>=3.8', to: '>=3.10' });
  assert.deepEqual(changes.packages.added.map((p) => p.name), ['d']);
  assert.deepEqual(changes.packages.removed.map((p) => p.name), ['b']);
  assert.deepEqual(changes.packages.changed.map((c) => [c.name, c.from.version, c.to.version]), [['a', '1.0', '1.1'], ['c', '3.0', '3.0']]);
});

test('one name pinned per marker is two packages', () => {
  const older = version(['n'], [pkg('n', '1', undefined, "python_version < '3.10'"), pkg('n', '2', undefined, "python_version >= '3.10'")]);
  const newer = version(['n'], [pkg('n', '2', undefined, "python_version >= '3.10'")]);
  const changes = packageChanges(older, newer);
  assert.deepEqual(changes.packages.removed.map((p) => [p.version, p.marker]), [['1', "python_version < '3.10'"]]);
  assert.deepEqual(changes.packages.changed, []);
});

test('the environment is preparing until the agent says it is ready, whatever uv prints between', () => {
  const tracker = environmentTracker();
  assert.equal(tracker.feed({ stream: 'stdout', data: 'preparing environment\n' }), false);
  assert.equal(tracker.state, null);
  assert.equal(tracker.feed({ stream: 'system', data: 'preparing environment\n' }), true);
  assert.deepEqual(tracker.state, { phase: 'preparing' });
  assert.equal(tracker.feed({ stream: 'system', data: 'Installed 1 package in 3ms\n + demo-pkg==1.0.0\nenvironment rea' }), false);
  assert.deepEqual(tracker.state, { phase: 'preparing' });
  assert.equal(tracker.feed({ stream: 'system', data: 'dy (812 ms, built)\n' }), true);
  assert.deepEqual(tracker.state, { phase: 'ready', ms: 812 });
  assert.equal(environmentSummary(tracker.state.ms), 'built in 812 ms');
});

test('a cached environment reads as cached', () => {
  const tracker = environmentTracker();
  tracker.feed({ stream: 'system', data: 'preparing environment\nenvironment ready (0 ms, cached)\n' });
  assert.deepEqual(tracker.state, { phase: 'ready', ms: 0 });
  assert.equal(environmentSummary(0), 'cached');
});
