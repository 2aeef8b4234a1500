// One script: edit its source (a save appends a version; a syntax error is marked at its line), run it ad hoc,
// see its packages and update their lock, and compare any two of its versions, packages included.

import { api } from '../api.js';
import {
  h, mount, loading, failure, field, showFieldError, clearFieldErrors, busy, confirm, toast, time, pageHeader, empty, table,
} from '../dom.js';
import { createEditor } from '../editor.js';
import { diffLines } from '../diff.js';
import { packageChanges } from '../packages.js';
import { navigate } from '../router.js';

const STARTER = 'import sys\n\nprint("Hello from Automa", sys.argv[1:])\n';

export async function render(main, params, ctx) {
  const isNew = !params.id;
  mount(main, loading('Loading script'));
  let script = null;
  if (!isNew) {
    try {
      script = await api(`/scripts/${params.id}`);
    } catch (error) {
      mount(main, pageHeader('Script'), failure(error, () => render(main, params, ctx)));
      return undefined;
    }
  }
  const writable = ctx.can('operator');
  const name = h('input', { name: 'name', required: true, value: script ? script.name : '', readOnly: !writable, autocomplete: 'off' });
  const description = h('input', { name: 'description', value: script ? script.description : '', readOnly: !writable });
  const filename = h('input', { name: 'filename', value: script ? script.filename : 'main.py', readOnly: !writable, pattern: '.*\\.py' });
  const editor = createEditor({ value: script ? script.content : STARTER, label: 'Python source', readOnly: !writable });
  const save = h('button.button.primary', { type: 'submit' }, isNew ? 'Create script' : 'Save new version');
  const form = h('form.stack.script-form', { 'aria-label': 'Script' },
    h('p.form-error', { role: 'alert', tabindex: '-1', hidden: true }),
    h('div.row', field('Name', name), field('File name', filename, { hint: 'The file the script runs as.' })),
    field('Description', description), editor.root, writable ? h('div.actions', save) : null);

  form.addEventListener('submit', (event) => {
    event.preventDefault();
    clearFieldErrors(form);
    editor.clearError();
    const body = { name: name.value.trim(), description: description.value, filename: filename.value.trim(), content: editor.value };
    busy(save, async () => {
      try {
        const saved = isNew
          ? await api('/scripts', { method: 'POST', body })
          : await api(`/scripts/${script.id}`, { method: 'PUT', body });
        if (isNew) {
          toast(`Script ${saved.name} created.`, 'success');
          navigate(`/scripts/${saved.id}`);
        } else {
          toast(saved.version === script.version ? 'Saved (the source is unchanged).' : `Saved as version ${saved.version}.`, 'success');
          render(main, params, ctx);
        }
      } catch (error) {
        if (error.field === 'content') editor.showError(error.detail);
        else showFieldError(form, error);
      }
    });
  });

  const actions = [];
  if (!isNew && writable) {
    const run = h('button.button', { type: 'button' }, 'Run now');
    run.addEventListener('click', () => busy(run, async () => {
      try {
        const started = await api('/execute', { method: 'POST', body: { script_id: script.id } });
        navigate(`/runs/${started.id}`);
      } catch (error) {
        toast(error.detail || error.message, 'error');
      }
    }));
    const remove = h('button.button.danger', { type: 'button' }, 'Delete');
    remove.addEventListener('click', async () => {
      if (!(await confirm(`Delete the script “${script.name}” and all its versions? This cannot be undone.`, { action: 'Delete script' }))) return;
      try {
        await api(`/scripts/${script.id}`, { method: 'DELETE' });
        toast('Script deleted.', 'success');
        navigate('/scripts');
      } catch (error) {
        toast(error.detail || error.message, 'error');
      }
    });
    actions.push(run, remove);
  }

  const title = isNew ? 'New script' : script.name;
  const meta = script
    ? h('p.meta', `Version ${script.version} · `, h('code', script.sha256.slice(0, 12)), ' · updated ', time(script.updated_at))
    : null;
  const packages = script ? dependencies(script, writable, () => render(main, params, ctx)) : null;
  const versions = script ? h('section.panel', { 'aria-labelledby': 'versions-title' },
    h('div.panel-head', h('h2', { id: 'versions-title' }, 'Versions')), h('div.panel-body', loading())) : null;
  mount(main, h('p.crumbs', h('a', { href: '#/scripts' }, 'Scripts'), ' / ', title), pageHeader(title, actions), meta, form, packages, versions);
  if (isNew) name.focus();
  if (versions) renderVersions(versions.querySelector('.panel-body'), script);
  return undefined;
}

/** A locked package's first hash, short; every hash in full on hover. */
function shortHash(hashes) {
  if (hashes.length === 0) return h('span.muted', '—');
  const [first] = hashes;
  const hex = first.slice(first.indexOf(':') + 1);
  return h('code.hash', { title: hashes.join('\n') }, hex.slice(0, 12), hashes.length > 1 ? ` +${hashes.length - 1}` : null);
}

/**
 * The current version's packages: `requires-python`, the requirements and what they are locked to. "Update
 * lock" resolves them again; a new lock is a new version (the page reloads to show it), the same lock is
 * reported, and a refusal (no dependencies any more, a save in between) is shown here.
 */
