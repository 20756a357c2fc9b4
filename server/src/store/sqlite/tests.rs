//! The SQLite store's tests.

use super::super::Store as _;
use super::super::SCHEMA_VERSION;
use super::*;
use keygate::{ChangeOp, Keyring, MintRequest, Pepper};
use rusqlite::params;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

fn pepper() -> Pepper {
    Pepper::from_bytes(&[7; 32])
}

fn new_store() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("k.db")).unwrap();
    (dir, store)
}

/// A restricted key (objects:read) minted at `at` by `creator`.
fn record(creator: Option<&KeyRecord>, at: i64) -> KeyRecord {
    let mut req = MintRequest::restricted(
        Some("k"),
        "objects:read".parse().unwrap(),
        None,
        keygate::UnixMillis::from_millis(at),
    )
    .unwrap();
    if let Some(c) = creator {
        req = req.created_by(&keygate::testing::principal_of(c));
    }
    keygate::mint(
        &pepper(),
        &req,
        &mut keygate::os_entropy(),
        keygate::UnixMillis::from_millis(at),
    )
    .into_parts()
    .0
}

fn raw(store: &SqliteStore) -> std::sync::MutexGuard<'_, Connection> {
    store.inner.writer.lock().unwrap()
}

#[tokio::test]
async fn create_first_stores_only_into_an_empty_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("k.db")).unwrap();
    let a = record(None, 5);
    let b = record(None, 6);
    assert_eq!(store.create_first(&a, 5).await.unwrap(), Some(1));
    assert_eq!(store.create_first(&b, 6).await.unwrap(), None);
    assert_eq!(store.count().await.unwrap(), 1);
    assert!(store.get(a.id(), Scope::All).await.unwrap().is_some());
    assert!(store.get(b.id(), Scope::All).await.unwrap().is_none());
    // One change: the first key's creation.
    let changes = store.changes_since(0, 10).await.unwrap();
    assert_eq!(changes.len(), 1);
}

#[tokio::test]
async fn create_get_count_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k.db");
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.count().await.unwrap(), 0);
    store.ping().await.unwrap();
    let std_req = MintRequest::standard(
        Some("s"),
        Some(keygate::UnixMillis::from_millis(9_000)),
        keygate::UnixMillis::from_millis(5),
    )
    .unwrap();
    let a = keygate::mint(
        &pepper(),
        &std_req,
        &mut keygate::os_entropy(),
        keygate::UnixMillis::from_millis(5),
    )
    .into_parts()
    .0;
    let b = record(Some(&a), 6);
    assert_eq!(store.create(&a, None, 5).await.unwrap(), 1);
    assert_eq!(store.create(&b, Some(a.id()), 6).await.unwrap(), 2);
    // A duplicate id is a bug, not a retry.
    assert!(matches!(
        store.create(&a, None, 7).await,
        Err(StoreError::Fatal(_))
    ));
    let got = store.get(b.id(), Scope::All).await.unwrap().unwrap();
    assert_eq!(got.record, b);
    assert_eq!((got.revoked_at_ms, got.last_used_at_ms), (None, None));
    assert_eq!(store.count().await.unwrap(), 2);
    drop(store);
    let again = SqliteStore::open(&path).unwrap();
    assert_eq!(
        again.get(a.id(), Scope::All).await.unwrap().unwrap().record,
        a
    );
    let snap = again.snapshot().await.unwrap();
    assert_eq!(snap.seq, 2);
    assert_eq!(snap.records.len(), 2);
    assert_eq!(
        meta_get(&raw(&again), "schema_version").unwrap().as_deref(),
        Some(SCHEMA_VERSION.to_string().as_str())
    );
}

#[test]
fn every_connection_is_wal_and_synchronous_full() {
    let (_dir, store) = new_store();
    for conn in [&store.inner.writer, &store.inner.reader] {
        let conn = conn.lock().unwrap();
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        let sync: i64 = conn
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap();
        assert_eq!((mode.as_str(), sync), ("wal", 2));
        check_durability(&conn, "x").unwrap();
        conn.execute_batch("PRAGMA synchronous=NORMAL").unwrap();
        let e = check_durability(&conn, "x").unwrap_err();
        assert!(e.to_string().contains("synchronous=1"), "{e}");
        conn.execute_batch("PRAGMA synchronous=EXTRA").unwrap();
        check_durability(&conn, "x").unwrap();
    }
    // A file that is no database fails to open, naming it.
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.db");
    std::fs::write(&junk, vec![b'x'; 4096]).unwrap();
    let e = SqliteStore::open(&junk).err().unwrap();
    assert!(matches!(e, StoreError::Fatal(_)), "{e:?}");
    assert!(e.to_string().contains("junk.db"), "{e}");
    // A database that cannot journal to a WAL (in memory) fails to open.
    let e = SqliteStore::open(Path::new(":memory:")).err().unwrap();
    assert!(e.to_string().contains("not in WAL mode"), "{e}");
}

// The writer's lock is held across the reads on purpose: they must not
// need it.
#[allow(clippy::await_holding_lock)]
#[tokio::test]
async fn reads_do_not_wait_for_a_write_in_progress() {
    let (_dir, store) = new_store();
    let [a, ..] = family(&store).await;
    let late = record(None, 99);
    // Hold the writer, mid-transaction, with an uncommitted insert.
    let mut writer = raw(&store);
    let tx = writer
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .unwrap();
    insert_key(&tx, &late).unwrap();
    let read = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        (
            store.get(a.id(), Scope::All).await.unwrap(),
            store.get(late.id(), Scope::All).await.unwrap(),
            store.snapshot().await.unwrap().seq,
        )
    })
    .await
    .expect("a read waited for the writer");
    assert!(read.0.is_some());
    assert!(read.1.is_none(), "an uncommitted row is invisible");
    assert_eq!(read.2, 5);
    tx.commit().unwrap();
    drop(writer);
    assert!(store.get(late.id(), Scope::All).await.unwrap().is_some());
}

