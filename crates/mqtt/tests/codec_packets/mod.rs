//! Hand-built MQTT packets, valid and malformed, for tests that talk to a broker over a raw
//! TCP socket. The bytes are written out here, not produced by the broker's codec, so a
//! codec bug cannot hide itself.
//!
//! Use from a test file with `mod codec_packets;`, then for example:
//! ```ignore
//! for case in codec_packets::malformed_cases(max_packet_size) {
//!     codec_packets::expect_rejected(addr, &case).await.unwrap();
//! }
//! ```
#![allow(dead_code)] // every test binary that includes this module uses a different part

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// The CONNACK a broker answers a good CONNECT with (no session present).
pub const CONNACK_ACCEPTED: [u8; 4] = [0x20, 0x02, 0x00, 0x00];

/// How long a broker gets to answer or to close the connection.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// The remaining length encoding of `len` (at most 268,435,455).
pub fn remaining_length(mut len: usize) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(4);
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        bytes.push(byte);
        if len == 0 {
            return bytes;
        }
    }
}

/// A string or binary field: two-byte big-endian length, then the bytes.
pub fn field(data: &[u8]) -> Vec<u8> {
    let len = u16::try_from(data.len()).expect("field longer than 65535 bytes");
    [&len.to_be_bytes()[..], data].concat()
}

/// A packet: first byte, remaining length, body.
pub fn packet(byte1: u8, body: &[u8]) -> Vec<u8> {
    [&[byte1][..], &remaining_length(body.len()), body].concat()
}

/// CONNECT with any protocol name, level and connect flags, keep alive 30 s, and the
/// payload fields in order (client id, will topic, will payload, user name, password as the
/// flags announce them).
pub fn connect_with(name: &[u8], level: u8, flags: u8, payload: &[&[u8]]) -> Vec<u8> {
    let mut body = field(name);
    body.extend_from_slice(&[level, flags, 0x00, 30]);
    for item in payload {
        body.extend_from_slice(&field(item));
    }
    packet(0x10, &body)
}

/// A good MQTT 3.1.1 CONNECT with clean session.
pub fn connect(client_id: &str) -> Vec<u8> {
    connect_with(b"MQTT", 4, 0x02, &[client_id.as_bytes()])
}

/// PUBLISH; `pkid` is written only for QoS 1 and 2.
pub fn publish(topic: &str, qos: u8, pkid: u16, payload: &[u8]) -> Vec<u8> {
    let mut body = field(topic.as_bytes());
    if qos > 0 {
        body.extend_from_slice(&pkid.to_be_bytes());
    }
    body.extend_from_slice(payload);
    packet(0x30 | qos << 1, &body)
}

/// SUBSCRIBE to one filter.
pub fn subscribe(pkid: u16, filter: &str, qos: u8) -> Vec<u8> {
    let body = [&pkid.to_be_bytes()[..], &field(filter.as_bytes()), &[qos]].concat();
    packet(0x82, &body)
}

pub fn pingreq() -> Vec<u8> {
    vec![0xc0, 0x00]
}

pub fn disconnect() -> Vec<u8> {
    vec![0xe0, 0x00]
}

/// The fixed header of the smallest PUBLISH larger than `max_packet_size` (whole packet,
/// fixed header included), without its body: a broker must refuse it from the
/// header alone instead of waiting for (or buffering) the body. `max_packet_size` must be
/// below the protocol's 256 MiB.
pub fn oversized_publish_header(max_packet_size: usize) -> Vec<u8> {
    let mut remaining = max_packet_size.saturating_sub(5);
    while 1 + remaining_length(remaining).len() + remaining <= max_packet_size {
        remaining += 1;
    }
    packet_header(0x30, remaining)
}

fn packet_header(byte1: u8, remaining: usize) -> Vec<u8> {
    [&[byte1][..], &remaining_length(remaining)].concat()
}

/// When a case's bytes are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// As the first bytes of the connection.
    First,
    /// After a good CONNECT was accepted (CONNACK 0).
    AfterConnect,
}

/// What the broker must do with a case's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Close the connection without sending anything.
    Close,
    /// Send this CONNACK return code, then close.
    ConnAckThenClose(u8),
}

/// A protocol violation and what a broker must do about it.
#[derive(Debug, Clone)]
pub struct MalformedCase {
    pub name: &'static str,
    pub stage: Stage,
    pub bytes: Vec<u8>,
    pub expect: Expect,
    /// The broker codec's `Error` variant for these bytes, or `None` for well-formed packets
    /// sent where the protocol forbids them (the session refuses those).
    pub codec_error: Option<&'static str>,
}

fn case(
    name: &'static str,
    stage: Stage,
    bytes: Vec<u8>,
    expect: Expect,
    codec_error: Option<&'static str>,
) -> MalformedCase {
    MalformedCase {
        name,
        stage,
        bytes,
        expect,
        codec_error,
    }
}

