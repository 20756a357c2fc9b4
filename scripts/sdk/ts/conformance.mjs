// @ts-check
// Conformance of keygate with Runloop's official TypeScript SDK
// (@runloop/api-client), run by scripts/sdk.sh against a real `keygate serve`.
//
// Env: KEYGATE_URL, KEYGATE_ADMIN_KEY (a standard key), KEYGATE_RESTRICTED_KEY
// (a restricted key lacking ACCOUNT write). Runs every check twice: over the
// SDK's default transport, HTTP/2 with prior knowledge (h2c) on Node.js, and
// over HTTP/1.1 (`http2: false`). Exits non-zero on the first failure.
//
// `tsc -p .` type-checks this file against the SDK's own declarations: the
// runtime checks below are tied to the SDK's types (the enum tables must list
// exactly the SDK's literals; the views are typed as the SDK's interfaces).

import { readFileSync } from 'node:fs';
import process from 'node:process';
import {
  AuthenticationError,
  BadRequestError,
  PermissionDeniedError,
  Runloop,
} from '@runloop/api-client';

/** @typedef {import('@runloop/api-client/resources/apikeys').APIKeyCreatedView} APIKeyCreatedView */
/** @typedef {import('@runloop/api-client/resources/restricted-keys').RestrictedKeyCreatedView} RestrictedKeyCreatedView */
/** @typedef {import('@runloop/api-client/resources/restricted-keys').ScopeEntryView} ScopeEntryView */

const EXPECTED_VERSION = '1.32.0';

/** Every field of the SDK's views, as the type-checker sees them. */
/** @type {Record<keyof APIKeyCreatedView, true>} */
const API_KEY_FIELDS = { id: true, expires_at_ms: true, key_secret: true, name: true };
/** @type {Record<keyof RestrictedKeyCreatedView, true>} */
const RESTRICTED_KEY_FIELDS = { ...API_KEY_FIELDS, scopes: true };
/**
 * keygate's documented extensions of the created views (docs/http.md, "Rate
 * limits and credits"; `x-keygate-extension` in /openapi.yaml): always
 * present, null for a key without them. No other field may be added.
 * @type {Record<'rate_limit' | 'credits', true>}
 */
const EXTENSION_FIELDS = { rate_limit: true, credits: true };
/** @type {Record<keyof ScopeEntryView, true>} */
const SCOPE_FIELDS = { access_level: true, resource_type: true };
/** The SDK's literal enums: tsc fails if these tables miss or add a member. */
/** @type {Record<NonNullable<ScopeEntryView['resource_type']>, true>} */
const RESOURCE_TYPES = {
  RESOURCE_TYPE_DEVBOXES: true,
  RESOURCE_TYPE_BLUEPRINTS: true,
  RESOURCE_TYPE_SNAPSHOTS: true,
  RESOURCE_TYPE_BENCHMARKS: true,
  RESOURCE_TYPE_SCENARIOS: true,
  RESOURCE_TYPE_AGENTS: true,
  RESOURCE_TYPE_OBJECTS: true,
  RESOURCE_TYPE_ACCOUNT: true,
};
/** @type {Record<NonNullable<ScopeEntryView['access_level']>, true>} */
const ACCESS_LEVELS = { ACCESS_LEVEL_NONE: true, ACCESS_LEVEL_READ: true, ACCESS_LEVEL_WRITE: true };

/** @param {string} name */
function env(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
}

const URL = env('KEYGATE_URL');
const ADMIN = env('KEYGATE_ADMIN_KEY');
const RESTRICTED = env('KEYGATE_RESTRICTED_KEY');
let checks = 0;

/**
 * @param {unknown} condition
 * @param {string} message
 * @returns {asserts condition}
 */
function check(condition, message) {
  if (!condition) throw new Error(message);
  checks += 1;
}

/**
 * @param {object} view
 * @param {Record<string, true>} fields
 * @param {string} what
 */
function exactFields(view, fields, what) {
  const got = Object.keys(view).sort().join(',');
  const want = Object.keys(fields).sort().join(',');
  check(got === want, `${what}: fields ${got} != ${want}`);
}

