//! When the queue database cannot be written: which faults are worth a retry, the drop
//! counts that wait in memory for the next successful transaction, and how the losses
//! are listed in the log.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use fieldbridge_sqlite::Fault;

use super::DeviceStats;

/// How long to wait before attempt `attempt + 1` of the same batch, if at all. Only a lock
/// passes within a second; a full or failing disk does not, and waiting for it would stall
/// the buses behind the writer.
pub(super) fn retry_delay(fault: Fault, attempt: usize, delays: &[Duration]) -> Option<Duration> {
    match fault {
        Fault::Busy => delays.get(attempt).copied(),
        Fault::DiskFull | Fault::Io | Fault::ReadOnly | Fault::Other => None,
    }
}

/// Drop counts of failed transactions, per device, kept until a transaction succeeds
/// (the database cannot take them while it cannot be written).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct PendingDrops {
    /// QoS 1 events of failed transactions: never stored, so lost.
    pub write_failed: BTreeMap<String, u64>,
    /// QoS 0 drop counts a failed transaction was to add.
    pub offline_qos0: BTreeMap<String, u64>,
}

impl PendingDrops {
    pub(super) fn is_empty(&self) -> bool {
        self.write_failed.is_empty() && self.offline_qos0.is_empty()
    }

    /// Adds what a failed transaction was carrying.
    pub(super) fn add(&mut self, lost: &BTreeMap<String, u64>, offline: &HashMap<String, u64>) {
        for (device, count) in lost {
            *self.write_failed.entry(device.clone()).or_default() += count;
        }
        for (device, count) in offline {
            *self.offline_qos0.entry(device.clone()).or_default() += count;
        }
    }

    /// Adds the pending counts to statistics read from the database (sorted by device,
    /// as they stay).
    pub(super) fn add_to(&self, stats: &mut Vec<DeviceStats>) {
        for (device, count) in &self.write_failed {
            slot(stats, device).dropped_write_failed += count;
        }
        for (device, count) in &self.offline_qos0 {
            slot(stats, device).dropped_offline_qos0 += count;
        }
    }
}

/// The statistics of `device`, added in order when missing.
fn slot<'a>(stats: &'a mut Vec<DeviceStats>, device: &str) -> &'a mut DeviceStats {
    let index = match stats.binary_search_by(|s| s.device_id.as_str().cmp(device)) {
        Ok(index) => index,
        Err(index) => {
            stats.insert(
                index,
                DeviceStats {
                    device_id: device.to_owned(),
                    ..DeviceStats::default()
                },
            );
            index
        }
    };
    &mut stats[index]
}

/// `a: 3, b: 1`, naming at most `limit` devices.
pub(super) fn per_device(counts: &BTreeMap<String, u64>, limit: usize) -> String {
    let mut parts: Vec<String> = counts
        .iter()
        .take(limit)
        .map(|(device, count)| format!("{device}: {count}"))
        .collect();
    if counts.len() > limit {
        parts.push(format!("{} more devices", counts.len() - limit));
    }
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(list: &[(&str, u64)]) -> BTreeMap<String, u64> {
        list.iter().map(|(d, c)| (d.to_string(), *c)).collect()
    }

    #[test]
    fn only_a_lock_is_waited_for() {
        let delays = [Duration::from_millis(200), Duration::from_secs(1)];
        assert_eq!(
            retry_delay(Fault::Busy, 0, &delays),
            Some(Duration::from_millis(200))
        );
        assert_eq!(
            retry_delay(Fault::Busy, 1, &delays),
            Some(Duration::from_secs(1))
        );
        assert_eq!(retry_delay(Fault::Busy, 2, &delays), None);
        for fault in [Fault::DiskFull, Fault::Io, Fault::ReadOnly, Fault::Other] {
            assert_eq!(retry_delay(fault, 0, &delays), None, "{fault}");
        }
    }

    #[test]
    fn pending_drops_add_up_and_join_the_persisted_statistics() {
        let mut pending = PendingDrops::default();
        assert!(pending.is_empty());
        pending.add(&counts(&[("b", 2), ("c", 1)]), &HashMap::new());
        pending.add(
            &counts(&[("b", 3)]),
            &HashMap::from([("a".to_owned(), 4u64)]),
        );
        assert!(!pending.is_empty());
        assert_eq!(pending.write_failed, counts(&[("b", 5), ("c", 1)]));
        assert_eq!(pending.offline_qos0, counts(&[("a", 4)]));

        let persisted = |device: &str, write_failed: u64, offline: u64| DeviceStats {
            device_id: device.to_owned(),
            depth: 7,
            dropped_write_failed: write_failed,
            dropped_offline_qos0: offline,
            ..DeviceStats::default()
        };
        let mut stats = vec![persisted("b", 10, 0), persisted("d", 1, 1)];
        pending.add_to(&mut stats);
        let ids: Vec<&str> = stats.iter().map(|s| s.device_id.as_str()).collect();
        assert_eq!(ids, ["a", "b", "c", "d"], "still sorted by device");
        let view: Vec<(u64, u64, u64)> = stats
            .iter()
            .map(|s| (s.depth, s.dropped_write_failed, s.dropped_offline_qos0))
            .collect();
        assert_eq!(view, [(0, 0, 4), (7, 15, 0), (0, 1, 0), (7, 1, 1)]);
    }

    #[test]
    fn per_device_names_a_bounded_number_of_devices() {
        assert_eq!(per_device(&counts(&[("a", 1), ("b", 2)]), 10), "a: 1, b: 2");
        assert_eq!(
            per_device(&counts(&[("a", 1), ("b", 2), ("c", 3)]), 2),
            "a: 1, b: 2, 1 more devices"
        );
    }
}
