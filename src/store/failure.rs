//! When the queue database cannot be written: what kind of fault it is, the drop counts
//! that wait in memory for the next successful transaction, and the log of the loss.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io;
use std::time::{Duration, Instant};

use fieldbridge_service::LogThrottle;

use super::DeviceStats;

/// SQLite's primary result codes that say something about the storage.
const SQLITE_BUSY: i32 = 5;
const SQLITE_LOCKED: i32 = 6;
const SQLITE_READONLY: i32 = 8;
const SQLITE_IOERR: i32 = 10;
const SQLITE_FULL: i32 = 13;
const SQLITE_CANTOPEN: i32 = 14;

/// Why a transaction failed, as far as retrying it is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Fault {
    /// SQLITE_FULL (or ENOSPC, EDQUOT): no room on the file system.
    DiskFull,
    /// SQLITE_IOERR and SQLITE_CANTOPEN: the storage failed a read, write or fsync.
    Io,
    /// SQLITE_READONLY: e.g. a file system remounted read-only after errors.
    ReadOnly,
    /// SQLITE_BUSY or SQLITE_LOCKED past the busy timeout: another connection's lock,
    /// which passes.
    Busy,
    /// Anything else (a lost connection, a bug).
    Other,
}

impl Fault {
    pub(super) fn of(error: &sqlx::Error) -> Fault {
        match error {
            sqlx::Error::Database(db) => {
                let code = db.code().and_then(|code| code.parse::<i32>().ok());
                match code.map(|code| code & 0xff) {
                    Some(SQLITE_FULL) => Fault::DiskFull,
                    Some(SQLITE_IOERR | SQLITE_CANTOPEN) => Fault::Io,
                    Some(SQLITE_READONLY) => Fault::ReadOnly,
                    Some(SQLITE_BUSY | SQLITE_LOCKED) => Fault::Busy,
                    _ => Fault::Other,
                }
            }
            sqlx::Error::Io(error) => match error.kind() {
                io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => Fault::DiskFull,
                io::ErrorKind::ReadOnlyFilesystem => Fault::ReadOnly,
                _ => Fault::Io,
            },
            _ => Fault::Other,
        }
    }

    /// How long to wait before attempt `attempt + 1` of the same batch, if at all. Only
    /// a lock passes within a second; a full or failing disk does not, and waiting for
    /// it would stall the buses behind the writer.
    pub(super) fn retry_delay(self, attempt: usize, delays: &[Duration]) -> Option<Duration> {
        match self {
            Fault::Busy => delays.get(attempt).copied(),
            Fault::DiskFull | Fault::Io | Fault::ReadOnly | Fault::Other => None,
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Fault::DiskFull => "the file system is full",
            Fault::Io => "I/O error",
            Fault::ReadOnly => "the file system is read-only",
            Fault::Busy => "the database stayed locked",
            Fault::Other => "write failed",
        })
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

/// What to log about the current outage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Report {
    /// QoS 1 events lost per device since the first failed write.
    pub lost: BTreeMap<String, u64>,
    /// Since the first failed write.
    pub lasting: Duration,
    /// Failed writes since the first one (including it).
    pub failures: u64,
    /// Failed writes not logged since the last line.
    pub repeats: u64,
}

impl Report {
    pub(super) fn total(&self) -> u64 {
        self.lost.values().sum()
    }
}

/// Writes failing since `since`.
struct Outage {
    since: Instant,
    lost: BTreeMap<String, u64>,
    failures: u64,
}

impl Outage {
    fn report(&self, now: Instant, repeats: u64) -> Report {
        Report {
            lost: self.lost.clone(),
            lasting: now.saturating_duration_since(self.since),
            failures: self.failures,
            repeats,
        }
    }
}

/// The log of failed writes: the first failure at once, then at most one line per
/// interval (or at once when the fault changes), and one line when writes succeed again.
pub(super) struct LossLog {
    throttle: LogThrottle,
    outage: Option<Outage>,
}

impl LossLog {
    pub(super) fn new(interval: Duration) -> Self {
        LossLog {
            throttle: LogThrottle::new(interval),
            outage: None,
        }
    }

    /// Records a failed write that lost `lost`; `Some` when a line is due.
    pub(super) fn failed(
        &mut self,
        fault: Fault,
        lost: &BTreeMap<String, u64>,
        now: Instant,
    ) -> Option<Report> {
        let outage = self.outage.get_or_insert_with(|| Outage {
            since: now,
            lost: BTreeMap::new(),
            failures: 0,
        });
        outage.failures += 1;
        for (device, count) in lost {
            *outage.lost.entry(device.clone()).or_default() += count;
        }
        let repeats = self.throttle.admit_changed(fault, now)?;
        Some(outage.report(now, repeats))
    }

