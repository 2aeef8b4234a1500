// A task's triggers besides its schedule: the tasks it runs after (edited in the task form) and its webhooks
// (created here, shown once with their URL, revoked).

import { api } from './api.js';
import { h, mount, loading, empty, failure, table, time, busy, confirm, toast, field, showFieldError, clearFieldErrors } from './dom.js';

/** The outcomes a run-after link may wait for, as the API names them. */
const OUTCOMES = ['succeeded', 'failed', 'timed_out', 'cancelled', 'lost'];

/**
 * Rows of "run after task X when it ends in …"; `value()` gives the API's `run_after` list. `tasks` are the
 * candidates (every task but this one).
 */
export function createRunAfterEditor(links, tasks, { disabled = false } = {}) {
  const rows = h('div.stack.run-after-rows');
  const add = h('button.button.small', { type: 'button', disabled }, 'Add a task to run after');
  const root = h('div.stack.run-after', rows, tasks.length ? add : h('p.muted', 'No other task to run after.'));

  function row(link) {
    const task = h('select', { name: 'run_after_task', 'aria-label': 'Run after task', disabled },
      tasks.map((t) => h('option', { value: String(t.id), selected: t.id === link.task_id }, t.name)));
    const boxes = OUTCOMES.map((outcome) => h('input', {
      type: 'checkbox', value: outcome, checked: link.on.includes(outcome), disabled, 'aria-label': `when it ${outcome.replace('_', ' ')}`,
    }));
    const remove = h('button.button.small.danger', { type: 'button', disabled }, 'Remove');
    const el = h('div.row.run-after-row', { dataset: { field: 'run_after' } }, task,
      h('span.muted', 'when its run ends'),
      boxes.map((box) => h('label.check', box, ` ${box.value.replace('_', ' ')}`)), remove);
    el.value = () => ({ task_id: Number(task.value), on: boxes.filter((b) => b.checked).map((b) => b.value) });
    remove.addEventListener('click', () => el.remove());
    return el;
  }

  for (const link of links) rows.append(row(link));
  add.addEventListener('click', () => rows.append(row({ task_id: tasks[0].id, on: ['succeeded'] })));
  return { root, value: () => [...rows.children].map((el) => el.value()) };
}

function createHookForm(task, reload) {
  const name = h('input', { name: 'name', required: true, autocomplete: 'off', placeholder: 'e.g. ci' });
  const rate = h('input', { type: 'number', name: 'rate_per_minute', min: 1, placeholder: 'default' });
  const submit = h('button.button.primary', { type: 'submit' }, 'Create hook');
  const shown = h('div');
  const form = h('form.stack', { 'aria-label': 'New hook' }, h('p.form-error', { role: 'alert', tabindex: '-1', hidden: true }),
    h('div.row', field('Name', name), field('Runs per minute', rate)), h('div.actions', submit), shown);
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    clearFieldErrors(form);
    busy(submit, async () => {
      try {
        const body = { name: name.value.trim() };
        if (rate.value) body.rate_per_minute = Number(rate.value);
        const created = await api(`/tasks/${task.id}/hooks`, { method: 'POST', body });
        const url = `${window.location.origin}${created.path}`;
        const value = h('input.mono.token-value.hook-url', { readOnly: true, value: url, 'aria-label': 'New hook URL' });
        const copy = h('button.button.small', { type: 'button' }, 'Copy');
        copy.addEventListener('click', async () => {
          value.select();
          try {
            await navigator.clipboard.writeText(url);
            toast('Copied.', 'success');
          } catch {
            toast('Select the URL and copy it by hand.', 'info');
          }
        });
        mount(shown, h('div.secret-once', { role: 'status' },
          h('p', h('strong', 'Copy this URL now. '), 'It holds the hook’s token and is shown only once. POST to it, with an optional JSON body, to run the task.'),
          h('div.copy-row', value, copy)));
        value.select();
        name.value = '';
        rate.value = '';
        reload();
      } catch (error) {
        showFieldError(form, error);
      }
    });
  });
  return form;
}

/** The task's hooks: a list with revoke buttons and, for operators, a form that creates one. */
export function hooksPanel(task, ctx) {
  const writable = ctx.can('operator');
  const list = h('div', loading('Loading hooks'));
  async function load() {
    try {
      const hooks = await api(`/tasks/${task.id}/hooks`);
      mount(list, hooks.length === 0 ? empty('No hooks: nothing outside can start this task.')
        : table(['Name', 'Token', 'Runs per minute', 'Created', 'Last called', ''], hooks.map((hook) => {
          let action = hook.revoked_at ? h('span.muted', 'revoked') : null;
          if (!hook.revoked_at && writable) {
            action = h('button.button.small.danger', { type: 'button' }, 'Revoke');
            action.addEventListener('click', async () => {
              if (!(await confirm(`Revoke the hook “${hook.name}”? Calls to its URL will be refused.`, { action: 'Revoke hook' }))) return;
              try {
                await api(`/tasks/${task.id}/hooks/${hook.id}`, { method: 'DELETE' });
                toast('Hook revoked.', 'success');
                load();
              } catch (error) {
                toast(error.detail || error.message, 'error');
              }
            });
          }
          return h('tr', { dataset: { hook: hook.name } }, h('td', hook.name), h('td.mono', `${hook.prefix}…`), h('td.num', String(hook.rate_per_minute)),
            h('td', time(hook.created_at)), h('td', time(hook.last_triggered_at)), h('td', action));
        })));
    } catch (error) {
      mount(list, failure(error, load));
    }
  }
  load();
  return h('section.panel', { 'aria-labelledby': 'task-hooks' },
    h('div.panel-head', h('h2', { id: 'task-hooks' }, 'Hooks')),
    h('div.panel-body.stack', list, writable ? createHookForm(task, load) : null));
}