#[tokio::test]
async fn list_pages_in_id_order_without_revoked_keys() {
    let (_dir, store) = new_store();
    let mut ids = Vec::new();
    for i in 0..25 {
        let r = record(None, i);
        store.create(&r, None, i).await.unwrap();
        ids.push(r.id());
    }
    ids.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    let gone = ids.remove(3);
    store
        .revoke(gone, Scope::All, false, None, 100)
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut after = None;
    let mut pages = Vec::new();
    loop {
        let page = store.list(Scope::All, after, 10).await.unwrap();
        pages.push((page.keys.len(), page.has_more));
        seen.extend(page.keys.iter().map(|k| k.record.id()));
        after = seen.last().copied();
        if !page.has_more {
            break;
        }
    }
    assert_eq!(pages, vec![(10, true), (10, true), (4, false)]);
    assert_eq!(seen, ids);
    // Exactly `limit` left: no more after it.
    let page = store.list(Scope::All, Some(ids[13]), 10).await.unwrap();
    assert_eq!((page.keys.len(), page.has_more), (10, false));
    // The revoked key is still readable by get.
    let g = store.get(gone, Scope::All).await.unwrap().unwrap();
    assert_eq!(g.revoked_at_ms, Some(100));
}

/// a minted b and d; b minted c; e stands alone.
async fn family(store: &SqliteStore) -> [KeyRecord; 5] {
    let a = record(None, 1);
    let b = record(Some(&a), 2);
    let c = record(Some(&b), 3);
    let d = record(Some(&a), 4);
    let e = record(None, 5);
    for (r, actor) in [
        (&a, None),
        (&b, Some(a.id())),
        (&c, Some(b.id())),
        (&d, Some(a.id())),
        (&e, None),
    ] {
        store
            .create(r, actor, r.created_at().as_millis())
            .await
            .unwrap();
    }
    [a, b, c, d, e]
}

fn sorted(mut ids: Vec<KeyId>) -> Vec<KeyId> {
    ids.sort_by(|x, y| x.as_str().cmp(y.as_str()));
    ids
}

async fn listed(store: &SqliteStore, scope: Scope) -> Vec<KeyId> {
    let page = store.list(scope, None, 100).await.unwrap();
    page.keys.iter().map(|k| k.record.id()).collect()
}

#[tokio::test]
async fn descendant_scoping() {
    let (_dir, store) = new_store();
    let [a, b, c, d, e] = family(&store).await;
    let of_a = Scope::DescendantsOf(a.id());
    assert_eq!(
        listed(&store, of_a).await,
        sorted(vec![b.id(), c.id(), d.id()])
    );
    assert_eq!(
        listed(&store, Scope::DescendantsOf(b.id())).await,
        vec![c.id()]
    );
    assert!(listed(&store, Scope::DescendantsOf(e.id()))
        .await
        .is_empty());
    // get: a key is not its own descendant; a stranger is out of scope.
    assert!(store.get(c.id(), of_a).await.unwrap().is_some());
    assert!(store.get(a.id(), of_a).await.unwrap().is_none());
    assert!(store.get(e.id(), of_a).await.unwrap().is_none());
    assert!(store
        .get(d.id(), Scope::DescendantsOf(b.id()))
        .await
        .unwrap()
        .is_none());
    // revoke and roll outside the scope: NotFound, nothing written.
    let of_b = Scope::DescendantsOf(b.id());
    assert_eq!(
        store.revoke(d.id(), of_b, false, Some(b.id()), 9).await,
        Err(StoreError::NotFound)
    );
    let rolled = keygate::roll(
        &pepper(),
        &d,
        std::time::Duration::from_millis(0),
        &mut keygate::os_entropy(),
        keygate::UnixMillis::from_millis(9),
    )
    .unwrap();
    assert_eq!(
        store
            .roll(rolled.old(), rolled.new_key().record(), of_b, None, 9)
            .await,
        Err(StoreError::NotFound)
    );
    assert_eq!(store.events(0, 100, Scope::All).await.unwrap().0.len(), 5);
    // A revoked key still links its children to their grandparent.
    store
        .revoke(b.id(), of_a, false, Some(a.id()), 10)
        .await
        .unwrap();
    assert_eq!(listed(&store, of_a).await, sorted(vec![c.id(), d.id()]));
    assert!(store.get(c.id(), of_a).await.unwrap().is_some());
    // Within scope, revoke works.
    assert_eq!(
        store
            .revoke(c.id(), of_a, false, Some(a.id()), 11)
            .await
            .unwrap(),
        vec![(7, c.id())]
    );
}

