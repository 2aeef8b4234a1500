// The schedule editor: kind, time zone, the kind's own fields and the misfire policy, with a preview of the next
// five fires computed by the server (`GET /schedule/preview`) in the schedule's time zone, so the preview is
// exactly what the scheduler will do, DST included.

import { api } from './api.js';
import { h, mount, field, loading, debounce } from './dom.js';

const UNITS = [['seconds', 1], ['minutes', 60], ['hours', 3600], ['days', 86400]];
const PRESETS = [
  ['Every 5 minutes', '*/5 * * * *'],
  ['Hourly', '0 * * * *'],
  ['Daily 09:00', '0 9 * * *'],
  ['Weekdays 09:00', '0 9 * * 1-5'],
];

function browserZone() {
  return Intl.DateTimeFormat().resolvedOptions().timeZone || 'UTC';
}

function zoneParts(ms, tz) {
  const parts = new Intl.DateTimeFormat('en-US', {
    timeZone: tz, hourCycle: 'h23', year: 'numeric', month: '2-digit', day: '2-digit', hour: '2-digit', minute: '2-digit', second: '2-digit',
  }).formatToParts(new Date(ms));
  const get = (type) => Number(parts.find((p) => p.type === type).value);
  return { year: get('year'), month: get('month'), day: get('day'), hour: get('hour'), minute: get('minute'), second: get('second') };
}

function offsetAt(ms, tz) {
  const p = zoneParts(ms, tz);
  return Date.UTC(p.year, p.month - 1, p.day, p.hour, p.minute, p.second) - Math.floor(ms / 1000) * 1000;
}

/** A wall-clock time (`YYYY-MM-DDTHH:MM`) in `tz` as a UTC ISO string. */
export function zonedToUtc(wall, tz) {
  const [date, clock] = wall.split('T');
  const [year, month, day] = date.split('-').map(Number);
  const [hour, minute] = clock.split(':').map(Number);
  const guess = Date.UTC(year, month - 1, day, hour, minute);
  const first = guess - offsetAt(guess, tz);
  return new Date(guess - offsetAt(first, tz)).toISOString();
}

function utcToWall(iso, tz) {
  const p = zoneParts(new Date(iso).getTime(), tz);
  const pad = (n) => String(n).padStart(2, '0');
  return `${p.year}-${pad(p.month)}-${pad(p.day)}T${pad(p.hour)}:${pad(p.minute)}`;
}

export function describeSchedule(schedule) {
  if (!schedule) return h('span.muted', 'manual only');
  if (schedule.kind === 'cron') return h('span', h('code', schedule.cron), h('span.muted', ` ${schedule.timezone}`));
  if (schedule.kind === 'interval') {
    const [unit, size] = [...UNITS].reverse().find(([, s]) => schedule.every_seconds % s === 0);
    return h('span', `every ${schedule.every_seconds / size} ${unit}`);
  }
  return h('span', 'once ', h('span.muted', schedule.at ? new Date(schedule.at).toLocaleString() : ''));
}

let zones = null;

function zoneList() {
  if (!zones) {
    const names = typeof Intl.supportedValuesOf === 'function' ? Intl.supportedValuesOf('timeZone') : [];
    zones = h('datalist', { id: 'timezones' }, ['UTC', ...names].map((name) => h('option', { value: name })));
    document.body.append(zones);
  }
  return zones;
}

