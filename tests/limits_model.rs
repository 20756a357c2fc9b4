//! The rate limit and the credits against reference models, over random
//! sequences of requests, and under threads.
//!
//! The rate-limit model is the continuous-state leaky bucket over exact
//! rationals (the other of GCRA's two textbook forms): a bucket of capacity
//! `period` drains one millisecond per millisecond and each request of cost
//! `c` pours `c * period / limit` into it, unless that would overflow.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::time::Duration;

use keygate::{
    CreditBalance, CreditCell, Credits, KeyId, KeyLimits, Limiter, RateLimit, RateState, Refill,
    Refusal, UnixMillis,
};
use proptest::prelude::*;

/// The leaky bucket, in exact rationals over the denominator `limit`: its
/// level (`level / limit` ms of queued work) and when it was last filled.
struct Bucket {
    limit: i128,
    period: i128,
    level: i128,
    last: i128,
}

struct Answer {
    allowed: bool,
    remaining: i128,
    retry_after_ms: Option<i128>,
}

impl Bucket {
    fn new(limit: u32, period_ms: u32) -> Bucket {
        Bucket {
            limit: limit.into(),
            period: period_ms.into(),
            level: 0,
            last: 0,
        }
    }

    /// Requests of cost 1 that fit above `level`: (capacity − level) / (period / limit).
    fn free(&self, level: i128) -> i128 {
        (self.period * self.limit - level).div_euclid(self.period)
    }

    fn request(&mut self, now: i128, cost: u32) -> Answer {
        // Drain (now − last) ms, never below empty.
        let drained = (self.level - (now - self.last) * self.limit).max(0);
        let after = drained + i128::from(cost.max(1)) * self.period;
        let cap = self.period * self.limit;
        if after > cap {
            let retry = (i128::from(cost) <= self.limit)
                .then(|| (after - cap + self.limit - 1).div_euclid(self.limit));
            return Answer {
                allowed: false,
                remaining: self.free(drained),
                retry_after_ms: retry,
            };
        }
        if cost == 0 {
            return Answer {
                allowed: true,
                remaining: self.free(drained),
                retry_after_ms: None,
            };
        }
        self.level = after;
        self.last = now;
        Answer {
            allowed: true,
            remaining: self.free(after),
            retry_after_ms: None,
        }
    }
}