#[tokio::test]
async fn cascade_revokes_exactly_the_live_descendants() {
    let (_dir, store) = new_store();
    let [a, b, c, d, e] = family(&store).await;
    // Without cascade: only the key.
    assert_eq!(
        store
            .revoke(b.id(), Scope::All, false, None, 10)
            .await
            .unwrap(),
        vec![(6, b.id())]
    );
    assert_eq!(
        store.revoke(b.id(), Scope::All, true, None, 11).await,
        Err(StoreError::NotFound)
    );
    // Cascade from a: a first, then its live descendants in id order
    // (b is already revoked and gets no second event), each with its
    // own event; e is untouched.
    let revoked = store
        .revoke(a.id(), Scope::All, true, Some(e.id()), 12)
        .await
        .unwrap();
    let ids: Vec<KeyId> = revoked.iter().map(|(_, id)| *id).collect();
    assert_eq!(ids[0], a.id());
    assert_eq!(ids[1..].to_vec(), sorted(vec![c.id(), d.id()]));
    assert_eq!(
        revoked.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        vec![7, 8, 9]
    );
    let (events, more) = store.events(6, 100, Scope::All).await.unwrap();
    assert!(!more);
    assert_eq!(events.len(), 3);
    for (ev, (seq, id)) in events.iter().zip(&revoked) {
        assert_eq!(
            (
                ev.seq,
                ev.action,
                ev.key_id,
                ev.actor_id,
                ev.at_ms,
                ev.new_key_id
            ),
            (*seq, Action::Revoked, *id, Some(e.id()), 12, None)
        );
    }
    assert_eq!(listed(&store, Scope::All).await, vec![e.id()]);
    let snap = store.snapshot().await.unwrap();
    assert_eq!((snap.records, snap.seq), (vec![e.clone()], 9));
}

#[tokio::test]
async fn roll_writes_both_keys_and_two_events() {
    let (_dir, store) = new_store();
    let [a, b, ..] = family(&store).await;
    let rolled = keygate::roll(
        &pepper(),
        &b,
        std::time::Duration::from_millis(1_000),
        &mut keygate::os_entropy(),
        keygate::UnixMillis::from_millis(50),
    )
    .unwrap();
    let (new_key, old) = rolled.into_parts();
    let new = new_key.record().clone();
    let seqs = store
        .roll(&old, &new, Scope::DescendantsOf(a.id()), Some(a.id()), 50)
        .await
        .unwrap();
    assert_eq!(seqs, (6, 7));
    let stored_old = store.get(b.id(), Scope::All).await.unwrap().unwrap();
    assert_eq!(
        stored_old.record.expires_at(),
        Some(keygate::UnixMillis::from_millis(1_050))
    );
    assert_eq!(stored_old.record, old);
    assert_eq!(
        store
            .get(new.id(), Scope::All)
            .await
            .unwrap()
            .unwrap()
            .record,
        new
    );
    assert_eq!(new.creator_id(), Some(a.id()));
    let (events, more) = store.events(5, 10, Scope::All).await.unwrap();
    assert!(!more);
    assert_eq!(
        events,
        vec![
            Event {
                seq: 6,
                at_ms: 50,
                action: Action::Created,
                key_id: new.id(),
                actor_id: Some(a.id()),
                new_key_id: None
            },
            Event {
                seq: 7,
                at_ms: 50,
                action: Action::Rolled,
                key_id: b.id(),
                actor_id: Some(a.id()),
                new_key_id: Some(new.id())
            },
        ]
    );
    // The feed carries the shortened old record.
    let changes = store.changes_since(6, 10).await.unwrap();
    assert_eq!(changes, vec![Change::upsert(7, old.clone())]);
    // A second roll computed from the stale (longer-lived) record is
    // refused: it would lengthen the key's life again.
    let stale = keygate::roll(
        &pepper(),
        &b,
        std::time::Duration::from_millis(5_000),
        &mut keygate::os_entropy(),
        keygate::UnixMillis::from_millis(60),
    )
    .unwrap();
    assert!(matches!(
        store
            .roll(stale.old(), stale.new_key().record(), Scope::All, None, 60)
            .await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(
        store.get(b.id(), Scope::All).await.unwrap().unwrap().record,
        old
    );
    // A revoked key does not roll.
    store
        .revoke(b.id(), Scope::All, false, None, 70)
        .await
        .unwrap();
    let again = keygate::roll(
        &pepper(),
        &old,
        std::time::Duration::from_millis(0),
        &mut keygate::os_entropy(),
        keygate::UnixMillis::from_millis(80),
    )
    .unwrap();
    assert_eq!(
        store
            .roll(again.old(), again.new_key().record(), Scope::All, None, 80)
            .await,
        Err(StoreError::NotFound)
    );
}

#[tokio::test]
async fn events_page_with_has_more() {
    let (_dir, store) = new_store();
    family(&store).await;
    let (first, more) = store.events(0, 2, Scope::All).await.unwrap();
    assert_eq!(first.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2]);
    assert!(more);
    let (rest, more) = store.events(2, 3, Scope::All).await.unwrap();
    assert_eq!(
        rest.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![3, 4, 5]
    );
    assert!(!more);
    assert!(rest.iter().all(|e| e.action == Action::Created));
    let (none, more) = store.events(5, 3, Scope::All).await.unwrap();
    assert!(none.is_empty() && !more);
}

#[tokio::test]
async fn changes_since_builds_from_the_current_row() {
    let (_dir, store) = new_store();
    let [a, b, ..] = family(&store).await;
    store
        .revoke(b.id(), Scope::All, false, None, 9)
        .await
        .unwrap();
    let changes = store.changes_since(0, 100).await.unwrap();
    assert_eq!(changes.len(), 6);
    // b's creation (seq 2) now reads as a revocation, as does seq 6.
    assert_eq!(changes[1], Change::revoke(2, b.id()));
    assert_eq!(changes[5], Change::revoke(6, b.id()));
    assert_eq!(changes[0], Change::upsert(1, a.clone()));
    assert_eq!(store.changes_since(0, 2).await.unwrap().len(), 2);
    assert!(store.changes_since(6, 100).await.unwrap().is_empty());
    // A keyring fed the whole log ends where a snapshot starts.
    let mut keyring = Keyring::new(pepper());
    for change in changes {
        keyring.apply(change).unwrap();
    }
    let snap = store.snapshot().await.unwrap();
    assert_eq!(keyring.last_seq(), snap.seq);
    assert_eq!(keyring.len(), snap.records.len());
    assert!(keyring.is_revoked(&b.id()));
    assert!(!matches!(
        store.changes_since(0, 1).await.unwrap()[0].op,
        ChangeOp::Revoke(_)
    ));
}

#[tokio::test]
async fn last_used_never_goes_back() {
    let (_dir, store) = new_store();
    let [a, b, ..] = family(&store).await;
    store
        .record_last_used(&[(a.id(), 100), (b.id(), 50)])
        .await
        .unwrap();
    store
        .record_last_used(&[(a.id(), 90), (b.id(), 60), (a.id(), 80)])
        .await
        .unwrap();
    store.record_last_used(&[]).await.unwrap();
    let get = |id| {
        let store = &store;
        async move {
            store
                .get(id, Scope::All)
                .await
                .unwrap()
                .unwrap()
                .last_used_at_ms
        }
    };
    assert_eq!(get(a.id()).await, Some(100));
    assert_eq!(get(b.id()).await, Some(60));
    // Not a change: the log is untouched.
    assert_eq!(store.events(0, 100, Scope::All).await.unwrap().0.len(), 5);
}

#[tokio::test]
async fn pepper_fingerprint_is_stored_then_checked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k.db");
    let store = SqliteStore::open(&path).unwrap();
    let fp = pepper().fingerprint();
    store.check_pepper(fp).await.unwrap();
    store.check_pepper(fp).await.unwrap();
    assert_eq!(
        meta_get(&raw(&store), "pepper_fingerprint").unwrap(),
        Some(hex(&fp))
    );
    drop(store);
    let store = SqliteStore::open(&path).unwrap();
    let other = Pepper::from_bytes(&[8; 32]).fingerprint();
    match store.check_pepper(other).await {
        Err(StoreError::Fatal(m)) => {
            assert!(m.contains("pepper file does not match"), "{m}");
        }
        other => panic!("expected a fatal mismatch, got {other:?}"),
    }
    store.check_pepper(fp).await.unwrap();
}

