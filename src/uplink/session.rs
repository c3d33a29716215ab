//! One device's MQTT session: a driver task that alone polls rumqttc's event loop
//! (never cancelled, so no packet is lost halfway through a write), and the session
//! task that feeds it rows from the queue and turns acknowledgements into deletions.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{
    AsyncClient, ConnectionError, Event as MqttEvent, EventLoop, MqttOptions, NetworkOptions,
    Outgoing, Packet, Publish, QoS, TlsConfiguration, Transport,
};
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::topics::{command_in, Naming, TemplateValues};
use super::window::Window;
use super::{
    tls, BrokerUrl, DeviceIdentity, Inbound, InboundKind, UplinkError, UplinkSettings,
    MANAGEMENT_PUBLISH, MANAGEMENT_REQUESTS, MAX_PAYLOAD,
};
use fieldbridge_mqtt::platform::valid_name;
use fieldbridge_service::LogThrottle;

use crate::backoff::Backoff;
use crate::event::Event;
use crate::store::{QueuedEvent, Store, StoreError};

/// Least time between two "cannot connect" warnings of one session.
const CONNECT_FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(60);
/// Least time between two warnings of one session about its queue.
const STORE_ERROR_LOG_INTERVAL: Duration = Duration::from_secs(30);

/// Largest MQTT packet either way: a maximal payload plus topic and header.
const MAX_PACKET: usize = MAX_PAYLOAD + 8 * 1024;
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
/// Wait before reading the queue again after a failed read.
const FETCH_RETRY: Duration = Duration::from_secs(1);
/// Event topics remembered per session.
const TOPIC_CACHE: usize = 32;

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

/// Validated settings from which every device's session is built.
pub(super) struct Plan {
    endpoint: BrokerUrl,
    org: Arc<str>,
    naming: Arc<Naming>,
    keepalive: Duration,
    window: usize,
    tls: Option<TlsConfiguration>,
    connect_timeout_secs: u64,
    reconnect: (Duration, Duration),
    inbound: Option<mpsc::Sender<Inbound>>,
    command_qos: QoS,
    max_inbound: usize,
}

impl Plan {
    pub(super) fn new(
        settings: &UplinkSettings,
        devices: &[DeviceIdentity],
    ) -> Result<Plan, UplinkError> {
        let endpoint = settings.url.clone();
        if !valid_name(&settings.org) {
            return Err(UplinkError::Settings(format!(
                "org {:?} must be 1 to 36 characters of A-Z a-z 0-9 . _ -",
                settings.org
            )));
        }
        if !settings.keepalive.is_zero() && settings.keepalive < Duration::from_secs(1) {
            return Err(UplinkError::Settings(
                "keepalive must be 0 (off) or at least 1s".into(),
            ));
        }
        if settings.inflight == 0 {
            return Err(UplinkError::Settings("inflight must be at least 1".into()));
        }
        let mut seen = HashSet::new();
        for device in devices {
            let invalid = |reason: &str| UplinkError::Device {
                device: device.id.clone(),
                reason: reason.to_owned(),
            };
            if !valid_name(&device.id) {
                return Err(invalid(
                    "the id must be 1 to 36 characters of A-Z a-z 0-9 . _ -",
                ));
            }
            if !valid_name(&device.device_type) {
                return Err(invalid(
                    "the type must be 1 to 36 characters of A-Z a-z 0-9 . _ -",
                ));
            }
            if !seen.insert(device.id.as_str()) {
                return Err(invalid("the id is used twice"));
            }
        }
        let tls = if endpoint.tls {
            Some(TlsConfiguration::Rustls(tls::client_config(&settings.tls)?))
        } else {
            None
        };
        Ok(Plan {
            endpoint,
            org: settings.org.as_str().into(),
            naming: Arc::new(Naming::new(&settings.topics)?),
            keepalive: settings.keepalive,
            window: usize::from(settings.inflight),
            tls,
            connect_timeout_secs: settings.connect_timeout.as_secs().max(1),
            reconnect: (settings.reconnect_min, settings.reconnect_max),
            inbound: settings.inbound.clone(),
            command_qos: settings.command_qos,
            max_inbound: settings.max_inbound,
        })
    }

