// Small helpers to build the page from data without innerHTML: text from the API is always set as text, so
// nothing a script name or a log line contains can become markup.

/** Creates an element: `h('a.button', {href}, 'text', child)`. Attributes starting with `on` add listeners. */
export function h(spec, attrs, ...children) {
  const [tag, ...classes] = spec.split('.');
  const el = document.createElement(tag || 'div');
  if (classes.length) el.className = classes.join(' ');
  if (attrs && (typeof attrs !== 'object' || attrs instanceof Node || Array.isArray(attrs))) {
    children.unshift(attrs);
    attrs = null;
  }
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith('on') && typeof value === 'function') el.addEventListener(key.slice(2), value);
    else if (key === 'class') el.className = [el.className, value].filter(Boolean).join(' ');
    else if (key === 'dataset') Object.assign(el.dataset, value);
    else if (key in el && typeof value !== 'string') el[key] = value;
    else el.setAttribute(key, value === true ? '' : value);
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replaces an element's content. */
export function mount(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

export function loading(what = 'Loading') {
  return h('p.state.loading', { role: 'status' }, h('span.spinner', { 'aria-hidden': 'true' }), `${what}…`);
}

export function empty(message, action) {
  return h('div.state.empty', h('p', message), action || null);
}

/** An error box with the API's `detail`, and a retry button when a retry makes sense. */
export function failure(error, retry) {
  const detail = (error && (error.detail || error.message)) || 'something went wrong';
  return h(
    'div.state.error',
    { role: 'alert' },
    h('p', h('strong', 'Error: '), detail),
    retry ? h('button.button', { type: 'button', onclick: retry }, 'Try again') : null,
  );
}

/** Asks before something destructive; resolves true only when the user confirms. */
export function confirm(message, { title = 'Are you sure?', action = 'Confirm', dismiss = 'Cancel' } = {}) {
  const dialog = document.getElementById('confirm');
  document.getElementById('confirm-title').textContent = title;
  document.getElementById('confirm-message').textContent = message;
  document.getElementById('confirm-ok').textContent = action;
  document.getElementById('confirm-cancel').textContent = dismiss;
  dialog.returnValue = '';
  dialog.showModal();
  document.getElementById('confirm-cancel').focus();
  return new Promise((resolve) => {
    dialog.addEventListener('close', () => resolve(dialog.returnValue === 'ok'), { once: true });
  });
}

export function toast(message, kind = 'info') {
  const el = h(`div.toast.${kind}`, message);
  document.getElementById('toasts').append(el);
  // A toast is a passing notice; its removal is cosmetic, not a poll.
  setTimeout(() => el.remove(), kind === 'error' ? 8000 : 4000);
}

/** Builds a labelled form field; `hint` and a slot for a field error are tied to the input for screen readers. */
export function field(label, input, { hint, name } = {}) {
  const id = input.id || `f-${Math.random().toString(36).slice(2, 9)}`;
  input.id = id;
  const error = h('p.field-error', { id: `${id}-error`, hidden: true });
  const described = [hint ? `${id}-hint` : null, `${id}-error`].filter(Boolean).join(' ');
  input.setAttribute('aria-describedby', described);
  const wrapper = h(
    'div.field',
    { dataset: { field: name || input.name || '' } },
    h('label', { for: id }, label),
    input,
    hint ? h('p.hint', { id: `${id}-hint` }, hint) : null,
    error,
  );
  return wrapper;
}

/** Shows a 422's message at the field it names (or as a form-level error), and focuses that field. */
export function showFieldError(form, error, aliases = {}) {
  clearFieldErrors(form);
  const name = error.field ? aliases[error.field] || error.field : null;
  const candidates = name ? [name, name.split(/[.[]/)[0]] : [];
  for (const candidate of candidates) {
    const wrapper = form.querySelector(`[data-field="${CSS.escape(candidate)}"]`);
    if (!wrapper) continue;
    const slot = wrapper.querySelector('.field-error');
    slot.textContent = error.detail;
    slot.hidden = false;
    const input = wrapper.querySelector('input, select, textarea');
    if (input) {
      input.setAttribute('aria-invalid', 'true');
      input.focus();
    }
    return;
  }
  const banner = form.querySelector('.form-error');
  if (banner) {
    banner.textContent = error.detail || error.message;
    banner.hidden = false;
    banner.focus();
  } else {
    toast(error.detail || error.message, 'error');
  }
}

export function clearFieldErrors(form) {
  for (const slot of form.querySelectorAll('.field-error, .form-error')) {
    slot.hidden = true;
    slot.textContent = '';
  }
  for (const input of form.querySelectorAll('[aria-invalid]')) input.removeAttribute('aria-invalid');
}

/** Disables a button while an action runs, so a double click does not send it twice. */
export async function busy(button, action) {
  button.disabled = true;
  button.setAttribute('aria-busy', 'true');
  try {
    return await action();
  } finally {
    button.disabled = false;
    button.removeAttribute('aria-busy');
  }
}

export function badge(status) {
  return h(`span.badge.status-${status || 'unknown'}`, status || 'unknown');
}

export function time(iso) {
  if (!iso) return h('span.muted', '—');
  const date = new Date(iso);
  return h('time', { datetime: iso, title: date.toISOString() }, formatTime(date));
}

export function formatTime(date) {
  return date.toLocaleString(undefined, {
    year: 'numeric', month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit', second: '2-digit',
  });
}

export function relative(iso) {
  if (!iso) return '—';
  const seconds = Math.round((new Date(iso).getTime() - Date.now()) / 1000);
  const units = [['day', 86400], ['hour', 3600], ['minute', 60], ['second', 1]];
  const format = new Intl.RelativeTimeFormat(undefined, { numeric: 'auto' });
  for (const [unit, size] of units) {
    if (Math.abs(seconds) >= size || unit === 'second') return format.format(Math.round(seconds / size), unit);
  }
  return '—';
}

export function duration(ms) {
  if (ms === null || ms === undefined) return '—';
  if (ms < 1000) return `${ms} ms`;
  const seconds = ms / 1000;
  if (seconds < 60) return `${seconds.toFixed(seconds < 10 ? 2 : 1)} s`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return `${minutes} min ${Math.round(seconds % 60)} s`;
  return `${Math.floor(minutes / 60)} h ${minutes % 60} min`;
}

/** CPU time in seconds, from the API's milliseconds. */
export function cpuTime(ms) {
  return ms === null || ms === undefined ? '—' : `${(ms / 1000).toFixed(2)} s`;
}

export function bytes(count) {
  if (count === null || count === undefined) return '—';
  const units = ['B', 'KiB', 'MiB', 'GiB'];
  let value = count;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value.toFixed(unit === 0 ? 0 : 1)} ${units[unit]}`;
}

/** A run's duration: from the API's `duration_ms`, or measured from its timestamps while it runs. */
export function runDuration(run) {
  if (run.duration_ms !== undefined && run.duration_ms !== null) return duration(run.duration_ms);
  if (run.started_at) {
    const end = run.finished_at ? new Date(run.finished_at) : new Date();
    return duration(end - new Date(run.started_at));
  }
  return '—';
}

export function table(headers, rows, { caption } = {}) {
  return h(
    'div.table-wrap',
    h(
      'table',
      caption ? h('caption.visually-hidden', caption) : null,
      h('thead', h('tr', headers.map((name) => h('th', { scope: 'col' }, name)))),
      h('tbody', rows),
    ),
  );
}

export function pageHeader(title, ...actions) {
  return h('div.page-header', h('h1', title), h('div.actions', actions));
}

/** Holds back a burst of calls (live events, keystrokes) into one call after `ms` of quiet. */
export function debounce(fn, ms) {
  let timer = null;
  const wrapped = (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
  wrapped.cancel = () => clearTimeout(timer);
  return wrapped;
}
