//! The one retry policy: exponential backoff with full jitter, bounded by attempts and by a total time budget.
//!
//! Every loop in weir that retries — commits, RAW writes, checkpoint reads, SQS receives and deletes, Kinesis
//! reads and writes, the plugin store, preparing the sink, the admin endpoint's accept — draws its waits from a
//! [`Backoff`]. Full jitter (a wait drawn uniformly from zero to the exponential ceiling, as in the AWS
//! Architecture Blog's "Exponential Backoff and Jitter") spreads workers that failed together — on a
//! serialization conflict, on an outage — so that they do not retry in lockstep. Each attempt is bounded by the
//! client's own timeout (`sink.call_timeout_secs`, `[aws] attempt_timeout_secs`); the budget bounds them all.

use std::future::Future;
use std::time::{Duration, Instant};

use crate::config::RetryConfig;

/// Waits between attempts of one operation.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    ceiling: Duration,
    /// Failed attempts so far.
    failures: u32,
    max_attempts: Option<u32>,
    budget: Option<Duration>,
    started: Instant,
}

impl Backoff {
    /// A backoff starting at `initial`, doubling up to `max`, with no limit on attempts or time (for loops
    /// that retry until shut down, such as a source's poll loop).
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max: max.max(initial),
            ceiling: initial,
            failures: 0,
            max_attempts: None,
            budget: None,
            started: Instant::now(),
        }
    }

    /// The policy of `[retry]`: attempts and total time budget included.
    pub fn from_config(policy: &RetryConfig) -> Self {
        let b = Backoff::new(
            Duration::from_millis(policy.initial_backoff_ms),
            Duration::from_millis(policy.max_backoff_ms),
        )
        .with_attempts(policy.max_attempts);
        match policy.max_elapsed_secs {
            0 => b,
            secs => b.with_budget(Duration::from_secs(secs)),
        }
    }

    /// At most `n` attempts in all (the first one included).
    pub fn with_attempts(mut self, n: u32) -> Self {
        self.max_attempts = Some(n.max(1));
        self
    }

    /// No attempt starts after `budget` has passed since the first one.
    pub fn with_budget(mut self, budget: Duration) -> Self {
        self.budget = Some(budget);
        self
    }

    /// Records a failure and returns how long to wait before the next attempt, or `None` when the attempts or
    /// the time budget are spent (the wait would end past the budget).
    pub fn next_delay(&mut self) -> Option<Duration> {
        self.failures += 1;
        if self.max_attempts.is_some_and(|n| self.failures >= n) {
            return None;
        }
        let wait = full_jitter(self.ceiling);
        if self
            .budget
            .is_some_and(|b| self.started.elapsed() + wait > b)
        {
            return None;
        }
        self.ceiling = (self.ceiling * 2).min(self.max);
        Some(wait)
    }

    /// The ceiling of the next wait (before jitter), for messages.
    pub fn ceiling(&self) -> Duration {
        self.ceiling
    }

    /// Failures recorded since the start or the last [`reset`](Backoff::reset).
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// After a success: the next failure waits `initial` again and the budget starts over.
    pub fn reset(&mut self) {
        self.ceiling = self.initial;
        self.failures = 0;
        self.started = Instant::now();
    }
}

/// A wait drawn uniformly from `[0, ceiling]`.
pub fn full_jitter(ceiling: Duration) -> Duration {
    let spread = ceiling.as_micros().max(1) as u64;
    Duration::from_micros(random_u64() % (spread + 1))
}

/// A per-thread xorshift stream seeded from the process's random hasher keys and the clock: jitter needs no
/// cryptographic randomness, only streams that differ between workers.
fn random_u64() -> u64 {
    use std::cell::Cell;
    use std::hash::{BuildHasher, Hasher};
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u128(std::time::SystemTime::UNIX_EPOCH.elapsed().unwrap_or_default().as_nanos());
            h.finish() | 1
        });
    }
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.set(x);
        x
    })
}

/// Errors that say whether a retry may help.
pub trait Retryable: std::fmt::Display {
    /// Whether to retry.
    fn is_transient(&self) -> bool;
}

/// Runs `op` until it succeeds, fails permanently, or runs out of attempts or time under `policy`.
/// Returns the number of attempts with the last error.
pub async fn retrying<T, E: Retryable, F, Fut>(
    policy: &RetryConfig,
    what: &'static str,
    mut op: F,
) -> Result<T, (u32, E)>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut backoff = Backoff::from_config(policy);
    let mut attempt = 1;
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if e.is_transient() => match backoff.next_delay() {
                Some(wait) => {
                    tracing::warn!(attempt, backoff_ms = wait.as_millis() as u64, error = %e, "{what} failed; retrying");
                    crate::metrics::global().inc("weir_retries_total", &[("stage", what)], 1);
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                None => return Err((attempt, e)),
            },
            Err(e) => return Err((attempt, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Waits stay under a ceiling that doubles up to the maximum; attempts are counted with the first one.
    #[test]
    fn exponential_ceiling_with_full_jitter() {
        let mut b =
            Backoff::new(Duration::from_millis(100), Duration::from_millis(800)).with_attempts(6);
        let mut ceilings = Vec::new();
        for _ in 0..5 {
            let c = b.ceiling();
            let wait = b.next_delay().expect("attempts left");
            assert!(wait <= c, "{wait:?} above {c:?}");
            ceilings.push(c.as_millis());
        }
        assert_eq!(ceilings, [100, 200, 400, 800, 800]);
        assert_eq!(b.next_delay(), None, "the sixth failure ends the retries");
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_millis(100));
        assert_eq!(b.failures(), 0);
    }

    /// Jittered waits spread over the whole range instead of clustering at the ceiling.
    #[test]
    fn jitter_spreads() {
        let waits: Vec<Duration> = (0..200)
            .map(|_| full_jitter(Duration::from_millis(100)))
            .collect();
        assert!(waits.iter().any(|w| *w < Duration::from_millis(25)));
        assert!(waits.iter().any(|w| *w > Duration::from_millis(75)));
    }

    /// The time budget ends the retries even with attempts left.
    #[test]
    fn budget_ends_retries() {
        let mut b = Backoff::new(Duration::from_secs(10), Duration::from_secs(10))
            .with_budget(Duration::ZERO);
        // Any non-zero wait ends past a zero budget; a zero wait may still fit, so draw until one does not.
        assert!((0..100).any(|_| b.next_delay().is_none()));
    }

    #[derive(Debug)]
    struct Flaky(bool);
    impl std::fmt::Display for Flaky {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "flaky")
        }
    }
    impl Retryable for Flaky {
        fn is_transient(&self) -> bool {
            self.0
        }
    }

    /// Transient errors are retried up to `max_attempts`; a permanent one stops at once.
    #[tokio::test]
    async fn retrying_counts_attempts() {
        let policy = RetryConfig {
            max_attempts: 4,
            initial_backoff_ms: 1,
            max_backoff_ms: 2,
            ..RetryConfig::default()
        };
        let mut calls = 0;
        let r: Result<(), _> = retrying(&policy, "op", || {
            calls += 1;
            async { Err(Flaky(true)) }
        })
        .await;
        assert_eq!(r.unwrap_err().0, 4);
        assert_eq!(calls, 4);
        let mut calls = 0;
        let r: Result<(), _> = retrying(&policy, "op", || {
            calls += 1;
            async { Err(Flaky(false)) }
        })
        .await;
        assert_eq!(r.unwrap_err().0, 1);
        assert_eq!(calls, 1);
    }
}
