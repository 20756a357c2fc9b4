// The console's pages. Each takes the page element and the signed-in key's
// own view (`me`), and shows what the API answers.

import { call, allKeys, descendants, RESOURCES, LEVELS, ApiError } from './api.js';
import { h, clear, date, compactScopes, levelOf, dialog, status, errorBox } from './dom.js';

const PAGE = 20;

export function canWrite(me) { return me !== null && levelOf(me, 'ACCOUNT') === 'WRITE'; }

function fail(main, err) {
  clear(main);
  main.append(h('h1', {}, 'Error'), errorBox(err));
}

function keyLink(id) {
  return id ? h('a', { href: `#/keys/${encodeURIComponent(id)}` }, id) : '—';
}

// ---- Keys ----

export async function keysPage(main, me, config) {
  clear(main);
  main.append(h('h1', {}, 'Keys'));
  let keys;
  try { keys = await allKeys(); } catch (e) { main.append(errorBox(e)); return; }
  if (keys.truncated) {
    main.append(h('p', { class: 'warning', id: 'truncated' },
      `Showing the first ${keys.length} keys by id; more exist, and the filter and counts here see only these. `
      + 'keygate list --name TEXT searches them all.'));
  }
  let filter = '';
  let offset = 0;
  const filterInput = h('input', { id: 'filter', type: 'search', autocomplete: 'off' });
  const tbody = h('tbody');
  const pageInfo = h('span', { class: 'page-info', 'aria-live': 'polite' });
  const prev = h('button', { type: 'button', onclick: () => { offset -= PAGE; render(); } }, 'Previous');
  const next = h('button', { type: 'button', onclick: () => { offset += PAGE; render(); } }, 'Next');
  filterInput.addEventListener('input', () => { filter = filterInput.value.trim().toLowerCase(); offset = 0; render(); });
  const bar = h('div', { class: 'bar' },
    h('label', { for: 'filter' }, 'Filter by name or id '), filterInput,
    canWrite(me)
      ? h('button', { type: 'button', id: 'create', class: 'primary', onclick: () => createDialog(me) }, 'Create key')
      : h('span', { class: 'note' }, 'Read-only: this key may not change keys.'));
  // The table scrolls sideways on a narrow screen: a focusable region, so a keyboard can scroll it.
  main.append(bar, h('div', { class: 'scroll', tabindex: 0, role: 'region', 'aria-label': 'Keys table' }, h('table', { class: 'keys' },
    h('caption', { class: 'sr-only' }, 'Keys that are not revoked'),
    h('thead', {}, h('tr', {}, ['Name', 'Id', 'Kind', 'Scopes', 'Created', 'Expires', 'Last used', 'Creator']
      .map((t) => h('th', { scope: 'col' }, t)))),
    tbody)), h('div', { class: 'pager' }, prev, pageInfo, next));
  function render() {
    const shown = keys.filter((k) => !filter || k.name.toLowerCase().includes(filter) || k.id.toLowerCase().includes(filter));
    clear(tbody);
    for (const k of shown.slice(offset, offset + PAGE)) {
      tbody.append(h('tr', {},
        h('td', {}, h('a', { href: `#/keys/${k.id}` }, k.name)),
        h('td', { class: 'mono' }, k.id), h('td', {}, k.kind),
        h('td', { class: 'scopes' }, compactScopes(k)),
        h('td', {}, date(k.created_at_ms)), h('td', {}, date(k.expires_at_ms)),
        h('td', {}, date(k.last_used_at_ms)), h('td', { class: 'mono' }, keyLink(k.creator_id))));
    }
    if (shown.length === 0) tbody.append(h('tr', {}, h('td', { colspan: 8 }, 'No keys.')));
    prev.disabled = offset === 0;
    next.disabled = offset + PAGE >= shown.length;
    pageInfo.textContent = shown.length ? `${offset + 1}–${Math.min(offset + PAGE, shown.length)} of ${shown.length}` : '0 of 0';
  }
  render();
}

// ---- The scope matrix ----

