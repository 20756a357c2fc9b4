// The console's entry: sign-in, the signed-in key's own view, and the
// hash routes (#/keys, #/keys/ID, #/events).

import { call, key, signIn, signOut, invalidate } from './api.js';
import { h, clear, compactScopes, errorBox } from './dom.js';
import { keysPage, keyPage, eventsPage, canWrite } from './views.js';

const main = document.getElementById('main');
const nav = document.getElementById('nav');
const who = document.getElementById('who');
const signOutButton = document.getElementById('signout');
let me = null;
let config = { cascade: false };

function signInPage(message) {
  nav.hidden = true;
  signOutButton.hidden = true;
  clear(who);
  clear(main);
  const input = h('input', { id: 'token', type: 'password', autocomplete: 'off', spellcheck: 'false', required: true, size: 72 });
  const form = h('form', { class: 'signin' },
    h('h1', {}, 'Sign in'),
    h('p', {}, 'Paste an API key. It is kept in this tab only (sessionStorage), sent to this server as a bearer token, and forgotten when you sign out.'),
    h('p', { class: 'field' }, h('label', { for: 'token' }, 'API key (ak_… or rk_…)'), input),
    message || null,
    h('button', { type: 'submit', class: 'primary', id: 'signin' }, 'Sign in'));
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    signIn(input.value.trim());
    input.value = '';
    start();
  });
  main.append(form);
  input.focus();
}

// What the key may do, as the API says: GET /v1/whoami.
async function start() {
  if (!key()) { signInPage(); return; }
  try {
    const cfg = await fetch('/console/config.json', { cache: 'no-store' });
    config = await cfg.json();
    me = await call('GET', '/v1/whoami');
  } catch (e) {
    signOut();
    me = null;
    signInPage(errorBox(e));
    return;
  }
  clear(who);
  who.append(h('span', { class: 'name' }, me.name), ` (${me.kind}, ${me.id}): `,
    h('span', { class: 'scopes' }, compactScopes(me)),
    canWrite(me) ? '' : h('strong', { class: 'badge' }, ' read-only'));
  nav.hidden = false;
  signOutButton.hidden = false;
  if (!location.hash || location.hash === '#/') location.hash = '#/keys';
  else route();
}

function route() {
  if (!me) return;
  const hash = location.hash;
  // In-page anchors (the skip link's #main) are no route.
  if (hash && hash !== '#' && !hash.startsWith('#/')) return;
  invalidate();
  let m;
  for (const a of nav.querySelectorAll('a')) {
    if (hash.startsWith(a.getAttribute('href'))) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  if ((m = hash.match(/^#\/keys\/([0-9A-Za-z]{16})$/))) keyPage(main, me, config, m[1]);
  else if (hash === '#/events') eventsPage(main, me);
  else keysPage(main, me, config);
  main.focus({ preventScroll: true });
}

signOutButton.addEventListener('click', () => {
  signOut();
  me = null;
  location.hash = '';
  signInPage(h('p', { role: 'status' }, 'Signed out: the key is forgotten.'));
});
window.addEventListener('hashchange', route);
start();
