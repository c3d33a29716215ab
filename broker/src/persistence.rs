//! Durable broker state in SQLite (WAL): retained messages and persistent sessions (their
//! subscriptions, queued and in-flight messages, and QoS 2 identifiers awaiting PUBREL).
//!
//! All writes go through one writer task as [`Op`]s on a bounded channel; it applies what
//! has accumulated in one transaction (group commit). Whoever must not answer its client
//! before its writes are durable (a PUBACK, PUBREC or SUBACK) sends a barrier after them
//! and waits for it. Ops of one session are sent while its lock is held, so they reach the
//! database in the order they happened.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use bytestring::ByteString;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqliteSynchronous};
use sqlx::{ConnectOptions, Connection, Row};
use tokio::sync::{mpsc, oneshot};

use crate::config::{PersistenceConfig, Synchronous};
use crate::message::Message;
use fieldbridge_mqtt::codec::QoS;

/// Ops waiting for the writer; senders wait (and so slow down) when it is full.
pub(crate) const CHANNEL_CAPACITY: usize = 8192;
/// Ops applied in one transaction at most.
const MAX_BATCH: usize = 2048;

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

/// One change to the durable state.
#[derive(Debug)]
pub(crate) enum Op {
    SetRetained {
        topic: ByteString,
        payload: Bytes,
        qos: QoS,
    },
    ClearRetained {
        topic: ByteString,
    },
    Session {
        client_id: ByteString,
    },
    DeleteSession {
        client_id: ByteString,
    },
    Subscribe {
        client_id: ByteString,
        filter: ByteString,
        qos: QoS,
    },
    Unsubscribe {
        client_id: ByteString,
        filter: ByteString,
    },
    Message {
        id: i64,
        topic: ByteString,
        payload: Bytes,
    },
    Enqueue {
        client_id: ByteString,
        seq: u64,
        message_id: i64,
        qos: QoS,
        retain: bool,
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
    /// Answered once every op sent before it is committed.
    Barrier(oneshot::Sender<Result<(), NotDurable>>),
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
}

#[derive(Debug, Clone, Default)]
pub struct StoredSession {
    pub subscriptions: Vec<(ByteString, QoS)>,
    pub queue: Vec<StoredDelivery>,
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

