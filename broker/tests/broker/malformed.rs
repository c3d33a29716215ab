//! Malformed input on raw sockets: the connection is closed, the broker keeps serving.

use std::net::SocketAddr;
use std::time::Duration;

use fieldbridge_mqtt::codec::{ConnAck, Packet, ProtocolVersion, QoS, ReasonCode};

use crate::support::{config, connect_packet, payload, start, will, Client};

fn remaining_length(mut len: usize, out: &mut Vec<u8>) {
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if len == 0 {
            break;
        }
    }
}

fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    remaining_length(body.len(), &mut out);
    out.extend_from_slice(body);
    out
}

fn field(bytes: &[u8]) -> Vec<u8> {
    let mut out = (bytes.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(bytes);
    out
}

fn connect_bytes(protocol: &[u8], level: u8, flags: u8, client_id: &[u8]) -> Vec<u8> {
    let mut body = field(protocol);
    body.extend_from_slice(&[level, flags, 0, 60]);
    body.extend(field(client_id));
    packet(0x10, &body)
}

fn publish_bytes(first: u8, topic: &[u8], pkid: Option<u16>, payload: &[u8]) -> Vec<u8> {
    let mut body = field(topic);
    if let Some(pkid) = pkid {
        body.extend_from_slice(&pkid.to_be_bytes());
    }
    body.extend_from_slice(payload);
    packet(first, &body)
}

/// The broker still accepts and serves a well-behaved client.
async fn still_serving(addr: SocketAddr) {
    let (mut client, _) = Client::connect(addr, "well-behaved", true).await;
    client.ping().await;
    client.disconnect().await;
}

/// Sends `bytes` as the first thing on a new connection; returns what came back before the
/// broker closed it.
async fn first_bytes(addr: SocketAddr, bytes: &[u8]) -> Vec<Packet> {
    let mut raw = Client::tcp(addr).await;
    raw.write(bytes).await;
    raw.expect_closed().await
}

/// Sends `bytes` after a successful CONNECT; asserts the connection is closed.
async fn after_connect(addr: SocketAddr, bytes: &[u8]) {
    let (mut raw, _) = Client::connect(addr, "offender", true).await;
    raw.write(bytes).await;
    let before = raw.expect_closed().await;
    assert!(before.is_empty(), "nothing answered: {before:?}");
}

fn refused(code: ReasonCode) -> Vec<Packet> {
    vec![Packet::ConnAck(ConnAck::new(false, code))]
}

#[tokio::test]
async fn bad_remaining_lengths() {
    let broker = start(config()).await;
    let addr = broker.local_addr();
    assert_eq!(
        first_bytes(addr, &[0x10, 0xff, 0xff, 0xff, 0xff, 0x01]).await,
        vec![]
    );
    after_connect(addr, &[0xc0, 0x80, 0x00]).await; // PINGREQ with a non-minimal length
                                                    // A remaining length longer than the bytes that follow, then the client stops: the
                                                    // connection waits for the rest, and goes when the client does.
    let mut raw = Client::tcp(addr).await;
    raw.write(&[0x10, 0x20, 0x00, 0x04]).await;
    drop(raw);
    still_serving(addr).await;
}

#[tokio::test]
async fn reserved_flags() {
    let broker = start(config()).await;
    let addr = broker.local_addr();
    let mut connect = connect_bytes(b"MQTT", 4, 0x02, b"x");
    connect[0] = 0x11;
    assert_eq!(
        first_bytes(addr, &connect).await,
        vec![],
        "CONNECT with fixed-header flags"
    );
    assert_eq!(
        first_bytes(addr, &connect_bytes(b"MQTT", 4, 0x03, b"x")).await,
        vec![],
        "reserved CONNECT flag"
    );
    let mut subscribe = vec![0x00, 0x01];
    subscribe.extend(field(b"a/b"));
    subscribe.push(0);
    after_connect(addr, &packet(0x80, &subscribe)).await;
    after_connect(addr, &packet(0x60, &[0x00, 0x01])).await; // PUBREL needs flags 0010
    after_connect(addr, &publish_bytes(0x36, b"a", Some(1), b"qos 3")).await;
    still_serving(addr).await;
}

/// An unknown level gets CONNACK 1; a protocol name that is not MQTT's, nothing at all.
#[tokio::test]
async fn wrong_protocol_name_or_level() {
    let broker = start(config()).await;
    let addr = broker.local_addr();
    let unacceptable = refused(ReasonCode::UnsupportedProtocolVersion);
    assert_eq!(
        first_bytes(addr, &connect_bytes(b"MQTX", 4, 0x02, b"x")).await,
        vec![],
        "not MQTT: closed without an answer"
    );
    assert_eq!(
        first_bytes(addr, &connect_bytes(b"MQTT", 6, 0x02, b"x")).await,
        unacceptable
    );
    assert_eq!(
        first_bytes(addr, &connect_bytes(b"MQTT", 3, 0x02, b"x")).await,
        unacceptable
    );
    // MQTT 3.1 is spoken.
    let accepted = first_connack(addr, &connect_bytes(b"MQIsdp", 3, 0x02, b"old")).await;
    assert_eq!(accepted.code, ReasonCode::Success);
    still_serving(addr).await;
}

async fn first_connack(addr: SocketAddr, bytes: &[u8]) -> ConnAck {
    let mut raw = Client::tcp(addr).await;
    raw.write(bytes).await;
    match raw.recv().await {
        Packet::ConnAck(connack) => connack,
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

#[tokio::test]
async fn invalid_strings() {
    let broker = start(config()).await;
    let addr = broker.local_addr();
    assert_eq!(
        first_bytes(addr, &connect_bytes(b"MQTT", 4, 0x02, &[0xc3, 0x28])).await,
        vec![],
        "invalid UTF-8"
    );
    assert_eq!(
        first_bytes(addr, &connect_bytes(b"MQTT", 4, 0x02, b"a\0b")).await,
        vec![],
        "U+0000"
    );
    after_connect(addr, &publish_bytes(0x30, b"a\0b", None, b"x")).await;
    after_connect(addr, &publish_bytes(0x30, &[b'a', 0xff], None, b"x")).await;
    still_serving(addr).await;
}

#[tokio::test]
async fn protocol_error_publishes_the_will() {
    let broker = start(config()).await;
    let addr = broker.local_addr();
    let (mut watcher, _) = Client::connect(addr, "watcher", true).await;
    watcher.subscribe(&[("bad/status", QoS::AtMostOnce)]).await;
    let mut connect = connect_packet("bad", true);
    connect.will = Some(will("bad/status", "protocol error", QoS::AtMostOnce, false));
    let (mut offender, _) = Client::connect_with(addr, connect).await;
    offender
        .write(&publish_bytes(0x30, b"wild/+", None, b"wildcard topic"))
        .await;
    offender.expect_closed().await;
    assert_eq!(payload(&watcher.recv_publish().await), "protocol error");
}

#[tokio::test]
async fn packet_order_violations() {
    let broker = start(config()).await;
    let addr = broker.local_addr();
    assert_eq!(
        first_bytes(addr, &[0xc0, 0x00]).await,
        vec![],
        "PINGREQ before CONNECT"
    );
    assert_eq!(
        first_bytes(addr, &publish_bytes(0x30, b"t", None, b"x")).await,
        vec![],
        "PUBLISH before CONNECT"
    );
    after_connect(addr, &connect_bytes(b"MQTT", 4, 0x02, b"again")).await;
    after_connect(addr, &packet(0x20, &[0x00, 0x00])).await; // CONNACK from a client
    after_connect(addr, &packet(0xf0, &[])).await; // reserved type 15
    after_connect(addr, &packet(0x00, &[])).await; // reserved type 0
    still_serving(addr).await;
}

#[tokio::test]
async fn oversize_packets() {
    let mut cfg = config();
    cfg.limits.max_payload = 1024;
    let broker = start(cfg).await;
    let addr = broker.local_addr();
    // Announced far larger than allowed: closed on the header alone.
    let mut huge = vec![0x30];
    remaining_length(10_000_000, &mut huge);
    let (mut raw, _) = Client::connect(addr, "huge", true).await;
    raw.write(&huge).await;
    raw.expect_closed().await;
    // Within the packet bound but over max_payload.
    after_connect(addr, &publish_bytes(0x30, b"t", None, &[b'x'; 2000])).await;
    // At max_payload: fine.
    let (mut ok, _) = Client::connect(addr, "ok", true).await;
    ok.write(&publish_bytes(0x30, b"t", None, &[b'x'; 1024]))
        .await;
    ok.ping().await;
    still_serving(addr).await;
}

#[tokio::test]
async fn silent_connections_are_closed_after_the_connect_timeout() {
    let mut cfg = config();
    cfg.limits.connect_timeout = Duration::from_millis(500);
    let broker = start(cfg).await;
    let addr = broker.local_addr();
    assert_eq!(first_bytes(addr, &[]).await, vec![]);
    assert_eq!(
        first_bytes(addr, &[0x10, 0x10, 0x00]).await,
        vec![],
        "half a CONNECT"
    );
    still_serving(addr).await;
}

/// Packets sent right behind the CONNECT, in the same segment, are handled at once.
#[tokio::test]
async fn pipelined_packets_after_connect() {
    let broker = start(config()).await;
    let mut bytes = Vec::new();
    let mut out = bytes::BytesMut::new();
    for packet in [
        Packet::Connect(Box::new(connect_packet("eager", true))),
        Packet::Subscribe(fieldbridge_mqtt::codec::Subscribe {
            pkid: 5,
            filters: vec![fieldbridge_mqtt::codec::SubscribeFilter::new(
                "e",
                QoS::AtMostOnce,
            )],
            properties: Default::default(),
        }),
        Packet::PingReq,
    ] {
        fieldbridge_mqtt::codec::encode(&packet, ProtocolVersion::V311, &mut out).expect("encodes");
    }
    bytes.extend_from_slice(&out);
    let mut raw = Client::tcp(broker.local_addr()).await;
    raw.write(&bytes).await;
    assert!(matches!(raw.recv().await, Packet::ConnAck(_)));
    assert!(matches!(raw.recv().await, Packet::SubAck(_)));
    assert_eq!(raw.recv().await, Packet::PingResp);
}
