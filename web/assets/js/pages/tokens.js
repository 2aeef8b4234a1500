// Your API tokens: create one (shown once, then only its prefix is known), see when each was used, revoke.

import { api } from '../api.js';
import { h, mount, loading, empty, failure, table, time, pageHeader, busy, confirm, toast, field, showFieldError, clearFieldErrors } from '../dom.js';

function createForm(ctx, reload) {
  const name = h('input', { name: 'name', required: true, autocomplete: 'off' });
  const roles = ['viewer', 'operator', 'admin'].filter((r) => ctx.can(r));
  const role = h('select', { name: 'role' }, h('option', { value: '' }, `Same as mine (${ctx.user.role})`), roles.map((r) => h('option', { value: r }, r)));
  const days = h('input', { type: 'number', name: 'expires_in_days', min: 1, max: 3650, placeholder: 'never' });
  const submit = h('button.button.primary', { type: 'submit' }, 'Create token');
  const shown = h('div');
  const form = h('form.stack', h('p.form-error', { role: 'alert', tabindex: '-1', hidden: true }),
    h('div.row', field('Name', name), field('Role cap', role), field('Expires in (days)', days)), h('div.actions', submit), shown);
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    clearFieldErrors(form);
    busy(submit, async () => {
      try {
        const body = { name: name.value.trim() };
        if (role.value) body.role = role.value;
        if (days.value) body.expires_in_days = Number(days.value);
        const created = await api('/tokens', { method: 'POST', body });
        const value = h('input.mono.token-value', { readOnly: true, value: created.token, 'aria-label': 'New API token' });
        const copy = h('button.button.small', { type: 'button' }, 'Copy');
        copy.addEventListener('click', async () => {
          value.select();
          try {
            await navigator.clipboard.writeText(created.token);
            toast('Copied.', 'success');
          } catch {
            toast('Select the token and copy it by hand.', 'info');
          }
        });
        mount(shown, h('div.secret-once', { role: 'status' },
          h('p', h('strong', 'Copy this token now. '), 'It is shown only once; the server keeps only its hash.'),
          h('div.copy-row', value, copy)));
        value.select();
        name.value = '';
        reload();
      } catch (error) {
        showFieldError(form, error);
      }
    });
  });
  return h('section.panel', h('div.panel-head', h('h2', 'New token')), h('div.panel-body', form));
}

export async function render(main, _params, ctx) {
  const body = h('div', loading());
  mount(main, pageHeader('API tokens'), h('p.muted', 'Tokens act as you (capped at the role you choose) for scripts, the CLI and CI. Send them as Authorization: Bearer …'),
    createForm(ctx, () => load()), body);
  async function load() {
    try {
      const tokens = await api('/tokens');
      mount(body, tokens.length === 0 ? empty('You have no API tokens.')
        : table(['Name', 'Prefix', 'Role cap', 'Created', 'Last used', 'Expires', ''], tokens.map((token) => {
          const revoke = token.revoked_at ? h('span.muted', 'revoked') : h('button.button.small.danger', { type: 'button' }, 'Revoke');
          if (!token.revoked_at) {
            revoke.addEventListener('click', async () => {
              if (!(await confirm(`Revoke the token “${token.name}”? Anything using it stops working at once.`, { action: 'Revoke token' }))) return;
              try {
                await api(`/tokens/${token.id}`, { method: 'DELETE' });
                load();
              } catch (error) {
                toast(error.detail || error.message, 'error');
              }
            });
          }
          return h('tr', h('td', token.name), h('td', h('code', `${token.prefix}…`)), h('td', token.role || '—'),
            h('td', time(token.created_at)), h('td', time(token.last_used_at)), h('td', time(token.expires_at)), h('td.actions-cell', revoke));
        })));
    } catch (error) {
      mount(body, failure(error, load));
    }
  }
  await load();
  return undefined;
}
