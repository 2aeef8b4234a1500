// The script list, searchable by name.

import { api } from '../api.js';
import { h, mount, loading, empty, failure, table, time, pageHeader, debounce, bytes } from '../dom.js';
import { setQuery } from '../router.js';

export async function render(main, _params, ctx) {
  const search = h('input', { type: 'search', name: 'name', placeholder: 'Filter by name', value: ctx.query.get('name') || '', 'aria-label': 'Filter scripts by name' });
  const body = h('div', loading());
  const create = ctx.can('operator') ? h('a.button.primary', { href: '#/scripts/new' }, 'New script') : null;
  mount(main, pageHeader('Scripts', create), h('div.filters', search), body);

  async function load() {
    mount(body, loading());
    try {
      const page = await api('/scripts', { query: { name: search.value.trim(), limit: 200 } });
      if (page.items.length === 0) {
        mount(body, empty(search.value ? 'No script matches this filter.' : 'No scripts yet.',
          !search.value && create ? h('a.button', { href: '#/scripts/new' }, 'Create your first script') : null));
        return;
      }
      mount(body, table(['Name', 'Version', 'File', 'Size', 'Updated'], page.items.map((script) => h('tr',
        h('td', h('a', { href: `#/scripts/${script.id}` }, script.name), script.description ? h('div.muted.small', script.description) : null),
        h('td.num', `v${script.version}`), h('td', h('code', script.filename)), h('td.num', bytes(script.size)),
        h('td', time(script.updated_at))))));
    } catch (error) {
      mount(body, failure(error, load));
    }
  }
  const onSearch = debounce(() => {
    setQuery({ name: search.value.trim() });
    load();
  }, 250);
  search.addEventListener('input', onSearch);
  await load();
  return onSearch.cancel;
}
