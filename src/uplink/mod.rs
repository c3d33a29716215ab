//! The MQTT uplink: one client session per field device (rumqttc), fed from the
//! store-and-forward queue for QoS 1 events and directly for QoS 0 events.
//!
//! ```text
//! events ──> router ──QoS 1──> Store (SQLite, committed) ──> session ──> broker
//!            └─QoS 0──> session (dropped and counted when offline)
//! ```
//!
//! Each session (`clean_session = false`) reads its device's queued rows in order,
//! keeps at most `inflight` of them between "sent" and "deletion committed", deletes a
//! row only when the broker's PUBACK for that exact packet arrives, and after every
//! reconnect resends whatever was not acknowledged. The parts: `driver` (the task that
//! polls rumqttc), `feed` and `window` (which rows to read and which packet names which
//! row: pure state), `profile` (identity, will, announcements, encoding and inbound
//! topics of an upstream world), `inbound` (routing publishes to the command service)
//! and `session` (the task that ties them together).

mod aliases;
mod batching;
mod catalog;
mod driver;
mod feed;
mod homeassistant;
mod inbound;
mod link;
mod plan;
mod profile;
mod session;
mod sparkplug;
mod tls;
mod topics;
mod window;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fieldbridge_service::LogThrottle;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::event::{Body, Event, Qos};
use crate::store::Store;

pub use catalog::{Catalog, DeviceInfo, Tag, Writable};
pub use homeassistant::{HomeAssistantSettings, ANNOUNCED_KEY as HOMEASSISTANT_ANNOUNCED};
pub use link::Protocol;
pub use session::SessionStatus;
pub use sparkplug::SparkplugSettings;
pub use tls::{ClientCertificate, TlsSettings};
pub use topics::TopicScheme;
pub use window::UNDELETED_WINDOWS;

pub use fieldbridge_mqtt::platform::MAX_PAYLOAD;
pub use fieldbridge_mqtt::url::BrokerUrl;
/// QoS 0 events waiting for their session; more are dropped and counted.
const QOS0_CAPACITY: usize = 16;

/// Connection settings shared by every device session; the runtime fills them from
/// `upstream` in the configuration.
#[derive(Debug, Clone)]
pub struct UplinkSettings {
    pub url: BrokerUrl,
    /// Organisation id, part of every client id.
    pub org: String,
    /// MQTT keepalive; zero disables it, otherwise at least one second.
    pub keepalive: Duration,
    /// Used for `mqtts://` only.
    pub tls: TlsSettings,
    pub topics: TopicScheme,
    /// Events per device sent and not yet acknowledged-and-deleted; also the bound on
    /// duplicates per device after a crash.
    pub inflight: u16,
    /// Reconnect delays while the broker cannot be reached: doubling from
    /// `reconnect_min` up to `reconnect_max`, each spread over half to 1.5 times its
    /// value. Short, so that events flow again soon after an outage ends.
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    /// The cap instead of `reconnect_max` while the broker refuses the connection (bad
    /// credentials, not authorized): retrying soon would not change its answer.
    pub refused_reconnect_max: Duration,
    /// TCP + TLS + CONNACK deadline of one connection attempt (whole seconds).
    pub connect_timeout: Duration,
    /// Where publishes received from the broker go (commands), if anywhere. The
    /// channel is bounded; when it is full, further publishes are dropped and logged.
    /// Sessions subscribe to their commands only when it is set.
    pub inbound: Option<mpsc::Sender<Inbound>>,
    /// QoS of the command subscription.
    pub command_qos: rumqttc::QoS,
    /// Largest packet read from the broker (see `upstream.max_inbound`); advertised as
    /// Maximum Packet Size with MQTT 5.
    pub max_inbound: usize,
    /// The MQTT version of every session.
    pub protocol: Protocol,
    /// MQTT 5: how long the broker keeps a disconnected device's session (3.1.1
    /// sessions are kept until the broker forgets them).
    pub session_expiry: Duration,
    /// MQTT 5: the Message Expiry Interval of QoS 0 events, if any.
    pub message_expiry: Option<Duration>,
    /// What each device publishes and accepts, for profiles that announce it.
    pub catalog: Catalog,
}

