//! Politeness toward peers: a per-connection rate limit (governor), retries with
//! exponential backoff and jitter (backon), and `Retry-After`.
//!
//! Both run on tokio's clock, so tests can pause time and see the waits.

use std::num::NonZeroU32;
use std::time::{Duration, SystemTime};

use backon::ExponentialBuilder;
use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

/// governor's view of tokio's clock: time since the limiter was made.
#[derive(Clone)]
struct TokioClock {
    start: tokio::time::Instant,
}

impl Clock for TokioClock {
    type Instant = Duration;

    fn now(&self) -> Duration {
        self.start.elapsed()
    }
}

/// At most `requests` per `per`, bursts of up to `requests` included.
pub(crate) struct RateLimit {
    clock: TokioClock,
    limiter: RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<Duration>>,
}

impl RateLimit {
    pub fn new(requests: NonZeroU32, per: Duration) -> Self {
        let clock = TokioClock { start: tokio::time::Instant::now() };
        let period = (per / requests.get()).max(Duration::from_nanos(1));
        let quota = Quota::with_period(period).expect("period is not zero").allow_burst(requests);
        Self { limiter: RateLimiter::direct_with_clock(quota, clock.clone()), clock }
    }

    /// Waits (on tokio's clock) until one more request is allowed, and takes it.
    pub async fn until_ready(&self) {
        // governor's own `until_ready` sleeps on a timer tokio cannot pause.
        while let Err(not_until) = self.limiter.check() {
            tokio::time::sleep(not_until.wait_time_from(self.clock.now())).await;
        }
    }
}

/// When and how often a transient failure is tried again.
#[derive(Debug, Clone)]
pub(crate) struct RetryPolicy {
    pub max_attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
}

impl RetryPolicy {
    pub fn new(max_attempts: u32, base_delay: Duration, max_delay: Duration) -> Self {
        Self { max_attempts, base_delay, max_delay }
    }

    /// Delays of `base_delay`, doubling up to `max_delay`, each plus up to 100 % jitter, for
    /// `attempts - 1` retries.
    pub fn backoff(&self, attempts: u32) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(self.base_delay)
            .with_max_delay(self.max_delay)
            .with_max_times(attempts.saturating_sub(1) as usize)
            .with_jitter()
    }

    /// The wait before the next attempt: the peer's `Retry-After` when it gave one (if it is
    /// not longer than `max_delay`; a longer one ends the call), else the backoff's `next`
    /// (`None` once attempts are used up).
    pub fn next_delay(&self, retry_after: Option<Duration>, next: Option<Duration>) -> Option<Duration> {
        let next = next?;
        match retry_after {
            Some(wait) if wait > self.max_delay => None,
            Some(wait) => Some(wait),
            None => Some(next),
        }
    }
}

/// `Retry-After` as delta-seconds or an HTTP-date (RFC 9110 section 10.2.3); a date in the
/// past means now.
pub(crate) fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_in_both_forms() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        assert_eq!(parse_retry_after("120", now), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:50:07 GMT", now), Some(Duration::from_secs(30)));
        assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-3", now), None);
    }

    #[test]
    fn retry_after_wins_unless_too_long() {
        let p = RetryPolicy::new(3, Duration::from_millis(100), Duration::from_secs(10));
        let backoff = Some(Duration::from_millis(150));
        assert_eq!(p.next_delay(None, backoff), backoff);
        assert_eq!(p.next_delay(Some(Duration::from_secs(2)), backoff), Some(Duration::from_secs(2)));
        assert_eq!(p.next_delay(Some(Duration::from_secs(60)), backoff), None);
        assert_eq!(p.next_delay(Some(Duration::from_secs(2)), None), None);
    }

    #[test]
    fn backoff_doubles_with_jitter_and_stops() {
        use backon::BackoffBuilder;
        let p = RetryPolicy::new(4, Duration::from_millis(100), Duration::from_secs(10));
        let delays: Vec<Duration> = p.backoff(4).build().collect();
        assert_eq!(delays.len(), 3);
        for (i, d) in delays.iter().enumerate() {
            let base = Duration::from_millis(100 * (1 << i));
            assert!(*d >= base && *d <= base * 2, "{i}: {d:?}");
        }
        assert_eq!(p.backoff(1).build().count(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn rate_limit_spaces_requests_after_the_burst() {
        let limit = RateLimit::new(NonZeroU32::new(2).unwrap(), Duration::from_secs(1));
        let start = tokio::time::Instant::now();
        let mut at = Vec::new();
        for _ in 0..5 {
            limit.until_ready().await;
            at.push(start.elapsed());
        }
        let ms: Vec<u128> = at.iter().map(|d| d.as_millis()).collect();
        assert_eq!(ms, [0, 0, 500, 1000, 1500]);
    }
}
