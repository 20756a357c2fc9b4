//! Per-key limits through the [`Store`] trait, the same script on every
//! store (SQLite's tests and PostgreSQL's run it): limits and meters
//! round-trip through the columns, a limited key's children and its roll
//! share its meter, `set_limits` changes every key of a meter in one go and
//! logs each, and the balance arithmetic of `change_credits`.

use core::time::Duration;

use keygate::{
    ChangeOp, Credits, KeyLimits, KeyRecord, MintRequest, Pepper, RateLimit, Refill, UnixMillis,
    MAX_CREDITS,
};

use super::{Action, LimitsChange, Scope, SetOrAdd, Store, StoreError};

fn pepper() -> Pepper {
    Pepper::from_bytes(&[7u8; 32])
}

fn at(ms: i64) -> UnixMillis {
    UnixMillis::from_millis(ms)
}

fn mint(request: &MintRequest, ms: i64) -> (KeyRecord, keygate::SecretToken) {
    keygate::mint(&pepper(), request, &mut keygate::os_entropy(), at(ms)).into_parts()
}

/// A restricted key minted at `ms` by `creator` (charged as the library
/// charges it), asking for `limits`.
pub(super) fn child(creator: &KeyRecord, limits: KeyLimits, ms: i64) -> KeyRecord {
    let request = MintRequest::restricted(
        Some("child"),
        "account:write,objects:read".parse().unwrap(),
        None,
        at(ms),
    )
    .unwrap()
    .with_limits(limits)
    .charged_to(creator)
    .unwrap()
    .created_by(&keygate::testing::principal_of(creator));
    mint(&request, ms).0
}

/// The limits the script starts a meter with.
pub(super) fn limits() -> KeyLimits {
    KeyLimits {
        rate: Some(RateLimit::new(10, Duration::from_secs(1)).unwrap()),
        credits: Some(
            Credits::new(100, Some(Refill::new(50, Duration::from_secs(60)).unwrap())).unwrap(),
        ),
    }
}

fn conflict<T: std::fmt::Debug>(r: Result<T, StoreError>, needle: &str) {
    match r {
        Err(StoreError::Conflict(m)) => assert!(m.contains(needle), "{m}"),
        other => panic!("expected a conflict ({needle}), got {other:?}"),
    }
}

