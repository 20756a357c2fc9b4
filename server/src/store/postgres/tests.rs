//! The PostgreSQL store against a real, throwaway PostgreSQL 15
//! (`tests/support/pg.rs`).

use std::sync::Arc;
use std::time::Duration;

use keygate::{ChangeOp, KeyId, KeyRecord, MintRequest, Pepper};

use super::pg::TestPg;
use super::*;

fn pepper() -> Pepper {
    Pepper::from_bytes(&[7u8; 32])
}

fn standard(name: &str) -> KeyRecord {
    let request =
        MintRequest::standard(Some(name), None, keygate::UnixMillis::from_millis(1_000)).unwrap();
    keygate::mint(
        &pepper(),
        &request,
        &mut keygate::os_entropy(),
        keygate::UnixMillis::from_millis(1_000),
    )
    .into_parts()
    .0
}

/// A restricted key minted by `creator`.
fn child(name: &str, creator: &KeyRecord) -> KeyRecord {
    let request = MintRequest::restricted(
        Some(name),
        "objects:read".parse().unwrap(),
        None,
        keygate::UnixMillis::from_millis(2_000),
    )
    .unwrap()
    .created_by(&keygate::testing::principal_of(creator));
    keygate::mint(
        &pepper(),
        &request,
        &mut keygate::os_entropy(),
        keygate::UnixMillis::from_millis(2_000),
    )
    .into_parts()
    .0
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn lifecycle_round_trip() {
    let pg = TestPg::start();
    runtime().block_on(async {
        let store = PgStore::connect(&pg.url()).await.unwrap();
        store.ping().await.unwrap();
        assert_eq!(store.count().await.unwrap(), 0);
        let root = standard("root");
        let a = child("a", &root);
        let b = child("b", &a);
        let other = standard("other");
        assert_eq!(store.create(&root, None, 10).await.unwrap(), 1);
        assert_eq!(store.create(&a, Some(root.id()), 11).await.unwrap(), 2);
        assert_eq!(store.create(&b, Some(a.id()), 12).await.unwrap(), 3);
        assert_eq!(store.create(&other, None, 13).await.unwrap(), 4);
        assert_eq!(store.count().await.unwrap(), 4);

        // Columns round-trip into the same record.
        let got = store.get(b.id(), Scope::All).await.unwrap().unwrap();
        assert_eq!(got.record, b);
        assert_eq!(got.revoked_at_ms, None);
        assert_eq!(got.last_used_at_ms, None);
        // Scope: b descends from root and a; other does not.
        assert!(store
            .get(b.id(), Scope::DescendantsOf(root.id()))
            .await
            .unwrap()
            .is_some());
        assert!(store
            .get(b.id(), Scope::DescendantsOf(a.id()))
            .await
            .unwrap()
            .is_some());
        assert!(store
            .get(a.id(), Scope::DescendantsOf(a.id()))
            .await
            .unwrap()
            .is_none());
        assert!(store
            .get(other.id(), Scope::DescendantsOf(root.id()))
            .await
            .unwrap()
            .is_none());

        // List: id order, paging, scope.
        let mut ids = [root.id(), a.id(), b.id(), other.id()];
        ids.sort();
        let page = store.list(Scope::All, None, 3).await.unwrap();
        assert!(page.has_more);
        let listed: Vec<KeyId> = page.keys.iter().map(|k| k.record.id()).collect();
        assert_eq!(listed, ids[..3]);
        let page = store.list(Scope::All, Some(ids[2]), 3).await.unwrap();
        assert!(!page.has_more);
        assert_eq!(page.keys.len(), 1);
        assert_eq!(page.keys[0].record.id(), ids[3]);
        let mut mine = vec![a.id(), b.id()];
        mine.sort();
        let page = store
            .list(Scope::DescendantsOf(root.id()), None, 10)
            .await
            .unwrap();
        let listed: Vec<KeyId> = page.keys.iter().map(|k| k.record.id()).collect();
        assert_eq!(listed, mine);

        // last_used never moves back.
        store
            .record_last_used(&[(a.id(), 500), (b.id(), 600)])
            .await
            .unwrap();
        store.record_last_used(&[(a.id(), 400)]).await.unwrap();
        let got = store.get(a.id(), Scope::All).await.unwrap().unwrap();
        assert_eq!(got.last_used_at_ms, Some(500));

        // Roll: the old key's expiry shortened, a new key, two events.
        let rolled = keygate::roll(
            &pepper(),
            &other,
            core::time::Duration::from_millis(1_000),
            &mut keygate::os_entropy(),
            keygate::UnixMillis::from_millis(5_000),
        )
        .unwrap();
        let (new, old) = rolled.into_parts();
        let new = new.into_parts().0;
        let (created, rolled_seq) = store
            .roll(&old, &new, Scope::All, Some(root.id()), 20)
            .await
            .unwrap();
        assert_eq!((created, rolled_seq), (5, 6));
        let got = store.get(other.id(), Scope::All).await.unwrap().unwrap();
        assert_eq!(
            got.record.expires_at(),
            Some(keygate::UnixMillis::from_millis(6_000))
        );
        // Out of scope, or unknown: not found.
        let again = keygate::roll(
            &pepper(),
            &other,
            core::time::Duration::from_millis(0),
            &mut keygate::os_entropy(),
            keygate::UnixMillis::from_millis(5_000),
        )
        .unwrap();
        let (n2, o2) = again.into_parts();
        assert_eq!(
            store
                .roll(&o2, n2.record(), Scope::DescendantsOf(root.id()), None, 21)
                .await,
            Err(StoreError::NotFound)
        );

        // Cascading revocation: a and its child b, each with an event.
        let revoked = store
            .revoke(a.id(), Scope::All, true, Some(root.id()), 30)
            .await
            .unwrap();
        assert_eq!(revoked, vec![(7, a.id()), (8, b.id())]);
        assert_eq!(
            store.revoke(a.id(), Scope::All, true, None, 31).await,
            Err(StoreError::NotFound)
        );
        // A revoked creator mints nothing more: the caller's 401.
        assert_eq!(
            store.create(&child("late", &a), Some(a.id()), 32).await,
            Err(StoreError::CallerRevoked)
        );
        let got = store.get(b.id(), Scope::All).await.unwrap().unwrap();
        assert_eq!(got.revoked_at_ms, Some(30));
        let page = store.list(Scope::All, None, 10).await.unwrap();
        assert_eq!(page.keys.len(), 3, "revoked keys are not listed");

        // Events: the audit log in order.
        let (events, more) = store.events(0, 100, Scope::All).await.unwrap();
        assert!(!more);
        let actions: Vec<(u64, Action, KeyId)> =
            events.iter().map(|e| (e.seq, e.action, e.key_id)).collect();
        assert_eq!(
            actions,
            vec![
                (1, Action::Created, root.id()),
                (2, Action::Created, a.id()),
                (3, Action::Created, b.id()),
                (4, Action::Created, other.id()),
                (5, Action::Created, new.id()),
                (6, Action::Rolled, other.id()),
                (7, Action::Revoked, a.id()),
                (8, Action::Revoked, b.id()),
            ]
        );
        assert_eq!(events[5].new_key_id, Some(new.id()));
        assert_eq!(events[5].actor_id, Some(root.id()));
        assert_eq!(events[0].actor_id, None);
        let (page, more) = store.events(2, 3, Scope::All).await.unwrap();
        assert!(more);
        assert_eq!(
            page.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![3, 4, 5]
        );

        // Changes from current rows: revoked keys give revocations.
        let changes = store.changes_since(0, 100).await.unwrap();
        assert_eq!(changes.len(), 8);
        assert!(matches!(&changes[1].op, ChangeOp::Revoke(id) if *id == a.id()));
        assert!(matches!(&changes[5].op, ChangeOp::Upsert(r) if r.expires_at() == Some(keygate::UnixMillis::from_millis(6_000))));
        assert_eq!(store.changes_since(6, 1).await.unwrap().len(), 1);

        // A keyring fed the log equals one built from the snapshot.
        let snapshot = store.snapshot().await.unwrap();
        assert_eq!(snapshot.seq, 8);
        assert_eq!(snapshot.records.len(), 3);
        let mut fed = keygate::Keyring::new(pepper());
        for change in changes {
            fed.apply(change).unwrap();
        }
        assert_eq!(fed.last_seq(), 8);
        let mut live: Vec<KeyId> = fed.entries().map(|e| e.id()).collect();
        let mut snap: Vec<KeyId> = snapshot.records.iter().map(KeyRecord::id).collect();
        live.sort();
        snap.sort();
        assert_eq!(live, snap);
    });
}

/// Two writers interleaved on purpose: T1 takes its sequence number first
/// and holds its transaction open; T2 (a `create`) starts after. T2 must
/// not commit a later number while T1's is still invisible, or a reader
/// that has seen T2's number would skip T1's for ever. The same
/// interleaving on a `bigserial` table does produce the skip, which shows
/// the test can see one.
#[test]
fn interleaved_writers_never_let_a_reader_skip_a_seq() {
    let pg = TestPg::start();
    runtime().block_on(async {
        let store = Arc::new(PgStore::connect(&pg.url()).await.unwrap());
        let first = standard("first");
        store.create(&first, None, 1).await.unwrap();

        // T1: a write that has taken its sequence number, not yet committed.
        let mut client = store.client().await.unwrap();
        let t1 = client.transaction().await.unwrap();
        let slow = standard("slow");
        insert_key(&t1, &slow).await.ok().unwrap();
        let event = NewEvent {
            action: Action::Created,
            key_id: slow.id(),
            new_key_id: None,
        };
        let t1_seqs = append(&t1, &[event], None, 2).await.ok().unwrap();
        assert_eq!(t1_seqs, vec![2]);

        // T2 starts now and would commit first if it could.
        let fast = standard("fast");
        let t2 = {
            let store = Arc::clone(&store);
            let fast = fast.clone();
            tokio::spawn(async move { store.create(&fast, None, 3).await })
        };
        // A reader polls while T1 is open: it must never see T2's change
        // before T1's.
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let seen: Vec<u64> = store
                .changes_since(1, 10)
                .await
                .unwrap()
                .iter()
                .map(|c| c.seq)
                .collect();
            assert!(
                seen.is_empty(),
                "a reader saw {seen:?} while seq 2 was uncommitted"
            );
        }
        assert!(
            !t2.is_finished(),
            "T2 committed while T1 held an earlier seq"
        );
        t1.commit().await.unwrap();
        drop(client);
        let t2_seq = t2.await.unwrap().unwrap();
        assert_eq!(t2_seq, 3, "T2 takes the next number after T1 commits");
        let changes = store.changes_since(1, 10).await.unwrap();
        let seen: Vec<(u64, KeyId)> = changes.iter().map(|c| (c.seq, c.key_id())).collect();
        assert_eq!(seen, vec![(2, slow.id()), (3, fast.id())]);

        // A rolled-back writer returns its number: no gap either.
        let mut client = store.client().await.unwrap();
        let t3 = client.transaction().await.unwrap();
        let gone = standard("gone");
        insert_key(&t3, &gone).await.ok().unwrap();
        let event = NewEvent {
            action: Action::Created,
            key_id: gone.id(),
            new_key_id: None,
        };
        assert_eq!(append(&t3, &[event], None, 4).await.ok().unwrap(), vec![4]);
        t3.rollback().await.unwrap();
        drop(client);
        assert_eq!(store.create(&standard("next"), None, 5).await.unwrap(), 4);

        // The control: a bigserial under the same interleaving is skipped.
        let client = store.client().await.unwrap();
        client
            .batch_execute("CREATE TABLE serial_log (seq BIGSERIAL PRIMARY KEY)")
            .await
            .unwrap();
        drop(client);
        let mut c1 = store.client().await.unwrap();
        let mut c2 = store.client().await.unwrap();
        let s1 = c1.transaction().await.unwrap();
        let a: i64 = s1
            .query_one("INSERT INTO serial_log DEFAULT VALUES RETURNING seq", &[])
            .await
            .unwrap()
            .get(0);
        let s2 = c2.transaction().await.unwrap();
        let b: i64 = s2
            .query_one("INSERT INTO serial_log DEFAULT VALUES RETURNING seq", &[])
            .await
            .unwrap()
            .get(0);
        s2.commit().await.unwrap();
        assert!(a < b);
        let reader = store.client().await.unwrap();
        let seen: Vec<i64> = reader
            .query("SELECT seq FROM serial_log ORDER BY seq", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        // The reader's cursor is now b; a commits later and is never read.
        assert_eq!(seen, vec![b]);
        s1.commit().await.unwrap();
        let after_cursor = reader
            .query("SELECT seq FROM serial_log WHERE seq > $1", &[&b])
            .await
            .unwrap();
        assert!(after_cursor.is_empty(), "bigserial: seq {a} was skipped");
    });
}

#[test]
fn three_concurrent_starts_migrate_once() {
    let pg = TestPg::start();
    runtime().block_on(async {
        let url = pg.url();
        let starts = (0..3).map(|_| {
            let url = url.clone();
            tokio::spawn(async move { PgStore::connect(&url).await })
        });
        let mut stores = Vec::new();
        for start in starts {
            stores.push(start.await.unwrap().unwrap());
        }
        // Each ran its migration step; exactly one applied anything.
        let mut applied = 0;
        for store in &stores {
            applied += store.migrate().await.unwrap().len();
        }
        assert_eq!(applied, 0, "a second run finds nothing to do");
        assert_eq!(
            pg.psql("SELECT count(*) FROM schema_migrations"),
            MIGRATIONS.len().to_string()
        );
        assert_eq!(
            pg.psql("SELECT max(version) FROM schema_migrations"),
            SCHEMA_VERSION.to_string()
        );
        assert_eq!(
            pg.psql("SELECT schema_version FROM meta"),
            SCHEMA_VERSION.to_string()
        );
        // All three write through one log.
        for (i, store) in stores.iter().enumerate() {
            store
                .create(&standard(&format!("k{i}")), None, 1)
                .await
                .unwrap();
        }
        assert_eq!(
            pg.psql("SELECT string_agg(seq::text, ',' ORDER BY seq) FROM changes"),
            "1,2,3"
        );
    });
    // A newer schema than the binary knows is refused.
    pg.psql("UPDATE meta SET schema_version = 99");
    let err = runtime().block_on(PgStore::connect(&pg.url())).unwrap_err();
    match err {
        StoreError::Fatal(m) => assert!(m.contains("schema version 99 is newer"), "{m}"),
        other => panic!("expected fatal, got {other:?}"),
    }
}

#[test]
fn the_pepper_fingerprint_is_stored_then_checked() {
    let pg = TestPg::start();
    runtime().block_on(async {
        let store = PgStore::connect(&pg.url()).await.unwrap();
        let right = pepper().fingerprint();
        store.check_pepper(right).await.unwrap();
        store.check_pepper(right).await.unwrap();
        let hex: String = right.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(pg.psql("SELECT pepper_fingerprint FROM meta"), hex);
        let wrong = Pepper::from_bytes(&[8u8; 32]).fingerprint();
        match store.check_pepper(wrong).await {
            Err(StoreError::Fatal(m)) => {
                assert!(
                    m.contains("pepper file does not belong to this database"),
                    "{m}"
                )
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    });
}

/// A database that goes away: calls fail as unavailable (not fatal), the
/// listener reconnects and signals, and everything works after the restart.
#[test]
fn unavailable_while_down_then_caught_up() {
    let pg = TestPg::start();
    runtime().block_on(async {
        let store = PgStore::connect(&pg.url()).await.unwrap();
        let other = PgStore::connect(&pg.url()).await.unwrap();
        let signal = store.change_signal().unwrap();
        // The first signal: "caught up after connecting".
        tokio::time::timeout(Duration::from_secs(10), signal.notified())
            .await
            .expect("a signal after the listener connected");
        // A write through another store is signalled.
        let k = standard("k");
        other.create(&k, None, 1).await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), signal.notified())
            .await
            .expect("a NOTIFY for the write");

        pg.stop_immediate();
        let r = store.create(&standard("down"), None, 2).await;
        assert!(matches!(r, Err(StoreError::Unavailable(_))), "{r:?}");
        let r = store.ping().await;
        assert!(matches!(r, Err(StoreError::Unavailable(_))), "{r:?}");
        let r = other.revoke(k.id(), Scope::All, false, None, 3).await;
        assert!(matches!(r, Err(StoreError::Unavailable(_))), "{r:?}");
        let r = PgStore::connect(&pg.url()).await;
        assert!(matches!(r, Err(StoreError::Unavailable(_))), "{r:?}");
        // Drain any stale permit, then restart: the listener reconnects
        // and signals once so the follower catches up.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let _ = tokio::time::timeout(Duration::from_millis(10), signal.notified()).await;
        pg.pg_ctl_start();
        tokio::time::timeout(Duration::from_secs(10), signal.notified())
            .await
            .expect("a signal after the listener reconnected");
        // Pooled connections died with the server; new ones are made.
        let mut ok = false;
        for _ in 0..20 {
            if store.ping().await.is_ok() {
                ok = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(ok, "the pool reconnects");
        other
            .revoke(k.id(), Scope::All, false, None, 4)
            .await
            .unwrap();
        let changes = store.changes_since(0, 10).await.unwrap();
        assert_eq!(changes.len(), 2);
        assert!(matches!(changes[1].op, ChangeOp::Revoke(id) if id == k.id()));
    });
}

/// `connect_waiting` waits for a database that is starting.
#[test]
fn connect_waiting_waits_for_the_database() {
    let pg = TestPg::start();
    pg.stop_immediate();
    let url = pg.url();
    let rt = runtime();
    let waiting =
        rt.spawn(async move { PgStore::connect_waiting(&url, Duration::from_secs(30)).await });
    std::thread::sleep(Duration::from_millis(700));
    assert!(!waiting.is_finished());
    pg.pg_ctl_start();
    let store = rt.block_on(waiting).unwrap().unwrap();
    rt.block_on(store.ping()).unwrap();
}

/// Runs one script of calls on a store and returns every answer, in a form
/// that can be compared across stores.
async fn script(
    store: &dyn Store,
    keys: &[KeyRecord; 6],
    rolled: &(KeyRecord, KeyRecord),
) -> Vec<String> {
    let [root, a, b, c, other, spare] = keys;
    let mut out = Vec::new();
    let mut say = |what: &str, v: String| out.push(format!("{what}: {v}"));
    say("count0", format!("{:?}", store.count().await));
    say(
        "create root",
        format!("{:?}", store.create(root, None, 10).await),
    );
    say(
        "create a",
        format!("{:?}", store.create(a, Some(root.id()), 11).await),
    );
    say(
        "create b",
        format!("{:?}", store.create(b, Some(a.id()), 12).await),
    );
    say(
        "create c",
        format!("{:?}", store.create(c, Some(b.id()), 13).await),
    );
    say(
        "create other",
        format!("{:?}", store.create(other, None, 14).await),
    );
    for (name, id) in [("a", a.id()), ("c", c.id()), ("other", other.id())] {
        for (sname, scope) in [
            ("all", Scope::All),
            ("root", Scope::DescendantsOf(root.id())),
            ("a", Scope::DescendantsOf(a.id())),
            ("c", Scope::DescendantsOf(c.id())),
        ] {
            say(
                &format!("get {name} in {sname}"),
                format!("{:?}", store.get(id, scope).await),
            );
        }
    }
    say(
        "get unknown",
        format!("{:?}", store.get(spare.id(), Scope::All).await),
    );
    let ids = |p: &Result<KeyPage, StoreError>| match p {
        Ok(p) => format!(
            "{:?} more={}",
            p.keys.iter().map(|k| k.record.id()).collect::<Vec<_>>(),
            p.has_more
        ),
        Err(e) => format!("{e:?}"),
    };
    say("list all 2", ids(&store.list(Scope::All, None, 2).await));
    say(
        "list all after",
        ids(&store.list(Scope::All, Some(b.id()), 10).await),
    );
    say(
        "list root",
        ids(&store.list(Scope::DescendantsOf(root.id()), None, 10).await),
    );
    say(
        "list b",
        ids(&store.list(Scope::DescendantsOf(b.id()), None, 10).await),
    );
    say(
        "last used",
        format!(
            "{:?}",
            store.record_last_used(&[(a.id(), 50), (b.id(), 60)]).await
        ),
    );
    say(
        "last used back",
        format!("{:?}", store.record_last_used(&[(a.id(), 40)]).await),
    );
    say(
        "get a used",
        format!("{:?}", store.get(a.id(), Scope::All).await),
    );
    let (new, old) = rolled;
    say(
        "roll out of scope",
        format!(
            "{:?}",
            store
                .roll(old, new, Scope::DescendantsOf(a.id()), None, 20)
                .await
        ),
    );
    say(
        "roll",
        format!(
            "{:?}",
            store.roll(old, new, Scope::All, Some(root.id()), 21).await
        ),
    );
    say(
        "roll again",
        format!("{:?}", store.roll(old, spare, Scope::All, None, 22).await),
    );
    say(
        "revoke out of scope",
        format!(
            "{:?}",
            store
                .revoke(a.id(), Scope::DescendantsOf(b.id()), true, None, 30)
                .await
        ),
    );
    say(
        "revoke b no cascade",
        format!(
            "{:?}",
            store
                .revoke(b.id(), Scope::DescendantsOf(root.id()), false, None, 31)
                .await
        ),
    );
    say(
        "revoke a cascade",
        format!(
            "{:?}",
            store
                .revoke(a.id(), Scope::All, true, Some(root.id()), 32)
                .await
        ),
    );
    say(
        "revoke a again",
        format!(
            "{:?}",
            store.revoke(a.id(), Scope::All, true, None, 33).await
        ),
    );
    say(
        "get c",
        format!("{:?}", store.get(c.id(), Scope::All).await),
    );
    say("list all", ids(&store.list(Scope::All, None, 100).await));
    say(
        "events",
        format!("{:?}", store.events(0, 100, Scope::All).await),
    );
    say(
        "events page",
        format!("{:?}", store.events(3, 2, Scope::All).await),
    );
    say(
        "changes",
        format!("{:?}", store.changes_since(0, 100).await),
    );
    say(
        "changes tail",
        format!("{:?}", store.changes_since(7, 2).await),
    );
    let snap = store.snapshot().await.unwrap();
    let mut live: Vec<KeyId> = snap.records.iter().map(KeyRecord::id).collect();
    live.sort();
    say("snapshot", format!("seq={} {live:?}", snap.seq));
    say("count", format!("{:?}", store.count().await));
    say(
        "pepper",
        format!("{:?}", store.check_pepper(pepper().fingerprint()).await),
    );
    say(
        "pepper again",
        format!("{:?}", store.check_pepper(pepper().fingerprint()).await),
    );
    let wrong = store
        .check_pepper(Pepper::from_bytes(&[1u8; 32]).fingerprint())
        .await;
    say(
        "wrong pepper is fatal",
        format!("{}", matches!(wrong, Err(StoreError::Fatal(_)))),
    );
    out
}

/// The same calls on SQLite and on PostgreSQL give the same answers: one
/// trait, two stores, no handler can tell them apart.
#[test]
fn sqlite_and_postgres_answer_alike() {
    let pg = TestPg::start();
    let dir = std::env::temp_dir().join(format!("keygate-pg-diff-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let root = standard("root");
    let a = child("a", &root);
    let b = child("b", &a);
    let c = child("c", &b);
    let other = standard("other");
    let spare = standard("spare");
    let rolled = keygate::roll(
        &pepper(),
        &other,
        core::time::Duration::from_millis(500),
        &mut keygate::os_entropy(),
        keygate::UnixMillis::from_millis(5_000),
    )
    .unwrap();
    let (new, old) = rolled.into_parts();
    let rolled = (new.into_parts().0, old);
    let keys = [root, a, b, c, other, spare];
    let (on_sqlite, on_pg) = runtime().block_on(async {
        let sqlite = super::super::sqlite::SqliteStore::open(&dir.join("k.db")).unwrap();
        let postgres = PgStore::connect(&pg.url()).await.unwrap();
        (
            script(&sqlite, &keys, &rolled).await,
            script(&postgres, &keys, &rolled).await,
        )
    });
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(on_sqlite.len(), on_pg.len());
    for (s, p) in on_sqlite.iter().zip(&on_pg) {
        assert_eq!(s, p, "SQLite and PostgreSQL differ");
    }
}

/// A chain deeper than any cap one might choose: revoking its head revokes
/// every key down to the deepest, on both stores alike.
#[test]
fn a_cascade_reaches_the_bottom_of_a_deep_chain_on_both_stores() {
    const DEPTH: i64 = 10_050;
    let pg = TestPg::start();
    let bits = i64::from(child("c", &standard("p")).scopes().bits());
    let id = |n: i64| KeyId::parse(&format!("{n:016}")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (on_sqlite, on_pg) = runtime().block_on(async {
        let sqlite = super::super::sqlite::SqliteStore::open(&dir.path().join("deep.db")).unwrap();
        {
            let conn = rusqlite::Connection::open(dir.path().join("deep.db")).unwrap();
            conn.execute(
                "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < ?1)
                 INSERT INTO keys (id, kind, name, secret_hash, scopes, created_at_ms, creator_id)
                 SELECT printf('%016d', i), 'restricted', 'c', zeroblob(32), ?2, 1,
                        CASE WHEN i = 0 THEN NULL ELSE printf('%016d', i - 1) END
                 FROM n",
                rusqlite::params![DEPTH, bits],
            )
            .unwrap();
        }
        let postgres = PgStore::connect(&pg.url()).await.unwrap();
        pg.psql(&format!(
            "INSERT INTO keys (id, kind, name, secret_hash, scopes, created_at_ms, creator_id) \
             SELECT lpad(i::text, 16, '0'), 'restricted', 'c', decode(repeat('00', 32), 'hex'), \
                    {bits}, 1, CASE WHEN i = 0 THEN NULL ELSE lpad((i - 1)::text, 16, '0') END \
             FROM generate_series(0, {DEPTH}) AS i; \
             ANALYZE keys"
        ));
        // (Without statistics, as right after a bulk load and before
        // autovacuum's analyze, the planner walks each of the 10 050 levels
        // with a sequential scan: seconds instead of milliseconds.)
        let mut answers = Vec::new();
        for store in [&sqlite as &dyn Store, &postgres] {
            let revoked = store
                .revoke(id(0), Scope::All, true, None, 10)
                .await
                .unwrap();
            let deepest = store.get(id(DEPTH), Scope::All).await.unwrap().unwrap();
            let in_scope = store
                .get(id(DEPTH), Scope::DescendantsOf(id(0)))
                .await
                .unwrap()
                .is_some();
            answers.push((revoked.len(), deepest.revoked_at_ms, in_scope));
        }
        (answers[0], answers[1])
    });
    assert_eq!(on_sqlite, (DEPTH as usize + 1, Some(10), true));
    assert_eq!(on_pg, on_sqlite);
}

/// A write PostgreSQL keeps aborting as a deadlock (a trigger raises
/// `40P01` on every insert) is retried, then answered as unavailable (503
/// with `Retry-After`), not as a fatal error (500).
#[test]
fn a_write_still_deadlocked_after_its_retries_is_unavailable() {
    let pg = TestPg::start();
    runtime().block_on(async {
        let store = PgStore::connect(&pg.url()).await.unwrap();
        pg.psql(
            "CREATE FUNCTION always_deadlock() RETURNS trigger AS $$ \
             BEGIN RAISE EXCEPTION 'forced' USING ERRCODE = '40P01'; END $$ LANGUAGE plpgsql; \
             CREATE TRIGGER always_deadlock BEFORE INSERT ON keys \
             FOR EACH ROW EXECUTE FUNCTION always_deadlock();",
        );
        match store.create(&standard("k"), None, 1).await {
            Err(StoreError::Unavailable(m)) => {
                assert!(m.contains("write conflict after 3 attempts"), "{m}");
                assert!(m.contains("40P01"), "{m}");
            }
            other => panic!("expected unavailable, got {other:?}"),
        }
        pg.psql("DROP TRIGGER always_deadlock ON keys");
        store.create(&standard("k"), None, 1).await.unwrap();
    });
}

#[test]
fn credit_pools_and_leases() {
    let pg = TestPg::start();
    runtime().block_on(async {
        let store = PgStore::connect(&pg.url()).await.unwrap();
        crate::store::lease_tests::all(&store).await;
    });
}

/// Several instances (each its own connection pool) lease from one pool
/// at once: the row lock serializes them, so the grants add up to the
/// pool exactly, never more.
#[test]
fn concurrent_leases_never_grant_more_than_the_pool() {
    let pg = TestPg::start();
    runtime().block_on(async {
        let stores: Vec<Arc<PgStore>> = {
            let mut v = Vec::new();
            for _ in 0..3 {
                v.push(Arc::new(PgStore::connect(&pg.url()).await.unwrap()));
            }
            v
        };
        let meter = crate::store::CreditMeter {
            meter: keygate::Meter {
                id: KeyId::parse("0000000000000042").unwrap(),
                since: keygate::UnixMillis::from_millis(0),
            },
            refill: None,
        };
        stores[0].set_credits(meter, 5_000, 1).await.unwrap();
        let mut tasks = Vec::new();
        for (i, store) in stores.iter().enumerate() {
            for t in 0..8u64 {
                let store = Arc::clone(store);
                let instance = format!("i{i}t{t}");
                tasks.push(tokio::spawn(async move {
                    let mut got = 0u64;
                    let mut want = 1 + t * 7;
                    loop {
                        let l = store
                            .lease_credits(meter, &instance, want, 1, 2, 60_000)
                            .await
                            .unwrap();
                        if l.granted == 0 {
                            return got;
                        }
                        got += l.granted;
                        want = want % 97 + 1;
                    }
                }));
            }
        }
        let mut granted = 0;
        for t in tasks {
            granted += t.await.unwrap();
        }
        assert_eq!(granted, 5_000);
        assert_eq!(
            pg.psql("SELECT remaining FROM credit_balances WHERE meter_id = '0000000000000042'"),
            "0"
        );
        assert_eq!(
            pg.psql("SELECT sum(amount) FROM credit_leases WHERE meter_id = '0000000000000042'"),
            "5000"
        );
        assert_eq!(stores[1].credit_total(meter, 3).await.unwrap(), Some(5_000));
    });
}

#[test]
fn credits_with_leases_out() {
    let pg = TestPg::start();
    runtime().block_on(async {
        let store = PgStore::connect(&pg.url()).await.unwrap();
        super::super::limits_tests::credits_with_leases_out(&store).await;
    });
}

#[test]
fn limits_live_on_the_meter() {
    let pg = TestPg::start();
    runtime().block_on(async {
        let store = PgStore::connect(&pg.url()).await.unwrap();
        super::super::limits_tests::limits_live_on_the_meter(&store).await;
    });
    pg.psql("CREATE DATABASE roll");
    let url = pg.url().replace("/keygate", "/roll");
    runtime().block_on(async {
        let store = PgStore::connect(&url).await.unwrap();
        super::super::limits_tests::a_roll_keeps_the_current_limits(&store).await;
    });
}

#[test]
fn usage_counts_add_up_and_retention_folds_them() {
    let pg = TestPg::start();
    runtime().block_on(async {
        let store = PgStore::connect(&pg.url()).await.unwrap();
        // Retention first: it prunes every key's old rows.
        super::super::usage_tests::retention(&store).await;
        super::super::usage_tests::usage_round_trip(&store).await;
    });
}

/// Several instances flush the same rows and prune at once: every count is
/// added once, and no minute is folded twice (or lost).
#[test]
fn instances_flushing_and_pruning_at_once_keep_every_count() {
    use super::super::usage_tests::n;
    use super::super::{Bucket, UsageQuery, UsageRow, DAY_MS, MINUTE_MS};
    let pg = TestPg::start();
    runtime().block_on(async {
        let url = pg.url();
        let mut stores = Vec::new();
        for _ in 0..3 {
            stores.push(Arc::new(PgStore::connect(&url).await.unwrap()));
        }
        let keys: Vec<KeyRecord> = (0..4).map(|i| standard(&format!("k{i}"))).collect();
        for k in &keys {
            stores[0].create(k, None, 1).await.unwrap();
        }
        let now = 500 * DAY_MS;
        // Each store flushes 40 batches of every key over 120 old minutes
        // and 5 recent ones, in its own order.
        let mut flushes = Vec::new();
        for (s, store) in stores.iter().enumerate() {
            let (store, keys) = (Arc::clone(store), keys.clone());
            flushes.push(tokio::spawn(async move {
                for round in 0..40i64 {
                    let mut batch = Vec::new();
                    for (i, k) in keys.iter().enumerate() {
                        let old = (round * 3 + i as i64 + s as i64) % 120;
                        batch.push(UsageRow {
                            key_id: k.id(),
                            minute_ms: 400 * DAY_MS + old * MINUTE_MS,
                            counts: n(1, 0, 0, 0),
                        });
                        batch.push(UsageRow {
                            key_id: k.id(),
                            minute_ms: now - (round % 5) * MINUTE_MS,
                            counts: n(0, 1, 0, 0),
                        });
                    }
                    if s % 2 == 1 {
                        batch.reverse();
                    }
                    store.record_usage(&batch).await.unwrap();
                    store.prune_usage(now, 7).await.unwrap();
                }
            }));
        }
        for f in flushes {
            f.await.unwrap();
        }
        while stores[1].prune_usage(now, 50).await.unwrap().folded > 0 {}
        assert_eq!(
            pg.psql("SELECT count(*) FROM usage_minutes WHERE minute_ms < 470::bigint * 86400000"),
            "0"
        );
        for k in &keys {
            let usage = stores[2]
                .usage(
                    k.id(),
                    Scope::All,
                    UsageQuery {
                        bucket: Bucket::Day,
                        from_ms: 0,
                        to_ms: now,
                    },
                )
                .await
                .unwrap()
                .unwrap();
            let mut total = super::super::UsageCounts::default();
            for b in &usage.buckets {
                total.add(&b.counts);
            }
            assert_eq!(total, n(120, 120, 0, 0), "{}", k.id());
        }
    });
}

#[test]
fn a_version_3_database_gains_the_usage_tables() {
    let pg = TestPg::start();
    runtime().block_on(async {
        drop(PgStore::connect(&pg.url()).await.unwrap());
    });
    // Back to version 3, as a 0.2 binary left it.
    pg.psql(
        "DROP TABLE usage_minutes; DROP TABLE usage_days; \
         DROP TABLE credit_leases; DROP TABLE credit_balances; \
         DELETE FROM schema_migrations WHERE version > 3; UPDATE meta SET schema_version = 3",
    );
    runtime().block_on(async {
        let store = PgStore::connect(&pg.url()).await.unwrap();
        super::super::usage_tests::usage_round_trip(&store).await;
    });
    assert_eq!(
        pg.psql("SELECT schema_version FROM meta"),
        SCHEMA_VERSION.to_string()
    );
    let versions: Vec<String> = (2..=SCHEMA_VERSION).map(|v| v.to_string()).collect();
    assert_eq!(
        pg.psql("SELECT string_agg(version::text, ',' ORDER BY version) FROM schema_migrations"),
        versions.join(",")
    );
    assert_eq!(
        pg.psql("SELECT count(*) FROM credit_balances"),
        "0",
        "the later steps ran too"
    );
}

/// Builds, with the raw migrations, a database at schema `version` (3 or
/// 4: before per-key limits) holding the key `a` and its `created` event.
async fn database_at(url: &str, version: i64, a: &KeyRecord) {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let driver = tokio::spawn(connection);
    for (v, sql) in MIGRATIONS.iter().filter(|(v, _)| *v <= version) {
        client.batch_execute(sql).await.unwrap();
        client
            .execute("INSERT INTO schema_migrations VALUES ($1, 0, 'test')", &[v])
            .await
            .unwrap();
    }
    client
        .execute("UPDATE meta SET schema_version = $1", &[&version])
        .await
        .unwrap();
    client
        .execute(
            "INSERT INTO keys (id, kind, name, secret_hash, scopes, created_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &a.id().as_str(),
                &a.kind().as_str(),
                &a.name(),
                &a.secret_hash().as_bytes().as_slice(),
                &i64::from(a.scopes().bits()),
                &a.created_at().as_millis(),
            ],
        )
        .await
        .unwrap();
    client
        .batch_execute(&format!(
            "INSERT INTO changes VALUES (1, 1, 'created', '{}', NULL, NULL); \
             UPDATE change_seq SET seq = 1;",
            a.id()
        ))
        .await
        .unwrap();
    drop(client);
    driver.await.unwrap().unwrap();
}

/// A database at `version` (3 or 4) upgrades step by step to 6: the usage
/// tables (4), then the limit columns, the meter index, `credit_balances`
/// and the `limits_changed` action (5), then the credit leases (6); it
/// keeps its rows, and each step runs once.
fn upgrades_to_version_6_from(version: i64) {
    let pg = TestPg::start();
    let a = standard("old");
    runtime().block_on(async {
        database_at(&pg.url(), version, &a).await;

        let store = PgStore::connect(&pg.url()).await.unwrap();
        assert_eq!(store.migrate().await.unwrap(), Vec::<i64>::new());
        assert_eq!(
            store.get(a.id(), Scope::All).await.unwrap().unwrap().record,
            a
        );
        let five = keygate::RateLimit::new(5, Duration::from_secs(1)).unwrap();
        let change = LimitsChange {
            rate: Some(Some(five)),
            credits: None,
        };
        let changed = store
            .set_limits(a.id(), change, Scope::All, None, 10)
            .await
            .unwrap();
        assert_eq!(changed.len(), 1);
        assert_eq!(changed[0].0, 2);
        assert_eq!(changed[0].1.limits().rate, Some(five));
        // The usage tables work as well.
        super::super::usage_tests::usage_round_trip(&store).await;
    });
    assert_eq!(pg.psql("SELECT schema_version FROM meta"), "6");
    assert_eq!(
        pg.psql("SELECT string_agg(version::text, ',' ORDER BY version) FROM schema_migrations"),
        "2,3,4,5,6"
    );
    assert_eq!(
        pg.psql("SELECT to_regclass('credit_leases') IS NOT NULL"),
        "t"
    );
    assert_eq!(
        pg.psql("SELECT count(*) FROM pg_indexes WHERE indexname = 'keys_meter'"),
        "1"
    );
    assert_eq!(
        pg.psql("SELECT to_regclass('credit_balances') IS NOT NULL"),
        "t"
    );
    assert_eq!(
        pg.psql(
            "SELECT to_regclass('usage_minutes') IS NOT NULL AND to_regclass('usage_days') IS NOT NULL"
        ),
        "t"
    );
    assert_eq!(
        pg.psql(&format!(
            "SELECT action FROM changes WHERE key_id = '{}' ORDER BY seq DESC LIMIT 1",
            a.id()
        )),
        "limits_changed"
    );
    // The CHECK on the action takes the new one.
    assert!(pg
        .psql("SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = 'changes_action_check'")
        .contains("limits_changed"));
    // The step stands alone: run again, it changes nothing.
    let before = pg.psql("SELECT count(*) FROM changes");
    pg.psql(MIGRATE_V5);
    pg.psql(MIGRATE_LEASES);
    assert_eq!(pg.psql("SELECT count(*) FROM changes"), before);
}

#[test]
fn a_version_3_database_upgrades_through_4_5_and_6() {
    upgrades_to_version_6_from(3);
}

#[test]
fn a_version_4_database_gains_the_limit_columns() {
    upgrades_to_version_6_from(4);
}

/// One script of demand exchanges between instances `a`, `b`, `c` and `d`,
/// at explicit times; every answer, comparable across stores.
async fn demand_script(store: &dyn Store) -> Vec<PeerDemand> {
    let m1 = KeyId::parse("0000000000000001").unwrap();
    let m2 = KeyId::parse("0000000000000002").unwrap();
    let report = |instance: &str, at_ms: i64, fresh: i64, demand: Vec<(KeyId, f64)>| DemandReport {
        instance: instance.to_owned(),
        at_ms,
        fresh_since_ms: fresh,
        demand,
        purge_before_ms: None,
    };
    let mut out = Vec::new();
    for r in [
        report("a", 1_000, 400, vec![(m2, 5.0), (m1, 10.0)]),
        report("b", 1_100, 500, vec![(m1, 30.0)]),
        report("c", 1_200, 600, vec![]),
        // a's own reports never count for a.
        report("a", 1_300, 700, vec![(m1, 20.0)]),
        // b and c went stale.
        report("a", 2_000, 1_400, vec![(m1, 20.0)]),
        // a's report of m2 went stale, the one of m1 did not.
        report("b", 2_050, 1_450, vec![]),
    ] {
        out.push(store.exchange_demand(&r).await.unwrap());
    }
    // a leaves: it counts no more at once.
    store.withdraw_demand("a").await.unwrap();
    out.push(
        store
            .exchange_demand(&report("c", 2_100, 1_500, vec![]))
            .await
            .unwrap(),
    );
    // c purges everything stamped before 10 s: b's reports go, c's stay.
    let mut purge = report("c", 70_000, 69_400, vec![(m2, 1.5)]);
    purge.purge_before_ms = Some(10_000);
    out.push(store.exchange_demand(&purge).await.unwrap());
    out.push(
        store
            .exchange_demand(&report("d", 70_001, 0, vec![]))
            .await
            .unwrap(),
    );
    out
}

/// The demand exchange answers alike on both stores (PostgreSQL's tables,
/// SQLite's memory), with the expected figures.
#[test]
fn demand_reports_are_exchanged_alike_on_both_stores() {
    let pg = TestPg::start();
    let dir = std::env::temp_dir().join(format!("keygate-pg-demand-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (on_sqlite, on_pg) = runtime().block_on(async {
        let sqlite = super::super::sqlite::SqliteStore::open(&dir.join("k.db")).unwrap();
        let postgres = PgStore::connect(&pg.url()).await.unwrap();
        (demand_script(&sqlite).await, demand_script(&postgres).await)
    });
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(on_sqlite, on_pg);
    let m1 = KeyId::parse("0000000000000001").unwrap();
    let m2 = KeyId::parse("0000000000000002").unwrap();
    let peers = |instances: u32, demand: Vec<(KeyId, f64)>| PeerDemand { instances, demand };
    assert_eq!(
        on_pg,
        [
            peers(0, vec![]),
            peers(1, vec![(m1, 10.0), (m2, 5.0)]),
            peers(2, vec![(m1, 40.0), (m2, 5.0)]),
            peers(2, vec![(m1, 30.0)]),
            peers(0, vec![]),
            peers(1, vec![(m1, 20.0)]),
            peers(1, vec![]),
            peers(0, vec![]),
            peers(1, vec![(m2, 1.5)]),
        ]
    );
    // Soft state: unlogged tables.
    assert_eq!(
        pg.psql(
            "SELECT string_agg(relname || ':' || relpersistence::text, ',' ORDER BY relname) \
             FROM pg_class WHERE relname IN ('rate_demand', 'rate_instances')"
        ),
        "rate_demand:u,rate_instances:u"
    );
}