// Radio buttons per resource: arrow keys move within a row (native radios).
function matrix(initial, readOnly) {
  const table = h('table', { class: 'matrix' },
    h('caption', {}, 'Scopes'),
    h('thead', {}, h('tr', {}, h('th', { scope: 'col' }, 'Resource'), LEVELS.map((l) => h('th', { scope: 'col' }, l)))));
  const tbody = h('tbody');
  for (const r of RESOURCES) {
    const level = initial(r);
    const label = r.toLowerCase().replace('_', ' ');
    const rowId = `res-${r}`;
    const cells = LEVELS.map((l) => {
      if (readOnly) {
        return h('td', { class: l === level ? 'on' : 'off' }, l === level ? `● ${l}` : '·');
      }
      const id = `scope-${r}-${l}`;
      return h('td', {}, h('input', {
        type: 'radio', name: `scope-${r}`, id, value: l, checked: l === level,
        'aria-labelledby': `${rowId} lbl-${id}`,
      }), h('label', { for: id, id: `lbl-${id}`, class: 'sr-only' }, l));
    });
    tbody.append(h('tr', {}, h('th', { scope: 'row', id: rowId }, label), cells));
  }
  table.append(tbody);
  return table;
}

function readMatrix(form) {
  return RESOURCES.map((r) => ({
    resource_type: `RESOURCE_TYPE_${r}`,
    access_level: `ACCESS_LEVEL_${form.querySelector(`input[name="scope-${r}"]:checked`).value}`,
  })).filter((s) => s.access_level !== 'ACCESS_LEVEL_NONE');
}

// ---- Create ----

function field(id, label, attrs = {}) {
  return h('p', { class: 'field' }, h('label', { for: id }, label), h('input', { id, name: id, ...attrs }));
}

export function createDialog(me) {
  dialog('Create a key', (close) => {
    const error = h('div');
    const scopes = h('fieldset', { id: 'scopes-fieldset' }, h('legend', {}, 'Scopes of the restricted key'), matrix(() => 'NONE', false));
    const kind = h('fieldset', {}, h('legend', {}, 'Kind'),
      h('span', { class: 'choice' }, h('input', { type: 'radio', name: 'kind', id: 'kind-standard', value: 'standard' }),
        h('label', { for: 'kind-standard' }, 'Standard (every scope)')),
      h('span', { class: 'choice' }, h('input', { type: 'radio', name: 'kind', id: 'kind-restricted', value: 'restricted', checked: true }),
        h('label', { for: 'kind-restricted' }, 'Restricted')));
    const form = h('form', { class: 'create' },
      field('name', 'Name', { required: true, maxlength: 256, autocomplete: 'off' }),
      kind,
      field('expires', 'Expires (UTC; empty for never)', { type: 'datetime-local' }),
      scopes,
      h('fieldset', {}, h('legend', {}, 'Limits (optional)'),
        field('rate-limit', 'Rate limit: requests', { type: 'number', min: 1, max: 1000000 }),
        field('rate-period', 'per milliseconds', { type: 'number', min: 1, value: 1000 }),
        field('credits', 'Credits', { type: 'number', min: 0 }),
        field('refill-amount', 'Refill amount', { type: 'number', min: 0 }),
        field('refill-interval', 'Refill every (ms)', { type: 'number', min: 1000 })),
      error,
      h('div', { class: 'actions' },
        h('button', { type: 'button', onclick: close }, 'Cancel'),
        h('button', { type: 'submit', class: 'primary', id: 'create-submit' }, 'Create')));
    kind.addEventListener('change', () => { scopes.hidden = form.elements.kind.value !== 'restricted'; });
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      clear(error);
      const restricted = form.elements.kind.value === 'restricted';
      const body = { name: form.elements.name.value };
      const exp = form.elements.expires.value;
      if (exp) body.expires_at_ms = Date.parse(`${exp}Z`);
      if (restricted) body.scopes = readMatrix(form);
      const num = (n) => (form.elements[n].value === '' ? null : Number(form.elements[n].value));
      if (num('rate-limit') !== null) body.rate_limit = { limit: num('rate-limit'), period_ms: num('rate-period') };
      if (num('credits') !== null) {
        body.credits = { remaining: num('credits'), refill: null };
        if (num('refill-amount') !== null) body.credits.refill = { amount: num('refill-amount'), interval_ms: num('refill-interval') };
      }
      try {
        const created = await call('POST', restricted ? '/v1/restricted_keys' : '/v1/apikeys', body);
        close();
        secretDialog('Key created', created, () => { location.hash = `#/keys/${created.id}`; });
      } catch (e) {
        error.append(errorBox(e));
      }
    });
    return form;
  });
}

