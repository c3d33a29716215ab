//! Durable broker state in SQLite (WAL): retained messages and persistent sessions (their
//! subscriptions, queued and in-flight messages, and QoS 2 identifiers awaiting PUBREL).
//!
//! All writes go through one writer task as [`Op`]s on a bounded channel; it applies what
//! has accumulated in one transaction (group commit). Whoever must not answer its client
//! before its writes are durable (a PUBACK, PUBREC or SUBACK) takes a [`Mark`] before
//! sending them and waits for a barrier after them. Ops of one session are sent while its
//! lock is held, so they reach the database in the order they happened.
//!
//! A transaction that fails (a full disk, an I/O error) is rolled back and its changes are
//! lost; every barrier marked before the failure fails, so nothing those changes carried is
//! acknowledged. Failures are not retried (waiting would hold up every publisher): the
//! next batch tries again, on a fresh connection when the old one's state is in doubt.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use bytestring::ByteString;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqliteRow, SqliteSynchronous,
};
use sqlx::{ConnectOptions, Connection, Row};
use tokio::sync::{mpsc, oneshot};

use crate::config::{PersistenceConfig, Synchronous};
use crate::message::Message;
use crate::session::Delivery;
use crate::subscriptions::Subscription;
use fieldbridge_mqtt::codec::{Properties, QoS};
use fieldbridge_sqlite::{Fault, OutageLog, ReopeningConnection};

/// Ops waiting for the writer; senders wait (and so slow down) when it is full.
pub(crate) const CHANNEL_CAPACITY: usize = 8192;
/// Ops applied in one transaction at most.
const MAX_BATCH: usize = 2048;
/// Failed writes are logged at most this often (with how many failed meanwhile).
const FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(30);
/// How long a connection waits for a lock held by another connection or process.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("persistence database {path}: {error}")]
    Open { path: String, error: sqlx::Error },
    #[error("persistence database {path}: migration failed: {error}")]
    Migrate {
        path: String,
        error: sqlx::migrate::MigrateError,
    },
    #[error("persistence database {path}: {error}")]
    Load { path: String, error: sqlx::Error },
}

/// A write could not be made durable (the writer stopped or the transaction failed).
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the persistence database could not store the change")]
pub struct NotDurable;

/// How many transactions had failed when a caller began sending ops: a barrier given it
/// fails if any failed since, wherever the caller's ops ended up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Mark(u64);

impl Mark {
    /// The answer of a barrier taken at this mark once `failures` transactions have failed.
    fn verdict(self, failures: u64) -> Result<(), NotDurable> {
        if failures == self.0 {
            Ok(())
        } else {
            Err(NotDurable)
        }
    }
}

/// Failed transactions, counted by the writer and read by the handles.
#[derive(Debug, Default)]
struct Failures {
    /// Since the store was opened.
    count: AtomicU64,
    /// `count` as of the last transaction that succeeded.
    settled: AtomicU64,
}

/// One change to the durable state.
#[derive(Debug)]
pub(crate) enum Op {
    SetRetained {
        message: Arc<Message>,
    },
    ClearRetained {
        topic: ByteString,
    },
    /// Records a persistent session, connected now, its owner (see
    /// `registry::Owner::encode`; `None` keeps the one stored) and its expiry.
    Session {
        client_id: ByteString,
        owner: Option<String>,
        expiry: u32,
    },
    /// A persistent session's client left at `since_ms`; `expiry` as it stands then.
    SessionAbsent {
        client_id: ByteString,
        since_ms: u64,
        expiry: u32,
    },
    DeleteSession {
        client_id: ByteString,
    },
    /// A will published at `due_ms` (Unix ms) unless the client comes back first.
    DelayWill {
        client_id: ByteString,
        will: Arc<Message>,
        due_ms: u64,
    },
    /// The delayed will was published.
    ClearWill {
        client_id: ByteString,
    },
    Subscribe {
        client_id: ByteString,
        filter: ByteString,
        subscription: Subscription,
    },
    Unsubscribe {
        client_id: ByteString,
        filter: ByteString,
    },
    Message {
        id: i64,
        message: Arc<Message>,
    },
    Enqueue {
        client_id: ByteString,
        seq: u64,
        message_id: i64,
        qos: QoS,
        retain: bool,
        identifiers: Vec<u32>,
    },
    Sent {
        client_id: ByteString,
        seq: u64,
        pkid: u16,
    },
    Released {
        client_id: ByteString,
        seq: u64,
    },
    Completed {
        client_id: ByteString,
        seq: u64,
    },
    IncomingQos2 {
        client_id: ByteString,
        pkid: u16,
    },
    IncomingReleased {
        client_id: ByteString,
        pkid: u16,
    },
    /// Answered once the ops sent before it are committed: an error if a transaction
    /// failed after `since`.
    Barrier {
        since: Mark,
        done: oneshot::Sender<Result<(), NotDurable>>,
    },
    /// Reads back a session's queued (not yet sent) messages up to `through`, once the
    /// ops sent before it are committed.
    ReadQueue {
        client_id: ByteString,
        through: u64,
        done: oneshot::Sender<Result<Vec<StoredDelivery>, NotDurable>>,
    },
    /// Commits what came before and stops the writer.
    Close(oneshot::Sender<()>),
}

/// A message of a restored session's queue.
#[derive(Debug, Clone)]
pub struct StoredDelivery {
    pub seq: u64,
    pub message: Arc<Message>,
    pub qos: QoS,
    pub retain: bool,
    /// Set if the message had been sent.
    pub pkid: Option<u16>,
    /// Set if its PUBREC had come (PUBREL owed).
    pub released: bool,
    pub identifiers: Vec<u32>,
}

