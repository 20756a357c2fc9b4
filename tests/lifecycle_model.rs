//! A state-machine test of the whole key lifecycle, against a plain model.
//!
//! Random sequences of operations run against a "store" (a change log), a
//! leader [`Keyring`] that applies each change as it is written, a follower
//! that gets the log in shuffled batches with duplicates (and evicts in the
//! middle of them), and restarts of the follower (a fresh keyring loaded
//! from the store's records at some point of the log, then the tail
//! replayed). The operations: mint (by any live key, under
//! `MintPolicy::Attenuating` or `MintPolicy::Spec`, with random scopes and
//! expiry), roll (any overlap, 0 included), revoke with cascade over
//! [`Lineage`] descendants (rolls included), self-revoke, `evict_expired`,
//! clock steps, `compact` at the horizon every keyring has applied, follower
//! replays and restarts.
//!
//! Beside it, a model (id → parent, scopes, expiry, revoked, rolled into) is
//! the oracle. After every step:
//!
//! 1. a key that is revoked, or whose life has ended, authenticates in no
//!    keyring (leader, follower, restarted follower), and every other key
//!    authenticates in all of them with the model's scopes; the follower,
//!    once caught up, agrees with the leader on every token;
//! 2. a revocation kills exactly the revoked key and its descendants (the
//!    model's, rolls included, which `Lineage` must match), nothing else;
//! 3. no live key minted under the attenuating policy outlives (expiry) or
//!    out-scopes (scopes ⊆) its parent's family head (the newest key its
//!    parent was rolled into, or the parent itself).
//!
//! The default run is 128 cases of up to 80 steps (under 2 s here). Run it
//! longer by hand with, for example:
//!
//! ```text
//! PROPTEST_CASES=5000 cargo test -p keygate --all-features --release --test lifecycle_model
//! ```
//!
//! With `MODEL_STATS=1` (and `-- --nocapture`) each case prints the size of
//! the world it built (keys, rolls, revocations, children, log, tombstones).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::{BTreeMap, BTreeSet};

use keygate::lineage::Lineage;
use keygate::{
    mint, roll, Access, Change, ChangeOp, KeyId, KeyKind, KeyRecord, Keyring, MintPolicy,
    MintRequest, Pepper, Principal, Resource, Scopes,
};
use proptest::prelude::*;
use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};

const PEPPER: [u8; 32] = [9; 32];

/// One step. Keys are picked at run time by index into the model's keys.
#[derive(Clone, Debug)]
enum Op {
    Mint {
        by: prop::sample::Index,
        attenuating: bool,
        standard: bool,
        scopes: [Access; 9],
        /// Narrow the random scopes to the caller's (so attenuated mints
        /// succeed often, not only when chance makes a subset).
        narrow: bool,
        /// `None`: no expiry; `Some(f)`: an expiry `f` of the way from now
        /// to the caller's (or to now + 20 s), so it is often allowed.
        expiry: Option<f64>,
    },
    Roll {
        key: prop::sample::Index,
        overlap: u64,
    },
    Revoke {
        key: prop::sample::Index,
    },
    SelfRevoke {
        key: prop::sample::Index,
    },
    Evict,
    Clock {
        ms: i64,
    },
    Compact,
    Replay {
        dupes: Vec<prop::sample::Index>,
        evict_at: prop::sample::Index,
        seed: u64,
    },
    Restart {
        at: prop::sample::Index,
        dupes: Vec<prop::sample::Index>,
        seed: u64,
    },
}

fn access() -> impl Strategy<Value = Access> {
    prop_oneof![Just(Access::None), Just(Access::Read), Just(Access::Write)]
}

