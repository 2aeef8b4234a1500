// Live updates: one `GET /events` stream for the whole dashboard, fanned out to the pages that listen for runs,
// tasks or agents. Pages refetch what an event touches; nothing polls on a timer. After a dropped connection
// it reconnects with a growing delay; a server without the stream (404) is reported, not retried.

import { stream } from './api.js';

const listeners = new Set();
let controller = null;
let attempt = 0;
let reconnect = null;

function indicator(state, text) {
  const el = document.getElementById('live');
  if (!el) return;
  el.dataset.state = state;
  el.querySelector('.live-text').textContent = text;
}

/** The resource an event is about (`run`, `task`, `agent`), whatever way the server names it. */
function kindOf(event) {
  const data = event.data && typeof event.data === 'object' ? event.data : {};
  const name = event.event !== 'message' ? event.event : data.type || data.kind || data.resource || data.resource_type;
  return String(name || '').split(/[.:_/]/)[0].replace(/s$/, '');
}

function dispatch(event) {
  const kind = kindOf(event);
  for (const listener of listeners) {
    if (listener.kinds.includes(kind)) listener.fn(event.data, kind);
  }
}

async function connect() {
  controller = new AbortController();
  const own = controller;
  indicator('connecting', 'connecting');
  try {
    await stream('/events', {
      signal: own.signal,
      onOpen: () => {
        attempt = 0;
        indicator('on', 'live');
      },
      onEvent: dispatch,
    });
  } catch (error) {
    if (own.signal.aborted) return;
    if (error.status === 404) {
      indicator('off', 'no live updates');
      return;
    }
    if (error.status === 401) return;
  }
  if (own.signal.aborted) return;
  indicator('off', 'reconnecting');
  attempt += 1;
  reconnect = setTimeout(connect, Math.min(30000, 1000 * 2 ** Math.min(attempt, 5)));
}

export function startLive() {
  if (controller && !controller.signal.aborted) return;
  attempt = 0;
  connect();
}

export function stopLive() {
  clearTimeout(reconnect);
  if (controller) controller.abort();
  controller = null;
  indicator('off', 'offline');
}

/** Calls `fn(data, kind)` for events about any of `kinds`; returns the function that stops listening. */
export function onLive(kinds, fn) {
  const listener = { kinds, fn };
  listeners.add(listener);
  return () => listeners.delete(listener);
}