/// Every malformed or misplaced packet a strict MQTT 3.1.1 broker must refuse by closing
/// the connection. `max_packet_size` is the broker's limit on a whole packet.
pub fn malformed_cases(max_packet_size: usize) -> Vec<MalformedCase> {
    use Expect::{Close, ConnAckThenClose};
    use Stage::{AfterConnect, First};
    let bad_connect = |name, bytes| case(name, First, bytes, Close, Some("Malformed"));
    let after = |name, bytes, error| case(name, AfterConnect, bytes, Close, Some(error));
    let connect_id = |id: &[u8]| connect_with(b"MQTT", 4, 0x02, &[id]);
    vec![
        case(
            "connect with an unknown protocol name",
            First,
            connect_with(b"MQTX", 4, 0x02, &[b"raw"]),
            Close,
            Some("InvalidProtocolName"),
        ),
        case(
            "connect with protocol level 6",
            First,
            connect_with(b"MQTT", 6, 0x02, &[b"raw"]),
            ConnAckThenClose(1),
            Some("UnsupportedProtocolLevel"),
        ),
        case(
            "connect MQTT with level 3",
            First,
            connect_with(b"MQTT", 3, 0x02, &[b"raw"]),
            ConnAckThenClose(1),
            Some("UnsupportedProtocolLevel"),
        ),
        bad_connect(
            "connect with the reserved flag",
            connect_with(b"MQTT", 4, 0x03, &[b"raw"]),
        ),
        bad_connect(
            "connect with will QoS but no will",
            connect_with(b"MQTT", 4, 0x0a, &[b"raw"]),
        ),
        bad_connect(
            "connect with will retain but no will",
            connect_with(b"MQTT", 4, 0x22, &[b"raw"]),
        ),
        case(
            "connect with will QoS 3",
            First,
            connect_with(b"MQTT", 4, 0x1e, &[b"raw", b"will", b"x"]),
            Close,
            Some("InvalidQoS"),
        ),
        case(
            "connect with a wildcard will topic",
            First,
            connect_with(b"MQTT", 4, 0x06, &[b"raw", b"will/+", b"x"]),
            Close,
            Some("InvalidTopicName"),
        ),
        bad_connect(
            "connect with a password but no user name",
            connect_with(b"MQTT", 4, 0x42, &[b"raw", b"secret"]),
        ),
        case(
            "connect with a client id that is not UTF-8",
            First,
            connect_id(b"raw\xff"),
            Close,
            Some("InvalidUtf8"),
        ),
        case(
            "connect with U+0000 in the client id",
            First,
            connect_id(b"raw\0"),
            Close,
            Some("NullCharacter"),
        ),
        case(
            "connect with fixed header flags",
            First,
            [&[0x11][..], &connect("raw")[1..]].concat(),
            Close,
            Some("InvalidHeaderFlags"),
        ),
        case(
            "connect with trailing bytes",
            First,
            {
                let good = connect("raw");
                let body = [&good[2..], &[0x00]].concat();
                packet(0x10, &body)
            },
            Close,
            Some("TrailingBytes"),
        ),
        case("first packet is PINGREQ", First, pingreq(), Close, None),
        case(
            "first packet is PUBLISH",
            First,
            publish("a/b", 0, 0, b"x"),
            Close,
            None,
        ),
        case(
            "second CONNECT",
            AfterConnect,
            connect("raw-again"),
            Close,
            None,
        ),
        case(
            "client sends CONNACK",
            AfterConnect,
            CONNACK_ACCEPTED.to_vec(),
            Close,
            None,
        ),
        after(
            "remaining length of five bytes",
            vec![0x30, 0xff, 0xff, 0xff, 0xff, 0x01],
            "MalformedRemainingLength",
        ),
        after(
            "remaining length longer than needed",
            vec![0xc0, 0x80, 0x00],
            "MalformedRemainingLength",
        ),
        after("packet type 0", vec![0x00, 0x00], "InvalidPacketType"),
        after("packet type 15", vec![0xf0, 0x00], "InvalidPacketType"),
        after(
            "PUBREL without its flags",
            vec![0x60, 0x02, 0x00, 0x01],
            "InvalidHeaderFlags",
        ),
        after(
            "SUBSCRIBE without its flags",
            [&[0x80][..], &subscribe(1, "a/b", 0)[1..]].concat(),
            "InvalidHeaderFlags",
        ),
        after(
            "UNSUBSCRIBE without its flags",
            packet(0xa0, &[&[0x00, 0x01][..], &field(b"a/b")].concat()),
            "InvalidHeaderFlags",
        ),
        after(
            "PUBACK with flags",
            vec![0x42, 0x02, 0x00, 0x01],
            "InvalidHeaderFlags",
        ),
        after(
            "PUBLISH with QoS 3",
            packet(0x36, &[field(b"a/b"), vec![0x00, 0x01]].concat()),
            "InvalidQoS",
        ),
        after(
            "PUBLISH QoS 0 with DUP",
            packet(0x38, &field(b"a/b")),
            "Malformed",
        ),
        after(
            "PUBLISH topic not UTF-8",
            packet(0x30, &field(b"a/\xc0\x80")),
            "InvalidUtf8",
        ),
        after(
            "PUBLISH topic with U+0000",
            packet(0x30, &field(b"a/\0")),
            "NullCharacter",
        ),
        after(
            "PUBLISH to a wildcard topic",
            publish("a/+", 0, 0, b"x"),
            "InvalidTopicName",
        ),
        after(
            "PUBLISH to an empty topic",
            publish("", 0, 0, b"x"),
            "InvalidTopicName",
        ),
        after(
            "PUBLISH QoS 1 with packet id 0",
            publish("a/b", 1, 0, b"x"),
            "ZeroPacketId",
        ),
        after(
            "SUBSCRIBE without filters",
            packet(0x82, &[0x00, 0x01]),
            "Malformed",
        ),
        after("SUBSCRIBE with QoS 3", subscribe(1, "a/b", 3), "InvalidQoS"),
        after(
            "SUBSCRIBE with reserved bits in the QoS byte",
            subscribe(1, "a/b", 0x41),
            "Malformed",
        ),
        after(
            "SUBSCRIBE to an invalid filter",
            subscribe(1, "a/#/b", 0),
            "InvalidTopicFilter",
        ),
        after(
            "SUBSCRIBE with packet id 0",
            subscribe(0, "a/b", 0),
            "ZeroPacketId",
        ),
        after(
            "UNSUBSCRIBE without filters",
            packet(0xa2, &[0x00, 0x01]),
            "Malformed",
        ),
        after(
            "PUBACK with packet id 0",
            vec![0x40, 0x02, 0x00, 0x00],
            "ZeroPacketId",
        ),
        after("PUBACK cut short", vec![0x40, 0x01, 0x00], "Malformed"),
        after(
            "PINGREQ with trailing bytes",
            vec![0xc0, 0x01, 0x00],
            "TrailingBytes",
        ),
        after(
            "DISCONNECT with trailing bytes",
            vec![0xe0, 0x01, 0x00],
            "TrailingBytes",
        ),
        after(
            "packet larger than the limit",
            oversized_publish_header(max_packet_size),
            "PacketTooLarge",
        ),
    ]
}