fn op() -> impl Strategy<Value = Op> {
    let dupes = || proptest::collection::vec(any::<prop::sample::Index>(), 0..12);
    prop_oneof![
        9 => (
            any::<prop::sample::Index>(),
            any::<bool>(),
            proptest::bool::weighted(0.2),
            proptest::array::uniform9(access()),
            proptest::bool::weighted(0.7),
            proptest::option::weighted(0.8, 0.0f64..1.2),
        )
            .prop_map(|(by, attenuating, standard, scopes, narrow, expiry)| Op::Mint {
                by,
                attenuating,
                standard,
                scopes,
                narrow,
                expiry,
            }),
        3 => (
            any::<prop::sample::Index>(),
            prop_oneof![Just(0u64), 1u64..2_000, Just(u64::MAX)],
        )
            .prop_map(|(key, overlap)| Op::Roll { key, overlap }),
        1 => any::<prop::sample::Index>().prop_map(|key| Op::Revoke { key }),
        1 => any::<prop::sample::Index>().prop_map(|key| Op::SelfRevoke { key }),
        2 => Just(Op::Evict),
        3 => (1i64..3_000).prop_map(|ms| Op::Clock { ms }),
        1 => Just(Op::Compact),
        4 => (dupes(), any::<prop::sample::Index>(), any::<u64>())
            .prop_map(|(dupes, evict_at, seed)| Op::Replay { dupes, evict_at, seed }),
        1 => (any::<prop::sample::Index>(), dupes(), any::<u64>())
            .prop_map(|(at, dupes, seed)| Op::Restart { at, dupes, seed }),
    ]
}

/// The model's view of one key.
#[derive(Clone, Debug)]
struct ModelKey {
    token: String,
    kind: KeyKind,
    parent: Option<KeyId>,
    scopes: Scopes,
    expiry: Option<i64>,
    revoked: bool,
    rolled_into: Option<KeyId>,
    /// Minted under the attenuating policy (invariant 3 applies).
    attenuated: bool,
}

struct World {
    rng: ChaCha20Rng,
    pepper: Pepper,
    now: i64,
    /// The store: its log, and its current record of every key.
    log: Vec<Change>,
    records: BTreeMap<KeyId, KeyRecord>,
    rolls: Vec<(KeyId, KeyId)>,
    model: BTreeMap<KeyId, ModelKey>,
    /// Minting order, for picking keys by index.
    order: Vec<KeyId>,
    leader: Keyring,
    follower: Keyring,
    /// How much of the log the follower has applied (all of `log[..cursor]`).
    cursor: usize,
    /// No change at or below this sequence number reaches the follower again
    /// (compaction, or a restart's snapshot).
    follower_floor: u64,
}

impl World {
    fn new(seed: u64) -> World {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let pepper = Pepper::from_bytes(&PEPPER);
        let mut world = World {
            rng: ChaCha20Rng::seed_from_u64(seed ^ 1),
            leader: Keyring::new(pepper.clone()),
            follower: Keyring::new(pepper.clone()),
            pepper,
            now: 1_000,
            log: Vec::new(),
            records: BTreeMap::new(),
            rolls: Vec::new(),
            model: BTreeMap::new(),
            order: Vec::new(),
            cursor: 0,
            follower_floor: 0,
        };
        // Two roots: a standard key and an admin restricted key, both
        // expiring (so expiry attenuation has something to do) or not.
        let expiry = (rng.next_u32() % 2 == 0).then_some(keygate::UnixMillis::from_millis(30_000));
        let root = MintRequest::standard(
            Some("root"),
            expiry,
            keygate::UnixMillis::from_millis(world.now),
        )
        .unwrap();
        world.store_mint(root, false);
        let admin = MintRequest::restricted(
            Some("admin"),
            "account:write,objects:write,devboxes:read".parse().unwrap(),
            None,
            keygate::UnixMillis::from_millis(world.now),
        )
        .unwrap();
        world.store_mint(admin, false);
        world
    }

    fn next_seq(&self) -> u64 {
        self.log.len() as u64 + 1
    }

