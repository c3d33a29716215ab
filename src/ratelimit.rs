//! Keeps a repeating error from flooding the log: a message is logged when it differs
//! from the previous one, or when `every` has passed, with the count of repeats.

use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct LogLimiter {
    every: Duration,
    last: Option<(String, Instant)>,
    suppressed: u64,
}

impl LogLimiter {
    pub fn new(every: Duration) -> Self {
        LogLimiter {
            every,
            last: None,
            suppressed: 0,
        }
    }

    /// Returns `Some(repeats suppressed since the last log)` when `message` should be
    /// logged now.
    pub fn admit(&mut self, message: &str, now: Instant) -> Option<u64> {
        let due = match &self.last {
            Some((last, at)) => last != message || now.duration_since(*at) >= self.every,
            None => true,
        };
        if due {
            self.last = Some((message.to_owned(), now));
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }

    /// Forget the last message (after a recovery), so the next failure is logged.
    pub fn clear(&mut self) {
        self.last = None;
        self.suppressed = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_are_suppressed_until_the_period_or_a_new_message() {
        let t0 = Instant::now();
        let mut l = LogLimiter::new(Duration::from_secs(60));
        assert_eq!(l.admit("timeout", t0), Some(0));
        assert_eq!(l.admit("timeout", t0 + Duration::from_secs(1)), None);
        assert_eq!(l.admit("timeout", t0 + Duration::from_secs(2)), None);
        assert_eq!(l.admit("timeout", t0 + Duration::from_secs(61)), Some(2));
        assert_eq!(l.admit("crc error", t0 + Duration::from_secs(62)), Some(0));
        l.clear();
        assert_eq!(l.admit("crc error", t0 + Duration::from_secs(63)), Some(0));
    }
}
