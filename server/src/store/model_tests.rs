//! The key lifecycle as a model, checked against the stores through the
//! [`Store`] trait: random sequences of mint (by any key, or the CLI), roll
//! (any overlap), cascading revocation by another key, self-revocation and
//! clock steps, under the attenuating policy. Every answer of the store must
//! be the model's, and after every step:
//!
//! 1. a revoked key, or one whose life has ended, authenticates in no
//!    keyring fed by the store: one following the log in order, one fed the
//!    whole log shuffled with duplicates, one restarted from a snapshot;
//! 2. revoking a key revokes exactly it and its live descendants, a roll's
//!    new key inheriting the old key's children;
//! 3. no live child outlives or out-scopes the head of its creator's family
//!    (the newest key of its roll chain), and that head is not revoked;
//! 4. a restricted caller's list and audit log hold exactly its subtree;
//! 5. SQLite and PostgreSQL give the same answers (the PostgreSQL run
//!    compares both with the model, op by op);
//! 6. every live key's record, its limits and meter included, reads back
//!    from the store and reaches the follower's keyring as the model has
//!    it: a limited key's children and its rolls share its meter, and a
//!    change of a meter's limits (by the CLI) reaches every key of it.
//!
//! `cargo test -p keygate-server model` runs a few seconds of it; for a long
//! run by hand: `PROPTEST_CASES=2000 cargo test -p keygate-server --release
//! model_sqlite`.

use std::collections::BTreeSet;

use keygate::{
    Access, AuthError, Change, Credits, KeyId, KeyKind, KeyLimits, KeyRecord, Keyring, MintPolicy,
    MintRequest, Pepper, RateLimit, Resource, Scopes,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

use super::sqlite::SqliteStore;
use super::{LimitsChange, Scope, Store, StoreError};

/// One step of a sequence. Indices pick a key modulo the keys minted so far.
#[derive(Clone, Debug)]
enum Op {
    /// Mint a key: by a key, or by the CLI (`None`); restricted with these
    /// grants (account write added by `admin`), or standard.
    Mint {
        by: Option<u8>,
        grants: Vec<(u8, u8)>,
        admin: bool,
        standard: bool,
        life: Option<u16>,
        /// 0: none; bit 1: a rate limit; bit 2: credits.
        limits: u8,
    },
    /// The CLI sets (`Some`, requests per second) or removes the rate
    /// limit of the target's meter.
    Limit {
        target: u8,
        rate: Option<u8>,
    },
    Roll {
        target: u8,
        by: u8,
        overlap: u16,
    },
    Revoke {
        target: u8,
        by: u8,
    },
    SelfRevoke {
        target: u8,
    },
    Tick(u16),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (
            proptest::option::weighted(0.9, any::<u8>()),
            proptest::collection::vec((0u8..9, 1u8..3), 0..4),
            proptest::bool::weighted(0.6),
            proptest::bool::weighted(0.15),
            proptest::option::of(1u16..3_000),
            prop_oneof![3 => Just(0u8), 1 => 1u8..4],
        )
            .prop_map(|(by, grants, admin, standard, life, limits)| Op::Mint {
                by,
                grants,
                admin,
                standard,
                life,
                limits,
            }),
        1 => (any::<u8>(), proptest::option::of(1u8..100))
            .prop_map(|(target, rate)| Op::Limit { target, rate }),
        2 => (any::<u8>(), any::<u8>(), prop_oneof![Just(0u16), 1u16..600])
            .prop_map(|(target, by, overlap)| Op::Roll { target, by, overlap }),
        2 => (any::<u8>(), any::<u8>()).prop_map(|(target, by)| Op::Revoke { target, by }),
        1 => any::<u8>().prop_map(|target| Op::SelfRevoke { target }),
        1 => (1u16..400).prop_map(Op::Tick),
    ]
}

struct MKey {
    record: KeyRecord,
    token: String,
    revoked: bool,
    creator: Option<usize>,
    rolled_from: Option<usize>,
    rolled_into: Option<usize>,
}

