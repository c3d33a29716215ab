//! MQTT 5: round trips of every packet with reason codes and properties, byte vectors
//! written out by hand from the specification, and the refusals a strict peer owes.

use bytes::{Bytes, BytesMut};

use super::tests::{full_connect, publish, round_trip_as};
use super::*;

const V5: ProtocolVersion = ProtocolVersion::V5;
const MAX: usize = 1 << 20;

fn user(name: &str, value: &str) -> Property {
    Property::UserProperty((name.into(), value.into()))
}

fn decode_v5(bytes: &[u8]) -> Result<Option<Packet>, Error> {
    decode(&mut BytesMut::from(bytes), V5, MAX)
}

fn packet(byte1: u8, body: &[u8]) -> Vec<u8> {
    assert!(body.len() < 128);
    [&[byte1, body.len() as u8][..], body].concat()
}

#[test]
fn connect_with_every_client_property_round_trips() {
    let properties: Properties = [
        Property::SessionExpiryInterval(u32::MAX),
        Property::ReceiveMaximum(20),
        Property::MaximumPacketSize(1 << 16),
        Property::TopicAliasMaximum(10),
        Property::RequestResponseInformation(1),
        Property::RequestProblemInformation(0),
        user("site", "boiler room"),
        user("site", "again"),
        Property::AuthenticationMethod("SCRAM-SHA-1".into()),
        Property::AuthenticationData(Bytes::from_static(b"\x00\x01")),
    ]
    .into_iter()
    .collect();
    let mut connect = full_connect();
    connect.protocol = V5;
    connect.properties = properties;
    if let Some(will) = connect.will.as_mut() {
        will.properties = [
            Property::WillDelayInterval(30),
            Property::PayloadFormatIndicator(1),
            Property::MessageExpiryInterval(3600),
            Property::ContentType("application/json".into()),
            Property::ResponseTopic("reply/here".into()),
            Property::CorrelationData(Bytes::from_static(b"\xff\x00")),
            user("k", "v"),
        ]
        .into_iter()
        .collect();
    }
    round_trip_as(V5, Packet::Connect(Box::new(connect.clone())));
    // A password without a user name is allowed from 5 on.
    connect.username = None;
    round_trip_as(V5, Packet::Connect(Box::new(connect)));
}

#[test]
fn connack_with_every_server_property_round_trips() {
    let mut connack = ConnAck::new(true, ReasonCode::Success);
    connack.properties = [
        Property::SessionExpiryInterval(60),
        Property::ReceiveMaximum(100),
        Property::MaximumQoS(1),
        Property::RetainAvailable(0),
        Property::MaximumPacketSize(1 << 20),
        Property::AssignedClientIdentifier("auto-1".into()),
        Property::TopicAliasMaximum(16),
        Property::ReasonString("welcome".into()),
        Property::WildcardSubscriptionAvailable(1),
        Property::SubscriptionIdentifierAvailable(1),
        Property::SharedSubscriptionAvailable(1),
        Property::ServerKeepAlive(120),
        Property::ResponseInformation("responses/".into()),
        Property::ServerReference("other:1883".into()),
        user("a", "b"),
    ]
    .into_iter()
    .collect();
    round_trip_as(V5, Packet::ConnAck(connack));
    round_trip_as(
        V5,
        Packet::ConnAck(ConnAck::new(false, ReasonCode::BadAuthenticationMethod)),
    );
}

#[test]
fn publish_with_properties_round_trips() {
    let mut message = publish(QoS::AtLeastOnce, 7, false, true);
    message.properties = [
        Property::PayloadFormatIndicator(1),
        Property::MessageExpiryInterval(10),
        Property::TopicAlias(3),
        Property::ResponseTopic("r".into()),
        Property::CorrelationData(Bytes::from_static(b"id-1")),
        user("x", "1"),
        Property::SubscriptionIdentifier(1),
        Property::SubscriptionIdentifier(268_435_455),
        Property::ContentType("text/plain".into()),
    ]
    .into_iter()
    .collect();
    round_trip_as(V5, Packet::Publish(message.clone()));
    // With an alias, the topic may be empty.
    message.topic = "".into();
    round_trip_as(V5, Packet::Publish(message));
    round_trip_as(
        V5,
        Packet::Publish(publish(QoS::AtMostOnce, 0, false, false)),
    );
}

