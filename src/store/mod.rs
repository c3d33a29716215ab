//! The store-and-forward queue: every QoS 1 event is committed to SQLite before it is
//! published and deleted only once the broker has acknowledged that exact message.
//!
//! One writer task owns the only writing connection and groups whatever commands are
//! pending (inserts, deletes, drop counters, flush barriers) into one transaction, so
//! the cost of a commit (an fsync with `synchronous = FULL`) is shared by hundreds of
//! events. Sessions read their device's rows through a small pool of read-only
//! connections; WAL mode lets those reads (and a second process running
//! `fieldbridge queue`) proceed while the writer commits.
//!
//! Durability: the database runs in WAL mode with `synchronous = FULL` by default (see
//! [`Synchronous`] for the trade-off on SD cards); a transaction that only removes rows
//! or counts commits without an fsync, since undoing it sends events once more at worst.
//!
//! A write that fails is never acknowledged. When the disk is full (or failing) the
//! events that cannot be stored are lost at once rather than after retries, and counted
//! per device (`dropped_write_failed`); every new batch tries again on a connection that
//! is known to be outside any transaction, so the queue works again once there is space.

mod acknowledged;
mod document;
mod failure;
mod open;
mod packing;
mod recent;
mod stats;
mod writer;

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::SqlitePool;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::event::{DecodeError, Event, Kind, Stored};
use document::{rows_document, DocumentRow};

pub use stats::{read_stats, DeviceStats};

/// File name of the queue database inside `gateway.data_dir`.
pub const DB_FILE: &str = "queue.db";

/// Most commands the writer folds into one transaction.
const MAX_BATCH: usize = 4096;
/// Commands waiting for the writer; a full channel makes `enqueue` wait (back-pressure).
const COMMAND_CAPACITY: usize = 8192;
/// Read-only connections shared by all sessions for fetching rows.
const READ_CONNECTIONS: u32 = 2;
/// Dead letters kept (the newest); each holds an event's payload.
pub const MAX_DEAD_LETTERS: usize = 10_000;

/// What to do with a new QoS 1 event when the queue holds `max_messages` or `max_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnFull {
    /// Delete the oldest queued events (of any device) to make room: the newest data wins.
    #[default]
    DropOldest,
    /// Keep the queue as it is and discard the new event.
    DropNewest,
}

/// SQLite `synchronous` level of the queue database (always in WAL mode).
///
/// - `Full` (default): the WAL is fsynced at every commit, so an event whose insert has
///   committed survives a power cut. Because the writer commits a whole batch at once,
///   this costs one fsync per batch, not per event; on an SD card that is a few
///   milliseconds of latency and more flash writes per second when traffic is light.
/// - `Normal`: the WAL is fsynced only at checkpoints. Commits survive a crash or
///   `kill -9` of the process, and the database never becomes corrupt, but a power cut
///   can roll back the last commits (up to a checkpoint's worth of events, about 4 MB
///   of WAL). Fewer fsyncs means less SD wear and lower latency.
///
/// The delivery guarantee ("a power cut loses no QoS 1 event") needs `Full`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Synchronous {
    #[default]
    Full,
    Normal,
}

/// Everything the queue needs to know; the runtime fills it from the configuration.
#[derive(Debug, Clone)]
pub struct StoreSettings {
    /// Directory holding `queue.db` (`gateway.data_dir`); created if only the last
    /// component is missing.
    pub data_dir: PathBuf,
    /// `queue.max_messages`.
    pub max_messages: u64,
    /// `queue.max_bytes` (payload bytes).
    pub max_bytes: u64,
    /// `queue.on_full`.
    pub on_full: OnFull,
    pub synchronous: Synchronous,
    /// `queue.commit_window`: the least time between two commits of small transactions
    /// (zero: commit every batch at once). Writes that come sooner wait and join the next
    /// commit: fewer fsyncs and fewer pages written again to the WAL, at the cost of up
    /// to this much latency before a QoS 1 event can be published. A batch of
    /// [`LARGE_BATCH_ROWS`] rows or more, or with a pressing deletion, waits
    /// [`BUSY_COMMIT_WINDOW`] at most.
    pub commit_window: Duration,
}