// Shows a secret once. The dialog, and the secret with it, leaves the DOM on
// close (a button or Escape); the input is emptied too.
export function secretDialog(title, created, after) {
  const out = h('input', { id: 'secret', readonly: true, value: created.key_secret, class: 'mono secret', 'aria-describedby': 'secret-warning', size: 72 });
  const copied = h('span', { 'aria-live': 'polite', id: 'copied' });
  dialog(title, (close) => h('div', {},
    h('p', { id: 'secret-warning', class: 'warning' }, 'Copy this secret now. It is shown only once: the server keeps only its digest, and the console forgets it when you close this dialog.'),
    h('p', { class: 'field' }, h('label', { for: 'secret' }, 'Secret'), out),
    h('div', { class: 'actions' },
      h('button', { type: 'button', id: 'copy', onclick: async () => {
        try { await navigator.clipboard.writeText(out.value); copied.textContent = 'Copied.'; } catch { out.select(); copied.textContent = 'The browser refused to copy: the secret is selected, press Ctrl+C.'; }
      } }, 'Copy'), copied,
      h('button', { type: 'button', id: 'secret-done', class: 'primary', onclick: close }, 'I have copied it, close'))),
  () => {
    out.value = '';
    out.removeAttribute('value');
    if (after) after();
  });
}

// ---- Key detail ----

export async function keyPage(main, me, config, id) {
  clear(main);
  let key;
  try { key = await call('GET', `/v1/keys/${encodeURIComponent(id)}`); } catch (e) { fail(main, e); return; }
  main.append(h('h1', {}, 'Key ', h('span', { class: 'name' }, key.name)),
    h('dl', { class: 'facts' },
      ...[['Id', key.id], ['Kind', key.kind], ['Created', date(key.created_at_ms)], ['Expires', date(key.expires_at_ms)],
        ['Last used', date(key.last_used_at_ms)], ['Creator', key.creator_id || '—'],
        ['Rate limit', key.rate_limit ? `${key.rate_limit.limit} per ${key.rate_limit.period_ms} ms` : 'none'],
        ['Credits', key.credits ? `${key.credits.remaining}${key.credits.refill ? `, refilled to ${key.credits.refill.amount} every ${key.credits.refill.interval_ms} ms` : ''}` : 'none'],
      ].flatMap(([k, v]) => [h('dt', {}, k), h('dd', { class: k === 'Id' ? 'mono' : null }, v)])));
  if (canWrite(me)) {
    main.append(h('div', { class: 'bar' },
      h('button', { type: 'button', id: 'roll', onclick: () => rollDialog(key) }, 'Roll…'),
      h('button', { type: 'button', id: 'revoke', class: 'danger', onclick: () => revokeDialog(key, config) }, 'Revoke…')));
  }
  const usage = h('section', { 'aria-labelledby': 'usage-h', class: 'usage' });
  const kids = h('section', { 'aria-labelledby': 'kids-h' }, h('h2', { id: 'kids-h' }, 'Descendants'));
  const events = h('section', { 'aria-labelledby': 'ev-h' }, h('h2', { id: 'ev-h' }, 'Events'));
  main.append(h('div', { class: 'split' }, matrix((r) => levelOf(key, r), true), usage), kids, events);
  usageChart(usage, key.id);
  try {
    const all = await allKeys();
    const d = descendants(key.id, all);
    const count = all.truncated ? `at least ${d.length}, among the first ${all.length} keys` : `${d.length}`;
    kids.append(h('p', {}, config.cascade
      ? `Keys minted from this key, directly or transitively (${count}); revoking it revokes them too (--attenuate).`
      : `Keys minted from this key, directly or transitively (${count}); this server does not cascade revocations.`));
    if (d.length) kids.append(keyTable(d));
  } catch (e) { kids.append(errorBox(e)); }
  try {
    const evs = await allEvents((e) => e.key_id === key.id || e.new_key_id === key.id);
    events.append(eventTable(evs));
    if (evs.truncated) {
      events.append(h('p', { class: 'warning' }, `Only the first ${evs.searched} events of the audit log were searched; `
        + 'keygate events --key ID reads them all.'));
    }
  } catch (e) { events.append(errorBox(e)); }
}

function keyTable(keys) {
  return h('div', { class: 'scroll', tabindex: 0, role: 'region', 'aria-label': 'Descendants table' }, h('table', {}, h('thead', {}, h('tr', {}, ['Name', 'Id', 'Kind', 'Creator'].map((t) => h('th', { scope: 'col' }, t)))),
    h('tbody', {}, keys.map((k) => h('tr', {}, h('td', {}, h('a', { href: `#/keys/${k.id}` }, k.name)),
      h('td', { class: 'mono' }, k.id), h('td', {}, k.kind), h('td', { class: 'mono' }, k.creator_id || '—'))))));
}

