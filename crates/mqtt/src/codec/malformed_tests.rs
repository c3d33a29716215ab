//! One test per way a packet can break MQTT 3.1.1; the bytes are written by hand.

use bytes::BytesMut;

use super::*;

const MAX: usize = 1024 * 1024;

/// A packet with a one-byte remaining length.
fn packet(byte1: u8, body: &[u8]) -> Vec<u8> {
    let mut bytes = vec![byte1, u8::try_from(body.len()).expect("short body")];
    bytes.extend_from_slice(body);
    bytes
}

fn field(data: &[u8]) -> Vec<u8> {
    let mut bytes = u16::try_from(data.len()).unwrap().to_be_bytes().to_vec();
    bytes.extend_from_slice(data);
    bytes
}

/// A CONNECT body: protocol name and level, connect flags, keep alive 30, then `payload`.
fn connect_body(name: &[u8], level: u8, flags: u8, payload: &[&[u8]]) -> Vec<u8> {
    let mut body = field(name);
    body.extend_from_slice(&[level, flags, 0, 30]);
    for item in payload {
        body.extend_from_slice(&field(item));
    }
    body
}

fn decode_err(bytes: &[u8]) -> Error {
    let mut buf = BytesMut::from(bytes);
    match decode(&mut buf, ProtocolVersion::V311, MAX) {
        Err(error) => error,
        Ok(packet) => panic!("{bytes:02x?} decoded to {packet:?}"),
    }
}

#[test]
fn remaining_length_of_five_bytes() {
    let bytes = [0x30, 0xff, 0xff, 0xff, 0xff, 0x01];
    assert!(matches!(
        check(&bytes, usize::MAX),
        Err(Error::MalformedRemainingLength)
    ));
    assert!(matches!(
        decode_err(&bytes),
        Error::MalformedRemainingLength
    ));
    // Four continuation bytes are enough to know, before the fifth arrives.
    assert!(check(&bytes[..5], usize::MAX).is_err());
    assert_eq!(check(&bytes[..4], usize::MAX).unwrap(), None);
}

#[test]
fn remaining_length_longer_than_needed() {
    assert!(matches!(
        decode_err(&[0xc0, 0x80, 0x00]),
        Error::MalformedRemainingLength
    ));
    let mut padded = vec![0x40, 0x82, 0x00];
    padded.extend_from_slice(&[0, 1]);
    assert!(matches!(
        decode_err(&padded),
        Error::MalformedRemainingLength
    ));
}

#[test]
fn reserved_packet_types() {
    assert!(matches!(
        decode_err(&[0x00, 0x00]),
        Error::InvalidPacketType(0)
    ));
    assert!(matches!(
        decode_err(&[0xf0, 0x00]),
        Error::InvalidPacketType(15)
    ));
}

#[test]
fn reserved_flags_are_checked_from_the_first_byte() {
    for byte1 in [
        0x11, 0x21, 0x42, 0x51, 0x60, 0x63, 0x72, 0x80, 0x8a, 0x92, 0xa0, 0xa3, 0xb8, 0xc1, 0xd4,
        0xe2,
    ] {
        let result = check(&[byte1], MAX);
        assert!(
            matches!(result, Err(Error::InvalidHeaderFlags { packet_type, flags })
                if packet_type == byte1 >> 4 && flags == byte1 & 0x0f),
            "{byte1:#04x}: {result:?}"
        );
    }
}

#[test]
fn publish_with_qos_3() {
    let body = [field(b"a/b"), vec![0, 1]].concat();
    assert!(matches!(
        decode_err(&packet(0x36, &body)),
        Error::InvalidQoS(3)
    ));
}

#[test]
fn publish_qos_0_with_dup() {
    let body = field(b"a/b");
    assert!(matches!(
        decode_err(&packet(0x38, &body)),
        Error::Malformed(_)
    ));
}

#[test]
fn strings_that_are_not_utf8() {
    for bad in [&b"\xff"[..], b"a\xc0\x80", b"\xed\xa0\x80", b"\xe2\x82"] {
        assert!(matches!(
            decode_err(&packet(0x30, &field(bad))),
            Error::InvalidUtf8
        ));
    }
}

#[test]
fn strings_with_a_null_character() {
    assert!(matches!(
        decode_err(&packet(0x30, &field(b"a\0b"))),
        Error::NullCharacter
    ));
    let connect = connect_body(b"MQTT", 4, 0x02, &[b"id\0"]);
    assert!(matches!(
        decode_err(&packet(0x10, &connect)),
        Error::NullCharacter
    ));
    let subscribe = [vec![0, 1], field(b"a/\0"), vec![0]].concat();
    assert!(matches!(
        decode_err(&packet(0x82, &subscribe)),
        Error::NullCharacter
    ));
}