#[derive(Default)]
struct Model {
    keys: Vec<MKey>,
    now: i64,
    /// The last sequence number handed out.
    seq: u64,
}

impl Model {
    fn pick(&self, n: u8) -> Option<usize> {
        (!self.keys.is_empty()).then(|| usize::from(n) % self.keys.len())
    }

    fn expired(&self, i: usize) -> bool {
        self.keys[i]
            .record
            .expires_at()
            .is_some_and(|e| self.now >= e.as_millis())
    }

    fn live(&self, i: usize) -> bool {
        !self.keys[i].revoked && !self.expired(i)
    }

    /// The key and the keys rolled into it; empty if it was rolled itself.
    fn family(&self, i: usize) -> Vec<usize> {
        if self.keys[i].rolled_into.is_some() {
            return Vec::new();
        }
        let mut out = vec![i];
        let mut at = i;
        while let Some(p) = self.keys[at].rolled_from {
            out.push(p);
            at = p;
        }
        out
    }

    fn descendants(&self, i: usize) -> BTreeSet<usize> {
        let family = self.family(i);
        let mut parents: BTreeSet<usize> = family.iter().copied().collect();
        let mut out = BTreeSet::new();
        loop {
            let more: Vec<usize> = (0..self.keys.len())
                .filter(|k| !out.contains(k))
                .filter(|&k| self.keys[k].creator.is_some_and(|c| parents.contains(&c)))
                .collect();
            if more.is_empty() {
                break;
            }
            parents.extend(&more);
            out.extend(more);
        }
        for f in family {
            out.remove(&f);
        }
        out
    }

    fn scope(&self, i: usize) -> Scope {
        match self.keys[i].record.kind() {
            KeyKind::Restricted => Scope::DescendantsOf(self.keys[i].record.id()),
            KeyKind::Standard => Scope::All,
        }
    }

    fn in_scope(&self, target: usize, by: usize) -> bool {
        match self.scope(by) {
            Scope::All => true,
            Scope::DescendantsOf(_) => self.descendants(by).contains(&target),
        }
    }

    fn head(&self, mut i: usize) -> usize {
        while let Some(next) = self.keys[i].rolled_into {
            i = next;
        }
        i
    }

    fn ids(&self, set: impl IntoIterator<Item = usize>) -> Vec<KeyId> {
        let mut ids: Vec<KeyId> = set.into_iter().map(|i| self.keys[i].record.id()).collect();
        ids.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        ids
    }

    /// The keys rolled into `i`, transitively.
    fn predecessors(&self, i: usize) -> Vec<usize> {
        let mut out = Vec::new();
        let mut at = i;
        while let Some(p) = self.keys[at].rolled_from {
            out.push(p);
            at = p;
        }
        out
    }

    fn rolled(&self, i: usize) -> bool {
        self.keys[i].rolled_into.is_some()
    }

    /// Revokes `target`, its predecessors and its descendants, those still
    /// live; the store's expected answer.
    fn revoke(&mut self, target: usize) -> Vec<(u64, KeyId)> {
        let mut order = vec![self.keys[target].record.id()];
        let mut rest: BTreeSet<usize> = self.descendants(target);
        rest.extend(self.predecessors(target));
        let rest: Vec<usize> = rest
            .into_iter()
            .filter(|&d| !self.keys[d].revoked)
            .collect();
        order.extend(self.ids(rest.iter().copied()));
        self.keys[target].revoked = true;
        for d in rest {
            self.keys[d].revoked = true;
        }
        order
            .into_iter()
            .map(|id| {
                self.seq += 1;
                (self.seq, id)
            })
            .collect()
    }
}

fn pepper() -> Pepper {
    Pepper::from_bytes(&[7u8; 32])
}

fn limits_of(bits: u8) -> KeyLimits {
    KeyLimits {
        rate: (bits & 1 != 0)
            .then(|| RateLimit::new(10, core::time::Duration::from_secs(1)).unwrap()),
        credits: (bits & 2 != 0).then(|| Credits::new(100, None).unwrap()),
    }
}

