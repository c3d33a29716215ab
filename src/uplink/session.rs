//! One device's MQTT session: the session task feeds the driver (`driver.rs`) rows
//! from the queue as the feed (`feed.rs`) allows, encodes them through its profile,
//! and turns acknowledgements into deletions.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rumqttc::QoS;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::aliases::TopicAliases;
use super::driver::{drive, DriverBatch, DriverEvent, Resume};
use super::feed::{Feed, FetchRequest, Row, READ_AHEAD_WINDOWS};
use super::inbound;
use super::link::{
    reason_name, Ack, Client, LinkError, LinkEvent, Outbound, OutboundProperties, ServerLimits,
};
use super::plan::{Plan, MAX_PACKET};
use super::profile::{Message, Profile};
use super::Inbound;
use fieldbridge_service::LogThrottle;

use crate::backoff::Backoff;
use crate::event::{Body, Event, Reply};
use crate::store::{QueuedEvent, Store, StoreError};

/// Least time between two "cannot connect" warnings of one session.
const CONNECT_FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(60);
/// Least time between two warnings of one session about its queue.
const STORE_ERROR_LOG_INTERVAL: Duration = Duration::from_secs(30);

/// QoS 0 publishes handed to rumqttc and not yet written; more are dropped.
const QOS0_PENDING_LIMIT: usize = 8;
/// rumqttc requests beyond the window: QoS 0 publishes and a DISCONNECT.
const EXTRA_REQUESTS: usize = QOS0_PENDING_LIMIT + 4;
/// Driver event batches waiting for the session.
const DRIVER_BATCHES: usize = 32;
/// How often QoS 0 drop counts are written to the queue database.
const DROP_PERSIST_INTERVAL: Duration = Duration::from_secs(5);
/// At shutdown: time for the broker to acknowledge what is in flight, then to
/// commit deletions, then for the DISCONNECT to be written.
const ACK_GRACE: Duration = Duration::from_millis(300);
const DELETE_GRACE: Duration = Duration::from_millis(200);
const DISCONNECT_GRACE: Duration = Duration::from_millis(150);

/// What a device session is doing, for health reporting and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionStatus {
    pub connected: bool,
    /// Successful connections (CONNACKs) since start.
    pub connections: u64,
    /// `session_present` of the last CONNACK.
    pub session_present: bool,
    /// Why the last connection ended or failed.
    pub last_error: Option<String>,
    /// QoS 1 events the broker acknowledged since start.
    pub acknowledged: u64,
    /// QoS 1 events sent and not yet acknowledged.
    pub in_flight: usize,
    /// QoS 0 events dropped since start (offline, or the session was congested).
    pub qos0_dropped: u64,
    /// Packets from the broker larger than `max_inbound`: each one ended the connection
    /// and the session was started again clean.
    pub inbound_oversized: u64,
    /// Time from handing a QoS 1 publish to the socket to its PUBACK, summed over the
    /// `acknowledged` events (for a mean publish latency).
    pub ack_latency_total: Duration,
}

