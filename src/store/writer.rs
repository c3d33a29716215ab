//! The queue's single writer: folds every pending command into one transaction,
//! enforces `max_messages`/`max_bytes` with the `on_full` policy, and counts drops.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use fieldbridge_service::LogThrottle;
use sqlx::{Connection, QueryBuilder, Sqlite, SqliteConnection, Transaction};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::open::Occupancy;
use super::{Command, NewRow, OnFull, StoreError, StoreSettings, Watchers, MAX_BATCH};

/// Rows per multi-row INSERT (5 parameters each, well under SQLite's 32766 limit).
const INSERT_CHUNK: usize = 1000;
/// Ids per `DELETE ... WHERE id IN (...)`.
const DELETE_CHUNK: usize = 1000;
/// Oldest rows examined per step when evicting.
const EVICT_CHUNK: i64 = 512;
/// Delays before retrying a failed transaction; after the last one the batch fails.
const RETRY_DELAYS: [Duration; 2] = [Duration::from_millis(200), Duration::from_secs(1)];
/// Drops are logged at most this often (a summary of everything dropped meanwhile).
const DROP_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// Devices named in one drop summary.
const DROP_LOG_DEVICES: usize = 10;

pub(super) struct Writer {
    conn: SqliteConnection,
    settings: StoreSettings,
    occupancy: Occupancy,
    watchers: Watchers,
    drop_log: DropLog,
}

/// The commands of one transaction.
#[derive(Default)]
struct Batch {
    inserts: Vec<NewRow>,
    deletes: Vec<i64>,
    offline_drops: HashMap<String, u64>,
    commands: Vec<CommandRecord>,
    waiters: Vec<oneshot::Sender<Result<(), StoreError>>>,
}

/// A command id to record, in arrival order (a repeat within one batch is a repeat).
struct CommandRecord {
    device: String,
    req_id: String,
    keep: u32,
    done: oneshot::Sender<Result<bool, StoreError>>,
}

/// What a committed transaction changed.
struct Committed {
    occupancy: Occupancy,
    dropped_full: HashMap<String, u64>,
    inserted_devices: HashSet<String>,
    /// Per recorded command id, in batch order: false for a repeat.
    first_time: Vec<bool>,
}

impl Writer {
    pub(super) fn new(
        conn: SqliteConnection,
        settings: StoreSettings,
        occupancy: Occupancy,
        watchers: Watchers,
    ) -> Self {
        Writer {
            conn,
            settings,
            occupancy,
            watchers,
            drop_log: DropLog::new(DROP_LOG_INTERVAL),
        }
    }

    pub(super) async fn run(mut self, mut receiver: mpsc::Receiver<Command>) {
        let mut commands = Vec::with_capacity(MAX_BATCH);
        loop {
            let received = match self.drop_log.next_due() {
                Some(due) => tokio::select! {
                    n = receiver.recv_many(&mut commands, MAX_BATCH) => n,
                    _ = tokio::time::sleep_until(due) => {
                        self.log_drops();
                        continue;
                    }
                },
                None => receiver.recv_many(&mut commands, MAX_BATCH).await,
            };
            if received == 0 {
                break; // every handle is gone
            }
            let mut batch = Batch::default();
            let mut close = None;
            for command in commands.drain(..) {
                match command {
                    Command::Insert(row) => batch.inserts.push(row),
                    Command::Delete { ids, done } => {
                        batch.deletes.extend(ids);
                        batch.waiters.push(done);
                    }
                    Command::OfflineDrops { device, count } => {
                        *batch.offline_drops.entry(device).or_default() += count;
                    }
                    Command::RememberReqId {
                        device,
                        req_id,
                        keep,
                        done,
                    } => batch.commands.push(CommandRecord {
                        device,
                        req_id,
                        keep,
                        done,
                    }),
                    Command::Flush(done) => batch.waiters.push(done),
                    Command::Close(done) => close = Some(done),
                }
            }
            self.apply(batch).await;
            if self
                .drop_log
                .next_due()
                .is_some_and(|due| due <= Instant::now())
            {
                self.log_drops();
            }
            if let Some(done) = close {
                self.finish().await;
                let _ = done.send(());
                return;
            }
        }
        self.finish().await;
    }