/**
 * Checks a created view field by field against the SDK's declared types.
 * @param {APIKeyCreatedView | RestrictedKeyCreatedView} view
 * @param {string} prefix
 * @param {string} name
 * @param {number | null} expiresAtMs
 */
function keyView(view, prefix, name, expiresAtMs) {
  const fields = prefix === 'rk_' ? RESTRICTED_KEY_FIELDS : API_KEY_FIELDS;
  exactFields(view, { ...fields, ...EXTENSION_FIELDS }, `${prefix} view`);
  const extensions = /** @type {Record<string, unknown>} */ (/** @type {unknown} */ (view));
  for (const field of Object.keys(EXTENSION_FIELDS)) {
    check(extensions[field] === null, `${prefix} view: ${field} is ${JSON.stringify(extensions[field])}, expected null`);
  }
  check(typeof view.id === 'string' && view.id.length === 16, `id ${view.id}`);
  check(typeof view.key_secret === 'string' && view.key_secret.startsWith(prefix), 'key_secret prefix');
  check(view.key_secret.slice(3, 19) === view.id, 'the secret embeds the id');
  check(view.name === name, `name ${view.name} != ${name}`);
  check(view.expires_at_ms === expiresAtMs, `expires_at_ms ${view.expires_at_ms} != ${expiresAtMs}`);
}

/** @param {ScopeEntryView[] | undefined} scopes */
function scopeEntries(scopes) {
  check(Array.isArray(scopes), 'scopes is an array');
  for (const entry of scopes) {
    exactFields(entry, SCOPE_FIELDS, 'scope entry');
    check(typeof entry.resource_type === 'string' && entry.resource_type in RESOURCE_TYPES, `resource_type ${entry.resource_type}`);
    check(typeof entry.access_level === 'string' && entry.access_level in ACCESS_LEVELS, `access_level ${entry.access_level}`);
  }
  return scopes.map((s) => `${s.resource_type}/${s.access_level}`).join(' ');
}

/**
 * Runs `call`, expects the SDK to throw `type`; checks the problem body and challenge.
 * @template {Function} T
 * @param {T} type
 * @param {() => Promise<unknown>} call
 * @param {number} status
 * @param {string | null} challenge
 * @param {string} needle
 */
async function expectProblem(type, call, status, challenge, needle) {
  let caught;
  try {
    await call();
  } catch (e) {
    caught = e;
  }
  check(caught instanceof type, `expected ${type.name}, got ${caught}`);
  const e = /** @type {import('@runloop/api-client').APIError} */ (/** @type {unknown} */ (caught));
  check(e.status === status, `status ${e.status} != ${status}`);
  const headers = /** @type {Record<string, string>} */ (e.headers);
  check(headers['content-type'] === 'application/problem+json', `content-type ${headers['content-type']}`);
  check((headers['www-authenticate'] ?? null) === challenge, `challenge ${headers['www-authenticate']}`);
  const body = /** @type {{status?: number, detail?: string}} */ (e.error);
  check(body?.status === status, `problem body ${JSON.stringify(body)}`);
  check(typeof body.detail === 'string' && body.detail.includes(needle), `${needle} not in ${body.detail}`);
}

/**
 * @param {string} token
 * @param {boolean} http2
 */
function client(token, http2) {
  return new Runloop({ bearerToken: token, baseURL: URL, maxRetries: 0, timeout: 10_000, http2 });
}