impl Plan {
    /// Starts the driver and session tasks of a session with these hooks.
    pub(super) fn spawn(
        &self,
        mut profile: Box<dyn Profile>,
        store: Store,
        qos0: mpsc::Receiver<Event>,
        qos0_dropped: Arc<AtomicU64>,
        shutdown: CancellationToken,
    ) -> (watch::Receiver<SessionStatus>, JoinHandle<()>) {
        let requests = self.window + EXTRA_REQUESTS + profile.announcement_capacity();
        let counter = profile.connection_counter();
        let (client, eventloop) = self.client(profile.as_mut(), requests);

        let (driver_events, driver_receiver) = mpsc::channel(DRIVER_BATCHES);
        let (resume, resumes) = mpsc::channel(1);
        let driver = tokio::spawn(drive(eventloop, driver_events, resumes, counter.is_some()));
        let (status, status_receiver) = watch::channel(SessionStatus::default());
        let mut session = Session {
            rows_changed: match profile.scope() {
                Some(device) => store.watch(device),
                None => store.watch_all(),
            },
            profile,
            client,
            store,
            aliases: TopicAliases::default(),
            server: ServerLimits::default(),
            message_expiry_secs: self.message_expiry_secs,
            feed: Feed::new(self.window, self.window * READ_AHEAD_WINDOWS),
            window_capacity: self.window,
            sent_at: HashMap::new(),
            ack_latency: Duration::ZERO,
            driver: driver_receiver,
            resume,
            qos0,
            qos0_open: true,
            qos0_dropped,
            qos0_persisted: 0,
            status,
            inbound: self.inbound.clone(),
            backoff: Backoff::new(self.reconnect.min, self.reconnect.max),
            refused_backoff: Backoff::new(self.reconnect.min, self.reconnect.refused_max),
            connected: false,
            failures: 0,
            failure_log: LogThrottle::new(CONNECT_FAILURE_LOG_INTERVAL),
            refusal_log: LogThrottle::new(STORE_ERROR_LOG_INTERVAL),
            store_errors: LogThrottle::new(STORE_ERROR_LOG_INTERVAL),
            retry: Box::pin(tokio::time::sleep(Duration::ZERO)),
            retry_pending: false,
            fetch: None,
            delete: None,
            prepare: None,
        };
        if counter.is_some() {
            // The first connection waits for its counter (and will).
            session.prepare_connection();
        }
        let task = tokio::spawn(async move {
            session.run(shutdown).await;
            driver.abort();
        });
        (status_receiver, task)
    }
}

type Pending<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Rows that leave the queue together.
struct Removal {
    /// The device of a device's own session.
    device: Option<String>,
    acked: Vec<i64>,
    refused: Vec<(i64, String)>,
    /// A drain's: not to wait for the store's commit window, only its short busy one.
    pressing: bool,
}

/// Deletes acknowledged rows and moves refused ones to the dead letters, both handed to
/// the writer at once so that they share a commit.
async fn remove(store: &Store, removal: Removal) -> Result<(), StoreError> {
    let delete = async {
        if removal.acked.is_empty() {
            return Ok(());
        }
        let device = removal.device.as_deref();
        store.delete(device, removal.acked, removal.pressing).await
    };
    let dead_letter = async {
        if removal.refused.is_empty() {
            return Ok(());
        }
        store.dead_letter(removal.refused).await
    };
    let (deleted, moved) = tokio::join!(delete, dead_letter);
    deleted.and(moved)
}

/// A command result for an MQTT 5 request: to its Response Topic, with its Correlation
/// Data, instead of the event topic.
fn reply_publish(message: Message, reply: Reply) -> Outbound {
    let mut publish = outbound(message, QoS::AtLeastOnce);
    publish.topic = reply.topic;
    publish.properties.correlation_data = reply.correlation_data.map(Bytes::from);
    publish
}

/// The publish of an event or announcement as the profile encoded it.
fn outbound(message: Message, qos: QoS) -> Outbound {
    Outbound {
        topic: message.topic,
        payload: message.payload,
        qos,
        retain: message.retain,
        properties: OutboundProperties {
            json: message.json,
            ..OutboundProperties::default()
        },
    }
}
type FetchResult = (FetchRequest, Result<Vec<QueuedEvent>, StoreError>);

impl Row for QueuedEvent {
    fn id(&self) -> i64 {
        self.id
    }
}

