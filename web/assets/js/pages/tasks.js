// The task list: what each task runs, its schedule and next fire; run one now. Live: task events refresh it.

import { api } from '../api.js';
import { h, mount, loading, empty, failure, table, time, relative, pageHeader, debounce } from '../dom.js';
import { onLive } from '../live.js';
import { setQuery } from '../router.js';
import { runButton } from '../run-now.js';
import { describeSchedule } from '../schedule.js';

export async function render(main, _params, ctx) {
  const search = h('input', { type: 'search', name: 'name', placeholder: 'Filter by name', value: ctx.query.get('name') || '', 'aria-label': 'Filter tasks by name' });
  const body = h('div', loading());
  const create = ctx.can('operator') ? h('a.button.primary', { href: '#/tasks/new' }, 'New task') : null;
  mount(main, pageHeader('Tasks', create), h('div.filters', search), body);

  async function load() {
    try {
      const [tasks, scripts] = await Promise.all([
        api('/tasks', { query: { name: search.value.trim(), limit: 500 } }),
        api('/scripts', { query: { limit: 500 } }),
      ]);
      const scriptNames = new Map(scripts.items.map((s) => [s.id, s.name]));
      if (tasks.items.length === 0) {
        mount(body, empty(search.value ? 'No task matches this filter.' : 'No tasks yet. A task runs a script with arguments, limits and a schedule.',
          !search.value && create ? h('a.button', { href: '#/tasks/new' }, 'Create a task') : null));
        return;
      }
      mount(body, table(['Name', 'Script', 'Schedule', 'Next fire', 'State', ''], tasks.items.map((task) => h('tr',
        h('td', h('a', { href: `#/tasks/${task.id}` }, task.name)),
        h('td', h('a', { href: `#/scripts/${task.script_id}` }, scriptNames.get(task.script_id) || `#${task.script_id}`),
          task.script_version ? h('span.muted', ` v${task.script_version}`) : null),
        h('td', describeSchedule(task.schedule)),
        h('td', task.next_fire_at ? [time(task.next_fire_at), h('div.muted.small', relative(task.next_fire_at))] : h('span.muted', '—')),
        h('td', h(`span.badge.${task.enabled ? 'status-succeeded' : 'status-cancelled'}`, task.enabled ? 'enabled' : 'disabled')),
        h('td.actions-cell', ctx.can('operator') ? runButton(task) : null)))));
    } catch (error) {
      mount(body, failure(error, load));
    }
  }
  const onSearch = debounce(() => {
    setQuery({ name: search.value.trim() });
    load();
  }, 250);
  search.addEventListener('input', onSearch);
  const refresh = debounce(load, 300);
  const stop = onLive(['task', 'run'], refresh);
  await load();
  return () => {
    stop();
    refresh.cancel();
    onSearch.cancel();
  };
}