/** @param {boolean} http2 */
async function suite(http2) {
  const admin = client(ADMIN, http2);

  // A standard key with the spec's default name; one with a name and an expiry.
  keyView(await admin.apikeys.create(), 'ak_', 'unnamed', null);
  const expires = Date.now() + 3_600_000;
  keyView(await admin.apikeys.create({ name: 'ts expiring', expires_at_ms: expires }), 'ak_', 'ts expiring', expires);
  const standard = await admin.apikeys.create({ name: 'ts standard' });
  keyView(standard, 'ak_', 'ts standard', null);

  // A restricted key; NONE entries are not echoed.
  /** @type {ScopeEntryView[]} */
  const scopes = [
    { resource_type: 'RESOURCE_TYPE_DEVBOXES', access_level: 'ACCESS_LEVEL_WRITE' },
    { resource_type: 'RESOURCE_TYPE_AGENTS', access_level: 'ACCESS_LEVEL_READ' },
    { resource_type: 'RESOURCE_TYPE_OBJECTS', access_level: 'ACCESS_LEVEL_NONE' },
  ];
  const restricted = await admin.restrictedKeys.create({ name: 'ts restricted', scopes, expires_at_ms: expires });
  keyView(restricted, 'rk_', 'ts restricted', expires);
  const echoed = scopeEntries(restricted.scopes);
  check(echoed === 'RESOURCE_TYPE_DEVBOXES/ACCESS_LEVEL_WRITE RESOURCE_TYPE_AGENTS/ACCESS_LEVEL_READ', `scopes ${echoed}`);

  // The minted keys work as the SDK's bearer token.
  const ops = await client(/** @type {string} */ (standard.key_secret), http2).restrictedKeys.create({
    scopes: [{ resource_type: 'RESOURCE_TYPE_ACCOUNT', access_level: 'ACCESS_LEVEL_WRITE' }],
  });
  keyView(ops, 'rk_', 'unnamed', null);
  keyView(await client(/** @type {string} */ (ops.key_secret), http2).apikeys.create({ name: 'by ops' }), 'ak_', 'by ops', null);

  // 403 PermissionDeniedError: restricted keys lacking ACCOUNT write.
  for (const token of [RESTRICTED, /** @type {string} */ (restricted.key_secret)]) {
    const c = client(token, http2);
    await expectProblem(PermissionDeniedError, () => c.apikeys.create({ name: 'nope' }), 403, 'Bearer error="insufficient_scope"', 'account:write');
    await expectProblem(PermissionDeniedError, () => c.restrictedKeys.create({ scopes }), 403, 'Bearer error="insufficient_scope"', 'account:write');
  }

  // 401 AuthenticationError: a malformed key, a changed secret.
  const changed = ADMIN.slice(0, -1) + (ADMIN.endsWith('x') ? 'y' : 'x');
  for (const token of ['ak_not_a_key', changed]) {
    const c = client(token, http2);
    await expectProblem(AuthenticationError, () => c.apikeys.create(), 401, 'Bearer error="invalid_token"', '');
    await expectProblem(AuthenticationError, () => c.restrictedKeys.create({ scopes }), 401, 'Bearer error="invalid_token"', '');
  }

  // 400 BadRequestError: scopes that grant nothing; an expiry in the past.
  for (const nothing of [[], [{ resource_type: 'RESOURCE_TYPE_DEVBOXES', access_level: 'ACCESS_LEVEL_NONE' }]]) {
    await expectProblem(BadRequestError, () => admin.restrictedKeys.create({ scopes: /** @type {ScopeEntryView[]} */ (nothing) }), 400, null, 'grant no access');
  }
  await expectProblem(BadRequestError, () => admin.apikeys.create({ expires_at_ms: 1 }), 400, null, 'is not after now');
}

async function main() {
  const pkg = JSON.parse(readFileSync(new globalThis.URL('./node_modules/@runloop/api-client/package.json', import.meta.url), 'utf8'));
  check(pkg.version === EXPECTED_VERSION, `@runloop/api-client ${pkg.version}, expected ${EXPECTED_VERSION}`);
  for (const http2 of [true, false]) {
    const before = checks;
    await suite(http2);
    console.log(`typescript @runloop/api-client ${pkg.version} over ${http2 ? 'HTTP/2 (h2c, the default)' : 'HTTP/1.1'}: ${checks - before} checks passed`);
  }
}

main().then(
  () => process.exit(0),
  (e) => {
    console.error(`typescript conformance FAILED: ${e && e.stack ? e.stack : e}`);
    process.exit(1);
  },
);