impl UplinkSettings {
    /// Defaults: keepalive 30 s, inflight 100, reconnect 500 ms .. 2 s (60 s while
    /// refused), connect 10 s.
    pub fn new(url: BrokerUrl, org: impl Into<String>) -> Self {
        UplinkSettings {
            url,
            org: org.into(),
            keepalive: Duration::from_secs(30),
            tls: TlsSettings::default(),
            topics: TopicScheme::Platform,
            inflight: 100,
            reconnect_min: Duration::from_millis(500),
            reconnect_max: Duration::from_secs(2),
            refused_reconnect_max: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(10),
            inbound: None,
            command_qos: rumqttc::QoS::ExactlyOnce,
            max_inbound: 256 * 1024,
            protocol: Protocol::V311,
            session_expiry: Duration::from_secs(24 * 60 * 60),
            message_expiry: None,
            catalog: Catalog::new(),
        }
    }
}

/// One field device as an MQTT client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceIdentity {
    pub id: String,
    pub device_type: String,
    /// Sent as the password, with user name `use-token-auth` (or the custom scheme's
    /// user name template); no credentials at all when absent.
    pub token: Option<String>,
    /// Announces itself with `iotdevice-1/mgmt/manage` on connect and takes device
    /// management requests (`iotdm-1/#`).
    pub managed: bool,
    /// Its own client certificate over `mqtts://`, instead of the upstream one.
    pub tls: Option<ClientCertificate>,
}

/// What a publish the broker sent to a device session is, by its topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InboundKind {
    /// A command (`iot-2/cmd/<name>/fmt/json` or the custom command template).
    Command(String),
    /// A device management request, `iotdm-1/<rest>`: the rest.
    Management(String),
}

/// A publish the broker sent to a device session.
#[derive(Debug, Clone)]
pub struct Inbound {
    pub device_id: String,
    pub kind: InboundKind,
    pub payload: bytes::Bytes,
    /// The broker's redelivery flag and the packet id (0 for QoS 0).
    pub dup: bool,
    pub pkid: u16,
    /// MQTT 5 request/response: where the command's result goes.
    pub reply: Option<crate::event::Reply>,
}

/// Topic prefix of device management requests, as the device sees them.
pub const MANAGEMENT_REQUESTS: &str = "iotdm-1/";
/// Topic prefix of what a managed device publishes (management responses).
pub const MANAGEMENT_PUBLISH: &str = "iotdevice-1/";

#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    #[error("upstream.tls: {0}")]
    Tls(String),
    #[error("{reason} ({template:?})")]
    Topic { template: String, reason: String },
    #[error("device {device:?}: {reason}")]
    Device { device: String, reason: String },
    #[error("upstream: {0}")]
    Settings(String),
}

/// The running uplink.
pub struct Uplink {
    statuses: HashMap<String, watch::Receiver<SessionStatus>>,
    tasks: Vec<JoinHandle<()>>,
    router: JoinHandle<()>,
    shutdown: CancellationToken,
    store: Store,
}

impl Uplink {
    /// Validates the settings and starts one session per device, plus the router that
    /// takes `events` (from the runtime's event sink): QoS 1 events go to the queue,
    /// waiting while its writer is behind (back-pressure); QoS 0 events go straight to
    /// their session and are dropped and counted when it cannot take them. Must be
    /// called inside a Tokio runtime.
    pub fn start(
        settings: UplinkSettings,
        store: Store,
        devices: Vec<DeviceIdentity>,
        events: mpsc::Receiver<Event>,
    ) -> Result<Uplink, UplinkError> {
        let plan = plan::Plan::new(&settings, &devices)?;
        let shutdown = CancellationToken::new();
        let mut routes = HashMap::new();
        let mut statuses = HashMap::new();
        let mut tasks = Vec::with_capacity(devices.len());
        let mut spawn = |profile, ids: Vec<String>| {
            let (qos0_sender, qos0_receiver) = mpsc::channel(QOS0_CAPACITY);
            let qos0_dropped = Arc::new(AtomicU64::new(0));
            let (status, task) = plan.spawn(
                profile,
                store.clone(),
                qos0_receiver,
                qos0_dropped.clone(),
                shutdown.clone(),
            );
            for id in ids {
                let route = Route {
                    qos0: qos0_sender.clone(),
                    qos0_dropped: qos0_dropped.clone(),
                };
                routes.insert(id.clone(), route);
                statuses.insert(id, status.clone());
            }
            tasks.push(task);
        };
        match &settings.topics {
            // One session, the edge node, for every device.
            TopicScheme::Sparkplug(sparkplug) => {
                let profile =
                    sparkplug::SparkplugProfile::new(sparkplug.clone(), &settings.catalog);
                spawn(
                    Box::new(profile),
                    devices.iter().map(|d| d.id.clone()).collect(),
                );
            }
            TopicScheme::HomeAssistant(homeassistant) => {
                let configured: Vec<String> = devices.iter().map(|d| d.id.clone()).collect();
                for device in devices {
                    let id = device.id.clone();
                    let info = settings.catalog.get(&id).cloned().unwrap_or_default();
                    let profile = homeassistant::HomeAssistantProfile::new(
                        device,
                        info,
                        homeassistant,
                        &configured,
                    );
                    spawn(Box::new(profile), vec![id]);
                }
            }
            _ => {
                for device in devices {
                    let id = device.id.clone();
                    spawn(plan.profile(device), vec![id]);
                }
            }
        }
        tracing::info!(url = %settings.url, sessions = tasks.len(), "uplink started");
        let router = tokio::spawn(route(events, routes, store.clone(), shutdown.clone()));
        Ok(Uplink {
            statuses,
            tasks,
            router,
            shutdown,
            store,
        })
    }

