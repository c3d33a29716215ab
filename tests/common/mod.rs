//! Shared helpers of the gateway's tests: a real broker on 127.0.0.1 (the workspace's
//! own, or Mosquitto; started per test, killed on drop), an MQTT subscriber that records
//! what it receives, and waiting on conditions with generous deadlines.
#![allow(dead_code)] // each test binary uses a different subset

mod broker;
pub mod scripted;

pub use broker::*;

use std::future::Future;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fieldbridge::event::{Event, Qos};
use fieldbridge::uplink::{DeviceIdentity, SessionStatus, Uplink, UplinkSettings};
use rumqttc::{AsyncClient, Event as MqttEvent, MqttOptions, Packet, QoS};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Deadline for anything a test waits for (a loaded 2-core CI machine is slow).
pub const DEADLINE: Duration = Duration::from_secs(30);

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A child process killed when dropped, so a failing test leaves none behind.
pub struct KillOnDrop(pub Child);

impl std::ops::Deref for KillOnDrop {
    type Target = Child;

    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `fieldbridge run --config CONFIG` with its log (stderr) in `log`.
pub fn spawn_gateway(config: &Path, log: &Path) -> KillOnDrop {
    KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_fieldbridge"))
            .args(["run", "--config"])
            .arg(config)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(log).expect("log file"))
            .spawn()
            .expect("gateway starts"),
    )
}

pub fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(child.id().to_string())
        .status()
        .expect("kill");
    assert!(status.success(), "kill -{name} failed");
}

fn wait_exit(child: &mut Child) {
    let deadline = Instant::now() + DEADLINE;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A message as the subscriber received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub topic: String,
    pub payload: Vec<u8>,
}

/// Subscriber options.
pub struct SubscriberConfig<'a> {
    pub port: u16,
    pub client_id: &'a str,
    pub filter: &'a str,
    /// `clean_session = false`: with broker persistence the subscription survives a
    /// broker restart and messages are queued for it while it is away.
    pub persistent: bool,
    pub credentials: Option<(&'a str, &'a str)>,
}

/// An MQTT client that subscribes (again after every reconnect) and records messages.
pub struct Subscriber {
    received: Arc<Mutex<Vec<Received>>>,
    subscriptions: watch::Receiver<u64>,
    task: JoinHandle<()>,
}