    /// Writes a change to the store's log and applies it on the leader.
    fn write(&mut self, change: Change) {
        assert_eq!(change.seq, self.next_seq());
        if let ChangeOp::Upsert(r) = &change.op {
            self.records.insert(r.id(), r.clone());
        }
        self.leader.apply(change.clone()).unwrap();
        self.log.push(change);
    }

    fn store_mint(&mut self, request: MintRequest, attenuated: bool) -> KeyId {
        let minted = mint(
            &self.pepper,
            &request,
            &mut self.rng,
            keygate::UnixMillis::from_millis(self.now),
        );
        let (record, token) = minted.into_parts();
        let id = record.id();
        self.model.insert(
            id,
            ModelKey {
                token: token.expose_secret().to_owned(),
                kind: record.kind(),
                parent: record.creator_id(),
                scopes: record.scopes(),
                expiry: record.expires_at().map(keygate::UnixMillis::as_millis),
                revoked: false,
                rolled_into: None,
                attenuated,
            },
        );
        self.order.push(id);
        self.write(Change::upsert(self.next_seq(), record));
        id
    }

    fn pick(&self, index: &prop::sample::Index) -> KeyId {
        *index.get(&self.order)
    }

    fn model_live(&self, id: &KeyId) -> bool {
        let k = &self.model[id];
        !k.revoked && k.expiry.is_none_or(|e| self.now < e)
    }

    /// The leader's principal for `id`'s token, if it authenticates.
    fn caller(&self, id: &KeyId) -> Option<Principal> {
        self.leader
            .authenticate(
                &self.model[id].token,
                keygate::UnixMillis::from_millis(self.now),
            )
            .ok()
    }

    // ---- the model's lineage, written from the rule ----------------------

    /// X and every key rolled into X, transitively; nothing if X itself
    /// was rolled (its children are its successor's).
    fn model_family(&self, x: KeyId) -> BTreeSet<KeyId> {
        if self.model[&x].rolled_into.is_some() {
            return BTreeSet::new();
        }
        let mut family = BTreeSet::from([x]);
        loop {
            let more: Vec<KeyId> = self
                .model
                .iter()
                .filter(|(id, k)| {
                    !family.contains(*id) && k.rolled_into.is_some_and(|n| family.contains(&n))
                })
                .map(|(id, _)| *id)
                .collect();
            if more.is_empty() {
                return family;
            }
            family.extend(more);
        }
    }

    fn model_descendants(&self, x: KeyId) -> BTreeSet<KeyId> {
        let children = |y: KeyId| -> BTreeSet<KeyId> {
            let family = self.model_family(y);
            self.model
                .iter()
                .filter(|(id, k)| {
                    k.parent.is_some_and(|p| family.contains(&p)) && !family.contains(*id)
                })
                .map(|(id, _)| *id)
                .collect()
        };
        let mut all = children(x);
        loop {
            let more: BTreeSet<KeyId> = all.iter().flat_map(|&k| children(k)).collect();
            let before = all.len();
            all.extend(more);
            if all.len() == before {
                break;
            }
        }
        for f in self.model_family(x) {
            all.remove(&f);
        }
        all
    }

    /// The newest key `x` was rolled into (or `x`).
    fn family_head(&self, mut x: KeyId) -> KeyId {
        let mut steps = 0;
        while let Some(next) = self.model[&x].rolled_into {
            x = next;
            steps += 1;
            assert!(steps <= self.model.len(), "a cycle of rolls in the model");
        }
        x
    }

    // ---- operations -------------------------------------------------------