fn scopes_of(grants: &[(u8, u8)], admin: bool) -> Scopes {
    let mut scopes: Scopes = grants
        .iter()
        .map(|&(r, a)| {
            let access = if a == 2 { Access::Write } else { Access::Read };
            (Resource::ALL[usize::from(r) % 9], access)
        })
        .collect();
    if admin {
        scopes |= Scopes::grant(Resource::Account, Access::Write);
    }
    scopes
}

fn check<T: PartialEq + std::fmt::Debug>(what: &str, got: T, want: T) -> Result<(), TestCaseError> {
    prop_assert_eq!(got, want, "{}", what);
    Ok(())
}

/// Applies one op to the model and to every store; checks each answer.
async fn step(
    model: &mut Model,
    stores: &[&dyn Store],
    op: &Op,
    rng: &mut keygate::OsEntropy,
) -> Result<(), TestCaseError> {
    let now = model.now;
    match op {
        Op::Tick(dt) => model.now += i64::from(*dt),
        Op::Mint {
            by,
            grants,
            admin,
            standard,
            life,
            limits,
        } => {
            let by = by.and_then(|b| model.pick(b));
            let mut expires = life.map(|l| now + i64::from(l));
            let mut scopes = scopes_of(grants, *admin);
            // Within a restricted caller's grants and life, mostly, so that
            // trees grow; the policy still refuses what exceeds them.
            if let Some(caller) = by.map(|b| &model.keys[b].record) {
                if caller.kind() == KeyKind::Restricted && !*standard {
                    scopes &= caller.scopes();
                    if scopes.is_empty() {
                        scopes = caller.scopes();
                    }
                    let caller_expiry = caller.expires_at().map(keygate::UnixMillis::as_millis);
                    expires = match (expires, caller_expiry) {
                        (Some(e), Some(c)) => Some(e.min(c)),
                        (e, c) => e.or(c),
                    };
                }
            }
            let expires = expires.map(keygate::UnixMillis::from_millis);
            let request = if *standard {
                MintRequest::standard(Some("m"), expires, keygate::UnixMillis::from_millis(now))
            } else {
                MintRequest::restricted(
                    Some("m"),
                    scopes,
                    expires,
                    keygate::UnixMillis::from_millis(now),
                )
            };
            let Ok(mut request) = request else {
                return Ok(());
            };
            request = request.with_limits(limits_of(*limits));
            if let Some(b) = by {
                let caller = keygate::testing::principal_of(&model.keys[b].record);
                if MintPolicy::Attenuating
                    .authorize(&caller, &request)
                    .is_err()
                {
                    return Ok(());
                }
                // A limited caller mints on its own meter, or not at all.
                let Ok(charged) = request.charged_to(&model.keys[b].record) else {
                    return Ok(());
                };
                request = charged.created_by(&caller);
            }
            let (record, token) = keygate::mint(
                &pepper(),
                &request,
                rng,
                keygate::UnixMillis::from_millis(now),
            )
            .into_parts();
            let want = match by {
                Some(b) if !model.live(b) => Err(StoreError::CallerRevoked),
                Some(b) if model.keys[b].rolled_into.is_some() => {
                    Err(StoreError::Conflict(String::new()))
                }
                _ => Ok(model.seq + 1),
            };
            let actor = by.map(|b| model.keys[b].record.id());
            for store in stores {
                let got = store.create(&record, actor, now).await;
                check("create", conflict_blank(got), want.clone())?;
            }
            if want.is_ok() {
                model.seq += 1;
                model.keys.push(MKey {
                    record,
                    token: token.expose_secret().to_owned(),
                    revoked: false,
                    creator: by,
                    rolled_from: None,
                    rolled_into: None,
                });
            }
        }
        Op::Limit { target, rate } => {
            let Some(t) = model.pick(*target) else {
                return Ok(());
            };
            let rate = rate
                .map(|n| RateLimit::new(u32::from(n), core::time::Duration::from_secs(1)).unwrap());
            let meter = model.keys[t].record.meter().id;
            let mates: Vec<usize> = (0..model.keys.len())
                .filter(|&k| model.keys[k].record.meter().id == meter)
                .collect();
            let want = if model.keys[t].revoked {
                Err(StoreError::NotFound)
            } else if model.rolled(t) {
                Err(StoreError::Conflict(String::new()))
            } else {
                // Every key of the meter changes; the live ones are logged,
                // the target first, then in id order.
                for &k in &mates {
                    let limits = KeyLimits {
                        rate,
                        ..model.keys[k].record.limits()
                    };
                    model.keys[k].record = model.keys[k].record.clone().with_limits(limits);
                }
                let rest: Vec<usize> = mates
                    .iter()
                    .copied()
                    .filter(|&k| k != t && !model.keys[k].revoked)
                    .collect();
                let mut order = vec![model.keys[t].record.id()];
                order.extend(model.ids(rest));
                Ok(order
                    .into_iter()
                    .map(|id| {
                        model.seq += 1;
                        (model.seq, id)
                    })
                    .collect::<Vec<_>>())
            };
            let change = LimitsChange {
                rate: Some(rate),
                credits: None,
            };
            let id = model.keys[t].record.id();
            for store in stores {
                let got = store
                    .set_limits(id, change, Scope::All, None, now)
                    .await
                    .map(|changed| {
                        changed
                            .into_iter()
                            .map(|(seq, record)| (seq, record.id()))
                            .collect::<Vec<_>>()
                    });
                check("set_limits", conflict_blank(got), want.clone())?;
            }
        }
        Op::Roll {
            target,
            by,
            overlap,
        } => {
            let (Some(t), Some(b)) = (model.pick(*target), model.pick(*by)) else {
                return Ok(());
            };
            // The handler refuses these before the store: an expired key
            // cannot roll, and a key may not roll itself with no overlap.
            if model.expired(t) || (t == b && *overlap == 0) {
                return Ok(());
            }
            let rolled = keygate::roll(
                &pepper(),
                &model.keys[t].record,
                core::time::Duration::from_millis(u64::from(*overlap)),
                rng,
                keygate::UnixMillis::from_millis(now),
            )
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let (new_key, old) = rolled.into_parts();
            let (new, new_token) = new_key.into_parts();
            let want = if t != b && !model.live(b) {
                Err(StoreError::CallerRevoked)
            } else if t != b && model.rolled(b) {
                Err(StoreError::Conflict(String::new()))
            } else if model.keys[t].revoked || !model.in_scope(t, b) {
                // (A restricted key is not in its own subtree.)
                Err(StoreError::NotFound)
            } else if model.keys[t].rolled_into.is_some() {
                Err(StoreError::Conflict(String::new()))
            } else {
                Ok((model.seq + 1, model.seq + 2))
            };
            let scope = model.scope(b);
            let actor = Some(model.keys[b].record.id());
            for store in stores {
                let got = store.roll(&old, &new, scope, actor, now).await;
                check("roll", conflict_blank(got), want.clone())?;
            }
            if want.is_ok() {
                model.seq += 2;
                model.keys[t].record = old;
                let creator = model.keys[t].creator;
                model.keys.push(MKey {
                    record: new,
                    token: new_token.expose_secret().to_owned(),
                    revoked: false,
                    creator,
                    rolled_from: Some(t),
                    rolled_into: None,
                });
                model.keys[t].rolled_into = Some(model.keys.len() - 1);
            }
        }
        Op::Revoke { .. } | Op::SelfRevoke { .. } => {
            let (target, by, self_revoke) = match *op {
                Op::Revoke { target, by } => (target, by, false),
                Op::SelfRevoke { target } => (target, target, true),
                _ => return Ok(()),
            };
            let (Some(t), Some(b)) = (model.pick(target), model.pick(by)) else {
                return Ok(());
            };
            let scope = if self_revoke {
                Scope::All
            } else {
                model.scope(b)
            };
            let want = if t != b && !model.live(b) {
                Err(StoreError::CallerRevoked)
            } else if t != b && model.rolled(b) {
                Err(StoreError::Conflict(String::new()))
            } else if model.keys[t].revoked
                || (scope != Scope::All && !model.descendants(b).contains(&t))
            {
                Err(StoreError::NotFound)
            } else {
                Ok(())
            };
            let want = match want {
                Ok(()) => Ok(model.revoke(t)),
                Err(e) => Err(e),
            };
            let actor = Some(model.keys[b].record.id());
            let id = model.keys[t].record.id();
            for store in stores {
                let got = store.revoke(id, scope, true, actor, now).await;
                check("revoke", conflict_blank(got), want.clone())?;
            }
        }
    }
    Ok(())
}

