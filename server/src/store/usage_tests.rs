//! The usage counts of either store, through the [`Store`] trait, at
//! explicit times: batches add up, buckets of every width, whole buckets at
//! the range's ends, scope and revocation, and retention (minutes folded
//! into days, old days deleted, in bounded passes, totals kept). Run by
//! `sqlite::tests` and by `postgres::tests` against a real PostgreSQL.

use keygate::{KeyId, KeyRecord, MintRequest, Pepper, UnixMillis};

use super::{
    Bucket, Scope, Store, UsageBucket, UsageCounts, UsageQuery, UsageRow, DAY_MS, HOUR_MS,
    MINUTE_MS,
};

fn pepper() -> Pepper {
    Pepper::from_bytes(&[7; 32])
}

fn standard() -> KeyRecord {
    let request = MintRequest::standard(None, None, UnixMillis::from_millis(1)).unwrap();
    keygate::mint(
        &pepper(),
        &request,
        &mut keygate::os_entropy(),
        UnixMillis::from_millis(1),
    )
    .into_parts()
    .0
}

fn child_of(creator: &KeyRecord) -> KeyRecord {
    let request = MintRequest::restricted(
        None,
        "objects:read".parse().unwrap(),
        None,
        UnixMillis::from_millis(2),
    )
    .unwrap()
    .created_by(&keygate::testing::principal_of(creator));
    keygate::mint(
        &pepper(),
        &request,
        &mut keygate::os_entropy(),
        UnixMillis::from_millis(2),
    )
    .into_parts()
    .0
}

/// Counts from (allowed, forbidden, rate limited, credits exhausted).
pub(crate) fn n(a: u64, f: u64, r: u64, c: u64) -> UsageCounts {
    UsageCounts {
        allowed: a,
        forbidden: f,
        rate_limited: r,
        credits_exhausted: c,
    }
}

fn row(key: &KeyRecord, minute_ms: i64, counts: UsageCounts) -> UsageRow {
    UsageRow {
        key_id: key.id(),
        minute_ms,
        counts,
    }
}

fn b(start_ms: i64, counts: UsageCounts) -> UsageBucket {
    UsageBucket { start_ms, counts }
}

async fn read(
    store: &dyn Store,
    id: KeyId,
    scope: Scope,
    bucket: Bucket,
    from_ms: i64,
    to_ms: i64,
) -> Option<Vec<UsageBucket>> {
    store
        .usage(
            id,
            scope,
            UsageQuery {
                bucket,
                from_ms,
                to_ms,
            },
        )
        .await
        .unwrap()
        .map(|u| u.buckets)
}