/// Rows (inserted, deleted, moved) from which a transaction waits for no more than
/// [`BUSY_COMMIT_WINDOW`].
pub const LARGE_BATCH_ROWS: usize = 64;

/// The commit window of large batches and of a drain's deletions, when the configured
/// one is longer. Their rows are enough to make a commit worth its cost, but each
/// commit has a cost for the readers too: SQLite drops a reading connection's memory
/// map and cache when another has committed. A drain committing its deletions at once
/// made 160-730 commits per 100,000 events, 80-110 with this window, and ran 7-11 %
/// faster (docs/BENCHMARKS.md).
pub const BUSY_COMMIT_WINDOW: Duration = Duration::from_millis(10);

impl StoreSettings {
    /// The documented defaults: 1,000,000 messages, 256 MiB, `drop_oldest`, `FULL`,
    /// a commit window of 200 ms.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        StoreSettings {
            data_dir: data_dir.into(),
            max_messages: 1_000_000,
            max_bytes: 256 * 1024 * 1024,
            on_full: OnFull::DropOldest,
            synchronous: Synchronous::Full,
            commit_window: Duration::from_millis(200),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("data_dir {path}: {problem}")]
    DataDir { path: PathBuf, problem: String },
    #[error(
        "queue database {path} is corrupt ({detail}); it was moved to {moved_to} \
         (kept for inspection) and a new, empty queue will be created at the next start"
    )]
    Corrupt {
        path: PathBuf,
        moved_to: PathBuf,
        detail: String,
    },
    #[error("queue database {path}: {error}")]
    Database { path: PathBuf, error: sqlx::Error },
    #[error("queue database {path}: schema migration failed: {error}")]
    Migration {
        path: PathBuf,
        error: sqlx::migrate::MigrateError,
    },
    #[error("no queue database at {path} (has the gateway run with this data_dir?)")]
    NotFound { path: PathBuf },
    #[error("queue write failed: {0}")]
    WriteFailed(String),
    #[error("the queue is closed")]
    Closed,
}

/// One queued event as a session reads it back.
#[derive(Debug, Clone, PartialEq)]
pub struct QueuedEvent {
    /// Row id: increases with every insert, so it orders a device's events.
    pub id: i64,
    pub device_id: String,
    pub event_id: String,
    pub kind: Kind,
    /// The stored body: platform JSON for [`Kind::Encoded`] rows.
    pub payload: Vec<u8>,
    /// When the event happened, Unix time in milliseconds.
    pub at_ms: i64,
    /// Why the stored payload could not be read back (a damaged row), if it could not.
    pub unreadable: Option<String>,
}

impl QueuedEvent {
    /// A row as a read returns it, its payload decompressed.
    fn from_row(row: DocumentRow<'_>) -> Self {
        let (payload, unreadable) = match packing::unpack(row.stored, row.compressed, row.size) {
            Ok(payload) => (payload, None),
            Err(reason) => (Vec::new(), Some(reason)),
        };
        QueuedEvent {
            id: row.id,
            device_id: row.device.to_owned(),
            event_id: row.event.to_owned(),
            // Kinds of a later release read as the JSON every release can send.
            kind: Kind::from_column(row.kind).unwrap_or(Kind::Encoded),
            payload,
            at_ms: row.at,
            unreadable,
        }
    }

    /// The typed event, for a profile to encode.
    pub fn to_event(&self) -> Result<Event, DecodeError> {
        if let Some(reason) = &self.unreadable {
            return Err(DecodeError::unreadable(
                self.kind,
                &self.event_id,
                reason.clone(),
            ));
        }
        Stored {
            kind: self.kind,
            event: self.event_id.clone(),
            payload: self.payload.clone(),
            at_ms: self.at_ms,
        }
        .decode(&self.device_id)
    }
}

