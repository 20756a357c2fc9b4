// DOM building without innerHTML: API data (key names) is text, always.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith('on')) el.addEventListener(name.slice(2), value);
    else if (name === 'class') el.className = value;
    else el.setAttribute(name, value === true ? '' : String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

export function clear(el) { while (el.firstChild) el.firstChild.remove(); }

export function date(ms) {
  if (ms === null || ms === undefined) return '—';
  return new Date(ms).toISOString().replace('T', ' ').replace(/\.\d+Z$/, 'Z');
}

// `devboxes:write objects:read`, or `all` for a standard key.
export function compactScopes(key) {
  if (key.kind === 'standard') return 'all (standard)';
  return key.scopes
    .filter((s) => s.access_level !== 'ACCESS_LEVEL_NONE')
    .map((s) => `${s.resource_type.replace('RESOURCE_TYPE_', '').toLowerCase()}:${s.access_level.replace('ACCESS_LEVEL_', '').toLowerCase()}`)
    .join(' ');
}

export function levelOf(key, resource) {
  const s = key.scopes.find((e) => e.resource_type === `RESOURCE_TYPE_${resource}`);
  return s ? s.access_level.replace('ACCESS_LEVEL_', '') : 'NONE';
}

let dialogCount = 0;
// A modal dialog; `build(close)` returns its body. Removed from the DOM when it closes.
// `onclose` runs however it closes (a button, or Escape).
export function dialog(title, build, onclose) {
  const id = `dlg-${++dialogCount}`;
  const dlg = h('dialog', { 'aria-labelledby': id, class: 'dialog' });
  const opener = document.activeElement;
  const close = () => { dlg.close(); };
  dlg.addEventListener('close', () => {
    dlg.remove();
    if (opener && opener.isConnected) opener.focus();
    if (onclose) onclose();
  });
  dlg.append(h('h2', { id }, title), build(close));
  document.body.append(dlg);
  dlg.showModal();
  return dlg;
}

export function status(text) {
  const el = document.getElementById('status');
  el.textContent = text;
}

export function errorBox(err) {
  return h('p', { class: 'error', role: 'alert' }, err.plain ? err.plain() : String(err));
}
