// Notification channels (admins): a webhook, signed with a secret shown once, or e-mail recipients; which
// events a default channel receives; a "Send test" per channel that reports what the receiver answered.

import { api } from '../api.js';
import { h, mount, loading, empty, failure, table, time, pageHeader, busy, confirm, toast, field, showFieldError, clearFieldErrors } from '../dom.js';

const EVENTS = [
  ['failed', 'Failed'], ['timed_out', 'Timed out'], ['lost', 'Lost'], ['skipped', 'Skipped fire'], ['recovered', 'Recovered'],
  ['agent_offline', 'Agent offline'], ['scheduler_behind', 'Scheduler behind'],
];
const DEFAULT_EVENTS = new Set(['failed', 'timed_out', 'lost', 'recovered', 'agent_offline', 'scheduler_behind']);

function createForm(reload) {
  const name = h('input', { name: 'name', required: true, autocomplete: 'off' });
  const kind = h('select', { name: 'kind' }, h('option', { value: 'webhook' }, 'Webhook'), h('option', { value: 'email' }, 'E-mail'));
  const url = h('input', { name: 'url', type: 'url', autocomplete: 'off', placeholder: 'https://hooks.example.com/…' });
  const recipients = h('input', { name: 'recipients', autocomplete: 'off', placeholder: 'ops@example.com, oncall@example.com' });
  const isDefault = h('input', { type: 'checkbox', name: 'default' });
  const boxes = EVENTS.map(([value, label]) => h('label.check', h('input', { type: 'checkbox', name: 'events', value, checked: DEFAULT_EVENTS.has(value) }), ` ${label}`));
  const urlField = field('URL', url, { hint: 'Notices are POSTed here as JSON, signed in X-Automa-Signature.' });
  const recipientsField = field('Recipients', recipients, { hint: 'Comma-separated addresses.' });
  const submit = h('button.button.primary', { type: 'submit' }, 'Create channel');
  const shown = h('div');
  const showKind = () => {
    urlField.hidden = kind.value !== 'webhook';
    recipientsField.hidden = kind.value !== 'email';
  };
  kind.addEventListener('change', showKind);
  showKind();
  const form = h('form.stack', h('p.form-error', { role: 'alert', tabindex: '-1', hidden: true }),
    h('div.row', field('Name', name), field('Kind', kind)), urlField, recipientsField,
    h('label.check', isDefault, ' Default channel: receives the notices of tasks that choose none, and agent and scheduler alerts'),
    h('fieldset.events', { dataset: { field: 'events' } }, h('legend', 'Events (as a default channel)'), boxes, h('p.field-error', { hidden: true })),
    h('div.actions', submit), shown);
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    clearFieldErrors(form);
    busy(submit, async () => {
      try {
        const body = { name: name.value.trim(), kind: kind.value, default: isDefault.checked,
          events: [...form.querySelectorAll('input[name="events"]:checked')].map((box) => box.value) };
        if (kind.value === 'webhook') body.url = url.value.trim();
        else body.recipients = recipients.value.split(',').map((r) => r.trim()).filter(Boolean);
        const created = await api('/notification-channels', { method: 'POST', body });
        if (created.secret) {
          const value = h('input.mono.token-value', { readOnly: true, value: created.secret, 'aria-label': 'Signing secret' });
          mount(shown, h('div.secret-once', { role: 'status' },
            h('p', h('strong', 'Copy this signing secret now. '), 'It is shown only once; receivers check X-Automa-Signature with it.'),
            h('div.copy-row', value)));
          value.select();
        } else {
          mount(shown);
        }
        name.value = '';
        url.value = '';
        recipients.value = '';
        reload();
      } catch (error) {
        showFieldError(form, error);
      }
    });
  });
  return h('section.panel', h('div.panel-head', h('h2', 'New channel')), h('div.panel-body', form));
}

function row(channel, reload) {
  const outcome = h('span.test-outcome', { role: 'status' });
  const test = h('button.button.small', { type: 'button' }, 'Send test');
  test.addEventListener('click', () => busy(test, async () => {
    mount(outcome, 'Sending…');
    try {
      const result = await api(`/notification-channels/${channel.id}/test`, { method: 'POST' });
      const code = result.response_code != null ? ` (${result.response_code})` : '';
      mount(outcome, result.delivered ? h('span.badge.status-succeeded', `Delivered${code}`)
        : h('span', h('span.badge.status-failed', `Not delivered${code}`), ' ', result.error || ''));
    } catch (error) {
      mount(outcome, h('span.badge.status-failed', error.detail || error.message));
    }
  }));
  const remove = h('button.button.small.danger', { type: 'button' }, 'Delete');
  remove.addEventListener('click', async () => {
    if (!(await confirm(`Delete the channel “${channel.name}”? Pending notices to it are dropped; past ones stay in the runs' history.`, { action: 'Delete channel' }))) return;
    try {
      await api(`/notification-channels/${channel.id}`, { method: 'DELETE' });
      reload();
    } catch (error) {
      toast(error.detail || error.message, 'error');
    }
  });
  const target = channel.kind === 'webhook' ? h('code', channel.url) : channel.recipients.join(', ');
  return h('tr', { dataset: { channel: channel.name } }, h('td', channel.name), h('td', channel.kind), h('td', target),
    h('td', channel.default ? channel.events.join(', ') : h('span.muted', 'no')), h('td', time(channel.created_at)),
    h('td.actions-cell', test, ' ', remove, ' ', outcome));
}

export async function render(main) {
  const body = h('div', loading());
  mount(main, pageHeader('Notifications'),
    h('p.muted', 'Channels receive notices when runs fail, time out, are lost or skipped, and when a task recovers. A task can choose its own channels; tasks that choose none use the default channels.'),
    createForm(() => load()), body);
  async function load() {
    try {
      const channels = await api('/notification-channels', { query: { limit: 500 } });
      mount(body, channels.items.length === 0 ? empty('No channels yet.')
        : table(['Name', 'Kind', 'Target', 'Default for', 'Created', ''], channels.items.map((channel) => row(channel, load))));
    } catch (error) {
      mount(body, failure(error, load));
    }
  }
  await load();
  return undefined;
}