#[tokio::test]
async fn a_corrupt_row_fails_closed_in_the_feed_and_is_fatal_elsewhere() {
    let (_dir, store) = new_store();
    let [a, b, c, ..] = family(&store).await;
    raw(&store)
        .execute(
            "UPDATE keys SET scopes = 2 WHERE id = ?1",
            params![b.id().as_str()],
        )
        .unwrap();
    // A direct read names the key and the broken rule.
    for result in [
        store.get(b.id(), Scope::All).await.map(drop),
        store.list(Scope::All, None, 10).await.map(drop),
    ] {
        match result {
            Err(StoreError::Fatal(m)) => {
                assert!(m.contains(b.id().as_str()), "{m}");
                assert!(m.contains("scope bits"), "{m}");
            }
            other => panic!("expected fatal, got {other:?}"),
        }
    }
    // The feed goes on: b's change is a revocation, the rest as stored.
    let changes = store.changes_since(0, 100).await.unwrap();
    assert_eq!(changes.len(), 5);
    assert_eq!(changes[1], Change::revoke(2, b.id()));
    assert_eq!(changes[2], Change::upsert(3, c.clone()));
    assert_eq!(store.corrupt_rows(), 1);
    // A snapshot leaves it out.
    let snap = store.snapshot().await.unwrap();
    assert_eq!(snap.records.len(), 4);
    assert!(snap.records.iter().all(|r| r.id() != b.id()));
    assert_eq!(store.corrupt_rows(), 2);
    // A change naming no key row, and one naming no valid id.
    raw(&store)
        .execute_batch(
            "INSERT INTO changes (at_ms, action, key_id) VALUES (9, 'created', 'zzzzzzzzzzzzzzzz');
             INSERT INTO changes (at_ms, action, key_id) VALUES (9, 'created', 'not an id');",
        )
        .unwrap();
    let tail = store.changes_since(5, 100).await.unwrap();
    let ghost = KeyId::parse("zzzzzzzzzzzzzzzz").unwrap();
    assert_eq!(tail, vec![Change::revoke(6, ghost)]);
    assert_eq!(store.corrupt_rows(), 4);
    // A standard row without all scopes breaks `from_parts`.
    raw(&store)
        .execute(
            "UPDATE keys SET kind = 'standard', scopes = 1 WHERE id = ?1",
            params![a.id().as_str()],
        )
        .unwrap();
    let e = store.get(a.id(), Scope::All).await.unwrap_err();
    assert!(e.to_string().contains(a.id().as_str()), "{e}");
    assert_eq!(
        store.changes_since(0, 1).await.unwrap(),
        vec![Change::revoke(1, a.id())]
    );
}

