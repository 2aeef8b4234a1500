// Users (admin only): create, change role, deactivate, delete. The server refuses to remove the last admin.

import { api } from '../api.js';
import { h, mount, loading, empty, failure, table, time, pageHeader, busy, confirm, toast, field, showFieldError, clearFieldErrors } from '../dom.js';

const ROLES = ['viewer', 'operator', 'admin'];

function createForm(reload) {
  const email = h('input', { type: 'email', name: 'email', required: true, autocomplete: 'off' });
  const password = h('input', { type: 'password', name: 'password', required: true, minlength: 8, autocomplete: 'new-password' });
  const role = h('select', { name: 'role' }, ROLES.map((r) => h('option', { value: r }, r)));
  const submit = h('button.button.primary', { type: 'submit' }, 'Create user');
  const form = h('form.stack', h('p.form-error', { role: 'alert', tabindex: '-1', hidden: true }),
    h('div.row', field('E-mail', email), field('Initial password', password, { hint: 'At least 8 characters.' }), field('Role', role)),
    h('div.actions', submit));
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    clearFieldErrors(form);
    busy(submit, async () => {
      try {
        const user = await api('/users', { method: 'POST', body: { email: email.value.trim(), password: password.value, role: role.value } });
        toast(`User ${user.email} created.`, 'success');
        form.reset();
        reload();
      } catch (error) {
        showFieldError(form, error);
      }
    });
  });
  return h('details.panel', h('summary', 'Add a user'), form);
}

function row(user, me, reload) {
  const role = h('select', { 'aria-label': `Role of ${user.email}` }, ROLES.map((r) => h('option', { value: r, selected: r === user.role }, r)));
  role.addEventListener('change', async () => {
    try {
      await api(`/users/${user.id}`, { method: 'PUT', body: { role: role.value } });
      toast(`${user.email} is now ${role.value}.`, 'success');
    } catch (error) {
      toast(error.detail || error.message, 'error');
      role.value = user.role;
    }
  });
  const toggle = h('button.button.small', { type: 'button' }, user.active ? 'Deactivate' : 'Activate');
  toggle.addEventListener('click', async () => {
    if (user.active && !(await confirm(`Deactivate ${user.email}? They can no longer log in or use their tokens.`, { action: 'Deactivate' }))) return;
    await busy(toggle, async () => {
      try {
        await api(`/users/${user.id}`, { method: 'PUT', body: { active: !user.active } });
        reload();
      } catch (error) {
        toast(error.detail || error.message, 'error');
      }
    });
  });
  const remove = h('button.button.small.danger', { type: 'button' }, 'Delete');
  remove.addEventListener('click', async () => {
    if (!(await confirm(`Delete ${user.email} and their API tokens?`, { action: 'Delete user' }))) return;
    try {
      await api(`/users/${user.id}`, { method: 'DELETE' });
      reload();
    } catch (error) {
      toast(error.detail || error.message, 'error');
    }
  });
  const self = user.id === me.id;
  return h('tr', h('td', user.email, self ? h('span.muted', ' (you)') : null), h('td', role),
    h('td', h(`span.badge.${user.active ? 'status-succeeded' : 'status-cancelled'}`, user.active ? 'active' : 'inactive')),
    h('td', time(user.last_login_at)), h('td', time(user.created_at)),
    h('td.actions-cell', self ? null : [toggle, ' ', remove]));
}

export async function render(main, _params, ctx) {
  const body = h('div', loading());
  mount(main, pageHeader('Users'), createForm(() => load()), body);
  async function load() {
    try {
      const page = await api('/users', { query: { limit: 500 } });
      mount(body, page.items.length === 0 ? empty('No users.')
        : table(['E-mail', 'Role', 'State', 'Last login', 'Created', ''], page.items.map((user) => row(user, ctx.user, load))));
    } catch (error) {
      mount(body, failure(error, load));
    }
  }
  await load();
  return undefined;
}