fn arb_rate() -> impl Strategy<Value = (u32, u32)> {
    (
        prop_oneof![1u32..=10, 1u32..=1_000, Just(1_000_000)],
        prop_oneof![1u32..=50, 1u32..=5_000, Just(2_678_400_000)],
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Every decision (allowed, remaining, retry-after) equals the model's.
    #[test]
    fn gcra_equals_the_leaky_bucket(
        (limit, period_ms) in arb_rate(),
        start in 0i64..4_000_000_000_000,
        steps in prop::collection::vec((0i64..2_000, 0u32..4), 1..200),
    ) {
        let rate = RateLimit::new(limit, Duration::from_millis(period_ms.into())).unwrap();
        let state = RateState::new();
        let mut model = Bucket::new(limit, period_ms);
        model.last = start.into();
        let mut now = start;
        for (gap, cost) in steps {
            now += gap;
            let d = state.check(&rate, UnixMillis::from_millis(now), cost);
            let m = model.request(now.into(), cost);
            prop_assert_eq!(d.allowed(), m.allowed, "at {} cost {}", now, cost);
            prop_assert_eq!(i128::from(d.remaining()), m.remaining);
            prop_assert_eq!(
                d.retry_after().map(|r| r.as_millis() as i128),
                m.retry_after_ms
            );
        }
    }

    /// Over any window of one period, no more than `limit` cost is allowed
    /// beyond what drained (burst `limit`, then `limit` per period).
    #[test]
    fn never_more_than_burst_plus_rate(
        limit in 1u32..50,
        period_ms in 1u32..2_000,
        gaps in prop::collection::vec(0i64..100, 1..400),
    ) {
        let rate = RateLimit::new(limit, Duration::from_millis(period_ms.into())).unwrap();
        let state = RateState::new();
        let mut now = 1_000_000i64;
        let start = now;
        let mut allowed = 0u64;
        for gap in gaps {
            now += gap;
            if state.check(&rate, UnixMillis::from_millis(now), 1).allowed() {
                allowed += 1;
            }
        }
        // Continuous bound: burst + elapsed * limit / period.
        let bound = u64::from(limit) + ((now - start) as u64 * u64::from(limit)) / u64::from(period_ms);
        prop_assert!(allowed <= bound, "{} > {}", allowed, bound);
    }

    /// Credits: a refused request spends nothing; the sum allowed in each
    /// refill period never exceeds its grant; the balance is the model's.
    #[test]
    fn credits_follow_the_model(
        initial in 0u64..50,
        refill in prop::option::of((0u64..50, 1_000u64..10_000)),
        created in 0i64..1_000_000,
        steps in prop::collection::vec((0i64..3_000, 0u64..6, prop::option::of(-20i64..20)), 1..150),
    ) {
        let refill = refill.map(|(a, ms)| Refill::new(a, Duration::from_millis(ms)).unwrap());
        let created_at = UnixMillis::from_millis(created);
        let cell = CreditCell::new(CreditBalance::new(initial));
        // The model: (period, remaining), refilled by direct division.
        let mut period: i64 = 0;
        let mut remaining: i64 = initial as i64;
        let mut now = created;
        for (gap, cost, add) in steps {
            now += gap;
            if let Some(r) = refill {
                let p = (now - created) / r.interval_ms() as i64;
                if p > period {
                    period = p;
                    remaining = r.amount() as i64;
                }
            }
            let at = UnixMillis::from_millis(now);
            if let Some(delta) = add {
                let got = cell.add(delta, refill.as_ref(), created_at, at);
                remaining = (remaining + delta).max(0);
                prop_assert_eq!(got as i64, remaining);
                continue;
            }
            let d = cell.spend(refill.as_ref(), created_at, at, cost);
            let ok = remaining >= cost.max(1) as i64;
            prop_assert_eq!(d.allowed(), ok);
            if ok {
                remaining -= cost as i64;
            }
            prop_assert_eq!(d.remaining() as i64, remaining);
            if !ok {
                let expect = refill.filter(|r| r.amount() >= cost.max(1)).map(|r| {
                    let next = created + (period + 1) * r.interval_ms() as i64;
                    Duration::from_millis((next - now) as u64)
                });
                prop_assert_eq!(d.retry_after(), expect);
            }
        }
    }

    /// The limiter: the rate limit first; a rate-limited request spends no
    /// credits; the credits' total never exceeds the grant.
    #[test]
    fn limiter_order_of_checks(
        limit in 1u32..5,
        credits in 0u64..10,
        costs in prop::collection::vec((0u32..3, 0i64..300), 1..100),
    ) {
        let id = KeyId::parse("0000000000000001").unwrap();
        let mut limiter = Limiter::new();
        let rate = RateLimit::new(limit, Duration::from_millis(1_000)).unwrap();
        limiter.configure(id, UnixMillis::EPOCH, KeyLimits {
            rate: Some(rate),
            credits: Some(Credits::new(credits, None).unwrap()),
        });
        let shadow = RateState::new();
        let mut spent = 0u64;
        let mut now = 0i64;
        for (cost, gap) in costs {
            now += gap;
            let at = UnixMillis::from_millis(now);
            let before = limiter.credits(&id, at).unwrap().remaining;
            let rate_ok = shadow.check(&rate, at, cost).allowed();
            let v = limiter.check(&id, at, cost);
            let after = limiter.credits(&id, at).unwrap().remaining;
            match v.result() {
                Ok(()) => {
                    prop_assert!(rate_ok);
                    prop_assert_eq!(before - after, u64::from(cost));
                    spent += u64::from(cost);
                }
                Err(Refusal::RateLimited { .. }) => {
                    prop_assert!(!rate_ok);
                    prop_assert_eq!(before, after);
                }
                Err(Refusal::CreditsExhausted { .. }) => {
                    prop_assert!(rate_ok);
                    prop_assert_eq!(before, after);
                    prop_assert!(before < u64::from(cost.max(1)));
                }
                Err(other) => prop_assert!(false, "unexpected {other:?}"),
            }
        }
        prop_assert!(spent <= credits);
    }
}

/// Threads racing on one key: exactly `limit` pass at one instant, and
/// exactly the balance is spent.
#[test]
fn exact_under_threads() {
    let rate = RateLimit::new(1_000, Duration::from_secs(3_600)).unwrap();
    let state = RateState::new();
    let cell = CreditCell::new(CreditBalance::new(777));
    let now = UnixMillis::from_millis(1_700_000_000_000);
    let (passed, spent) = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                s.spawn(|| {
                    let mut passed = 0u32;
                    let mut spent = 0u32;
                    for _ in 0..500 {
                        passed += u32::from(state.check(&rate, now, 1).allowed());
                        spent += u32::from(cell.spend(None, UnixMillis::EPOCH, now, 1).allowed());
                    }
                    (passed, spent)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
    });
    assert_eq!(passed, 1_000);
    assert_eq!(spent, 777);
    assert_eq!(cell.load().remaining, 0);
}

mod families {
    use super::*;
    use keygate::{mint, roll, Change, KeyRecord, MintError, MintRequest, Pepper};
    use rand_core::SeedableRng;

    fn setup() -> (Pepper, rand_chacha::ChaCha20Rng) {
        (
            Pepper::from_bytes(&[3u8; 32]),
            rand_chacha::ChaCha20Rng::seed_from_u64(19),
        )
    }

    fn limits(credits: u64) -> KeyLimits {
        KeyLimits {
            rate: Some(RateLimit::new(1_000, Duration::from_secs(1)).unwrap()),
            credits: Some(Credits::new(credits, None).unwrap()),
        }
    }

    fn minted(pepper: &Pepper, rng: &mut rand_chacha::ChaCha20Rng, l: KeyLimits) -> KeyRecord {
        let req = MintRequest::restricted(
            None,
            "account:write".parse().unwrap(),
            None,
            UnixMillis::EPOCH,
        )
        .unwrap()
        .with_limits(l);
        mint(pepper, &req, rng, UnixMillis::EPOCH).into_parts().0
    }

    /// A roll is no fresh balance: the successor spends the same credits,
    /// and revoking the old key keeps them.
    #[test]
    fn a_rolled_key_shares_its_predecessors_meter() {
        let (pepper, mut rng) = setup();
        let old = minted(&pepper, &mut rng, limits(3));
        let mut limiter = Limiter::new();
        limiter.apply(&Change::upsert(1, old.clone()));
        let now = UnixMillis::from_millis(10);
        assert!(limiter.check(&old.id(), now, 2).result().is_ok());
        let rolled = roll(&pepper, &old, Duration::from_secs(60), &mut rng, now).unwrap();
        let (old2, new) = (rolled.old().clone(), rolled.new_key().record().clone());
        assert_eq!(new.meter(), old.meter());
        assert_eq!(new.limits(), old.limits());
        limiter.apply(&Change::upsert(2, old2));
        limiter.apply(&Change::upsert(3, new.clone()));
        assert_eq!(limiter.credits(&new.id(), now).unwrap().remaining, 1);
        limiter.apply(&Change::revoke(4, old.id()));
        assert!(limiter.check(&new.id(), now, 1).result().is_ok());
        assert!(matches!(
            limiter.check(&new.id(), now, 1).result(),
            Err(Refusal::CreditsExhausted { .. })
        ));
        // The meter survives through JSON too (a store's round trip).
        let json = serde_json::to_string(&new).unwrap();
        let back: KeyRecord = serde_json::from_str(&json).unwrap();
        assert_eq!(back.meter(), old.meter());
        assert_eq!(back.limits(), old.limits());
    }

    /// A limited key mints only keys charged to its own meter: minting can
    /// never multiply a balance.
    #[test]
    fn a_limited_key_mints_keys_that_spend_its_credits() {
        let (pepper, mut rng) = setup();
        let parent = minted(&pepper, &mut rng, limits(5));
        let req = MintRequest::restricted(
            None,
            "objects:read".parse().unwrap(),
            None,
            UnixMillis::EPOCH,
        )
        .unwrap();
        let looser = req.clone().with_limits(limits(1_000));
        assert_eq!(looser.charged_to(&parent), Err(MintError::LimitsOfCaller));
        let unlimited_standard = MintRequest::standard(None, None, UnixMillis::EPOCH).unwrap();
        let req = req.charged_to(&parent).unwrap();
        let child = mint(&pepper, &req, &mut rng, UnixMillis::EPOCH)
            .into_parts()
            .0;
        let std_child = mint(
            &pepper,
            &unlimited_standard.charged_to(&parent).unwrap(),
            &mut rng,
            UnixMillis::EPOCH,
        )
        .into_parts()
        .0;
        let mut limiter = Limiter::new();
        for (seq, r) in [&parent, &child, &std_child].into_iter().enumerate() {
            limiter.apply(&Change::upsert(seq as u64 + 1, r.clone()));
        }
        let now = UnixMillis::from_millis(1);
        let mut allowed = 0;
        for _ in 0..10 {
            for r in [&parent, &child, &std_child] {
                allowed += u32::from(limiter.check(&r.id(), now, 1).result().is_ok());
            }
        }
        assert_eq!(allowed, 5);
        // An unlimited caller leaves the request as it was.
        let free = minted(&pepper, &mut rng, KeyLimits::default());
        let own = MintRequest::standard(None, None, UnixMillis::EPOCH)
            .unwrap()
            .with_limits(limits(9));
        assert_eq!(own.clone().charged_to(&free).unwrap(), own);
    }

    #[test]
    fn create_parameters_carry_limits_and_name_bad_fields() {
        use keygate::wire::{ApiKeyCreateParameters, RestrictedKeyCreateParameters};
        let p: ApiKeyCreateParameters = serde_json::from_str(
            r#"{"rate_limit":{"limit":100,"period_ms":1000},"credits":{"remaining":5000,"refill":{"amount":5000,"interval_ms":2592000000}}}"#,
        )
        .unwrap();
        let req = p.validate(UnixMillis::EPOCH).unwrap();
        assert_eq!(req.limits().rate.map(|r| r.limit()), Some(100));
        assert_eq!(
            req.limits()
                .credits
                .and_then(|c| c.refill())
                .map(|r| r.interval_ms()),
            Some(2_592_000_000)
        );
        let p: RestrictedKeyCreateParameters = serde_json::from_str(
            r#"{"scopes":[{"resource_type":"RESOURCE_TYPE_OBJECTS","access_level":"ACCESS_LEVEL_READ"}],"credits":{"remaining":1,"refill":null}}"#,
        )
        .unwrap();
        assert_eq!(
            p.validate(UnixMillis::EPOCH)
                .unwrap()
                .limits()
                .credits
                .map(|c| c.remaining()),
            Some(1)
        );
        for (json, field) in [
            (
                r#"{"rate_limit":{"limit":0,"period_ms":1000}}"#,
                "rate_limit.limit",
            ),
            (
                r#"{"rate_limit":{"limit":1,"period_ms":0}}"#,
                "rate_limit.period_ms",
            ),
            (
                r#"{"rate_limit":{"limit":1,"period_ms":2678400001}}"#,
                "rate_limit.period_ms",
            ),
            (r#"{"credits":{"remaining":-1}}"#, "credits.remaining"),
            (
                r#"{"credits":{"remaining":1,"refill":{"amount":1,"interval_ms":999}}}"#,
                "credits.refill.interval_ms",
            ),
            (
                r#"{"credits":{"remaining":1,"refill":{"amount":-1,"interval_ms":1000}}}"#,
                "credits.refill.amount",
            ),
        ] {
            let err = serde_json::from_str::<ApiKeyCreateParameters>(json).unwrap_err();
            assert!(err.to_string().starts_with(field), "{json}: {err}");
        }
        // Unknown fields inside stay errors, as everywhere in the wire types.
        assert!(serde_json::from_str::<ApiKeyCreateParameters>(
            r#"{"rate_limit":{"limit":1,"period_ms":1000,"burst":5}}"#
        )
        .is_err());
        // Objects only: serde's derive would take a sequence of the fields.
        for json in [
            r#"{"credits":[1]}"#,
            r#"{"credits":[1,null]}"#,
            r#"{"credits":{"remaining":1,"refill":[1000,1000]}}"#,
            r#"{"rate_limit":[1,1000]}"#,
        ] {
            let err = serde_json::from_str::<ApiKeyCreateParameters>(json).unwrap_err();
            assert!(err.to_string().contains("a JSON object"), "{json}: {err}");
        }
        assert!(serde_json::from_str::<keygate::Credits>(r#"{"remaining":1}"#).is_ok());
    }
}

mod review {
    //! Findings of the outside review of the limits, each a test first.
    use super::*;
    use keygate::{mint, roll, Change, Keyring, MintRequest, Pepper};
    use rand_core::SeedableRng;

    /// A rate-limited request whose credits are spent for good says no wait
    /// helps, instead of sending the client back after the rate limit's wait.
    #[test]
    fn no_retry_after_when_the_credits_will_not_cover_it() {
        let id = KeyId::parse("0000000000000002").unwrap();
        let mut l = Limiter::new();
        l.configure(
            id,
            UnixMillis::EPOCH,
            KeyLimits {
                rate: Some(RateLimit::new(1, Duration::from_secs(60)).unwrap()),
                credits: Some(Credits::new(1, None).unwrap()),
            },
        );
        let now = UnixMillis::from_millis(5);
        assert!(l.check(&id, now, 1).result().is_ok());
        assert_eq!(
            l.check(&id, now, 1).result(),
            Err(Refusal::RateLimited { retry_after: None })
        );
        // With a refill, the later of the two waits.
        let refill = Refill::new(1, Duration::from_secs(3_600)).unwrap();
        l.configure(
            id,
            UnixMillis::EPOCH,
            KeyLimits {
                rate: Some(RateLimit::new(1, Duration::from_secs(60)).unwrap()),
                credits: Some(Credits::new(0, Some(refill)).unwrap()),
            },
        );
        assert_eq!(
            l.check(&id, now, 1).result().unwrap_err().retry_after(),
            Some(Duration::from_millis(3_600_000 - 5))
        );
    }

    /// A feed that delivers the old key's revocation before its successor's
    /// upsert must not hand the successor a fresh balance.
    #[test]
    fn a_revocation_delivered_first_keeps_the_meters_balance() {
        let pepper = Pepper::from_bytes(&[9u8; 32]);
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(8);
        let req = MintRequest::restricted(
            None,
            "objects:read".parse().unwrap(),
            None,
            UnixMillis::EPOCH,
        )
        .unwrap()
        .with_limits(KeyLimits {
            rate: None,
            credits: Some(Credits::new(3, None).unwrap()),
        });
        let k = mint(&pepper, &req, &mut rng, UnixMillis::EPOCH)
            .into_parts()
            .0;
        let now = UnixMillis::from_millis(10);
        let rolled = roll(&pepper, &k, Duration::from_secs(60), &mut rng, now).unwrap();
        let successor = rolled.new_key().record().clone();
        for order in [[0, 1, 2, 3], [0, 1, 3, 2]] {
            let changes = [
                Change::upsert(1, k.clone()),
                Change::upsert(2, rolled.old().clone()),
                Change::upsert(3, successor.clone()),
                Change::revoke(4, k.id()),
            ];
            let mut keyring = Keyring::new(pepper.clone());
            let mut limiter = Limiter::new();
            let mut spent = 0;
            for (step, i) in order.into_iter().enumerate() {
                let change = changes[i].clone();
                if keyring.apply(change.clone()).unwrap() == keygate::Applied::Changed {
                    limiter.apply(&change);
                }
                if step == 1 {
                    // The old key spends everything before the roll lands.
                    for _ in 0..3 {
                        spent += u32::from(limiter.check(&k.id(), now, 1).result().is_ok());
                    }
                }
            }
            for _ in 0..5 {
                spent += u32::from(limiter.check(&successor.id(), now, 1).result().is_ok());
            }
            assert_eq!(spent, 3, "order {order:?}");
        }
    }
}

mod meter_machine {
    //! The meter rules as a state machine: random mints (by an unlimited
    //! caller, or by a family member, asking for nothing, the caller's own
    //! limits or others), rolls, revocations and spends through any live
    //! key, against a model in which a meter is one balance. Minting and
    //! rolling can never multiply a balance: every meter spends at most what
    //! it was created with, whichever of its keys spend it.
    use super::*;
    use keygate::{mint, roll, Change, KeyRecord, MintError, MintRequest, Pepper};
    use rand_core::SeedableRng;

    #[derive(Debug, Clone)]
    enum Op {
        /// An unlimited caller mints a key with these credits (or none).
        MintRoot(Option<u64>),
        /// Key `i` (of those minted) mints: asking nothing, its own limits,
        /// or other credits.
        MintBy(usize, Ask),
        Roll(usize),
        Revoke(usize),
        /// Key `i` spends `cost`.
        Spend(usize, u32),
    }

    #[derive(Debug, Clone, Copy)]
    enum Ask {
        Nothing,
        Same,
        Other(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        let i = 0usize..64;
        prop_oneof![
            2 => proptest::option::of(0u64..20).prop_map(Op::MintRoot),
            3 => (i.clone(), prop_oneof![
                Just(Ask::Nothing),
                Just(Ask::Same),
                (0u64..20).prop_map(Ask::Other)
            ]).prop_map(|(i, a)| Op::MintBy(i, a)),
            2 => i.clone().prop_map(Op::Roll),
            1 => i.clone().prop_map(Op::Revoke),
            6 => (i, 0u32..4).prop_map(|(i, c)| Op::Spend(i, c)),
        ]
    }

    fn limits(credits: Option<u64>) -> KeyLimits {
        KeyLimits {
            rate: None,
            credits: credits.map(|c| Credits::new(c, None).unwrap()),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn a_meter_is_one_balance_whatever_mints_and_rolls_share_it(
            ops in proptest::collection::vec(op(), 1..80)
        ) {
            let pepper = Pepper::from_bytes(&[5u8; 32]);
            let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(7);
            let now = UnixMillis::from_millis(1_000);
            let mut limiter = Limiter::new();
            let mut seq = 0u64;
            // Every key minted, whether it is live, and the model's meter of
            // it (an index into `meters`).
            let mut keys: Vec<(KeyRecord, bool, usize)> = Vec::new();
            // Per meter: its id, the credits it started with (None: none),
            // and what was spent.
            let mut meters: Vec<(KeyId, Option<u64>, u64)> = Vec::new();
            let apply = |limiter: &mut Limiter, change: Change| {
                limiter.apply(&change);
            };
            for op in ops {
                match op {
                    Op::MintRoot(credits) => {
                        let req = MintRequest::standard(None, None, now)
                            .unwrap()
                            .with_limits(limits(credits));
                        let record = mint(&pepper, &req, &mut rng, now).into_parts().0;
                        prop_assert_eq!(record.meter().id, record.id());
                        meters.push((record.id(), credits, 0));
                        seq += 1;
                        apply(&mut limiter, Change::upsert(seq, record.clone()));
                        keys.push((record, true, meters.len() - 1));
                    }
                    Op::MintBy(i, ask) => {
                        let Some((caller, live, m)) = keys.get(i % keys.len().max(1)).cloned() else {
                            continue;
                        };
                        if !live {
                            continue;
                        }
                        let req = MintRequest::standard(None, None, now).unwrap();
                        let req = match ask {
                            Ask::Nothing => req,
                            Ask::Same => req.with_limits(caller.limits()),
                            Ask::Other(c) => req.with_limits(limits(Some(c))),
                        };
                        let caller_limited = !caller.limits().is_unlimited();
                        let charged = req.clone().charged_to(&caller);
                        let asked_other = match ask {
                            Ask::Other(c) => limits(Some(c)) != caller.limits(),
                            _ => false,
                        };
                        if caller_limited && asked_other {
                            prop_assert_eq!(charged, Err(MintError::LimitsOfCaller));
                            continue;
                        }
                        let record = mint(&pepper, &charged.unwrap(), &mut rng, now).into_parts().0;
                        let model = if caller_limited {
                            // Charged to the caller's meter, with its limits.
                            prop_assert_eq!(record.meter(), caller.meter());
                            prop_assert_eq!(record.limits(), caller.limits());
                            m
                        } else {
                            // An unlimited caller's key is a meter of its own.
                            prop_assert_eq!(record.meter().id, record.id());
                            meters.push((record.id(), record.limits().credits.map(|c| c.remaining()), 0));
                            meters.len() - 1
                        };
                        seq += 1;
                        apply(&mut limiter, Change::upsert(seq, record.clone()));
                        keys.push((record, true, model));
                    }
                    Op::Roll(i) => {
                        let Some((old, live, m)) = keys.get(i % keys.len().max(1)).cloned() else {
                            continue;
                        };
                        if !live {
                            continue;
                        }
                        let rolled = roll(&pepper, &old, Duration::from_secs(60), &mut rng, now).unwrap();
                        let new = rolled.new_key().record().clone();
                        prop_assert_eq!(new.meter(), old.meter());
                        prop_assert_eq!(new.limits(), old.limits());
                        seq += 1;
                        apply(&mut limiter, Change::upsert(seq, rolled.old().clone()));
                        seq += 1;
                        apply(&mut limiter, Change::upsert(seq, new.clone()));
                        keys.push((new, true, m));
                    }
                    Op::Revoke(i) => {
                        let n = keys.len();
                        if let Some(k) = keys.get_mut(i % n.max(1)) {
                            if k.1 {
                                k.1 = false;
                                seq += 1;
                                apply(&mut limiter, Change::revoke(seq, k.0.id()));
                            }
                        }
                    }
                    Op::Spend(i, cost) => {
                        let n = keys.len();
                        let Some((record, live, m)) = keys.get(i % n.max(1)).cloned() else {
                            continue;
                        };
                        let verdict = limiter.check(&record.id(), now, cost);
                        let (_, credits, spent) = meters[m];
                        if !live {
                            // A revoked key is not limited here: the keyring
                            // refuses it before any limit.
                            prop_assert!(!limiter.is_limited(&record.id()));
                            continue;
                        }
                        match credits {
                            None => prop_assert!(verdict.result().is_ok()),
                            Some(c) => {
                                let fits = spent + u64::from(cost) <= c && (cost > 0 || spent < c);
                                prop_assert_eq!(verdict.result().is_ok(), fits,
                                    "meter {} started {} spent {} cost {}", m, c, spent, cost);
                                if fits {
                                    meters[m].2 += u64::from(cost);
                                }
                            }
                        }
                    }
                }
            }
            // No meter spent more than it started with, and the limiter's
            // balance of each is what the model says.
            for (id, credits, spent) in &meters {
                if let Some(c) = credits {
                    prop_assert!(spent <= c);
                    if let Some((key, _, _)) = keys.iter().find(|(k, live, _)| k.meter().id == *id && *live) {
                        let left = limiter.credits(&key.id(), now).map(|b| b.remaining);
                        prop_assert_eq!(left, Some(c - spent));
                    }
                }
            }
        }
    }
}