    /// After a successful write: the whole outage, when one has ended.
    pub(super) fn recovered(&mut self, now: Instant) -> Option<Report> {
        let outage = self.outage.take()?;
        self.throttle.reset();
        Some(outage.report(now, 0))
    }
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
    fn io_errors_are_classified() {
        let io = |kind: io::ErrorKind| sqlx::Error::Io(io::Error::from(kind));
        assert_eq!(Fault::of(&io(io::ErrorKind::StorageFull)), Fault::DiskFull);
        assert_eq!(
            Fault::of(&io(io::ErrorKind::QuotaExceeded)),
            Fault::DiskFull
        );
        assert_eq!(
            Fault::of(&io(io::ErrorKind::ReadOnlyFilesystem)),
            Fault::ReadOnly
        );
        assert_eq!(Fault::of(&io(io::ErrorKind::Other)), Fault::Io);
        assert_eq!(Fault::of(&sqlx::Error::WorkerCrashed), Fault::Other);
    }

    /// Real SQLite errors, by their (extended) result codes.
    #[tokio::test]
    async fn sqlite_errors_are_classified_by_their_primary_code() {
        use sqlx::{Connection as _, Executor as _};
        let tmp = tempfile::tempdir().unwrap();
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(tmp.path().join("t.db"))
            .create_if_missing(true);
        let mut conn = sqlx::SqliteConnection::connect_with(&options)
            .await
            .unwrap();
        conn.execute("CREATE TABLE t (x BLOB)").await.unwrap();
        // A database capped at its current size: SQLITE_FULL, as from a full disk.
        conn.execute("PRAGMA max_page_count = 2").await.unwrap();
        let full = conn
            .execute("INSERT INTO t VALUES (zeroblob(100000))")
            .await
            .unwrap_err();
        assert_eq!(Fault::of(&full), Fault::DiskFull, "{full}");
        let syntax = conn.execute("INSERT INTO").await.unwrap_err();
        assert_eq!(Fault::of(&syntax), Fault::Other, "{syntax}");
        conn.close().await.unwrap();

        let read_only = sqlx::SqliteConnection::connect_with(&options.read_only(true))
            .await
            .unwrap()
            .execute("INSERT INTO t VALUES (1)")
            .await
            .unwrap_err();
        assert_eq!(Fault::of(&read_only), Fault::ReadOnly, "{read_only}");
    }

    #[test]
    fn only_a_lock_is_waited_for() {
        let delays = [Duration::from_millis(200), Duration::from_secs(1)];
        assert_eq!(
            Fault::Busy.retry_delay(0, &delays),
            Some(Duration::from_millis(200))
        );
        assert_eq!(
            Fault::Busy.retry_delay(1, &delays),
            Some(Duration::from_secs(1))
        );
        assert_eq!(Fault::Busy.retry_delay(2, &delays), None);
        for fault in [Fault::DiskFull, Fault::Io, Fault::ReadOnly, Fault::Other] {
            assert_eq!(fault.retry_delay(0, &delays), None, "{fault}");
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
    fn loss_log_reports_at_once_then_per_interval_and_the_recovery() {
        let mut log = LossLog::new(Duration::from_secs(30));
        let t0 = Instant::now();
        assert_eq!(log.recovered(t0), None, "no outage, nothing to report");

        let first = log
            .failed(Fault::DiskFull, &counts(&[("a", 2)]), t0)
            .unwrap();
        assert_eq!((first.total(), first.failures, first.repeats), (2, 1, 0));
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert!(log
            .failed(Fault::DiskFull, &counts(&[("a", 1), ("b", 4)]), at(5))
            .is_none());
        assert!(log
            .failed(Fault::DiskFull, &BTreeMap::new(), at(10))
            .is_none());
        let later = log
            .failed(Fault::DiskFull, &counts(&[("b", 1)]), at(31))
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
        let io = log.failed(Fault::Io, &BTreeMap::new(), at(32)).unwrap();
        assert_eq!(io.total(), 8);

        let recovery = log.recovered(at(40)).unwrap();
        assert_eq!(recovery.lost, counts(&[("a", 3), ("b", 5)]));
        assert_eq!(
            (recovery.lasting, recovery.failures),
            (Duration::from_secs(40), 5)
        );
        assert_eq!(log.recovered(at(41)), None);
        // The next outage is logged at once, counted afresh.
        let next = log
            .failed(Fault::DiskFull, &counts(&[("c", 1)]), at(42))
            .unwrap();
        assert_eq!(
            (next.lost, next.lasting),
            (counts(&[("c", 1)]), Duration::ZERO)
        );
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
