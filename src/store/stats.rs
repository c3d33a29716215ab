//! Queue statistics per device, for the running gateway and for `fieldbridge queue`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::{Connection, SqliteConnection};

use super::acknowledged::unacknowledged;
use super::{open, StoreError};

/// What the queue holds and has dropped for one device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceStats {
    pub device_id: String,
    /// Queued (unacknowledged) QoS 1 events.
    pub depth: u64,
    /// Their payload bytes.
    pub bytes: u64,
    /// When the oldest queued event was enqueued.
    pub oldest_enqueued_at: Option<SystemTime>,
    /// QoS 1 events discarded by the `on_full` policy, since the database was created.
    pub dropped_queue_full: u64,
    /// QoS 0 events discarded while the device's session was offline.
    pub dropped_offline_qos0: u64,
    /// QoS 1 events lost because the database could not store them (a full or failing
    /// disk). [`crate::store::Store::stats`] includes those not yet persisted.
    pub dropped_write_failed: u64,
    /// QoS 1 events the broker refused for good, moved to the dead letters.
    pub dead_lettered: u64,
}

impl DeviceStats {
    /// Age of the oldest queued event at `now` (`None` when nothing is queued).
    pub fn oldest_age(&self, now: SystemTime) -> Option<Duration> {
        self.oldest_enqueued_at
            .map(|at| now.duration_since(at).unwrap_or(Duration::ZERO))
    }
}

/// Reads the statistics of the queue in `data_dir` through a read-only connection: safe
/// to call from another process while the gateway runs (WAL readers never block the
/// writer). Devices appear if they have queued events or recorded drops, sorted by id.
/// A database the starting gateway has created but not yet given its tables holds
/// nothing yet.
pub async fn read_stats(data_dir: &Path) -> Result<Vec<DeviceStats>, StoreError> {
    let mut conn = open::open_read_only(data_dir).await?;
    let path = data_dir.join(super::DB_FILE);
    let result = match has_tables(&mut conn).await {
        Ok(true) => query(&mut conn).await,
        Ok(false) => Ok(Vec::new()),
        Err(error) => Err(error),
    }
    .map_err(|error| StoreError::Database { path, error });
    let _ = conn.close().await;
    result
}

async fn has_tables(conn: &mut SqliteConnection) -> Result<bool, sqlx::Error> {
    let (tables,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name IN ('queue', 'drops')",
    )
    .fetch_one(&mut *conn)
    .await?;
    Ok(tables == 2)
}

pub(super) async fn query(conn: &mut SqliteConnection) -> Result<Vec<DeviceStats>, sqlx::Error> {
    // A queue that no gateway of this version has opened yet has no acknowledged rows.
    let marks: bool = sqlx::query_scalar(
        "SELECT COUNT(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'acknowledged'",
    )
    .fetch_one(&mut *conn)
    .await?;
    let queued_rows = if marks { unacknowledged!() } else { "1" };
    // SQLite takes `enqueued_at` from the row that holds MIN(id): the oldest event.
    let queued: Vec<(String, i64, i64, i64, i64)> = sqlx::query_as(&format!(
        "SELECT device, COUNT(*), SUM(size), MIN(id), enqueued_at FROM queue \
         WHERE {queued_rows} GROUP BY device"
    ))
    .fetch_all(&mut *conn)
    .await?;
    // A queue that no gateway of this version has opened yet lacks the newer columns.
    let columns: Vec<String> = sqlx::query_scalar("SELECT name FROM pragma_table_info('drops')")
        .fetch_all(&mut *conn)
        .await?;
    let column_or_zero = |name: &'static str| {
        if columns.iter().any(|column| column == name) {
            name
        } else {
            "0"
        }
    };
    let write_failed = column_or_zero("write_failed");
    let dead_lettered = column_or_zero("dead_lettered");
    let drops: Vec<(String, i64, i64, i64, i64)> = sqlx::query_as(&format!(
        "SELECT device, queue_full, offline_qos0, {write_failed}, {dead_lettered} FROM drops"
    ))
    .fetch_all(&mut *conn)
    .await?;

    let mut by_device: BTreeMap<String, DeviceStats> = BTreeMap::new();
    for (device, depth, bytes, _oldest_id, enqueued_at_ms) in queued {
        let stats = slot(&mut by_device, device);
        stats.depth = non_negative(depth);
        stats.bytes = non_negative(bytes);
        stats.oldest_enqueued_at =
            Some(UNIX_EPOCH + Duration::from_millis(non_negative(enqueued_at_ms)));
    }
    for (device, queue_full, offline_qos0, write_failed, dead_lettered) in drops {
        let stats = slot(&mut by_device, device);
        stats.dropped_queue_full = non_negative(queue_full);
        stats.dropped_offline_qos0 = non_negative(offline_qos0);
        stats.dropped_write_failed = non_negative(write_failed);
        stats.dead_lettered = non_negative(dead_lettered);
    }
    Ok(by_device.into_values().collect())
}

fn slot(map: &mut BTreeMap<String, DeviceStats>, device: String) -> &mut DeviceStats {
    map.entry(device.clone()).or_insert_with(|| DeviceStats {
        device_id: device,
        ..DeviceStats::default()
    })
}

fn non_negative(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}
