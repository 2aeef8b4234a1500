// Agents: status, sandbox capabilities, load, recent events, and the admin's levers — drain, disable, enroll,
// retire. Retired agents are hidden unless asked for. Refreshed on the live `agent` and `run` events.

import { api } from '../api.js';
import { h, mount, loading, empty, failure, badge, relative, pageHeader, confirm, toast, busy, debounce, field, showFieldError, clearFieldErrors } from '../dom.js';
import { onLive } from '../live.js';

/**
 * The sandbox an agent reported: its profile (red when `none`), each layer as a chip (missing ones as
 * warnings), then what it lacks to run scripts at all and its warnings, spelled out.
 */
function capabilities(caps) {
  const entries = Object.entries(caps || {});
  if (entries.length === 0) return h('p.muted.small', 'No capabilities reported yet.');
  const chips = [];
  const notes = [];
  for (const [name, value] of entries) {
    if (name === 'profile') {
      chips.unshift(h(`li.chip.${value === 'none' ? 'danger' : 'ok'}`, `profile: ${value}`));
    } else if (name === 'ready') {
      if (value === false) chips.unshift(h('li.chip.danger', 'cannot run scripts'));
    } else if (Array.isArray(value)) {
      for (const item of value) {
        notes.push(h(`li.${name === 'missing_required' ? 'danger' : 'warn'}`, name === 'missing_required' ? `Missing: ${item}` : String(item)));
      }
    } else if (value === false) {
      chips.push(h('li.chip.warn', { title: `${name} is not available on this host` }, `no ${name.replace(/_/g, ' ')}`));
    } else if (value === true) {
      chips.push(h('li.chip.ok', name.replace(/_/g, ' ')));
    } else if (value !== null && typeof value !== 'object') {
      chips.push(h('li.chip.ok', `${name.replace(/_/g, ' ')}: ${value}`));
    }
  }
  return [h('ul.chips', chips), notes.length ? h('ul.cap-notes', notes) : null];
}

/** Events shown per agent; the server keeps the newest 100 (`GET /agents/{id}/events`). */
const EVENTS_SHOWN = 10;

const EVENT_LABELS = {
  online: 'started', reconnected: 'reconnected', offline: 'went offline', goodbye: 'stopped cleanly',
  refused: 'refused', run_lost: 'run lost',
};

/** What happened to the agent lately, newest first. */
function eventList(events) {
  if (!events || events.length === 0) return h('p.muted.small', 'No events yet.');
  return h('ul.agent-events', events.map((event) => h('li',
    h('time', { datetime: event.at, title: event.at }, relative(event.at)), ' ',
    h(`span.chip${['offline', 'refused', 'run_lost'].includes(event.kind) ? '.warn' : ''}`, EVENT_LABELS[event.kind] || event.kind),
    event.detail ? h('span.muted.small', ` ${event.detail}`) : null)));
}

function agentCard(agent, running, events, ctx, reload) {
  const load = running.get(agent.id) || 0;
  const percent = Math.min(100, Math.round((load / Math.max(1, agent.effective_concurrency)) * 100));
  const actions = [];
  if (ctx.can('admin') && agent.status !== 'retired') {
    const draining = agent.status === 'draining';
    const disabled = agent.status === 'disabled';
    const drain = h('button.button.small', { type: 'button' }, draining ? 'Stop draining' : 'Drain');
    drain.addEventListener('click', () => busy(drain, () => update(agent, { draining: !draining }, reload)));
    const disable = h(`button.button.small${disabled ? '' : '.danger'}`, { type: 'button' }, disabled ? 'Enable' : 'Disable');
    disable.addEventListener('click', async () => {
      if (!disabled && !(await confirm(`Disable ${agent.name}? Its running runs are cancelled and it is refused by the server until enabled again.`, { action: 'Disable agent' }))) return;
      await busy(disable, () => update(agent, { disabled: !disabled }, reload));
    });
    actions.push(drain, disable);
    if (!agent.embedded) {
      const remove = h('button.button.small.danger', { type: 'button' }, 'Retire');
      remove.addEventListener('click', async () => {
        if (!(await confirm(`Retire the agent ${agent.name}? Its token stops working; its runs stay in the history.`, { action: 'Retire agent' }))) return;
        try {
          await api(`/agents/${agent.id}`, { method: 'DELETE' });
          reload();
        } catch (error) {
          toast(error.detail || error.message, 'error');
        }
      });
      actions.push(remove);
    }
  }
  return h('article.agent-card', { 'aria-labelledby': `agent-${agent.id}` },
    h('div.agent-head', h('h2', { id: `agent-${agent.id}` }, agent.name), badge(agent.status), agent.embedded ? h('span.chip', 'embedded') : null),
    agent.description ? h('p.muted', agent.description) : null,
    h('dl.facts.compact',
      h('dt', 'Host'), h('dd', agent.hostname || '—'), h('dt', 'Version'), h('dd', agent.version || '—'),
      h('dt', 'Last seen'), h('dd', agent.last_seen_at ? relative(agent.last_seen_at) : 'never'),
      h('dt', 'Labels'), h('dd', agent.labels.length ? agent.labels.join(', ') : '—'),
      h('dt', 'Concurrency'), h('dd', { title: 'reported by the agent / admin cap / effective' },
        `${agent.concurrency ?? '—'} / ${agent.max_concurrency >= 1024 ? 'no cap' : agent.max_concurrency} / ${agent.effective_concurrency}`),
      agent.retired_at ? [h('dt', 'Retired'), h('dd', relative(agent.retired_at))] : null),
    h('div.load', h('span', `Load ${load} / ${agent.effective_concurrency}`),
      h('div.meter', { role: 'meter', 'aria-valuemin': 0, 'aria-valuemax': agent.effective_concurrency, 'aria-valuenow': load, 'aria-label': 'Runs in progress' },
        h('span', { dataset: { percent } }))),
    h('h3.small-heading', 'Sandbox'), capabilities(agent.capabilities),
    h('h3.small-heading', 'Recent events'), eventList(events.get(agent.id)),
    actions.length ? h('div.actions', actions) : null);
}

