// A script's packages, read without a DOM: what changed in the dependencies and the lock between two versions,
// and how far a run's environment has got, from the `system` lines the agent writes to the run's log.

import { duration } from './dom.js';

/** A locked package's identity: with `--universal` one name may be pinned once per environment marker. */
const packageKey = (pkg) => `${pkg.name}\u0000${pkg.marker || ''}`;
const byName = (a, b) => a.name.localeCompare(b.name) || (a.marker || '').localeCompare(b.marker || '');

/**
 * What changed from `older` to `newer` (versions as the API returns them): requirements added and removed,
 * `requires-python` (`{from, to}` or null), and locked packages added, removed and changed (`{name, marker,
 * from, to}`, where a change is a new version or, with the same version, new hashes). `unchanged` is true when
 * nothing did.
 */
export function packageChanges(older, newer) {
  const requirements = {
    added: newer.dependencies.filter((d) => !older.dependencies.includes(d)),
    removed: older.dependencies.filter((d) => !newer.dependencies.includes(d)),
  };
  const from = older.requires_python || null;
  const to = newer.requires_python || null;
  const requiresPython = from === to ? null : { from, to };
  const before = new Map(older.locked_packages.map((p) => [packageKey(p), p]));
  const after = new Map(newer.locked_packages.map((p) => [packageKey(p), p]));
  const packages = {
    added: newer.locked_packages.filter((p) => !before.has(packageKey(p))).sort(byName),
    removed: older.locked_packages.filter((p) => !after.has(packageKey(p))).sort(byName),
    changed: newer.locked_packages
      .filter((p) => {
        const old = before.get(packageKey(p));
        return old && (old.version !== p.version || old.hashes.join() !== p.hashes.join());
      })
      .map((p) => ({ name: p.name, marker: p.marker, from: before.get(packageKey(p)), to: p }))
      .sort(byName),
  };
  const unchanged = requirements.added.length + requirements.removed.length + packages.added.length
    + packages.removed.length + packages.changed.length === 0 && requiresPython === null;
  return { requirements, requiresPython, packages, unchanged };
}

const PREPARING = 'preparing environment';
const READY = /^environment ready \((\d+) ms, (cached|built)\)$/;

/**
 * Follows a run's log chunks and tells where its environment is: null before the agent says anything about
 * one (a run without dependencies), `{phase: 'preparing'}` after `preparing environment`, and
 * `{phase: 'ready', ms}` after `environment ready (N ms, cached|built)`, with 0 ms when it was cached (as
 * `environment_ms` says). uv's own lines in between change nothing; a line split across chunks is read once
 * it is whole.
 */
export function environmentTracker() {
  let partial = '';
  let state = null;
  return {
    get state() {
      return state;
    },
    /** Reads one chunk; returns true when the state changed. */
    feed(chunk) {
      if (chunk.stream !== 'system') return false;
      const lines = (partial + chunk.data).split('\n');
      partial = lines.pop();
      const previous = state;
      for (const line of lines) {
        const ready = READY.exec(line.trim());
        if (line.trim() === PREPARING) state = { phase: 'preparing' };
        else if (ready) state = { phase: 'ready', ms: ready[2] === 'cached' ? 0 : Number(ready[1]) };
      }
      return state !== previous;
    },
  };
}

/** How an environment was prepared, in words: "cached" (it took 0 ms), or "built in 812 ms". */
export function environmentSummary(ms) {
  return ms === 0 ? 'cached' : `built in ${duration(ms)}`;
}
