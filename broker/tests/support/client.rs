//! A client that speaks packet by packet over any byte stream (TCP, TLS, WebSocket), so that
//! tests control every flag and identifier.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::time::Duration;

use bytes::BytesMut;
use fieldbridge_mqtt::codec::{
    self, ConnAck, Connect, Disconnect, Packet, Properties, ProtocolVersion, PubAck, PubComp,
    PubRec, PubRel, Publish, QoS, ReasonCode, SubAck, Subscribe, SubscribeFilter,
    SubscribeReturnCode, UnsubAck, Unsubscribe,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use super::{connect5_packet, connect_packet, login_packet, publish, Silence, DEADLINE};

pub trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

pub struct Client {
    stream: Pin<Box<dyn Stream>>,
    buf: BytesMut,
    /// Packets read while looking for another one, returned first by the next reads.
    stashed: VecDeque<Packet>,
    next_pkid: u16,
    /// The version of the CONNECT sent: packets are encoded and decoded in it.
    version: ProtocolVersion,
}

impl Client {
    pub fn over(stream: impl Stream + 'static) -> Self {
        Self {
            stream: Box::pin(stream),
            buf: BytesMut::new(),
            stashed: VecDeque::new(),
            next_pkid: 1,
            version: ProtocolVersion::V311,
        }
    }

    pub async fn tcp(addr: SocketAddr) -> Self {
        Self::over(TcpStream::connect(addr).await.expect("TCP connect"))
    }

    /// Connects over TCP from a given local address (any of 127.0.0.0/8 works on Linux).
    pub async fn tcp_from(local: IpAddr, addr: SocketAddr) -> Self {
        let socket = match local {
            IpAddr::V4(_) => TcpSocket::new_v4(),
            IpAddr::V6(_) => TcpSocket::new_v6(),
        }
        .expect("socket");
        socket
            .bind(SocketAddr::new(local, 0))
            .expect("bind the local address");
        Self::over(socket.connect(addr).await.expect("TCP connect"))
    }

    /// Sends CONNECT and returns the CONNACK, which must come.
    pub async fn handshake(mut self, connect: Connect) -> (Self, ConnAck) {
        self.version = connect.protocol;
        self.send(Packet::Connect(Box::new(connect))).await;
        match self.recv().await {
            Packet::ConnAck(connack) => (self, connack),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    /// Connects over TCP and returns the CONNACK, which must come.
    pub async fn connect_with(addr: SocketAddr, connect: Connect) -> (Self, ConnAck) {
        Self::tcp(addr).await.handshake(connect).await
    }

    /// The CONNACK code of a connection attempt (the client is dropped).
    pub async fn attempt(addr: SocketAddr, connect: Connect) -> ReasonCode {
        Self::connect_with(addr, connect).await.1.code
    }

    /// Connects and asserts the broker accepted; returns whether a session was present.
    pub async fn connect(addr: SocketAddr, client_id: &str, clean_session: bool) -> (Self, bool) {
        let (client, connack) =
            Self::connect_with(addr, connect_packet(client_id, clean_session)).await;
        Self::accepted(client_id, &connack);
        (client, connack.session_present)
    }

    /// Connects with a clean session and credentials, and asserts the broker accepted.
    pub async fn log_in(
        addr: SocketAddr,
        client_id: &str,
        username: Option<&str>,
        password: Option<&str>,
    ) -> Self {
        let (client, connack) =
            Self::connect_with(addr, login_packet(client_id, username, password)).await;
        Self::accepted(client_id, &connack);
        client
    }

    /// Connects as an MQTT 5 client with these CONNECT properties; asserts the broker
    /// accepted and returns the CONNACK.
    pub async fn connect5(
        addr: SocketAddr,
        client_id: &str,
        clean_start: bool,
        properties: Properties,
    ) -> (Self, ConnAck) {
        let (client, connack) = Self::connect_with(
            addr,
            Connect {
                properties,
                ..connect5_packet(client_id, clean_start)
            },
        )
        .await;
        Self::accepted(client_id, &connack);
        (client, connack)
    }

    /// The version packets are encoded and decoded in.
    pub fn version(&self) -> ProtocolVersion {
        self.version
    }

    fn accepted(client_id: &str, connack: &ConnAck) {
        assert_eq!(connack.code, ReasonCode::Success, "{client_id} connects");
    }

    pub async fn send(&mut self, packet: Packet) {
        self.send_all(vec![packet]).await;
    }

    /// Sends several packets in one write.
    pub async fn send_all(&mut self, packets: Vec<Packet>) {
        let mut out = BytesMut::new();
        for packet in &packets {
            codec::encode(packet, self.version, &mut out).expect("encodes");
        }
        self.write(&out).await;
    }

    pub async fn write(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
        self.stream.flush().await.expect("flush");
    }

    /// The next packet, or why there is none within `wait`.
    pub async fn try_recv(&mut self, wait: Duration) -> Result<Packet, Silence> {
        if let Some(packet) = self.stashed.pop_front() {
            return Ok(packet);
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(packet) = codec::decode(&mut self.buf, self.version, 1 << 24)
                .expect("the broker sends valid packets")
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

    /// The next packet, which must be a PUBLISH.
    pub async fn recv_publish(&mut self) -> Publish {
        match self.recv().await {
            Packet::Publish(publish) => publish,
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }

    /// The next PUBLISH, acknowledged if QoS 1; PINGRESP and PUBACK before it are skipped.
    pub async fn next_publish(&mut self) -> Publish {
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

    /// Reads until the packet `expected` names and `is_reply` accepts; PUBLISH packets that
    /// come first are kept for later reads, anything else fails the test.
    async fn reply(&mut self, expected: &str, is_reply: impl Fn(&Packet) -> bool) -> Packet {
        let mut skipped = Vec::new();
        let reply = loop {
            match self.recv().await {
                packet if is_reply(&packet) => break packet,
                publish @ Packet::Publish(_) => skipped.push(publish),
                other => panic!("expected {expected}, got {other:?}"),
            }
        };
        for packet in skipped.into_iter().rev() {
            self.stashed.push_front(packet);
        }
        reply
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

    /// Asserts the broker sends DISCONNECT (PUBLISH packets before it are skipped) and
    /// then closes the connection; returns the DISCONNECT.
    pub async fn expect_disconnect(&mut self) -> Disconnect {
        let disconnect = loop {
            match self.try_recv(DEADLINE).await {
                Ok(Packet::Disconnect(disconnect)) => break disconnect,
                Ok(Packet::Publish(_) | Packet::PingResp) => {}
                Ok(other) => panic!("expected DISCONNECT, got {other:?}"),
                Err(silence) => panic!("expected DISCONNECT, got {silence:?}"),
            }
        };
        let after = self.expect_closed().await;
        assert!(after.is_empty(), "packets after DISCONNECT: {after:?}");
        disconnect
    }

    /// The reason of the DISCONNECT the broker must send before closing.
    pub async fn disconnect_reason(&mut self) -> ReasonCode {
        self.expect_disconnect().await.reason
    }

    pub async fn subscribe(&mut self, filters: &[(&str, QoS)]) -> Vec<SubscribeReturnCode> {
        self.subscribe_with(
            filters
                .iter()
                .map(|(filter, qos)| SubscribeFilter::new(*filter, *qos))
                .collect(),
            Properties::new(),
        )
        .await
        .return_codes
    }

    /// Subscribes with these filters (options included) and SUBSCRIBE properties (a
    /// Subscription Identifier); returns the SUBACK. PUBLISH packets that come first are
    /// kept for later reads.
    pub async fn subscribe_with(
        &mut self,
        filters: Vec<SubscribeFilter>,
        properties: Properties,
    ) -> SubAck {
        let pkid = self.pkid();
        self.send(Packet::Subscribe(Subscribe {
            pkid,
            filters,
            properties,
        }))
        .await;
        let suback = self
            .reply(
                "SUBACK",
                |packet| matches!(packet, Packet::SubAck(suback) if suback.pkid == pkid),
            )
            .await;
        match suback {
            Packet::SubAck(suback) => suback,
            other => unreachable!("{other:?} is not a SUBACK"),
        }
    }

    /// Sends UNSUBSCRIBE and waits for its UNSUBACK; PUBLISH packets that come first are
    /// kept for later reads.
    pub async fn unsubscribe(&mut self, filters: &[&str]) -> UnsubAck {
        let pkid = self.pkid();
        self.send(Packet::Unsubscribe(Unsubscribe {
            pkid,
            filters: filters.iter().map(|&filter| filter.into()).collect(),
            properties: Properties::new(),
        }))
        .await;
        match self
            .reply(
                "UNSUBACK",
                |packet| matches!(packet, Packet::UnsubAck(unsuback) if unsuback.pkid == pkid),
            )
            .await
        {
            Packet::UnsubAck(unsuback) => unsuback,
            other => unreachable!("{other:?} is not an UNSUBACK"),
        }
    }

    /// Publishes and completes the QoS 1 or 2 exchange as a publisher; the broker must
    /// accept the message (for an MQTT 5 client: any success code, 0x10 included).
    pub async fn publish(&mut self, publish: Publish) {
        let reason = self.publish_acked(publish).await;
        assert!(
            !reason.is_failure(),
            "the broker refused the message: {reason}"
        );
    }

    /// Publishes and returns the reason code of the PUBACK (QoS 1) or PUBREC (QoS 2),
    /// Success for QoS 0; a QoS 2 exchange the broker accepted is completed (PUBREL,
    /// PUBCOMP). PUBLISH packets that come first are kept for later reads.
    pub async fn publish_acked(&mut self, publish: Publish) -> ReasonCode {
        self.publish_answer(publish)
            .await
            .map_or(ReasonCode::Success, |(reason, _)| reason)
    }

    /// Like [`Client::publish_acked`], with the acknowledgement's properties (None for QoS 0).
    pub async fn publish_answer(&mut self, publish: Publish) -> Option<(ReasonCode, Properties)> {
        let (qos, pkid) = (publish.qos, publish.pkid);
        self.send(Packet::Publish(publish)).await;
        match qos {
            QoS::AtMostOnce => None,
            QoS::AtLeastOnce => {
                match self
                    .reply(
                        "PUBACK",
                        |packet| matches!(packet, Packet::PubAck(ack) if ack.pkid == pkid),
                    )
                    .await
                {
                    Packet::PubAck(ack) => Some((ack.reason, ack.properties)),
                    other => unreachable!("{other:?} is not a PUBACK"),
                }
            }
            QoS::ExactlyOnce => {
                let rec = match self
                    .reply(
                        "PUBREC",
                        |packet| matches!(packet, Packet::PubRec(rec) if rec.pkid == pkid),
                    )
                    .await
                {
                    Packet::PubRec(rec) => rec,
                    other => unreachable!("{other:?} is not a PUBREC"),
                };
                if !rec.reason.is_failure() {
                    self.send(Packet::PubRel(PubRel::new(pkid))).await;
                    self.expect_packet(Packet::PubComp(PubComp::new(pkid)))
                        .await;
                }
                Some((rec.reason, rec.properties))
            }
        }
    }

    /// Publishes with the next packet identifier, completing the QoS 1 or 2 exchange.
    pub async fn publish_to(&mut self, topic: &str, payload: &[u8], qos: QoS, retain: bool) {
        let pkid = if qos == QoS::AtMostOnce {
            0
        } else {
            self.pkid()
        };
        self.publish(Publish {
            retain,
            ..publish(topic, payload, qos, pkid)
        })
        .await;
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
        self.expect_packet(Packet::PubRel(PubRel::new(pkid))).await;
    }

    /// Waits for `packet`; PUBLISH packets that come first are kept for later reads.
    async fn expect_packet(&mut self, packet: Packet) {
        self.reply(&format!("{packet:?}"), |got| *got == packet)
            .await;
    }

    /// A round trip: once PINGRESP is back, everything sent before has been processed.
    pub async fn ping(&mut self) {
        self.send(Packet::PingReq).await;
        self.expect_packet(Packet::PingResp).await;
    }

    pub async fn disconnect(self) {
        self.disconnect_with(Disconnect::default()).await;
    }

    /// Sends this DISCONNECT (a reason, a Session Expiry Interval) and waits for the close.
    pub async fn disconnect_with(mut self, disconnect: Disconnect) {
        self.send(Packet::Disconnect(disconnect)).await;
        let _ = self.expect_closed().await;
    }

    /// The next packet identifier (for packets built by the test).
    pub fn pkid(&mut self) -> u16 {
        let pkid = self.next_pkid;
        self.next_pkid = self.next_pkid.checked_add(1).unwrap_or(1);
        pkid
    }
}
