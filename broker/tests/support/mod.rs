//! Brokers, clients and processes for the broker's integration tests: a packet-level MQTT
//! client over any byte stream, brokers (plain or in platform mode), the broker binary, and
//! condition waits.

#![allow(dead_code)]

mod client;
pub mod pki;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fieldbridge_broker::config::PlatformConfig;
use fieldbridge_broker::platform::PlatformRegistry;
use fieldbridge_broker::{Broker, Config, RunningBroker};
use fieldbridge_mqtt::codec::{
    Connect, LastWill, Properties, Property, ProtocolVersion, Publish, QoS, SubscribeReturnCode,
};
use parking_lot::Mutex;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub use client::Client;

/// How waiting for a packet ended without one.
#[derive(Debug, PartialEq, Eq)]
pub enum Silence {
    Closed,
    TimedOut,
}

/// How long any expected event may take on a loaded machine.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// A test configuration: loopback, a free port, no `$SYS` messages.
pub fn config() -> Config {
    Config {
        sys_interval: Duration::ZERO,
        ..Config::ephemeral()
    }
}

/// A platform broker configuration: loopback, a free port, no `$SYS` messages.
pub fn platform_config(org: &str, registry: Option<&Path>) -> Config {
    Config {
        platform: Some(PlatformConfig {
            org: org.into(),
            registry: registry.map(Path::to_path_buf),
            verified_cache: 100,
        }),
        ..config()
    }
}

pub async fn start(config: Config) -> RunningBroker {
    Broker::new(config)
        .expect("valid config")
        .start()
        .await
        .expect("broker starts")
}

/// Polls `condition` until it holds; panics with `what` after [`DEADLINE`].
pub async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Registers devices (type, id) and applications in a new registry file; returns the
/// device tokens and the applications' (API key, token) in order.
pub async fn register(
    path: &Path,
    org: &str,
    devices: &[(&str, &str)],
    apps: &[&str],
) -> (Vec<String>, Vec<(String, String)>) {
    let registry = PlatformRegistry::open(path).await.expect("registry opens");
    let mut tokens = Vec::new();
    for (device_type, device_id) in devices {
        tokens.push(
            registry
                .add_device(device_type, device_id, None)
                .await
                .expect("device added"),
        );
    }
    let mut keys = Vec::new();
    for app in apps {
        let credentials = registry.add_app(org, app).await.expect("app added");
        keys.push((credentials.api_key, credentials.token));
    }
    registry.close().await;
    (tokens, keys)
}

pub fn connect_packet(client_id: &str, clean_session: bool) -> Connect {
    Connect {
        protocol: ProtocolVersion::V311,
        clean_session,
        keep_alive: 60,
        client_id: client_id.into(),
        will: None,
        username: None,
        password: None,
        properties: Properties::new(),
    }
}

/// An MQTT 5 CONNECT without properties (Session Expiry Interval 0).
pub fn connect5_packet(client_id: &str, clean_start: bool) -> Connect {
    Connect {
        protocol: ProtocolVersion::V5,
        ..connect_packet(client_id, clean_start)
    }
}

/// A list of properties, in order.
pub fn props(list: impl IntoIterator<Item = Property>) -> Properties {
    list.into_iter().collect()
}

/// A PUBLISH with these properties.
pub fn publish_with(
    topic: &str,
    payload: impl AsRef<[u8]>,
    qos: QoS,
    pkid: u16,
    properties: Properties,
) -> Publish {
    Publish {
        properties,
        ..publish(topic, payload, qos, pkid)
    }
}

/// A clean-session CONNECT with credentials.
pub fn login_packet(client_id: &str, username: Option<&str>, password: Option<&str>) -> Connect {
    Connect {
        username: username.map(Into::into),
        password: password.map(|p| Bytes::copy_from_slice(p.as_bytes())),
        ..connect_packet(client_id, true)
    }
}

pub fn will(topic: &str, payload: &str, qos: QoS, retain: bool) -> LastWill {
    LastWill {
        topic: topic.into(),
        payload: Bytes::copy_from_slice(payload.as_bytes()),
        qos,
        retain,
        properties: Properties::new(),
    }
}

pub fn publish(topic: &str, payload: impl AsRef<[u8]>, qos: QoS, pkid: u16) -> Publish {
    Publish {
        dup: false,
        qos,
        retain: false,
        topic: topic.into(),
        pkid,
        payload: Bytes::copy_from_slice(payload.as_ref()),
        properties: Properties::new(),
    }
}

pub fn granted(qos: QoS) -> SubscribeReturnCode {
    SubscribeReturnCode::Success(qos)
}

pub fn text(publish: &Publish) -> &str {
    std::str::from_utf8(&publish.payload).expect("UTF-8 payload")
}

pub fn payload(publish: &Publish) -> String {
    text(publish).to_owned()
}

/// The `fieldbridge-broker` binary, started with `args`; killed when dropped.
pub struct Process {
    pub child: Child,
    pub addr: SocketAddr,
    pub stderr: Arc<Mutex<Vec<String>>>,
}

impl Process {
    pub async fn spawn(args: &[&str]) -> Process {
        let mut child = Command::new(env!("CARGO_BIN_EXE_fieldbridge-broker"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("broker binary starts");
        let stderr = child.stderr.take().expect("stderr piped");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
        let collected = lines.clone();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stderr).lines();
            let mut addr_tx = Some(addr_tx);
            while let Ok(Some(line)) = reader.next_line().await {
                if let Some(addr) = line.strip_prefix("listening on ") {
                    if let (Some(tx), Ok(addr)) =
                        (addr_tx.take(), addr.trim().parse::<SocketAddr>())
                    {
                        let _ = tx.send(addr);
                    }
                }
                collected.lock().push(line);
            }
        });
        let addr = match tokio::time::timeout(DEADLINE, addr_rx).await {
            Ok(Ok(addr)) => addr,
            _ => panic!(
                "the broker did not print its address; stderr: {:?}",
                lines.lock()
            ),
        };
        Process {
            child,
            addr,
            stderr: lines,
        }
    }

    pub fn terminate(&self) {
        self.signal("-TERM");
    }

    pub fn kill_hard(&self) {
        self.signal("-KILL");
    }

    /// SIGHUP: the broker reloads its password file and ACL.
    pub fn hang_up(&self) {
        self.signal("-HUP");
    }

    /// Waits until the broker has written a stderr line containing `text`.
    pub async fn wait_for_log(&self, text: &str) {
        wait_until(&format!("the broker logs {text:?}"), || {
            self.stderr.lock().iter().any(|line| line.contains(text))
        })
        .await;
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("running");
        let status = std::process::Command::new("kill")
            .arg(signal)
            .arg(pid.to_string())
            .status();
        assert!(status.is_ok_and(|status| status.success()), "kill {signal}");
    }
}

/// Runs a command to completion with a deadline and returns (success, stdout, stderr).
pub async fn run(program: &str, args: &[&str]) -> (bool, String, String) {
    let output = tokio::time::timeout(
        DEADLINE,
        Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("{program} {args:?} did not finish"))
    .unwrap_or_else(|error| panic!("{program} cannot run (is it installed?): {error}"));
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

pub fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write file");
    path
}