#[test]
fn connect_with_an_unknown_protocol_name() {
    for name in [&b"MQTX"[..], b"mqtt", b"", b"MQIsdpX"] {
        let error = decode_err(&packet(0x10, &connect_body(name, 4, 0x02, &[b"id"])));
        assert!(
            matches!(error, Error::InvalidProtocolName),
            "{name:?}: {error:?}"
        );
        // Not MQTT at all, perhaps: closed without an answer.
        assert_eq!(error.connack_code(), None);
    }
}

#[test]
fn connect_with_an_unsupported_level() {
    for (name, level) in [
        (&b"MQTT"[..], 3),
        (b"MQTT", 6),
        (b"MQIsdp", 4),
        (b"MQIsdp", 5),
        (b"MQTT", 0),
    ] {
        let error = decode_err(&packet(0x10, &connect_body(name, level, 0x02, &[b"id"])));
        assert!(
            matches!(error, Error::UnsupportedProtocolLevel(l) if l == level),
            "{error:?}"
        );
        assert_eq!(
            error.connack_code(),
            Some(ReasonCode::UnsupportedProtocolVersion)
        );
    }
}

#[test]
fn connect_with_the_reserved_flag() {
    let error = decode_err(&packet(0x10, &connect_body(b"MQTT", 4, 0x03, &[b"id"])));
    assert!(matches!(error, Error::Malformed(_)), "{error:?}");
    assert_eq!(error.connack_code(), None);
}

#[test]
fn connect_with_will_qos_but_no_will() {
    let error = decode_err(&packet(0x10, &connect_body(b"MQTT", 4, 0x0a, &[b"id"])));
    assert!(matches!(error, Error::Malformed(_)), "{error:?}");
}

#[test]
fn connect_with_will_retain_but_no_will() {
    let error = decode_err(&packet(0x10, &connect_body(b"MQTT", 4, 0x22, &[b"id"])));
    assert!(matches!(error, Error::Malformed(_)), "{error:?}");
}

#[test]
fn connect_with_will_qos_3() {
    let body = connect_body(b"MQTT", 4, 0x1e, &[b"id", b"w", b"x"]);
    assert!(matches!(
        decode_err(&packet(0x10, &body)),
        Error::InvalidQoS(3)
    ));
}

#[test]
fn connect_with_a_wildcard_will_topic() {
    let body = connect_body(b"MQTT", 4, 0x06, &[b"id", b"w/#", b"x"]);
    assert!(matches!(
        decode_err(&packet(0x10, &body)),
        Error::InvalidTopicName
    ));
}

#[test]
fn connect_with_a_password_but_no_user_name() {
    let body = connect_body(b"MQTT", 4, 0x42, &[b"id", b"secret"]);
    assert!(matches!(
        decode_err(&packet(0x10, &body)),
        Error::Malformed(_)
    ));
}

#[test]
fn connect_missing_a_flagged_field() {
    let body = connect_body(b"MQTT", 4, 0x82, &[b"id"]);
    assert!(matches!(
        decode_err(&packet(0x10, &body)),
        Error::Malformed(_)
    ));
}

#[test]
fn subscribe_without_filters() {
    assert!(matches!(
        decode_err(&packet(0x82, &[0, 1])),
        Error::Malformed(_)
    ));
}

#[test]
fn subscribe_with_qos_3() {
    let body = [vec![0, 1], field(b"a/b"), vec![3]].concat();
    assert!(matches!(
        decode_err(&packet(0x82, &body)),
        Error::InvalidQoS(3)
    ));
}

#[test]
fn subscribe_with_reserved_bits_in_the_qos_byte() {
    for requested in [0x04, 0x41, 0x80] {
        let body = [vec![0, 1], field(b"a/b"), vec![requested]].concat();
        assert!(matches!(
            decode_err(&packet(0x82, &body)),
            Error::Malformed(_)
        ));
    }
}

#[test]
fn subscribe_without_the_qos_byte() {
    let body = [vec![0, 1], field(b"a/b")].concat();
    assert!(matches!(
        decode_err(&packet(0x82, &body)),
        Error::Malformed(_)
    ));
}

