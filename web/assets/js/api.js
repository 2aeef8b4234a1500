// The only way the dashboard talks to the server: the public JSON API with a Bearer session token.
//
// The token lives in sessionStorage, not localStorage: it is scoped to one tab and gone when the tab closes,
// so a forgotten laptop or a shared browser profile does not keep a live admin session, and a new tab asks to
// log in again (the session token is short-lived anyway). It is never put in a URL, so it cannot leak into
// server logs or the Referer header; that is also why streams are read with fetch rather than EventSource,
// which cannot send an Authorization header.

const TOKEN_KEY = 'automa.session';

export const session = {
  get token() {
    return sessionStorage.getItem(TOKEN_KEY);
  },
  set(token) {
    sessionStorage.setItem(TOKEN_KEY, token);
  },
  clear() {
    sessionStorage.removeItem(TOKEN_KEY);
  },
};

/** An error answer of the API, carrying its `detail` and, for 422, the rejected `field`. */
export class ApiError extends Error {
  constructor(status, body) {
    const detail = (body && body.detail) || `the server answered ${status}`;
    super(detail);
    this.status = status;
    this.detail = detail;
    this.field = body && body.field;
  }
}

function url(path, query) {
  const params = new URLSearchParams();
  for (const [key, value] of Object.entries(query || {})) {
    if (value !== undefined && value !== null && value !== '') params.set(key, String(value));
  }
  const text = params.toString();
  return text ? `${path}?${text}` : path;
}

function headers(extra) {
  const result = { Accept: 'application/json', ...extra };
  if (session.token) result.Authorization = `Bearer ${session.token}`;
  return result;
}

async function failure(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  // An expired or revoked session ends here, wherever the request came from; the login page takes over.
  if (response.status === 401 && session.token) {
    session.clear();
    window.dispatchEvent(new CustomEvent('automa:signed-out', { detail: body && body.detail }));
  }
  return new ApiError(response.status, body);
}

/** Calls the API; resolves to the parsed JSON (null for 204), rejects with an ApiError. */
export async function api(path, { method = 'GET', body, form, query, signal } = {}) {
  const init = { method, signal, headers: headers() };
  if (form) {
    init.body = new URLSearchParams(form);
    init.headers['Content-Type'] = 'application/x-www-form-urlencoded';
  } else if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers['Content-Type'] = 'application/json';
  }
  let response;
  try {
    response = await fetch(url(path, query), init);
  } catch (error) {
    if (error.name === 'AbortError') throw error;
    throw new ApiError(0, { detail: 'the server cannot be reached' });
  }
  if (!response.ok) throw await failure(response);
  if (response.status === 204) return null;
  return response.json();
}

/** Every item of a paginated list, page by page (bounded, so an export of a huge history stays sane). */
export async function all(path, query = {}, maxItems = 5000) {
  const items = [];
  let offset = 0;
  let cursor = null;
  for (;;) {
    // A list that pages by cursor (runs) is followed by it: every page then costs the same.
    const paging = cursor ? { cursor } : { offset };
    const page = await api(path, { query: { ...query, limit: 500, ...paging } });
    items.push(...page.items);
    offset += page.items.length;
    cursor = page.next_cursor;
    const more = page.next_cursor !== undefined ? Boolean(page.next_cursor) : offset < page.total;
    if (page.items.length === 0 || !more || items.length >= maxItems) return items;
  }
}

/**
 * Follows a server-sent event stream. `onEvent({event, data, id})` gets each event with `data` parsed as JSON
 * when it is JSON. Resolves when the server ends the stream; rejects on an error or when `signal` aborts.
 */
export async function stream(path, { query, signal, onOpen, onEvent }) {
  let response;
  try {
    response = await fetch(url(path, query), { signal, headers: headers({ Accept: 'text/event-stream' }) });
  } catch (error) {
    if (error.name === 'AbortError') throw error;
    throw new ApiError(0, { detail: 'the server cannot be reached' });
  }
  if (!response.ok) throw await failure(response);
  if (onOpen) onOpen();
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n?/g, '\n');
    let end;
    while ((end = buffer.indexOf('\n\n')) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const parsed = parseEvent(block);
      if (parsed) onEvent(parsed);
    }
  }
}

function parseEvent(block) {
  let event = 'message';
  let id = null;
  const data = [];
  for (const line of block.split('\n')) {
    if (!line || line.startsWith(':')) continue;
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
    if (field === 'event') event = value;
    else if (field === 'data') data.push(value);
    else if (field === 'id') id = value;
  }
  if (data.length === 0) return null;
  const text = data.join('\n');
  try {
    return { event, id, data: JSON.parse(text) };
  } catch {
    return { event, id, data: text };
  }
}
