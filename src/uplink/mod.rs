//! The MQTT uplink: one client session per field device (rumqttc), fed from the
//! store-and-forward queue for QoS 1 events and directly for QoS 0 events.
//!
//! ```text
//! events ──> router ──QoS 1──> Store (SQLite, committed) ──> session ──> broker
//!            └─QoS 0──> session (dropped and counted when offline)
//! ```
//!
//! Each session (`d:<org>:<type>:<id>`, `clean_session = false`) reads its device's
//! queued rows in order, keeps at most `inflight` of them between "sent" and "deletion
//! committed", deletes a row only when the broker's PUBACK for that exact packet
//! arrives, and after every reconnect resends whatever was not acknowledged.

mod session;
mod tls;
mod topics;
mod window;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::event::{Event, Qos};
use crate::store::Store;

pub use session::SessionStatus;
pub use tls::TlsSettings;
pub use topics::TopicScheme;

/// Largest event payload accepted (the platform's limit).
pub const MAX_PAYLOAD: usize = 131_072;
/// QoS 0 events waiting for their session; more are dropped and counted.
const QOS0_CAPACITY: usize = 16;

/// Connection settings shared by every device session; the runtime fills them from
/// `upstream` in the configuration.
#[derive(Debug, Clone)]
pub struct UplinkSettings {
    /// `mqtt://host[:port]` (default port 1883) or `mqtts://host[:port]` (8883).
    pub url: String,
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
    /// Reconnect delays: doubling from `reconnect_min` up to `reconnect_max`, jittered.
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    /// TCP + TLS + CONNACK deadline of one connection attempt (whole seconds).
    pub connect_timeout: Duration,
    /// Where publishes received from the broker go (commands), if anywhere. The
    /// channel is bounded; when it is full, further publishes are dropped and logged.
    /// Sessions subscribe to their commands only when it is set.
    pub inbound: Option<mpsc::Sender<Inbound>>,
    /// QoS of the command subscription.
    pub command_qos: rumqttc::QoS,
}

impl UplinkSettings {
    /// Defaults: keepalive 30 s, inflight 100, reconnect 500 ms .. 30 s, connect 10 s.
    pub fn new(url: impl Into<String>, org: impl Into<String>) -> Self {
        UplinkSettings {
            url: url.into(),
            org: org.into(),
            keepalive: Duration::from_secs(30),
            tls: TlsSettings::default(),
            topics: TopicScheme::Platform,
            inflight: 100,
            reconnect_min: Duration::from_millis(500),
            reconnect_max: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            inbound: None,
            command_qos: rumqttc::QoS::ExactlyOnce,
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
}

/// Topic prefix of device management requests, as the device sees them.
pub const MANAGEMENT_REQUESTS: &str = "iotdm-1/";
/// Topic prefix of what a managed device publishes; events whose id starts with it are
/// published on that topic as is.
pub const MANAGEMENT_PUBLISH: &str = "iotdevice-1/";

#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    #[error("upstream.url {url:?}: {reason}")]
    Url { url: String, reason: String },
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
        let plan = session::Plan::new(&settings, &devices)?;
        let shutdown = CancellationToken::new();
        let mut routes = HashMap::new();
        let mut statuses = HashMap::new();
        let mut tasks = Vec::with_capacity(devices.len());
        for device in devices {
            let (qos0_sender, qos0_receiver) = mpsc::channel(QOS0_CAPACITY);
            let qos0_dropped = Arc::new(AtomicU64::new(0));
            let (status, task) = plan.spawn(
                device.clone(),
                store.clone(),
                qos0_receiver,
                qos0_dropped.clone(),
                shutdown.clone(),
            );
            routes.insert(
                device.id.clone(),
                Route {
                    qos0: qos0_sender,
                    qos0_dropped,
                },
            );
            statuses.insert(device.id, status);
            tasks.push(task);
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
    let management = event
        .event_id
        .strip_prefix(MANAGEMENT_PUBLISH)
        .is_some_and(|rest| !rest.is_empty() && !rest.contains(['+', '#']));
    if !management && !topics::valid_id(&event.event_id) {
        rejected.log(&event, "the event id is not [A-Za-z0-9._-]{1,36}");
        return;
    }
    if event.payload.len() > MAX_PAYLOAD {
        rejected.log(&event, "the payload is larger than 131072 bytes");
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

/// Invalid events are a programming or configuration error: log the first few.
#[derive(Default)]
struct Rejections {
    logged: u32,
}

impl Rejections {
    const LOG_LIMIT: u32 = 20;

    fn log(&mut self, event: &Event, reason: &str) {
        if self.logged < Self::LOG_LIMIT {
            self.logged += 1;
            tracing::error!(
                device = %event.device_id,
                event = %event.event_id,
                "event not sent: {reason}"
            );
        }
    }

    fn log_store(&mut self, error: crate::store::StoreError) {
        if self.logged < Self::LOG_LIMIT {
            self.logged += 1;
            tracing::error!("event not queued: {error}");
        }
    }
}

/// Where the broker is, parsed from `upstream.url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Endpoint {
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

impl Endpoint {
    pub(crate) fn parse(url: &str) -> Result<Endpoint, UplinkError> {
        let invalid = |reason: &str| UplinkError::Url {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| invalid("expected mqtt://host[:port] or mqtts://host[:port]"))?;
        let tls = match scheme.to_ascii_lowercase().as_str() {
            "mqtt" | "tcp" => false,
            "mqtts" | "ssl" => true,
            _ => return Err(invalid("the scheme must be mqtt:// or mqtts://")),
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.contains(['/', '@', '?', '#']) {
            return Err(invalid(
                "only host and port are allowed (no path, user or query)",
            ));
        }
        let (host, port) = match authority.strip_prefix('[') {
            Some(bracketed) => {
                let (host, after) = bracketed
                    .split_once(']')
                    .ok_or_else(|| invalid("an IPv6 address needs a closing ']'"))?;
                (host, after.strip_prefix(':'))
            }
            None => match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            },
        };
        if host.is_empty() {
            return Err(invalid("the host is missing"));
        }
        let port = match port {
            Some(port) => port
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| invalid("the port must be a number from 1 to 65535"))?,
            None if tls => 8883,
            None => 1883,
        };
        Ok(Endpoint {
            host: host.to_owned(),
            port,
            tls,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let e = Endpoint::parse("mqtt://127.0.0.1:1884").unwrap();
        assert_eq!((e.host.as_str(), e.port, e.tls), ("127.0.0.1", 1884, false));
        let e = Endpoint::parse("mqtts://broker.example").unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.tls),
            ("broker.example", 8883, true)
        );
        let e = Endpoint::parse("mqtt://[::1]:1900/").unwrap();
        assert_eq!((e.host.as_str(), e.port), ("::1", 1900));
        assert_eq!(Endpoint::parse("mqtt://h").unwrap().port, 1883);
        for (bad, reason) in [
            ("127.0.0.1:1883", "expected mqtt://"),
            ("http://h", "scheme"),
            ("mqtt://h:0", "port"),
            ("mqtt://h:x", "port"),
            ("mqtt://:1883", "host is missing"),
            ("mqtt://h/path", "no path"),
            ("mqtt://user@h", "no path, user"),
        ] {
            let err = Endpoint::parse(bad).unwrap_err().to_string();
            assert!(err.contains(reason), "{bad}: {err}");
            assert!(err.contains("upstream.url"), "{err}");
        }
    }
}
