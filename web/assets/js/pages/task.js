// One task: every field of it (script and version, target, arguments, environment, secrets, limits, retries,
// schedule, the tasks it runs after), its hooks, its recent runs, run now and delete.

import { api } from '../api.js';
import {
  h, mount, loading, failure, field, showFieldError, clearFieldErrors, busy, confirm, toast, pageHeader, table, badge,
  time, runDuration, empty, debounce,
} from '../dom.js';
import { createScheduleEditor } from '../schedule.js';
import { navigate } from '../router.js';
import { onLive } from '../live.js';
import { runButton } from '../run-now.js';
import { createRunAfterEditor, hooksPanel } from '../triggers.js';

const DEFAULTS = {
  name: '', description: '', script_id: null, script_version: null, agent_id: null, labels: [], args: [], env: {},
  secrets: [], timeout_seconds: 3600, memory_mb: 512, cpu_seconds: 3600, max_output_bytes: 10485760, network: false,
  warm: false, retries: 0, retry_backoff_seconds: 10, schedule: null, enabled: true, run_after: [],
};

function list(text, separator) {
  return text.split(separator).map((item) => item.trim()).filter(Boolean);
}

function parseEnv(text) {
  const env = {};
  for (const line of text.split('\n')) {
    if (!line.trim()) continue;
    const eq = line.indexOf('=');
    if (eq <= 0) throw Object.assign(new Error(`“${line.trim()}” is not NAME=value`), { field: 'env', detail: `“${line.trim()}” is not NAME=value` });
    env[line.slice(0, eq).trim()] = line.slice(eq + 1);
  }
  return env;
}

function number(name, value, attrs = {}) {
  return h('input', { type: 'number', name, value: String(value), ...attrs });
}

