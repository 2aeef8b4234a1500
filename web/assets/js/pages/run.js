// One run: its facts, its error, and its output — the stored log first, then the live stream from where the
// stored log ended, which the user can pause and resume without losing lines. Cancel and re-run from here.

import { api, stream } from '../api.js';
import { h, mount, loading, failure, badge, time, runDuration, bytes, cpuTime, pageHeader, confirm, toast, busy, debounce, table } from '../dom.js';
import { onLive } from '../live.js';
import { environmentTracker, environmentSummary } from '../packages.js';
import { navigate } from '../router.js';

const ACTIVE = new Set(['queued', 'running']);
const FAILED = new Set(['failed', 'timed_out', 'lost']);

/** Names of what a run refers to; a name that cannot be read (deleted, or not allowed) falls back to its id. */
async function names(run) {
  const name = (path, id) => (id ? api(`${path}/${id}`).then((x) => x.name).catch(() => `#${id}`) : null);
  const hook = run.hook_id && run.task_id
    ? api(`/tasks/${run.task_id}/hooks`).then((hooks) => hooks.find((x) => x.id === run.hook_id)?.name || `#${run.hook_id}`).catch(() => `#${run.hook_id}`)
    : run.hook_id ? `#${run.hook_id}` : null;
  const [task, script, agent, hookName] = await Promise.all([name('/tasks', run.task_id), name('/scripts', run.script_id), name('/agents', run.agent_id), hook]);
  return { task, script, agent, hook: hookName };
}

/** How the run's environment went: its stored time once the run ended, else what the log said so far. */
function environmentFact(run, environment) {
  if (run.environment_ms != null) return environmentSummary(run.environment_ms);
  if (!ACTIVE.has(run.status) || !environment) return null;
  return environment.phase === 'ready' ? environmentSummary(environment.ms) : 'preparing…';
}

function facts(run, named, environment) {
  const item = (label, value) => h('div', h('dt', label), h('dd', value));
  const prepared = environmentFact(run, environment);
  return h('dl.facts',
    item('Task', run.task_id ? h('a', { href: `#/tasks/${run.task_id}` }, named.task) : 'ad hoc'),
    item('Script', run.script_id ? h('span', h('a', { href: `#/scripts/${run.script_id}` }, named.script), ` v${run.script_version}`) : 'inline source'),
    item('Agent', run.agent_id ? named.agent || `#${run.agent_id}` : '—'),
    item('Trigger', h('span.trigger', `${run.trigger}${run.attempt > 1 ? `, attempt ${run.attempt}` : ''}`,
      run.hook_id ? ` (hook ${named.hook})` : null,
      run.upstream_run_id ? [' (after run ', h('a', { href: `#/runs/${run.upstream_run_id}` }, `#${run.upstream_run_id}`), ')'] : null)),
    item('Queued', time(run.queued_at)), item('Started', time(run.started_at)), item('Finished', time(run.finished_at)),
    item('Duration', runDuration(run)),
    prepared === null ? null : item('Environment', h('span.environment', prepared)),
    item('Exit', run.exit_code != null ? String(run.exit_code) : run.signal ? `signal ${run.signal}` : '—'),
    item('Max memory', run.max_rss_kb == null ? '—' : bytes(run.max_rss_kb * 1024)), item('CPU', cpuTime(run.cpu_ms)),
    item('Output', run.output_bytes == null ? '—' : `${bytes(run.output_bytes)}${run.truncated ? ' (truncated)' : ''}`));
}

const DELIVERY_STATUS = { delivered: 'succeeded', failed: 'failed', pending: 'queued', sending: 'running' };

/** The run's notices: to which channel, for which event, and how each attempt went. */
function deliveries(list) {
  if (list.length === 0) return null;
  return h('section.panel.deliveries', { 'aria-labelledby': 'notices-title' },
    h('div.panel-head', h('h2', { id: 'notices-title' }, 'Notifications')),
    table(['Channel', 'Event', 'Status', 'Attempts', 'Response', 'Last attempt', 'Error'], list.map((d) =>
      h('tr', { dataset: { delivery: d.id } }, h('td', d.channel_name), h('td', h('code', d.event)),
        h('td', h(`span.badge.status-${DELIVERY_STATUS[d.status] || 'unknown'}`, d.status)),
        h('td', String(d.attempts)), h('td', d.response_code != null ? String(d.response_code) : '—'),
        h('td', time(d.last_attempt_at)),
        h('td', d.last_error || (d.next_attempt_at ? h('span.muted', 'next try ', time(d.next_attempt_at)) : '—'))))));
}

