//! A packet-level MQTT client over any byte stream (TCP, TLS, WebSocket), brokers in
//! platform mode, and condition waits for the platform and transport tests.

#![allow(dead_code)]

pub mod pki;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use fieldbridge_broker::codec::{
    self, ConnAck, Connect, ConnectReturnCode, LastWill, Packet, ProtocolVersion, PubAck, Publish,
    QoS, Subscribe, SubscribeFilter, SubscribeReturnCode,
};
use fieldbridge_broker::config::PlatformConfig;
use fieldbridge_broker::platform::PlatformRegistry;
use fieldbridge_broker::{Broker, Config, RunningBroker};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long any expected event may take on a loaded machine.
pub const DEADLINE: Duration = Duration::from_secs(30);

pub trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

/// A platform broker configuration: loopback, a free port, no `$SYS` messages.
pub fn platform_config(org: &str, registry: Option<&Path>) -> Config {
    Config {
        sys_interval: Duration::ZERO,
        platform: Some(PlatformConfig {
            org: org.into(),
            registry: registry.map(Path::to_path_buf),
            verified_cache: 100,
        }),
        ..Config::ephemeral()
    }
}

pub async fn start(config: Config) -> RunningBroker {
    Broker::new(config)
        .expect("valid config")
        .start()
        .await
        .expect("broker starts")
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

pub fn connect_packet(client_id: &str, username: Option<&str>, password: Option<&str>) -> Connect {
    Connect {
        protocol: ProtocolVersion::V311,
        clean_session: true,
        keep_alive: 60,
        client_id: client_id.into(),
        will: None,
        username: username.map(Into::into),
        password: password.map(|p| Bytes::copy_from_slice(p.as_bytes())),
    }
}

pub fn will(topic: &str, payload: &str, retain: bool) -> LastWill {
    LastWill {
        topic: topic.into(),
        payload: Bytes::copy_from_slice(payload.as_bytes()),
        qos: QoS::AtMostOnce,
        retain,
    }
}

pub fn publish(topic: &str, payload: &[u8], qos: QoS, retain: bool) -> Publish {
    Publish {
        dup: false,
        qos,
        retain,
        topic: topic.into(),
        pkid: if qos == QoS::AtMostOnce { 0 } else { 1 },
        payload: Bytes::copy_from_slice(payload),
    }
}

/// How waiting for a packet ended without one.
#[derive(Debug, PartialEq, Eq)]
pub enum Silence {
    Closed,
    TimedOut,
}

/// A client that speaks packet by packet.
pub struct Client {
    stream: Pin<Box<dyn Stream>>,
    buf: BytesMut,
    stashed: VecDeque<Packet>,
    next_pkid: u16,
}

impl Client {
    pub fn over(stream: impl Stream + 'static) -> Self {
        Self {
            stream: Box::pin(stream),
            buf: BytesMut::new(),
            stashed: VecDeque::new(),
            next_pkid: 1,
        }
    }

    pub async fn tcp(addr: SocketAddr) -> Self {
        Self::over(TcpStream::connect(addr).await.expect("TCP connect"))
    }

    /// Sends CONNECT over `stream` and returns the CONNACK's code.
    pub async fn handshake(mut self, connect: Connect) -> (Self, ConnectReturnCode) {
        self.send(Packet::Connect(connect)).await;
        match self.recv().await {
            Packet::ConnAck(ConnAck { code, .. }) => (self, code),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    /// The CONNACK code of a connection attempt (the client is dropped).
    pub async fn attempt(addr: SocketAddr, connect: Connect) -> ConnectReturnCode {
        Self::tcp(addr).await.handshake(connect).await.1
    }

    /// Connects and asserts the broker accepted.
    pub async fn connect(
        addr: SocketAddr,
        client_id: &str,
        username: Option<&str>,
        password: Option<&str>,
    ) -> Self {
        let (client, code) = Self::tcp(addr)
            .await
            .handshake(connect_packet(client_id, username, password))
            .await;
        assert_eq!(code, ConnectReturnCode::Accepted, "{client_id} connects");
        client
    }

    pub async fn send(&mut self, packet: Packet) {
        let mut out = BytesMut::new();
        codec::encode(&packet, &mut out).expect("encodes");
        self.stream.write_all(&out).await.expect("write");
        self.stream.flush().await.expect("flush");
    }

    /// Sends several packets in one write.
    pub async fn send_all(&mut self, packets: Vec<Packet>) {
        let mut out = BytesMut::new();
        for packet in &packets {
            codec::encode(packet, &mut out).expect("encodes");
        }
        self.stream.write_all(&out).await.expect("write");
        self.stream.flush().await.expect("flush");
    }

    pub async fn try_recv(&mut self, wait: Duration) -> Result<Packet, Silence> {
        if let Some(packet) = self.stashed.pop_front() {
            return Ok(packet);
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(packet) =
                codec::decode(&mut self.buf, 1 << 24).expect("the broker sends valid packets")
            {
                return Ok(packet);
            }
            self.buf.reserve(4096);
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
                Err(_) => return Err(Silence::TimedOut),
                Ok(Ok(0)) | Ok(Err(_)) => return Err(Silence::Closed),
                Ok(Ok(_)) => {}
            }
        }
    }

    pub async fn recv(&mut self) -> Packet {
        match self.try_recv(DEADLINE).await {
            Ok(packet) => packet,
            Err(silence) => panic!("expected a packet: {silence:?}"),
        }
    }

    /// The next PUBLISH (acknowledged if QoS 1).
    pub async fn recv_publish(&mut self) -> Publish {
        loop {
            match self.recv().await {
                Packet::Publish(publish) => {
                    if publish.qos == QoS::AtLeastOnce {
                        self.send(Packet::PubAck(PubAck::new(publish.pkid))).await;
                    }
                    return publish;
                }
                Packet::PingResp | Packet::PubAck(_) => {}
                other => panic!("expected PUBLISH, got {other:?}"),
            }
        }
    }

    /// Asserts the broker closes the connection; returns the packets before the close.
    pub async fn expect_closed(&mut self) -> Vec<Packet> {
        let mut before = Vec::new();
        loop {
            match self.try_recv(DEADLINE).await {
                Ok(packet) => before.push(packet),
                Err(Silence::Closed) => return before,
                Err(Silence::TimedOut) => panic!("the broker kept the connection open"),
            }
        }
    }

    pub async fn subscribe(&mut self, filters: &[(&str, QoS)]) -> Vec<SubscribeReturnCode> {
        let pkid = self.pkid();
        self.send(Packet::Subscribe(Subscribe {
            pkid,
            filters: filters
                .iter()
                .map(|(filter, qos)| SubscribeFilter::new(*filter, *qos))
                .collect(),
        }))
        .await;
        loop {
            match self.recv().await {
                Packet::SubAck(suback) if suback.pkid == pkid => return suback.return_codes,
                Packet::Publish(publish) => self.stashed.push_back(Packet::Publish(publish)),
                other => panic!("expected SUBACK, got {other:?}"),
            }
        }
    }

    /// Publishes at QoS 0, or QoS 1 and waits for the PUBACK.
    pub async fn publish(&mut self, topic: &str, payload: &[u8], qos: QoS, retain: bool) {
        let mut packet = publish(topic, payload, qos, retain);
        if qos != QoS::AtMostOnce {
            packet.pkid = self.pkid();
        }
        let pkid = packet.pkid;
        self.send(Packet::Publish(packet)).await;
        if qos == QoS::AtLeastOnce {
            loop {
                match self.recv().await {
                    Packet::PubAck(ack) if ack.pkid == pkid => return,
                    Packet::Publish(publish) => self.stashed.push_back(Packet::Publish(publish)),
                    other => panic!("expected PUBACK, got {other:?}"),
                }
            }
        }
    }

    /// Proves the broker handled everything sent before: a ping answered.
    pub async fn ping(&mut self) {
        self.send(Packet::PingReq).await;
        loop {
            match self.recv().await {
                Packet::PingResp => return,
                Packet::Publish(publish) => self.stashed.push_back(Packet::Publish(publish)),
                other => panic!("expected PINGRESP, got {other:?}"),
            }
        }
    }

    pub async fn disconnect(mut self) {
        self.send(Packet::Disconnect).await;
        let _ = self.stream.shutdown().await;
    }

    fn pkid(&mut self) -> u16 {
        let pkid = self.next_pkid;
        self.next_pkid = self.next_pkid.checked_add(1).unwrap_or(1);
        pkid
    }
}

pub fn granted(qos: QoS) -> SubscribeReturnCode {
    SubscribeReturnCode::Success(qos)
}

pub fn text(publish: &Publish) -> &str {
    std::str::from_utf8(&publish.payload).expect("UTF-8 payload")
}
