//! Rate limits across instances: each instance enforces a share of every
//! key's rate limit, and the shares follow the demand.
//!
//! Every tick ([`TICK`], 200 ms), on the follower's runtime, never on a
//! request's path:
//!
//! 1. take the cost asked of each rate-limited meter since the last tick
//!    ([`KeyCache::take_demand`](crate::sync::cache::KeyCache::take_demand)),
//!    refused requests included, as a rate (cost per second), smoothed over
//!    ticks ([`SMOOTHING`]);
//! 2. exchange it through the store ([`Store::exchange_demand`]): one
//!    statement writes this instance's heartbeat and its demand per meter,
//!    and reads the other instances' fresh reports (stamped within
//!    [`FRESH_TICKS`] ticks);
//! 3. set each meter's share to [`share`]: this instance's part of the
//!    demand, all but [`FLOOR`] of the limit split by demand, the floor
//!    split evenly, so the shares of the instances add up to 1; a meter no
//!    instance asks of is split evenly (`1/n`), and so start the meters new
//!    here ([`Limiter::set_default_share`](keygate::Limiter::set_default_share)).
//!    An instance alone has the whole limit.
//!
//! A share changes the limit an instance enforces, never its burst: a
//! higher share keeps the requests that would pass at once, a lower one
//! keeps the backlog in time ([`Limiter::set_share`](keygate::Limiter::set_share)).
//! `docs/operations.md` ("Rate limits across instances") proves the bound.
//!
//! When the store fails (PostgreSQL down), the tick logs it and tries again
//! at the next one; the shares stay as they were, so each instance keeps
//! deciding alone within its last share. On SQLite (one process) the
//! exchange stays in memory and finds no other instance: the share stays
//! whole and the limit exact, at no write to the file.
//!
//! [`Store::exchange_demand`]: crate::store::Store::exchange_demand

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keygate::KeyId;
use tokio::sync::watch;

use crate::clock::now_ms;
use crate::store::{DemandReport, PeerDemand};
use crate::sync::Keys;

/// How often an instance exchanges its demand: one store statement per
/// tick, so 5 per second per instance, whatever the request rate and
/// however many keys are limited.
pub const TICK: Duration = Duration::from_millis(200);

/// A report counts for this many ticks; an instance that stops reporting
/// (killed, cut off) stops counting after them.
pub const FRESH_TICKS: u32 = 3;

/// Shares are `num / SCALE`.
pub const SCALE: u32 = 65_536;

/// The part of each limit split evenly between the instances, whatever
/// their demand: an instance that asks nothing keeps `FLOOR / n` of the
/// limit (at least one request per period), so a first request there is not
/// refused; at most this part of the limit goes unused when load sits on
/// one instance.
pub const FLOOR: f64 = 1.0 / 32.0;

/// The weight of the latest tick in the smoothed demand.
pub const SMOOTHING: f64 = 0.5;

/// A smoothed demand below this (cost per second) is dropped: the meter is
/// idle here.
const FORGET_BELOW: f64 = 1e-3;

/// Reports older than this are deleted, by whichever instance purges.
const PURGE_AFTER: Duration = Duration::from_secs(60);

/// An instance purges stale reports every this many ticks (10 s).
const PURGE_EVERY: u64 = 50;

/// Every this many ticks (10 s) an instance sets every share it computed,
/// changed or not.
const RESET_EVERY: u64 = 50;

/// How long one exchange may take before the tick gives up on it (its
/// answer would be stale).
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(1);

/// A share of a limit, `(num, den)`: `num / den` of it.
pub type Share = (u32, u32);

/// This instance's share of a limit, `(num, SCALE)`, when it asks `own` and
/// the other `instances - 1` instances ask `others` (cost per second).
///
/// All but [`FLOOR`] of the limit is split by demand, the floor evenly; with
/// no demand anywhere, the whole limit is split evenly. Given the same
/// figures, the shares of all instances add up to at most 1 (each is rounded
/// down).
pub fn share(own: f64, others: f64, instances: u32) -> Share {
    let n = f64::from(instances.max(1));
    let own = if own.is_finite() { own.max(0.0) } else { 0.0 };
    let others = if others.is_finite() {
        others.max(0.0)
    } else {
        0.0
    };
    let total = own + others;
    let part = if total > 0.0 { own / total } else { 1.0 / n };
    let share = (1.0 - FLOOR) * part + FLOOR / n;
    let scale = f64::from(SCALE);
    // In [0, SCALE]: the cast cannot truncate.
    let num = (share * scale).floor().clamp(1.0, scale) as u32;
    (num, SCALE)
}