    fn mint_op(&mut self, op: &Op) {
        let Op::Mint {
            by,
            attenuating,
            standard,
            scopes,
            narrow,
            expiry,
        } = op
        else {
            unreachable!()
        };
        let by = self.pick(by);
        let Some(caller) = self.caller(&by) else {
            return;
        };
        // A rolled key mints no more (the server answers 409): a child of
        // it would belong to its successor's subtree from birth.
        if self.model[&by].rolled_into.is_some() {
            return;
        }
        let mut scopes: Scopes = Resource::ALL
            .into_iter()
            .zip(scopes.iter().copied())
            .collect();
        if *narrow {
            scopes = scopes.intersection(caller.scopes());
        }
        let horizon = caller
            .expires_at()
            .map_or(self.now + 20_000, keygate::UnixMillis::as_millis);
        let span = horizon.saturating_sub(self.now).min(100_000);
        let expiry = expiry
            .map(|f| keygate::UnixMillis::from_millis(self.now + 1 + (span as f64 * f) as i64));
        let request = if *standard {
            MintRequest::standard(None, expiry, keygate::UnixMillis::from_millis(self.now))
        } else {
            MintRequest::restricted(
                None,
                scopes,
                expiry,
                keygate::UnixMillis::from_millis(self.now),
            )
        };
        let Ok(request) = request else {
            return;
        };
        let request = request.created_by(&caller);
        let policy = if *attenuating {
            MintPolicy::Attenuating
        } else {
            MintPolicy::Spec
        };
        if policy.authorize(&caller, &request).is_err() {
            return;
        }
        self.store_mint(request, *attenuating);
    }

    fn roll_op(&mut self, key: &prop::sample::Index, overlap: u64) {
        let old = self.pick(key);
        // Only a live key that was not rolled before (a roll ends a key).
        if self.caller(&old).is_none() || self.model[&old].rolled_into.is_some() {
            return;
        }
        let record = self.records[&old].clone();
        let (new_key, old_record) = roll(
            &self.pepper,
            &record,
            core::time::Duration::from_millis(overlap),
            &mut self.rng,
            keygate::UnixMillis::from_millis(self.now),
        )
        .unwrap()
        .into_parts();
        let (new_record, token) = new_key.into_parts();
        let new = new_record.id();
        let parent = self.model[&old].clone();
        self.model.insert(
            new,
            ModelKey {
                token: token.expose_secret().to_owned(),
                rolled_into: None,
                ..parent
            },
        );
        let old_model = self.model.get_mut(&old).unwrap();
        old_model.expiry = old_record.expires_at().map(keygate::UnixMillis::as_millis);
        old_model.rolled_into = Some(new);
        self.order.push(new);
        self.rolls.push((old, new));
        // One transaction in the store, two changes in its log.
        self.write(Change::upsert(self.next_seq(), old_record));
        self.write(Change::upsert(self.next_seq(), new_record));
    }

    /// Revokes `root` and its descendants; checks that exactly they die.
    fn revoke_op(&mut self, root: KeyId) {
        if self.model[&root].revoked {
            return;
        }
        let lineage =
            Lineage::from_records(self.records.values()).with_rolls(self.rolls.iter().copied());
        let descendants: BTreeSet<KeyId> = lineage.descendants(root).into_iter().collect();
        // The library's lineage is the model's.
        assert_eq!(
            descendants,
            self.model_descendants(root),
            "lineage of {root}"
        );
        for id in self.model.keys() {
            assert_eq!(lineage.is_descendant(*id, root), descendants.contains(id));
        }
        // Revoking a key also ends the keys rolled into it (its earlier
        // secrets, in their overlap).
        let predecessors: BTreeSet<KeyId> = lineage.predecessors(root).into_iter().collect();
        let mut at = root;
        let mut walked = BTreeSet::new();
        while let Some((old, _)) = self.rolls.iter().find(|(_, new)| *new == at) {
            walked.insert(*old);
            at = *old;
        }
        assert_eq!(predecessors, walked, "predecessors of {root}");
        let cascade: BTreeSet<KeyId> = descendants.union(&predecessors).copied().collect();
        let live_before = self.authenticating(&self.leader);
        for id in std::iter::once(root).chain(cascade.iter().copied()) {
            if !self.model[&id].revoked {
                self.model.get_mut(&id).unwrap().revoked = true;
                self.write(Change::revoke(self.next_seq(), id));
            }
        }
        let live_after = self.authenticating(&self.leader);
        let killed: BTreeSet<KeyId> = live_before.difference(&live_after).copied().collect();
        let expected: BTreeSet<KeyId> = live_before
            .iter()
            .filter(|id| **id == root || cascade.contains(id))
            .copied()
            .collect();
        assert_eq!(killed, expected, "revoking {root} killed the wrong keys");
        assert!(live_after.is_subset(&live_before));
    }