#[test]
fn subscribe_to_invalid_filters() {
    for filter in [&b""[..], b"a/#/b", b"a#", b"a/b+"] {
        let body = [vec![0, 1], field(filter), vec![1]].concat();
        assert!(matches!(
            decode_err(&packet(0x82, &body)),
            Error::InvalidTopicFilter
        ));
        let body = [vec![0, 1], field(filter)].concat();
        assert!(matches!(
            decode_err(&packet(0xa2, &body)),
            Error::InvalidTopicFilter
        ));
    }
}

#[test]
fn unsubscribe_without_filters() {
    assert!(matches!(
        decode_err(&packet(0xa2, &[0, 1])),
        Error::Malformed(_)
    ));
}

#[test]
fn publish_to_invalid_topics() {
    for topic in [&b""[..], b"a/+", b"a/#", b"#"] {
        let body = [field(topic), vec![0, 1]].concat();
        assert!(matches!(
            decode_err(&packet(0x32, &body)),
            Error::InvalidTopicName
        ));
    }
}

#[test]
fn packet_identifier_zero() {
    let cases = [
        packet(0x32, &[field(b"a"), vec![0, 0]].concat()),
        packet(0x34, &[field(b"a"), vec![0, 0]].concat()),
        packet(0x40, &[0, 0]),
        packet(0x50, &[0, 0]),
        packet(0x62, &[0, 0]),
        packet(0x70, &[0, 0]),
        packet(0x82, &[vec![0, 0], field(b"a"), vec![0]].concat()),
        packet(0x90, &[0, 0, 0]),
        packet(0xa2, &[vec![0, 0], field(b"a")].concat()),
        packet(0xb0, &[0, 0]),
    ];
    for bytes in cases {
        assert!(
            matches!(decode_err(&bytes), Error::ZeroPacketId),
            "{bytes:02x?}"
        );
    }
}

#[test]
fn trailing_bytes_inside_the_remaining_length() {
    let cases = [
        (packet(0xc0, &[0]), 1),
        (packet(0xd0, &[0, 0]), 2),
        (packet(0xe0, &[7]), 1),
        (packet(0x40, &[0, 1, 0]), 1),
        (packet(0x20, &[0, 0, 0]), 1),
        (packet(0xb0, &[0, 1, 2, 3]), 2),
        (
            packet(
                0x10,
                &[connect_body(b"MQTT", 4, 0x02, &[b"id"]), vec![9]].concat(),
            ),
            1,
        ),
    ];
    for (bytes, extra) in cases {
        let error = decode_err(&bytes);
        assert!(
            matches!(error, Error::TrailingBytes(n) if n == extra),
            "{bytes:02x?}: {error:?}"
        );
    }
}

#[test]
fn packets_ending_inside_a_field() {
    for bytes in [
        packet(0x40, &[0]),
        packet(0x30, &[0, 5, b'a']),
        packet(0x32, &field(b"a")),
        packet(0x20, &[0]),
        packet(0x10, &field(b"MQTT")),
    ] {
        assert!(
            matches!(decode_err(&bytes), Error::Malformed(_)),
            "{bytes:02x?}"
        );
    }
}

#[test]
fn packet_larger_than_the_limit_is_refused_from_its_header() {
    // 0x3e8 = 1000 bytes announced, nothing of the body sent.
    let header = [0x30, 0xe8, 0x07];
    assert!(matches!(
        check(&header, 100),
        Err(Error::PacketTooLarge {
            size: 1003,
            max: 100
        })
    ));
    let mut buf = BytesMut::from(&header[..]);
    assert!(matches!(
        decode(&mut buf, ProtocolVersion::V311, 100),
        Err(Error::PacketTooLarge {
            size: 1003,
            max: 100
        })
    ));
    // The limit includes the fixed header.
    assert_eq!(check(&header, 1003).unwrap(), None);
    assert!(check(&header, 1002).is_err());
}

#[test]
fn connack_with_reserved_bits_or_unknown_codes() {
    for body in [[0x02, 0x00], [0x00, 0x06], [0x01, 0x05], [0x80, 0x00]] {
        assert!(matches!(
            decode_err(&packet(0x20, &body)),
            Error::Malformed(_)
        ));
    }
}

#[test]
fn suback_with_unknown_or_no_return_codes() {
    assert!(matches!(
        decode_err(&packet(0x90, &[0, 1])),
        Error::Malformed(_)
    ));
    for code in [0x03, 0x81, 0xff] {
        assert!(matches!(
            decode_err(&packet(0x90, &[0, 1, code])),
            Error::Malformed(_)
        ));
    }
}