/** The editor for a task's `schedule`; `value()` gives the object to send (null for no schedule). */
export function createScheduleEditor(schedule) {
  zoneList();
  const initial = schedule || { kind: 'none', timezone: browserZone() };
  const radios = ['none', 'once', 'cron', 'interval'].map((kind) => h('label.radio',
    h('input', { type: 'radio', name: 'schedule-kind', value: kind, checked: initial.kind === kind }),
    { none: 'No schedule', once: 'Once', cron: 'Cron', interval: 'Interval' }[kind]));
  const kindGroup = h('fieldset.kinds', { dataset: { field: 'schedule' } }, h('legend', 'Runs by itself'), radios,
    h('p.field-error', { hidden: true }));
  const timezone = h('input', { name: 'timezone', list: 'timezones', value: initial.timezone || 'UTC', autocomplete: 'off', spellcheck: false });
  const at = h('input', { type: 'datetime-local', name: 'at', value: initial.at ? utcToWall(initial.at, initial.timezone || 'UTC') : '' });
  const cron = h('input', { name: 'cron', value: initial.cron || '', placeholder: '0 9 * * 1-5', spellcheck: false, autocomplete: 'off' });
  const [unitName, unitSize] = initial.every_seconds
    ? [...UNITS].reverse().find(([, s]) => initial.every_seconds % s === 0) : ['minutes', 60];
  const every = h('input', { type: 'number', name: 'every', min: 1, value: initial.every_seconds ? initial.every_seconds / unitSize : 15 });
  const unit = h('select', { name: 'unit', 'aria-label': 'Interval unit' }, UNITS.map(([name]) => h('option', { value: name, selected: name === unitName }, name)));
  const grace = h('input', { type: 'number', name: 'misfire_grace_seconds', min: 0, value: initial.misfire_grace_seconds ?? 60 });
  const maxInstances = h('input', { type: 'number', name: 'max_instances', min: 1, value: initial.max_instances ?? 1 });
  const jitter = h('input', { type: 'number', name: 'jitter_seconds', min: 0, value: initial.jitter_seconds ?? 0 });
  const coalesce = h('input', { type: 'checkbox', name: 'coalesce', checked: initial.coalesce ?? true });
  const presets = h('div.presets', PRESETS.map(([label, expression]) => h('button.button.small', {
    type: 'button', onclick: () => { cron.value = expression; update(); },
  }, label)));

  const sections = {
    once: h('div.kind-fields', field('At (in the time zone below)', at, { name: 'schedule.at' })),
    cron: h('div.kind-fields', field('Cron expression', cron, { name: 'schedule.cron', hint: 'minute hour day month weekday; six fields put seconds first.' }), presets),
    interval: h('div.kind-fields', h('div.row.tight', field('Every', every, { name: 'schedule.every_seconds' }), field('Unit', unit))),
  };
  const zoneField = field('Time zone', timezone, { name: 'schedule.timezone', hint: 'IANA name, e.g. Europe/Berlin.' });
  const advanced = h('details.advanced', h('summary', 'Misfires and concurrency'),
    h('div.row', field('Misfire grace (s)', grace, { name: 'schedule.misfire_grace_seconds', hint: 'A fire later than this is skipped and recorded.' }),
      field('Max instances', maxInstances, { name: 'schedule.max_instances' }),
      field('Jitter (s)', jitter, { name: 'schedule.jitter_seconds' })),
    h('label.check', coalesce, ' Coalesce missed fires into one run'));
  const preview = h('div.preview', { 'aria-live': 'polite', id: 'schedule-preview' });
  const previewPanel = h('div.preview-panel', h('h3', 'Next fires'), preview);
  const details = h('div.schedule-details', sections.once, sections.cron, sections.interval, zoneField, advanced);
  const root = h('div.schedule-editor', kindGroup, h('div.schedule-grid', details, previewPanel));

  function kind() {
    return radios.map((label) => label.querySelector('input')).find((input) => input.checked).value;
  }

  function value() {
    const k = kind();
    if (k === 'none') return null;
    const tz = timezone.value.trim() || 'UTC';
    const result = {
      kind: k, timezone: tz, misfire_grace_seconds: Number(grace.value), max_instances: Number(maxInstances.value),
      jitter_seconds: Number(jitter.value), coalesce: coalesce.checked,
    };
    if (k === 'cron') result.cron = cron.value.trim();
    if (k === 'interval') result.every_seconds = Math.round(Number(every.value) * UNITS.find(([n]) => n === unit.value)[1]);
    if (k === 'once' && at.value) {
      try {
        result.at = zonedToUtc(at.value, tz);
      } catch {
        result.at = `${at.value}:00Z`;
      }
    }
    return result;
  }

  function markField(name, detail) {
    for (const slot of root.querySelectorAll('.field-error')) slot.hidden = true;
    for (const input of root.querySelectorAll('[aria-invalid]')) input.removeAttribute('aria-invalid');
    if (!name) return;
    const wrapper = root.querySelector(`[data-field="schedule.${name}"]`);
    if (!wrapper) return;
    const slot = wrapper.querySelector('.field-error');
    slot.textContent = detail;
    slot.hidden = false;
    const input = wrapper.querySelector('input, select');
    if (input) input.setAttribute('aria-invalid', 'true');
  }

  let controller = null;
  async function refreshPreview() {
    const schedule = value();
    if (controller) controller.abort();
    if (!schedule) {
      mount(preview, h('p.muted', 'No schedule: the task runs only when started by hand or through the API.'));
      markField(null);
      return;
    }
    controller = new AbortController();
    const own = controller;
    mount(preview, loading('Computing'));
    try {
      const result = await api('/schedule/preview', {
        signal: own.signal,
        query: { kind: schedule.kind, cron: schedule.cron, every_seconds: schedule.every_seconds, at: schedule.at, timezone: schedule.timezone, count: 5 },
      });
      markField(null);
      mount(preview, result.fires.length === 0
        ? h('p.muted', 'This schedule will not fire again.')
        : h('ol.fires', result.fires.map((fire) => h('li', h('time', { datetime: fire.at }, fire.local)))));
    } catch (error) {
      if (own.signal.aborted) return;
      markField(error.field, error.detail);
      mount(preview, h('p.preview-error', { role: 'alert' }, error.detail || error.message));
    }
  }
  const update = debounce(refreshPreview, 250);

  function showKind() {
    const k = kind();
    for (const [name, section] of Object.entries(sections)) section.hidden = name !== k;
    zoneField.hidden = k === 'none';
    advanced.hidden = k === 'none';
    details.hidden = k === 'none';
    root.classList.toggle('unscheduled', k === 'none');
  }
  root.addEventListener('input', () => {
    showKind();
    update();
  });
  root.addEventListener('change', () => {
    showKind();
    update();
  });
  showKind();
  refreshPreview();
  return { root, value, stop: () => { update.cancel(); if (controller) controller.abort(); } };
}
