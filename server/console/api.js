// The JSON API on this origin, with the key from sessionStorage. Every
// decision is the API's: a refusal comes back as an ApiError to show.

const STORE = 'keygate.console.key';

export const RESOURCES = [
  'DEVBOXES', 'BLUEPRINTS', 'SNAPSHOTS', 'BENCHMARKS', 'SCENARIOS',
  'REPO_CONNECTIONS', 'AGENTS', 'OBJECTS', 'ACCOUNT',
];
export const LEVELS = ['NONE', 'READ', 'WRITE'];

export function key() { return sessionStorage.getItem(STORE); }
export function signIn(token) { sessionStorage.setItem(STORE, token); invalidate(); }
export function signOut() { sessionStorage.removeItem(STORE); invalidate(); }

// Bumped at sign-in, sign-out and each navigation: an answer to a request
// made before is dropped (its promise never settles), so a view that was
// left, or a signed-out key's, never renders into the page of now.
let generation = 0;
export function invalidate() { generation += 1; }
const never = () => new Promise(() => {});

export class ApiError extends Error {
  constructor(status, detail) {
    super(`${status}: ${detail}`);
    this.status = status;
    this.detail = detail;
  }
  // What to tell the user, plainly.
  plain() {
    const what = {
      400: 'The server refused the request as malformed',
      401: 'The server does not accept this key (revoked, expired or unknown)',
      403: 'The server refused: this key is not allowed to do that',
      404: 'The server knows no such key, or not for this key',
      409: 'The server refused: the key changed meanwhile or was rolled',
      429: 'The server refused: rate limited',
    }[this.status] || 'The server answered with an error';
    return `${what} (HTTP ${this.status}: ${this.detail})`;
  }
}

export async function call(method, path, body) {
  const born = generation;
  const token = key();
  if (!token) return never();
  const headers = { Authorization: `Bearer ${token}` };
  const init = { method, headers, credentials: 'omit', cache: 'no-store', referrerPolicy: 'no-referrer' };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (e) {
    if (born !== generation) return never();
    throw new ApiError(0, `the server could not be reached (${e.message})`);
  }
  // Read every body, a 204's empty one too: an unread body ends as a
  // cancelled request in the browser's log.
  const text = await response.text();
  if (born !== generation) return never();
  if (response.status === 204) return null;
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = null; }
  if (!response.ok) {
    throw new ApiError(response.status, (data && data.detail) || response.statusText);
  }
  return data;
}

// The id of a token: the 16 characters after `ak_` or `rk_`.
export function idOf(token) { return token.slice(3, 19); }

// Every page of `/v1/keys`, following `has_more` (at most `max` keys; the
// array's `truncated` says whether more exist).
export async function allKeys(max = 2000) {
  const keys = [];
  let after = null;
  for (;;) {
    const q = after ? `&starting_after=${encodeURIComponent(after)}` : '';
    const page = await call('GET', `/v1/keys?limit=100${q}`);
    keys.push(...page.keys);
    if (!page.has_more || keys.length >= max) {
      keys.truncated = page.has_more;
      return keys;
    }
    after = page.keys[page.keys.length - 1].id;
  }
}

// The keys minted from `id`, directly or transitively, among `keys`.
export function descendants(id, keys) {
  const out = [];
  let frontier = [id];
  const seen = new Set(frontier);
  while (frontier.length) {
    const next = keys.filter((k) => frontier.includes(k.creator_id) && !seen.has(k.id));
    next.forEach((k) => { seen.add(k.id); out.push(k); });
    frontier = next.map((k) => k.id);
  }
  return out;
}
