//! Round trips of every packet type and byte-exact vectors.

use bytes::{BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use super::*;

const MAX: usize = 16 * 1024 * 1024;

const V311: ProtocolVersion = ProtocolVersion::V311;

/// [`round_trip_as`] for MQTT 3.1.1.
fn round_trip(packet: Packet) -> Vec<u8> {
    round_trip_as(V311, packet)
}

/// Encodes, checks the length three ways, and decodes back; also fed one byte at a time.
pub(super) fn round_trip_as(version: ProtocolVersion, packet: Packet) -> Vec<u8> {
    let mut buf = BytesMut::new();
    encode(&packet, version, &mut buf).expect("encodes");
    let bytes = buf.to_vec();
    assert_eq!(
        bytes.len(),
        encoded_len(&packet, version),
        "encoded_len of {packet:?}"
    );
    assert_eq!(check(&bytes, MAX).expect("checks"), Some(bytes.len()));
    assert_eq!(
        decode(&mut buf, version, MAX).expect("decodes"),
        Some(packet.clone())
    );
    assert!(buf.is_empty(), "decode consumed the whole packet");

    let mut partial = BytesMut::new();
    for (index, &byte) in bytes.iter().enumerate() {
        assert_eq!(check(&partial, MAX).expect("prefix checks"), None);
        assert_eq!(
            decode(&mut partial, version, MAX).expect("prefix decodes"),
            None
        );
        assert_eq!(partial.len(), index, "an incomplete packet is not consumed");
        partial.put_u8(byte);
    }
    assert_eq!(
        decode(&mut partial, version, MAX).expect("decodes"),
        Some(packet)
    );
    bytes
}

pub(super) fn full_connect() -> Connect {
    Connect {
        protocol: ProtocolVersion::V311,
        clean_session: false,
        keep_alive: 60,
        client_id: "d:myorg:boiler:boiler-1".into(),
        will: Some(LastWill {
            topic: "iot-2/evt/health/fmt/json".into(),
            payload: Bytes::from_static(b"{\"d\":{\"online\":false}}"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: Properties::new(),
        }),
        username: Some("use-token-auth".into()),
        password: Some(Bytes::from_static(b"s3cr\xffet")),
        properties: Properties::new(),
    }
}

pub(super) fn publish(qos: QoS, pkid: u16, dup: bool, retain: bool) -> Publish {
    Publish {
        dup,
        qos,
        retain,
        topic: "iot-2/evt/status/fmt/json".into(),
        pkid,
        payload: Bytes::from_static(b"{\"d\":{\"temperature\":21.5}}"),
        properties: Properties::new(),
    }
}

#[test]
fn connect_round_trips() {
    round_trip(Packet::Connect(Box::new(full_connect())));
    round_trip(Packet::Connect(Box::new(Connect {
        protocol: ProtocolVersion::V31,
        clean_session: true,
        keep_alive: 0,
        client_id: "".into(),
        will: None,
        username: None,
        password: None,
        properties: Properties::new(),
    })));
    round_trip(Packet::Connect(Box::new(Connect {
        will: Some(LastWill {
            topic: "a".into(),
            payload: Bytes::new(),
            qos: QoS::ExactlyOnce,
            retain: false,
            properties: Properties::new(),
        }),
        password: None,
        ..full_connect()
    })));
}

#[test]
fn connack_round_trips() {
    for code in [
        ReasonCode::Success,
        ReasonCode::UnsupportedProtocolVersion,
        ReasonCode::ClientIdentifierNotValid,
        ReasonCode::ServerUnavailable,
        ReasonCode::BadUserNameOrPassword,
        ReasonCode::NotAuthorized,
    ] {
        round_trip(Packet::ConnAck(ConnAck::new(false, code)));
    }
    round_trip(Packet::ConnAck(ConnAck::new(true, ReasonCode::Success)));
}

#[test]
fn publish_round_trips() {
    round_trip(Packet::Publish(publish(QoS::AtMostOnce, 0, false, false)));
    round_trip(Packet::Publish(publish(QoS::AtMostOnce, 0, false, true)));
    round_trip(Packet::Publish(publish(QoS::AtLeastOnce, 1, true, false)));
    round_trip(Packet::Publish(publish(
        QoS::ExactlyOnce,
        u16::MAX,
        true,
        true,
    )));
    round_trip(Packet::Publish(Publish {
        payload: Bytes::new(),
        ..publish(QoS::AtLeastOnce, 7, false, true)
    }));
}

#[test]
fn acks_round_trip() {
    round_trip(Packet::PubAck(PubAck::new(1)));
    round_trip(Packet::PubRec(PubRec::new(2)));
    round_trip(Packet::PubRel(PubRel::new(3)));
    round_trip(Packet::PubComp(PubComp::new(u16::MAX)));
    round_trip(Packet::UnsubAck(UnsubAck::new(4, vec![])));
}

#[test]
fn subscriptions_round_trip() {
    round_trip(Packet::Subscribe(Subscribe {
        pkid: 9,
        filters: vec![
            SubscribeFilter::new("iot-2/cmd/+/fmt/json", QoS::AtLeastOnce),
            SubscribeFilter::new("iotdm-1/#", QoS::ExactlyOnce),
            SubscribeFilter::new("#", QoS::AtMostOnce),
        ],
        properties: Properties::new(),
    }));
    round_trip(Packet::SubAck(SubAck {
        pkid: 9,
        return_codes: vec![
            SubscribeReturnCode::Success(QoS::AtLeastOnce),
            SubscribeReturnCode::Failure(ReasonCode::UnspecifiedError),
            SubscribeReturnCode::Success(QoS::AtMostOnce),
            SubscribeReturnCode::Success(QoS::ExactlyOnce),
        ],
        properties: Properties::new(),
    }));
    round_trip(Packet::Unsubscribe(Unsubscribe {
        pkid: 10,
        filters: vec!["a/+".into(), "b/#".into()],
        properties: Properties::new(),
    }));
}

#[test]
fn empty_packets_round_trip() {
    assert_eq!(round_trip(Packet::PingReq), [0xc0, 0x00]);
    assert_eq!(round_trip(Packet::PingResp), [0xd0, 0x00]);
    assert_eq!(
        round_trip(Packet::Disconnect(Disconnect::default())),
        [0xe0, 0x00]
    );
}

/// The CONNECT of the 3.1.1 specification's example (protocol "MQTT", level 4, flags 0xCE:
/// user name, password, will QoS 1, will, clean session; keep alive 10) with its payload.
#[test]
fn connect_vector_from_the_specification() {
    let mut body = vec![0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0xce, 0x00, 0x0a];
    body.extend_from_slice(b"\x00\x03abc"); // client id
    body.extend_from_slice(b"\x00\x04will"); // will topic
    body.extend_from_slice(b"\x00\x03bye"); // will payload
    body.extend_from_slice(b"\x00\x04user"); // user name
    body.extend_from_slice(b"\x00\x02pw"); // password
    let mut bytes = vec![0x10, body.len() as u8];
    bytes.extend_from_slice(&body);

    let expected = Packet::Connect(Box::new(Connect {
        protocol: ProtocolVersion::V311,
        clean_session: true,
        keep_alive: 10,
        client_id: "abc".into(),
        will: Some(LastWill {
            topic: "will".into(),
            payload: Bytes::from_static(b"bye"),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: Properties::new(),
        }),
        username: Some("user".into()),
        password: Some(Bytes::from_static(b"pw")),
        properties: Properties::new(),
    }));
    assert_eq!(round_trip(expected.clone()), bytes);
    let mut buf = BytesMut::from(&bytes[..]);
    assert_eq!(decode(&mut buf, V311, MAX).unwrap(), Some(expected));
}

#[test]
fn publish_qos1_vector() {
    let bytes = [
        0x32, 0x0c, 0x00, 0x03, b'a', b'/', b'b', 0x00, 0x0a, b'h', b'e', b'l', b'l', b'o',
    ];
    let packet = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: "a/b".into(),
        pkid: 10,
        payload: Bytes::from_static(b"hello"),
        properties: Properties::new(),
    });
    assert_eq!(round_trip(packet), bytes);
}