/// A row on its way into the queue.
#[derive(Debug)]
struct NewRow {
    device: String,
    stored: Stored,
    /// The payload compressed, when that is smaller (what is stored).
    packed: Option<Vec<u8>>,
    enqueued_at_ms: i64,
}

#[derive(Debug)]
enum Command {
    Insert(NewRow),
    Delete {
        /// The device every row belongs to, when there is one.
        device: Option<String>,
        ids: Vec<i64>,
        /// A drain's deletion: waits for [`BUSY_COMMIT_WINDOW`] at most.
        pressing: bool,
        done: oneshot::Sender<Result<(), StoreError>>,
    },
    DeadLetter {
        rows: Vec<(i64, String)>,
        done: oneshot::Sender<Result<(), StoreError>>,
    },
    OfflineDrops {
        device: String,
        count: u64,
    },
    RememberReqId {
        device: String,
        req_id: String,
        keep: u32,
        done: oneshot::Sender<Result<bool, StoreError>>,
    },
    SetState {
        key: String,
        value: String,
        done: oneshot::Sender<Result<(), StoreError>>,
    },
    Flush(oneshot::Sender<Result<(), StoreError>>),
    Close(oneshot::Sender<()>),
}

/// The watcher key bumped by rows of any device (no device id is empty).
const ANY_DEVICE: &str = "";

/// Per-device wake-ups: bumped after every commit that inserted rows of that device.
type Watchers = Arc<Mutex<HashMap<String, watch::Sender<u64>>>>;

/// Locks `mutex`, also when a panic elsewhere poisoned it: the queue keeps working.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The rows committed lately of every watched device (see [`recent`]).
type SharedRecent = Arc<Mutex<recent::Recent>>;

