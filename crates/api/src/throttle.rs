//! The account's request rate limit: a token bucket, as AWS APIs throttle.
//! An App Mesh request past it is answered `TooManyRequestsException`, which
//! the SDKs and the CLI treat as throttling: they back off and retry.

use std::sync::Mutex;
use std::time::Instant;

use crate::config::RateLimit;

/// A token bucket refilled at `per_second`, holding at most `burst` tokens.
#[derive(Debug)]
pub struct Throttle {
    limit: RateLimit,
    bucket: Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Throttle {
    /// A full bucket.
    pub fn new(limit: RateLimit) -> Self {
        Throttle {
            limit,
            bucket: Mutex::new(Bucket {
                tokens: f64::from(limit.burst),
                at: Instant::now(),
            }),
        }
    }

    /// Takes a token for a request arriving now; `false`: throttle it.
    pub fn admit(&self) -> bool {
        self.admit_at(Instant::now())
    }

    fn admit_at(&self, now: Instant) -> bool {
        let mut b = self
            .bucket
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * self.limit.per_second).min(f64::from(self.limit.burst));
        b.at = b.at.max(now);
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_burst_is_admitted_then_requests_pass_at_the_sustained_rate() {
        let t = Throttle::new(RateLimit {
            per_second: 10.0,
            burst: 3,
        });
        let start = t.bucket.lock().unwrap().at;
        let admitted = (0..5).filter(|_| t.admit_at(start)).count();
        assert_eq!(admitted, 3, "the burst, then nothing");
        // 10/s: one token every 100 ms.
        assert!(!t.admit_at(start + Duration::from_millis(50)));
        assert!(t.admit_at(start + Duration::from_millis(110)));
        assert!(!t.admit_at(start + Duration::from_millis(120)));
        // A long quiet spell refills to the burst, not beyond.
        let later = start + Duration::from_secs(60);
        assert_eq!((0..10).filter(|_| t.admit_at(later)).count(), 3);
    }
}