impl StoredDelivery {
    pub fn into_delivery(self) -> Delivery {
        Delivery {
            message: self.message,
            qos: self.qos,
            retain: self.retain,
            seq: self.seq,
            identifiers: self.identifiers,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct StoredSession {
    /// Who the session belongs to; `None` when stored before owners were recorded.
    pub owner: Option<String>,
    /// Session Expiry Interval in seconds (u32::MAX: never).
    pub expiry: u32,
    /// When its client left (Unix ms); `None` if it was connected when the broker stopped.
    pub absent_since_ms: Option<u64>,
    /// A will waiting for its delay, and when it is due (Unix ms).
    pub pending_will: Option<(Message, u64)>,
    pub subscriptions: Vec<(ByteString, Subscription)>,
    /// The messages that were in flight, with their bodies.
    pub inflight: Vec<StoredDelivery>,
    /// The messages queued and not yet sent, by sequence number and size: their bodies
    /// are read when the client comes back (see [`StoreHandle::read_queue`]).
    pub queued: Vec<(u64, usize)>,
    pub incoming_qos2: Vec<u16>,
}

/// The durable state as found when the broker starts.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub retained: Vec<Message>,
    pub sessions: HashMap<ByteString, StoredSession>,
}

/// Sends ops to the writer task. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct StoreHandle {
    tx: mpsc::Sender<Op>,
    next_message_id: Arc<AtomicI64>,
    failures: Arc<Failures>,
}

impl StoreHandle {
    pub async fn send(&self, op: Op) -> Result<(), NotDurable> {
        self.tx.send(op).await.map_err(|_| NotDurable)
    }

    /// Sends without waiting; false (and the op is lost) if the channel is full or closed.
    /// For ops whose loss costs at most a duplicate delivery after a crash.
    pub fn try_send(&self, op: Op) -> bool {
        self.tx.try_send(op).is_ok()
    }

    /// Room for `count` ops (at most [`CHANNEL_CAPACITY`]), to send them later without
    /// waiting, e.g. while a session lock is held.
    pub async fn reserve(&self, count: usize) -> Result<mpsc::PermitIterator<'_, Op>, NotDurable> {
        self.tx
            .reserve_many(count.min(CHANNEL_CAPACITY))
            .await
            .map_err(|_| NotDurable)
    }

    /// Taken before sending ops that a later [`StoreHandle::barrier_since`] must cover.
    pub fn mark(&self) -> Mark {
        Mark(self.failures.count.load(Ordering::Acquire))
    }

    /// A mark for ops sent already, as far as can be told: while no transaction has
    /// succeeded since the last failure, that failure counts against it.
    pub fn settled_mark(&self) -> Mark {
        Mark(self.failures.settled.load(Ordering::Acquire))
    }

    /// Waits until the ops sent since `since` was taken are committed; an error if any
    /// transaction failed since (theirs or another's: the caller cannot tell).
    pub async fn barrier_since(&self, since: Mark) -> Result<(), NotDurable> {
        let (done, wait) = oneshot::channel();
        self.send(Op::Barrier { since, done }).await?;
        wait.await.map_err(|_| NotDurable)?
    }

    /// A session's queued messages up to `through` (in sequence order), as stored once
    /// everything sent before is committed.
    pub async fn read_queue(
        &self,
        client_id: ByteString,
        through: u64,
    ) -> Result<Vec<StoredDelivery>, NotDurable> {
        let (done, wait) = oneshot::channel();
        self.send(Op::ReadQueue {
            client_id,
            through,
            done,
        })
        .await?;
        wait.await.map_err(|_| NotDurable)?
    }

    /// Transactions that failed since the store was opened.
    pub fn write_failures(&self) -> u64 {
        self.failures.count.load(Ordering::Relaxed)
    }

    pub fn next_message_id(&self) -> i64 {
        self.next_message_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Commits everything sent so far and stops the writer.
    pub async fn close(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Op::Close(done)).await.is_ok() {
            let _ = wait.await;
        }
    }
}

/// Opens (creating if needed) the database, loads its state, and starts the writer.
pub(crate) async fn open(
    config: &PersistenceConfig,
) -> Result<(StoreHandle, Snapshot), StoreError> {
    let path = config.path.display().to_string();
    let mut connection = connect(&config.path, config.synchronous)
        .await
        .map_err(|source| StoreError::Open {
            path: path.clone(),
            error: source,
        })?;
    sqlx::migrate!("./migrations")
        .run(&mut connection)
        .await
        .map_err(|source| StoreError::Migrate {
            path: path.clone(),
            error: source,
        })?;
    let load_error = |source| StoreError::Load {
        path: path.clone(),
        error: source,
    };
    sqlx::query("DELETE FROM messages WHERE NOT EXISTS (SELECT 1 FROM queue WHERE queue.message_id = messages.id)")
        .execute(&mut connection)
        .await
        .map_err(load_error)?;
    let snapshot = load(&mut connection).await.map_err(load_error)?;
    let max_id: Option<i64> = sqlx::query_scalar("SELECT MAX(id) FROM messages")
        .fetch_one(&mut connection)
        .await
        .map_err(load_error)?;
    let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
    let failures = Arc::new(Failures::default());
    let writer = Writer::new(
        connection,
        &config.path,
        config.synchronous,
        failures.clone(),
    );
    tokio::spawn(writer.run(rx));
    let handle = StoreHandle {
        tx,
        next_message_id: Arc::new(AtomicI64::new(max_id.unwrap_or(0) + 1)),
        failures,
    };
    Ok((handle, snapshot))
}

/// The connection's settings; a reopened connection gets the same ones.
fn options(path: &Path, synchronous: Synchronous) -> SqliteConnectOptions {
    SqliteConnectOptions::new()
        .filename(path)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(match synchronous {
            Synchronous::Full => SqliteSynchronous::Full,
            Synchronous::Normal => SqliteSynchronous::Normal,
        })
        .busy_timeout(BUSY_TIMEOUT)
}

async fn connect(path: &Path, synchronous: Synchronous) -> Result<SqliteConnection, sqlx::Error> {
    options(path, synchronous)
        .create_if_missing(true)
        .connect()
        .await
}

/// For a fresh connection to the database opened (and migrated) at start. Never creates
/// the file: a database that vanished is an error, not a new empty state.
fn reopen_options(path: &Path, synchronous: Synchronous) -> SqliteConnectOptions {
    options(path, synchronous).create_if_missing(false)
}

fn qos_of(value: i64) -> Option<QoS> {
    u8::try_from(value)
        .ok()
        .and_then(|value| QoS::try_from(value).ok())
}