    /// Brings the follower up to date: the new changes plus duplicates of
    /// older ones, shuffled, with an eviction somewhere in the middle.
    fn replay(
        &mut self,
        dupes: &[prop::sample::Index],
        evict_at: Option<&prop::sample::Index>,
        seed: u64,
    ) {
        let mut batch: Vec<Change> = self.log[self.cursor..].to_vec();
        let eligible: Vec<&Change> = self
            .log
            .iter()
            .filter(|c| c.seq > self.follower_floor)
            .collect();
        if !eligible.is_empty() {
            for d in dupes {
                batch.push((*d.get(&eligible)).clone());
            }
        }
        shuffle(&mut batch, seed);
        let evict_at = evict_at.map_or(0, |at| at.index(batch.len() + 1));
        for (i, change) in batch.into_iter().enumerate() {
            if i == evict_at {
                self.follower
                    .evict_expired(keygate::UnixMillis::from_millis(self.now));
            }
            self.follower.apply(change).unwrap();
        }
        self.follower
            .evict_expired(keygate::UnixMillis::from_millis(self.now));
        self.cursor = self.log.len();
    }

    /// Replaces the follower with a fresh keyring: the store's records as of
    /// `at` (the live ones, with their versions), then the tail.
    fn restart(&mut self, at: &prop::sample::Index, dupes: &[prop::sample::Index], seed: u64) {
        let at = at.index(self.log.len() + 1);
        let mut snapshot: BTreeMap<KeyId, Option<(u64, KeyRecord)>> = BTreeMap::new();
        for change in &self.log[..at] {
            match &change.op {
                ChangeOp::Upsert(r) => {
                    snapshot.insert(r.id(), Some((change.seq, r.clone())));
                }
                ChangeOp::Revoke(id) => {
                    snapshot.insert(*id, None);
                }
            }
        }
        let mut fresh = Keyring::new(self.pepper.clone());
        for (seq, record) in snapshot.into_values().flatten() {
            fresh.apply(Change::upsert(seq, record)).unwrap();
        }
        self.follower = fresh;
        self.cursor = at;
        self.follower_floor = at as u64;
        self.replay(dupes, None, seed);
    }

    fn compact(&mut self) {
        // The horizon both keyrings have applied, and past which no change
        // is replayed again.
        let horizon = self.cursor.min(self.log.len()) as u64;
        let held = self.leader.tombstones();
        let dropped = self.leader.compact(horizon);
        assert_eq!(self.leader.tombstones(), held - dropped);
        self.follower.compact(horizon);
        self.follower_floor = self.follower_floor.max(horizon);
    }

    fn step(&mut self, op: &Op) {
        match op {
            Op::Mint { .. } => self.mint_op(op),
            Op::Roll { key, overlap } => self.roll_op(key, *overlap),
            Op::Revoke { key } => {
                let root = self.pick(key);
                self.revoke_op(root);
            }
            Op::SelfRevoke { key } => {
                // Only a key that authenticates may revoke itself.
                let root = self.pick(key);
                if self.caller(&root).is_some() {
                    self.revoke_op(root);
                }
            }
            Op::Evict => {
                self.leader
                    .evict_expired(keygate::UnixMillis::from_millis(self.now));
                self.follower
                    .evict_expired(keygate::UnixMillis::from_millis(self.now));
            }
            Op::Clock { ms } => self.now += ms,
            Op::Compact => self.compact(),
            Op::Replay {
                dupes,
                evict_at,
                seed,
            } => self.replay(dupes, Some(evict_at), *seed),
            Op::Restart { at, dupes, seed } => self.restart(at, dupes, *seed),
        }
    }