#[test]
fn acknowledgements_round_trip_in_their_three_lengths() {
    assert_eq!(
        round_trip_as(V5, Packet::PubAck(PubAck::new(1))),
        [0x40, 0x02, 0x00, 0x01]
    );
    assert_eq!(
        round_trip_as(
            V5,
            Packet::PubAck(PubAck::with_reason(1, ReasonCode::NotAuthorized))
        ),
        [0x40, 0x03, 0x00, 0x01, 0x87]
    );
    let mut rec = PubRec::with_reason(2, ReasonCode::QuotaExceeded);
    rec.properties.push(Property::ReasonString("full".into()));
    round_trip_as(V5, Packet::PubRec(rec));
    round_trip_as(
        V5,
        Packet::PubRel(PubRel::with_reason(3, ReasonCode::PacketIdentifierNotFound)),
    );
    let mut comp = PubComp::new(4);
    comp.properties.push(user("u", "v"));
    round_trip_as(V5, Packet::PubComp(comp));
}

#[test]
fn subscriptions_with_options_round_trip() {
    let subscribe = Subscribe {
        pkid: 5,
        filters: vec![
            SubscribeFilter {
                no_local: true,
                retain_as_published: true,
                retain_handling: RetainHandling::Never,
                ..SubscribeFilter::new("a/#", QoS::ExactlyOnce)
            },
            SubscribeFilter {
                retain_handling: RetainHandling::OnNewSubscription,
                ..SubscribeFilter::new("$share/g/b", QoS::AtLeastOnce)
            },
        ],
        properties: Properties::new().with(Property::SubscriptionIdentifier(42)),
    };
    let bytes = round_trip_as(V5, Packet::Subscribe(subscribe));
    // Options byte of "a/#": retain handling 2, RAP, NL, QoS 2.
    assert_eq!(bytes[bytes.len() - 1 - 2 - 10 - 1], 0b0010_1110);
    round_trip_as(
        V5,
        Packet::SubAck(SubAck {
            pkid: 5,
            return_codes: vec![
                SubscribeReturnCode::Success(QoS::ExactlyOnce),
                SubscribeReturnCode::Failure(ReasonCode::SharedSubscriptionsNotSupported),
                SubscribeReturnCode::Failure(ReasonCode::NotAuthorized),
            ],
            properties: Properties::new().with(Property::ReasonString("no".into())),
        }),
    );
    round_trip_as(
        V5,
        Packet::Unsubscribe(Unsubscribe {
            pkid: 6,
            filters: vec!["a/#".into()],
            properties: Properties::new().with(user("k", "v")),
        }),
    );
    round_trip_as(
        V5,
        Packet::UnsubAck(UnsubAck::new(
            6,
            vec![ReasonCode::Success, ReasonCode::NoSubscriptionExisted],
        )),
    );
}

#[test]
fn disconnect_and_auth_round_trip() {
    assert_eq!(
        round_trip_as(V5, Packet::Disconnect(Disconnect::default())),
        [0xe0, 0x00]
    );
    assert_eq!(
        round_trip_as(
            V5,
            Packet::Disconnect(Disconnect::new(ReasonCode::SessionTakenOver))
        ),
        [0xe0, 0x01, 0x8e]
    );
    let mut disconnect = Disconnect::new(ReasonCode::DisconnectWithWillMessage);
    disconnect
        .properties
        .push(Property::SessionExpiryInterval(0));
    round_trip_as(V5, Packet::Disconnect(disconnect));
    round_trip_as(
        V5,
        Packet::Auth(Auth {
            reason: ReasonCode::ContinueAuthentication,
            properties: Properties::new()
                .with(Property::AuthenticationMethod("SCRAM-SHA-1".into())),
        }),
    );
}

/// A CONNECT written out byte by byte: protocol "MQTT" level 5, clean start, keep alive
/// 10, properties Session Expiry Interval 10 and Receive Maximum 20, client id "c".
#[test]
fn connect_vector() {
    let bytes = [
        0x10, 0x16, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x02, 0x00, 0x0a, // header
        0x08, 0x11, 0x00, 0x00, 0x00, 0x0a, 0x21, 0x00, 0x14, // properties
        0x00, 0x01, b'c', // client id
    ];
    let mut buf = BytesMut::from(&bytes[..2 + 0x16][..]);
    let Some(Packet::Connect(connect)) = decode(&mut buf, V311_FOR_CONNECT, MAX).unwrap() else {
        panic!("not a CONNECT");
    };
    assert_eq!(connect.protocol, V5);
    assert!(connect.clean_session);
    assert_eq!(connect.keep_alive, 10);
    assert_eq!(connect.client_id, "c");
    assert_eq!(connect.properties.session_expiry_interval(), Some(&10));
    assert_eq!(connect.properties.receive_maximum(), Some(&20));
    let mut out = BytesMut::new();
    encode(&Packet::Connect(connect), V5, &mut out).unwrap();
    assert_eq!(&out[..], &bytes[..2 + 0x16]);
}