/// Conflict messages name ids; the model compares the verdict only.
fn conflict_blank<T>(r: Result<T, StoreError>) -> Result<T, StoreError> {
    r.map_err(|e| match e {
        StoreError::Conflict(_) => StoreError::Conflict(String::new()),
        other => other,
    })
}

/// The invariants, on one store, after a step.
async fn invariants(
    model: &Model,
    store: &dyn Store,
    follower: &mut Keyring,
    cursor: &mut u64,
    log: &mut Vec<Change>,
    rng_seed: u64,
) -> Result<(), TestCaseError> {
    let now = model.now;
    // Restricted callers see exactly their subtree, in lists and events.
    for i in 0..model.keys.len() {
        let Scope::DescendantsOf(_) = model.scope(i) else {
            continue;
        };
        let subtree = model.descendants(i);
        let page = store
            .list(model.scope(i), None, 100)
            .await
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let listed: Vec<KeyId> = page.keys.iter().map(|k| k.record.id()).collect();
        let live = model.ids(subtree.iter().copied().filter(|&d| !model.keys[d].revoked));
        check("list", listed, live)?;
        let (events, _) = store
            .events(0, 1_000, model.scope(i))
            .await
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let seen: BTreeSet<KeyId> = events.iter().map(|e| e.key_id).collect();
        let want: BTreeSet<KeyId> = model.ids(subtree.iter().copied()).into_iter().collect();
        check("events", seen, want)?;
    }
    // The feed, in order, from the follower's cursor.
    let changes = store
        .changes_since(*cursor, 1_000)
        .await
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    for change in changes {
        *cursor = change.seq;
        log.push(change.clone());
        follower
            .apply(change)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
    }
    follower.evict_expired(keygate::UnixMillis::from_millis(now));
    // The whole log, shuffled, each change twice.
    let mut shuffled: Vec<Change> = log.iter().chain(log.iter()).cloned().collect();
    let mut state = rng_seed | 1;
    for i in (1..shuffled.len()).rev() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        shuffled.swap(i, (state % (i as u64 + 1)) as usize);
    }
    let mut replayed = Keyring::new(pepper());
    for change in shuffled {
        replayed
            .apply(change)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
    }
    // A restart: the snapshot.
    let snapshot = store
        .snapshot()
        .await
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    let mut restarted = Keyring::new(pepper());
    for record in snapshot.records {
        restarted
            .apply(Change::upsert(snapshot.seq, record))
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
    }
    // Every live key's record, limits and meter included, as the model has
    // it: in the store, and in the follower's keyring.
    for (i, key) in model.keys.iter().enumerate() {
        if key.revoked {
            continue;
        }
        let stored = store
            .get(key.record.id(), Scope::All)
            .await
            .map_err(|e| TestCaseError::fail(e.to_string()))?
            .map(|k| k.record);
        prop_assert_eq!(
            stored.as_ref(),
            Some(&key.record),
            "stored record of key {}",
            i
        );
        if model.live(i) {
            // The keyring holds what authentication needs of the record.
            let r = &key.record;
            prop_assert_eq!(
                follower
                    .get(&r.id())
                    .map(|e| (e.id(), e.kind(), e.scopes(), e.expires_at())),
                Some((r.id(), r.kind(), r.scopes(), r.expires_at())),
                "followed key {}",
                i
            );
        }
    }
    for (i, key) in model.keys.iter().enumerate() {
        let live = model.live(i);
        for (name, keyring) in [
            ("follower", &*follower),
            ("replayed", &replayed),
            ("restarted", &restarted),
        ] {
            let got = keyring.authenticate(&key.token, keygate::UnixMillis::from_millis(now));
            prop_assert_eq!(
                got.is_ok(),
                live,
                "{} keyring, key {} ({:?}): {:?}",
                name,
                i,
                key.record.id(),
                got.err()
            );
            if !live && key.revoked {
                prop_assert!(matches!(got, Err(AuthError::InvalidCredentials)));
            }
        }
        // No live child outlives or out-scopes its creator family's head.
        if let (true, Some(creator)) = (live, key.creator) {
            let head = model.head(creator);
            let parent = &model.keys[head];
            if parent.record.kind() == KeyKind::Restricted {
                prop_assert!(
                    !parent.revoked,
                    "key {} lives under revoked head {}",
                    i,
                    head
                );
                let (c, p) = (key.record.expires_at(), parent.record.expires_at());
                prop_assert!(
                    p.is_none() || c.is_some_and(|c| Some(c) <= p),
                    "key {} expires {:?} after its head {:?}",
                    i,
                    c,
                    p
                );
                prop_assert_eq!(
                    key.record.scopes() & parent.record.scopes(),
                    key.record.scopes()
                );
            }
        }
    }
    Ok(())
}

