//! Brokers and clients for the tests.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use fieldbridge_broker::codec::{
    self, ConnAck, Connect, LastWill, Packet, ProtocolVersion, PubAck, PubComp, PubRec, PubRel,
    Publish, QoS, Subscribe, SubscribeFilter, SubscribeReturnCode,
};
use fieldbridge_broker::{Broker, Config, RunningBroker};
use parking_lot::Mutex;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// How long any expected event may take on a loaded machine.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// A test configuration: loopback, a free port, no `$SYS` messages.
pub fn config() -> Config {
    Config {
        sys_interval: Duration::ZERO,
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

pub fn connect_packet(client_id: &str, clean_session: bool) -> Connect {
    Connect {
        protocol: ProtocolVersion::V311,
        clean_session,
        keep_alive: 60,
        client_id: client_id.into(),
        will: None,
        username: None,
        password: None,
    }
}

pub fn will(topic: &str, payload: &'static str, qos: QoS, retain: bool) -> LastWill {
    LastWill {
        topic: topic.into(),
        payload: Bytes::from_static(payload.as_bytes()),
        qos,
        retain,
    }
}

pub fn publish(topic: &str, payload: &str, qos: QoS, pkid: u16) -> Publish {
    Publish {
        dup: false,
        qos,
        retain: false,
        topic: topic.into(),
        pkid,
        payload: Bytes::copy_from_slice(payload.as_bytes()),
    }
}

/// A client that speaks packet by packet, so tests control every flag and identifier.
pub struct Raw {
    stream: TcpStream,
    buf: BytesMut,
    /// Packets read while looking for another one, returned first by the next reads.
    stashed: VecDeque<Packet>,
}

/// How reading a packet ended when it did not yield one.
#[derive(Debug, PartialEq, Eq)]
pub enum Silence {
    Closed,
    TimedOut,
}

impl Raw {
    pub async fn tcp(addr: SocketAddr) -> Raw {
        let stream = TcpStream::connect(addr).await.expect("TCP connect");
        Raw {
            stream,
            buf: BytesMut::new(),
            stashed: VecDeque::new(),
        }
    }

    /// Connects and returns the CONNACK, which must come.
    pub async fn connect_with(addr: SocketAddr, connect: Connect) -> (Raw, ConnAck) {
        let mut raw = Raw::tcp(addr).await;
        raw.send(Packet::Connect(connect)).await;
        match raw.recv().await {
            Packet::ConnAck(connack) => (raw, connack),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    /// Connects and asserts the CONNACK accepted the connection.
    pub async fn connect(addr: SocketAddr, client_id: &str, clean_session: bool) -> (Raw, bool) {
        let (raw, connack) =
            Raw::connect_with(addr, connect_packet(client_id, clean_session)).await;
        assert_eq!(
            connack.code,
            codec::ConnectReturnCode::Accepted,
            "{client_id} connects"
        );
        (raw, connack.session_present)
    }

    pub async fn send(&mut self, packet: Packet) {
        let mut out = BytesMut::new();
        codec::encode(&packet, &mut out).expect("encodes");
        self.write(&out).await;
    }

    pub async fn write(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    /// The next packet, or why there is none within `wait`.
    pub async fn try_recv(&mut self, wait: Duration) -> Result<Packet, Silence> {
        if let Some(packet) = self.stashed.pop_front() {
            return Ok(packet);
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(packet) =
                codec::decode(&mut self.buf, 1 << 24).expect("broker sends valid packets")
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

    pub async fn recv_publish(&mut self) -> Publish {
        match self.recv().await {
            Packet::Publish(publish) => publish,
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }

    /// Asserts the broker closes the connection (packets before the close are returned).
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
        self.send(Packet::Subscribe(Subscribe {
            pkid: 1,
            filters: filters
                .iter()
                .map(|(filter, qos)| SubscribeFilter::new(*filter, *qos))
                .collect(),
        }))
        .await;
        match self.recv().await {
            Packet::SubAck(suback) => {
                assert_eq!(suback.pkid, 1);
                suback.return_codes
            }
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }

    /// Publishes and completes the QoS 1 or 2 exchange as a publisher.
    pub async fn publish(&mut self, publish: Publish) {
        let (qos, pkid) = (publish.qos, publish.pkid);
        self.send(Packet::Publish(publish)).await;
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => assert_eq!(self.recv().await, Packet::PubAck(PubAck::new(pkid))),
            QoS::ExactlyOnce => {
                assert_eq!(self.recv().await, Packet::PubRec(PubRec::new(pkid)));
                self.send(Packet::PubRel(PubRel::new(pkid))).await;
                assert_eq!(self.recv().await, Packet::PubComp(PubComp::new(pkid)));
            }
        }
    }

    /// Acknowledges a received PUBLISH as a subscriber (the whole exchange for QoS 2).
    pub async fn ack(&mut self, publish: &Publish) {
        match publish.qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => self.send(Packet::PubAck(PubAck::new(publish.pkid))).await,
            QoS::ExactlyOnce => {
                self.send(Packet::PubRec(PubRec::new(publish.pkid))).await;
                self.expect_pubrel(publish.pkid).await;
                self.send(Packet::PubComp(PubComp::new(publish.pkid))).await;
            }
        }
    }

    /// Waits for PUBREL of `pkid`; PUBLISH packets that come first are kept for later reads.
    pub async fn expect_pubrel(&mut self, pkid: u16) {
        let mut skipped = Vec::new();
        loop {
            match self.recv().await {
                Packet::PubRel(PubRel { pkid: got }) if got == pkid => break,
                publish @ Packet::Publish(_) => skipped.push(publish),
                other => panic!("expected PUBREL {pkid}, got {other:?}"),
            }
        }
        for packet in skipped.into_iter().rev() {
            self.stashed.push_front(packet);
        }
    }

    /// A round trip: once PINGRESP is back, everything sent before has been processed.
    pub async fn ping(&mut self) {
        self.send(Packet::PingReq).await;
        assert_eq!(self.recv().await, Packet::PingResp);
    }

    pub async fn disconnect(mut self) {
        self.send(Packet::Disconnect).await;
        let _ = self.expect_closed().await;
    }
}

pub fn payload(publish: &Publish) -> String {
    String::from_utf8_lossy(&publish.payload).into_owned()
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
        let pid = self.child.id().expect("running") as i32;
        // SAFETY-free: a plain signal to our own child.
        let status = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status();
        assert!(status.is_ok_and(|status| status.success()), "kill -TERM");
    }

    pub fn kill_hard(&self) {
        let pid = self.child.id().expect("running") as i32;
        let status = std::process::Command::new("kill")
            .arg("-KILL")
            .arg(pid.to_string())
            .status();
        assert!(status.is_ok_and(|status| status.success()), "kill -KILL");
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

pub fn write_file(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write file");
    path
}