impl Subscriber {
    /// Connects and returns once the first subscription is acknowledged.
    pub async fn start(config: SubscriberConfig<'_>) -> Subscriber {
        let mut options = MqttOptions::new(config.client_id, "127.0.0.1", config.port);
        options
            .set_clean_session(!config.persistent)
            .set_keep_alive(Duration::from_secs(30))
            .set_max_packet_size(256 * 1024, 256 * 1024);
        if let Some((user, password)) = config.credentials {
            options.set_credentials(user, password);
        }
        let (client, mut eventloop) = AsyncClient::new(options, 64);
        let received = Arc::new(Mutex::new(Vec::new()));
        let (subscribed, subscriptions) = watch::channel(0u64);
        let filter = config.filter.to_owned();
        let sink = received.clone();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(MqttEvent::Incoming(Packet::ConnAck(_))) => {
                        client
                            .try_subscribe(filter.clone(), QoS::AtLeastOnce)
                            .unwrap();
                    }
                    Ok(MqttEvent::Incoming(Packet::SubAck(_))) => {
                        subscribed.send_modify(|n| *n += 1);
                    }
                    Ok(MqttEvent::Incoming(Packet::Publish(p))) => {
                        sink.lock().unwrap().push(Received {
                            topic: p.topic.clone(),
                            payload: p.payload.to_vec(),
                        });
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        let mut subscriber = Subscriber {
            received,
            subscriptions,
            task,
        };
        subscriber.wait_subscribed(1).await;
        subscriber
    }

    /// Waits until the subscription has been acknowledged `count` times in all.
    pub async fn wait_subscribed(&mut self, count: u64) {
        let result =
            tokio::time::timeout(DEADLINE, self.subscriptions.wait_for(|n| *n >= count)).await;
        assert!(result.is_ok(), "subscription {count} not acknowledged");
    }

    pub fn messages(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Waits until `done` holds for the messages received so far.
    pub async fn wait_for(&self, what: &str, done: impl Fn(&[Received]) -> bool) {
        let received = self.received.clone();
        wait_until(what, || done(&received.lock().unwrap())).await;
    }

    /// Waits for a message that `wanted` accepts and returns the first one.
    pub async fn first_matching(&self, what: &str, wanted: impl Fn(&Received) -> bool) -> Received {
        self.wait_for(what, |messages| messages.iter().any(&wanted))
            .await;
        self.messages()
            .into_iter()
            .find(wanted)
            .expect("a message that matched stays recorded")
    }
}

/// A broker that keeps sessions across a restart, and a persistent subscriber to
/// every platform event (`iot-2/#`) whose session outlives the broker's downtime.
pub async fn persistent_broker_and_reader(
    kind: BrokerKind,
    dir: &Path,
    client_id: &str,
) -> (TestBroker, Subscriber) {
    let broker = TestBroker::start(
        kind,
        dir,
        BrokerConfig {
            persistence: true,
            ..BrokerConfig::default()
        },
    );
    let subscriber = Subscriber::start(SubscriberConfig {
        port: broker.port,
        client_id,
        filter: "iot-2/#",
        persistent: true,
        credentials: None,
    })
    .await;
    (broker, subscriber)
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Polls `condition` every 20 ms until it holds; panics after [`DEADLINE`].
pub async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Calls `attempt` every `interval` until it returns a value, blocking the thread;
/// panics after [`DEADLINE`].
pub fn poll_blocking<T>(
    what: &str,
    interval: Duration,
    mut attempt: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(value) = attempt() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(interval);
    }
}

/// Like [`wait_until`] for an asynchronous condition.
pub async fn wait_until_async<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + DEADLINE;
    while !condition().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An unmanaged device of the uplink; `token` makes it use token authentication.
pub fn device_identity(id: &str, device_type: &str, token: Option<&str>) -> DeviceIdentity {
    DeviceIdentity {
        managed: false,
        id: id.into(),
        device_type: device_type.into(),
        token: token.map(Into::into),
        tls: None,
    }
}

/// Uplink settings for organization `myorg` that reconnect quickly.
pub fn uplink_settings(url: impl AsRef<str>) -> UplinkSettings {
    let url = url.as_ref().parse().expect("a broker url");
    let mut settings = UplinkSettings::new(url, "myorg");
    settings.reconnect_min = Duration::from_millis(100);
    settings.reconnect_max = Duration::from_secs(1);
    settings
}

/// Event `event_id` of `device` carrying a test payload with `seq`.
pub fn test_event(device: &str, event_id: &str, seq: u64, qos: Qos) -> Event {
    Event::encoded(device, event_id, qos, payload(device, seq))
}

/// Waits until `done` holds for the session status of `device`; panics after [`DEADLINE`].
pub async fn wait_status(
    uplink: &Uplink,
    device: &str,
    what: &str,
    done: impl Fn(&SessionStatus) -> bool,
) {
    let mut status = uplink.status(device).expect("configured device");
    let reached = tokio::time::timeout(DEADLINE, status.wait_for(|s| done(s)))
        .await
        .is_ok();
    assert!(
        reached,
        "{device}: timed out waiting for {what}: {:?}",
        *status.borrow()
    );
}

/// A test event payload: `{"device": ..., "seq": N}`.
pub fn payload(device: &str, seq: u64) -> Vec<u8> {
    format!("{{\"device\":\"{device}\",\"seq\":{seq}}}").into_bytes()
}

/// The (device, seq) a test payload carries.
pub fn parse(payload: &[u8]) -> (String, u64) {
    let value: serde_json::Value = serde_json::from_slice(payload).expect("JSON payload");
    (
        value["device"].as_str().expect("device").to_owned(),
        value["seq"].as_u64().expect("seq"),
    )
}

/// Sequence numbers received for `device`, in arrival order (duplicates included).
pub fn seqs_of(messages: &[Received], device: &str) -> Vec<u64> {
    messages
        .iter()
        .map(|m| parse(&m.payload))
        .filter(|(d, _)| d == device)
        .map(|(_, seq)| seq)
        .collect()
}

/// Checks that `seqs` holds every number of `expected` and that their first
/// arrivals are in order; returns how many duplicates arrived.
pub fn check_complete_and_ordered(
    device: &str,
    seqs: &[u64],
    expected: std::ops::Range<u64>,
) -> usize {
    let mut first_seen = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for &seq in seqs {
        if seen.insert(seq) {
            first_seen.push(seq);
        }
    }
    let missing: Vec<u64> = expected.clone().filter(|s| !seen.contains(s)).collect();
    assert!(missing.is_empty(), "{device}: missing {missing:?}");
    let unexpected: Vec<u64> = first_seen
        .iter()
        .copied()
        .filter(|s| !expected.contains(s))
        .collect();
    assert!(unexpected.is_empty(), "{device}: unexpected {unexpected:?}");
    assert!(
        first_seen.windows(2).all(|w| w[0] < w[1]),
        "{device}: out of order: {first_seen:?}"
    );
    seqs.len() - first_seen.len()
}
