// Run history with filters (kept in the address, so a filtered view can be shared), live as runs change.

import { api } from '../api.js';
import { h, mount, loading, empty, failure, table, badge, time, runDuration, bytes, cpuTime, pageHeader, debounce, field } from '../dom.js';
import { onLive } from '../live.js';
import { setQuery } from '../router.js';

export const STATUSES = ['queued', 'running', 'succeeded', 'failed', 'timed_out', 'cancelled', 'lost', 'skipped'];
const TRIGGERS = ['manual', 'schedule', 'api', 'retry', 'hook', 'after'];
const PAGE = 50;

function select(name, label, options, value) {
  return h('select', { name, 'aria-label': label },
    h('option', { value: '' }, `Any ${label.toLowerCase()}`),
    options.map(([v, text]) => h('option', { value: String(v), selected: String(v) === value }, text)));
}

export async function render(main, _params, ctx) {
  const [tasks, scripts] = await Promise.all([
    api('/tasks', { query: { limit: 500 } }).catch(() => ({ items: [] })),
    api('/scripts', { query: { limit: 500 } }).catch(() => ({ items: [] })),
  ]);
  const taskNames = new Map(tasks.items.map((t) => [t.id, t.name]));
  const scriptNames = new Map(scripts.items.map((s) => [s.id, s.name]));
  const status = select('status', 'Status', STATUSES.map((s) => [s, s.replace('_', ' ')]), ctx.query.get('status') || '');
  const task = select('task_id', 'Task', tasks.items.map((t) => [t.id, t.name]), ctx.query.get('task_id') || '');
  const trigger = select('trigger', 'Trigger', TRIGGERS.map((t) => [t, t]), ctx.query.get('trigger') || '');
  // The cursors of the pages before this one, newest first: "Newer" goes back through them. A page opened
  // from an address starts at the newest runs.
  let cursors = [];
  let cursor = null;
  const body = h('div', loading());
  const pager = h('div.pager');
  mount(main, pageHeader('Runs'),
    h('form.filters', { role: 'search', 'aria-label': 'Filter runs', onsubmit: (e) => e.preventDefault() },
      field('Status', status), field('Task', task), field('Trigger', trigger)), body, pager);

  function filters() {
    return { status: status.value, task_id: task.value, trigger: trigger.value };
  }

  async function load() {
    const query = { ...filters(), limit: PAGE, cursor: cursor || '' };
    setQuery(filters());
    try {
      const page = await api('/runs', { query });
      if (page.items.length === 0) {
        mount(body, empty(Object.values(filters()).some(Boolean) ? 'No run matches these filters.' : 'No runs yet. Run a task or a script to see it here.'));
        mount(pager);
        return;
      }
      mount(body, table(['Run', 'Task / script', 'Status', 'Trigger', 'Queued', 'Duration', 'Max RSS', 'CPU', 'Exit'],
        page.items.map((run) => h('tr', { dataset: { run: run.id, status: run.status } },
          h('td', h('a', { href: `#/runs/${run.id}` }, `#${run.id}`), run.attempt > 1 ? h('span.muted.small', ` try ${run.attempt}`) : null),
          h('td', run.task_id ? h('a', { href: `#/tasks/${run.task_id}` }, taskNames.get(run.task_id) || `task ${run.task_id}`)
            : run.script_id ? h('a', { href: `#/scripts/${run.script_id}` }, scriptNames.get(run.script_id) || `script ${run.script_id}`) : h('span.muted', 'inline'),
            run.script_version ? h('span.muted.small', ` v${run.script_version}`) : null),
          h('td', badge(run.status)), h('td', run.trigger), h('td', time(run.queued_at)), h('td.num', runDuration(run)),
          h('td.num', run.max_rss_kb == null ? '—' : bytes(run.max_rss_kb * 1024)), h('td.num', cpuTime(run.cpu_ms)),
          h('td.num', run.exit_code == null ? (run.signal ? `sig ${run.signal}` : '—') : String(run.exit_code))))));
      const first = cursors.length * PAGE + 1;
      const total = page.total_exact ? String(page.total) : `more than ${page.total}`;
      mount(pager, h('span.muted', `${first}–${first + page.items.length - 1} of ${total}`),
        h('button.button.small', { type: 'button', disabled: cursors.length === 0, onclick: () => { cursor = cursors.pop(); load(); } }, 'Newer'),
        h('button.button.small', { type: 'button', disabled: !page.next_cursor, onclick: () => { cursors.push(cursor); cursor = page.next_cursor; load(); } }, 'Older'));
    } catch (error) {
      mount(body, failure(error, load));
    }
  }
  for (const control of [status, task, trigger]) {
    control.addEventListener('change', () => {
      cursors = [];
      cursor = null;
      mount(body, loading());
      load();
    });
  }
  const refresh = debounce(load, 300);
  const stop = onLive(['run'], refresh);
  await load();
  return () => {
    stop();
    refresh.cancel();
  };
}
