//! Capped exponential backoff with jitter, for reconnects and for polling devices
//! that stopped answering.

use std::time::Duration;

use rand::Rng;

/// Delays that double from `initial` up to `max`, each spread at random over half to one
/// and a half times its value: many clients that lost a link together do not retry in
/// lockstep, not even once they all reached `max` (so a delay may reach 1.5 x `max`).
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max: max.max(initial),
            current: initial,
        }
    }

    /// The delay to wait now; the following one is twice as long (up to the cap).
    pub fn next_delay(&mut self) -> Duration {
        let base = self.current;
        self.current = (self.current * 2).min(self.max);
        base.mul_f64(rand::thread_rng().gen_range(0.5..1.5))
    }

    /// Back to the initial delay, after a success.
    pub fn reset(&mut self) {
        self.current = self.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn within(delay: Duration, low_ms: u64, high_ms: u64) -> bool {
        delay >= Duration::from_millis(low_ms) && delay < Duration::from_millis(high_ms)
    }

    #[test]
    fn doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        assert!(within(b.next_delay(), 50, 150));
        assert!(within(b.next_delay(), 100, 300));
        for _ in 0..10 {
            assert!(b.next_delay() < Duration::from_millis(1500));
        }
        b.reset();
        assert!(within(b.next_delay(), 50, 150));
    }

    /// Clients that reached the cap together spread their attempts over the whole
    /// second-wide range instead of retrying at the same instant.
    #[test]
    fn delays_at_the_cap_are_spread() {
        let mut b = Backoff::new(Duration::from_secs(2), Duration::from_secs(2));
        let delays: Vec<Duration> = (0..1000).map(|_| b.next_delay()).collect();
        assert!(delays.iter().all(|d| within(*d, 1000, 3000)));
        let early = delays
            .iter()
            .filter(|d| **d < Duration::from_secs(2))
            .count();
        // 1000 draws of a fair split: far outside 350..650 only if the spread is broken.
        assert!((350..650).contains(&early), "{early} of 1000 below the cap");
    }
}
