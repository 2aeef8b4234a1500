// The audit log: who did what to which resource, filterable, and a check that the hash chain is intact.

import { api } from '../api.js';
import { h, mount, loading, empty, failure, table, time, pageHeader, busy, field } from '../dom.js';
import { setQuery } from '../router.js';

const PAGE = 50;
const FILTERS = [
  ['action', 'Action', 'e.g. script.update'],
  ['resource_type', 'Resource type', 'e.g. task'],
  ['resource_id', 'Resource id', ''],
  ['actor_type', 'Actor type', 'user, agent, system, anonymous'],
  ['user_id', 'User id', ''],
];

function toIso(local) {
  return local ? new Date(local).toISOString() : '';
}

export async function render(main, _params, ctx) {
  const inputs = Object.fromEntries(FILTERS.map(([name, , placeholder]) =>
    [name, h('input', { name, placeholder, value: ctx.query.get(name) || '', autocomplete: 'off' })]));
  const since = h('input', { type: 'datetime-local', name: 'since', value: ctx.query.get('since') || '' });
  const until = h('input', { type: 'datetime-local', name: 'until', value: ctx.query.get('until') || '' });
  const apply = h('button.button', { type: 'submit' }, 'Apply filters');
  const verifyResult = h('div.verify-result', { role: 'status' });
  const verify = ctx.can('admin') ? h('button.button.primary', { type: 'button' }, 'Verify chain') : null;
  const body = h('div', loading());
  const pager = h('div.pager');
  let offset = Number(ctx.query.get('offset')) || 0;
  const form = h('form.filters.audit-filters', { role: 'search', 'aria-label': 'Filter the audit log' },
    FILTERS.map(([name, label]) => field(label, inputs[name])), field('Since', since), field('Until', until),
    h('div.filter-actions', apply));
  mount(main, pageHeader('Audit log', verify), verifyResult, form, body, pager);

  function query() {
    const values = Object.fromEntries(Object.entries(inputs).map(([k, input]) => [k, input.value.trim()]));
    return { ...values, since: since.value, until: until.value };
  }

  async function load() {
    const q = query();
    setQuery({ ...q, offset: offset || '' });
    try {
      const page = await api('/audit', { query: { ...q, since: toIso(q.since), until: toIso(q.until), limit: PAGE, offset } });
      if (page.items.length === 0) {
        mount(body, empty('No entries match these filters.'));
        mount(pager);
        return;
      }
      mount(body, table(['#', 'Time', 'Actor', 'Action', 'Resource', 'IP', 'Details'], page.items.map((entry) => h('tr',
        h('td.num', String(entry.id)), h('td', time(entry.ts)),
        h('td', entry.actor_type, entry.actor_id ? h('span.muted', ` ${entry.actor_id}`) : null),
        h('td', h('code', entry.action)),
        h('td', entry.resource_type, entry.resource_id ? h('span.muted', ` ${entry.resource_id}`) : null),
        h('td', entry.ip || '—'),
        h('td', Object.keys(entry.details || {}).length === 0 ? h('span.muted', '—')
          : h('details.inline', h('summary', 'show'), h('pre.mono.small', JSON.stringify(entry.details, null, 2))))))));
      const last = offset + page.items.length;
      mount(pager, h('span.muted', `${offset + 1}–${last} of ${page.total}`),
        h('button.button.small', { type: 'button', disabled: offset === 0, onclick: () => { offset = Math.max(0, offset - PAGE); load(); } }, 'Newer'),
        h('button.button.small', { type: 'button', disabled: last >= page.total, onclick: () => { offset += PAGE; load(); } }, 'Older'));
    } catch (error) {
      mount(body, failure(error, load));
    }
  }
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    offset = 0;
    mount(body, loading());
    load();
  });
  if (verify) {
    verify.addEventListener('click', () => busy(verify, async () => {
      mount(verifyResult, loading('Recomputing the chain'));
      try {
        const result = await api('/audit/verify');
        mount(verifyResult, result.ok
          ? h('div.banner.ok', h('strong', 'Chain intact. '), `All ${result.checked} entries match their hashes. ${keyedNote(result)}`)
          : h('div.banner.bad', { role: 'alert' }, h('strong', 'Chain broken. '),
            `Entry #${result.first_bad_id}: ${result.problem}. It or an earlier entry was changed or removed (${result.checked} checked).`));
      } catch (error) {
        mount(verifyResult, failure(error));
      }
    }));
  }
  await load();
  return undefined;
}

/** Says from which entry on the chain is keyed with the server's key (earlier entries predate keying). */
function keyedNote(result) {
  if (result.checked === 0) return '';
  if (result.keyed_from_id === null) return 'None is keyed with the server key: anyone able to write the database could have recomputed them.';
  if (result.keyed_from_id === 1) return 'All are keyed with the server key.';
  return `Keyed with the server key from entry #${result.keyed_from_id}; earlier entries predate keying.`;
}