export async function render(main, params, ctx) {
  const isNew = !params.id;
  mount(main, loading('Loading task'));
  let task;
  let scripts;
  let agents;
  let tasks;
  try {
    [task, scripts, agents, tasks] = await Promise.all([
      isNew ? { ...DEFAULTS, script_id: Number(ctx.query.get('script')) || null } : api(`/tasks/${params.id}`),
      api('/scripts', { query: { limit: 500 } }),
      api('/agents', { query: { limit: 500 } }).catch(() => ({ items: [] })),
      api('/tasks', { query: { limit: 500 } }),
    ]);
  } catch (error) {
    mount(main, pageHeader('Task'), failure(error, () => render(main, params, ctx)));
    return undefined;
  }
  if (isNew && scripts.items.length === 0) {
    mount(main, pageHeader('New task'), empty('A task runs a script: create a script first.', h('a.button.primary', { href: '#/scripts/new' }, 'New script')));
    return undefined;
  }
  const writable = ctx.can('operator');
  const name = h('input', { name: 'name', required: true, value: task.name, autocomplete: 'off' });
  const description = h('textarea', { name: 'description', rows: 2 }, task.description);
  const script = h('select', { name: 'script_id', required: true },
    scripts.items.map((s) => h('option', { value: String(s.id), selected: s.id === task.script_id }, s.name)));
  const version = h('select', { name: 'script_version' });
  const agent = h('select', { name: 'agent_id' }, h('option', { value: '' }, 'Any agent with the labels below'),
    agents.items.map((a) => h('option', { value: String(a.id), selected: a.id === task.agent_id }, `${a.name} (${a.status})`)));
  const labels = h('input', { name: 'labels', value: task.labels.join(', '), autocomplete: 'off' });
  const args = h('textarea.mono', { name: 'args', rows: 3 }, task.args.join('\n'));
  const env = h('textarea.mono', { name: 'env', rows: 3 }, Object.entries(task.env).map(([k, v]) => `${k}=${v}`).join('\n'));
  const secrets = h('input', { name: 'secrets', value: task.secrets.join(', '), autocomplete: 'off' });
  const timeout = number('timeout_seconds', task.timeout_seconds, { min: 1 });
  const memory = number('memory_mb', task.memory_mb, { min: 16 });
  const cpu = number('cpu_seconds', task.cpu_seconds, { min: 1 });
  const output = number('max_output_bytes', task.max_output_bytes, { min: 1024 });
  const network = h('input', { type: 'checkbox', name: 'network', checked: task.network });
  const warm = h('input', { type: 'checkbox', name: 'warm', checked: task.warm });
  const retries = number('retries', task.retries, { min: 0, max: 100 });
  const backoff = number('retry_backoff_seconds', task.retry_backoff_seconds, { min: 0 });
  const enabled = h('input', { type: 'checkbox', name: 'enabled', checked: task.enabled });
  const schedule = createScheduleEditor(task.schedule);
  const runAfter = createRunAfterEditor(task.run_after, tasks.items.filter((t) => t.id !== task.id), { disabled: !writable });
  const save = h('button.button.primary', { type: 'submit' }, isNew ? 'Create task' : 'Save changes');

  async function loadVersions() {
    mount(version, h('option', { value: '' }, 'Latest version'));
    if (!script.value) return;
    try {
      const page = await api(`/scripts/${script.value}/versions`, { query: { limit: 500 } });
      for (const v of page.items) version.append(h('option', { value: String(v.version), selected: v.version === task.script_version }, `Pinned: v${v.version}`));
    } catch (error) {
      toast(error.detail || error.message, 'error');
    }
  }
  script.addEventListener('change', loadVersions);
  loadVersions();

  const form = h('form.stack.task-form', { 'aria-label': 'Task' },
    h('p.form-error', { role: 'alert', tabindex: '-1', hidden: true }),
    h('fieldset', { disabled: !writable }, h('legend', 'What'),
      h('div.row', field('Name', name), field('Script', script), field('Version', version, { name: 'script_version' })),
      field('Description', description)),
    h('fieldset', { disabled: !writable }, h('legend', 'Where and how'),
      h('div.row', field('Agent', agent, { name: 'agent_id' }), field('Required labels', labels, { hint: 'Comma-separated; the agent must have all of them.' })),
      h('div.row', field('Arguments', args, { hint: 'One per line: sys.argv[1:].' }), field('Environment', env, { hint: 'NAME=value, one per line.' })),
      field('Secrets', secrets, { hint: 'Secret names, comma-separated; each reaches the run as a variable of that name.' })),
    h('fieldset', { disabled: !writable }, h('legend', 'Limits and retries'),
      h('div.row', field('Timeout (s)', timeout), field('Memory (MB)', memory), field('CPU (s)', cpu), field('Max output (bytes)', output)),
      h('div.row', field('Retries', retries), field('Retry backoff (s)', backoff)),
      h('label.check', { dataset: { field: 'network' } }, network, ' Allow network access'),
      h('label.check', { dataset: { field: 'warm' } }, warm, ' Warm start (runs start in a sandbox prepared before they come; not with network or packages)'),
      h('label.check', { dataset: { field: 'enabled' } }, enabled, ' Enabled (a disabled task does not fire)')),
    h('fieldset', { disabled: !writable }, h('legend', 'Schedule'), schedule.root),
    h('fieldset', { disabled: !writable }, h('legend', 'Run after'),
      h('p.hint', 'Start this task once for every run of these tasks that ends as checked (its final attempt; a failure that is retried does not count).'),
      runAfter.root),
    writable ? h('div.actions', save) : null);

  form.addEventListener('submit', (event) => {
    event.preventDefault();
    clearFieldErrors(form);
    let body;
    try {
      body = {
        name: name.value.trim(), description: description.value, script_id: Number(script.value),
        script_version: version.value ? Number(version.value) : null, agent_id: agent.value ? Number(agent.value) : null,
        labels: list(labels.value, ','), args: args.value ? args.value.split('\n').filter((line, i, all) => line !== '' || i < all.length - 1) : [],
        env: parseEnv(env.value), secrets: list(secrets.value, ','), timeout_seconds: Number(timeout.value),
        memory_mb: Number(memory.value), cpu_seconds: Number(cpu.value), max_output_bytes: Number(output.value),
        network: network.checked, warm: warm.checked, retries: Number(retries.value), retry_backoff_seconds: Number(backoff.value),
        enabled: enabled.checked, schedule: schedule.value(), run_after: runAfter.value(),
      };
    } catch (error) {
      showFieldError(form, error);
      return;
    }
    busy(save, async () => {
      try {
        const saved = isNew
          ? await api('/tasks', { method: 'POST', body })
          : await api(`/tasks/${task.id}`, { method: 'PUT', body });
        toast(isNew ? `Task ${saved.name} created.` : 'Task saved.', 'success');
        if (isNew) navigate(`/tasks/${saved.id}`);
        else render(main, params, ctx);
      } catch (error) {
        showFieldError(form, error);
      }
    });
  });

  const actions = [];
  if (!isNew && writable) {
    const remove = h('button.button.danger', { type: 'button' }, 'Delete');
    remove.addEventListener('click', async () => {
      if (!(await confirm(`Delete the task “${task.name}”? Its run history stays.`, { action: 'Delete task' }))) return;
      try {
        await api(`/tasks/${task.id}`, { method: 'DELETE' });
        toast('Task deleted.', 'success');
        navigate('/tasks');
      } catch (error) {
        toast(error.detail || error.message, 'error');
      }
    });
    actions.push(runButton(task, { small: false }), remove);
  }
  const title = isNew ? 'New task' : task.name;
  const history = isNew ? null : h('section.panel', { 'aria-labelledby': 'task-runs' },
    h('div.panel-head', h('h2', { id: 'task-runs' }, 'Recent runs'), h('a.small', { href: `#/runs?task_id=${task.id}` }, 'All runs of this task')),
    h('div.panel-body', loading()));
  mount(main, h('p.crumbs', h('a', { href: '#/tasks' }, 'Tasks'), ' / ', title), pageHeader(title, actions),
    task.next_fire_at ? h('p.meta', 'Next fire ', time(task.next_fire_at)) : null, form, isNew ? null : hooksPanel(task, ctx), history);
  if (isNew) name.focus();
  if (!history) return schedule.stop;

  const body = history.querySelector('.panel-body');
  const loadRuns = async () => {
    try {
      const page = await api('/runs', { query: { task_id: task.id, limit: 10 } });
      mount(body, page.items.length === 0 ? empty('This task has not run yet.')
        : table(['Run', 'Status', 'Trigger', 'Queued', 'Duration'], page.items.map((run) => h('tr',
          h('td', h('a', { href: `#/runs/${run.id}` }, `#${run.id}`)), h('td', badge(run.status)), h('td', run.trigger),
          h('td', time(run.queued_at)), h('td.num', runDuration(run))))));
    } catch (error) {
      mount(body, failure(error, loadRuns));
    }
  };
  loadRuns();
  const refresh = debounce(loadRuns, 300);
  const stop = onLive(['run'], refresh);
  return () => {
    schedule.stop();
    stop();
    refresh.cancel();
  };
}