/// The script. `store` must be empty.
pub(super) async fn limits_live_on_the_meter(store: &dyn Store) {
    let root = mint(
        &MintRequest::standard(Some("root"), None, at(1_000)).unwrap(),
        1_000,
    )
    .0;
    assert_eq!(store.create(&root, None, 1_000).await.unwrap(), 1);

    // A limited key: its limits and its own meter round-trip.
    let a = child(&root, limits(), 2_000);
    assert_eq!(a.meter().id, a.id());
    store.create(&a, Some(root.id()), 2_000).await.unwrap();
    let got = store.get(a.id(), Scope::All).await.unwrap().unwrap();
    assert_eq!(got.record, a);
    assert_eq!(got.record.limits(), limits());
    assert_eq!(
        store.credit_balance(a.meter(), at(2_000)).await.unwrap(),
        Some(100)
    );
    assert_eq!(
        store.credit_balance(root.meter(), at(2_000)).await.unwrap(),
        None
    );

    // Its child shares its meter and limits, whatever it asked for.
    let c = child(&a, KeyLimits::default(), 3_000);
    assert_eq!((c.meter(), c.limits()), (a.meter(), limits()));
    store.create(&c, Some(a.id()), 3_000).await.unwrap();
    assert_eq!(
        store.get(c.id(), Scope::All).await.unwrap().unwrap().record,
        c
    );
    // A record that escapes its limited creator's meter is refused in the
    // create's transaction (a creator whose limits changed meanwhile).
    let escaped = child(&root, KeyLimits::default(), 3_100);
    let escaped = KeyRecord::from_parts(keygate::KeyRecordParts {
        creator_id: Some(a.id()),
        ..parts(&escaped)
    })
    .unwrap();
    conflict(
        store.create(&escaped, Some(a.id()), 3_100).await,
        "changed while",
    );
    let stale = KeyRecord::from_parts(keygate::KeyRecordParts {
        limits: KeyLimits {
            rate: None,
            ..limits()
        },
        ..parts(&c)
    })
    .unwrap();
    let stale = KeyRecord::from_parts(keygate::KeyRecordParts {
        id: escaped.id(),
        ..parts(&stale)
    })
    .unwrap();
    conflict(
        store.create(&stale, Some(a.id()), 3_100).await,
        "changed while",
    );

    // A roll's new key shares the meter.
    let (new_key, old) = keygate::roll(
        &pepper(),
        &a,
        Duration::from_secs(600),
        &mut keygate::os_entropy(),
        at(4_000),
    )
    .unwrap()
    .into_parts();
    let a2 = new_key.record().clone();
    assert_eq!((a2.meter(), a2.limits()), (a.meter(), limits()));
    store
        .roll(&old, &a2, Scope::All, None, 4_000)
        .await
        .unwrap();
    assert_eq!(
        store
            .get(a2.id(), Scope::All)
            .await
            .unwrap()
            .unwrap()
            .record,
        a2
    );

    // One change through the newest key: every key of the meter, one event
    // each, the target first; the feed carries the new records.
    let (before, _) = store.events(0, 100, Scope::All).await.unwrap();
    let cursor = before.last().unwrap().seq;
    let five = RateLimit::new(5, Duration::from_secs(1)).unwrap();
    let change = LimitsChange {
        rate: Some(Some(five)),
        credits: None,
    };
    let changed = store
        .set_limits(a2.id(), change, Scope::All, Some(root.id()), 5_000)
        .await
        .unwrap();
    let mut rest = vec![a.id(), c.id()];
    rest.sort();
    let ids: Vec<_> = changed.iter().map(|(_, r)| r.id()).collect();
    assert_eq!(ids, [vec![a2.id()], rest].concat());
    let seqs: Vec<u64> = changed.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, [cursor + 1, cursor + 2, cursor + 3]);
    for (_, record) in &changed {
        assert_eq!(record.limits().rate, Some(five));
        assert_eq!(record.limits().credits, limits().credits);
        assert_eq!(record.meter(), a.meter());
    }
    let (events, _) = store.events(cursor, 100, Scope::All).await.unwrap();
    assert!(events
        .iter()
        .all(|e| e.action == Action::LimitsChanged && e.actor_id == Some(root.id())));
    let feed = store.changes_since(cursor, 100).await.unwrap();
    assert_eq!(feed.len(), 3);
    for (change, (seq, record)) in feed.iter().zip(&changed) {
        assert_eq!(change.seq, *seq);
        assert!(matches!(&change.op, ChangeOp::Upsert(r) if r == record));
    }
    let snapshot = store.snapshot().await.unwrap();
    let in_snapshot = snapshot.records.iter().find(|r| r.id() == c.id()).unwrap();
    assert_eq!(in_snapshot.limits().rate, Some(five));
    // The same credits again keep the balance; the root's own meter is
    // untouched.
    assert_eq!(
        store.credit_balance(a.meter(), at(5_000)).await.unwrap(),
        Some(100)
    );
    let root_now = store.get(root.id(), Scope::All).await.unwrap().unwrap();
    assert!(root_now.record.limits().is_unlimited());

    // A rolled key is no target; nor one outside the scope, nor a revoked one.
    conflict(
        store
            .set_limits(a.id(), change, Scope::All, None, 5_100)
            .await,
        "was rolled",
    );
    assert_eq!(
        store
            .set_limits(a2.id(), change, Scope::DescendantsOf(c.id()), None, 5_100)
            .await,
        Err(StoreError::NotFound)
    );
    assert!(store.is_rolled(a.id()).await.unwrap());
    assert!(!store.is_rolled(a2.id()).await.unwrap());

    // The balance: set, add, clamped at 0 and MAX_CREDITS.
    let meter = a2.meter();
    let t = 6_000;
    assert_eq!(
        store.change_credits(meter, SetOrAdd::Add(-30), at(t)).await,
        Ok(70)
    );
    assert_eq!(
        store.change_credits(meter, SetOrAdd::Set(7), at(t)).await,
        Ok(7)
    );
    assert_eq!(
        store.change_credits(meter, SetOrAdd::Add(-8), at(t)).await,
        Ok(0)
    );
    assert_eq!(
        store
            .change_credits(meter, SetOrAdd::Add(i64::MAX), at(t))
            .await,
        Ok(MAX_CREDITS)
    );
    assert_eq!(
        store
            .change_credits(meter, SetOrAdd::Set(u64::MAX), at(t))
            .await,
        Ok(MAX_CREDITS)
    );
    assert_eq!(
        store.credit_balance(meter, at(t)).await,
        Ok(Some(MAX_CREDITS))
    );
    // Refills count from the meter's start (a's creation, 2 000): the
    // minute from 62 000 starts at 50; a change applies to that balance.
    assert_eq!(
        store.credit_balance(meter, at(61_999)).await,
        Ok(Some(MAX_CREDITS))
    );
    assert_eq!(store.credit_balance(meter, at(62_000)).await, Ok(Some(50)));
    assert_eq!(
        store
            .change_credits(meter, SetOrAdd::Add(-20), at(70_000))
            .await,
        Ok(30)
    );
    assert_eq!(store.credit_balance(meter, at(121_999)).await, Ok(Some(30)));
    assert_eq!(store.credit_balance(meter, at(122_000)).await, Ok(Some(50)));

    // New credits start afresh at their grant; removed credits drop the
    // balance, and then there is none to change.
    let twenty = Credits::new(20, None).unwrap();
    let change = LimitsChange {
        rate: None,
        credits: Some(Some(twenty)),
    };
    store
        .set_limits(a2.id(), change, Scope::All, None, 130_000)
        .await
        .unwrap();
    assert_eq!(store.credit_balance(meter, at(130_000)).await, Ok(Some(20)));
    assert_eq!(
        store
            .change_credits(meter, SetOrAdd::Add(-5), at(130_000))
            .await,
        Ok(15)
    );
    store
        .set_limits(c.id(), change, Scope::All, None, 131_000)
        .await
        .unwrap();
    assert_eq!(store.credit_balance(meter, at(131_000)).await, Ok(Some(15)));
    let none = LimitsChange {
        rate: Some(None),
        credits: Some(None),
    };
    let changed = store
        .set_limits(c.id(), none, Scope::All, None, 132_000)
        .await
        .unwrap();
    assert!(changed.iter().all(|(_, r)| r.limits().is_unlimited()));
    assert_eq!(store.credit_balance(meter, at(132_000)).await, Ok(None));
    conflict(
        store
            .change_credits(meter, SetOrAdd::Set(1), at(132_000))
            .await,
        "no credits",
    );
    // A key minted by a key that is unlimited again has its own meter.
    let c = store.get(c.id(), Scope::All).await.unwrap().unwrap().record;
    assert_eq!(c.meter(), meter);
    let d = child(&c, KeyLimits::default(), 133_000);
    assert_eq!(d.meter().id, d.id());
    store.create(&d, Some(c.id()), 133_000).await.unwrap();
}