    async fn apply(&mut self, batch: Batch) {
        if batch.inserts.is_empty()
            && batch.deletes.is_empty()
            && batch.offline_drops.is_empty()
            && batch.commands.is_empty()
        {
            for waiter in batch.waiters {
                let _ = waiter.send(Ok(()));
            }
            return;
        }
        let mut attempt = 0;
        let outcome = loop {
            match self.commit(&batch).await {
                Ok(committed) => break Ok(committed),
                Err(error) if attempt < RETRY_DELAYS.len() => {
                    tracing::warn!("queue transaction failed, retrying: {error}");
                    tokio::time::sleep(RETRY_DELAYS[attempt]).await;
                    attempt += 1;
                }
                Err(error) => break Err(error),
            }
        };
        match outcome {
            Ok(committed) => {
                self.occupancy = committed.occupancy;
                for (device, count) in committed.dropped_full {
                    self.drop_log.record(&device, count);
                }
                self.notify(&committed.inserted_devices);
                for waiter in batch.waiters {
                    let _ = waiter.send(Ok(()));
                }
                for (record, first_time) in batch.commands.into_iter().zip(committed.first_time) {
                    let _ = record.done.send(Ok(first_time));
                }
            }
            Err(error) => {
                tracing::error!(
                    lost_events = batch.inserts.len(),
                    "queue transaction failed for good, its events are lost: {error}"
                );
                for waiter in batch.waiters {
                    let _ = waiter.send(Err(StoreError::WriteFailed(error.to_string())));
                }
                for record in batch.commands {
                    let _ = record
                        .done
                        .send(Err(StoreError::WriteFailed(error.to_string())));
                }
            }
        }
    }

    async fn commit(&mut self, batch: &Batch) -> Result<Committed, sqlx::Error> {
        let mut tx = self.conn.begin().await?;
        let mut occupancy = self.occupancy;

        for chunk in batch.deletes.chunks(DELETE_CHUNK) {
            // Counting first keeps the result to one row (RETURNING would send one
            // row per deleted id back from the database thread).
            let (messages, bytes): (i64, i64) = id_list_query(
                "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM queue WHERE id IN (",
                chunk,
            )
            .build_query_as()
            .persistent(false)
            .fetch_one(&mut *tx)
            .await?;
            id_list_query("DELETE FROM queue WHERE id IN (", chunk)
                .build()
                .persistent(false)
                .execute(&mut *tx)
                .await?;
            occupancy.messages = occupancy.messages.saturating_sub(messages.max(0) as u64);
            occupancy.bytes = occupancy.bytes.saturating_sub(bytes.max(0) as u64);
        }

        let sizes: Vec<u64> = batch
            .inserts
            .iter()
            .map(|row| row.payload.len() as u64)
            .collect();
        let admission = admit(
            self.settings.on_full,
            self.settings.max_messages,
            self.settings.max_bytes,
            occupancy,
            &sizes,
        );
        let mut dropped_full: HashMap<String, u64> = HashMap::new();
        for (row, keep) in batch.inserts.iter().zip(&admission.keep) {
            if !keep {
                *dropped_full.entry(row.device.clone()).or_default() += 1;
            }
        }
        if admission.evict_messages > 0 || admission.evict_bytes > 0 {
            let (messages, bytes) = evict_oldest(
                &mut tx,
                admission.evict_messages,
                admission.evict_bytes,
                &mut dropped_full,
            )
            .await?;
            occupancy.messages = occupancy.messages.saturating_sub(messages);
            occupancy.bytes = occupancy.bytes.saturating_sub(bytes);
        }

        let kept: Vec<&NewRow> = batch
            .inserts
            .iter()
            .zip(&admission.keep)
            .filter_map(|(row, keep)| keep.then_some(row))
            .collect();
        for chunk in kept.chunks(INSERT_CHUNK) {
            let mut query = QueryBuilder::<Sqlite>::new(
                "INSERT INTO queue (device, event, payload, size, enqueued_at) ",
            );
            query.push_values(chunk, |mut values, row| {
                values
                    .push_bind(row.device.as_str())
                    .push_bind(row.event.as_str())
                    .push_bind(row.payload.as_slice())
                    .push_bind(row.payload.len() as i64)
                    .push_bind(row.enqueued_at_ms);
            });
            query.build().persistent(false).execute(&mut *tx).await?;
            occupancy.messages += chunk.len() as u64;
            occupancy.bytes += chunk.iter().map(|r| r.payload.len() as u64).sum::<u64>();
        }

        for (device, count) in &dropped_full {
            add_drops(&mut tx, device, *count, 0).await?;
        }
        for (device, count) in &batch.offline_drops {
            add_drops(&mut tx, device, 0, *count).await?;
        }
        let mut first_time = Vec::with_capacity(batch.commands.len());
        for record in &batch.commands {
            first_time.push(record_command(&mut tx, record).await?);
        }
        tx.commit().await?;

        Ok(Committed {
            occupancy,
            dropped_full,
            inserted_devices: kept.iter().map(|row| row.device.clone()).collect(),
            first_time,
        })
    }