function problem(run) {
  if (!FAILED.has(run.status) && !run.error) return null;
  const lines = [];
  if (run.error) lines.push(run.error);
  if (run.timed_out || run.status === 'timed_out') lines.push('The run hit its time limit and was stopped.');
  if (run.oom_killed) lines.push('The run was killed for exceeding its memory limit.');
  if (run.exit_code != null && run.exit_code !== 0) lines.push(`The script exited with code ${run.exit_code}.`);
  if (run.signal) lines.push(`The script was killed by signal ${run.signal}.`);
  return h('div.state.error.run-error', { role: 'alert' }, h('strong', run.status === 'skipped' ? 'Skipped' : 'Run failed'),
    lines.map((line) => h('p', line)));
}

/** While the agent installs the run's packages the script has not started: say so, live. */
function preparing(run, environment) {
  if (!ACTIVE.has(run.status) || !environment || environment.phase !== 'preparing') return null;
  return h('div.state.run-preparing', { role: 'status' }, h('span.spinner', { 'aria-hidden': 'true' }),
    h('strong', 'Preparing environment…'), ' Installing the script\'s packages; it starts when they are ready.');
}

/** Why a queued run is not starting, as the server tells it for this one run. */
function waiting(run) {
  if (run.status !== 'queued' || !run.waiting_reason) return null;
  return h('div.state.run-waiting', { role: 'status' }, h('strong', 'Waiting: '), run.waiting_reason);
}

