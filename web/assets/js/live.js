// Live updates: one `GET /events` stream for the whole dashboard, fanned out by event type to the pages that
// listen. The server sends these types (crates/automa-server/src/events.rs, `GET /events`):
//   run   — a run was queued or changed state; data: the run, as `GET /runs/{id}` returns it
//   task  — a task was created, changed (paused and resumed too), deleted or fired; data: `{id}`
//   agent — an agent registered, changed or was updated; data: `{id}`
// Pages refetch what an event touches; nothing polls on a timer. After a dropped connection it reconnects with
// a growing delay; a server without the stream (404) is reported, not retried.

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

/** The event types the server sends; a page can only listen for these. */
const EVENT_TYPES = ['run', 'task', 'agent'];

function dispatch({ event: type, data }) {
  for (const listener of listeners) {
    if (listener.types.includes(type)) listener.fn(data, type);
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

/** Calls `fn(data, type)` for events of any of `types`; returns the function that stops listening. */
export function onLive(types, fn) {
  const unknown = types.filter((type) => !EVENT_TYPES.includes(type));
  if (unknown.length) throw new Error(`the server sends no ${unknown.join(', ')} events`);
  const listener = { types, fn };
  listeners.add(listener);
  return () => listeners.delete(listener);
}
