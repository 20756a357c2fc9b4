//! The follower: keeps this instance's keyring in step with the store's
//! change log, flushes `last_used_at_ms` and the usage counts (then runs a
//! bounded retention pass over the stored counts), and evicts expired keys.
//!
//! It reads the log from its own cursor every `poll` interval, and at once
//! when the store signals new changes (PostgreSQL's `NOTIFY`). Applying is
//! idempotent (see `keygate::feed`), so a change this instance already
//! applied when it wrote it is read again harmlessly, and a change written
//! by the CLI or another instance is applied within one poll interval.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keygate::ChangeOp;
use tokio::sync::watch;

use crate::clock::now_ms;
use crate::metrics::{FlushKind, StoreSource};
use crate::sync::{shares, Keys};

/// How many changes one read of the log takes at most.
const BATCH: usize = 1_000;

/// How many rows one write of a flush carries at most, in key order: each
/// write is a transaction of its own, so a revocation written meanwhile (by
/// this instance, the CLI or another instance) waits for one of them at
/// most, never for a whole flush (a million keys' last uses take seconds).
pub const FLUSH_CHUNK: usize = 10_000;

/// How many usage rows one retention pass folds (and deletes) at most: at
/// the default 10 s flush, 60 000 key-minutes a minute, far more than the
/// store gains (one row per key and minute in use).
pub const PRUNE_BATCH: usize = 10_000;

/// How often the follower does what.
#[derive(Debug, Clone, Copy)]
pub struct Intervals {
    /// Reading the change log.
    pub poll: Duration,
    /// Writing `last_used_at_ms` and the usage counts to the store, and a
    /// retention pass (at most).
    pub flush: Duration,
    /// Dropping expired keys from memory.
    pub evict: Duration,
    /// Exchanging demand for the rate-limit shares (`crate::sync::shares`).
    pub shares: Duration,
}

impl Default for Intervals {
    fn default() -> Intervals {
        Intervals {
            poll: Duration::from_millis(100),
            flush: Duration::from_secs(10),
            evict: Duration::from_secs(10),
            shares: crate::sync::shares::TICK,
        }
    }
}

/// Starts [`run`] on a thread of its own, with a runtime of its own: the
/// follower is never queued behind request handlers on the server's
/// workers, so a flood of requests delays revocations only by the CPU it
/// takes, not by a run queue. Its database connection, its `LISTEN`
/// connection and their I/O live on that runtime too, and so does the
/// rate-limit share exchange ([`shares::run`]), whose first tick, like the
/// first read of the log, comes before the server listens.
///
/// The credit leases' background ([`CreditLeases::run`]) runs on the
/// caller's runtime instead (the server's workers), beside the requests
/// whose spends wake it: a request flood slows it only as much as it slows
/// them, however the OS schedules this thread. The follower's thread awaits
/// it at shutdown, so every lease is back when the thread ends. Call this
/// from within a Tokio runtime.
///
/// [`CreditLeases::run`]: crate::sync::credits::CreditLeases::run
pub fn spawn(
    state: Arc<Keys>,
    cursor: u64,
    intervals: Intervals,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<(
    std::thread::JoinHandle<()>,
    tokio::sync::oneshot::Receiver<()>,
)> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("keygate-follower")
        .build()?;
    let (started, first_read) = tokio::sync::oneshot::channel();
    let credits = tokio::spawn(Arc::clone(state.credits()).run(shutdown.clone()));
    let thread = std::thread::Builder::new()
        .name(String::from("keygate-follower"))
        .spawn(move || {
            runtime.block_on(async move {
                // The first read of the log before the server says it is
                // listening: its connection and runtime exist from then on.
                let cursor = catch_up(&state, cursor).await;
                // The first share exchange too: the limits loaded are split
                // with the instances already running before any request.
                let mut share = shares::Shares::new(intervals.shares);
                share.tick(&state).await;
                let _ = started.send(());
                let exchange =
                    tokio::spawn(shares::run(Arc::clone(&state), share, shutdown.clone()));
                run(state, cursor, intervals, shutdown).await;
                // It withdraws this instance's demand on the way out.
                let _ = exchange.await;
                // The leases go back before the thread ends.
                if credits.await.is_err() {
                    tracing::error!("the credit lease task failed");
                }
            });
        })?;
    Ok((thread, first_read))
}

