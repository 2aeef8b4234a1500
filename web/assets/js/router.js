// Client-side routes in the URL fragment (`#/runs/42`): the server serves one page at `/`, and no dashboard
// address can ever be confused with an API path. Each page is a module loaded on first visit.

const routes = [];
let cleanup = null;
let generation = 0;

/** Registers `pattern` (e.g. `/runs/:id`) served by `load()`, which resolves to a page module. */
export function route(pattern, load, options = {}) {
  const names = [];
  const source = pattern.replace(/:(\w+)/g, (_, name) => {
    names.push(name);
    return '([^/]+)';
  });
  routes.push({ pattern, regex: new RegExp(`^${source}$`), names, load, ...options });
}

export function current() {
  const raw = location.hash.startsWith('#/') ? location.hash.slice(1) : '/';
  const [path, search = ''] = raw.split('?');
  return { path: path.replace(/\/+$/, '') || '/', query: new URLSearchParams(search) };
}

export function navigate(path) {
  if (`#${path}` === location.hash) render();
  else location.hash = path;
}

/** Replaces the query part of the current address without re-rendering (filters kept in the URL). */
export function setQuery(query) {
  const { path } = current();
  const text = new URLSearchParams(Object.entries(query).filter(([, v]) => v !== '' && v != null)).toString();
  history.replaceState(null, '', `#${path}${text ? `?${text}` : ''}`);
}

function match(path) {
  for (const entry of routes) {
    const found = entry.regex.exec(path);
    if (found) {
      const params = Object.fromEntries(entry.names.map((name, i) => [name, decodeURIComponent(found[i + 1])]));
      return { entry, params };
    }
  }
  return null;
}

/** Renders the current address into `main` with `context()`; stops the previous page's streams first. */
export async function render(main, context, fallback) {
  const target = main || render.main;
  const makeContext = context || render.context;
  const notFound = fallback || render.notFound;
  render.main = target;
  render.context = makeContext;
  render.notFound = notFound;
  const mine = ++generation;
  if (cleanup) cleanup();
  cleanup = null;
  const { path, query } = current();
  const found = match(path);
  const ctx = { ...makeContext(), query, isCurrent: () => mine === generation };
  if (!found || (found.entry.role && !ctx.can(found.entry.role))) {
    notFound(target, path);
    return;
  }
  const page = await found.entry.load();
  if (mine !== generation) return;
  document.title = `${found.entry.title} · Automa`;
  const result = await page.render(target, found.params, ctx);
  if (mine !== generation) {
    if (typeof result === 'function') result();
    return;
  }
  cleanup = typeof result === 'function' ? result : null;
  window.dispatchEvent(new CustomEvent('automa:routed', { detail: { path } }));
}

export function stopPage() {
  generation += 1;
  if (cleanup) cleanup();
  cleanup = null;
}