/// Whatever a connection spoke before, CONNECT says which version it is in.
const V311_FOR_CONNECT: ProtocolVersion = ProtocolVersion::V311;

#[test]
fn a_v311_connection_writes_no_reason_codes_or_properties() {
    let mut ack = PubAck::with_reason(9, ReasonCode::NotAuthorized);
    ack.properties.push(Property::ReasonString("no".into()));
    let mut out = BytesMut::new();
    encode(&Packet::PubAck(ack), ProtocolVersion::V311, &mut out).unwrap();
    assert_eq!(&out[..], [0x40, 0x02, 0x00, 0x09]);

    let suback = Packet::SubAck(SubAck {
        pkid: 1,
        return_codes: vec![SubscribeReturnCode::Failure(ReasonCode::NotAuthorized)],
        properties: Properties::new(),
    });
    out.clear();
    encode(&suback, ProtocolVersion::V311, &mut out).unwrap();
    assert_eq!(&out[..], [0x90, 0x03, 0x00, 0x01, 0x80]);

    let mut message = publish(QoS::AtMostOnce, 0, false, false);
    message.properties.push(user("dropped", "toward 3.1.1"));
    out.clear();
    encode(
        &Packet::Publish(message.clone()),
        ProtocolVersion::V311,
        &mut out,
    )
    .unwrap();
    message.properties = Properties::new();
    assert_eq!(
        decode(&mut out, ProtocolVersion::V311, MAX).unwrap(),
        Some(Packet::Publish(message))
    );

    out.clear();
    let refused = Packet::ConnAck(ConnAck::new(false, ReasonCode::Banned));
    encode(&refused, ProtocolVersion::V311, &mut out).unwrap();
    assert_eq!(&out[..], [0x20, 0x02, 0x00, 0x05]);
    let auth = Packet::Auth(Auth {
        reason: ReasonCode::Success,
        properties: Properties::new(),
    });
    assert!(encode(&auth, ProtocolVersion::V311, &mut out).is_err());
}

#[test]
fn property_rules_are_enforced() {
    // PUBACK 1 with reason 0x00 and a property list: each case's properties.
    let puback = |properties: &[u8]| {
        let body = [&[0x00, 0x01, 0x00, properties.len() as u8][..], properties].concat();
        decode_v5(&packet(0x40, &body))
    };
    assert!(matches!(
        puback(&[0x1f, 0x00, 0x01, b'a', 0x1f, 0x00, 0x01, b'b']),
        Err(Error::DuplicateProperty(0x1f))
    ));
    assert!(
        puback(&[0x26, 0x00, 0x01, b'a', 0x00, 0x00, 0x26, 0x00, 0x01, b'a', 0x00, 0x00]).is_ok()
    );
    assert!(matches!(
        puback(&[0x02, 0x00, 0x00, 0x00, 0x01]),
        Err(Error::PropertyNotAllowed { id: 0x02, .. })
    ));
    assert!(matches!(
        puback(&[0x7f, 0x00]),
        Err(Error::UnknownProperty(0x7f))
    ));
    // A property list longer than the packet.
    assert!(matches!(
        decode_v5(&packet(0x40, &[0x00, 0x01, 0x00, 0x09, 0x1f])),
        Err(Error::Malformed(_))
    ));
    // Reason code not defined for PUBACK.
    assert!(matches!(
        decode_v5(&packet(0x40, &[0x00, 0x01, 0x8e])),
        Err(Error::InvalidReasonCode(0x8e))
    ));
    // PUBLISH (QoS 0, topic "t") with forbidden values or repeats.
    let publish = |properties: &[u8]| {
        let body = [&[0x00, 0x01, b't', properties.len() as u8][..], properties].concat();
        decode_v5(&packet(0x30, &body))
    };
    assert!(matches!(
        publish(&[0x01, 0x02]),
        Err(Error::InvalidPropertyValue(0x01))
    ));
    assert!(matches!(
        publish(&[0x0b, 0x00]),
        Err(Error::InvalidPropertyValue(0x0b))
    ));
    assert!(matches!(
        publish(&[0x08, 0x00, 0x01, b'#']),
        Err(Error::InvalidPropertyValue(0x08))
    ));
    assert!(matches!(
        publish(&[0x23, 0x00, 0x01, 0x23, 0x00, 0x02]),
        Err(Error::DuplicateProperty(0x23))
    ));
    // A non-minimal variable byte integer as the property length.
    assert!(matches!(
        decode_v5(&packet(0x30, &[0x00, 0x01, b't', 0x80, 0x00])),
        Err(Error::Malformed(_))
    ));
    // An empty topic needs an alias.
    assert!(matches!(
        decode_v5(&packet(0x30, &[0x00, 0x00, 0x00])),
        Err(Error::Protocol(_))
    ));
}