/// The SUBSCRIBE of the specification's example (3.8.3.1) and a SUBACK refusing one filter.
#[test]
fn subscribe_and_suback_vectors() {
    let subscribe = [
        0x82, 0x0e, 0x00, 0x0a, 0x00, 0x03, b'a', b'/', b'b', 0x01, 0x00, 0x03, b'c', b'/', b'd',
        0x02,
    ];
    let packet = Packet::Subscribe(Subscribe {
        pkid: 10,
        filters: vec![
            SubscribeFilter::new("a/b", QoS::AtLeastOnce),
            SubscribeFilter::new("c/d", QoS::ExactlyOnce),
        ],
        properties: Properties::new(),
    });
    assert_eq!(round_trip(packet), subscribe);

    let suback = Packet::SubAck(SubAck {
        pkid: 10,
        return_codes: vec![
            SubscribeReturnCode::Success(QoS::AtLeastOnce),
            SubscribeReturnCode::Failure(ReasonCode::UnspecifiedError),
        ],
        properties: Properties::new(),
    });
    assert_eq!(round_trip(suback), [0x90, 0x04, 0x00, 0x0a, 0x01, 0x80]);
}

#[test]
fn small_fixed_vectors() {
    let refused = Packet::ConnAck(ConnAck::new(false, ReasonCode::UnsupportedProtocolVersion));
    assert_eq!(round_trip(refused), [0x20, 0x02, 0x00, 0x01]);
    assert_eq!(
        round_trip(Packet::PubRel(PubRel::new(0x1234))),
        [0x62, 0x02, 0x12, 0x34]
    );
    assert_eq!(
        round_trip(Packet::UnsubAck(UnsubAck::new(5, vec![]))),
        [0xb0, 0x02, 0x00, 0x05]
    );
}