function dependencies(script, writable, reload) {
  const outcome = h('p.lock-outcome', { role: 'status', hidden: true });
  const hasDependencies = script.dependencies.length > 0;
  let update = null;
  if (writable && hasDependencies) {
    update = h('button.button.small', { type: 'button' }, 'Update lock');
    update.addEventListener('click', () => busy(update, async () => {
      outcome.hidden = true;
      outcome.classList.remove('error');
      try {
        const locked = await api(`/scripts/${script.id}/lock`, { method: 'POST' });
        if (locked.version === script.version) {
          outcome.textContent = `The lock is up to date: version ${locked.version} is unchanged.`;
          outcome.hidden = false;
        } else {
          toast(`Lock updated: saved as version ${locked.version}.`, 'success');
          reload();
        }
      } catch (error) {
        outcome.textContent = error.detail || error.message;
        outcome.classList.add('error');
        outcome.hidden = false;
      }
    }));
  }
  const item = (label, value) => h('div', h('dt', label), h('dd', value));
  const body = hasDependencies
    ? [
      h('dl.facts.compact',
        item('Requires Python', script.requires_python ? h('code', script.requires_python) : 'any'),
        item('Requirements', h('ul.requirements', script.dependencies.map((d) => h('li', h('code', d)))))),
      table(['Package', 'Version', 'Marker', 'Hash'], script.locked_packages.map((p) => h('tr', { dataset: { package: p.name } },
        h('td', p.name), h('td', h('code', p.version)), h('td', p.marker ? h('code', p.marker) : '—'), h('td', shortHash(p.hashes)))),
      { caption: 'Locked packages' }),
    ]
    : [empty('No dependencies: the script uses the standard library only. A “# /// script” block with '
      + '“dependencies = [...]” adds packages, locked when the script is saved.'),
    script.requires_python ? h('p', 'Requires Python ', h('code', script.requires_python)) : null];
  return h('section.panel.dependencies', { 'aria-labelledby': 'dependencies-title' },
    h('div.panel-head', h('h2', { id: 'dependencies-title' }, 'Dependencies'), update),
    h('div.panel-body', outcome, body));
}

async function renderVersions(body, script) {
  let page;
  try {
    page = await api(`/scripts/${script.id}/versions`, { query: { limit: 500 } });
  } catch (error) {
    mount(body, failure(error, () => renderVersions(body, script)));
    return;
  }
  const list = page.items;
  if (list.length < 2) {
    mount(body, empty('Only one version so far. Save a change to compare versions.'));
    return;
  }
  const option = (v) => h('option', { value: String(v.version) }, `v${v.version} — ${new Date(v.created_at).toLocaleString()}`);
  const from = h('select', { name: 'from' }, list.map(option));
  const to = h('select', { name: 'to' }, list.map(option));
  from.value = String(list[1].version);
  to.value = String(list[0].version);
  const output = h('div.diff-wrap');
  const byVersion = new Map(list.map((v) => [String(v.version), v]));
  const show = () => mount(output, diffView(byVersion.get(from.value), byVersion.get(to.value)));
  from.addEventListener('change', show);
  to.addEventListener('change', show);
  mount(body, h('div.row.diff-controls', field('From', from), field('To', to)), output);
  show();
}

function diffView(older, newer) {
  const lines = diffLines(older.content, newer.content);
  const added = lines.filter((l) => l.op === '+').length;
  const removed = lines.filter((l) => l.op === '-').length;
  const packages = packageChanges(older, newer);
  if (added === 0 && removed === 0 && packages.unchanged) return empty('These versions are identical.');
  const source = added === 0 && removed === 0
    ? h('p.diff-summary', `The source is the same in v${older.version} and v${newer.version}.`)
    : [h('p.diff-summary', h('span.added', `+${added}`), ' ', h('span.removed', `−${removed}`),
      ` lines from v${older.version} to v${newer.version}`),
    h('pre.diff', { tabindex: '0', 'aria-label': `Changes from version ${older.version} to ${newer.version}` },
      lines.map((line) => h(`span.diff-line${line.op === '+' ? '.add' : line.op === '-' ? '.del' : ''}`,
        h('span.ln', line.a === null ? '' : String(line.a)), h('span.ln', line.b === null ? '' : String(line.b)),
        h('span.op', line.op), h('span.text', line.text))))];
  return h('div', packages.unchanged ? null : packageDiff(packages), source);
}

/** What changed in the requirements and in the lock, one line per change. */
function packageDiff({ requirements, requiresPython, packages }) {
  const marker = (p) => (p.marker ? ` ; ${p.marker}` : '');
  const change = (kind, op, ...text) => h(`li.${kind}`, h('span.op', { 'aria-hidden': 'true' }, op), ...text);
  const dependencyLines = [
    ...requirements.added.map((d) => change('add', '+', 'requirement ', h('code', d), ' added')),
    ...requirements.removed.map((d) => change('del', '−', 'requirement ', h('code', d), ' removed')),
    requiresPython ? change('change', '~', 'requires-python ', h('code', requiresPython.from || 'any'), ' → ',
      h('code', requiresPython.to || 'any')) : null,
  ].filter(Boolean);
  const lockLines = [
    ...packages.added.map((p) => change('add', '+', h('code', `${p.name} ${p.version}`), marker(p), ' added')),
    ...packages.removed.map((p) => change('del', '−', h('code', `${p.name} ${p.version}`), marker(p), ' removed')),
    ...packages.changed.map((c) => change('change', '~', h('code', c.name), marker(c), ' ',
      c.from.version === c.to.version ? [h('code', c.to.version), ' (new hashes)'] : [h('code', c.from.version), ' → ', h('code', c.to.version)])),
  ];
  return h('div.package-diff',
    dependencyLines.length ? h('div', h('h3', 'Dependencies'), h('ul.package-changes', { 'aria-label': 'Dependency changes' }, dependencyLines)) : null,
    lockLines.length ? h('div', h('h3', 'Lock'), h('ul.package-changes', { 'aria-label': 'Lock changes' }, lockLines)) : null);
}