#[tokio::test]
async fn a_roll_passes_the_old_keys_children_to_the_new_key() {
    let (_dir, store) = new_store();
    // a minted b and d; b minted c.
    let [a, b, c, d, _e] = family(&store).await;
    let (new_a, old_a) = keygate::roll(
        &pepper(),
        &a,
        std::time::Duration::from_millis(100),
        &mut keygate::os_entropy(),
        keygate::UnixMillis::from_millis(10),
    )
    .unwrap()
    .into_parts();
    store
        .roll(&old_a, new_a.record(), Scope::All, None, 10)
        .await
        .unwrap();
    let a2 = new_a.record().id();
    // The new key sees the old key's subtree; the old key is not in it.
    assert_eq!(
        listed(&store, Scope::DescendantsOf(a2)).await,
        sorted(vec![b.id(), c.id(), d.id()])
    );
    assert!(store
        .get(c.id(), Scope::DescendantsOf(a2))
        .await
        .unwrap()
        .is_some());
    assert!(store
        .get(a.id(), Scope::DescendantsOf(a2))
        .await
        .unwrap()
        .is_none());
    assert!(store
        .get(a2, Scope::DescendantsOf(a2))
        .await
        .unwrap()
        .is_none());
    // The old key, in its overlap, has no subtree, mints nothing and
    // rolls no more; the new key mints into the inherited subtree.
    assert!(listed(&store, Scope::DescendantsOf(a.id()))
        .await
        .is_empty());
    assert!(matches!(
        store.create(&record(Some(&a), 11), Some(a.id()), 11).await,
        Err(StoreError::Conflict(m)) if m.contains("was rolled")
    ));
    let (again, old_again) = keygate::roll(
        &pepper(),
        &old_a,
        std::time::Duration::from_millis(5),
        &mut keygate::os_entropy(),
        keygate::UnixMillis::from_millis(11),
    )
    .unwrap()
    .into_parts();
    assert!(matches!(
        store
            .roll(&old_again, again.record(), Scope::All, None, 11)
            .await,
        Err(StoreError::Conflict(_))
    ));
    let late = record(Some(new_a.record()), 11);
    store.create(&late, Some(a2), 11).await.unwrap();
    // The events of the subtree, and nothing else.
    let (events, _) = store
        .events(0, 100, Scope::DescendantsOf(a2))
        .await
        .unwrap();
    let keys: std::collections::BTreeSet<KeyId> = events.iter().map(|e| e.key_id).collect();
    assert_eq!(
        keys,
        [b.id(), c.id(), d.id(), late.id()].into_iter().collect()
    );
    // Revoking the new key cascades to all of them, and ends the old key
    // in its overlap too (the same credential).
    let revoked: Vec<KeyId> = store
        .revoke(a2, Scope::All, true, None, 12)
        .await
        .unwrap()
        .into_iter()
        .map(|(_, id)| id)
        .collect();
    assert_eq!(revoked[0], a2);
    assert_eq!(
        revoked[1..].to_vec(),
        sorted(vec![a.id(), b.id(), c.id(), d.id(), late.id()])
    );
}

#[tokio::test]
async fn writes_by_a_revoked_or_expired_caller_are_refused() {
    let (_dir, store) = new_store();
    let [a, b, c, ..] = family(&store).await;
    store
        .revoke(b.id(), Scope::All, false, None, 10)
        .await
        .unwrap();
    // Create, roll and revoke by the revoked b: 401's error.
    assert_eq!(
        store.create(&record(Some(&b), 11), Some(b.id()), 11).await,
        Err(StoreError::CallerRevoked)
    );
    let (n, o) = keygate::roll(
        &pepper(),
        &c,
        std::time::Duration::from_millis(5),
        &mut keygate::os_entropy(),
        keygate::UnixMillis::from_millis(11),
    )
    .unwrap()
    .into_parts();
    assert_eq!(
        store
            .roll(&o, n.record(), Scope::All, Some(b.id()), 11)
            .await,
        Err(StoreError::CallerRevoked)
    );
    assert_eq!(
        store
            .revoke(c.id(), Scope::All, false, Some(b.id()), 11)
            .await,
        Err(StoreError::CallerRevoked)
    );
    // An unknown caller, and one past its expiry.
    let ghost = KeyId::parse("zzzzzzzzzzzzzzzz").unwrap();
    assert_eq!(
        store
            .revoke(c.id(), Scope::All, false, Some(ghost), 11)
            .await,
        Err(StoreError::CallerRevoked)
    );
    let mortal = {
        let req = MintRequest::restricted(
            Some("m"),
            "objects:read".parse().unwrap(),
            Some(keygate::UnixMillis::from_millis(20)),
            keygate::UnixMillis::from_millis(12),
        )
        .unwrap()
        .created_by(&keygate::testing::principal_of(&a));
        keygate::mint(
            &pepper(),
            &req,
            &mut keygate::os_entropy(),
            keygate::UnixMillis::from_millis(12),
        )
        .into_parts()
        .0
    };
    store.create(&mortal, Some(a.id()), 12).await.unwrap();
    assert_eq!(
        store
            .create(&record(Some(&mortal), 20), Some(mortal.id()), 20)
            .await,
        Err(StoreError::CallerRevoked)
    );
    store
        .create(&record(Some(&mortal), 19), Some(mortal.id()), 19)
        .await
        .unwrap();
    // Self-revocation needs no live caller: the token is the proof.
    store
        .revoke(mortal.id(), Scope::All, false, Some(mortal.id()), 30)
        .await
        .unwrap();
}