#[test]
fn subscription_option_rules_are_enforced() {
    let subscribe = |filter: &[u8], options: u8| {
        let body = [
            &[0x00, 0x01, 0x00][..],
            &(filter.len() as u16).to_be_bytes(),
            filter,
            &[options],
        ]
        .concat();
        decode_v5(&packet(0x82, &body))
    };
    assert!(subscribe(b"a", 0b0010_1110).is_ok());
    assert!(matches!(
        subscribe(b"a", 0b0011_0000),
        Err(Error::Protocol("retain handling 3"))
    ));
    assert!(matches!(
        subscribe(b"a", 0b0100_0000),
        Err(Error::Malformed(_))
    ));
    assert!(matches!(
        subscribe(b"$share/g/a", 0b0000_0100),
        Err(Error::Protocol(_))
    ));
    // 3.1.1 has no options: the same bits are reserved.
    let body = [0x00, 0x01, 0x00, 0x01, b'a', 0b0000_0100];
    assert!(matches!(
        decode(
            &mut BytesMut::from(&packet(0x82, &body)[..]),
            ProtocolVersion::V311,
            MAX
        ),
        Err(Error::Malformed(_))
    ));
}

#[test]
fn auth_exists_only_in_5() {
    assert_eq!(
        decode_v5(&[0xf0, 0x00]).unwrap(),
        Some(Packet::Auth(Auth {
            reason: ReasonCode::Success,
            properties: Properties::new()
        }))
    );
    assert!(matches!(
        decode(
            &mut BytesMut::from(&[0xf0, 0x00][..]),
            ProtocolVersion::V311,
            MAX
        ),
        Err(Error::InvalidPacketType(15))
    ));
}

#[test]
fn control_characters_in_names_are_refused() {
    for topic in ["a\u{1}b", "a\u{7f}", "\u{9f}", "tab\there"] {
        let body = [&(topic.len() as u16).to_be_bytes()[..], topic.as_bytes()].concat();
        for version in [ProtocolVersion::V311, V5] {
            let body = if version == V5 {
                [&body[..], &[0]].concat()
            } else {
                body.clone()
            };
            assert!(
                matches!(
                    decode(&mut BytesMut::from(&packet(0x30, &body)[..]), version, MAX),
                    Err(Error::ControlCharacter)
                ),
                "{topic:?}"
            );
        }
    }
    // A payload and user properties may hold them.
    let mut message = publish(QoS::AtMostOnce, 0, false, false);
    message.payload = Bytes::from_static(b"\x01\x7f");
    message.properties.push(user("\t", "\u{1}"));
    round_trip_as(V5, Packet::Publish(message));
}

#[test]
fn errors_name_their_disconnect_reason() {
    assert_eq!(
        Error::PacketTooLarge { size: 2, max: 1 }.disconnect_reason(),
        ReasonCode::PacketTooLarge
    );
    assert_eq!(
        Error::DuplicateProperty(1).disconnect_reason(),
        ReasonCode::ProtocolError
    );
    assert_eq!(
        Error::Malformed("x").disconnect_reason(),
        ReasonCode::MalformedPacket
    );
    assert_eq!(
        Error::UnknownProperty(0x7f).disconnect_reason(),
        ReasonCode::MalformedPacket
    );
}

#[test]
fn the_codec_learns_5_from_connect() {
    use tokio_util::codec::{Decoder, Encoder};
    let mut client = MqttCodec::new(MAX);
    let mut server = MqttCodec::new(MAX);
    let connect = Packet::Connect(Box::new(Connect {
        protocol: V5,
        ..full_connect()
    }));
    let mut wire = BytesMut::new();
    client.encode(&connect, &mut wire).unwrap();
    client
        .encode(
            Packet::PubAck(PubAck::with_reason(1, ReasonCode::NoMatchingSubscribers)),
            &mut wire,
        )
        .unwrap();
    assert_eq!(server.decode(&mut wire).unwrap(), Some(connect));
    assert_eq!(server.version(), V5);
    assert_eq!(
        server.decode(&mut wire).unwrap(),
        Some(Packet::PubAck(PubAck::with_reason(
            1,
            ReasonCode::NoMatchingSubscribers
        )))
    );
}

#[test]
fn stored_properties_read_back() {
    let properties = Properties::new()
        .with(user("a", "b"))
        .with(Property::ContentType("text/plain".into()));
    assert_eq!(
        Properties::from_bytes(properties.to_bytes()).unwrap(),
        properties
    );
    assert!(Properties::from_bytes(Bytes::from_static(&[2, 0x13, 0])).is_err());
}