struct Session {
    profile: Box<dyn Profile>,
    client: Client,
    store: Store,
    /// Topic aliases of the current connection (MQTT 5).
    aliases: TopicAliases,
    /// What the broker accepts, from the current connection's CONNACK (MQTT 5).
    server: ServerLimits,
    message_expiry_secs: Option<u32>,
    feed: Feed<QueuedEvent>,
    window_capacity: usize,
    /// When each in-flight QoS 1 packet went out, for the publish latency.
    sent_at: HashMap<u16, Instant>,
    ack_latency: Duration,
    driver: mpsc::Receiver<DriverBatch>,
    resume: mpsc::Sender<Resume>,
    rows_changed: watch::Receiver<u64>,
    qos0: mpsc::Receiver<Event>,
    qos0_open: bool,
    /// QoS 0 drops of this device (the router counts its own there too).
    qos0_dropped: Arc<AtomicU64>,
    qos0_persisted: u64,
    status: watch::Sender<SessionStatus>,
    inbound: Option<mpsc::Sender<Inbound>>,
    /// While the broker cannot be reached.
    backoff: Backoff,
    /// While the broker refuses the connection.
    refused_backoff: Backoff,
    connected: bool,
    /// Consecutive failed connection attempts.
    failures: u32,
    failure_log: LogThrottle,
    /// Events the broker refused (MQTT 5 reason codes).
    refusal_log: LogThrottle,
    /// Reading or deleting rows failed (a full or failing disk lasts a while).
    store_errors: LogThrottle,
    /// Fires when the next connection attempt is due (armed while `retry_pending`).
    retry: Pin<Box<tokio::time::Sleep>>,
    retry_pending: bool,
    fetch: Option<Pending<FetchResult>>,
    delete: Option<Pending<(usize, Result<(), StoreError>)>>,
    /// Advancing the profile's connection counter before the next attempt.
    prepare: Option<Pending<Result<u8, StoreError>>>,
}

/// Awaits an optional future; never resolves when there is none.
async fn maybe<T>(future: Option<&mut Pending<T>>) -> T {
    match future {
        Some(future) => future.await,
        None => std::future::pending().await,
    }
}

