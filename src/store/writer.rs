//! The queue's single writer: folds every pending command into one transaction,
//! enforces `max_messages`/`max_bytes` with the `on_full` policy, and counts drops.
//!
//! A transaction that fails is never acknowledged. When the disk is full or failing the
//! writer does not wait and retry (the buses would wait behind it): the batch's events
//! are lost, counted per device in memory, and the counts go into the database with the
//! first transaction that succeeds again.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fieldbridge_service::LogThrottle;
use fieldbridge_sqlite::{Fault, OutageLog, ReopeningConnection, Report};
use sqlx::{Connection, QueryBuilder, Sqlite, SqliteConnection, Transaction};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::acknowledged::{self, unacknowledged, Acknowledged};
use super::failure::{per_device, retry_delay, PendingDrops};
use super::open::{self, Contents, Occupancy};
use super::recent::Removed;
use super::{
    Command, NewRow, OnFull, QueuedEvent, SharedRecent, StoreError, StoreSettings, Synchronous,
    Watchers, BUSY_COMMIT_WINDOW, LARGE_BATCH_ROWS, MAX_BATCH,
};

/// Most rows per multi-row INSERT (8 parameters each, well under SQLite's 32766
/// limit). Batches are inserted in chunks of powers of two, so that a few prepared
/// statements serve every batch size.
const INSERT_CHUNK: usize = 512;
/// Oldest rows examined per step when evicting.
const EVICT_CHUNK: i64 = 512;
/// Delays before retrying a transaction that found the database locked; after the last
/// one the batch fails. Other faults fail the batch at once.
const RETRY_DELAYS: [Duration; 2] = [Duration::from_millis(200), Duration::from_secs(1)];
/// Drops are logged at most this often (a summary of everything dropped meanwhile).
const DROP_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// Failed writes are logged at most this often (with the losses per device).
const LOSS_LOG_INTERVAL: Duration = Duration::from_secs(30);
/// While drop counts wait in memory, a write is tried this often even without traffic,
/// so they are saved (and the recovery noticed) once there is space again.
const PROBE_INTERVAL: Duration = Duration::from_secs(5);
/// Devices named in one drop summary.
const DROP_LOG_DEVICES: usize = 10;

/// Drop counts not yet in the database, shared with [`super::Store::stats`]. The writer
/// holds the lock while it commits them, so a reader never counts them twice or not at all.
pub(super) type SharedPending = Arc<tokio::sync::Mutex<PendingDrops>>;

/// QoS 1 events lost per device since the first failed write.
type LossReport = Report<BTreeMap<String, u64>>;

pub(super) struct Writer {
    conn: ReopeningConnection,
    settings: StoreSettings,
    /// Rows still queued (not acknowledged).
    occupancy: Occupancy,
    acknowledged: Acknowledged,
    watchers: Watchers,
    recent: SharedRecent,
    drop_log: DropLog,
    pending: SharedPending,
    loss_log: OutageLog<BTreeMap<String, u64>>,
    /// When to try saving pending drop counts if no batch comes first.
    probe_at: Option<Instant>,
    /// When the last transaction committed (see [`Writer::gather`]).
    last_commit: Instant,
    /// Whether the connection now commits with an fsync (`None`: not known, as after a
    /// failure, when the connection may have been opened again).
    fsync_on_commit: Option<bool>,
}

/// The commands of one transaction.
#[derive(Default)]
struct Batch {
    inserts: Vec<NewRow>,
    /// Acknowledged rows per device, which may continue the device's run.
    acknowledged: HashMap<String, Vec<i64>>,
    /// Rows to delete one by one (of any device).
    deletes: Vec<i64>,
    /// Rows to move to the dead letters, with the reason.
    dead_letters: Vec<(i64, String)>,
    offline_drops: HashMap<String, u64>,
    commands: Vec<CommandRecord>,
    /// `uplink_state` keys and values to set.
    state: Vec<(String, String)>,
    waiters: Vec<oneshot::Sender<Result<(), StoreError>>>,
    /// A flush or close waits for this batch: it must survive a power cut too.
    barrier: bool,
}