/// Subscription option bits of the `options` column.
const NO_LOCAL: i64 = 1;
const RETAIN_AS_PUBLISHED: i64 = 2;

/// A stored message's MQTT 5 properties and expiry (columns `properties`, `expires_at`).
fn read_message_extras(row: &SqliteRow, message: &mut Message) -> Result<(), sqlx::Error> {
    if let Some(bytes) = row.try_get::<Option<Vec<u8>>, _>("properties")? {
        match Properties::from_bytes(Bytes::from(bytes)) {
            Ok(properties) => message.properties = properties,
            Err(error) => {
                tracing::warn!(topic = %message.topic, %error, "stored message properties not understood: left out");
            }
        }
    }
    let expires: Option<i64> = row.try_get("expires_at")?;
    message.expires_at_ms = expires.and_then(|ms| u64::try_from(ms).ok());
    Ok(())
}

/// The `will_*` columns of a session.
fn read_pending_will(row: &SqliteRow) -> Result<Option<(Message, u64)>, sqlx::Error> {
    let (Some(topic), Some(payload), Some(qos), Some(due)) = (
        row.try_get::<Option<String>, _>("will_topic")?,
        row.try_get::<Option<Vec<u8>>, _>("will_payload")?,
        row.try_get::<Option<i64>, _>("will_qos")?,
        row.try_get::<Option<i64>, _>("will_at")?,
    ) else {
        return Ok(None);
    };
    let Some(qos) = qos_of(qos) else {
        return Ok(None);
    };
    let retain = row
        .try_get::<Option<bool>, _>("will_retain")?
        .unwrap_or(false);
    let mut will = Message::new(topic, payload, qos, retain);
    if let Some(bytes) = row.try_get::<Option<Vec<u8>>, _>("properties")? {
        will.properties = Properties::from_bytes(Bytes::from(bytes)).unwrap_or_default();
    }
    Ok(Some((will, u64::try_from(due).unwrap_or(0))))
}

/// The `properties` and `expires_at` columns of a message.
fn message_extras(message: &Message) -> (Option<Vec<u8>>, Option<i64>) {
    let properties =
        (!message.properties.is_empty()).then(|| message.properties.to_bytes().to_vec());
    let expires = message
        .expires_at_ms
        .map(|ms| i64::try_from(ms).unwrap_or(i64::MAX));
    (properties, expires)
}

/// The rows of the queue with their messages (add the conditions).
const QUEUE_ROWS: &str = "SELECT q.client_id, q.seq, q.qos, q.retain, q.pkid, q.released, \
     q.identifiers, m.id, m.topic, m.payload, m.properties, m.expires_at \
     FROM queue q JOIN messages m ON m.id = q.message_id";

/// A row of [`QUEUE_ROWS`]; `messages` shares the body of a message queued for several
/// sessions. `None` for a row with an invalid QoS or sequence number.
fn stored_delivery(
    row: &SqliteRow,
    messages: &mut HashMap<i64, Arc<Message>>,
) -> Result<Option<StoredDelivery>, sqlx::Error> {
    let seq: i64 = row.try_get("seq")?;
    let pkid: Option<i64> = row.try_get("pkid")?;
    let (Some(qos), Ok(seq)) = (qos_of(row.try_get("qos")?), u64::try_from(seq)) else {
        return Ok(None);
    };
    let message_id: i64 = row.try_get("id")?;
    let message = match messages.get(&message_id) {
        Some(message) => message.clone(),
        None => {
            let topic: String = row.try_get("topic")?;
            let payload: Vec<u8> = row.try_get("payload")?;
            let mut message = Message::new(topic, payload, qos, false);
            read_message_extras(row, &mut message)?;
            let message = Arc::new(message);
            messages.insert(message_id, message.clone());
            message
        }
    };
    Ok(Some(StoredDelivery {
        seq,
        message,
        qos,
        retain: row.try_get::<bool, _>("retain")?,
        pkid: pkid
            .and_then(|pkid| u16::try_from(pkid).ok())
            .filter(|&pkid| pkid != 0),
        released: row.try_get::<bool, _>("released")?,
        identifiers: row
            .try_get::<Option<String>, _>("identifiers")?
            .unwrap_or_default()
            .split(',')
            .filter_map(|id| id.parse().ok())
            .collect(),
    }))
}

/// A session's queued, not yet sent, messages up to `through`.
async fn read_queue(
    connection: &mut SqliteConnection,
    client_id: &str,
    through: u64,
) -> Result<Vec<StoredDelivery>, sqlx::Error> {
    let rows = sqlx::query(&format!(
        "{QUEUE_ROWS} WHERE q.client_id = ? AND q.seq <= ? AND q.pkid IS NULL ORDER BY q.seq"
    ))
    .bind(client_id)
    .bind(i64::try_from(through).unwrap_or(i64::MAX))
    .fetch_all(&mut *connection)
    .await?;
    let mut messages = HashMap::new();
    let mut read = Vec::with_capacity(rows.len());
    for row in rows {
        read.extend(stored_delivery(&row, &mut messages)?);
    }
    Ok(read)
}

