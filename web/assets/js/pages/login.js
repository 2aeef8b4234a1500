// Sign-in: the login form, or, while the server has no user yet, the form that creates the first admin.

import { api, session } from '../api.js';
import { h, mount, loading, failure, field, showFieldError, clearFieldErrors, busy } from '../dom.js';

function card(title, intro, form) {
  return h('div.auth-card',
    h('div.auth-brand', h('img', { src: '/assets/icon.svg', alt: '', width: 36, height: 36 }), h('span', 'Automa')),
    h('h1', title), intro ? h('p.muted', intro) : null, form);
}

async function signIn(email, password) {
  const token = await api('/token', { method: 'POST', form: { username: email, password } });
  session.set(token.access_token);
}

function loginForm(message, onSignedIn) {
  const email = h('input', { type: 'email', name: 'username', autocomplete: 'username', required: true });
  const password = h('input', { type: 'password', name: 'password', autocomplete: 'current-password', required: true });
  const submit = h('button.button.primary.wide', { type: 'submit' }, 'Log in');
  const form = h('form.stack',
    message ? h('p.notice', { role: 'status' }, message) : null,
    h('p.form-error', { role: 'alert', tabindex: '-1', hidden: true }),
    field('E-mail', email), field('Password', password), submit);
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    clearFieldErrors(form);
    busy(submit, async () => {
      try {
        await signIn(email.value.trim(), password.value);
        await onSignedIn();
      } catch (error) {
        showFieldError(form, { detail: error.detail || error.message });
        password.select();
      }
    });
  });
  return { form, focus: email };
}

function setupForm(onSignedIn) {
  const email = h('input', { type: 'email', name: 'email', autocomplete: 'username', required: true });
  const password = h('input', { type: 'password', name: 'password', autocomplete: 'new-password', required: true, minlength: 8 });
  const again = h('input', { type: 'password', name: 'again', autocomplete: 'new-password', required: true, minlength: 8 });
  const submit = h('button.button.primary.wide', { type: 'submit' }, 'Create admin and log in');
  const form = h('form.stack',
    h('p.form-error', { role: 'alert', tabindex: '-1', hidden: true }),
    field('E-mail', email),
    field('Password', password, { hint: 'At least 8 characters.' }),
    field('Repeat password', again, { name: 'again' }),
    submit);
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    clearFieldErrors(form);
    if (password.value !== again.value) {
      showFieldError(form, { field: 'again', detail: 'The passwords differ.' });
      return;
    }
    busy(submit, async () => {
      try {
        await api('/users', { method: 'POST', body: { email: email.value.trim(), password: password.value } });
        await signIn(email.value.trim(), password.value);
        await onSignedIn();
      } catch (error) {
        showFieldError(form, error);
      }
    });
  });
  return { form, focus: email };
}

export async function render(container, { message, onSignedIn }) {
  mount(container, h('div.auth-card', loading('Connecting')));
  let status;
  try {
    status = await api('/setup');
  } catch (error) {
    mount(container, card('Automa', null, failure(error, () => render(container, { message, onSignedIn }))));
    return;
  }
  const { form, focus } = status.needs_admin ? setupForm(onSignedIn) : loginForm(message, onSignedIn);
  const intro = status.needs_admin
    ? 'Welcome. This server has no users yet: create the first administrator account.'
    : 'Sign in to manage, schedule and audit your scripts.';
  mount(container, card(status.needs_admin ? 'Create the first admin' : 'Log in', intro, form));
  focus.focus();
}