/// The share exchange's state: this instance's id and smoothed demand, and
/// what it last knew of the others.
pub struct Shares {
    instance: String,
    tick: Duration,
    /// The smoothed demand per meter here, cost per second.
    demand: HashMap<KeyId, f64>,
    /// The instances that reported last time, this one included.
    instances: u32,
    /// The share computed by demand at the last tick, for each meter someone
    /// asked of.
    computed: HashMap<KeyId, Share>,
    /// The shares this exchange set and that should still hold, so an
    /// unchanged one costs no write lock (all are set again every
    /// [`RESET_EVERY`] ticks, should a meter have been made anew meanwhile).
    applied: HashMap<KeyId, Share>,
    last_take: Instant,
    ticks: u64,
    /// Whether the last exchange failed (to log a failure once).
    failing: bool,
}

impl Shares {
    /// A new state with a random instance id, exchanging every `tick`.
    pub fn new(tick: Duration) -> Shares {
        Shares {
            instance: instance_id(),
            tick,
            demand: HashMap::new(),
            instances: 1,
            computed: HashMap::new(),
            applied: HashMap::new(),
            last_take: Instant::now(),
            ticks: 0,
            failing: false,
        }
    }

    /// This instance's id in the reports.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Folds the cost asked of each meter over the last `secs` seconds into
    /// the smoothed demand; a meter seen for the first time takes its rate
    /// as it is (no lag), an idle one decays and is dropped.
    fn measure(&mut self, asked: &HashMap<KeyId, u64>, secs: f64) {
        let secs = secs.max(1e-3);
        for (meter, cost) in asked {
            // Cost per second: exact enough as a float.
            let rate = *cost as f64 / secs;
            self.demand
                .entry(*meter)
                .and_modify(|d| *d = SMOOTHING * rate + (1.0 - SMOOTHING) * *d)
                .or_insert(rate);
        }
        self.demand.retain(|meter, d| {
            if !asked.contains_key(meter) {
                *d *= 1.0 - SMOOTHING;
            }
            *d >= FORGET_BELOW
        });
    }

    /// The shares to set after an exchange that found `peers`: every meter
    /// someone asks of, by demand; the meters that were and no longer are,
    /// evenly. Also returns the even share when the number of instances
    /// changed (then every other meter here must take it too).
    ///
    /// A share computed by demand is applied only as far as the one
    /// computed at the tick before allows (the lower of the two): this
    /// instance's demand is fresh, the others' up to a tick old, so when
    /// demand appears at several instances at once each sees itself alone
    /// for a tick. A transient overestimate does not pass the filter; a
    /// real shift toward this instance lags one more tick.
    fn targets(&mut self, peers: &PeerDemand) -> (Vec<(KeyId, Share)>, Option<Share>) {
        let n = peers.instances.saturating_add(1);
        let others: HashMap<KeyId, f64> = peers.demand.iter().copied().collect();
        let active: HashSet<KeyId> = self.demand.keys().chain(others.keys()).copied().collect();
        let even = share(0.0, 0.0, n);
        // What a meter no one asked of had: the even share, before or now.
        let was_even = share(0.0, 0.0, n.max(self.instances));
        let mut computed = HashMap::with_capacity(active.len());
        let mut out: Vec<(KeyId, Share)> = Vec::with_capacity(active.len());
        for m in &active {
            let own = self.demand.get(m).copied().unwrap_or(0.0);
            let rest = others.get(m).copied().unwrap_or(0.0);
            let now = share(own, rest, n);
            let before = self.computed.get(m).copied().unwrap_or(was_even);
            out.push((*m, (now.0.min(before.0), SCALE)));
            computed.insert(*m, now);
        }
        out.extend(
            self.computed
                .keys()
                .filter(|m| !active.contains(*m))
                .map(|m| (*m, even)),
        );
        self.computed = computed;
        let changed = (n != self.instances).then_some(even);
        self.instances = n;
        (out, changed)
    }

