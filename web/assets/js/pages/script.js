// One script: edit its source (a save appends a version; a syntax error is marked at its line), run it ad hoc,
// and compare any two of its versions.

import { api } from '../api.js';
import {
  h, mount, loading, failure, field, showFieldError, clearFieldErrors, busy, confirm, toast, time, pageHeader, empty,
} from '../dom.js';
import { createEditor } from '../editor.js';
import { diffLines } from '../diff.js';
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
  const versions = script ? h('section.panel', { 'aria-labelledby': 'versions-title' },
    h('div.panel-head', h('h2', { id: 'versions-title' }, 'Versions')), h('div.panel-body', loading())) : null;
  mount(main, h('p.crumbs', h('a', { href: '#/scripts' }, 'Scripts'), ' / ', title), pageHeader(title, actions), meta, form, versions);
  if (isNew) name.focus();
  if (versions) renderVersions(versions.querySelector('.panel-body'), script);
  return undefined;
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
  if (added === 0 && removed === 0) return empty('These versions are identical.');
  return h('div',
    h('p.diff-summary', h('span.added', `+${added}`), ' ', h('span.removed', `−${removed}`),
      ` lines from v${older.version} to v${newer.version}`),
    h('pre.diff', { tabindex: '0', 'aria-label': `Changes from version ${older.version} to ${newer.version}` },
      lines.map((line) => h(`span.diff-line${line.op === '+' ? '.add' : line.op === '-' ? '.del' : ''}`,
        h('span.ln', line.a === null ? '' : String(line.a)), h('span.ln', line.b === null ? '' : String(line.b)),
        h('span.op', line.op), h('span.text', line.text)))));
}