#[test]
fn a_version_2_database_gains_rolled_from_from_its_log() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v2.db");
    let (a, a2) = (record(None, 1), record(None, 2));
    {
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(SCHEMA_V2).unwrap();
        meta_set(&conn, "schema_version", "2").unwrap();
        for r in [&a, &a2] {
            conn.execute(
                "INSERT INTO keys (id, kind, name, secret_hash, scopes, created_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    r.id().as_str(),
                    r.kind().as_str(),
                    r.name(),
                    &r.secret_hash().as_bytes()[..],
                    i64::from(r.scopes().bits()),
                    r.created_at().as_millis()
                ],
            )
            .unwrap();
        }
        conn.execute(
            "INSERT INTO changes (at_ms, action, key_id, new_key_id) VALUES (2, 'rolled', ?1, ?2)",
            params![a.id().as_str(), a2.id().as_str()],
        )
        .unwrap();
    }
    let store = SqliteStore::open(&path).unwrap();
    let conn = raw(&store);
    assert_eq!(
        meta_get(&conn, "schema_version").unwrap().as_deref(),
        Some(SCHEMA_VERSION.to_string().as_str())
    );
    let from: Option<String> = conn
        .query_row(
            "SELECT rolled_from FROM keys WHERE id = ?1",
            params![a2.id().as_str()],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(from.as_deref(), Some(a.id().as_str()));
    // And the credit tables (versions 5 and 6).
    assert!(table_exists(&conn, "credit_balances").unwrap());
    assert!(table_exists(&conn, "credit_leases").unwrap());
}

#[test]
fn an_older_schema_version_in_meta_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k.db");
    drop(SqliteStore::open(&path).unwrap());
    {
        let conn = Connection::open(&path).unwrap();
        meta_set(&conn, "schema_version", "1").unwrap();
    }
    let e = SqliteStore::open(&path).err().unwrap();
    let m = e.to_string();
    assert!(matches!(e, StoreError::Fatal(_)));
    assert!(
        m.contains("schema version 1, which this keygate cannot migrate"),
        "{m}"
    );
}

#[test]
fn a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k.db");
    drop(SqliteStore::open(&path).unwrap());
    {
        let conn = Connection::open(&path).unwrap();
        meta_set(&conn, "schema_version", &(SCHEMA_VERSION + 1).to_string()).unwrap();
    }
    let e = SqliteStore::open(&path).err().unwrap();
    let m = e.to_string();
    assert!(matches!(e, StoreError::Fatal(_)));
    let newer = SCHEMA_VERSION + 1;
    assert!(
        m.contains(&format!(
            "schema version {newer}, newer than this keygate knows ({SCHEMA_VERSION})"
        )),
        "{m}"
    );
    // Refused without a change.
    let conn = Connection::open(&path).unwrap();
    assert_eq!(
        meta_get(&conn, "schema_version").unwrap().as_deref(),
        Some(newer.to_string().as_str())
    );
}

fn fixture_copy() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.sqlite3");
    std::fs::copy(format!("{FIXTURES}/keys-0.1.0.sqlite3"), &path).unwrap();
    (dir, path)
}

fn fixture_pepper() -> Pepper {
    let bytes = std::fs::read(format!("{FIXTURES}/keys-0.1.0.pepper-bin")).unwrap();
    Pepper::from_bytes(&bytes.try_into().unwrap())
}

#[tokio::test]
async fn migrates_the_0_1_0_fixture_in_place() {
    let (_dir, path) = fixture_copy();
    // What 0.1.0 wrote: the JSON records.
    let before: Vec<KeyRecord> = {
        let conn = Connection::open(&path).unwrap();
        let mut stmt = conn.prepare("SELECT record FROM keys").unwrap();
        let rows = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .unwrap()
            .map(|j| serde_json::from_str(&j.unwrap()).unwrap())
            .collect();
        rows
    };
    assert_eq!(before.len(), 4);
    let store = SqliteStore::open(&path).unwrap();
    {
        let conn = raw(&store);
        assert_eq!(
            meta_get(&conn, "schema_version").unwrap().as_deref(),
            Some(SCHEMA_VERSION.to_string().as_str())
        );
        assert!(!table_exists(&conn, "keys_v1").unwrap());
        assert!(!column_exists(&conn, "keys", "record").unwrap());
    }
    // Every record intact, in the columns.
    for r in &before {
        let got = store.get(r.id(), Scope::All).await.unwrap().unwrap();
        assert_eq!(&got.record, r);
        assert_eq!((got.revoked_at_ms, got.last_used_at_ms), (None, None));
    }
    // One `created` event each, actor null, at its creation, in order.
    let (events, more) = store.events(0, 100, Scope::All).await.unwrap();
    assert!(!more);
    let mut by_creation = before.clone();
    by_creation.sort_by_key(|r| r.created_at());
    assert_eq!(
        events
            .iter()
            .map(|e| (e.seq, e.action, e.key_id, e.actor_id, e.at_ms))
            .collect::<Vec<_>>(),
        by_creation
            .iter()
            .enumerate()
            .map(|(i, r)| (
                i as u64 + 1,
                Action::Created,
                r.id(),
                None,
                r.created_at().as_millis()
            ))
            .collect::<Vec<_>>()
    );
    // The fixture's pepper is recorded on first check.
    store
        .check_pepper(fixture_pepper().fingerprint())
        .await
        .unwrap();
    // Every token still authenticates, with its scopes and expiry.
    let snap = store.snapshot().await.unwrap();
    assert_eq!(snap.seq, 4);
    let mut keyring = Keyring::new(fixture_pepper());
    for r in snap.records {
        keyring.apply(Change::upsert(snap.seq, r)).unwrap();
    }
    let views: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{FIXTURES}/keys-0.1.0.views.json")).unwrap(),
    )
    .unwrap();
    let now = 1_800_000_000_000; // after "gone" expired, before 2100
    let mut checked = 0;
    for v in views.as_array().unwrap() {
        let token = v["key_secret"].as_str().unwrap();
        let id = KeyId::parse(v["id"].as_str().unwrap()).unwrap();
        let record = before.iter().find(|r| r.id() == id).unwrap();
        assert_eq!(
            record.expires_at().map(keygate::UnixMillis::as_millis),
            v["expires_at_ms"].as_i64()
        );
        let result = keyring.authenticate(token, keygate::UnixMillis::from_millis(now));
        if v["name"] == "gone" {
            assert!(result.is_err(), "the expired key must stay expired");
            assert!(keyring.authenticate(token, record.created_at()).is_ok());
        } else {
            let p = result.unwrap();
            assert_eq!(p.id(), id);
            assert_eq!(p.scopes(), record.scopes());
        }
        checked += 1;
    }
    assert_eq!(checked, 4);
    // Opening again migrates nothing twice.
    drop(store);
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.events(0, 100, Scope::All).await.unwrap().0.len(), 4);
    assert_eq!(store.count().await.unwrap(), 4);
}

