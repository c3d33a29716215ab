//! Keeps a repeating message from flooding the log: at most one line per period, and the
//! line that is let through says how many were held back. Shared by every task that logs
//! on a fault's path (a dead bus, a full queue, a refused connection), so it is `Sync` and
//! takes `&self`.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct LogThrottle {
    every: Duration,
    origin: Instant,
    /// When the last line was let through, in nanoseconds since `origin` plus one (0: never).
    last: AtomicU64,
    /// Hash of what the last line let through was about (see [`LogThrottle::admit_changed`]).
    last_topic: AtomicU64,
    suppressed: AtomicU64,
}

impl LogThrottle {
    pub fn new(every: Duration) -> Self {
        LogThrottle {
            every,
            origin: Instant::now(),
            last: AtomicU64::new(0),
            last_topic: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(lines held back since the last one)` when a line may be logged now.
    pub fn admit(&self) -> Option<u64> {
        self.admit_at(Instant::now())
    }

    /// Like [`LogThrottle::admit`], at a given time.
    pub fn admit_at(&self, now: Instant) -> Option<u64> {
        let now = self.stamp(now);
        let last = self.last.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= self.every_nanos();
        if due
            && self
                .last
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::Relaxed));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }

    /// Like [`LogThrottle::admit_at`], but a line about something other than the last one
    /// let through (another error, say) is let through at once.
    pub fn admit_changed(&self, topic: impl Hash, now: Instant) -> Option<u64> {
        let mut hasher = DefaultHasher::new();
        topic.hash(&mut hasher);
        let topic = hasher.finish();
        if self.last_topic.swap(topic, Ordering::Relaxed) != topic {
            self.last.store(0, Ordering::Relaxed);
        }
        self.admit_at(now)
    }

    /// When the next line may be let through.
    pub fn next_due(&self) -> Instant {
        match self.last.load(Ordering::Relaxed) {
            0 => Instant::now(),
            last => self.origin + Duration::from_nanos(last - 1) + self.every,
        }
    }

    /// Forgets the last line (the fault cleared), so the next one is logged at once.
    pub fn reset(&self) {
        self.last.store(0, Ordering::Relaxed);
        self.last_topic.store(0, Ordering::Relaxed);
        self.suppressed.store(0, Ordering::Relaxed);
    }

    fn stamp(&self, now: Instant) -> u64 {
        let nanos = now.saturating_duration_since(self.origin).as_nanos();
        u64::try_from(nanos).unwrap_or(u64::MAX - 1) + 1
    }

    fn every_nanos(&self) -> u64 {
        u64::try_from(self.every.as_nanos()).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn one_line_per_period_with_the_count_held_back() {
        let throttle = LogThrottle::new(MINUTE);
        let t0 = throttle.origin;
        assert_eq!(throttle.admit_at(t0), Some(0));
        assert_eq!(throttle.admit_at(t0 + Duration::from_secs(1)), None);
        assert_eq!(throttle.admit_at(t0 + Duration::from_secs(59)), None);
        assert_eq!(throttle.next_due(), t0 + MINUTE);
        assert_eq!(throttle.admit_at(t0 + MINUTE), Some(2));
        assert_eq!(throttle.admit_at(t0 + MINUTE), None);
    }

    #[test]
    fn another_topic_is_logged_at_once_and_reset_forgets() {
        let throttle = LogThrottle::new(MINUTE);
        let t0 = throttle.origin;
        assert_eq!(throttle.admit_changed("timeout", t0), Some(0));
        assert_eq!(
            throttle.admit_changed("timeout", t0 + Duration::from_secs(1)),
            None
        );
        assert_eq!(
            throttle.admit_changed("timeout", t0 + Duration::from_secs(2)),
            None
        );
        assert_eq!(
            throttle.admit_changed("timeout", t0 + Duration::from_secs(61)),
            Some(2)
        );
        assert_eq!(
            throttle.admit_changed("crc error", t0 + Duration::from_secs(62)),
            Some(0)
        );
        throttle.reset();
        assert_eq!(
            throttle.admit_changed("crc error", t0 + Duration::from_secs(63)),
            Some(0)
        );
        assert!(throttle.next_due() > t0 + Duration::from_secs(63));
    }

    #[test]
    fn threads_share_one_period() {
        let throttle = std::sync::Arc::new(LogThrottle::new(MINUTE));
        let admitted: usize = (0..4)
            .map(|_| {
                let throttle = throttle.clone();
                std::thread::spawn(move || (0..1000).filter(|_| throttle.admit().is_some()).count())
            })
            .map(|thread| thread.join().unwrap())
            .sum();
        assert_eq!(admitted, 1);
        assert_eq!(throttle.suppressed.load(Ordering::Relaxed), 3999);
    }
}