/// Runs `ops` on fresh `stores`, checking the model.
fn run_case(
    runtime: &tokio::runtime::Runtime,
    stores: Vec<Box<dyn Store>>,
    ops: &[Op],
    seed: u64,
) -> Result<(), TestCaseError> {
    runtime.block_on(async {
        let refs: Vec<&dyn Store> = stores.iter().map(|s| &**s).collect();
        let mut model = Model {
            now: 1_000,
            ..Model::default()
        };
        let mut rng = keygate::os_entropy();
        let mut feeds: Vec<(Keyring, u64, Vec<Change>)> = refs
            .iter()
            .map(|_| (Keyring::new(pepper()), 0, Vec::new()))
            .collect();
        for op in ops {
            step(&mut model, &refs, op, &mut rng).await?;
            for (store, (follower, cursor, log)) in refs.iter().zip(feeds.iter_mut()) {
                invariants(&model, *store, follower, cursor, log, seed).await?;
            }
        }
        Ok(())
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn config(cases: u32) -> Config {
    Config {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(cases),
        failure_persistence: None,
        ..Config::default()
    }
}

#[test]
fn model_sqlite() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let n = std::sync::atomic::AtomicU32::new(0);
    let mut runner = TestRunner::new(config(32));
    runner
        .run(
            &(proptest::collection::vec(op(), 1..60), any::<u64>()),
            |(ops, seed)| {
                let n = n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let store = SqliteStore::open(&dir.path().join(format!("m{n}.db"))).unwrap();
                run_case(&rt, vec![Box::new(store)], &ops, seed)
            },
        )
        .unwrap();
}

/// The same sequences on SQLite and PostgreSQL side by side: both must give
/// the model's answers, so they give each other's.
#[test]
fn model_sqlite_and_postgres() {
    let pg = super::postgres::pg::TestPg::start();
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let n = std::sync::atomic::AtomicU32::new(0);
    let mut runner = TestRunner::new(config(16));
    runner
        .run(
            &(proptest::collection::vec(op(), 1..60), any::<u64>()),
            |(ops, seed)| {
                let n = n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                pg.psql(&format!("CREATE DATABASE m{n}"));
                let url = pg.url().replace("/keygate", &format!("/m{n}"));
                let postgres = rt
                    .block_on(super::postgres::PgStore::connect(&url))
                    .unwrap();
                let sqlite = SqliteStore::open(&dir.path().join(format!("m{n}.db"))).unwrap();
                run_case(&rt, vec![Box::new(sqlite), Box::new(postgres)], &ops, seed)
            },
        )
        .unwrap();
}
