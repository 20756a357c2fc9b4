//! A fixed-bucket histogram of durations in relaxed atomics: an observation
//! is two adds and no lock (`prometheus-client`'s own histogram takes a
//! mutex per observation).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// The buckets of the authorize latency, in seconds: 1 µs to 100 ms.
pub const AUTHORIZE_BOUNDS: &[f64] = &[
    0.000_001,
    0.000_002_5,
    0.000_005,
    0.000_01,
    0.000_025,
    0.000_05,
    0.000_1,
    0.000_25,
    0.000_5,
    0.001,
    0.002_5,
    0.01,
    0.1,
];

/// The buckets of store writes, in seconds: 100 µs to 10 s.
pub const STORE_BOUNDS: &[f64] = &[
    0.000_1, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// Counts of durations by bucket, and their sum.
#[derive(Debug)]
pub struct Histogram {
    /// Upper bounds in seconds, ascending; one more bucket counts the rest.
    bounds: &'static [f64],
    /// Upper bounds in nanoseconds, to compare without floats.
    bounds_ns: Box<[u64]>,
    /// Per bucket (not cumulative); the last is `+Inf`.
    counts: Box<[AtomicU64]>,
    sum_ns: AtomicU64,
}

impl Histogram {
    /// A histogram over `bounds` (seconds, ascending).
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            bounds_ns: bounds.iter().map(|s| (s * 1e9).round() as u64).collect(),
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_ns: AtomicU64::new(0),
        }
    }

    /// Counts one duration.
    #[inline]
    pub fn observe(&self, took: Duration) {
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let bucket = self.bounds_ns.partition_point(|&bound| bound < ns);
        if let Some(count) = self.counts.get(bucket) {
            count.fetch_add(1, Relaxed);
        }
        self.sum_ns.fetch_add(ns, Relaxed);
    }

    /// The sum in seconds, the count, and the per-bucket counts with their
    /// upper bounds (the last `+Inf`), as `prometheus-client` encodes them.
    pub fn snapshot(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let buckets: Vec<(f64, u64)> = self
            .bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(self.counts.iter().map(|c| c.load(Relaxed)))
            .collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = self.sum_ns.load(Relaxed) as f64 / 1e9;
        (sum, count, buckets)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_the_first_bucket_that_holds_them() {
        let h = Histogram::new(&[0.000_001, 0.001]);
        h.observe(Duration::from_nanos(1_000)); // on the bound: le 1 µs
        h.observe(Duration::from_nanos(1_001));
        h.observe(Duration::from_millis(1));
        h.observe(Duration::from_secs(5));
        let (sum, count, buckets) = h.snapshot();
        assert_eq!(count, 4);
        assert_eq!(
            buckets,
            vec![(0.000_001, 1), (0.001, 2), (f64::INFINITY, 1)]
        );
        assert!((sum - 5.001_002_001).abs() < 1e-9, "{sum}");
    }
}