impl Session {
    async fn run(mut self, shutdown: CancellationToken) {
        let mut persist = tokio::time::interval(DROP_PERSIST_INTERVAL);
        persist.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            self.send_ahead();
            self.start_fetch();
            self.start_delete();
            tokio::select! {
                _ = shutdown.cancelled() => break,
                batch = self.driver.recv() => match batch {
                    Some(batch) => self.on_driver_batch(batch),
                    None => break,
                },
                done = maybe(self.delete.as_mut()) => {
                    self.delete = None;
                    self.on_deleted(done);
                }
                fetched = maybe(self.fetch.as_mut()) => {
                    self.fetch = None;
                    self.on_fetched(fetched);
                }
                changed = self.rows_changed.changed(), if self.feed.idle() => {
                    // An error means the store is closing; stop watching.
                    self.feed.rows_committed(changed.is_ok());
                }
                event = self.qos0.recv(), if self.qos0_open => match event {
                    Some(event) => self.on_qos0(event),
                    None => self.qos0_open = false,
                },
                _ = &mut self.retry, if self.retry_pending => {
                    self.retry_pending = false;
                    self.prepare_connection();
                }
                counter = maybe(self.prepare.as_mut()) => {
                    self.prepare = None;
                    self.on_prepared(counter);
                }
                _ = persist.tick() => self.persist_qos0_drops().await,
            }
        }
        self.stop().await;
    }

    fn on_driver_batch(&mut self, batch: DriverBatch) {
        let mut acknowledged = 0;
        for event in batch {
            acknowledged += self.on_driver_event(event);
        }
        self.update_in_flight(acknowledged);
    }

    /// Handles one event; returns 1 for an acknowledgement of a tracked row.
    fn on_driver_event(&mut self, event: DriverEvent) -> u64 {
        let event = match event {
            DriverEvent::Link(event) => event,
            DriverEvent::Lost(error) => {
                self.on_lost(error);
                return 0;
            }
        };
        match event {
            LinkEvent::ConnAck {
                session_present,
                limits,
            } => self.on_connected(session_present, limits),
            LinkEvent::Published(pkid) => {
                if pkid != 0 && self.sent_at.len() < self.window_capacity * 2 {
                    self.sent_at.insert(pkid, Instant::now());
                }
                if let Err(untracked) = self.feed.window.on_outgoing_publish(pkid) {
                    tracing::warn!(
                        device = %self.profile.name(),
                        pkid = untracked.0,
                        "publish with an unexpected packet id; it is resent after the next reconnect"
                    );
                }
            }
            LinkEvent::PubAck(pkid, ack) => {
                if let Some(sent) = self.sent_at.remove(&pkid) {
                    self.ack_latency += sent.elapsed();
                }
                return match ack {
                    Ack::Accepted => {
                        // Passing refusals are over once the broker accepts again.
                        self.backoff.reset();
                        u64::from(self.feed.window.on_puback(pkid).is_some())
                    }
                    Ack::Refused { code, permanent } => {
                        self.on_refused(pkid, code, permanent);
                        0
                    }
                };
            }
            LinkEvent::Inbound(publish) => {
                let answer = inbound::route(self.inbound.as_ref(), self.profile.as_mut(), publish);
                self.announce(answer);
            }
            LinkEvent::Disconnected => {}
        }
        0
    }

    fn on_connected(&mut self, session_present: bool, limits: ServerLimits) {
        self.connected = true;
        self.failures = 0;
        self.failure_log.reset();
        self.backoff.reset();
        self.refused_backoff.reset();
        self.server = limits;
        self.aliases = TopicAliases::new(limits.topic_alias_maximum);
        // The broker's Receive Maximum bounds the window of this connection.
        let window = limits.receive_maximum.map_or(self.window_capacity, |max| {
            usize::from(max).min(self.window_capacity)
        });
        self.feed.set_window(window);
        self.feed.connected();
        tracing::info!(
            device = %self.profile.name(),
            session_present,
            "connected to the broker"
        );
        self.status.send_modify(|s| {
            s.connected = true;
            s.connections += 1;
            s.session_present = session_present;
        });
        self.subscribe();
    }

    fn on_lost(&mut self, error: LinkError) {
        let was_connected = std::mem::replace(&mut self.connected, false);
        self.sent_at.clear();
        let lost_qos0 = self.feed.lost();
        if lost_qos0 > 0 {
            self.qos0_dropped
                .fetch_add(lost_qos0 as u64, Ordering::Relaxed);
        }
        let delay = if error.refused() {
            self.refused_backoff.next_delay()
        } else {
            self.backoff.next_delay()
        };
        self.retry.as_mut().reset(Instant::now() + delay);
        self.retry_pending = true;
        let oversized = error.oversized();
        if let Some(size) = oversized {
            tracing::error!(
                device = %self.profile.name(),
                size,
                "the broker sent a packet larger than upstream.max_inbound; MQTT 3.1.1 can neither read nor refuse it, so the session starts clean (what the broker had queued for this device is dropped)"
            );
        } else if was_connected {
            tracing::warn!(
                device = %self.profile.name(),
                "connection to the broker lost: {error}; reconnecting in {delay:.1?}"
            );
        } else {
            self.failures += 1;
            if self.failure_log.admit().is_some() {
                tracing::warn!(
                    device = %self.profile.name(),
                    attempts = self.failures,
                    "cannot connect to the broker: {error}; retrying in {delay:.1?}"
                );
            } else {
                tracing::debug!(device = %self.profile.name(), "connect failed: {error}");
            }
        }
        let dropped = self.qos0_dropped.load(Ordering::Relaxed);
        self.status.send_modify(|s| {
            s.connected = false;
            s.inbound_oversized += u64::from(oversized.is_some());
            s.last_error = Some(error.to_string());
            s.in_flight = 0;
            s.qos0_dropped = dropped;
        });
    }

    fn update_in_flight(&mut self, acknowledged: u64) {
        let in_flight = self.feed.window.sent();
        let ack_latency = self.ack_latency;
        self.status.send_if_modified(|s| {
            let changed = acknowledged > 0 || s.in_flight != in_flight;
            s.acknowledged += acknowledged;
            s.in_flight = in_flight;
            s.ack_latency_total = ack_latency;
            changed
        });
    }

    /// After every connect: the profile's subscriptions (when inbound publishes are
    /// routed) and announcements. Subscribing again on a kept session is harmless.
    fn subscribe(&mut self) {
        if self.inbound.is_some() {
            for (filter, qos) in self.profile.subscriptions() {
                if let Err(error) = self.client.subscribe(&filter, qos) {
                    tracing::warn!(device = %self.profile.name(), "cannot subscribe to {filter}: {error}");
                }
            }
        }
        let announcements = self.profile.announcements(self.feed.generation());
        self.announce(announcements);
        if let Some((key, value)) = self.profile.remember() {
            let store = self.store.clone();
            tokio::spawn(async move {
                if let Err(error) = store.set_state(key, value).await {
                    tracing::warn!("{key} not saved: {error}");
                }
            });
        }
    }

    fn announce(&mut self, announcements: Vec<Message>) {
        for message in announcements {
            match self.client.publish(outbound(message, QoS::AtMostOnce)) {
                Ok(()) => self.feed.window.qos0_submitted(),
                Err(error) => {
                    tracing::warn!(device = %self.profile.name(), "announcement not sent: {error}")
                }
            }
        }
    }

    /// Before a connection attempt: advance the profile's counter in the queue
    /// database (so no two connections share it, even across restarts), then resume.
    fn prepare_connection(&mut self) {
        let Some(key) = self.profile.connection_counter() else {
            let _ = self.resume.try_send(None);
            return;
        };
        let store = self.store.clone();
        self.prepare = Some(Box::pin(async move {
            let last = store.state(key).await?;
            let next = last
                .and_then(|value| value.parse::<u8>().ok())
                .map_or(0, |value| value.wrapping_add(1));
            store.set_state(key, next.to_string()).await?;
            Ok(next)
        }));
    }

    fn on_prepared(&mut self, counter: Result<u8, StoreError>) {
        match counter {
            Ok(counter) => {
                let will = self.profile.will(counter);
                let _ = self.resume.try_send(will);
            }
            Err(error) => {
                if let Some(repeats) = self.store_errors.admit() {
                    tracing::warn!(device = %self.profile.name(), repeats, "cannot save the connection counter: {error}");
                }
                let delay = self.backoff.next_delay();
                self.retry.as_mut().reset(Instant::now() + delay);
                self.retry_pending = true;
            }
        }
    }

    /// Reads the next rows of the device's queue if the connection and window allow.
    fn start_fetch(&mut self) {
        let Some(request) = self.feed.next_fetch(self.connected && self.profile.ready()) else {
            return;
        };
        self.rows_changed.borrow_and_update();
        let store = self.store.clone();
        let device = self.profile.scope().map(str::to_owned);
        self.fetch = Some(Box::pin(async move {
            if let Some(delay) = request.delay {
                tokio::time::sleep(delay).await;
            }
            let rows = match device {
                Some(device) => store.fetch(&device, request.after, request.limit).await,
                None => store.fetch_all(request.after, request.limit).await,
            };
            (request, rows)
        }));
    }

    fn on_fetched(&mut self, (request, rows): FetchResult) {
        let rows = match rows {
            Ok(rows) => Some(rows),
            Err(error) => {
                if let Some(repeats) = self.store_errors.admit() {
                    tracing::warn!(device = %self.profile.name(), repeats, "reading the queue failed: {error}");
                }
                None
            }
        };
        self.feed.fetched(request, rows, self.connected);
    }

    /// Hands the client every row read ahead that the window has room for.
    fn send_ahead(&mut self) {
        let ready = self.connected && self.profile.ready();
        let mut sent = false;
        while let Some(row) = self.feed.next_row(ready) {
            let mut reply = None;
            let encoded = match self.profile.encode_stored(&row) {
                Some(message) => Some(message),
                None => match row.to_event() {
                    Ok(event) => {
                        if let Body::CommandResult(result) = &event.body {
                            reply.clone_from(&result.reply);
                        }
                        self.profile.encode(&event)
                    }
                    Err(error) => {
                        tracing::error!(device = %self.profile.name(), row = row.id, "{error}; deleting it");
                        None
                    }
                },
            };
            let Some(message) = encoded else {
                self.feed.skipped(row.id);
                continue;
            };
            if let Some(reason) = self.too_large(&message) {
                tracing::error!(
                    device = %self.profile.name(),
                    row = row.id,
                    "queued event not sendable ({reason}): moved to the dead letters"
                );
                self.feed.refused(row.id, reason);
                continue;
            }
            let publish = match reply {
                Some(reply) => reply_publish(message, reply),
                None => self.event_publish(message, QoS::AtLeastOnce),
            };
            match self.client.publish(publish) {
                Ok(()) => {
                    self.feed.sent(row.id);
                    sent = true;
                }
                Err(error) => {
                    // The request channel is sized for the window, so this means the
                    // event loop is gone; the row waits for the next connection.
                    tracing::warn!(device = %self.profile.name(), "publish not queued: {error}");
                    self.feed.put_back(row);
                    break;
                }
            }
        }
        if sent {
            self.update_in_flight(0);
        }
    }

    /// Why `message` can never be sent on this connection, if it cannot: larger than an
    /// MQTT packet, or than the broker's Maximum Packet Size.
    fn too_large(&self, message: &Message) -> Option<String> {
        // Fixed header, topic length, packet id and the properties an event carries.
        const OVERHEAD: usize = 5 + 2 + 2 + 48;
        let size = message.topic.len() + message.payload.len() + OVERHEAD;
        if size > MAX_PACKET {
            return Some(format!("a packet of {size} bytes, over MQTT's limit"));
        }
        let max = self.server.maximum_packet_size?;
        (size > usize::try_from(max).unwrap_or(usize::MAX)).then(|| {
            format!("0x95 packet too large: {size} bytes, over the broker's Maximum Packet Size of {max}")
        })
    }

    /// The publish of an event on this connection: its topic an alias where the broker
    /// allows them, QoS 0 ones with the configured expiry.
    fn event_publish(&mut self, message: Message, qos: QoS) -> Outbound {
        let mut publish = outbound(message, qos);
        let (topic, alias) = self.aliases.apply(std::mem::take(&mut publish.topic));
        publish.topic = topic;
        publish.properties.topic_alias = alias;
        if qos == QoS::AtMostOnce {
            publish.properties.message_expiry_secs = self.message_expiry_secs;
        }
        publish
    }

    /// The broker refused the row sent as `pkid` (an MQTT 5 reason code): for good,
    /// the row moves to the dead letters; for now, it is sent again after a delay.
    fn on_refused(&mut self, pkid: u16, code: u8, permanent: bool) {
        let Some(row) = self.feed.window.refuse(pkid) else {
            return;
        };
        let reason = format!("0x{code:02X} {}", reason_name(code));
        if permanent {
            if let Some(repeats) = self.refusal_log.admit() {
                tracing::warn!(device = %self.profile.name(), row, repeats, "the broker refused an event for good ({reason}): moved to the dead letters");
            }
            self.feed.window.dead_letter(row, reason);
        } else {
            let delay = self.backoff.next_delay();
            if let Some(repeats) = self.refusal_log.admit() {
                tracing::warn!(device = %self.profile.name(), row, repeats, "the broker refused an event for now ({reason}): sending it again in {delay:.1?}");
            }
            self.feed.retry_from_start(delay);
        }
    }

    /// Deletes the acknowledged rows and moves the refused ones to the dead letters.
    fn start_delete(&mut self) {
        if self.delete.is_some() {
            return;
        }
        let pressing = self.feed.window.deletion_pressing();
        let acked = self.feed.window.take_acked();
        let refused = self.feed.window.take_refused();
        if acked.is_empty() && refused.is_empty() {
            return;
        }
        let count = acked.len() + refused.len();
        let store = self.store.clone();
        let removal = Removal {
            device: self.profile.scope().map(str::to_owned),
            acked,
            refused,
            pressing,
        };
        self.delete = Some(Box::pin(
            async move { (count, remove(&store, removal).await) },
        ));
    }

    fn on_deleted(&mut self, (count, result): (usize, Result<(), StoreError>)) {
        self.feed.window.deleted(count);
        if let Err(error) = result {
            if let Some(repeats) = self.store_errors.admit() {
                tracing::warn!(
                    device = %self.profile.name(),
                    repeats,
                    "deleting acknowledged events failed (they will be sent again): {error}"
                );
            }
        }
    }

    fn on_qos0(&mut self, event: Event) {
        if self.connected && self.feed.window.qos0_pending() < QOS0_PENDING_LIMIT {
            if let Some(message) = self.profile.encode(&event) {
                if self.too_large(&message).is_some() {
                    self.qos0_dropped.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                let publish = self.event_publish(message, QoS::AtMostOnce);
                if self.client.publish(publish).is_ok() {
                    self.feed.window.qos0_submitted();
                    return;
                }
            } else {
                return;
            }
        }
        self.qos0_dropped.fetch_add(1, Ordering::Relaxed);
    }

    async fn persist_qos0_drops(&mut self) {
        let dropped = self.qos0_dropped.load(Ordering::Relaxed);
        let new = dropped.saturating_sub(self.qos0_persisted);
        if new == 0 {
            return;
        }
        match self
            .store
            .count_offline_drops(self.profile.name(), new)
            .await
        {
            Ok(()) => self.qos0_persisted = dropped,
            Err(error) => tracing::debug!("QoS 0 drop count not saved: {error}"),
        }
        self.status.send_modify(|s| s.qos0_dropped = dropped);
    }

    /// Graceful end: give in-flight events a moment to be acknowledged, commit their
    /// deletion, save the drop counts, and disconnect.
    async fn stop(mut self) {
        let deadline = Instant::now() + ACK_GRACE;
        while self.connected && self.feed.window.unacknowledged() > 0 {
            tokio::select! {
                batch = self.driver.recv() => match batch {
                    Some(batch) => self.on_driver_batch(batch),
                    None => break,
                },
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        if let Some(delete) = self.delete.take() {
            if let Ok(done) = tokio::time::timeout(DELETE_GRACE, delete).await {
                self.on_deleted(done);
            }
        }
        let removal = Removal {
            device: self.profile.scope().map(str::to_owned),
            acked: self.feed.window.take_acked(),
            refused: self.feed.window.take_refused(),
            pressing: true,
        };
        let _ = tokio::time::timeout(DELETE_GRACE, remove(&self.store, removal)).await;
        self.persist_qos0_drops().await;
        if self.connected && self.client.disconnect().is_ok() {
            let deadline = Instant::now() + DISCONNECT_GRACE;
            loop {
                tokio::select! {
                    batch = self.driver.recv() => match batch {
                        Some(batch) if batch.iter().any(|e| matches!(e, DriverEvent::Link(LinkEvent::Disconnected))) => break,
                        Some(_) => {}
                        None => break,
                    },
                    _ = tokio::time::sleep_until(deadline) => break,
                }
            }
        }
        self.status.send_modify(|s| s.connected = false);
        tracing::debug!(device = %self.profile.name(), "session stopped");
    }
}
