// A code editor that stays a plain <textarea> (so it keeps the browser's undo, selection, spell-check off and
// accessibility) with a gutter of line numbers beside it and a marker for the line the server rejected.

import { h } from './dom.js';

const INDENT = '    ';

export function createEditor({ value = '', label = 'Source', readOnly = false } = {}) {
  const gutter = h('div.gutter', { 'aria-hidden': 'true' });
  const area = h('textarea.code', {
    spellcheck: false, autocapitalize: 'off', autocomplete: 'off', wrap: 'off', readOnly,
    'aria-label': label, name: 'content',
  });
  area.value = value;
  const message = h('p.editor-error', { role: 'alert', hidden: true });
  const hint = h('p.hint', 'Tab indents; press Esc, then Tab, to leave the editor.');
  const root = h('div.editor', { dataset: { field: 'content' } }, h('div.editor-body', gutter, area), message,
    readOnly ? null : hint);
  let errorLine = null;
  let escaped = false;

  function renderGutter() {
    const lines = area.value.split('\n').length;
    const numbers = [];
    for (let i = 1; i <= lines; i += 1) {
      numbers.push(h(i === errorLine ? 'span.line.error-line' : 'span.line', String(i)));
    }
    gutter.replaceChildren(...numbers);
    gutter.scrollTop = area.scrollTop;
  }

  area.addEventListener('input', () => {
    if (errorLine !== null) clearError();
    renderGutter();
  });
  area.addEventListener('scroll', () => {
    gutter.scrollTop = area.scrollTop;
  });
  area.addEventListener('keydown', (event) => {
    if (event.key === 'Escape') {
      escaped = true;
      return;
    }
    if (event.key === 'Tab' && !escaped && !readOnly && !event.ctrlKey && !event.metaKey) {
      event.preventDefault();
      if (event.shiftKey) outdent();
      else area.setRangeText(INDENT, area.selectionStart, area.selectionEnd, 'end');
      renderGutter();
    }
    escaped = false;
  });

  function outdent() {
    const start = area.value.lastIndexOf('\n', area.selectionStart - 1) + 1;
    if (area.value.startsWith(INDENT, start)) {
      const caret = area.selectionStart;
      area.setRangeText('', start, start + INDENT.length, 'preserve');
      area.selectionStart = area.selectionEnd = Math.max(start, caret - INDENT.length);
    }
  }

  function clearError() {
    errorLine = null;
    message.hidden = true;
    message.textContent = '';
    area.removeAttribute('aria-invalid');
    renderGutter();
  }

  /** Marks the server's error: at "line N, column M" when its message names them, otherwise below the editor. */
  function showError(detail) {
    const position = /line (\d+)(?:, column (\d+))?/.exec(detail);
    errorLine = position ? Number(position[1]) : null;
    message.textContent = detail.replace(/^content: /, '');
    message.hidden = false;
    area.setAttribute('aria-invalid', 'true');
    renderGutter();
    if (errorLine !== null) {
      const lines = area.value.split('\n');
      const column = position[2] ? Number(position[2]) : 1;
      let offset = 0;
      for (let i = 0; i < errorLine - 1 && i < lines.length; i += 1) offset += lines[i].length + 1;
      offset += Math.max(0, Math.min(column - 1, (lines[errorLine - 1] || '').length));
      area.focus();
      area.setSelectionRange(offset, offset);
      const lineHeight = parseFloat(getComputedStyle(area).lineHeight) || 20;
      area.scrollTop = Math.max(0, (errorLine - 3) * lineHeight);
      message.dataset.line = String(errorLine);
    }
  }

  renderGutter();
  return {
    root,
    get value() { return area.value; },
    set value(text) { area.value = text; clearError(); },
    showError,
    clearError,
    focus: () => area.focus(),
  };
}
