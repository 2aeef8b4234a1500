// The dashboard's entry point: decides between the sign-in screens and the application shell, builds the
// navigation for the user's role, and hands the address to the router.

import { api, session } from './api.js';
import { h, mount, failure } from './dom.js';
import { route, render, current, stopPage } from './router.js';
import { startLive, stopLive } from './live.js';

const ROLE_RANK = { viewer: 0, operator: 1, admin: 2 };

const NAV = [
  { path: '/', label: 'Overview' },
  { path: '/scripts', label: 'Scripts' },
  { path: '/tasks', label: 'Tasks' },
  { path: '/runs', label: 'Runs' },
  { path: '/agents', label: 'Agents' },
  { path: '/audit', label: 'Audit log' },
  { path: '/users', label: 'Users', role: 'admin' },
  { path: '/notifications', label: 'Notifications', role: 'admin' },
  { path: '/tokens', label: 'API tokens' },
  { path: '/export', label: 'Export' },
];

route('/', () => import('./pages/overview.js'), { title: 'Overview' });
route('/scripts', () => import('./pages/scripts.js'), { title: 'Scripts' });
route('/scripts/new', () => import('./pages/script.js'), { title: 'New script', role: 'operator' });
route('/scripts/:id', () => import('./pages/script.js'), { title: 'Script' });
route('/tasks', () => import('./pages/tasks.js'), { title: 'Tasks' });
route('/tasks/new', () => import('./pages/task.js'), { title: 'New task', role: 'operator' });
route('/tasks/:id', () => import('./pages/task.js'), { title: 'Task' });
route('/runs', () => import('./pages/runs.js'), { title: 'Runs' });
route('/runs/:id', () => import('./pages/run.js'), { title: 'Run' });
route('/agents', () => import('./pages/agents.js'), { title: 'Agents' });
route('/audit', () => import('./pages/audit.js'), { title: 'Audit log' });
route('/users', () => import('./pages/users.js'), { title: 'Users', role: 'admin' });
route('/notifications', () => import('./pages/notifications.js'), { title: 'Notifications', role: 'admin' });
route('/tokens', () => import('./pages/tokens.js'), { title: 'API tokens' });
route('/export', () => import('./pages/export.js'), { title: 'Export' });

let user = null;

const shell = document.getElementById('shell');
const auth = document.getElementById('auth');
const main = document.getElementById('main');
const nav = document.getElementById('nav');
const menuButton = document.getElementById('menu-button');

function can(role) {
  return user !== null && ROLE_RANK[user.role] >= ROLE_RANK[role];
}

function context() {
  return { user, can };
}

function notFound(target, path) {
  document.title = 'Not found · Automa';
  mount(target, h('h1', 'Not found'), failure({ detail: `There is no page at ${path}, or your role cannot see it.` }),
    h('p', h('a', { href: '#/' }, 'Back to the overview')));
}

function buildNav() {
  const { path } = current();
  const section = `/${path.split('/')[1] || ''}`;
  mount(nav, h('ul', NAV.filter((item) => !item.role || can(item.role)).map((item) =>
    h('li', h('a', { href: `#${item.path}`, 'aria-current': item.path === section ? 'page' : null }, item.label)))));
}

function buildWhoami() {
  mount(document.getElementById('whoami'),
    h('span.who', h('span.email', user.email), ' ', h('span.role', user.role)),
    h('button.button.small', { type: 'button', id: 'logout', onclick: signOut }, 'Log out'));
}

async function refreshUser() {
  user = await api('/users/me');
  buildWhoami();
  buildNav();
  return user;
}

function closeMenu() {
  shell.classList.remove('menu-open');
  menuButton.setAttribute('aria-expanded', 'false');
}

async function showApp() {
  auth.hidden = true;
  mount(auth);
  shell.hidden = false;
  await refreshUser();
  startLive();
  await render(main, context, notFound);
}

async function showSignIn(message) {
  stopPage();
  stopLive();
  user = null;
  shell.hidden = true;
  mount(main);
  auth.hidden = false;
  document.title = 'Sign in · Automa';
  const page = await import('./pages/login.js');
  await page.render(auth, { message, onSignedIn: showApp });
}

async function signOut() {
  // The server ends the session too (and the user's other sessions), so a copy of the token is worthless.
  // Signing out here happens whatever it answers: an unreachable server must not keep anyone signed in.
  try {
    await api('/logout', { method: 'POST' });
  } catch {
    // Already ended, or the server is unreachable: the local sign-out below is what the user asked for.
  }
  session.clear();
  history.replaceState(null, '', '#/');
  showSignIn('You are logged out.');
}

menuButton.addEventListener('click', () => {
  const open = !shell.classList.contains('menu-open');
  shell.classList.toggle('menu-open', open);
  menuButton.setAttribute('aria-expanded', String(open));
});

// The skip link moves focus without touching the fragment, which holds the current page's address.
document.querySelector('.skip-link').addEventListener('click', (event) => {
  event.preventDefault();
  (shell.hidden ? auth : main).focus();
});

window.addEventListener('hashchange', () => {
  if (!user) return;
  closeMenu();
  buildNav();
  render().then(() => main.focus({ preventScroll: true }));
});

window.addEventListener('automa:signed-out', (event) => {
  if (user) showSignIn(`Your session ended: ${event.detail || 'please log in again'}.`);
});

async function boot() {
  if (!session.token) return showSignIn();
  try {
    await showApp();
  } catch (error) {
    if (error.status === 401) return showSignIn();
    mount(main, failure(error, boot));
  }
}

boot();