fn parts(r: &KeyRecord) -> keygate::KeyRecordParts {
    keygate::KeyRecordParts {
        id: r.id(),
        kind: r.kind(),
        name: r.name().to_owned(),
        secret_hash: r.secret_hash(),
        scopes: r.scopes(),
        expires_at: r.expires_at(),
        created_at: r.created_at(),
        creator_id: r.creator_id(),
        limits: r.limits(),
        meter: Some(r.meter()),
    }
}

/// A roll computed before the meter's limits changed is refused.
pub(super) async fn a_roll_keeps_the_current_limits(store: &dyn Store) {
    let root = mint(
        &MintRequest::standard(Some("root"), None, at(1_000)).unwrap(),
        1_000,
    )
    .0;
    store.create(&root, None, 1_000).await.unwrap();
    let a = child(&root, limits(), 2_000);
    store.create(&a, Some(root.id()), 2_000).await.unwrap();
    let (new_key, old) = keygate::roll(
        &pepper(),
        &a,
        Duration::ZERO,
        &mut keygate::os_entropy(),
        at(3_000),
    )
    .unwrap()
    .into_parts();
    let change = LimitsChange {
        rate: Some(None),
        credits: None,
    };
    store
        .set_limits(a.id(), change, Scope::All, None, 2_500)
        .await
        .unwrap();
    conflict(
        store
            .roll(&old, new_key.record(), Scope::All, None, 3_000)
            .await,
        "changed while it was being rolled",
    );
}

