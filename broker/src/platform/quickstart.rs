//! Quickstart (`platform: { org: quickstart }`): no registration and no credentials, QoS 0
//! only, no commands or device management, and at most one event per second from a
//! device (more are dropped).

use std::time::{Duration, Instant};

/// The organization name that turns quickstart on.
pub const ORG: &str = "quickstart";

/// Shortest time between two events of one device.
pub const EVENT_INTERVAL: Duration = Duration::from_secs(1);

/// Lets one event per [`EVENT_INTERVAL`] through.
#[derive(Debug, Default, Clone)]
pub struct EventRate {
    last_accepted: Option<Instant>,
    dropped: u64,
}

impl EventRate {
    /// Whether an event arriving `now` goes through (and counts as the last one if it does).
    pub fn accept(&mut self, now: Instant) -> bool {
        let due = self
            .last_accepted
            .is_none_or(|last| now.saturating_duration_since(last) >= EVENT_INTERVAL);
        if due {
            self.last_accepted = Some(now);
        } else {
            self.dropped += 1;
        }
        due
    }

    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_event_per_second() {
        let start = Instant::now();
        let mut rate = EventRate::default();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let accepted: Vec<bool> = [0, 10, 999, 1000, 1500, 2100, 2200, 5000]
            .into_iter()
            .map(|ms| rate.accept(at(ms)))
            .collect();
        assert_eq!(
            accepted,
            [true, false, false, true, false, true, false, true]
        );
        assert_eq!(rate.dropped(), 4);
    }
}