    /// Starts the driver and session tasks of one device.
    pub(super) fn spawn(
        &self,
        device: DeviceIdentity,
        store: Store,
        qos0: mpsc::Receiver<Event>,
        qos0_dropped: Arc<AtomicU64>,
        shutdown: CancellationToken,
    ) -> (watch::Receiver<SessionStatus>, JoinHandle<()>) {
        let requests = self.window + EXTRA_REQUESTS;
        let values = TemplateValues {
            org: &self.org,
            device_type: &device.device_type,
            device_id: &device.id,
        };
        let client_id = self.naming.client_id.render(&values, "");
        let command_filter = self.naming.command.render(&values, "+");
        let mut options =
            MqttOptions::new(client_id, self.endpoint.host.clone(), self.endpoint.port);
        options
            .set_keep_alive(self.keepalive)
            .set_clean_session(false)
            .set_inflight(u16::try_from(self.window).unwrap_or(u16::MAX))
            .set_request_channel_capacity(requests)
            .set_max_packet_size(self.max_inbound, MAX_PACKET);
        if let Some(token) = &device.token {
            options.set_credentials(self.naming.username.render(&values, ""), token.as_str());
        }
        if let Some(tls) = &self.tls {
            options.set_transport(Transport::tls_with_config(tls.clone()));
        }
        let (client, mut eventloop) = AsyncClient::new(options, requests);
        let mut network = NetworkOptions::new();
        network.set_tcp_nodelay(true);
        network.set_connection_timeout(self.connect_timeout_secs);
        eventloop.set_network_options(network);

        let (driver_events, driver_receiver) = mpsc::channel(DRIVER_BATCHES);
        let resume = Arc::new(Notify::new());
        let driver = tokio::spawn(drive(eventloop, driver_events, resume.clone()));
        let (status, status_receiver) = watch::channel(SessionStatus::default());
        let session = Session {
            rows_changed: store.watch(&device.id),
            device,
            org: self.org.clone(),
            naming: self.naming.clone(),
            topic_cache: HashMap::new(),
            client,
            store,
            window: Window::new(self.window),
            window_capacity: self.window,
            sent_at: HashMap::new(),
            ack_latency: Duration::ZERO,
            batch: (self.window / 2).max(1),
            driver: driver_receiver,
            resume,
            qos0,
            qos0_open: true,
            qos0_dropped,
            qos0_persisted: 0,
            status,
            inbound: self.inbound.clone(),
            command_filter,
            command_qos: self.command_qos,
            backoff: Backoff::new(self.reconnect.0, self.reconnect.1),
            connected: false,
            failures: 0,
            failure_log: LogThrottle::new(CONNECT_FAILURE_LOG_INTERVAL),
            store_errors: LogThrottle::new(STORE_ERROR_LOG_INTERVAL),
            retry: Box::pin(tokio::time::sleep(Duration::ZERO)),
            retry_pending: false,
            generation: 0,
            cursor: 0,
            resync: true,
            has_more: true,
            fetch_delay: None,
            fetch: None,
            delete: None,
        };
        let task = tokio::spawn(async move {
            session.run(shutdown).await;
            driver.abort();
        });
        (status_receiver, task)
    }
}

/// What the driver reports from rumqttc's event loop.
#[derive(Debug)]
enum DriverEvent {
    ConnAck {
        session_present: bool,
    },
    Published(u16),
    PubAck(u16),
    Inbound(Publish),
    Disconnected,
    /// The connection failed or ended; the driver waits for `resume` before the next
    /// attempt.
    Lost(ConnectionError),
}

fn relevant(event: MqttEvent) -> Option<DriverEvent> {
    match event {
        MqttEvent::Incoming(Packet::ConnAck(ack)) => Some(DriverEvent::ConnAck {
            session_present: ack.session_present,
        }),
        MqttEvent::Incoming(Packet::PubAck(ack)) => Some(DriverEvent::PubAck(ack.pkid)),
        MqttEvent::Incoming(Packet::Publish(publish)) => Some(DriverEvent::Inbound(publish)),
        MqttEvent::Outgoing(Outgoing::Publish(pkid)) => Some(DriverEvent::Published(pkid)),
        MqttEvent::Outgoing(Outgoing::Disconnect) => Some(DriverEvent::Disconnected),
        _ => None,
    }
}