async function update(agent, change, reload) {
  try {
    await api(`/agents/${agent.id}`, { method: 'PUT', body: change });
    reload();
  } catch (error) {
    toast(error.detail || error.message, 'error');
  }
}

function enrollForm(reload) {
  const name = h('input', { name: 'name', required: true, autocomplete: 'off' });
  const labels = h('input', { name: 'labels', autocomplete: 'off' });
  const concurrency = h('input', { type: 'number', name: 'max_concurrency', min: 1, max: 1024, placeholder: 'no cap' });
  const result = h('div');
  const submit = h('button.button.primary', { type: 'submit' }, 'Enroll agent');
  const form = h('form.stack', h('p.form-error', { role: 'alert', tabindex: '-1', hidden: true }),
    h('div.row', field('Name', name), field('Labels', labels, { hint: 'Comma-separated.' }), field('Max concurrency', concurrency, { hint: 'Empty: the agent\'s own --concurrency.' })),
    h('div.actions', submit), result);
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    clearFieldErrors(form);
    busy(submit, async () => {
      try {
        const created = await api('/agents', { method: 'POST', body: {
          name: name.value.trim(), labels: labels.value.split(',').map((l) => l.trim()).filter(Boolean),
          max_concurrency: concurrency.value === '' ? null : Number(concurrency.value),
        } });
        // The token goes in the environment, never on the command line, where every local user sees it in `ps`.
        mount(result, h('div.secret-once', { role: 'status' }, h('p', h('strong', 'Enrollment token — shown only now. '), 'Start the agent with:'),
          h('pre.mono', agentCommand(created.token)),
          h('p.hint', 'The token travels in AUTOMA_TOKEN (or a file given with --token-file), not on the command line. '
            + 'Agents refuse plain http:// to a server on another host: serve Automa over https://.')));
        form.reset();
        reload();
      } catch (error) {
        showFieldError(form, error);
      }
    });
  });
  return h('details.panel.enroll', h('summary', 'Enroll a remote agent'), form);
}

/** The command that starts a remote agent for this server with `token`. */
export function agentCommand(token) {
  return `AUTOMA_TOKEN=${token} automa agent --server ${location.origin}`;
}

function applyMeters(root) {
  // Widths come from data attributes, since the CSP forbids inline styles in markup.
  for (const bar of root.querySelectorAll('.meter > span')) bar.style.width = `${bar.dataset.percent}%`;
}

export async function render(main, _params, ctx) {
  const body = h('div', loading());
  const showRetired = h('input', { type: 'checkbox', name: 'retired' });
  showRetired.addEventListener('change', () => load());
  mount(main, pageHeader('Agents', h('label.check', showRetired, ' Show retired agents')),
    ctx.can('admin') ? enrollForm(() => load()) : null, body);
  /** Each agent's recent events, by id, fetched again after an `agent` event. */
  const events = new Map();
  let eventsStale = true;
  async function load() {
    try {
      const [agents, running] = await Promise.all([
        api('/agents', { query: { limit: 500, retired: showRetired.checked } }),
        api('/runs', { query: { status: 'running', limit: 500 } }).catch(() => ({ items: [] })),
      ]);
      const perAgent = new Map();
      for (const run of running.items) perAgent.set(run.agent_id, (perAgent.get(run.agent_id) || 0) + 1);
      if (agents.items.length === 0) {
        mount(body, empty('No agents. `automa serve` starts one of its own unless run with --no-agent.'));
        return;
      }
      // Events change only with `agent` events; a busy queue's `run` events refresh the load alone, so the
      // page does not ask for every agent's events on every run.
      const missing = agents.items.filter((agent) => eventsStale || !events.has(agent.id));
      eventsStale = false;
      for (const [id, items] of await Promise.all(missing.map((agent) =>
        api(`/agents/${agent.id}/events`, { query: { limit: EVENTS_SHOWN } })
          .then((page) => [agent.id, page.items])
          .catch(() => [agent.id, null])))) {
        events.set(id, items);
      }
      mount(body, h('div.cards', agents.items.map((agent) => agentCard(agent, perAgent, events, ctx, load))));
      applyMeters(body);
    } catch (error) {
      mount(body, failure(error, load));
    }
  }
  const refresh = debounce(load, 300);
  const stopRuns = onLive(['run'], refresh);
  const stopAgents = onLive(['agent'], () => {
    eventsStale = true;
    refresh();
  });
  const stop = () => {
    stopRuns();
    stopAgents();
  };
  await load();
  return () => {
    stop();
    refresh.cancel();
  };
}