#[test]
fn a_failed_migration_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    let good = record(None, 1);
    {
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE keys (id TEXT PRIMARY KEY NOT NULL, record TEXT NOT NULL) WITHOUT ROWID",
        )
        .unwrap();
        conn.execute(
            "INSERT INTO keys VALUES (?1, ?2)",
            params![good.id().as_str(), serde_json::to_string(&good).unwrap()],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO keys VALUES ('BADBADBADBADBADB', '{\"id\": 1}')",
            [],
        )
        .unwrap();
    }
    let e = SqliteStore::open(&path).err().unwrap().to_string();
    assert!(e.contains("`BADBADBADBADBADB` has a corrupt record"), "{e}");
    let conn = Connection::open(&path).unwrap();
    assert!(column_exists(&conn, "keys", "record").unwrap());
    assert!(!table_exists(&conn, "meta").unwrap());
    assert!(!table_exists(&conn, "changes").unwrap());
    let n: i64 = conn
        .query_row("SELECT COUNT(*) FROM keys", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 2);
}

#[tokio::test]
async fn credit_pools_and_leases() {
    let (_dir, store) = new_store();
    super::super::lease_tests::all(&store).await;
}

#[tokio::test]
async fn limits_live_on_the_meter() {
    let (_dir, store) = new_store();
    super::super::limits_tests::limits_live_on_the_meter(&store).await;
    // Every limit column is read back through the library's constructors.
    let (_dir, store) = new_store();
    super::super::limits_tests::a_roll_keeps_the_current_limits(&store).await;
}

#[tokio::test]
async fn credits_with_leases_out() {
    let (_dir, store) = new_store();
    super::super::limits_tests::credits_with_leases_out(&store).await;
}