export async function render(main, params) {
  mount(main, loading('Loading run'));
  let run;
  let named;
  try {
    run = await api(`/runs/${params.id}`);
    named = await names(run);
  } catch (error) {
    mount(main, pageHeader(`Run #${params.id}`), failure(error, () => render(main, params)));
    return undefined;
  }
  const header = h('div');
  const factsSlot = h('div');
  const problemSlot = h('div');
  const environmentSlot = h('div');
  const noticesSlot = h('div');
  const log = h('pre.log', { tabindex: '0', 'aria-label': 'Run output', 'aria-live': 'off' });
  const logState = h('span.log-state', { role: 'status' });
  const pause = h('button.button.small', { type: 'button', 'aria-pressed': 'false' }, 'Pause');
  const follow = h('input', { type: 'checkbox', checked: true, name: 'follow' });
  mount(main, h('p.crumbs', h('a', { href: '#/runs' }, 'Runs'), ' / ', `#${run.id}`), header, problemSlot, environmentSlot, factsSlot, noticesSlot,
    h('section.panel.log-panel', { 'aria-labelledby': 'log-title' },
      h('div.panel-head', h('h2', { id: 'log-title' }, 'Output'),
        h('div.log-tools', logState, h('label.check', follow, ' Scroll with output'), pause)),
      log));

  let lastSeq = -1;
  let controller = null;
  let paused = false;
  let closed = false;
  const environment = environmentTracker();

  function drawEnvironment() {
    mount(environmentSlot, preparing(run, environment.state));
    mount(factsSlot, facts(run, named, environment.state));
  }

  function append(chunk) {
    if (chunk.seq <= lastSeq) return;
    lastSeq = chunk.seq;
    log.append(h(`span.chunk.${chunk.stream || 'stdout'}`, chunk.data));
    if (follow.checked) log.scrollTop = log.scrollHeight;
    if (environment.feed(chunk)) drawEnvironment();
  }

  function drawRun() {
    const actions = [];
    if (ACTIVE.has(run.status)) {
      const cancel = h('button.button.danger', { type: 'button' }, 'Cancel run');
      cancel.addEventListener('click', async () => {
        if (!(await confirm(`Cancel run #${run.id}? Its process tree is killed.`, { action: 'Cancel run', dismiss: 'Keep it running' }))) return;
        await busy(cancel, async () => {
          try {
            run = await api(`/runs/${run.id}/cancel`, { method: 'POST' }) || run;
            toast('Cancel requested.', 'success');
            drawRun();
          } catch (error) {
            toast(error.detail || error.message, 'error');
          }
        });
      });
      actions.push(cancel);
    }
    const rerun = h('button.button', { type: 'button', disabled: !run.task_id && !run.script_id, title: !run.task_id && !run.script_id ? 'An inline run cannot be repeated from here' : null }, 'Re-run');
    rerun.addEventListener('click', () => busy(rerun, async () => {
      try {
        const next = run.task_id
          ? await api(`/tasks/${run.task_id}/execute`, { method: 'POST' })
          : await api('/execute', { method: 'POST', body: { script_id: run.script_id } });
        navigate(`/runs/${next.id}`);
      } catch (error) {
        toast(error.detail || error.message, 'error');
      }
    }));
    actions.push(rerun);
    mount(header, pageHeader(h('span', `Run #${run.id} `, badge(run.status)), actions));
    mount(problemSlot, problem(run) || waiting(run));
    drawEnvironment();
  }

  async function refreshRun() {
    try {
      const agent = run.agent_id;
      run = await api(`/runs/${run.id}`);
      if (run.agent_id !== agent) named = await names(run);
      drawRun();
      await refreshNotices();
    } catch (error) {
      toast(error.detail || error.message, 'error');
    }
  }

  let noticeTimer = null;
  async function refreshNotices() {
    clearTimeout(noticeTimer);
    if (closed) return;
    const list = await api(`/runs/${run.id}/notifications`);
    mount(noticesSlot, deliveries(list));
    // Deliveries change without a run event (retries happen later, on any server): while one is still due,
    // look again after a short while.
    if (list.some((d) => d.status === 'pending' || d.status === 'sending')) noticeTimer = setTimeout(() => refreshNotices().catch(() => {}), 2000);
  }

  async function backlog() {
    for (;;) {
      const page = await api(`/runs/${run.id}/logs`, { query: lastSeq >= 0 ? { after: lastSeq } : {} });
      const before = lastSeq;
      page.chunks.forEach(append);
      if (page.chunks.length === 0 || lastSeq === before) return;
    }
  }

  async function followStream() {
    if (paused || closed) return;
    if (!ACTIVE.has(run.status)) {
      logState.textContent = lastSeq < 0 ? 'No output.' : 'Finished.';
      pause.hidden = true;
      return;
    }
    controller = new AbortController();
    const own = controller;
    logState.textContent = 'Connecting…';
    try {
      await stream(`/runs/${run.id}/logs/stream`, {
        signal: own.signal,
        query: lastSeq >= 0 ? { after: lastSeq } : {},
        onOpen: () => { logState.textContent = 'Following live output'; },
        // The log stream's event types: `log` (one chunk) until the run ends, then `end` (the run).
        onEvent: ({ event, data }) => {
          if (event === 'log') append(data);
          else if (event === 'end') {
            run = data;
            drawRun();
          }
        },
      });
    } catch (error) {
      if (own.signal.aborted) return;
      logState.textContent = `Stream stopped: ${error.detail || error.message}`;
      return;
    }
    if (own.signal.aborted) return;
    await refreshRun();
    await backlog().catch(() => {});
    logState.textContent = 'Finished.';
    pause.hidden = true;
  }

  pause.addEventListener('click', () => {
    paused = !paused;
    pause.textContent = paused ? 'Resume' : 'Pause';
    pause.setAttribute('aria-pressed', String(paused));
    if (paused) {
      if (controller) controller.abort();
      logState.textContent = 'Paused — new output waits on the server.';
    } else {
      followStream();
    }
  });

  drawRun();
  refreshNotices().catch((error) => mount(noticesSlot, failure(error)));
  try {
    await backlog();
  } catch (error) {
    mount(log, failure(error));
  }
  followStream();
  const refresh = debounce(refreshRun, 200);
  const stop = onLive(['run'], (changed) => {
    if (changed.id === run.id) refresh();
  });
  return () => {
    closed = true;
    clearTimeout(noticeTimer);
    if (controller) controller.abort();
    stop();
    refresh.cancel();
  };
}