    fn notify(&self, devices: &HashSet<String>) {
        if devices.is_empty() {
            return;
        }
        let watchers = self
            .watchers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for device in devices {
            if let Some(watcher) = watchers.get(device) {
                watcher.send_modify(|version| *version = version.wrapping_add(1));
            }
        }
    }

    fn log_drops(&mut self) {
        let Some(summary) = self.drop_log.take(Instant::now()) else {
            return;
        };
        let total: u64 = summary.values().sum();
        let mut per_device: Vec<String> = summary
            .iter()
            .take(DROP_LOG_DEVICES)
            .map(|(device, count)| format!("{device}: {count}"))
            .collect();
        if summary.len() > DROP_LOG_DEVICES {
            per_device.push(format!("{} more devices", summary.len() - DROP_LOG_DEVICES));
        }
        tracing::warn!(
            dropped = total,
            max_messages = self.settings.max_messages,
            max_bytes = self.settings.max_bytes,
            policy = ?self.settings.on_full,
            "queue full, dropped events ({})",
            per_device.join(", ")
        );
    }

    async fn finish(mut self) {
        self.log_drops();
        if let Err(error) = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&mut self.conn)
            .await
        {
            tracing::warn!("queue checkpoint at shutdown failed: {error}");
        }
        if let Err(error) = self.conn.close().await {
            tracing::warn!("closing the queue database failed: {error}");
        }
    }
}

/// Inserts a command id unless already there, then forgets all but the device's
/// `keep` most recent ones. True when it was new.
async fn record_command(
    tx: &mut Transaction<'_, Sqlite>,
    record: &CommandRecord,
) -> Result<bool, sqlx::Error> {
    let inserted = sqlx::query(
        "INSERT OR IGNORE INTO command_seen (device, req_id, seen_at) VALUES (?, ?, ?)",
    )
    .bind(&record.device)
    .bind(&record.req_id)
    .bind(super::unix_millis(std::time::SystemTime::now()))
    .execute(&mut **tx)
    .await?
    .rows_affected()
        == 1;
    if inserted {
        sqlx::query(
            "DELETE FROM command_seen WHERE device = ?1 AND rowid <= \
             (SELECT rowid FROM command_seen WHERE device = ?1 ORDER BY rowid DESC LIMIT 1 OFFSET ?2)",
        )
        .bind(&record.device)
        .bind(i64::from(record.keep))
        .execute(&mut **tx)
        .await?;
    }
    Ok(inserted)
}

/// `head` followed by the ids, comma-separated, and a closing parenthesis.
fn id_list_query<'a>(head: &str, ids: &'a [i64]) -> QueryBuilder<'a, Sqlite> {
    let mut query = QueryBuilder::<Sqlite>::new(head);
    let mut list = query.separated(", ");
    for id in ids {
        list.push_bind(*id);
    }
    query.push(")");
    query
}