function rollDialog(key) {
  dialog(`Roll “${key.name}”`, (close) => {
    const error = h('div');
    const overlaps = [['0', 'End the old key now'], ['60000', '1 minute'], ['900000', '15 minutes'], ['3600000', '1 hour'], ['86400000', '1 day'], ['604800000', '7 days']];
    const form = h('form', {},
      h('p', {}, 'A new key replaces this one, with the same kind, name, scopes and expiry. The old key keeps working for the overlap.'),
      h('p', { class: 'field' }, h('label', { for: 'overlap' }, 'Overlap'),
        h('select', { id: 'overlap' }, overlaps.map(([v, t]) => h('option', { value: v, selected: v === '900000' }, t)))),
      error,
      h('div', { class: 'actions' }, h('button', { type: 'button', onclick: close }, 'Cancel'),
        h('button', { type: 'submit', class: 'primary', id: 'roll-submit' }, 'Roll')));
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      clear(error);
      try {
        const created = await call('POST', `/v1/keys/${key.id}/roll`, { overlap_ms: Number(form.querySelector('#overlap').value) });
        close();
        secretDialog('Key rolled', created, () => { location.hash = `#/keys/${created.id}`; });
      } catch (e) { error.append(errorBox(e)); }
    });
    return form;
  });
}

async function revokeDialog(key, config) {
  let n = null;
  let nError = null;
  try {
    const all = await allKeys();
    n = descendants(key.id, all).length;
    // Counted among the keys read: with more, the cascade may reach further.
    if (all.truncated) n = `at least ${n}`;
  } catch (e) { nError = e; }
  dialog(`Revoke “${key.name}”`, (close) => {
    const error = h('div');
    const confirmInput = h('input', { id: 'confirm', autocomplete: 'off' });
    const submit = h('button', { type: 'submit', class: 'danger', id: 'revoke-submit', disabled: true }, 'Revoke');
    confirmInput.addEventListener('input', () => { submit.disabled = ![key.name, key.id].includes(confirmInput.value); });
    const cascade = nError ? errorBox(nError)
      : h('p', { id: 'cascade', class: 'warning' }, config.cascade
        ? `This also revokes its ${n} descendant${n === 1 ? '' : 's'} (the keys minted from it), at once.`
        : `This revokes this key only; the ${n} key${n === 1 ? '' : 's'} minted from it stay valid (the server does not cascade).`);
    const form = h('form', {}, cascade,
      h('p', { class: 'field' }, h('label', { for: 'confirm' }, 'Type the key’s name or id to confirm'), confirmInput),
      error, h('div', { class: 'actions' }, h('button', { type: 'button', onclick: close }, 'Cancel'), submit));
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      try {
        await call('DELETE', `/v1/keys/${key.id}`);
        close();
        status(`Revoked ${key.name}.`);
        location.hash = '#/keys';
      } catch (e) { clear(error); error.append(errorBox(e)); }
    });
    return form;
  });
}

// ---- Usage ----

const RANGES = { minute: 3600e3, hour: 86400e3, day: 30 * 86400e3 };

// The chart on the page, if any, follows the window's width.
let shown = null;
window.addEventListener('resize', () => {
  if (shown && shown.root.isConnected) {
    shown.setSize({ width: Math.max(240, Math.min(shown.root.parentElement.clientWidth, 900)), height: 220 });
  }
});