/// Follows the log from `cursor` until `shutdown` turns true; then flushes
/// the last uses once more and returns. The flushes run beside the reads of
/// the log, one at a time, each at least `intervals.flush` after the last
/// one ended.
pub async fn run(
    state: Arc<Keys>,
    mut cursor: u64,
    intervals: Intervals,
    mut shutdown: watch::Receiver<bool>,
) {
    let signal = state.store().change_signal();
    let mut tick = tokio::time::interval(intervals.poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_flush = Instant::now();
    let mut last_evict = Instant::now();
    // The flush in progress: a task of its own, so that applying changes
    // never waits for it (writing a flush interval's last uses and counts
    // of a million keys takes seconds; a revocation must not).
    let mut flushing: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = async {
                match &signal {
                    Some(notify) => notify.notified().await,
                    None => std::future::pending().await,
                }
            } => {}
            _ = shutdown.changed() => break,
        }
        cursor = catch_up(&state, cursor).await;
        if flushing
            .as_ref()
            .is_some_and(tokio::task::JoinHandle::is_finished)
        {
            // The interval counts from a flush's end (within a poll).
            flushing = None;
            last_flush = Instant::now();
        }
        if flushing.is_none() && last_flush.elapsed() >= intervals.flush {
            let state = Arc::clone(&state);
            flushing = Some(tokio::spawn(async move { flush(&state).await }));
        }
        if last_evict.elapsed() >= intervals.evict {
            let evicted = state.cache().evict_expired(now_ms());
            if evicted > 0 {
                // Their limits went with them; the leases of meters whose
                // last key that was go back.
                state.release_meters();
                tracing::info!(evicted, "evicted expired keys from memory");
            }
            // The log is read in order up to `cursor`: no change at or below
            // it comes again (a late own write at or below it is refused as
            // stale), so its tombstones and eviction marks can go.
            let dropped = state.cache().compact(cursor);
            if dropped > 0 {
                let held = state.cache().tombstones();
                tracing::debug!(dropped, held, cursor, "compacted tombstones");
            }
            last_evict = Instant::now();
        }
    }
    if let Some(flushing) = flushing {
        if flushing.await.is_err() {
            tracing::error!("a flush of last uses and usage counts failed");
        }
    }
    flush(&state).await;
}

/// Reads and applies every change after `cursor`; returns the new cursor.
/// Marks the store ready or not by whether it answered.
pub async fn catch_up(state: &Keys, mut cursor: u64) -> u64 {
    loop {
        match state.store().changes_since(cursor, BATCH).await {
            Ok(changes) => {
                mark(state.ready_flag(), true);
                let Some(last) = changes.last().map(|c| c.seq) else {
                    crate::metrics::follower_read(cursor, false, true, now_ms());
                    return cursor;
                };
                let full = changes.len() == BATCH;
                for change in &changes {
                    match &change.op {
                        ChangeOp::Revoke(id) => state.usage().forget(id),
                        // A lease before the key's first request here.
                        ChangeOp::Upsert(record) => {
                            if let Some(credits) = record.limits().credits {
                                state.credits().ensure(record.meter(), credits.refill());
                            }
                        }
                    }
                }
                let changed = state.cache().apply(changes);
                // Meters whose last key with credits went: their leases go back.
                state.release_meters();
                tracing::debug!(from = cursor, to = last, changed, "applied changes");
                crate::metrics::follower_read(last, true, !full, now_ms());
                cursor = last;
                if !full {
                    return cursor;
                }
            }
            Err(e) => {
                crate::metrics::follower_error();
                if mark(state.ready_flag(), false) {
                    tracing::warn!("cannot read the change log: {e}");
                }
                return cursor;
            }
        }
    }
}

/// Sets the readiness flag; true if it changed.
fn mark(flag: &AtomicBool, ready: bool) -> bool {
    let was = flag.swap(ready, Ordering::Relaxed);
    if was != ready && ready {
        tracing::info!("store reachable again");
    }
    was != ready
}

/// Writes the last uses and the usage counts noted since the last flush
/// ([`FLUSH_CHUNK`] rows per transaction), then runs one bounded retention
/// pass over the stored counts.
pub async fn flush(state: &Keys) {
    let mut batch = state.usage().take_dirty();
    if !batch.is_empty() {
        let started = Instant::now();
        batch.sort_unstable();
        let mut written = Ok(());
        for (i, chunk) in batch.chunks(FLUSH_CHUNK).enumerate() {
            if let Err(e) = state.store().record_last_used(chunk).await {
                // This chunk and the ones after it go back to memory.
                let left = batch.get(i * FLUSH_CHUNK..).unwrap_or_default();
                tracing::warn!(keys = left.len(), "cannot write last-used times: {e}");
                state.usage().unflush(left);
                written = Err(());
                break;
            }
        }
        crate::metrics::flushed(FlushKind::LastUsed, started.elapsed(), written.is_ok());
    }
    flush_counts(state).await;
    match state.store().prune_usage(now_ms(), PRUNE_BATCH).await {
        Ok(pruned) if pruned.folded > 0 || pruned.deleted > 0 => {
            tracing::info!(
                folded = pruned.folded,
                deleted = pruned.deleted,
                "usage retention: folded minute rows into days, deleted old days"
            );
        }
        Ok(_) => {}
        Err(e) => {
            crate::metrics::store_error(StoreSource::Flush);
            tracing::warn!("cannot prune usage counts: {e}");
        }
    }
}

/// Writes the usage counts noted since the last flush; hands them back to
/// memory if the store refuses them. Holds the counts' flush lock from the
/// take to the end of the write (see `crate::sync::counts`).
pub async fn flush_counts(state: &Keys) {
    let counts = state.counts();
    let _flushing = counts.flush_guard().await;
    let mut batch = counts.take(now_ms());
    if batch.is_empty() {
        return;
    }
    let started = Instant::now();
    batch.sort_unstable_by_key(|row| (row.key_id, row.minute_ms));
    let mut written = Ok(());
    for (i, chunk) in batch.chunks(FLUSH_CHUNK).enumerate() {
        if let Err(e) = state.store().record_usage(chunk).await {
            // This chunk and the ones after it go back to memory.
            let left = batch.get(i * FLUSH_CHUNK..).unwrap_or_default();
            tracing::warn!(rows = left.len(), "cannot write usage counts: {e}");
            counts.unflush(left);
            written = Err(());
            break;
        }
    }
    crate::metrics::flushed(FlushKind::Usage, started.elapsed(), written.is_ok());
}