/// A batch of driver events, in the order rumqttc produced them.
type DriverBatch = Vec<DriverEvent>;

async fn drive(mut eventloop: EventLoop, events: mpsc::Sender<DriverBatch>, resume: Arc<Notify>) {
    loop {
        let (first, failure) = match eventloop.poll().await {
            Ok(event) => (Some(event), None),
            Err(error) => (None, Some(error)),
        };
        // rumqttc reads up to ten packets at once and hands them out one per poll;
        // take the ones already buffered along (that is all `poll` would do with
        // them), so that a burst of PUBACKs wakes the session once.
        let mut batch: DriverBatch = first
            .into_iter()
            .chain(eventloop.state.events.drain(..))
            .filter_map(relevant)
            .collect();
        match failure {
            None => {
                // Once the clean start is done, later connections keep the session again.
                if eventloop.mqtt_options.clean_session()
                    && batch
                        .iter()
                        .any(|event| matches!(event, DriverEvent::ConnAck { .. }))
                {
                    eventloop.mqtt_options.set_clean_session(false);
                }
                if !batch.is_empty() && events.send(batch).await.is_err() {
                    return;
                }
            }
            Some(error) => {
                // A packet larger than rumqttc may read is neither read nor acknowledged,
                // so a persistent session would get it again on every reconnect: the
                // next connection starts the session clean, which drops it (with
                // whatever else the broker had queued for this client).
                if oversized_inbound(&error).is_some() {
                    eventloop.mqtt_options.set_clean_session(true);
                }
                // Events read together with the failure (acknowledgements among them)
                // are real: they go ahead of the loss. rumqttc would replay or drop
                // its pending publishes on its own; the session resends from the
                // queue instead, so nothing must be replayed twice.
                eventloop.pending.clear();
                eventloop.state.collision = None;
                batch.push(DriverEvent::Lost(error));
                if events.send(batch).await.is_err() {
                    return;
                }
                resume.notified().await;
                // Requests the session queued before it learnt of the loss are stale.
                eventloop.clean();
                eventloop.pending.clear();
                eventloop.state.events.clear();
            }
        }
    }
}

/// The size of a packet from the broker that was over the incoming limit, if that is
/// why the connection ended.
fn oversized_inbound(error: &ConnectionError) -> Option<usize> {
    match error {
        ConnectionError::MqttState(rumqttc::StateError::Deserialization(
            rumqttc::mqttbytes::Error::PayloadSizeLimitExceeded(size),
        )) => Some(*size),
        _ => None,
    }
}

type Pending<T> = Pin<Box<dyn Future<Output = T> + Send>>;

struct Fetched {
    generation: u64,
    reserved: usize,
    rows: Result<Vec<QueuedEvent>, StoreError>,
}