async fn load(connection: &mut SqliteConnection) -> Result<Snapshot, sqlx::Error> {
    let mut snapshot = Snapshot::default();
    for row in sqlx::query("SELECT topic, payload, qos, properties, expires_at FROM retained")
        .fetch_all(&mut *connection)
        .await?
    {
        let topic: String = row.try_get("topic")?;
        let payload: Vec<u8> = row.try_get("payload")?;
        let Some(qos) = qos_of(row.try_get("qos")?) else {
            tracing::warn!(%topic, "skipping a stored retained message with an invalid QoS");
            continue;
        };
        let mut message = Message::new(topic, payload, qos, true);
        read_message_extras(&row, &mut message)?;
        snapshot.retained.push(message);
    }
    for row in sqlx::query(
        "SELECT client_id, owner, expiry, absent_since, will_topic, will_payload, will_qos, \
         will_retain, will_properties AS properties, will_at FROM sessions",
    )
    .fetch_all(&mut *connection)
    .await?
    {
        let client_id: String = row.try_get("client_id")?;
        let session = snapshot.sessions.entry(client_id.into()).or_default();
        session.owner = row.try_get("owner")?;
        let expiry: Option<i64> = row.try_get("expiry")?;
        session.expiry = expiry.map_or(u32::MAX, |seconds| {
            u32::try_from(seconds).unwrap_or(u32::MAX)
        });
        let absent: Option<i64> = row.try_get("absent_since")?;
        session.absent_since_ms = absent.and_then(|ms| u64::try_from(ms).ok());
        session.pending_will = read_pending_will(&row)?;
    }
    for row in sqlx::query("SELECT client_id, filter, qos, options, identifier FROM subscriptions")
        .fetch_all(&mut *connection)
        .await?
    {
        let client_id: String = row.try_get("client_id")?;
        let filter: String = row.try_get("filter")?;
        let Some(qos) = qos_of(row.try_get("qos")?) else {
            continue;
        };
        let options: i64 = row.try_get("options")?;
        let identifier: i64 = row.try_get("identifier")?;
        let subscription = Subscription {
            qos,
            no_local: options & NO_LOCAL != 0,
            retain_as_published: options & RETAIN_AS_PUBLISHED != 0,
            identifier: u32::try_from(identifier).unwrap_or(0),
        };
        if let Some(session) = snapshot.sessions.get_mut(client_id.as_str()) {
            session.subscriptions.push((filter.into(), subscription));
        }
    }
    let mut messages = HashMap::new();
    let rows = sqlx::query(&format!(
        "{QUEUE_ROWS} WHERE q.pkid IS NOT NULL ORDER BY q.client_id, q.seq"
    ))
    .fetch_all(&mut *connection)
    .await?;
    for row in rows {
        let client_id: String = row.try_get("client_id")?;
        if let (Some(session), Some(delivery)) = (
            snapshot.sessions.get_mut(client_id.as_str()),
            stored_delivery(&row, &mut messages)?,
        ) {
            session.inflight.push(delivery);
        }
    }
    for row in sqlx::query(
        "SELECT q.client_id, q.seq, length(CAST(m.topic AS BLOB)) + length(m.payload) AS size \
         FROM queue q JOIN messages m ON m.id = q.message_id WHERE q.pkid IS NULL \
         ORDER BY q.client_id, q.seq",
    )
    .fetch_all(&mut *connection)
    .await?
    {
        let client_id: String = row.try_get("client_id")?;
        let (Ok(seq), Ok(size)) = (
            u64::try_from(row.try_get::<i64, _>("seq")?),
            usize::try_from(row.try_get::<i64, _>("size")?),
        ) else {
            continue;
        };
        if let Some(session) = snapshot.sessions.get_mut(client_id.as_str()) {
            session.queued.push((seq, size));
        }
    }
    for row in sqlx::query("SELECT client_id, pkid FROM incoming_qos2")
        .fetch_all(&mut *connection)
        .await?
    {
        let client_id: String = row.try_get("client_id")?;
        let pkid: i64 = row.try_get("pkid")?;
        if let (Some(session), Ok(pkid)) = (
            snapshot.sessions.get_mut(client_id.as_str()),
            u16::try_from(pkid),
        ) {
            session.incoming_qos2.push(pkid);
        }
    }
    Ok(snapshot)
}

impl Op {
    /// Whether the op changes the database (barriers and `Close` do not).
    fn changes(&self) -> bool {
        !matches!(
            self,
            Op::Barrier { .. } | Op::ReadQueue { .. } | Op::Close(_)
        )
    }
}

/// The one task that writes: applies what has accumulated in one transaction and answers
/// the barriers among it.
struct Writer {
    connection: ReopeningConnection,
    failures: Arc<Failures>,
    /// Transactions failed so far (only the writer adds to `failures.count`).
    failed: u64,
    /// Changes lost since the first failed transaction.
    log: OutageLog<u64>,
}

impl Writer {
    fn new(
        connection: SqliteConnection,
        path: &Path,
        synchronous: Synchronous,
        failures: Arc<Failures>,
    ) -> Self {
        Writer {
            connection: ReopeningConnection::new(connection, reopen_options(path, synchronous)),
            failed: failures.count.load(Ordering::Relaxed),
            failures,
            log: OutageLog::new(FAILURE_LOG_INTERVAL),
        }
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Op>) {
        let mut batch = Vec::with_capacity(64);
        while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
            if let Some(done) = self.apply(&mut batch).await {
                rx.close();
                self.finish().await;
                let _ = done.send(());
                return;
            }
        }
        self.finish().await;
    }

    /// Writes the batch's changes in one transaction and answers its barriers (a barrier
    /// alone is answered too: it fails if an earlier transaction failed after its mark).
    /// Returns the sender of a `Close` in the batch.
    async fn apply(&mut self, batch: &mut Vec<Op>) -> Option<oneshot::Sender<()>> {
        let changes = batch.iter().filter(|op| op.changes()).count();
        if changes > 0 {
            match self.transaction(batch).await {
                Ok(()) => self.succeeded(),
                Err(error) => self.failed(&error, changes).await,
            }
        }
        let mut close = None;
        for op in batch.drain(..) {
            match op {
                Op::Barrier { since, done } => {
                    let _ = done.send(since.verdict(self.failed));
                }
                Op::ReadQueue {
                    client_id,
                    through,
                    done,
                } => {
                    let read = match self.connection.get().await {
                        Ok(connection) => read_queue(connection, &client_id, through).await,
                        Err(error) => Err(error),
                    };
                    let _ = done.send(read.map_err(|error| {
                        tracing::error!(%client_id, "reading a queue back from the persistence database: {error}");
                        NotDurable
                    }));
                }
                Op::Close(done) => close = Some(done),
                _ => {}
            }
        }
        close
    }

    async fn transaction(&mut self, batch: &[Op]) -> Result<(), sqlx::Error> {
        let mut tx = self.connection.get().await?.begin().await?;
        for op in batch {
            if let Err(error) = apply_one(&mut tx, op).await {
                // Explicitly rather than on drop, so that `settle` sees the outcome.
                let _ = tx.rollback().await;
                return Err(error);
            }
        }
        tx.commit().await
    }

    fn succeeded(&mut self) {
        self.failures.settled.store(self.failed, Ordering::Release);
        if let Some(outage) = self.log.recovered(Instant::now()) {
            tracing::info!(
                failures = outage.failures,
                changes_lost = outage.lost,
                "persistence writes succeed again after {}s",
                outage.lasting.as_secs()
            );
        }
    }

    async fn failed(&mut self, error: &sqlx::Error, changes: usize) {
        self.failed += 1;
        self.failures.count.store(self.failed, Ordering::Release);
        self.connection.settle().await;
        let Some(report) = self.log.failed(Fault::of(error), Instant::now(), |lost| {
            *lost += changes as u64
        }) else {
            return;
        };
        tracing::error!(
            failures = report.failures,
            changes_lost = report.lost,
            held_back = report.repeats,
            lasting_s = report.lasting.as_secs(),
            "persistence write failed: {error}; what needs it stored is not acknowledged \
             (the client is disconnected and sends it again) until writes succeed; next line \
             in {}s at the earliest",
            FAILURE_LOG_INTERVAL.as_secs()
        );
    }

    async fn finish(self) {
        if let Some(connection) = self.connection.into_inner() {
            if let Err(error) = connection.close().await {
                tracing::warn!("closing the persistence database: {error}");
            }
        }
    }
}