    /// One tick: measure, exchange, set the shares. A failed exchange is
    /// logged (once, until one succeeds again) and changes no share.
    pub async fn tick(&mut self, keys: &Keys) {
        let mut asked = HashMap::new();
        keys.cache().take_demand(|meter, cost| {
            asked.insert(meter, cost);
        });
        let secs = self.last_take.elapsed().as_secs_f64();
        self.last_take = Instant::now();
        self.measure(&asked, secs);
        self.ticks += 1;
        let at_ms = now_ms();
        let tick_ms = i64::try_from(self.tick.as_millis()).unwrap_or(i64::MAX);
        let purge_after = i64::try_from(PURGE_AFTER.as_millis()).unwrap_or(i64::MAX);
        let report = DemandReport {
            instance: self.instance.clone(),
            at_ms,
            fresh_since_ms: at_ms.saturating_sub(tick_ms.saturating_mul(FRESH_TICKS.into())),
            demand: self.demand.iter().map(|(m, d)| (*m, *d)).collect(),
            purge_before_ms: self
                .ticks
                .is_multiple_of(PURGE_EVERY)
                .then(|| at_ms.saturating_sub(purge_after)),
        };
        let exchanged =
            tokio::time::timeout(EXCHANGE_TIMEOUT, keys.store().exchange_demand(&report)).await;
        let peers = match exchanged {
            Ok(Ok(peers)) => {
                if std::mem::replace(&mut self.failing, false) {
                    tracing::info!("rate-limit shares: the store answers again");
                }
                peers
            }
            Ok(Err(e)) => return self.failed(&e.to_string()),
            Err(_) => return self.failed("the exchange timed out"),
        };
        let before = self.instances;
        let (mut shares, even) = self.targets(&peers);
        if let Some(even) = even {
            tracing::info!(
                instance = %self.instance,
                instances = self.instances,
                was = before,
                "rate-limit shares: the number of instances changed"
            );
            let computed = &self.computed;
            shares.extend(
                keys.cache()
                    .shares()
                    .into_iter()
                    .filter(|(m, s)| !computed.contains_key(m) && *s != even)
                    .map(|(m, _)| (m, even)),
            );
        }
        if even.is_some() || self.ticks.is_multiple_of(RESET_EVERY) {
            self.applied.clear();
        }
        let applied = &mut self.applied;
        shares.retain(|(m, s)| applied.insert(*m, *s) != Some(*s));
        let computed = &self.computed;
        applied.retain(|m, _| computed.contains_key(m));
        if !shares.is_empty() || even.is_some() {
            keys.cache().set_shares(&shares, even, at_ms);
        }
    }

    fn failed(&mut self, why: &str) {
        crate::metrics::store_error(crate::metrics::StoreSource::Shares);
        if !std::mem::replace(&mut self.failing, true) {
            tracing::warn!(
                "rate-limit shares: cannot exchange demand ({why}); keeping the last shares"
            );
        }
    }
}

/// A random id for this process: 64 bits from the standard library's
/// randomly keyed hasher, over the process id and the time.
fn instance_id() -> String {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_i64(now_ms());
    format!("{:016x}", h.finish())
}