struct Session {
    device: DeviceIdentity,
    org: Arc<str>,
    naming: Arc<Naming>,
    topic_cache: HashMap<String, String>,
    client: AsyncClient,
    store: Store,
    window: Window,
    window_capacity: usize,
    /// When each in-flight QoS 1 packet went out, for the publish latency.
    sent_at: HashMap<u16, Instant>,
    ack_latency: Duration,
    /// Fetch at least this many rows at once while others are in flight.
    batch: usize,
    driver: mpsc::Receiver<DriverBatch>,
    resume: Arc<Notify>,
    rows_changed: watch::Receiver<u64>,
    qos0: mpsc::Receiver<Event>,
    qos0_open: bool,
    /// QoS 0 drops of this device (the router counts its own there too).
    qos0_dropped: Arc<AtomicU64>,
    qos0_persisted: u64,
    status: watch::Sender<SessionStatus>,
    inbound: Option<mpsc::Sender<Inbound>>,
    /// The command subscription (`iot-2/cmd/+/fmt/json` in the platform scheme).
    command_filter: String,
    command_qos: QoS,
    backoff: Backoff,
    connected: bool,
    /// Consecutive failed connection attempts.
    failures: u32,
    failure_log: LogThrottle,
    /// Reading or deleting rows failed (a full or failing disk lasts a while).
    store_errors: LogThrottle,
    /// Fires when the next connection attempt is due (armed while `retry_pending`).
    retry: Pin<Box<tokio::time::Sleep>>,
    retry_pending: bool,
    /// Bumped on every connect and loss; a fetch from an older one is discarded.
    generation: u64,
    /// Id of the last row handed to the client.
    cursor: i64,
    /// Read the device's queue from its start (after a (re)connect).
    resync: bool,
    /// The queue may hold rows after `cursor`.
    has_more: bool,
    fetch_delay: Option<Duration>,
    fetch: Option<Pending<Fetched>>,
    delete: Option<Pending<(usize, Result<(), StoreError>)>>,
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
                changed = self.rows_changed.changed(), if !self.has_more => {
                    // An error means the store is closing; stop watching.
                    self.has_more = changed.is_ok();
                }
                event = self.qos0.recv(), if self.qos0_open => match event {
                    Some(event) => self.on_qos0(event),
                    None => self.qos0_open = false,
                },
                _ = &mut self.retry, if self.retry_pending => {
                    self.retry_pending = false;
                    self.resume.notify_one();
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
        match event {
            DriverEvent::ConnAck { session_present } => {
                self.connected = true;
                self.failures = 0;
                self.failure_log.reset();
                self.backoff.reset();
                self.generation += 1;
                self.resync = true;
                self.has_more = true;
                tracing::info!(
                    device = %self.device.id,
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
            DriverEvent::Published(pkid) => {
                if pkid != 0 && self.sent_at.len() < self.window_capacity * 2 {
                    self.sent_at.insert(pkid, Instant::now());
                }
                if let Err(untracked) = self.window.on_outgoing_publish(pkid) {
                    tracing::warn!(
                        device = %self.device.id,
                        pkid = untracked.0,
                        "publish with an unexpected packet id; it is resent after the next reconnect"
                    );
                }
            }
            DriverEvent::PubAck(pkid) => {
                if let Some(sent) = self.sent_at.remove(&pkid) {
                    self.ack_latency += sent.elapsed();
                }
                return u64::from(self.window.on_puback(pkid).is_some());
            }
            DriverEvent::Inbound(publish) => self.forward_inbound(publish),
            DriverEvent::Disconnected => {}
            DriverEvent::Lost(error) => self.on_lost(error),
        }
        0
    }

    fn on_lost(&mut self, error: ConnectionError) {
        let was_connected = std::mem::replace(&mut self.connected, false);
        self.sent_at.clear();
        self.generation += 1;
        let lost_qos0 = self.window.connection_lost();
        if lost_qos0 > 0 {
            self.qos0_dropped
                .fetch_add(lost_qos0 as u64, Ordering::Relaxed);
        }
        let delay = self.backoff.next_delay();
        self.retry.as_mut().reset(Instant::now() + delay);
        self.retry_pending = true;
        let oversized = oversized_inbound(&error);
        if let Some(size) = oversized {
            tracing::error!(
                device = %self.device.id,
                size,
                "the broker sent a packet larger than upstream.max_inbound; MQTT 3.1.1 can neither read nor refuse it, so the session starts clean (what the broker had queued for this device is dropped)"
            );
        } else if was_connected {
            tracing::warn!(
                device = %self.device.id,
                "connection to the broker lost: {error}; reconnecting in {delay:.1?}"
            );
        } else {
            self.failures += 1;
            if self.failure_log.admit().is_some() {
                tracing::warn!(
                    device = %self.device.id,
                    attempts = self.failures,
                    "cannot connect to the broker: {error}; retrying in {delay:.1?}"
                );
            } else {
                tracing::debug!(device = %self.device.id, "connect failed: {error}");
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
        let in_flight = self.window.sent();
        let ack_latency = self.ack_latency;
        self.status.send_if_modified(|s| {
            let changed = acknowledged > 0 || s.in_flight != in_flight;
            s.acknowledged += acknowledged;
            s.in_flight = in_flight;
            s.ack_latency_total = ack_latency;
            changed
        });
    }

    /// After every connect: the command subscription (and management's), and a
    /// managed device's announcement. Subscribing again on a kept session is harmless.
    fn subscribe(&mut self) {
        if self.inbound.is_none() {
            return;
        }
        let mut requests = vec![(self.command_filter.clone(), self.command_qos)];
        if self.device.managed {
            requests.push((format!("{MANAGEMENT_REQUESTS}#"), QoS::AtLeastOnce));
        }
        for (filter, qos) in requests {
            if let Err(error) = self.client.try_subscribe(filter.as_str(), qos) {
                tracing::warn!(device = %self.device.id, "cannot subscribe to {filter}: {error}");
            }
        }
        if self.device.managed {
            let manage = serde_json::json!({
                "d": {
                    "supports": { "deviceActions": true, "firmwareActions": false },
                    "deviceInfo": { "model": self.device.device_type, "description": "fieldbridge gateway device" },
                    "metadata": {},
                },
                "reqId": format!("manage-{}-{}", self.device.id, self.generation),
            });
            let topic = format!("{MANAGEMENT_PUBLISH}mgmt/manage");
            let payload = serde_json::to_vec(&manage).expect("JSON values always serialize");
            if self
                .client
                .try_publish(topic, QoS::AtMostOnce, false, payload)
                .is_ok()
            {
                self.window.qos0_submitted();
            }
        }
    }

    fn forward_inbound(&mut self, publish: Publish) {
        let Some(inbound) = &self.inbound else {
            return;
        };
        let topic = publish.topic.as_str();
        let kind = match topic.strip_prefix(MANAGEMENT_REQUESTS) {
            Some(rest) if self.device.managed => InboundKind::Management(rest.to_owned()),
            _ => match command_in(&self.command_filter, topic) {
                Some(name) => InboundKind::Command(name),
                None => {
                    tracing::warn!(device = %self.device.id, %topic, "publish on an unexpected topic ignored");
                    return;
                }
            },
        };
        let message = Inbound {
            device_id: self.device.id.clone(),
            kind,
            payload: publish.payload,
            dup: publish.dup,
            pkid: publish.pkid,
        };
        if inbound.try_send(message).is_err() {
            tracing::warn!(device = %self.device.id, "inbound message dropped: its queue is full");
        }
    }

    /// Reads the next rows of the device's queue if the connection and window allow.
    fn start_fetch(&mut self) {
        if !self.connected || self.fetch.is_some() || !self.has_more {
            return;
        }
        if self.resync && !self.window.settled() {
            return; // acknowledged rows must be gone before reading from the start
        }
        let free = self.window.free();
        if free == 0 || (free < self.batch && self.window.unacknowledged() > 0) {
            return;
        }
        self.rows_changed.borrow_and_update();
        let after = if self.resync { 0 } else { self.cursor };
        self.window.reserve(free);
        let store = self.store.clone();
        let device = self.device.id.clone();
        let generation = self.generation;
        let delay = self.fetch_delay.take();
        self.fetch = Some(Box::pin(async move {
            if let Some(delay) = delay {
                tokio::time::sleep(delay).await;
            }
            Fetched {
                generation,
                reserved: free,
                rows: store.fetch(&device, after, free).await,
            }
        }));
    }

    fn on_fetched(&mut self, fetched: Fetched) {
        self.window.release(fetched.reserved);
        if fetched.generation != self.generation || !self.connected {
            self.has_more = true;
            return;
        }
        let rows = match fetched.rows {
            Ok(rows) => rows,
            Err(error) => {
                if let Some(repeats) = self.store_errors.admit() {
                    tracing::warn!(device = %self.device.id, repeats, "reading the queue failed: {error}");
                }
                self.fetch_delay = Some(FETCH_RETRY);
                self.has_more = true;
                return;
            }
        };
        self.resync = false;
        self.has_more = rows.len() == fetched.reserved;
        for row in rows {
            let topic = self.topic(&row.event_id);
            if row.payload.len() + topic.len() + 16 > MAX_PACKET {
                tracing::error!(
                    device = %self.device.id,
                    row = row.id,
                    "queued event too large for an MQTT packet; deleting it"
                );
                self.window.discard(row.id);
                self.cursor = row.id;
                continue;
            }
            match self
                .client
                .try_publish(topic, QoS::AtLeastOnce, false, row.payload)
            {
                Ok(()) => {
                    self.window.submitted(row.id);
                    self.cursor = row.id;
                }
                Err(error) => {
                    // The request channel is sized for the window, so this means the
                    // event loop is gone; the row is read again later.
                    tracing::warn!(device = %self.device.id, "publish not queued: {error}");
                    self.has_more = true;
                    break;
                }
            }
        }
        self.update_in_flight(0);
    }

    fn start_delete(&mut self) {
        if self.delete.is_some() {
            return;
        }
        let rows = self.window.take_acked();
        if rows.is_empty() {
            return;
        }
        let count = rows.len();
        let store = self.store.clone();
        self.delete = Some(Box::pin(async move { (count, store.delete(rows).await) }));
    }

    fn on_deleted(&mut self, (count, result): (usize, Result<(), StoreError>)) {
        self.window.deleted(count);
        if let Err(error) = result {
            if let Some(repeats) = self.store_errors.admit() {
                tracing::warn!(
                    device = %self.device.id,
                    repeats,
                    "deleting acknowledged events failed (they will be sent again): {error}"
                );
            }
        }
    }

    fn on_qos0(&mut self, event: Event) {
        if self.connected && self.window.qos0_pending() < QOS0_PENDING_LIMIT {
            let topic = self.topic(&event.event_id);
            if self
                .client
                .try_publish(topic, QoS::AtMostOnce, false, event.payload)
                .is_ok()
            {
                self.window.qos0_submitted();
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
        match self.store.count_offline_drops(&self.device.id, new).await {
            Ok(()) => self.qos0_persisted = dropped,
            Err(error) => tracing::debug!("QoS 0 drop count not saved: {error}"),
        }
        self.status.send_modify(|s| s.qos0_dropped = dropped);
    }

    fn topic(&mut self, event_id: &str) -> String {
        if event_id.starts_with(MANAGEMENT_PUBLISH) {
            return event_id.to_owned();
        }
        if let Some(topic) = self.topic_cache.get(event_id) {
            return topic.clone();
        }
        let values = TemplateValues {
            org: &self.org,
            device_type: &self.device.device_type,
            device_id: &self.device.id,
        };
        let topic = self.naming.event.render(&values, event_id);
        if self.topic_cache.len() < TOPIC_CACHE {
            self.topic_cache.insert(event_id.to_owned(), topic.clone());
        }
        topic
    }

    /// Graceful end: give in-flight events a moment to be acknowledged, commit their
    /// deletion, save the drop counts, and disconnect.
    async fn stop(mut self) {
        let deadline = Instant::now() + ACK_GRACE;
        while self.connected && self.window.unacknowledged() > 0 {
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
        let acked = self.window.take_acked();
        if !acked.is_empty() {
            let _ = tokio::time::timeout(DELETE_GRACE, self.store.delete(acked)).await;
        }
        self.persist_qos0_drops().await;
        if self.connected && self.client.try_disconnect().is_ok() {
            let deadline = Instant::now() + DISCONNECT_GRACE;
            loop {
                tokio::select! {
                    batch = self.driver.recv() => match batch {
                        Some(batch) if batch.iter().any(|e| matches!(e, DriverEvent::Disconnected)) => break,
                        Some(_) => {}
                        None => break,
                    },
                    _ = tokio::time::sleep_until(deadline) => break,
                }
            }
        }
        self.status.send_modify(|s| s.connected = false);
        tracing::debug!(device = %self.device.id, "session stopped");
    }
}