/// The `expiry` column: NULL for a session that never expires.
fn stored_expiry(expiry: u32) -> Option<i64> {
    (expiry != u32::MAX).then_some(i64::from(expiry))
}

async fn apply_one(tx: &mut SqliteConnection, op: &Op) -> Result<(), sqlx::Error> {
    let seq = |seq: &u64| i64::try_from(*seq).unwrap_or(i64::MAX);
    match op {
        Op::SetRetained { message } => {
            let (properties, expires) = message_extras(message);
            sqlx::query("INSERT OR REPLACE INTO retained (topic, payload, qos, properties, expires_at) VALUES (?, ?, ?, ?, ?)")
                .bind(&*message.topic)
                .bind(&message.payload[..])
                .bind(message.qos as u8)
                .bind(properties)
                .bind(expires)
                .execute(&mut *tx)
                .await?;
        }
        Op::ClearRetained { topic } => {
            sqlx::query("DELETE FROM retained WHERE topic = ?")
                .bind(&**topic)
                .execute(&mut *tx)
                .await?;
        }
        Op::Session {
            client_id,
            owner,
            expiry,
        } => {
            sqlx::query(
                "INSERT INTO sessions (client_id, owner, expiry, absent_since) VALUES (?, ?, ?, NULL) \
                 ON CONFLICT (client_id) DO UPDATE SET owner = coalesce(excluded.owner, owner), \
                 expiry = excluded.expiry, absent_since = NULL, will_topic = NULL, \
                 will_payload = NULL, will_qos = NULL, will_retain = NULL, \
                 will_properties = NULL, will_at = NULL",
            )
            .bind(&**client_id)
            .bind(owner)
            .bind(stored_expiry(*expiry))
            .execute(&mut *tx)
            .await?;
        }
        Op::DelayWill {
            client_id,
            will,
            due_ms,
        } => {
            let (properties, _) = message_extras(will);
            sqlx::query(
                "UPDATE sessions SET will_topic = ?, will_payload = ?, will_qos = ?, \
                 will_retain = ?, will_properties = ?, will_at = ? WHERE client_id = ?",
            )
            .bind(&*will.topic)
            .bind(&will.payload[..])
            .bind(will.qos as u8)
            .bind(will.retain)
            .bind(properties)
            .bind(i64::try_from(*due_ms).unwrap_or(i64::MAX))
            .bind(&**client_id)
            .execute(&mut *tx)
            .await?;
        }
        Op::ClearWill { client_id } => {
            sqlx::query(
                "UPDATE sessions SET will_topic = NULL, will_payload = NULL, will_qos = NULL, \
                 will_retain = NULL, will_properties = NULL, will_at = NULL WHERE client_id = ?",
            )
            .bind(&**client_id)
            .execute(&mut *tx)
            .await?;
        }
        Op::SessionAbsent {
            client_id,
            since_ms,
            expiry,
        } => {
            sqlx::query("UPDATE sessions SET absent_since = ?, expiry = ? WHERE client_id = ?")
                .bind(i64::try_from(*since_ms).unwrap_or(i64::MAX))
                .bind(stored_expiry(*expiry))
                .bind(&**client_id)
                .execute(&mut *tx)
                .await?;
        }
        Op::DeleteSession { client_id } => {
            for statement in [
                "DELETE FROM sessions WHERE client_id = ?",
                "DELETE FROM subscriptions WHERE client_id = ?",
                "DELETE FROM queue WHERE client_id = ?",
                "DELETE FROM incoming_qos2 WHERE client_id = ?",
            ] {
                sqlx::query(statement)
                    .bind(&**client_id)
                    .execute(&mut *tx)
                    .await?;
            }
            sqlx::query("DELETE FROM messages WHERE NOT EXISTS (SELECT 1 FROM queue WHERE queue.message_id = messages.id)")
                .execute(&mut *tx)
                .await?;
        }
        Op::Subscribe {
            client_id,
            filter,
            subscription,
        } => {
            let options = if subscription.no_local { NO_LOCAL } else { 0 }
                | if subscription.retain_as_published {
                    RETAIN_AS_PUBLISHED
                } else {
                    0
                };
            sqlx::query(
                "INSERT OR REPLACE INTO subscriptions (client_id, filter, qos, options, identifier) VALUES (?, ?, ?, ?, ?)",
            )
            .bind(&**client_id)
            .bind(&**filter)
            .bind(subscription.qos as u8)
            .bind(options)
            .bind(i64::from(subscription.identifier))
            .execute(&mut *tx)
            .await?;
        }
        Op::Unsubscribe { client_id, filter } => {
            sqlx::query("DELETE FROM subscriptions WHERE client_id = ? AND filter = ?")
                .bind(&**client_id)
                .bind(&**filter)
                .execute(&mut *tx)
                .await?;
        }
        Op::Message { id, message } => {
            let (properties, expires) = message_extras(message);
            sqlx::query("INSERT OR IGNORE INTO messages (id, topic, payload, properties, expires_at) VALUES (?, ?, ?, ?, ?)")
                .bind(*id)
                .bind(&*message.topic)
                .bind(&message.payload[..])
                .bind(properties)
                .bind(expires)
                .execute(&mut *tx)
                .await?;
        }
        Op::Enqueue {
            client_id,
            seq: position,
            message_id,
            qos,
            retain,
            identifiers,
        } => {
            let identifiers = (!identifiers.is_empty()).then(|| {
                identifiers
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            });
            sqlx::query("INSERT OR REPLACE INTO queue (client_id, seq, message_id, qos, retain, identifiers) VALUES (?, ?, ?, ?, ?, ?)")
                .bind(&**client_id)
                .bind(seq(position))
                .bind(*message_id)
                .bind(*qos as u8)
                .bind(*retain)
                .bind(identifiers)
                .execute(&mut *tx)
                .await?;
        }
        Op::Sent {
            client_id,
            seq: position,
            pkid,
        } => {
            sqlx::query("UPDATE queue SET pkid = ? WHERE client_id = ? AND seq = ?")
                .bind(*pkid)
                .bind(&**client_id)
                .bind(seq(position))
                .execute(&mut *tx)
                .await?;
        }
        Op::Released {
            client_id,
            seq: position,
        } => {
            sqlx::query("UPDATE queue SET released = 1 WHERE client_id = ? AND seq = ?")
                .bind(&**client_id)
                .bind(seq(position))
                .execute(&mut *tx)
                .await?;
        }
        Op::Completed {
            client_id,
            seq: position,
        } => {
            let message_id: Option<i64> = sqlx::query_scalar(
                "DELETE FROM queue WHERE client_id = ? AND seq = ? RETURNING message_id",
            )
            .bind(&**client_id)
            .bind(seq(position))
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(message_id) = message_id {
                sqlx::query("DELETE FROM messages WHERE id = ? AND NOT EXISTS (SELECT 1 FROM queue WHERE message_id = ?)")
                    .bind(message_id)
                    .bind(message_id)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        Op::IncomingQos2 { client_id, pkid } => {
            sqlx::query("INSERT OR IGNORE INTO incoming_qos2 (client_id, pkid) VALUES (?, ?)")
                .bind(&**client_id)
                .bind(*pkid)
                .execute(&mut *tx)
                .await?;
        }
        Op::IncomingReleased { client_id, pkid } => {
            sqlx::query("DELETE FROM incoming_qos2 WHERE client_id = ? AND pkid = ?")
                .bind(&**client_id)
                .bind(*pkid)
                .execute(&mut *tx)
                .await?;
        }
        Op::Barrier { .. } | Op::ReadQueue { .. } | Op::Close(_) => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn config(dir: &tempfile::TempDir) -> PersistenceConfig {
        PersistenceConfig {
            path: dir.path().join("broker.db"),
            synchronous: Synchronous::Normal,
        }
    }

    #[tokio::test]
    async fn state_survives_reopen() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (store, snapshot) = open(&config(&dir)).await.expect("opens");
        assert!(snapshot.retained.is_empty() && snapshot.sessions.is_empty());
        let client: ByteString = "c1".into();
        let id = store.next_message_id();
        let ops = vec![
            Op::SetRetained {
                message: Arc::new(with_extras(Message::new(
                    "r/1",
                    "one",
                    QoS::AtLeastOnce,
                    true,
                ))),
            },
            Op::SetRetained {
                message: Arc::new(Message::new("r/2", "two", QoS::AtMostOnce, true)),
            },
            Op::ClearRetained {
                topic: "r/2".into(),
            },
            Op::Session {
                client_id: client.clone(),
                owner: Some("user:alice".into()),
                expiry: 3600,
            },
            Op::SessionAbsent {
                client_id: client.clone(),
                since_ms: 1_000,
                expiry: 7200,
            },
            Op::Subscribe {
                client_id: client.clone(),
                filter: "a/#".into(),
                subscription: subscription_a(),
            },
            Op::Subscribe {
                client_id: client.clone(),
                filter: "b".into(),
                subscription: QoS::AtMostOnce.into(),
            },
            Op::Unsubscribe {
                client_id: client.clone(),
                filter: "b".into(),
            },
            Op::Message {
                id,
                message: Arc::new(with_extras(Message::new(
                    "a/x",
                    "hello",
                    QoS::ExactlyOnce,
                    false,
                ))),
            },
            Op::Enqueue {
                client_id: client.clone(),
                seq: 1,
                message_id: id,
                qos: QoS::AtLeastOnce,
                retain: false,
                identifiers: vec![],
            },
            Op::Enqueue {
                client_id: client.clone(),
                seq: 2,
                message_id: id,
                qos: QoS::ExactlyOnce,
                retain: false,
                identifiers: vec![5, 268_435_455],
            },
            Op::Enqueue {
                client_id: client.clone(),
                seq: 3,
                message_id: id,
                qos: QoS::ExactlyOnce,
                retain: true,
                identifiers: vec![],
            },
            Op::Enqueue {
                client_id: client.clone(),
                seq: 4,
                message_id: id,
                qos: QoS::AtLeastOnce,
                retain: false,
                identifiers: vec![9],
            },
            Op::Sent {
                client_id: client.clone(),
                seq: 1,
                pkid: 10,
            },
            Op::Sent {
                client_id: client.clone(),
                seq: 2,
                pkid: 11,
            },
            Op::Released {
                client_id: client.clone(),
                seq: 2,
            },
            Op::Completed {
                client_id: client.clone(),
                seq: 1,
            },
            Op::IncomingQos2 {
                client_id: client.clone(),
                pkid: 7,
            },
            Op::IncomingQos2 {
                client_id: client.clone(),
                pkid: 8,
            },
            Op::IncomingReleased {
                client_id: client.clone(),
                pkid: 7,
            },
        ];
        for op in ops {
            store.send(op).await.expect("sends");
        }
        store
            .barrier_since(store.settled_mark())
            .await
            .expect("durable");
        store.close().await;

        let (store, snapshot) = open(&config(&dir)).await.expect("reopens");
        assert_eq!(snapshot.retained.len(), 1);
        assert_eq!(snapshot.retained[0].topic, "r/1");
        assert_eq!(snapshot.retained[0].qos, QoS::AtLeastOnce);
        assert_eq!(
            snapshot.retained[0],
            with_extras(Message::new("r/1", "one", QoS::AtLeastOnce, true))
        );
        let session = snapshot.sessions.get("c1").expect("session restored");
        assert_eq!(session.owner.as_deref(), Some("user:alice"));
        assert_eq!(
            (session.expiry, session.absent_since_ms),
            (7200, Some(1_000))
        );
        assert_eq!(
            session.subscriptions,
            vec![("a/#".into(), subscription_a())]
        );
        let inflight: Vec<_> = session
            .inflight
            .iter()
            .map(|d| (d.seq, d.qos, d.retain, d.pkid, d.released))
            .collect();
        assert_eq!(inflight, vec![(2, QoS::ExactlyOnce, false, Some(11), true)]);
        let body = &session.inflight[0].message;
        assert_eq!(&body.payload[..], b"hello");
        assert_eq!(
            body.properties,
            with_extras(Message::new("", "", QoS::AtMostOnce, false)).properties
        );
        assert_eq!(body.expires_at_ms, Some(1_700_000_000_000));
        assert_eq!(session.inflight[0].identifiers, vec![5, 268_435_455]);
        // Not sent yet: only counted at start ("a/x" and "hello"), read when asked for.
        assert_eq!(session.queued, vec![(3, 8), (4, 8)]);
        let read = store.read_queue(client.clone(), 3).await.expect("reads");
        let read: Vec<_> = read
            .iter()
            .map(|d| (d.seq, d.qos, d.retain, d.pkid, d.identifiers.clone()))
            .collect();
        assert_eq!(read, vec![(3, QoS::ExactlyOnce, true, None, vec![])]);
        let read = store.read_queue(client.clone(), 4).await.expect("reads");
        assert_eq!(read.len(), 2);
        assert_eq!(read[1].identifiers, vec![9]);
        assert_eq!(read[1].message.expires_at_ms, Some(1_700_000_000_000));
        assert!(
            Arc::ptr_eq(&read[0].message, &read[1].message),
            "one body, shared"
        );
        assert_eq!(session.incoming_qos2, vec![8]);
        assert!(
            store.next_message_id() > id,
            "message ids keep growing across restarts"
        );

        store
            .send(Op::DeleteSession { client_id: client })
            .await
            .expect("sends");
        store.close().await;
        let (_store, snapshot) = open(&config(&dir)).await.expect("reopens");
        assert!(snapshot.sessions.is_empty());
        assert_eq!(snapshot.retained.len(), 1);
    }

    #[tokio::test]
    async fn a_delayed_will_waits_in_its_session_until_cleared() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (store, _) = open(&config(&dir)).await.expect("opens");
        let session = |id: &str| Op::Session {
            client_id: id.into(),
            owner: None,
            expiry: 60,
        };
        let will = Arc::new(with_extras(Message::new(
            "w/t",
            "gone",
            QoS::AtLeastOnce,
            true,
        )));
        for op in [session("a"), session("b"), session("c")] {
            store.send(op).await.expect("sends");
        }
        for id in ["a", "b", "c"] {
            let op = Op::DelayWill {
                client_id: id.into(),
                will: will.clone(),
                due_ms: 1_234,
            };
            store.send(op).await.expect("sends");
        }
        // b's client came back, c's will was published.
        store.send(session("b")).await.expect("sends");
        let cleared = Op::ClearWill {
            client_id: "c".into(),
        };
        store.send(cleared).await.expect("sends");
        store.close().await;
        let (_store, snapshot) = open(&config(&dir)).await.expect("reopens");
        let (stored, due) = snapshot.sessions["a"]
            .pending_will
            .clone()
            .expect("a's will waits");
        assert_eq!(due, 1_234);
        assert_eq!(
            (
                &*stored.topic,
                &stored.payload[..],
                stored.qos,
                stored.retain
            ),
            ("w/t", &b"gone"[..], QoS::AtLeastOnce, true)
        );
        assert_eq!(stored.properties, will.properties);
        assert!(snapshot.sessions["b"].pending_will.is_none());
        assert!(snapshot.sessions["c"].pending_will.is_none());
    }

    #[tokio::test]
    async fn bodies_are_collected_when_no_queue_refers_to_them() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (store, _) = open(&config(&dir)).await.expect("opens");
        let client: ByteString = "c".into();
        let id = store.next_message_id();
        store
            .send(Op::Session {
                client_id: client.clone(),
                owner: Some("anonymous".into()),
                expiry: u32::MAX,
            })
            .await
            .expect("sends");
        store
            .send(Op::Message {
                id,
                message: Arc::new(Message::new("t", "x", QoS::AtLeastOnce, false)),
            })
            .await
            .expect("sends");
        store
            .send(Op::Enqueue {
                client_id: client.clone(),
                seq: 1,
                message_id: id,
                qos: QoS::AtLeastOnce,
                retain: false,
                identifiers: vec![],
            })
            .await
            .expect("sends");
        store
            .send(Op::Completed {
                client_id: client,
                seq: 1,
            })
            .await
            .expect("sends");
        store
            .barrier_since(store.settled_mark())
            .await
            .expect("durable");
        store.close().await;
        let mut connection = connect(&dir.path().join("broker.db"), Synchronous::Normal)
            .await
            .expect("connects");
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM messages")
            .fetch_one(&mut connection)
            .await
            .expect("counts");
        assert_eq!(count, 0);
    }

    fn barrier(since: Mark) -> (Op, oneshot::Receiver<Result<(), NotDurable>>) {
        let (done, answer) = oneshot::channel();
        (Op::Barrier { since, done }, answer)
    }

    fn retained(topic: &str, payload: Vec<u8>) -> Op {
        Op::SetRetained {
            message: Arc::new(Message::new(topic, payload, QoS::AtLeastOnce, true)),
        }
    }

    /// `message` with MQTT 5 properties and an expiry, which must survive a restart.
    fn with_extras(mut message: Message) -> Message {
        message.properties = Properties::new()
            .with(fieldbridge_mqtt::codec::Property::UserProperty((
                "k".into(),
                "v".into(),
            )))
            .with(fieldbridge_mqtt::codec::Property::CorrelationData(
                Bytes::from_static(b"\x00\x01"),
            ));
        message.expires_at_ms = Some(1_700_000_000_000);
        message
    }

    fn subscription_a() -> Subscription {
        Subscription {
            qos: QoS::ExactlyOnce,
            no_local: true,
            retain_as_published: true,
            identifier: 42,
        }
    }

    /// A writer on a migrated database, and the database's path.
    async fn writer_on(
        dir: &tempfile::TempDir,
        prepare: &[&str],
    ) -> (Writer, Arc<Failures>, PathBuf) {
        let config = config(dir);
        let (store, _) = open(&config).await.expect("opens");
        store.close().await;
        let mut connection = connect(&config.path, config.synchronous)
            .await
            .expect("connects");
        for statement in prepare {
            sqlx::query(statement)
                .execute(&mut connection)
                .await
                .expect("prepares");
        }
        let failures = Arc::new(Failures::default());
        let writer = Writer::new(
            connection,
            &config.path,
            config.synchronous,
            failures.clone(),
        );
        (writer, failures, config.path)
    }

    /// What another connection sees: the retained topics, and whether it can write.
    async fn seen_from_outside(path: &Path) -> (Vec<String>, bool) {
        let mut other = connect(path, Synchronous::Normal).await.expect("connects");
        let topics = sqlx::query_scalar("SELECT topic FROM retained ORDER BY topic")
            .fetch_all(&mut other)
            .await
            .expect("reads");
        sqlx::query("PRAGMA busy_timeout = 0")
            .execute(&mut other)
            .await
            .expect("sets");
        let writable = sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut other)
            .await
            .is_ok();
        other.close().await.expect("closes");
        (topics, writable)
    }

    #[test]
    fn a_barrier_fails_once_a_transaction_failed_after_its_mark() {
        assert!(Mark(0).verdict(0).is_ok());
        assert!(Mark(0).verdict(1).is_err());
        assert!(Mark(3).verdict(3).is_ok());
        assert!(Mark(2).verdict(3).is_err());
    }

    /// A database that cannot grow (as on a full disk): the transaction fails, its barrier
    /// and any later barrier marked before the failure fail, barriers marked after succeed,
    /// and writes that fit are committed where other connections see them.
    #[tokio::test]
    async fn failed_transactions_fail_every_barrier_that_may_depend_on_them() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (mut writer, failures, path) = writer_on(&dir, &[]).await;
        let pages: i64 = sqlx::query_scalar("PRAGMA page_count")
            .fetch_one(writer.connection.get().await.expect("open"))
            .await
            .expect("counts pages");
        sqlx::query(&format!("PRAGMA max_page_count = {}", pages + 8))
            .execute(writer.connection.get().await.expect("open"))
            .await
            .expect("caps");
        let before = Mark(failures.count.load(Ordering::Relaxed));

        let (same, same_answer) = barrier(before);
        let mut batch = vec![retained("big", vec![7; 1 << 20]), same];
        assert!(writer.apply(&mut batch).await.is_none());
        assert!(same_answer.await.expect("answered").is_err());
        assert_eq!(failures.count.load(Ordering::Relaxed), 1);
        let after = Mark(1);

        // Barriers alone, and barriers with writes that succeed.
        let (alone, alone_answer) = barrier(before);
        let (fresh, fresh_answer) = barrier(after);
        writer.apply(&mut vec![alone, fresh]).await;
        assert!(alone_answer.await.expect("answered").is_err());
        assert!(fresh_answer.await.expect("answered").is_ok());
        let (old, old_answer) = barrier(before);
        let (new, new_answer) = barrier(after);
        writer
            .apply(&mut vec![retained("small", b"x".to_vec()), old, new])
            .await;
        assert!(old_answer.await.expect("answered").is_err());
        assert!(new_answer.await.expect("answered").is_ok());
        assert_eq!(failures.settled.load(Ordering::Relaxed), 1);
        assert_eq!(
            seen_from_outside(&path).await,
            (vec!["small".to_owned()], true)
        );
        writer.finish().await;
    }

    /// The state a full disk leaves behind: sqlx counts a transaction SQLite no longer has,
    /// so the next BEGIN is a SAVEPOINT and a failed write's ROLLBACK TO keeps a transaction
    /// open for good. The writer replaces that connection, and later writes commit.
    #[tokio::test]
    async fn a_connection_left_inside_a_transaction_is_replaced() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (mut writer, failures, path) = writer_on(&dir, &[]).await;
        let connection = writer.connection.get().await.expect("open");
        let mut tx = connection.begin().await.expect("begins");
        sqlx::query("ROLLBACK")
            .execute(&mut *tx)
            .await
            .expect("ends SQLite's transaction behind sqlx's back");
        drop(tx);
        // Runs the queued ROLLBACK, which fails: no transaction is active.
        connection.ping().await.expect("pings");
        assert!(connection.is_in_transaction(), "sqlx still counts it");
        // Writes fail on this connection only (a reopened one can write).
        sqlx::query("PRAGMA query_only = ON")
            .execute(&mut *connection)
            .await
            .expect("sets");

        let (first, first_answer) = barrier(Mark(0));
        writer
            .apply(&mut vec![retained("refused", b"x".to_vec()), first])
            .await;
        assert!(first_answer.await.expect("answered").is_err());
        assert_eq!(failures.count.load(Ordering::Relaxed), 1);
        let connection = writer.connection.get().await.expect("reopened");
        assert!(!connection.is_in_transaction());

        let (next, next_answer) = barrier(Mark(1));
        writer
            .apply(&mut vec![retained("stored", b"y".to_vec()), next])
            .await;
        assert!(next_answer.await.expect("answered").is_ok());
        assert_eq!(
            seen_from_outside(&path).await,
            (vec!["stored".to_owned()], true),
            "committed, and no transaction left open"
        );
        writer.finish().await;
    }
}