/// Remaining lengths at each boundary of the 1- to 4-byte encodings.
#[test]
fn remaining_length_boundaries() {
    // Body = topic field (2 + 1) + payload.
    for (remaining, header_len) in [
        (127usize, 2usize),
        (128, 3),
        (16_383, 3),
        (16_384, 4),
        (2_097_151, 4),
        (2_097_152, 5),
    ] {
        let packet = Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: "t".into(),
            pkid: 0,
            payload: Bytes::from(vec![0x5a; remaining - 3]),
            properties: Properties::new(),
        });
        let mut buf = BytesMut::new();
        encode(&packet, V311, &mut buf).unwrap();
        assert_eq!(buf.len(), header_len + remaining);
        assert_eq!(check(&buf, MAX).unwrap(), Some(buf.len()));
        assert_eq!(decode(&mut buf, V311, MAX).unwrap(), Some(packet));
    }
}

#[test]
fn consecutive_packets_decode_in_order() {
    let packets = [
        Packet::Connect(Box::new(full_connect())),
        Packet::Publish(publish(QoS::ExactlyOnce, 3, false, false)),
        Packet::PubRel(PubRel::new(3)),
        Packet::PingReq,
        Packet::Disconnect(Disconnect::default()),
    ];
    let mut buf = BytesMut::new();
    for packet in &packets {
        encode(packet, V311, &mut buf).unwrap();
    }
    // A partial packet after the whole ones stays in the buffer.
    buf.put_slice(&[0x30, 0x05, 0x00]);
    for packet in packets {
        assert_eq!(decode(&mut buf, V311, MAX).unwrap(), Some(packet));
    }
    assert_eq!(decode(&mut buf, V311, MAX).unwrap(), None);
    assert_eq!(&buf[..], &[0x30, 0x05, 0x00]);
}