/// Plays `case` against the broker at `addr` and checks that it answers as the case
/// expects and closes the connection (within [`DEADLINE`]). `Err` says what went wrong.
pub async fn expect_rejected(addr: SocketAddr, case: &MalformedCase) -> Result<(), String> {
    let fail = |what: String| format!("{}: {what}", case.name);
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|e| fail(format!("connect to {addr}: {e}")))?;
    if case.stage == Stage::AfterConnect {
        let client_id = format!("raw-{}", case.name.replace(' ', "-"));
        stream
            .write_all(&connect(&client_id))
            .await
            .map_err(|e| fail(format!("send CONNECT: {e}")))?;
        let mut connack = [0u8; 4];
        timeout(DEADLINE, stream.read_exact(&mut connack))
            .await
            .map_err(|_| fail("no CONNACK to the good CONNECT".into()))?
            .map_err(|e| fail(format!("read CONNACK: {e}")))?;
        if connack != CONNACK_ACCEPTED {
            return Err(fail(format!("good CONNECT answered {connack:02x?}")));
        }
    }
    // The broker may close while the bytes are still being written: that is a refusal too.
    let _ = stream.write_all(&case.bytes).await;
    let received = timeout(DEADLINE, read_until_closed(&mut stream))
        .await
        .map_err(|_| fail(format!("connection still open after {DEADLINE:?}")))?;
    let expected = match case.expect {
        Expect::Close => Vec::new(),
        Expect::ConnAckThenClose(code) => vec![0x20, 0x02, 0x00, code],
    };
    if received == expected {
        Ok(())
    } else {
        Err(fail(format!(
            "expected {expected:02x?} then close, got {received:02x?}"
        )))
    }
}

/// What the peer sends until it closes (a reset counts as closing), up to 4 KiB: more than
/// any expected answer, so a broker that keeps talking fails the comparison.
async fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    const LIMIT: usize = 4096;
    let mut received = Vec::new();
    let mut chunk = [0u8; 1024];
    while received.len() < LIMIT {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => received.extend_from_slice(&chunk[..n]),
        }
    }
    received
}
