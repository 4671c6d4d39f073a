//! Measurements a worker keeps about itself.

use std::time::Duration;

/// Smallest resolved duration, µs; shorter ones fall in the first bucket.
const FLOOR_US: f64 = 10.0;
/// Bucket growth: every bucket is 4 % wider than the one before, so quantiles are within 4 %.
const GROWTH: f64 = 1.04;
/// Buckets up to about an hour.
const BUCKETS: usize = 500;

/// A log-scale histogram of durations with bounded memory (500 counters), for latency quantiles.
#[derive(Debug, Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max_us: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; BUCKETS],
            total: 0,
            max_us: 0,
        }
    }
}

impl Histogram {
    fn bucket(us: u64) -> usize {
        if (us as f64) <= FLOOR_US {
            return 0;
        }
        let i = ((us as f64 / FLOOR_US).ln() / GROWTH.ln()).ceil() as usize;
        i.min(BUCKETS - 1)
    }

    /// Counts one duration.
    pub fn record(&mut self, d: Duration) {
        let us = d.as_micros().min(u64::MAX as u128) as u64;
        self.counts[Self::bucket(us)] += 1;
        self.total += 1;
        self.max_us = self.max_us.max(us);
    }

    /// Adds another histogram's counts.
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.max_us = self.max_us.max(other.max_us);
    }

    /// How many durations were counted.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// The `q` quantile (0–1): the upper bound of the bucket holding it (never above the maximum seen).
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        if self.total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let upper = FLOOR_US * GROWTH.powi(i as i32);
                return Some(Duration::from_micros((upper as u64).min(self.max_us)));
            }
        }
        Some(self.max())
    }

    /// The longest duration counted.
    pub fn max(&self) -> Duration {
        Duration::from_micros(self.max_us)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Quantiles of a known distribution come out within the bucket resolution.
    #[test]
    fn quantiles_within_resolution() {
        let mut h = Histogram::default();
        assert_eq!(h.quantile(0.5), None);
        for ms in 1..=1000u64 {
            h.record(Duration::from_millis(ms));
        }
        let p50 = h.quantile(0.5).unwrap().as_secs_f64() * 1000.0;
        let p99 = h.quantile(0.99).unwrap().as_secs_f64() * 1000.0;
        assert!((500.0..=520.0).contains(&p50), "{p50}");
        assert!((990.0..=1000.0).contains(&p99), "{p99}");
        assert_eq!(h.max(), Duration::from_millis(1000));
        assert_eq!(h.count(), 1000);
    }
}