#[test]
fn decoded_strings_and_payload_share_the_packet_buffer() {
    let mut buf = BytesMut::new();
    encode(
        &Packet::Publish(publish(QoS::AtLeastOnce, 1, false, false)),
        V311,
        &mut buf,
    )
    .unwrap();
    let range = buf.as_ptr_range();
    let Some(Packet::Publish(decoded)) = decode(&mut buf, V311, MAX).unwrap() else {
        panic!("expected a PUBLISH");
    };
    assert!(range.contains(&decoded.topic.as_ptr()));
    assert!(range.contains(&decoded.payload.as_ptr()));
}

#[test]
fn codec_learns_the_version_from_connect() {
    let mut server = MqttCodec::new(MAX);
    let mut client = MqttCodec::new(MAX);
    assert_eq!(server.version(), ProtocolVersion::V311);
    let connect = Packet::Connect(Box::new(Connect {
        protocol: ProtocolVersion::V31,
        ..full_connect()
    }));
    let mut wire = BytesMut::new();
    client.encode(&connect, &mut wire).unwrap();
    assert_eq!(client.version(), ProtocolVersion::V31);
    assert_eq!(&wire[2..10], b"\x00\x06MQIsdp");
    client.encode(Packet::PingReq, &mut wire).unwrap();

    assert_eq!(server.decode(&mut wire).unwrap(), Some(connect));
    assert_eq!(server.version(), ProtocolVersion::V31);
    assert_eq!(server.decode(&mut wire).unwrap(), Some(Packet::PingReq));
    assert_eq!(server.decode(&mut wire).unwrap(), None);
}

#[test]
fn codec_enforces_its_packet_size() {
    let mut codec = MqttCodec::new(64);
    assert_eq!(codec.max_packet_size(), 64);
    let mut wire = BytesMut::new();
    let small = Packet::Publish(Publish {
        payload: Bytes::from(vec![0; 64 - 2 - 27]),
        ..publish(QoS::AtMostOnce, 0, false, false)
    });
    codec.encode(&small, &mut wire).unwrap();
    assert_eq!(wire.len(), 64);
    assert_eq!(codec.decode(&mut wire).unwrap(), Some(small));

    let mut header_only = BytesMut::new();
    encode(
        &Packet::Publish(Publish {
            payload: Bytes::from(vec![0; 40]),
            ..publish(QoS::AtMostOnce, 0, false, false)
        }),
        V311,
        &mut header_only,
    )
    .unwrap();
    header_only.truncate(2);
    assert!(matches!(
        codec.decode(&mut header_only),
        Err(Error::PacketTooLarge { size: 69, max: 64 })
    ));
}

#[test]
fn encode_refuses_packets_a_peer_would_reject() {
    let cases = [
        Packet::Publish(publish(QoS::AtLeastOnce, 0, false, false)),
        Packet::Publish(publish(QoS::AtMostOnce, 0, true, false)),
        Packet::PubAck(PubAck::new(0)),
        Packet::UnsubAck(UnsubAck::new(0, vec![])),
        Packet::Subscribe(Subscribe {
            pkid: 1,
            filters: vec![],
            properties: Properties::new(),
        }),
        Packet::SubAck(SubAck {
            pkid: 1,
            return_codes: vec![],
            properties: Properties::new(),
        }),
        Packet::Unsubscribe(Unsubscribe {
            pkid: 1,
            filters: vec![],
            properties: Properties::new(),
        }),
        Packet::Connect(Box::new(Connect {
            username: None,
            ..full_connect()
        })),
        Packet::ConnAck(ConnAck::new(true, ReasonCode::NotAuthorized)),
        Packet::Publish(Publish {
            topic: "t".repeat(65_536).into(),
            ..publish(QoS::AtMostOnce, 0, false, false)
        }),
    ];
    for packet in cases {
        let mut buf = BytesMut::from(&b"kept"[..]);
        let result = encode(&packet, V311, &mut buf);
        assert!(
            matches!(result, Err(Error::Unencodable(_))),
            "{}: {result:?}",
            packet.name()
        );
        assert_eq!(
            &buf[..],
            b"kept",
            "a failed encode leaves the buffer as it was"
        );
    }
}