    /// Waits until every op sent before is committed.
    pub async fn barrier(&self) -> Result<(), NotDurable> {
        let (done, wait) = oneshot::channel();
        self.send(Op::Barrier(done)).await?;
        wait.await.map_err(|_| NotDurable)?
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
    tokio::spawn(write_loop(connection, rx));
    let handle = StoreHandle {
        tx,
        next_message_id: Arc::new(AtomicI64::new(max_id.unwrap_or(0) + 1)),
    };
    Ok((handle, snapshot))
}

async fn connect(path: &Path, synchronous: Synchronous) -> Result<SqliteConnection, sqlx::Error> {
    SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(match synchronous {
            Synchronous::Full => SqliteSynchronous::Full,
            Synchronous::Normal => SqliteSynchronous::Normal,
        })
        .busy_timeout(Duration::from_secs(5))
        .connect()
        .await
}

fn qos_of(value: i64) -> Option<QoS> {
    u8::try_from(value)
        .ok()
        .and_then(|value| QoS::try_from(value).ok())
}

async fn load(connection: &mut SqliteConnection) -> Result<Snapshot, sqlx::Error> {
    let mut snapshot = Snapshot::default();
    for row in sqlx::query("SELECT topic, payload, qos FROM retained")
        .fetch_all(&mut *connection)
        .await?
    {
        let topic: String = row.try_get("topic")?;
        let payload: Vec<u8> = row.try_get("payload")?;
        let Some(qos) = qos_of(row.try_get("qos")?) else {
            tracing::warn!(%topic, "skipping a stored retained message with an invalid QoS");
            continue;
        };
        snapshot
            .retained
            .push(Message::new(topic, payload, qos, true));
    }
    for row in sqlx::query("SELECT client_id FROM sessions")
        .fetch_all(&mut *connection)
        .await?
    {
        let client_id: String = row.try_get("client_id")?;
        snapshot.sessions.entry(client_id.into()).or_default();
    }
    for row in sqlx::query("SELECT client_id, filter, qos FROM subscriptions")
        .fetch_all(&mut *connection)
        .await?
    {
        let client_id: String = row.try_get("client_id")?;
        let filter: String = row.try_get("filter")?;
        let Some(qos) = qos_of(row.try_get("qos")?) else {
            continue;
        };
        if let Some(session) = snapshot.sessions.get_mut(client_id.as_str()) {
            session.subscriptions.push((filter.into(), qos));
        }
    }
    let mut messages: HashMap<i64, Arc<Message>> = HashMap::new();
    let rows = sqlx::query(
        "SELECT q.client_id, q.seq, q.qos, q.retain, q.pkid, q.released, m.id, m.topic, m.payload \
         FROM queue q JOIN messages m ON m.id = q.message_id ORDER BY q.client_id, q.seq",
    )
    .fetch_all(&mut *connection)
    .await?;
    for row in rows {
        let client_id: String = row.try_get("client_id")?;
        let seq: i64 = row.try_get("seq")?;
        let pkid: Option<i64> = row.try_get("pkid")?;
        let (Some(qos), Ok(seq)) = (qos_of(row.try_get("qos")?), u64::try_from(seq)) else {
            continue;
        };
        let message_id: i64 = row.try_get("id")?;
        let message = match messages.get(&message_id) {
            Some(message) => message.clone(),
            None => {
                let topic: String = row.try_get("topic")?;
                let payload: Vec<u8> = row.try_get("payload")?;
                let message = Arc::new(Message::new(topic, payload, qos, false));
                messages.insert(message_id, message.clone());
                message
            }
        };
        let Some(session) = snapshot.sessions.get_mut(client_id.as_str()) else {
            continue;
        };
        session.queue.push(StoredDelivery {
            seq,
            message,
            qos,
            retain: row.try_get::<bool, _>("retain")?,
            pkid: pkid
                .and_then(|pkid| u16::try_from(pkid).ok())
                .filter(|&pkid| pkid != 0),
            released: row.try_get::<bool, _>("released")?,
        });
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

async fn write_loop(mut connection: SqliteConnection, mut rx: mpsc::Receiver<Op>) {
    let mut batch = Vec::with_capacity(64);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let result = apply(&mut connection, &batch).await;
        if let Err(error) = &result {
            tracing::error!(%error, ops = batch.len(), "persistence write failed");
        }
        let mut close = None;
        for op in batch.drain(..) {
            match op {
                Op::Barrier(done) => {
                    let _ = done.send(result.as_ref().map(|_| ()).map_err(|_| NotDurable));
                }
                Op::Close(done) => close = Some(done),
                _ => {}
            }
        }
        if let Some(done) = close {
            rx.close();
            let _ = connection.close().await;
            let _ = done.send(());
            return;
        }
    }
    let _ = connection.close().await;
}

async fn apply(connection: &mut SqliteConnection, batch: &[Op]) -> Result<(), sqlx::Error> {
    if batch
        .iter()
        .all(|op| matches!(op, Op::Barrier(_) | Op::Close(_)))
    {
        return Ok(());
    }
    let mut tx = connection.begin().await?;
    for op in batch {
        apply_one(&mut tx, op).await?;
    }
    tx.commit().await
}

async fn apply_one(tx: &mut SqliteConnection, op: &Op) -> Result<(), sqlx::Error> {
    let seq = |seq: &u64| i64::try_from(*seq).unwrap_or(i64::MAX);
    match op {
        Op::SetRetained {
            topic,
            payload,
            qos,
        } => {
            sqlx::query("INSERT OR REPLACE INTO retained (topic, payload, qos) VALUES (?, ?, ?)")
                .bind(&**topic)
                .bind(&payload[..])
                .bind(*qos as u8)
                .execute(&mut *tx)
                .await?;
        }
        Op::ClearRetained { topic } => {
            sqlx::query("DELETE FROM retained WHERE topic = ?")
                .bind(&**topic)
                .execute(&mut *tx)
                .await?;
        }
        Op::Session { client_id } => {
            sqlx::query("INSERT OR IGNORE INTO sessions (client_id) VALUES (?)")
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
            qos,
        } => {
            sqlx::query(
                "INSERT OR REPLACE INTO subscriptions (client_id, filter, qos) VALUES (?, ?, ?)",
            )
            .bind(&**client_id)
            .bind(&**filter)
            .bind(*qos as u8)
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
        Op::Message { id, topic, payload } => {
            sqlx::query("INSERT OR IGNORE INTO messages (id, topic, payload) VALUES (?, ?, ?)")
                .bind(*id)
                .bind(&**topic)
                .bind(&payload[..])
                .execute(&mut *tx)
                .await?;
        }
        Op::Enqueue {
            client_id,
            seq: position,
            message_id,
            qos,
            retain,
        } => {
            sqlx::query("INSERT OR REPLACE INTO queue (client_id, seq, message_id, qos, retain) VALUES (?, ?, ?, ?, ?)")
                .bind(&**client_id)
                .bind(seq(position))
                .bind(*message_id)
                .bind(*qos as u8)
                .bind(*retain)
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
        Op::Barrier(_) | Op::Close(_) => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
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
                topic: "r/1".into(),
                payload: Bytes::from_static(b"one"),
                qos: QoS::AtLeastOnce,
            },
            Op::SetRetained {
                topic: "r/2".into(),
                payload: Bytes::from_static(b"two"),
                qos: QoS::AtMostOnce,
            },
            Op::ClearRetained {
                topic: "r/2".into(),
            },
            Op::Session {
                client_id: client.clone(),
            },
            Op::Subscribe {
                client_id: client.clone(),
                filter: "a/#".into(),
                qos: QoS::ExactlyOnce,
            },
            Op::Subscribe {
                client_id: client.clone(),
                filter: "b".into(),
                qos: QoS::AtMostOnce,
            },
            Op::Unsubscribe {
                client_id: client.clone(),
                filter: "b".into(),
            },
            Op::Message {
                id,
                topic: "a/x".into(),
                payload: Bytes::from_static(b"hello"),
            },
            Op::Enqueue {
                client_id: client.clone(),
                seq: 1,
                message_id: id,
                qos: QoS::AtLeastOnce,
                retain: false,
            },
            Op::Enqueue {
                client_id: client.clone(),
                seq: 2,
                message_id: id,
                qos: QoS::ExactlyOnce,
                retain: false,
            },
            Op::Enqueue {
                client_id: client.clone(),
                seq: 3,
                message_id: id,
                qos: QoS::ExactlyOnce,
                retain: true,
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
        store.barrier().await.expect("durable");
        store.close().await;

        let (store, snapshot) = open(&config(&dir)).await.expect("reopens");
        assert_eq!(snapshot.retained.len(), 1);
        assert_eq!(snapshot.retained[0].topic, "r/1");
        assert_eq!(snapshot.retained[0].qos, QoS::AtLeastOnce);
        let session = snapshot.sessions.get("c1").expect("session restored");
        assert_eq!(
            session.subscriptions,
            vec![("a/#".into(), QoS::ExactlyOnce)]
        );
        let queue: Vec<_> = session
            .queue
            .iter()
            .map(|d| (d.seq, d.qos, d.retain, d.pkid, d.released))
            .collect();
        assert_eq!(
            queue,
            vec![
                (2, QoS::ExactlyOnce, false, Some(11), true),
                (3, QoS::ExactlyOnce, true, None, false)
            ]
        );
        assert_eq!(&session.queue[0].message.payload[..], b"hello");
        assert!(
            Arc::ptr_eq(&session.queue[0].message, &session.queue[1].message),
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
    async fn bodies_are_collected_when_no_queue_refers_to_them() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (store, _) = open(&config(&dir)).await.expect("opens");
        let client: ByteString = "c".into();
        let id = store.next_message_id();
        store
            .send(Op::Session {
                client_id: client.clone(),
            })
            .await
            .expect("sends");
        store
            .send(Op::Message {
                id,
                topic: "t".into(),
                payload: Bytes::from_static(b"x"),
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
        store.barrier().await.expect("durable");
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
}