impl Batch {
    /// Whether a power cut may not undo this batch once committed: new events, command
    /// ids and connection counters, and whatever a flush waits for. Deletions and
    /// counts may be undone (an acknowledged event is then sent once more), so a batch
    /// of only those commits without an fsync; the next durable commit's fsync covers
    /// it, the WAL being written in order.
    fn durable(&self) -> bool {
        self.barrier
            || !self.inserts.is_empty()
            || !self.commands.is_empty()
            || !self.state.is_empty()
    }

    fn writes_nothing(&self) -> bool {
        self.inserts.is_empty()
            && self.acknowledged.is_empty()
            && self.deletes.is_empty()
            && self.dead_letters.is_empty()
            && self.offline_drops.is_empty()
            && self.commands.is_empty()
            && self.state.is_empty()
    }
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
    /// Devices whose run of acknowledged rows moved, with the new mark.
    marks: Vec<(String, i64)>,
    /// Acknowledged rows the table still holds.
    held: Occupancy,
    dropped_full: HashMap<String, u64>,
    inserted_devices: HashSet<String>,
    /// Per new row of the batch, in order: its id, or `None` when it was dropped.
    inserted_ids: Vec<Option<i64>>,
    removed: Removed,
    /// Per recorded command id, in batch order: false for a repeat.
    first_time: Vec<bool>,
}

/// Counts added to one device's row of `drops`.
#[derive(Default)]
struct DropCounts {
    queue_full: u64,
    offline_qos0: u64,
    write_failed: u64,
}

impl Writer {
    pub(super) fn new(
        conn: SqliteConnection,
        path: &Path,
        settings: StoreSettings,
        contents: Contents,
        watchers: Watchers,
        recent: SharedRecent,
        pending: SharedPending,
    ) -> Self {
        Writer {
            conn: ReopeningConnection::new(conn, open::reopen_options(path, settings.synchronous)),
            settings,
            occupancy: contents.queued,
            acknowledged: contents.acknowledged,
            watchers,
            recent,
            drop_log: DropLog::new(DROP_LOG_INTERVAL),
            pending,
            loss_log: OutageLog::new(LOSS_LOG_INTERVAL),
            probe_at: None,
            last_commit: Instant::now(),
            fsync_on_commit: None,
        }
    }