/// Handle to the queue; cheap to clone, all clones share one writer.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    commands: mpsc::Sender<Command>,
    readers: SqlitePool,
    watchers: Watchers,
    recent: SharedRecent,
    pending: writer::SharedPending,
    db_path: PathBuf,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl Store {
    /// Opens (creating or migrating) `queue.db` in the data directory and starts the
    /// writer. A missing parent directory, a path that is not a writable directory, or a
    /// corrupt database is an error; a corrupt file is renamed aside, never deleted.
    pub async fn open(settings: StoreSettings) -> Result<Store, StoreError> {
        let opened = open::open_read_write(&settings).await?;
        let (commands, receiver) = mpsc::channel(COMMAND_CAPACITY);
        let watchers = Watchers::default();
        let recent = SharedRecent::new(Mutex::new(recent::Recent::new(opened.last_id)));
        let pending = writer::SharedPending::default();
        let writer = writer::Writer::new(
            opened.writer,
            &opened.path,
            settings.clone(),
            opened.contents,
            watchers.clone(),
            recent.clone(),
            pending.clone(),
        );
        let handle = tokio::spawn(writer.run(receiver));
        Ok(Store {
            inner: Arc::new(Inner {
                commands,
                readers: opened.readers,
                watchers,
                recent,
                pending,
                db_path: opened.path,
                writer: Mutex::new(Some(handle)),
            }),
        })
    }

    /// Path of the database file.
    pub fn path(&self) -> &Path {
        &self.inner.db_path
    }

    /// Hands a (QoS 1) event to the writer. Returns once the writer has accepted it,
    /// not when it is committed: a session only ever publishes committed rows. Waits
    /// while the writer is behind by more than a few thousand commands.
    pub async fn enqueue(&self, event: Event) -> Result<(), StoreError> {
        let stored = event.to_stored();
        let row = NewRow {
            packed: packing::pack(&stored.payload),
            stored,
            device: event.device_id,
            enqueued_at_ms: unix_millis(SystemTime::now()),
        };
        self.send(Command::Insert(row)).await
    }

    /// Deletes acknowledged rows; resolves once the deletion is committed, which waits
    /// for the commit window (`queue.commit_window`), or for no more than
    /// [`BUSY_COMMIT_WINDOW`] when `pressing` (a drain's deletions). When such rows
    /// all belong to one `device` (its own session acknowledged them) and continue the
    /// device's rows acknowledged so far, they are marked as gone and deleted in bulk
    /// later, which costs far less than deleting each.
    pub async fn delete(
        &self,
        device: Option<&str>,
        ids: Vec<i64>,
        pressing: bool,
    ) -> Result<(), StoreError> {
        let (done, result) = oneshot::channel();
        let device = device.map(str::to_owned);
        let delete = Command::Delete {
            device,
            ids,
            pressing,
            done,
        };
        self.send(delete).await?;
        result.await.map_err(|_| StoreError::Closed)?
    }

    /// Moves rows the broker refused for good to the dead letters, each with its reason;
    /// resolves once that is committed. The dead letters keep the newest
    /// [`MAX_DEAD_LETTERS`] events; every move is counted per device.
    pub async fn dead_letter(&self, rows: Vec<(i64, String)>) -> Result<(), StoreError> {
        let (done, result) = oneshot::channel();
        self.send(Command::DeadLetter { rows, done }).await?;
        result.await.map_err(|_| StoreError::Closed)?
    }

    /// Adds QoS 0 events of `device` that were dropped while it was offline to the
    /// persisted counters (committed with the next batch).
    pub async fn count_offline_drops(&self, device: &str, count: u64) -> Result<(), StoreError> {
        if count == 0 {
            return Ok(());
        }
        let device = device.to_owned();
        self.send(Command::OfflineDrops { device, count }).await
    }

    /// Records that `device` is acting on the command `req_id`, keeping the `keep`
    /// most recent ids per device; false when it was already recorded (a repeat).
    /// Resolves once the record is committed, so a command acted on after it is never
    /// acted on again, even after a restart. A crash between the commit and the write
    /// loses that command rather than repeating a write.
    pub async fn record_command(
        &self,
        device: &str,
        req_id: &str,
        keep: u32,
    ) -> Result<bool, StoreError> {
        let (done, result) = oneshot::channel();
        self.send(Command::RememberReqId {
            device: device.to_owned(),
            req_id: req_id.to_owned(),
            keep: keep.max(1),
            done,
        })
        .await?;
        result.await.map_err(|_| StoreError::Closed)?
    }

    /// A value an uplink profile keeps across restarts (`None`: never set).
    pub async fn state(&self, key: &str) -> Result<Option<String>, StoreError> {
        sqlx::query_scalar("SELECT value FROM uplink_state WHERE key = ?")
            .bind(key)
            .fetch_optional(&self.inner.readers)
            .await
            .map_err(|source| self.database_error(source))
    }

    /// Sets such a value; resolves once it is committed.
    pub async fn set_state(&self, key: &str, value: String) -> Result<(), StoreError> {
        let (done, result) = oneshot::channel();
        self.send(Command::SetState {
            key: key.to_owned(),
            value,
            done,
        })
        .await?;
        result.await.map_err(|_| StoreError::Closed)?
    }

    /// Resolves once everything sent before it is committed.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let (done, result) = oneshot::channel();
        self.send(Command::Flush(done)).await?;
        result.await.map_err(|_| StoreError::Closed)?
    }

    /// The oldest queued events of `device` with an id above `after_id`, in order.
    /// Rows committed since the device is watched come from memory once the reader has
    /// caught up with them.
    pub async fn fetch(
        &self,
        device: &str,
        after_id: i64,
        limit: usize,
    ) -> Result<Vec<QueuedEvent>, StoreError> {
        if let Some(rows) = self.recent(device, after_id, limit) {
            return Ok(rows);
        }
        // Above the device's acknowledged rows, which the table may still hold.
        let query = sqlx::query_scalar(rows_document!(
            "device = ? AND id > \
             MAX(?, COALESCE((SELECT through FROM acknowledged WHERE device = ?), 0))"
        ))
        .bind(device)
        .bind(after_id)
        .bind(device);
        self.read_rows(query, limit).await
    }

    /// The oldest queued events of every device with an id above `after_id`, in order
    /// (one session serving every device, as a Sparkplug edge node does).
    pub async fn fetch_all(
        &self,
        after_id: i64,
        limit: usize,
    ) -> Result<Vec<QueuedEvent>, StoreError> {
        if let Some(rows) = self.recent(ANY_DEVICE, after_id, limit) {
            return Ok(rows);
        }
        let query = sqlx::query_scalar(rows_document!(
            "id > ? AND ",
            acknowledged::unacknowledged!()
        ))
        .bind(after_id);
        self.read_rows(query, limit).await
    }

    /// Runs a [`rows_document`] read, `limit` bound last.
    async fn read_rows<'q>(
        &self,
        query: sqlx::query::QueryScalar<
            'q,
            sqlx::Sqlite,
            Option<Vec<u8>>,
            sqlx::sqlite::SqliteArguments<'q>,
        >,
        limit: usize,
    ) -> Result<Vec<QueuedEvent>, StoreError> {
        let document = query
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_one(&self.inner.readers)
            .await
            .map_err(|source| self.database_error(source))?;
        let document = document.unwrap_or_default();
        let mut rows = document::rows(&document)
            .map_err(|error| self.database_error(sqlx::Error::Decode(error.into())))?;
        // An aggregate's order follows its input in SQLite, but is not promised.
        rows.sort_unstable_by_key(|row| row.id);
        Ok(rows.into_iter().map(QueuedEvent::from_row).collect())
    }

    /// A receiver that changes whenever rows of any device have been committed.
    pub fn watch_all(&self) -> watch::Receiver<u64> {
        self.watch(ANY_DEVICE)
    }

    fn recent(&self, key: &str, after_id: i64, limit: usize) -> Option<Vec<QueuedEvent>> {
        lock(&self.inner.recent).read(key, after_id, limit)
    }

    /// A receiver that changes whenever rows of `device` have been committed.
    pub fn watch(&self, device: &str) -> watch::Receiver<u64> {
        lock(&self.inner.recent).track(device);
        let mut watchers = lock(&self.inner.watchers);
        watchers
            .entry(device.to_owned())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    /// Depth, bytes, oldest event and drop counts per device: the persisted counts plus
    /// those waiting in memory while the database cannot be written.
    pub async fn stats(&self) -> Result<Vec<DeviceStats>, StoreError> {
        // Held while reading, so counts the writer is committing are seen exactly once.
        let pending = self.inner.pending.lock().await;
        let mut conn = self
            .inner
            .readers
            .acquire()
            .await
            .map_err(|source| self.database_error(source))?;
        let mut stats = stats::query(&mut conn)
            .await
            .map_err(|source| self.database_error(source))?;
        pending.add_to(&mut stats);
        Ok(stats)
    }

    /// Commits everything pending, checkpoints the WAL and stops the writer. Other
    /// clones of this handle get [`StoreError::Closed`] afterwards.
    pub async fn close(&self) {
        let (done, closed) = oneshot::channel();
        if self.inner.commands.send(Command::Close(done)).await.is_ok() {
            let _ = closed.await;
        }
        let writer = lock(&self.inner.writer).take();
        if let Some(writer) = writer {
            let _ = writer.await;
        }
        self.inner.readers.close().await;
    }

    async fn send(&self, command: Command) -> Result<(), StoreError> {
        self.inner
            .commands
            .send(command)
            .await
            .map_err(|_| StoreError::Closed)
    }

    fn database_error(&self, error: sqlx::Error) -> StoreError {
        StoreError::Database {
            path: self.inner.db_path.clone(),
            error,
        }
    }
}

/// Bytes that the gateway's (unprivileged) user can still write on the file system
/// holding `dir`.
pub fn free_space(dir: &Path) -> io::Result<u64> {
    let vfs = rustix::fs::statvfs(dir)?;
    Ok(vfs.f_bavail.saturating_mul(vfs.f_frsize))
}

fn unix_millis(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests;