#[tokio::test]
async fn limits_survive_a_reopen_and_a_corrupt_limit_fails_closed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k.db");
    let store = SqliteStore::open(&path).unwrap();
    let root = record(None, 1);
    store.create(&root, None, 1).await.unwrap();
    let a = super::super::limits_tests::child(&root, super::super::limits_tests::limits(), 2);
    let c = super::super::limits_tests::child(&a, keygate::KeyLimits::default(), 3);
    store.create(&a, Some(root.id()), 2).await.unwrap();
    store.create(&c, Some(a.id()), 3).await.unwrap();
    drop(store);
    let store = SqliteStore::open(&path).unwrap();
    for r in [&a, &c] {
        assert_eq!(
            &store.get(r.id(), Scope::All).await.unwrap().unwrap().record,
            r
        );
    }
    let (meter_id, since): (Option<String>, Option<i64>) = raw(&store)
        .query_row(
            "SELECT meter_id, meter_since_ms FROM keys WHERE id = ?1",
            params![c.id().as_str()],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(meter_id.as_deref(), Some(a.id().as_str()));
    assert_eq!(since, Some(a.created_at().as_millis()));
    // A's own meter is stored as none.
    let own: Option<String> = raw(&store)
        .query_row(
            "SELECT meter_id FROM keys WHERE id = ?1",
            params![a.id().as_str()],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(own, None);
    // A limit the library refuses (a rate limit of 0), a half-stored one,
    // a meter without its start: each a corrupt row.
    for (breakage, needle) in [
        ("rate_limit = 0", "rate_limit.limit"),
        ("rate_period_ms = NULL", "without its period"),
        ("credits_refill_interval_ms = 10", "interval_ms"),
        ("credits_remaining = NULL", "a refill without credits"),
        ("meter_since_ms = NULL", "meter id without its start"),
        ("meter_id = 'short'", "meter id"),
    ] {
        raw(&store)
            .execute(
                &format!("UPDATE keys SET {breakage} WHERE id = ?1"),
                params![c.id().as_str()],
            )
            .unwrap();
        match store.get(c.id(), Scope::All).await {
            Err(StoreError::Fatal(m)) => {
                assert!(
                    m.contains(c.id().as_str()) && m.contains(needle),
                    "{breakage}: {m}"
                )
            }
            other => panic!("{breakage}: expected fatal, got {other:?}"),
        }
        let feed = store.changes_since(2, 1).await.unwrap();
        assert_eq!(feed, vec![Change::revoke(3, c.id())], "{breakage}");
        // Back as it was: the record's own columns.
        let columns = super::super::LimitColumns::of(&c);
        raw(&store)
            .execute(
                "UPDATE keys SET rate_limit = ?2, rate_period_ms = ?3, credits_remaining = ?4,
                                 credits_refill_amount = ?5, credits_refill_interval_ms = ?6,
                                 meter_id = ?7, meter_since_ms = ?8 WHERE id = ?1",
                params![
                    c.id().as_str(),
                    columns.rate_limit,
                    columns.rate_period_ms,
                    columns.credits_remaining,
                    columns.credits_refill_amount,
                    columns.credits_refill_interval_ms,
                    columns.meter_id,
                    columns.meter_since_ms
                ],
            )
            .unwrap();
        assert_eq!(
            store.get(c.id(), Scope::All).await.unwrap().unwrap().record,
            c
        );
    }
}

#[tokio::test]
async fn usage_counts_add_up_and_retention_folds_them() {
    let (_dir, store) = new_store();
    super::super::usage_tests::usage_round_trip(&store).await;
    let (_dir, store) = new_store();
    super::super::usage_tests::retention(&store).await;
}

#[tokio::test]
async fn a_version_3_database_upgrades_through_4_5_and_6() {
    upgrades_to_version_6_from(3).await;
}

#[tokio::test]
async fn a_version_4_database_gains_the_limit_columns() {
    upgrades_to_version_6_from(4).await;
}

/// A database at `version` (3, or 4: main's usage counts) upgrades step by
/// step to 6: the usage tables (4), then the limit columns, the meter
/// index, `credit_balances` and the `limits_changed` action (5), then the
/// credit leases (6). It keeps its rows and the log's counter, and each
/// step runs once.
async fn upgrades_to_version_6_from(version: i64) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(format!("v{version}.db"));
    let (a, b) = (record(None, 1), record(None, 2));
    {
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(SCHEMA_V2).unwrap();
        conn.execute_batch(MIGRATE_V3).unwrap();
        if version >= 4 {
            conn.execute_batch(MIGRATE_V4).unwrap();
        }
        meta_set(&conn, "schema_version", &version.to_string()).unwrap();
        for r in [&a, &b] {
            insert_v2_key(&conn, r).unwrap();
            append(
                &conn,
                r.created_at().as_millis(),
                Action::Created,
                r.id(),
                None,
                None,
            )
            .unwrap();
        }
        // A revocation, whose seq is the log's last.
        append(&conn, 3, Action::Revoked, b.id(), None, None).unwrap();
        assert!(!column_exists(&conn, "keys", "rate_limit").unwrap());
    }
    let store = SqliteStore::open(&path).unwrap();
    {
        let conn = raw(&store);
        assert_eq!(
            meta_get(&conn, "schema_version").unwrap().as_deref(),
            Some(SCHEMA_VERSION.to_string().as_str())
        );
        for (column, _) in LIMIT_COLUMNS {
            assert!(column_exists(&conn, "keys", column).unwrap(), "{column}");
        }
        assert!(table_exists(&conn, "credit_balances").unwrap());
        assert!(table_exists(&conn, "usage_minutes").unwrap());
        assert!(table_exists(&conn, "credit_leases").unwrap());
        assert!(table_exists(&conn, "usage_days").unwrap());
        // The log's CHECK takes the new action (and still the old ones).
        let changes: String = conn
            .query_row(
                "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'changes'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert!(
            changes.contains("'created', 'revoked', 'rolled', 'limits_changed')"),
            "{changes}"
        );
        let indexes: Vec<String> = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        for index in [
            "keys_meter",
            "changes_key_id",
            "keys_creator_id",
            "keys_rolled_from",
            "usage_minutes_minute_ms",
            "usage_days_day_ms",
        ] {
            assert!(indexes.iter().any(|i| i == index), "{index}: {indexes:?}");
        }
        // The plan of an update by meter uses the index.
        let plan: Vec<String> = conn
            .prepare("EXPLAIN QUERY PLAN UPDATE keys SET rate_limit = 1 WHERE COALESCE(meter_id, id) = 'x'")
            .unwrap()
            .query_map([], |r| r.get(3))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert!(plan.iter().any(|p| p.contains("keys_meter")), "{plan:?}");
    }
    // The old rows read as keys without limits; the log kept its entries and
    // its counter, and takes the new action.
    assert_eq!(
        store.get(a.id(), Scope::All).await.unwrap().unwrap().record,
        a
    );
    let (events, _) = store.events(0, 10, Scope::All).await.unwrap();
    assert_eq!(events.len(), 3);
    assert_eq!(events[2].action, Action::Revoked);
    let five = keygate::RateLimit::new(5, std::time::Duration::from_secs(1)).unwrap();
    let change = LimitsChange {
        rate: Some(Some(five)),
        credits: None,
    };
    let changed = store
        .set_limits(a.id(), change, Scope::All, None, 10)
        .await
        .unwrap();
    assert_eq!(changed.len(), 1);
    assert_eq!(changed[0].0, 4, "the log's counter survived the rebuild");
    assert_eq!(changed[0].1.limits().rate, Some(five));
    let (events, _) = store.events(3, 10, Scope::All).await.unwrap();
    assert_eq!(events[0].action, Action::LimitsChanged);
    // The step runs once; opening again changes nothing.
    drop(store);
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.events(0, 10, Scope::All).await.unwrap().0.len(), 4);
    // And it is idempotent: run again on a migrated database, it is a no-op.
    {
        let conn = raw(&store);
        migrate_v5(&conn, "again").unwrap();
        let n: i64 = conn
            .query_row("SELECT count(*) FROM changes", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 4);
    }
    // The usage tables work as well.
    super::super::usage_tests::usage_round_trip(&store).await;
}