/// Runs [`Shares::tick`] every tick until `shutdown` turns true, then
/// withdraws this instance's reports, so the others take its part at once.
pub async fn run(keys: Arc<Keys>, mut shares: Shares, mut shutdown: watch::Receiver<bool>) {
    let mut interval = tokio::time::interval(shares.tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate, and the caller has just run one.
    interval.tick().await;
    while !*shutdown.borrow() {
        tokio::select! {
            _ = interval.tick() => shares.tick(&keys).await,
            _ = shutdown.changed() => break,
        }
    }
    let withdrawn = tokio::time::timeout(
        EXCHANGE_TIMEOUT,
        keys.store().withdraw_demand(shares.instance()),
    )
    .await;
    if !matches!(withdrawn, Ok(Ok(()))) {
        tracing::warn!("rate-limit shares: cannot withdraw this instance's demand; it goes stale");
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn id(n: u8) -> KeyId {
        KeyId::parse(&format!("{n:0>16}")).unwrap()
    }

    fn fraction((num, den): (u32, u32)) -> f64 {
        f64::from(num) / f64::from(den)
    }

    #[test]
    fn shares_follow_demand_and_add_up_to_at_most_one() {
        // Alone: the whole limit, asked or not.
        assert_eq!(share(100.0, 0.0, 1), (SCALE, SCALE));
        assert_eq!(share(0.0, 0.0, 1), (SCALE, SCALE));
        // No demand anywhere: split evenly.
        assert_eq!(share(0.0, 0.0, 4), (SCALE / 4, SCALE));
        // 70/20/10: all but the floor by demand, the floor evenly.
        let demand = [280.0, 80.0, 40.0];
        let total: f64 = demand.iter().sum();
        let shares: Vec<(u32, u32)> = demand.iter().map(|d| share(*d, total - d, 3)).collect();
        for (s, d) in shares.iter().zip(demand) {
            let want = (1.0 - FLOOR) * d / total + FLOOR / 3.0;
            assert!((fraction(*s) - want).abs() < 1e-4, "{s:?} {want}");
        }
        let sum: u32 = shares.iter().map(|s| s.0).sum();
        assert!(sum <= SCALE && sum + 3 >= SCALE, "{sum}");
        // One instance asks nothing: it keeps its part of the floor.
        let idle = share(0.0, 500.0, 3);
        assert!((fraction(idle) - FLOOR / 3.0).abs() < 1e-4);
        let sum = idle.0 + share(250.0, 250.0, 3).0 * 2;
        assert!(sum <= SCALE && sum + 3 >= SCALE, "{sum}");
        // Nonsense in, a share out.
        assert_eq!(share(f64::NAN, -1.0, 2), (SCALE / 2, SCALE));
        assert_eq!(share(1.0, 0.0, 0), (SCALE, SCALE));
    }

    #[test]
    fn demand_is_smoothed_and_idle_meters_are_dropped() {
        let mut s = Shares::new(TICK);
        let asked: HashMap<KeyId, u64> = [(id(1), 40), (id(2), 10)].into();
        s.measure(&asked, 0.2);
        assert_eq!(s.demand[&id(1)], 200.0);
        s.measure(&[(id(1), 20)].into(), 0.2);
        assert_eq!(s.demand[&id(1)], 150.0);
        assert_eq!(s.demand[&id(2)], 25.0);
        for _ in 0..20 {
            s.measure(&HashMap::new(), 0.2);
        }
        assert!(s.demand.is_empty());
    }

    /// Demand appears at three instances at once: each sees only its own
    /// at first, and would take nearly all; it keeps the even third until
    /// the others' reports show (a tick later), then takes its part.
    #[test]
    fn a_share_rises_only_when_two_ticks_agree() {
        let mut s = Shares::new(TICK);
        let (_, even) = s.targets(&PeerDemand {
            instances: 2,
            demand: vec![],
        });
        assert_eq!(even, Some(share(0.0, 0.0, 3)));
        s.measure(&[(id(1), 56)].into(), 0.2);
        let alone = PeerDemand {
            instances: 2,
            demand: vec![],
        };
        let (out, _) = s.targets(&alone);
        assert_eq!(out, [(id(1), share(0.0, 0.0, 3))]);
        s.measure(&[(id(1), 56)].into(), 0.2);
        let all = PeerDemand {
            instances: 2,
            demand: vec![(id(1), 120.0)],
        };
        let (out, _) = s.targets(&all);
        assert_eq!(out, [(id(1), share(280.0, 120.0, 3))]);
        assert!(fraction(out[0].1) > 0.6);
        // A fall applies at once.
        let (out, _) = s.targets(&PeerDemand {
            instances: 2,
            demand: vec![(id(1), 1_000.0)],
        });
        assert_eq!(out, [(id(1), share(280.0, 1_000.0, 3))]);
    }

    #[test]
    fn targets_cover_active_meters_then_return_idle_ones_to_even() {
        let mut s = Shares::new(TICK);
        s.measure(&[(id(1), 40)].into(), 0.2);
        let peers = PeerDemand {
            instances: 1,
            demand: vec![(id(1), 200.0), (id(2), 5.0)],
        };
        let (mut out, even) = s.targets(&peers);
        out.sort_by_key(|(m, _)| *m.as_str().as_bytes().last().unwrap());
        assert_eq!(even, Some((SCALE / 2, SCALE)));
        assert_eq!(out[0], (id(1), share(200.0, 200.0, 2)));
        assert_eq!(out[1], (id(2), share(0.0, 5.0, 2)));
        // Next tick: the same instances; meter 2 went quiet everywhere.
        let peers = PeerDemand {
            instances: 1,
            demand: vec![(id(1), 200.0)],
        };
        let (out, even) = s.targets(&peers);
        assert_eq!(even, None);
        assert!(out.contains(&(id(2), (SCALE / 2, SCALE))), "{out:?}");
        // Alone again: the whole limit (after a tick: the tick before
        // computed a half).
        let (out, even) = s.targets(&PeerDemand::default());
        assert_eq!(even, Some((SCALE, SCALE)));
        assert_eq!(out, [(id(1), share(200.0, 200.0, 2))]);
        let (out, even) = s.targets(&PeerDemand::default());
        assert_eq!(even, None);
        assert_eq!(out, [(id(1), (SCALE, SCALE))]);
        assert_eq!(s.instance().len(), 16);
        assert_ne!(Shares::new(TICK).instance(), s.instance());
    }
}
