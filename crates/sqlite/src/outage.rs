//! The log of a database that cannot be written: the first failure at once, then at most
//! one line per interval (or at once when the fault changes), and one line when writes
//! succeed again, saying how long the outage lasted. What a failed write lost is counted
//! the way the caller reports it (`L`: a total, counts per device).

use std::time::{Duration, Instant};

use fieldbridge_service::LogThrottle;

use crate::Fault;

/// What to log about the current outage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report<L> {
    /// What the failed writes lost since the first one.
    pub lost: L,
    /// Since the first failed write.
    pub lasting: Duration,
    /// Failed writes since the first one (including it).
    pub failures: u64,
    /// Failed writes not logged since the last line.
    pub repeats: u64,
}

/// Writes failing since `since`.
#[derive(Debug)]
struct Outage<L> {
    since: Instant,
    failures: u64,
    lost: L,
}

impl<L: Clone> Outage<L> {
    fn report(&self, now: Instant, repeats: u64) -> Report<L> {
        Report {
            lost: self.lost.clone(),
            lasting: now.saturating_duration_since(self.since),
            failures: self.failures,
            repeats,
        }
    }
}

/// When to log the failures of a database's writes and their end (see the module).
#[derive(Debug)]
pub struct OutageLog<L> {
    throttle: LogThrottle,
    outage: Option<Outage<L>>,
}

impl<L: Default + Clone> OutageLog<L> {
    pub fn new(interval: Duration) -> Self {
        OutageLog {
            throttle: LogThrottle::new(interval),
            outage: None,
        }
    }

    /// Records a failed write, `add_lost` adding what it lost to the outage's count;
    /// `Some` when a line is due.
    pub fn failed(
        &mut self,
        fault: Fault,
        now: Instant,
        add_lost: impl FnOnce(&mut L),
    ) -> Option<Report<L>> {
        let outage = self.outage.get_or_insert_with(|| Outage {
            since: now,
            failures: 0,
            lost: L::default(),
        });
        outage.failures += 1;
        add_lost(&mut outage.lost);
        let repeats = self.throttle.admit_changed(fault, now)?;
        Some(outage.report(now, repeats))
    }

    /// After a write that succeeded: the whole outage, when one has ended.
    pub fn recovered(&mut self, now: Instant) -> Option<Report<L>> {
        let outage = self.outage.take()?;
        self.throttle.reset();
        Some(outage.report(now, 0))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    type PerDevice = BTreeMap<String, u64>;

    fn counts(list: &[(&str, u64)]) -> PerDevice {
        list.iter().map(|(d, c)| (d.to_string(), *c)).collect()
    }

    fn add(lost: PerDevice) -> impl FnOnce(&mut PerDevice) {
        move |outage: &mut PerDevice| {
            for (device, count) in lost {
                *outage.entry(device).or_default() += count;
            }
        }
    }

    fn total(report: &Report<PerDevice>) -> u64 {
        report.lost.values().sum()
    }

    #[test]
    fn losses_per_device_are_reported_at_once_then_per_interval_and_at_the_recovery() {
        let mut log = OutageLog::new(Duration::from_secs(30));
        let t0 = Instant::now();
        assert_eq!(log.recovered(t0), None, "no outage, nothing to report");

        let first = log
            .failed(Fault::DiskFull, t0, add(counts(&[("a", 2)])))
            .unwrap();
        assert_eq!((total(&first), first.failures, first.repeats), (2, 1, 0));
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert!(log
            .failed(Fault::DiskFull, at(5), add(counts(&[("a", 1), ("b", 4)])))
            .is_none());
        assert!(log
            .failed(Fault::DiskFull, at(10), add(BTreeMap::new()))
            .is_none());
        let later = log
            .failed(Fault::DiskFull, at(31), add(counts(&[("b", 1)])))
            .unwrap();
        assert_eq!(
            later.lost,
            counts(&[("a", 3), ("b", 5)]),
            "since the outage began"
        );
        assert_eq!(
            (later.lasting, later.failures, later.repeats),
            (Duration::from_secs(31), 4, 2)
        );
        // Another fault is worth a line at once.
        let io = log.failed(Fault::Io, at(32), add(BTreeMap::new())).unwrap();
        assert_eq!(total(&io), 8);

        let recovery = log.recovered(at(40)).unwrap();
        assert_eq!(recovery.lost, counts(&[("a", 3), ("b", 5)]));
        assert_eq!(
            (recovery.lasting, recovery.failures),
            (Duration::from_secs(40), 5)
        );
        assert_eq!(log.recovered(at(41)), None);
        // The next outage is logged at once, counted afresh.
        let next = log
            .failed(Fault::DiskFull, at(42), add(counts(&[("c", 1)])))
            .unwrap();
        assert_eq!(
            (next.lost, next.lasting),
            (counts(&[("c", 1)]), Duration::ZERO)
        );
    }

    #[test]
    fn total_losses_are_reported_at_once_then_per_interval_and_at_the_recovery() {
        let mut log = OutageLog::new(Duration::from_secs(30));
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let add = |changes: u64| move |lost: &mut u64| *lost += changes;
        assert_eq!(log.recovered(t0), None, "no outage, nothing to report");
        let first = log
            .failed(Fault::DiskFull, at(1), add(5))
            .expect("the first failure");
        assert_eq!(
            (first.failures, first.lost, first.repeats, first.lasting),
            (1, 5, 0, Duration::ZERO)
        );
        assert_eq!(log.failed(Fault::DiskFull, at(5), add(2)), None);
        assert_eq!(log.failed(Fault::DiskFull, at(20), add(1)), None);
        let later = log
            .failed(Fault::DiskFull, at(31), add(1))
            .expect("after the interval");
        assert_eq!(
            (later.failures, later.lost, later.repeats, later.lasting),
            (4, 9, 2, Duration::from_secs(30))
        );
        let other = log
            .failed(Fault::Io, at(32), add(1))
            .expect("another fault at once");
        assert_eq!((other.failures, other.repeats), (5, 0));

        let recovery = log.recovered(at(41)).expect("the outage ended");
        assert_eq!(
            (recovery.failures, recovery.lost, recovery.lasting),
            (5, 10, Duration::from_secs(40))
        );
        assert_eq!(log.recovered(at(42)), None);
        let next = log
            .failed(Fault::DiskFull, at(43), add(3))
            .expect("a new outage at once");
        assert_eq!(
            (next.failures, next.lost, next.lasting),
            (1, 3, Duration::ZERO)
        );
    }
}