/// The configuration plane's credit changes with leases out: the total is
/// the pool plus the live leases, a set gives the pool the amount less the
/// leases, an add goes to the pool, changed credits set the total, and
/// removed credits drop the pool and every lease. `store` must be empty.
pub(super) async fn credits_with_leases_out(store: &dyn Store) {
    let root = mint(
        &MintRequest::standard(Some("root"), None, at(1_000)).unwrap(),
        1_000,
    )
    .0;
    store.create(&root, None, 1_000).await.unwrap();
    let metered = KeyLimits {
        rate: None,
        credits: Some(Credits::new(100, None).unwrap()),
    };
    let a = child(&root, metered, 2_000);
    store.create(&a, Some(root.id()), 2_000).await.unwrap();
    let meter = a.meter();
    let pool = super::CreditMeter {
        meter,
        refill: None,
    };
    let t = 3_000;
    // Two instances lease 30 and 20 of the 100.
    for (instance, want) in [("i1", 30), ("i2", 20)] {
        let lease = store
            .lease_credits(pool, instance, want, 1, t, 10_000)
            .await
            .unwrap();
        assert_eq!(lease.granted, want);
    }
    assert_eq!(store.credit_balance(meter, at(t)).await, Ok(Some(100)));
    assert_eq!(store.credit_total(pool, t).await, Ok(Some(100)));
    // Set to 60: the pool gets 10, the leases keep their 50.
    assert_eq!(
        store.change_credits(meter, SetOrAdd::Set(60), at(t)).await,
        Ok(60)
    );
    let lease = store
        .lease_credits(pool, "i3", 10, 10, t, 10_000)
        .await
        .unwrap();
    assert_eq!((lease.granted, lease.pool), (10, 0));
    // Set below what is leased: the pool is empty, the leases stay theirs.
    assert_eq!(
        store.change_credits(meter, SetOrAdd::Set(5), at(t)).await,
        Ok(60)
    );
    // An add goes to the pool; a taking away, from the pool only.
    assert_eq!(
        store.change_credits(meter, SetOrAdd::Add(7), at(t)).await,
        Ok(67)
    );
    assert_eq!(
        store
            .change_credits(meter, SetOrAdd::Add(-100), at(t))
            .await,
        Ok(60)
    );
    // One instance hands its lease back: the total stays.
    assert!(store.return_credits(pool, "i1", 30, 0, 0, t).await.unwrap());
    assert_eq!(store.credit_balance(meter, at(t)).await, Ok(Some(60)));
    // New credits set the total to their grant, the leases counted.
    let change = LimitsChange {
        rate: None,
        credits: Some(Some(Credits::new(40, None).unwrap())),
    };
    store
        .set_limits(a.id(), change, Scope::All, None, t)
        .await
        .unwrap();
    assert_eq!(store.credit_balance(meter, at(t)).await, Ok(Some(40)));
    assert_eq!(store.credit_total(pool, t).await, Ok(Some(40)));
    // The same credits again keep the total.
    store
        .set_limits(a.id(), change, Scope::All, None, t)
        .await
        .unwrap();
    assert_eq!(store.credit_balance(meter, at(t)).await, Ok(Some(40)));
    // Removed credits: no pool, no leases.
    let none = LimitsChange {
        rate: None,
        credits: Some(None),
    };
    store
        .set_limits(a.id(), none, Scope::All, None, t)
        .await
        .unwrap();
    assert_eq!(store.credit_balance(meter, at(t)).await, Ok(None));
    assert_eq!(store.credit_total(pool, t).await, Ok(None));
    let lease = store
        .lease_credits(pool, "i2", 10, 1, t, 10_000)
        .await
        .unwrap();
    assert_eq!(lease.granted, 0);
    assert_eq!(lease.elsewhere, 0, "every lease row went with the pool");
}