    // ---- checks -------------------------------------------------------------

    /// The ids whose tokens authenticate in `keyring` now.
    fn authenticating(&self, keyring: &Keyring) -> BTreeSet<KeyId> {
        self.model
            .iter()
            .filter(|(_, k)| {
                keyring
                    .authenticate(&k.token, keygate::UnixMillis::from_millis(self.now))
                    .is_ok()
            })
            .map(|(id, _)| *id)
            .collect()
    }

    fn check(&self, step: usize) {
        let caught_up = self.cursor == self.log.len();
        for (id, k) in &self.model {
            let live = self.model_live(id);
            let leader = self
                .leader
                .authenticate(&k.token, keygate::UnixMillis::from_millis(self.now))
                .ok();
            // (1) dead keys stay dead; live keys work, with their grant.
            match &leader {
                Some(p) => {
                    assert!(
                        live,
                        "step {step}: dead key {id} authenticates on the leader ({k:?})"
                    );
                    assert_eq!(
                        (
                            p.scopes(),
                            p.kind(),
                            p.expires_at().map(keygate::UnixMillis::as_millis)
                        ),
                        (k.scopes, k.kind, k.expiry)
                    );
                }
                None => assert!(!live, "step {step}: live key {id} refused by the leader"),
            }
            let follower = self
                .follower
                .authenticate(&k.token, keygate::UnixMillis::from_millis(self.now))
                .ok();
            if caught_up {
                assert!(
                    live || follower.is_none(),
                    "step {step}: dead key {id} authenticates on the follower ({k:?})"
                );
                assert_eq!(
                    follower, leader,
                    "step {step}: follower and leader disagree on {id} ({k:?})"
                );
            } else if follower.is_some() {
                // A lagging follower may miss a revocation or a roll's
                // shortening it has not read yet, never more: the key was
                // alive once, and never revoked or ended as of its cursor.
                let seen = &self.log[..self.cursor];
                assert!(
                    !seen
                        .iter()
                        .any(|c| matches!(c.op, ChangeOp::Revoke(r) if r == *id)),
                    "step {step}: revoked key {id} authenticates on a lagging follower"
                );
            }
            // (3) attenuation, rolls included.
            if live && k.attenuated {
                let parent = k.parent.expect("a minted key has a creator");
                let head = &self.model[&self.family_head(parent)];
                assert!(
                    k.scopes.is_subset(&head.scopes),
                    "step {step}: {id} out-scopes its parent's family head"
                );
                if let Some(head_expiry) = head.expiry {
                    assert!(
                        k.expiry.is_some_and(|e| e <= head_expiry),
                        "step {step}: {id} outlives its parent's family head"
                    );
                }
            }
        }
    }
}

fn shuffle<T>(items: &mut [T], seed: u64) {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    for i in (1..items.len()).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        items.swap(i, j);
    }
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(128)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn the_lifecycle_keeps_its_promises(
        seed in any::<u64>(),
        ops in proptest::collection::vec(op(), 1..80),
    ) {
        let mut world = World::new(seed);
        world.check(0);
        for (step, op) in ops.iter().enumerate() {
            world.step(op);
            world.check(step + 1);
        }
        // In the end, the follower catches up and agrees everywhere.
        world.replay(&[], None, seed);
        world.check(ops.len() + 1);
        if std::env::var("MODEL_STATS").is_ok() {
            let rolled = world.model.values().filter(|k| k.rolled_into.is_some()).count();
            let revoked = world.model.values().filter(|k| k.revoked).count();
            let children = world.model.values().filter(|k| k.parent.is_some()).count();
            eprintln!("keys {} rolled {rolled} revoked {revoked} children {children} log {} tomb {} now {}", world.model.len(), world.log.len(), world.leader.tombstones(), world.now);
        }
    }
}