/// Deletes the globally oldest rows until at least `messages` rows and `bytes` payload
/// bytes are freed; counts them per device into `dropped`. Returns what was freed.
async fn evict_oldest(
    tx: &mut Transaction<'_, Sqlite>,
    messages: u64,
    bytes: u64,
    dropped: &mut HashMap<String, u64>,
) -> Result<(u64, u64), sqlx::Error> {
    let (mut freed_messages, mut freed_bytes) = (0u64, 0u64);
    while freed_messages < messages || freed_bytes < bytes {
        let oldest: Vec<(i64, String, i64)> =
            sqlx::query_as("SELECT id, device, size FROM queue ORDER BY id LIMIT ?")
                .bind(EVICT_CHUNK)
                .fetch_all(&mut **tx)
                .await?;
        if oldest.is_empty() {
            break;
        }
        let mut last_id = None;
        for (id, device, size) in oldest {
            if freed_messages >= messages && freed_bytes >= bytes {
                break;
            }
            freed_messages += 1;
            freed_bytes += size.max(0) as u64;
            *dropped.entry(device).or_default() += 1;
            last_id = Some(id);
        }
        if let Some(last_id) = last_id {
            sqlx::query("DELETE FROM queue WHERE id <= ?")
                .bind(last_id)
                .execute(&mut **tx)
                .await?;
        }
    }
    Ok((freed_messages, freed_bytes))
}

async fn add_drops(
    tx: &mut Transaction<'_, Sqlite>,
    device: &str,
    queue_full: u64,
    offline_qos0: u64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO drops (device, queue_full, offline_qos0) VALUES (?, ?, ?) \
         ON CONFLICT (device) DO UPDATE SET queue_full = queue_full + excluded.queue_full, \
         offline_qos0 = offline_qos0 + excluded.offline_qos0",
    )
    .bind(device)
    .bind(i64::try_from(queue_full).unwrap_or(i64::MAX))
    .bind(i64::try_from(offline_qos0).unwrap_or(i64::MAX))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Which new rows fit, and how much of the queue must be evicted for them.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Admission {
    /// Per new row (in order): inserted or dropped.
    pub keep: Vec<bool>,
    /// Oldest queued messages / payload bytes to delete before inserting.
    pub evict_messages: u64,
    pub evict_bytes: u64,
}

/// Applies the bounds to a batch of new rows of the given payload sizes.
pub(super) fn admit(
    on_full: OnFull,
    max_messages: u64,
    max_bytes: u64,
    current: Occupancy,
    sizes: &[u64],
) -> Admission {
    match on_full {
        OnFull::DropNewest => {
            let (mut messages, mut bytes) = (current.messages, current.bytes);
            let keep = sizes
                .iter()
                .map(|&size| {
                    let fits = messages < max_messages && bytes.saturating_add(size) <= max_bytes;
                    if fits {
                        messages += 1;
                        bytes += size;
                    }
                    fits
                })
                .collect();
            Admission {
                keep,
                evict_messages: 0,
                evict_bytes: 0,
            }
        }
        OnFull::DropOldest => {
            // A row larger than the whole queue can never be stored.
            let mut keep: Vec<bool> = sizes
                .iter()
                .map(|&size| max_messages > 0 && size <= max_bytes)
                .collect();
            let mut messages = keep.iter().filter(|k| **k).count() as u64;
            let mut bytes: u64 = sizes
                .iter()
                .zip(&keep)
                .filter(|(_, k)| **k)
                .map(|(s, _)| s)
                .sum();
            // If the batch alone overflows, its own oldest rows go first.
            for (slot, &size) in keep.iter_mut().zip(sizes) {
                if messages <= max_messages && bytes <= max_bytes {
                    break;
                }
                if *slot {
                    *slot = false;
                    messages -= 1;
                    bytes -= size;
                }
            }
            Admission {
                keep,
                evict_messages: (current.messages + messages).saturating_sub(max_messages),
                evict_bytes: current
                    .bytes
                    .saturating_add(bytes)
                    .saturating_sub(max_bytes),
            }
        }
    }
}

/// Drop warnings: the first drop is reported at once, later ones are summed per device
/// and reported at most once per interval.
pub(super) struct DropLog {
    throttle: LogThrottle,
    pending: BTreeMap<String, u64>,
}