function usageChart(section, id) {
  const select = h('select', { id: 'bucket' }, ['minute', 'hour', 'day'].map((b) => h('option', { value: b, selected: b === 'hour' }, `per ${b}`)));
  const plot = h('div', { class: 'chart', role: 'img', 'aria-label': 'Requests over time: allowed, forbidden and limited' });
  const summary = h('p', { class: 'note' });
  section.append(h('h2', { id: 'usage-h' }, 'Usage'), h('p', { class: 'field' }, h('label', { for: 'bucket' }, 'Buckets'), select), plot, summary);
  let chart = null;
  async function load() {
    const bucket = select.value;
    const to = Date.now();
    let data;
    try {
      data = await call('GET', `/v1/keys/${id}/usage?bucket=${bucket}&from_ms=${to - RANGES[bucket]}&to_ms=${to}`);
    } catch (e) { clear(plot); plot.append(errorBox(e)); return; }
    const b = data.buckets;
    // Every bucket of the range, zero where the API lists none.
    const width = { minute: 60e3, hour: 3600e3, day: 86400e3 }[bucket];
    const byStart = new Map(b.map((x) => [x.start_ms, x]));
    const series = [[], [], [], []];
    for (let t = Math.floor((to - RANGES[bucket]) / width) * width; t <= to; t += width) {
      const x = byStart.get(t) || { allowed: 0, forbidden: 0, rate_limited: 0, credits_exhausted: 0 };
      series[0].push(t / 1000);
      series[1].push(x.allowed);
      series[2].push(x.forbidden);
      series[3].push(x.rate_limited + x.credits_exhausted);
    }
    const total = (i) => series[i].reduce((a, c) => a + c, 0);
    summary.textContent = `${b.length} ${bucket} bucket${b.length === 1 ? '' : 's'} with requests: ${total(1)} allowed, ${total(2)} forbidden, ${total(3)} limited.`;
    if (chart) chart.destroy();
    clear(plot);
    if (typeof uPlot === 'undefined') return;
    chart = new uPlot({
      width: Math.max(240, Math.min(plot.clientWidth || 600, 900)), height: 220,
      series: [{}, { label: 'allowed', stroke: '#1a7f37', width: 2 }, { label: 'forbidden', stroke: '#b42318', width: 2 },
        { label: 'limited', stroke: '#7a4d00', width: 2 }],
      axes: [{}, { label: 'requests' }],
    }, series, plot);
    shown = chart;
  }
  select.addEventListener('change', load);
  load();
}

// ---- Audit log ----

// Pages of `/v1/events` following `has_more`, kept when `keep` says so.
// The array's `truncated` says whether events past `max` went unsearched.
async function allEvents(keep, max = 5000) {
  const out = [];
  let after = 0;
  out.searched = 0;
  for (;;) {
    const page = await call('GET', `/v1/events?after=${after}&limit=100`);
    out.push(...page.events.filter(keep));
    out.searched += page.events.length;
    if (!page.has_more || page.events.length === 0) break;
    if (out.searched >= max) { out.truncated = true; break; }
    after = page.events[page.events.length - 1].seq;
  }
  return out;
}

function eventTable(events) {
  if (events.length === 0) return h('p', {}, 'No events.');
  return h('div', { class: 'scroll', tabindex: 0, role: 'region', 'aria-label': 'Events table' }, h('table', { class: 'events' },
    h('thead', {}, h('tr', {}, ['Seq', 'Time', 'Action', 'Key', 'Actor', 'New key'].map((t) => h('th', { scope: 'col' }, t)))),
    h('tbody', {}, events.map((e) => h('tr', {}, h('td', {}, e.seq), h('td', {}, date(e.at_ms)), h('td', {}, e.action),
      h('td', { class: 'mono' }, keyLink(e.key_id)), h('td', { class: 'mono' }, e.actor_id || '—'),
      h('td', { class: 'mono' }, keyLink(e.new_key_id)))))));
}

export async function eventsPage(main) {
  clear(main);
  main.append(h('h1', {}, 'Audit log'));
  const keyInput = h('input', { id: 'ev-key', autocomplete: 'off' });
  const action = h('select', { id: 'ev-action' }, ['', 'created', 'revoked', 'rolled', 'limits_changed'].map((a) => h('option', { value: a }, a || 'any')));
  const holder = h('div');
  const more = h('button', { type: 'button', id: 'ev-more', hidden: true }, 'Load more');
  main.append(h('div', { class: 'bar' },
    h('label', { for: 'ev-key' }, 'Key id '), keyInput, h('label', { for: 'ev-action' }, 'Action '), action), holder, more);
  const events = [];
  let after = 0;
  async function page() {
    try {
      const p = await call('GET', `/v1/events?after=${after}&limit=100`);
      events.push(...p.events);
      if (p.events.length) after = p.events[p.events.length - 1].seq;
      more.hidden = !p.has_more;
      render();
    } catch (e) { clear(holder); holder.append(errorBox(e)); }
  }
  function render() {
    const k = keyInput.value.trim();
    const a = action.value;
    clear(holder);
    holder.append(eventTable(events.filter((e) => (!k || e.key_id === k || e.actor_id === k || e.new_key_id === k) && (!a || e.action === a))));
  }
  keyInput.addEventListener('input', render);
  action.addEventListener('change', render);
  more.addEventListener('click', page);
  await page();
}

export { ApiError };