    pub(super) async fn run(mut self, mut receiver: mpsc::Receiver<Command>) {
        let mut commands = Vec::with_capacity(MAX_BATCH);
        loop {
            let wake = [self.drop_log.next_due(), self.probe_at]
                .into_iter()
                .flatten()
                .min();
            let received = match wake {
                Some(due) => tokio::select! {
                    n = receiver.recv_many(&mut commands, MAX_BATCH) => n,
                    _ = tokio::time::sleep_until(due) => {
                        self.on_timer().await;
                        continue;
                    }
                },
                None => receiver.recv_many(&mut commands, MAX_BATCH).await,
            };
            if received == 0 {
                break; // every handle is gone
            }
            self.gather(&mut receiver, &mut commands).await;
            let mut batch = Batch::default();
            let mut close = None;
            for command in commands.drain(..) {
                match command {
                    Command::Insert(row) => batch.inserts.push(row),
                    Command::Delete {
                        device,
                        ids,
                        pressing,
                        done,
                    } => {
                        // Marks for a drain; steady traffic leaves too few rows behind
                        // for them to pay (module `acknowledged`).
                        match device.filter(|_| pressing) {
                            Some(device) => {
                                batch.acknowledged.entry(device).or_default().extend(ids)
                            }
                            None => batch.deletes.extend(ids),
                        }
                        batch.waiters.push(done);
                    }
                    Command::DeadLetter { rows, done } => {
                        batch.dead_letters.extend(rows);
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
                    Command::SetState { key, value, done } => {
                        batch.state.push((key, value));
                        batch.waiters.push(done);
                    }
                    Command::Flush(done) => {
                        batch.barrier = true;
                        batch.waiters.push(done);
                    }
                    Command::Close(done) => {
                        batch.barrier = true;
                        close = Some(done);
                    }
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

    /// Lets a batch wait for more commands until its commit window (see
    /// [`gathering_window`]) has passed since the last commit, so that light traffic
    /// commits (and fsyncs) at most a few times a second instead of per event and a
    /// drain's deletions share a few commits, while a quiet queue commits at once.
    async fn gather(&self, receiver: &mut mpsc::Receiver<Command>, commands: &mut Vec<Command>) {
        while commands.len() < MAX_BATCH {
            let Some(window) = gathering_window(commands, self.settings.commit_window) else {
                return;
            };
            let room = MAX_BATCH - commands.len();
            let more = receiver.recv_many(commands, room);
            match tokio::time::timeout_at(self.last_commit + window, more).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    }

    async fn on_timer(&mut self) {
        let now = Instant::now();
        if self.drop_log.next_due().is_some_and(|due| due <= now) {
            self.log_drops();
        }
        if self.probe_at.is_some_and(|at| at <= now) {
            self.probe_at = None;
            // Writes only the pending drop counts.
            self.apply(Batch::default()).await;
        }
    }

    async fn apply(&mut self, batch: Batch) {
        let pending = self.pending.lock().await.clone();
        if batch.writes_nothing() && pending.is_empty() {
            for waiter in batch.waiters {
                let _ = waiter.send(Ok(()));
            }
            return;
        }
        let mut attempt = 0;
        let outcome = loop {
            match self.transaction(&batch, &pending).await {
                Ok(committed) => break Ok(committed),
                Err(error) => {
                    let fault = Fault::of(&error);
                    self.conn.settle().await;
                    self.fsync_on_commit = None;
                    match retry_delay(fault, attempt, &RETRY_DELAYS) {
                        Some(delay) => {
                            tracing::warn!("queue transaction failed, retrying: {error}");
                            tokio::time::sleep(delay).await;
                            attempt += 1;
                        }
                        None => break Err((fault, error)),
                    }
                }
            }
        };
        match outcome {
            Ok(committed) => {
                self.last_commit = Instant::now();
                self.occupancy = committed.occupancy;
                for (device, through) in committed.marks {
                    self.acknowledged.moved(device, through);
                }
                self.acknowledged.held = committed.held;
                self.probe_at = None;
                if let Some(outage) = self.loss_log.recovered(std::time::Instant::now()) {
                    log_recovery(&outage);
                }
                for (device, count) in &committed.dropped_full {
                    self.drop_log.record(device, *count);
                }
                self.remember(committed.removed, &committed.inserted_ids, batch.inserts);
                self.notify(&committed.inserted_devices);
                for waiter in batch.waiters {
                    let _ = waiter.send(Ok(()));
                }
                for (record, first_time) in batch.commands.into_iter().zip(committed.first_time) {
                    let _ = record.done.send(Ok(first_time));
                }
            }
            Err((fault, error)) => {
                let mut lost: BTreeMap<String, u64> = BTreeMap::new();
                for row in &batch.inserts {
                    *lost.entry(row.device.clone()).or_default() += 1;
                }
                let waiting = {
                    let mut pending = self.pending.lock().await;
                    pending.add(&lost, &batch.offline_drops);
                    !pending.is_empty()
                };
                self.probe_at = waiting.then(|| Instant::now() + PROBE_INTERVAL);
                let add_lost = |outage: &mut BTreeMap<String, u64>| {
                    for (device, count) in &lost {
                        *outage.entry(device.clone()).or_default() += count;
                    }
                };
                if let Some(report) =
                    self.loss_log
                        .failed(fault, std::time::Instant::now(), add_lost)
                {
                    self.log_failure(fault, &error, &report);
                }
                let failed = || StoreError::WriteFailed(format!("{fault}: {error}"));
                for waiter in batch.waiters {
                    let _ = waiter.send(Err(failed()));
                }
                for record in batch.commands {
                    let _ = record.done.send(Err(failed()));
                }
            }
        }
    }

    /// One attempt at the batch's transaction, with the drop counts still pending.
    async fn transaction(
        &mut self,
        batch: &Batch,
        pending: &PendingDrops,
    ) -> Result<Committed, sqlx::Error> {
        let conn = self.conn.get().await?;
        let fsync = self.settings.synchronous == Synchronous::Full && batch.durable();
        if self.fsync_on_commit != Some(fsync) {
            let level = if fsync { "FULL" } else { "NORMAL" };
            sqlx::query(&format!("PRAGMA synchronous = {level}"))
                .execute(&mut *conn)
                .await?;
            self.fsync_on_commit = Some(fsync);
        }
        let mut tx = conn.begin().await?;
        let written = write(
            &mut tx,
            batch,
            pending,
            &self.settings,
            self.occupancy,
            &self.acknowledged,
        );
        let committed = match written.await {
            Ok(committed) => committed,
            Err(error) => {
                // Explicitly rather than on drop, so that `settle` sees the outcome.
                let _ = tx.rollback().await;
                return Err(error);
            }
        };
        if pending.is_empty() {
            tx.commit().await?;
        } else {
            let mut shared = self.pending.lock().await;
            tx.commit().await?;
            // Only the writer adds to them, so what was written is all there is.
            *shared = PendingDrops::default();
        }
        Ok(committed)
    }

    fn log_failure(&self, fault: Fault, error: &sqlx::Error, report: &LossReport) {
        let dir = self.settings.data_dir.display();
        let free = super::free_space(&self.settings.data_dir)
            .map_or_else(|e| format!("unknown ({e})"), |free| free.to_string());
        let lost: u64 = report.lost.values().sum();
        if lost == 0 {
            tracing::error!(
                failures = report.failures,
                repeats = report.repeats,
                "the queue database cannot be written: {fault} ({dir} has {free} bytes free; {error})"
            );
            return;
        }
        tracing::error!(
            lost,
            failures = report.failures,
            repeats = report.repeats,
            "QoS 1 events are being lost because they cannot be stored in the queue: {fault} \
             ({dir} has {free} bytes free; {error}). At-least-once delivery cannot be kept \
             without the disk. Lost in {}s of failed writes: {}",
            report.lasting.as_secs(),
            per_device(&report.lost, DROP_LOG_DEVICES)
        );
    }

    /// Hands the committed rows to [`super::recent`] (before the sessions are woken up
    /// and before a deletion is confirmed, so memory never shows a row the database no
    /// longer holds to a session that could know better).
    fn remember(&self, removed: Removed, ids: &[Option<i64>], inserts: Vec<NewRow>) {
        let inserted = inserts
            .into_iter()
            .zip(ids)
            .filter_map(|(row, id)| {
                Some(QueuedEvent {
                    id: (*id)?,
                    device_id: row.device,
                    event_id: row.stored.event,
                    kind: row.stored.kind,
                    payload: row.stored.payload,
                    at_ms: row.stored.at_ms,
                    unreadable: None,
                })
            })
            .collect();
        super::lock(&self.recent).committed(removed, inserted, super::ANY_DEVICE);
    }

    fn notify(&self, devices: &HashSet<String>) {
        if devices.is_empty() {
            return;
        }
        let watchers = super::lock(&self.watchers);
        let any = devices.iter().next().map(|_| super::ANY_DEVICE);
        for device in devices.iter().map(String::as_str).chain(any) {
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
        tracing::warn!(
            dropped = total,
            max_messages = self.settings.max_messages,
            max_bytes = self.settings.max_bytes,
            policy = ?self.settings.on_full,
            "queue full, dropped events ({})",
            per_device(&summary, DROP_LOG_DEVICES)
        );
    }

    async fn finish(mut self) {
        self.log_drops();
        let pending = self.pending.lock().await.clone();
        if !pending.is_empty() {
            tracing::error!(
                "drop counts of failed queue writes could not be saved: QoS 1 events lost: {}",
                per_device(&pending.write_failed, DROP_LOG_DEVICES)
            );
        }
        let Some(mut conn) = self.conn.into_inner() else {
            return;
        };
        if let Err(error) = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&mut conn)
            .await
        {
            tracing::warn!("queue checkpoint at shutdown failed: {error}");
        }
        if let Err(error) = conn.close().await {
            tracing::warn!("closing the queue database failed: {error}");
        }
    }
}

fn log_recovery(outage: &LossReport) {
    let total: u64 = outage.lost.values().sum();
    let lasting = outage.lasting.as_secs();
    if total == 0 {
        tracing::info!(
            failures = outage.failures,
            "queue writes succeed again after {lasting}s; no QoS 1 event was lost"
        );
    } else {
        tracing::warn!(
            lost = total,
            failures = outage.failures,
            "queue writes succeed again after {lasting}s; {total} QoS 1 events were lost \
             because they could not be stored ({}), counted as dropped_write_failed",
            per_device(&outage.lost, DROP_LOG_DEVICES)
        );
    }
}

/// Queue rows a batch of commands writes.
fn rows(commands: &[Command]) -> usize {
    commands
        .iter()
        .map(|command| match command {
            Command::Insert(_) => 1,
            Command::Delete { ids, .. } => ids.len(),
            Command::DeadLetter { rows, .. } => rows.len(),
            _ => 0,
        })
        .sum()
}

/// How long after the last commit `commands` may wait for more to join their
/// transaction (`None`: not at all, for a flush or close). Small batches wait for the
/// configured window; a large one, or one with a pressing deletion (a drain's), for
/// [`BUSY_COMMIT_WINDOW`] at most.
fn gathering_window(commands: &[Command], configured: Duration) -> Option<Duration> {
    let mut busy = rows(commands) >= LARGE_BATCH_ROWS;
    for command in commands {
        match command {
            Command::Flush(_) | Command::Close(_) => return None,
            Command::Delete { pressing: true, .. } => busy = true,
            _ => {}
        }
    }
    Some(if busy {
        configured.min(BUSY_COMMIT_WINDOW)
    } else {
        configured
    })
}

/// Moves `rows` (id, reason) from the queue to the dead letters, counting each per
/// device, and keeps the newest [`super::MAX_DEAD_LETTERS`] of them. Returns the messages
/// and bytes that left the queue (a row evicted meanwhile is not there any more).
async fn move_to_dead_letters(
    tx: &mut Transaction<'_, Sqlite>,
    rows: &[(i64, String)],
) -> Result<Occupancy, sqlx::Error> {
    let refused_at = super::unix_millis(std::time::SystemTime::now());
    let mut moved_out = Occupancy::default();
    for (id, reason) in rows {
        type Moved = (String, String, Vec<u8>, bool, i64, i64, i64, i64);
        let moved: Option<Moved> = sqlx::query_as(
            "SELECT device, event, payload, compressed, size, enqueued_at, kind, at \
             FROM queue WHERE id = ?1",
        )
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?;
        let Some((device, event, payload, compressed, size, enqueued_at, kind, at)) = moved else {
            continue;
        };
        // Stored as enqueued, so the dead letters can be read with any SQLite tool; a
        // damaged row keeps its bytes, and says so.
        let (payload, reason) = match super::packing::unpack(&payload, compressed, size) {
            Ok(payload) => (payload, reason.clone()),
            Err(damage) => (payload, format!("{reason}; {damage}")),
        };
        sqlx::query(
            "INSERT INTO dead_letters \
             (id, device, event, payload, size, enqueued_at, kind, at, refused_at, reason) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )
        .bind(id)
        .bind(&device)
        .bind(event)
        .bind(payload)
        .bind(size)
        .bind(enqueued_at)
        .bind(kind)
        .bind(at)
        .bind(refused_at)
        .bind(reason)
        .execute(&mut **tx)
        .await?;
        sqlx::query("DELETE FROM queue WHERE id = ?1")
            .bind(id)
            .execute(&mut **tx)
            .await?;
        sqlx::query(
            "INSERT INTO drops (device, dead_lettered) VALUES (?1, 1) \
             ON CONFLICT (device) DO UPDATE SET dead_lettered = dead_lettered + 1",
        )
        .bind(&device)
        .execute(&mut **tx)
        .await?;
        moved_out.add(Occupancy::counted(1, size));
    }
    sqlx::query(
        "DELETE FROM dead_letters WHERE id IN \
         (SELECT id FROM dead_letters ORDER BY id DESC LIMIT -1 OFFSET ?1)",
    )
    .bind(i64::try_from(super::MAX_DEAD_LETTERS).unwrap_or(i64::MAX))
    .execute(&mut **tx)
    .await?;
    Ok(moved_out)
}

/// The batch's statements, inside `tx`.
async fn write(
    tx: &mut Transaction<'_, Sqlite>,
    batch: &Batch,
    pending: &PendingDrops,
    settings: &StoreSettings,
    mut occupancy: Occupancy,
    acknowledged: &Acknowledged,
) -> Result<Committed, sqlx::Error> {
    let mut removed = Removed::default();
    if !batch.dead_letters.is_empty() {
        removed
            .ids
            .extend(batch.dead_letters.iter().map(|(id, _)| *id));
        occupancy.remove(move_to_dead_letters(tx, &batch.dead_letters).await?);
    }
    let mut held = acknowledged.held;
    let mut marks = Vec::new();
    // Rows deleted one by one first: a run of marks may continue past them.
    removed.ids.extend(&batch.deletes);
    occupancy.remove(delete_each(tx, &batch.deletes).await?);
    let mut rest = Vec::new();
    for (device, ids) in &batch.acknowledged {
        removed.ids.extend(ids);
        let extension = acknowledged.extend(tx, device, ids).await?;
        rest.extend(extension.rest);
        if extension.covered.messages > 0 {
            occupancy.remove(extension.covered);
            held.add(extension.covered);
            marks.push((device.clone(), extension.through));
        }
    }
    occupancy.remove(delete_each(tx, &rest).await?);

    let sizes: Vec<u64> = batch
        .inserts
        .iter()
        .map(|row| row.stored.payload.len() as u64)
        .collect();
    let admission = admit(
        settings.on_full,
        settings.max_messages,
        settings.max_bytes,
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
        let (messages, bytes, through) = evict_oldest(
            tx,
            admission.evict_messages,
            admission.evict_bytes,
            &mut dropped_full,
        )
        .await?;
        removed.through = through;
        occupancy.remove(Occupancy { messages, bytes });
    }

    let mut inserted = Vec::with_capacity(batch.inserts.len());
    let kept: Vec<&NewRow> = batch
        .inserts
        .iter()
        .zip(&admission.keep)
        .filter_map(|(row, keep)| keep.then_some(row))
        .collect();
    let mut rest = &kept[..];
    while !rest.is_empty() {
        let size = power_of_two_chunk(rest.len());
        let (chunk, after) = rest.split_at(size);
        rest = after;
        let mut query = QueryBuilder::<Sqlite>::new(
            "INSERT INTO queue (device, event, kind, payload, compressed, size, at, enqueued_at) ",
        );
        query.push_values(chunk, |mut values, row| {
            values
                .push_bind(row.device.as_str())
                .push_bind(row.stored.event.as_str())
                .push_bind(row.stored.kind as i64)
                .push_bind(row.packed.as_deref().unwrap_or(&row.stored.payload))
                .push_bind(row.packed.is_some())
                .push_bind(row.stored.payload.len() as i64)
                .push_bind(row.stored.at_ms)
                .push_bind(row.enqueued_at_ms);
        });
        let last = query.build().execute(&mut **tx).await?.last_insert_rowid();
        // One statement of a single writer: its rows have consecutive ids.
        let first = last - (chunk.len() as i64 - 1);
        inserted.extend((first..=last).map(Some));
        occupancy.add(Occupancy {
            messages: chunk.len() as u64,
            bytes: chunk.iter().map(|r| r.stored.payload.len() as u64).sum(),
        });
    }

    if held.messages > 0 {
        if Acknowledged::clear_if_all(tx, occupancy.messages).await? {
            held = Occupancy::default();
        } else if acknowledged::purge_due(
            held,
            occupancy,
            settings.max_messages,
            settings.max_bytes,
        ) {
            held.remove(acknowledged.purge(tx, &marks).await?);
        }
    }

    let mut drops: BTreeMap<&str, DropCounts> = BTreeMap::new();
    for (device, count) in &dropped_full {
        drops.entry(device).or_default().queue_full += count;
    }
    for (device, count) in batch.offline_drops.iter().chain(&pending.offline_qos0) {
        drops.entry(device).or_default().offline_qos0 += count;
    }
    for (device, count) in &pending.write_failed {
        drops.entry(device).or_default().write_failed += count;
    }
    for (device, counts) in drops {
        add_drops(tx, device, counts).await?;
    }
    for (key, value) in &batch.state {
        sqlx::query("INSERT OR REPLACE INTO uplink_state (key, value) VALUES (?, ?)")
            .bind(key)
            .bind(value)
            .execute(&mut **tx)
            .await?;
    }
    let mut first_time = Vec::with_capacity(batch.commands.len());
    for record in &batch.commands {
        first_time.push(record_command(tx, record).await?);
    }

    Ok(Committed {
        occupancy,
        marks,
        held,
        dropped_full,
        inserted_devices: kept.iter().map(|row| row.device.clone()).collect(),
        inserted_ids: {
            let mut ids = inserted.into_iter();
            admission
                .keep
                .iter()
                .map(|keep| if *keep { ids.next().flatten() } else { None })
                .collect()
        },
        removed,
        first_time,
    })
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

/// Deletes the rows `ids` inside `tx`; returns what left the queue (a row evicted
/// meanwhile is not there any more).
async fn delete_each(
    tx: &mut Transaction<'_, Sqlite>,
    ids: &[i64],
) -> Result<Occupancy, sqlx::Error> {
    if ids.is_empty() {
        return Ok(Occupancy::default());
    }
    // The ids as one JSON array: the same two prepared statements for any number.
    let ids = serde_json::to_string(ids).expect("integers serialize");
    // Counting first keeps the result to one row (RETURNING would send one row per
    // deleted id back from the database thread).
    let (messages, bytes): (i64, i64) = sqlx::query_as(
        "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM queue \
         WHERE id IN (SELECT value FROM json_each(?1))",
    )
    .bind(&ids)
    .fetch_one(&mut **tx)
    .await?;
    sqlx::query("DELETE FROM queue WHERE id IN (SELECT value FROM json_each(?1))")
        .bind(&ids)
        .execute(&mut **tx)
        .await?;
    Ok(Occupancy::counted(messages, bytes))
}

/// The largest power of two, up to [`INSERT_CHUNK`], that `rows` rows can fill.
fn power_of_two_chunk(rows: usize) -> usize {
    let below = 1 << (usize::BITS - 1 - rows.leading_zeros());
    below.min(INSERT_CHUNK)
}

/// Deletes the globally oldest queued (not acknowledged) rows until at least `messages` rows and `bytes` payload
/// bytes are freed; counts them per device into `dropped`. Returns what was freed, and
/// the highest id deleted.
async fn evict_oldest(
    tx: &mut Transaction<'_, Sqlite>,
    messages: u64,
    bytes: u64,
    dropped: &mut HashMap<String, u64>,
) -> Result<(u64, u64, Option<i64>), sqlx::Error> {
    let (mut freed_messages, mut freed_bytes) = (0u64, 0u64);
    let mut through = None;
    while freed_messages < messages || freed_bytes < bytes {
        let oldest: Vec<(i64, String, i64)> = sqlx::query_as(concat!(
            "SELECT id, device, size FROM queue WHERE ",
            unacknowledged!(),
            " ORDER BY id LIMIT ?"
        ))
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
            sqlx::query(concat!(
                "DELETE FROM queue WHERE id <= ? AND ",
                unacknowledged!()
            ))
            .bind(last_id)
            .execute(&mut **tx)
            .await?;
            through = Some(last_id);
        }
    }
    Ok((freed_messages, freed_bytes, through))
}

async fn add_drops(
    tx: &mut Transaction<'_, Sqlite>,
    device: &str,
    counts: DropCounts,
) -> Result<(), sqlx::Error> {
    let value = |count: u64| i64::try_from(count).unwrap_or(i64::MAX);
    sqlx::query(
        "INSERT INTO drops (device, queue_full, offline_qos0, write_failed) VALUES (?, ?, ?, ?) \
         ON CONFLICT (device) DO UPDATE SET queue_full = queue_full + excluded.queue_full, \
         offline_qos0 = offline_qos0 + excluded.offline_qos0, \
         write_failed = write_failed + excluded.write_failed",
    )
    .bind(device)
    .bind(value(counts.queue_full))
    .bind(value(counts.offline_qos0))
    .bind(value(counts.write_failed))
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
    fn only_batches_a_power_cut_must_not_undo_wait_for_an_fsync() {
        let removals = Batch {
            deletes: vec![1, 2],
            dead_letters: vec![(3, "0x87 not authorized".into())],
            offline_drops: HashMap::from([("dev".into(), 4)]),
            ..Batch::default()
        };
        assert!(!removals.durable(), "deletions and counts may be undone");
        let event = crate::event::Event::encoded(
            "dev",
            "status",
            crate::event::Qos::AtLeastOnce,
            b"{}".to_vec(),
        );
        let stored = event.to_stored();
        let inserts = Batch {
            inserts: vec![NewRow {
                device: "dev".into(),
                packed: None,
                stored,
                enqueued_at_ms: 0,
            }],
            ..Batch::default()
        };
        assert!(inserts.durable(), "a new event");
        let state = Batch {
            state: vec![("bdSeq".into(), "1".into())],
            ..Batch::default()
        };
        assert!(state.durable(), "a connection counter");
        let (done, _) = oneshot::channel();
        let commands = Batch {
            commands: vec![CommandRecord {
                device: "dev".into(),
                req_id: "r1".into(),
                keep: 10,
                done,
            }],
            ..Batch::default()
        };
        assert!(commands.durable(), "a command id acted on");
        let barrier = Batch {
            deletes: vec![1],
            barrier: true,
            ..Batch::default()
        };
        assert!(barrier.durable(), "a flush waits for it");
    }

    fn delete(ids: usize, pressing: bool) -> Command {
        Command::Delete {
            device: Some("dev".into()),
            ids: (0..ids as i64).collect(),
            pressing,
            done: oneshot::channel().0,
        }
    }

    #[test]
    fn a_drain_or_a_large_batch_waits_a_short_window_and_a_flush_none() {
        let configured = Duration::from_millis(200);
        assert_eq!(
            gathering_window(&[delete(3, false)], configured),
            Some(configured),
            "steady traffic's deletions wait for the configured window"
        );
        assert_eq!(
            gathering_window(&[delete(3, false), delete(1, true)], configured),
            Some(BUSY_COMMIT_WINDOW),
            "a drain's deletion"
        );
        assert_eq!(
            gathering_window(&[delete(LARGE_BATCH_ROWS, false)], configured),
            Some(BUSY_COMMIT_WINDOW),
            "a large batch"
        );
        assert_eq!(
            gathering_window(&[delete(1, true)], Duration::ZERO),
            Some(Duration::ZERO),
            "no window configured: no wait either"
        );
        assert_eq!(
            gathering_window(
                &[delete(1, false), Command::Flush(oneshot::channel().0)],
                configured
            ),
            None,
            "a flush commits at once"
        );
        assert_eq!(
            gathering_window(&[Command::Close(oneshot::channel().0)], configured),
            None
        );
    }

    #[test]
    fn batches_are_inserted_in_chunks_of_powers_of_two() {
        let chunks = |mut rows: usize| {
            let mut sizes = Vec::new();
            while rows > 0 {
                let size = power_of_two_chunk(rows);
                sizes.push(size);
                rows -= size;
            }
            sizes
        };
        assert_eq!(chunks(1), vec![1]);
        assert_eq!(chunks(13), vec![8, 4, 1]);
        assert_eq!(chunks(64), vec![64]);
        assert_eq!(chunks(1300), vec![512, 512, 256, 16, 4]);
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
