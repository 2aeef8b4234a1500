// Export: everything this user may see, fetched through the same API, as one JSON file. Sections the role
// cannot read (or that this server lacks) are listed under `unavailable` rather than failing the export.

import { api, all } from '../api.js';
import { h, mount, pageHeader, busy, toast } from '../dom.js';

// [name, path, role needed, paged]: the server refuses query parameters a route does not declare, so the
// unpaged list of one's own tokens is fetched without `limit` and `offset`.
const SECTIONS = [
  ['scripts', '/scripts'], ['tasks', '/tasks'], ['runs', '/runs'], ['agents', '/agents'], ['audit', '/audit'],
  ['users', '/users', 'admin'], ['tokens', '/tokens', null, false],
];

async function collect(ctx, progress) {
  const data = { exported_at: new Date().toISOString(), exported_by: ctx.user.email, server: location.origin, unavailable: {} };
  for (const [name, path, role, paged = true] of SECTIONS) {
    if (role && !ctx.can(role)) continue;
    progress(`Fetching ${name}…`);
    try {
      data[name] = paged ? await all(path) : await api(path);
    } catch (error) {
      data.unavailable[name] = error.detail || error.message;
    }
  }
  if (data.scripts) {
    progress('Fetching script versions…');
    for (const script of data.scripts) {
      try {
        script.versions = await all(`/scripts/${script.id}/versions`);
      } catch (error) {
        data.unavailable[`scripts/${script.id}/versions`] = error.detail || error.message;
      }
    }
  }
  return data;
}

export async function render(main, _params, ctx) {
  const status = h('p.muted', { role: 'status' });
  const button = h('button.button.primary', { type: 'button' }, 'Download JSON export');
  button.addEventListener('click', () => busy(button, async () => {
    const data = await collect(ctx, (text) => { status.textContent = text; });
    const blob = new Blob([JSON.stringify(data, null, 2)], { type: 'application/json' });
    const link = h('a', { href: URL.createObjectURL(blob), download: `automa-export-${data.exported_at.slice(0, 19).replace(/:/g, '')}.json` });
    document.body.append(link);
    link.click();
    link.remove();
    // The download reads the blob after this task ends; free it only then.
    setTimeout(() => URL.revokeObjectURL(link.href), 0);
    const missing = Object.keys(data.unavailable);
    status.textContent = missing.length ? `Exported; not available: ${missing.join(', ')}.` : 'Exported.';
    toast('Export downloaded.', 'success');
  }));
  mount(main, pageHeader('Export'),
    h('section.panel', h('div.panel-body',
      h('p', 'Download everything you can see — scripts with all their versions, tasks, runs, agents, the audit log',
        ctx.can('admin') ? ', users' : '', ' and your API tokens (never their secret values) — as one JSON file.'),
      h('div.actions', button), status)));
  return undefined;
}