/// Batches add up; every bucket width; whole buckets; scope; revocation.
pub(crate) async fn usage_round_trip(store: &dyn Store) {
    let root = standard();
    let child = child_of(&root);
    let other = standard();
    store.create(&root, None, 1).await.unwrap();
    store.create(&child, Some(root.id()), 2).await.unwrap();
    store.create(&other, None, 3).await.unwrap();
    store.record_usage(&[]).await.unwrap();
    let t = 100 * DAY_MS;
    store
        .record_usage(&[
            row(&child, t, n(2, 1, 0, 0)),
            row(&child, t + MINUTE_MS, n(1, 0, 0, 0)),
            row(&child, t + 61 * MINUTE_MS, n(0, 0, 1, 0)),
            row(&other, t, n(5, 0, 0, 0)),
        ])
        .await
        .unwrap();
    // A second batch (another flush, or another instance) adds.
    store
        .record_usage(&[row(&child, t, n(3, 0, 0, 2))])
        .await
        .unwrap();
    let all = Scope::All;
    let id = child.id();
    assert_eq!(
        read(store, id, all, Bucket::Minute, t, t + 2 * HOUR_MS).await,
        Some(vec![
            b(t, n(5, 1, 0, 2)),
            b(t + MINUTE_MS, n(1, 0, 0, 0)),
            b(t + 61 * MINUTE_MS, n(0, 0, 1, 0)),
        ])
    );
    assert_eq!(
        read(store, id, all, Bucket::Hour, t, t + 2 * HOUR_MS).await,
        Some(vec![b(t, n(6, 1, 0, 2)), b(t + HOUR_MS, n(0, 0, 1, 0))])
    );
    assert_eq!(
        read(store, id, all, Bucket::Day, 0, t).await,
        Some(vec![b(t, n(6, 1, 1, 2))])
    );
    // Whole buckets: an hour that the range only touches counts whole.
    assert_eq!(
        read(
            store,
            id,
            all,
            Bucket::Hour,
            t + 30 * MINUTE_MS,
            t + 30 * MINUTE_MS
        )
        .await,
        Some(vec![b(t, n(6, 1, 0, 2))])
    );
    // Minutes outside the range are not read; empty ranges are empty.
    assert_eq!(
        read(
            store,
            id,
            all,
            Bucket::Minute,
            t + MINUTE_MS,
            t + 60 * MINUTE_MS
        )
        .await,
        Some(vec![b(t + MINUTE_MS, n(1, 0, 0, 0))])
    );
    assert_eq!(
        read(store, id, all, Bucket::Minute, t - 1, t - 1).await,
        Some(vec![])
    );
    assert_eq!(
        read(store, other.id(), all, Bucket::Day, t, t).await,
        Some(vec![b(t, n(5, 0, 0, 0))])
    );
    // Scope: the child is in the root's subtree, not in another's; the
    // root is not in its own; an unknown id is nowhere.
    let under = |k: &KeyRecord| Scope::DescendantsOf(k.id());
    assert!(read(store, id, under(&root), Bucket::Day, t, t)
        .await
        .is_some());
    assert_eq!(
        read(store, id, under(&other), Bucket::Day, t, t).await,
        None
    );
    assert_eq!(
        read(store, root.id(), under(&root), Bucket::Day, t, t).await,
        None
    );
    let unknown = KeyId::parse("0000000000000000").unwrap();
    assert_eq!(read(store, unknown, all, Bucket::Day, t, t).await, None);
    assert_eq!(
        read(store, unknown, under(&root), Bucket::Day, t, t).await,
        None
    );
    // A revoked key keeps its rows, and says it was revoked.
    store.revoke(id, Scope::All, false, None, 50).await.unwrap();
    let usage = store
        .usage(
            id,
            all,
            UsageQuery {
                bucket: Bucket::Day,
                from_ms: t,
                to_ms: t,
            },
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(usage.revoked_at_ms, Some(50));
    assert_eq!(usage.buckets, vec![b(t, n(6, 1, 1, 2))]);
}

/// Sums every count of `key` by day, from the day rows and minute rows.
async fn days(store: &dyn Store, key: &KeyRecord, now: i64) -> Vec<UsageBucket> {
    read(store, key.id(), Scope::All, Bucket::Day, 0, now)
        .await
        .unwrap()
}

/// Retention at explicit times: minutes older than the 30 days before
/// today fold into their days in passes of at most `limit` rows, keeping
/// every total; days older than 731 days before today go; late minutes of
/// a folded day fold into it.
pub(crate) async fn retention(store: &dyn Store) {
    let k = standard();
    let j = standard();
    store.create(&k, None, 1).await.unwrap();
    store.create(&j, None, 2).await.unwrap();
    let now = 1_000 * DAY_MS + 5 * HOUR_MS;
    let day = |d: i64| d * DAY_MS;
    store
        .record_usage(&[
            // Older than 731 days before today: folded, then deleted.
            row(&k, day(200) + MINUTE_MS, n(9, 9, 9, 9)),
            row(&k, day(268) + 23 * HOUR_MS, n(9, 0, 0, 0)),
            // Folded into their days.
            row(&k, day(269), n(1, 0, 0, 0)),
            row(&k, day(900) + 10 * MINUTE_MS, n(1, 0, 0, 0)),
            row(&k, day(900) + 20 * MINUTE_MS, n(2, 1, 0, 0)),
            row(&k, day(901), n(0, 1, 0, 0)),
            row(&k, day(969) + DAY_MS - MINUTE_MS, n(1, 0, 0, 0)),
            row(&j, day(900) + 5 * MINUTE_MS, n(0, 0, 0, 4)),
            // Kept as minutes: the 30 days before today, and today.
            row(&k, day(970), n(4, 0, 0, 0)),
            row(&k, day(999) + 3 * HOUR_MS, n(0, 0, 2, 0)),
            row(&k, now, n(1, 0, 0, 0)),
        ])
        .await
        .unwrap();
    let before = days(store, &k, now).await;
    // Passes of at most 3 rows until nothing is left to do.
    let (mut folded, mut deleted, mut passes) = (0, 0, 0);
    loop {
        let pruned = store.prune_usage(now, 3).await.unwrap();
        assert!(pruned.folded <= 3 && pruned.deleted <= 3, "{pruned:?}");
        if pruned.folded == 0 && pruned.deleted == 0 {
            break;
        }
        folded += pruned.folded;
        deleted += pruned.deleted;
        passes += 1;
        assert!(passes < 10);
    }
    assert_eq!((folded, deleted), (8, 2));
    assert!(passes >= 3, "{passes}");
    let after = days(store, &k, now).await;
    assert_eq!(
        after,
        vec![
            b(day(269), n(1, 0, 0, 0)),
            b(day(900), n(3, 1, 0, 0)),
            b(day(901), n(0, 1, 0, 0)),
            b(day(969), n(1, 0, 0, 0)),
            b(day(970), n(4, 0, 0, 0)),
            b(day(999), n(0, 0, 2, 0)),
            b(day(1_000), n(1, 0, 0, 0)),
        ]
    );
    // Nothing but the two expired days went.
    let total = |v: &[UsageBucket]| {
        let mut sum = UsageCounts::default();
        for bucket in v {
            sum.add(&bucket.counts);
        }
        sum
    };
    let mut kept = total(&after);
    kept.add(&n(18, 9, 9, 9));
    assert_eq!(kept, total(&before));
    assert_eq!(days(store, &j, now).await, vec![b(day(900), n(0, 0, 0, 4))]);
    // Folded days are gone from minute and hour buckets; the minutes kept
    // are still there.
    assert_eq!(
        read(
            store,
            k.id(),
            Scope::All,
            Bucket::Minute,
            day(969),
            day(971) - 1
        )
        .await,
        Some(vec![b(day(970), n(4, 0, 0, 0))])
    );
    assert_eq!(
        read(store, k.id(), Scope::All, Bucket::Hour, day(900), day(901)).await,
        Some(vec![])
    );
    // A late minute of a folded day (an instance that flushes late) folds
    // into it at the next pass.
    store
        .record_usage(&[row(&k, day(900) + 30 * MINUTE_MS, n(1, 0, 0, 0))])
        .await
        .unwrap();
    let pruned = store.prune_usage(now, 3).await.unwrap();
    assert_eq!((pruned.folded, pruned.deleted), (1, 0));
    assert_eq!(
        read(store, k.id(), Scope::All, Bucket::Day, day(900), day(900)).await,
        Some(vec![b(day(900), n(4, 1, 0, 0))])
    );
    // A day later, the oldest minutes kept move on too.
    let pruned = store.prune_usage(now + DAY_MS, 100).await.unwrap();
    assert_eq!((pruned.folded, pruned.deleted), (1, 1));
    assert_eq!(
        read(
            store,
            k.id(),
            Scope::All,
            Bucket::Minute,
            day(970),
            day(970)
        )
        .await,
        Some(vec![])
    );
    assert_eq!(
        read(store, k.id(), Scope::All, Bucket::Day, day(970), day(970)).await,
        Some(vec![b(day(970), n(4, 0, 0, 0))])
    );
}