    /// Connection state and counters of a device's session.
    pub fn status(&self, device_id: &str) -> Option<watch::Receiver<SessionStatus>> {
        self.statuses.get(device_id).cloned()
    }

    /// Stops taking events (QoS 1 ones already submitted are queued), lets the broker
    /// acknowledge what is in flight for a moment, commits the deletions, disconnects
    /// every session, then closes the store it was given (everything committed, WAL
    /// checkpointed): done within about a second.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        let _ = self.router.await;
        for task in self.tasks {
            let _ = task.await;
        }
        self.store.close().await;
    }
}

struct Route {
    qos0: mpsc::Sender<Event>,
    qos0_dropped: Arc<AtomicU64>,
}

async fn route(
    mut events: mpsc::Receiver<Event>,
    routes: HashMap<String, Route>,
    store: Store,
    shutdown: CancellationToken,
) {
    let mut rejected = Rejections::default();
    loop {
        let event = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            event = events.recv() => match event {
                Some(event) => event,
                None => return,
            },
        };
        dispatch(event, &routes, &store, &mut rejected).await;
    }
    // Queue what was already submitted; QoS 0 events can no longer be sent.
    events.close();
    while let Ok(event) = events.try_recv() {
        if event.qos == Qos::AtLeastOnce {
            dispatch(event, &routes, &store, &mut rejected).await;
        }
    }
}

async fn dispatch(
    event: Event,
    routes: &HashMap<String, Route>,
    store: &Store,
    rejected: &mut Rejections,
) {
    let Some(route) = routes.get(&event.device_id) else {
        rejected.log(&event, "it is not a configured device");
        return;
    };
    let topic_level = |path: &str| !path.is_empty() && !path.contains(['+', '#']);
    let valid = match &event.body {
        Body::Management { path, .. } => topic_level(path),
        Body::Encoded { event: id, .. } if id.starts_with(MANAGEMENT_PUBLISH) => {
            topic_level(&id[MANAGEMENT_PUBLISH.len()..])
        }
        _ => fieldbridge_mqtt::platform::valid_name(event.name()),
    };
    if !valid {
        rejected.log(&event, "the event id is not [A-Za-z0-9._-]{1,36}");
        return;
    }
    // Typed events are measured when encoded; JSON from a producer is measured here.
    if matches!(&event.body, Body::Encoded { payload, .. } if payload.len() > MAX_PAYLOAD) {
        rejected.log(
            &event,
            &format!("the payload is larger than {MAX_PAYLOAD} bytes"),
        );
        return;
    }
    match event.qos {
        Qos::AtLeastOnce => {
            if let Err(error) = store.enqueue(event).await {
                rejected.log_store(error);
            }
        }
        Qos::AtMostOnce => {
            if route.qos0.try_send(event).is_err() {
                route.qos0_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Events refused before the queue (a programming or configuration error, or a queue
/// that cannot take them), logged at most once per [`REJECTION_LOG_INTERVAL`].
struct Rejections(LogThrottle);

const REJECTION_LOG_INTERVAL: Duration = Duration::from_secs(60);

impl Default for Rejections {
    fn default() -> Self {
        Rejections(LogThrottle::new(REJECTION_LOG_INTERVAL))
    }
}

impl Rejections {
    fn log(&mut self, event: &Event, reason: &str) {
        if let Some(repeats) = self.0.admit() {
            tracing::error!(
                device = %event.device_id,
                event = %event.name(),
                repeats,
                "event not sent: {reason}"
            );
        }
    }

    fn log_store(&mut self, error: crate::store::StoreError) {
        if let Some(repeats) = self.0.admit() {
            tracing::error!(repeats, "event not queued: {error}");
        }
    }
}
