// The overview: what exists, what runs now, what ran lately, what failed, what fires next, which agents serve.
// Each panel loads on its own, so one failing endpoint shows its error without blanking the rest.

import { api } from '../api.js';
import { h, mount, loading, empty, failure, badge, time, relative, runDuration, debounce, bytes } from '../dom.js';
import { onLive } from '../live.js';

function panel(title, id, link) {
  const body = h('div.panel-body', loading());
  const el = h('section.panel', { 'aria-labelledby': id },
    h('div.panel-head', h('h2', { id }, title), link ? h('a.small', { href: link.href }, link.label) : null), body);
  return { el, body };
}

async function fill(body, load, draw) {
  try {
    mount(body, draw(await load()));
  } catch (error) {
    mount(body, failure(error, () => fill(body, load, draw)));
  }
}

function runLabel(run, names) {
  if (run.task_id) return names.get(`task ${run.task_id}`) || `task ${run.task_id}`;
  return run.script_id ? names.get(`script ${run.script_id}`) || `script ${run.script_id}` : 'inline script';
}

function runList(runs, emptyText, names) {
  if (runs.length === 0) return empty(emptyText);
  return h('ul.run-list', runs.map((run) => h('li',
    h('a', { href: `#/runs/${run.id}` }, `#${run.id}`),
    badge(run.status),
    h('span.run-name', runLabel(run, names)),
    h('span.muted', run.finished_at ? relative(run.finished_at) : run.started_at ? `started ${relative(run.started_at)}` : `queued ${relative(run.queued_at)}`),
    h('span.muted.num', runDuration(run)))));
}

async function counts() {
  const [scripts, tasks, runs, agents, ready] = await Promise.allSettled([
    api('/scripts', { query: { limit: 1 } }),
    api('/tasks', { query: { limit: 1 } }),
    api('/runs', { query: { limit: 1 } }),
    api('/agents', { query: { limit: 500 } }),
    api('/ready'),
  ]);
  // A run total counted only so far (past 10,000) is shown as at least that.
  const total = (result) => (result.status === 'fulfilled' ? `${result.value.total}${result.value.total_exact === false ? '+' : ''}` : '—');
  const online = agents.status === 'fulfilled' ? agents.value.items.filter((a) => a.status === 'online').length : '—';
  const size = ready.status === 'fulfilled' && ready.value.database_size_bytes != null ? bytes(ready.value.database_size_bytes) : '—';
  const database = ready.status === 'fulfilled' ? ready.value.database : 'database';
  return [['Scripts', total(scripts), '#/scripts'], ['Tasks', total(tasks), '#/tasks'],
    ['Runs', total(runs), '#/runs'], ['Agents online', online, '#/agents'], [`Database (${database})`, size, null]];
}

// A tile without a link is status only (the database size has no page of its own).
function countTiles(items) {
  return h('div.tiles', items.map(([label, value, href]) =>
    h(href ? 'a.tile' : 'div.tile', href ? { href } : {}, h('span.tile-value', String(value)), h('span.tile-label', label))));
}

async function upcoming() {
  const page = await api('/tasks', { query: { scheduled: true, enabled: true, limit: 500 } });
  return page.items.filter((task) => task.next_fire_at)
    .sort((a, b) => a.next_fire_at.localeCompare(b.next_fire_at)).slice(0, 8);
}

function upcomingList(tasks) {
  if (tasks.length === 0) return empty('No scheduled fires. Give a task a schedule to see it here.');
  return h('ul.fire-list', tasks.map((task) => h('li',
    h('a', { href: `#/tasks/${task.id}` }, task.name),
    h('span.muted', task.schedule ? task.schedule.kind : ''),
    h('span', time(task.next_fire_at)), h('span.muted', relative(task.next_fire_at)))));
}

function agentList(page) {
  if (page.items.length === 0) return empty('No agents registered.');
  return h('ul.agent-list', page.items.map((agent) => h('li',
    h('span.agent-name', agent.name), badge(agent.status),
    h('span.muted', agent.last_seen_at ? `seen ${relative(agent.last_seen_at)}` : 'never seen'))));
}

export async function render(main) {
  const stats = panel('At a glance', 'p-counts');
  const running = panel('Running now', 'p-running', { href: '#/runs?status=running', label: 'All running' });
  const recent = panel('Recent runs', 'p-recent', { href: '#/runs', label: 'All runs' });
  const failures = panel('Recent failures', 'p-failures', { href: '#/runs?status=failed', label: 'All failures' });
  const fires = panel('Upcoming fires', 'p-fires', { href: '#/tasks', label: 'Tasks' });
  const agents = panel('Agents', 'p-agents', { href: '#/agents', label: 'Manage' });
  mount(main, h('div.page-header', h('h1', 'Overview')),
    stats.el, h('div.grid', running.el, recent.el, failures.el, fires.el, agents.el));

  let names = new Map();
  const loadNames = () => Promise.all([
    api('/tasks', { query: { limit: 500 } }).catch(() => ({ items: [] })),
    api('/scripts', { query: { limit: 500 } }).catch(() => ({ items: [] })),
  ]).then(([tasks, scripts]) => {
    names = new Map([...tasks.items.map((t) => [`task ${t.id}`, t.name]), ...scripts.items.map((s) => [`script ${s.id}`, s.name])]);
  });
  const unnamed = (run) => (run.task_id ? !names.has(`task ${run.task_id}`) : run.script_id && !names.has(`script ${run.script_id}`));
  const runs = (query) => async () => {
    const page = await api('/runs', { query });
    if (page.items.some(unnamed)) await loadNames();
    return page;
  };
  const loadRuns = () => {
    fill(running.body, runs({ status: 'running', limit: 10 }), (page) => runList(page.items, 'Nothing is running.', names));
    fill(recent.body, runs({ limit: 10 }), (page) => runList(page.items, 'No runs yet.', names));
    fill(failures.body, runs({ status: 'failed', limit: 5 }), (page) => runList(page.items, 'No recent failures.', names));
  };
  const loadCounts = () => fill(stats.body, counts, countTiles);
  const loadFires = () => fill(fires.body, upcoming, upcomingList);
  const loadAgents = () => fill(agents.body, () => api('/agents', { query: { limit: 500 } }), agentList);
  loadCounts();
  loadRuns();
  loadFires();
  loadAgents();

  const refresh = {
    run: debounce(() => { loadRuns(); loadCounts(); }, 300),
    task: debounce(() => { loadFires(); loadCounts(); }, 300),
    agent: debounce(() => { loadAgents(); loadCounts(); }, 300),
  };
  const stop = onLive(['run', 'task', 'agent'], (_, type) => refresh[type]());
  return () => {
    stop();
    Object.values(refresh).forEach((fn) => fn.cancel());
  };
}
