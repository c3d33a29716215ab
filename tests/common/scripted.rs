//! A broker a test plays packet by packet with the workspace's own codec, to see and
//! steer what goes over the wire.

use std::time::Duration;

use bytes::BytesMut;
use fieldbridge_mqtt::codec::{
    self, ConnAck, Connect, Packet, ProtocolVersion, PubAck, Publish, ReasonCode,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::DEADLINE;

/// One connection of a broker the test plays, packet by packet.
pub struct ScriptedBroker {
    stream: TcpStream,
    rbuf: BytesMut,
    version: ProtocolVersion,
}

impl ScriptedBroker {
    pub async fn accept(listener: &TcpListener, version: ProtocolVersion) -> ScriptedBroker {
        let (stream, _) = tokio::time::timeout(DEADLINE, listener.accept())
            .await
            .expect("the gateway connects")
            .unwrap();
        ScriptedBroker {
            stream,
            rbuf: BytesMut::new(),
            version,
        }
    }

    /// Accepts a connection and lets it in: its CONNECT answered with a plain CONNACK.
    pub async fn connected(listener: &TcpListener, version: ProtocolVersion) -> ScriptedBroker {
        let mut broker = Self::accept(listener, version).await;
        broker.connect().await;
        broker
            .send(Packet::ConnAck(ConnAck::new(false, ReasonCode::Success)))
            .await;
        broker
    }

    /// The CONNECT a connection opens with.
    pub async fn connect(&mut self) -> Box<Connect> {
        match self.next().await {
            Packet::Connect(connect) => connect,
            other => panic!("CONNECT first, got {other:?}"),
        }
    }

    /// The next packet, or `None` if none comes within `wait`.
    pub async fn next_within(&mut self, wait: Duration) -> Option<Packet> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(packet) =
                codec::decode(&mut self.rbuf, self.version, 1 << 20).expect("a valid packet")
            {
                return Some(packet);
            }
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.rbuf)).await {
                Ok(Ok(0)) => panic!("the gateway closed the connection"),
                Ok(read) => {
                    read.unwrap();
                }
                Err(_) => return None,
            }
        }
    }

    pub async fn next(&mut self) -> Packet {
        self.next_within(DEADLINE).await.expect("a packet in time")
    }

    /// The next PUBLISH, answering PINGREQs on the way (within one deadline: a
    /// keepalive must not keep the wait going).
    pub async fn publish(&mut self) -> Publish {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_within(left).await.expect("a PUBLISH in time") {
                Packet::Publish(publish) => return publish,
                Packet::PingReq => self.send(Packet::PingResp).await,
                other => panic!("expected a PUBLISH, got {other:?}"),
            }
        }
    }

    pub async fn send(&mut self, packet: Packet) {
        let mut buf = BytesMut::new();
        codec::encode(&packet, self.version, &mut buf).unwrap();
        self.stream.write_all(&buf).await.unwrap();
    }

    pub async fn puback(&mut self, pkid: u16, reason: ReasonCode) {
        self.send(Packet::PubAck(PubAck::with_reason(pkid, reason)))
            .await;
    }
}