impl DropLog {
    pub(super) fn new(interval: Duration) -> Self {
        DropLog {
            throttle: LogThrottle::new(interval),
            pending: BTreeMap::new(),
        }
    }

    pub(super) fn record(&mut self, device: &str, count: u64) {
        match self.pending.get_mut(device) {
            Some(total) => *total += count,
            None => {
                self.pending.insert(device.to_owned(), count);
            }
        }
    }

    /// When the pending drops should be logged (`None`: nothing pending).
    pub(super) fn next_due(&self) -> Option<Instant> {
        (!self.pending.is_empty()).then(|| Instant::from_std(self.throttle.next_due()))
    }

    /// The drops to report now, if the interval allows.
    pub(super) fn take(&mut self, now: Instant) -> Option<BTreeMap<String, u64>> {
        if self.pending.is_empty() {
            return None;
        }
        self.throttle.admit_at(now.into_std())?;
        Some(std::mem::take(&mut self.pending))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn occupancy(messages: u64, bytes: u64) -> Occupancy {
        Occupancy { messages, bytes }
    }

    #[test]
    fn everything_fits_below_the_bounds() {
        for policy in [OnFull::DropOldest, OnFull::DropNewest] {
            let a = admit(policy, 10, 1000, occupancy(5, 500), &[100, 100]);
            assert_eq!(a.keep, vec![true, true]);
            assert_eq!((a.evict_messages, a.evict_bytes), (0, 0));
        }
    }

    #[test]
    fn drop_newest_rejects_what_does_not_fit() {
        let a = admit(
            OnFull::DropNewest,
            10,
            1000,
            occupancy(8, 100),
            &[1, 1, 1, 1],
        );
        assert_eq!(a.keep, vec![true, true, false, false]);
        let a = admit(
            OnFull::DropNewest,
            10,
            1000,
            occupancy(0, 900),
            &[50, 60, 40, 10],
        );
        assert_eq!(a.keep, vec![true, false, true, true]);
        assert_eq!((a.evict_messages, a.evict_bytes), (0, 0));
    }

    #[test]
    fn drop_oldest_evicts_queued_rows_for_new_ones() {
        let a = admit(OnFull::DropOldest, 10, 1000, occupancy(9, 100), &[1, 1, 1]);
        assert_eq!(a.keep, vec![true, true, true]);
        assert_eq!((a.evict_messages, a.evict_bytes), (2, 0));
        let a = admit(OnFull::DropOldest, 10, 1000, occupancy(1, 950), &[100]);
        assert_eq!((a.evict_messages, a.evict_bytes), (0, 50));
    }

    #[test]
    fn drop_oldest_trims_a_batch_larger_than_the_queue() {
        let a = admit(
            OnFull::DropOldest,
            3,
            1000,
            occupancy(3, 30),
            &[1, 2, 3, 4, 5],
        );
        assert_eq!(a.keep, vec![false, false, true, true, true]);
        assert_eq!((a.evict_messages, a.evict_bytes), (3, 0));
        // A payload larger than max_bytes is dropped on its own.
        let a = admit(OnFull::DropOldest, 10, 100, occupancy(0, 0), &[10, 500, 10]);
        assert_eq!(a.keep, vec![true, false, true]);
    }

    #[test]
    fn drop_log_reports_first_drop_then_at_most_once_per_interval() {
        let mut log = DropLog::new(Duration::from_secs(10));
        assert!(log.next_due().is_none());
        let start = Instant::now();
        log.record("a", 2);
        assert_eq!(log.take(start).unwrap().get("a"), Some(&2));
        log.record("a", 1);
        log.record("b", 4);
        assert!(log.take(start + Duration::from_secs(5)).is_none());
        assert_eq!(log.next_due(), Some(start + Duration::from_secs(10)));
        let summary = log.take(start + Duration::from_secs(10)).unwrap();
        assert_eq!(summary.get("a"), Some(&1));
        assert_eq!(summary.get("b"), Some(&4));
        assert!(log.next_due().is_none());
    }
}
