//! MQTT 5 over real sockets, behaviour by behaviour: CONNACK properties, every DISCONNECT
//! reason, session expiry, will delay, message expiry, topic aliases both ways, flow
//! control, packet sizes, reason codes of acknowledgements, subscription options and
//! identifiers, shared subscriptions, forwarded properties, 3.1.1 and 5 together, and the
//! 3.1.1 strictness that came with them.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use fieldbridge_broker::Config;
use fieldbridge_mqtt::codec::{
    self, ConnAck, Connect, Disconnect, LastWill, Packet, Properties, Property, ProtocolVersion,
    PubAck, PubComp, PubRec, Publish, QoS, ReasonCode, RetainHandling, SubscribeFilter,
    SubscribeReturnCode,
};
use fieldbridge_service::units;

use crate::support::{
    config, connect5_packet, connect_packet, granted, payload, props, publish, publish_with, start,
    wait_until, will, write_file, Client, Silence,
};

/// Sends PINGREQ and returns every packet that arrives before its PINGRESP: what the broker
/// had to send by the time it processed the ping.
async fn before_pong(client: &mut Client) -> Vec<Packet> {
    client.send(Packet::PingReq).await;
    let mut before = Vec::new();
    loop {
        match client.recv().await {
            Packet::PingResp => return before,
            packet => before.push(packet),
        }
    }
}

fn publishes(packets: Vec<Packet>) -> Vec<Publish> {
    packets
        .into_iter()
        .map(|packet| match packet {
            Packet::Publish(publish) => publish,
            other => panic!("expected PUBLISH, got {other:?}"),
        })
        .collect()
}

/// Asserts nothing is pending for `client` (a ping round trip comes back alone).
async fn nothing_pending(client: &mut Client, what: &str) {
    let pending = before_pong(client).await;
    assert!(pending.is_empty(), "{what}: {pending:?}");
}

async fn v5(addr: SocketAddr, client_id: &str) -> Client {
    Client::connect5(addr, client_id, true, Properties::new())
        .await
        .0
}

/// A persistent MQTT 5 session: Clean Start 0 and this Session Expiry Interval.
async fn v5_session(addr: SocketAddr, client_id: &str, expiry: u32) -> (Client, ConnAck) {
    Client::connect5(
        addr,
        client_id,
        false,
        props([Property::SessionExpiryInterval(expiry)]),
    )
    .await
}

fn filter(filter: &str, qos: QoS) -> SubscribeFilter {
    SubscribeFilter::new(filter, qos)
}

fn subscription_id(id: u32) -> Properties {
    props([Property::SubscriptionIdentifier(id)])
}

fn sub_ids(publish: &Publish) -> Vec<u32> {
    let mut ids: Vec<u32> = publish.properties.subscription_identifiers().collect();
    ids.sort_unstable();
    ids
}

fn with_limits(edit: impl FnOnce(&mut Config)) -> Config {
    let mut cfg = config();
    edit(&mut cfg);
    cfg
}

fn will5(topic: &str, text: &str, properties: Properties) -> LastWill {
    LastWill {
        properties,
        ..will(topic, text, QoS::AtLeastOnce, false)
    }
}

// ---------------------------------------------------------------------------------------
// CONNACK

#[tokio::test]
async fn connack_advertises_limits_and_capabilities() {
    let broker = start(with_limits(|cfg| {
        cfg.limits.receive_maximum = 7;
        cfg.limits.topic_alias_maximum = 5;
        cfg.limits.max_packet_size = Some(units::Size(4096));
    }))
    .await;
    let (_client, connack) = Client::connect5(
        broker.local_addr(),
        "caps",
        true,
        props([Property::SessionExpiryInterval(30)]),
    )
    .await;
    let p = &connack.properties;
    assert_eq!(p.receive_maximum(), Some(&7));
    assert_eq!(p.maximum_packet_size(), Some(&4096));
    assert_eq!(p.topic_alias_maximum(), Some(&5));
    assert_eq!(p.retain_available(), Some(&1));
    assert_eq!(p.wildcard_subscription_available(), Some(&1));
    assert_eq!(p.subscription_identifier_available(), Some(&1));
    assert_eq!(p.shared_subscription_available(), Some(&1));
    assert_eq!(
        p.assigned_client_identifier(),
        None,
        "the client chose its id"
    );
    assert_eq!(
        p.server_keep_alive(),
        None,
        "the keepalive asked is granted"
    );
    assert_eq!(
        p.session_expiry_interval(),
        None,
        "the expiry asked is granted"
    );
    assert_eq!(p.response_information(), None, "not configured");
    assert!(p.maximum_qos().is_none_or(|&qos| qos == 2 || qos == 1));
    assert!(!connack.session_present);
}

#[tokio::test]
async fn empty_client_id_gets_an_assigned_identifier_that_names_its_session() {
    let broker = start(config()).await;
    let addr = broker.local_addr();
    let (client, connack) = Client::connect5(
        addr,
        "",
        false,
        props([Property::SessionExpiryInterval(60)]),
    )
    .await;
    let assigned = connack
        .properties
        .assigned_client_identifier()
        .expect("Assigned Client Identifier")
        .to_string();
    assert!(!assigned.is_empty());
    client.disconnect().await;
    let (_again, connack) = v5_session(addr, &assigned, 60).await;
    assert!(connack.session_present, "the assigned id names the session");

    let (_other, connack) = Client::connect5(addr, "", true, Properties::new()).await;
    let other = connack.properties.assigned_client_identifier().cloned();
    assert!(
        other.is_some_and(|id| id != assigned.as_str()),
        "ids are unique"
    );
}

#[tokio::test]
async fn server_keep_alive_when_the_client_asks_for_more_than_the_maximum() {
    let broker = start(with_limits(|cfg| cfg.limits.max_keepalive = 10)).await;
    let addr = broker.local_addr();
    for (asked, told) in [(60, Some(10)), (10, None), (5, None), (0, Some(10))] {
        let connect = Connect {
            keep_alive: asked,
            ..connect5_packet("ka", true)
        };
        let (_client, connack) = Client::connect_with(addr, connect).await;
        assert_eq!(connack.code, ReasonCode::Success);
        assert_eq!(
            connack.properties.server_keep_alive().copied(),
            told,
            "keepalive {asked} asked"
        );
    }
}

#[tokio::test]
async fn session_expiry_above_the_maximum_is_capped_and_told() {
    let broker = start(with_limits(|cfg| {
        cfg.limits.max_session_expiry = Some(units::Duration(Duration::from_secs(5)))
    }))
    .await;
    let addr = broker.local_addr();
    for (asked, told) in [(100, Some(5)), (u32::MAX, Some(5)), (3, None), (0, None)] {
        let (_client, connack) = Client::connect5(
            addr,
            "capped",
            true,
            props([Property::SessionExpiryInterval(asked)]),
        )
        .await;
        assert_eq!(
            connack.properties.session_expiry_interval().copied(),
            told,
            "session expiry {asked} asked"
        );
    }
}

#[tokio::test]
async fn response_information_when_configured_and_asked() {
    let asked = props([Property::RequestResponseInformation(1)]);
    let broker = start(with_limits(|cfg| {
        cfg.response_information = Some("replies/".into())
    }))
    .await;
    let addr = broker.local_addr();
    let (_c, connack) = Client::connect5(addr, "asker", true, asked.clone()).await;
    assert_eq!(
        connack.properties.response_information().map(|s| &**s),
        Some("replies/asker/")
    );
    let (_c, connack) = Client::connect5(addr, "quiet", true, Properties::new()).await;
    assert_eq!(connack.properties.response_information(), None, "not asked");
    let (_c, connack) = Client::connect5(
        addr,
        "declines",
        true,
        props([Property::RequestResponseInformation(0)]),
    )
    .await;
    assert_eq!(connack.properties.response_information(), None, "asked 0");

    let plain = start(config()).await;
    let (_c, connack) = Client::connect5(plain.local_addr(), "asker", true, asked).await;
    assert_eq!(
        connack.properties.response_information(),
        None,
        "off by default"
    );
}

#[tokio::test]
async fn authentication_method_is_refused_with_bad_authentication_method() {
    let broker = start(config()).await;
    let (mut client, connack) = Client::connect_with(
        broker.local_addr(),
        Connect {
            properties: props([
                Property::AuthenticationMethod("SCRAM-SHA-256".into()),
                Property::AuthenticationData(Bytes::from_static(b"client-first")),
            ]),
            ..connect5_packet("enhanced", true)
        },
    )
    .await;
    assert_eq!(connack.code, ReasonCode::BadAuthenticationMethod);
    assert!(!connack.session_present);
    assert!(
        client.expect_closed().await.is_empty(),
        "closed after CONNACK"
    );
    assert_eq!(broker.stats().clients_connected, 0);
}

// ---------------------------------------------------------------------------------------
// DISCONNECT from the broker: one row per reason a client's packets can cause.

/// A raw MQTT 5 PUBLISH (QoS 0, topic `t`) whose property list is `properties` as given.
fn raw_publish_with_property_bytes(properties: &[u8]) -> Vec<u8> {
    let mut body = BytesMut::new();
    body.put_u16(1);
    body.put_u8(b't');
    body.put_u8(properties.len() as u8);
    body.put_slice(properties);
    let mut packet = vec![0x30, body.len() as u8];
    packet.extend_from_slice(&body);
    packet
}

enum Send {
    Packets(Vec<Packet>),
    Bytes(Vec<u8>),
}

#[tokio::test]
async fn protocol_violations_get_a_disconnect_with_their_reason() {
    let broker = start(with_limits(|cfg| {
        cfg.limits.receive_maximum = 2;
        cfg.limits.topic_alias_maximum = 3;
        cfg.limits.max_packet_size = Some(units::Size(1024));
    }))
    .await;
    let addr = broker.local_addr();
    let alias = |alias: u16| props([Property::TopicAlias(alias)]);
    let qos2 = |pkid: u16| Packet::Publish(publish("q2", "x", QoS::ExactlyOnce, pkid));
    let cases: Vec<(&str, Send, ReasonCode)> = vec![
        (
            "an unknown property",
            Send::Bytes(raw_publish_with_property_bytes(&[0x7F, 0x00])),
            ReasonCode::MalformedPacket,
        ),
        (
            "a property the packet may not carry",
            Send::Bytes(raw_publish_with_property_bytes(&[0x11, 0, 0, 0, 1])),
            ReasonCode::MalformedPacket,
        ),
        (
            "a property twice",
            Send::Packets(vec![Packet::Publish(publish_with(
                "t",
                "x",
                QoS::AtMostOnce,
                0,
                props([
                    Property::ContentType("a".into()),
                    Property::ContentType("b".into()),
                ]),
            ))]),
            ReasonCode::ProtocolError,
        ),
        (
            "a second CONNECT",
            Send::Packets(vec![Packet::Connect(Box::new(connect5_packet(
                "again", true,
            )))]),
            ReasonCode::ProtocolError,
        ),
        (
            "DISCONNECT raising a session expiry of 0",
            Send::Packets(vec![Packet::Disconnect(Disconnect {
                reason: ReasonCode::Success,
                properties: props([Property::SessionExpiryInterval(60)]),
            })]),
            ReasonCode::ProtocolError,
        ),
        (
            "an empty topic with an alias never set",
            Send::Packets(vec![Packet::Publish(publish_with(
                "",
                "x",
                QoS::AtMostOnce,
                0,
                alias(2),
            ))]),
            ReasonCode::ProtocolError,
        ),
        (
            "topic alias 0",
            Send::Packets(vec![Packet::Publish(publish_with(
                "t",
                "x",
                QoS::AtMostOnce,
                0,
                alias(0),
            ))]),
            ReasonCode::TopicAliasInvalid,
        ),
        (
            "a topic alias above the maximum",
            Send::Packets(vec![Packet::Publish(publish_with(
                "t",
                "x",
                QoS::AtMostOnce,
                0,
                alias(4),
            ))]),
            ReasonCode::TopicAliasInvalid,
        ),
        (
            "more QoS 2 messages awaiting PUBREL than the receive maximum",
            Send::Packets(vec![qos2(1), qos2(2), qos2(3)]),
            ReasonCode::ReceiveMaximumExceeded,
        ),
        (
            "a packet above the maximum packet size",
            Send::Packets(vec![Packet::Publish(publish(
                "t",
                vec![b'x'; 1100],
                QoS::AtMostOnce,
                0,
            ))]),
            ReasonCode::PacketTooLarge,
        ),
        (
            "QoS 0 with payload format UTF-8 and a payload that is not",
            Send::Packets(vec![Packet::Publish(publish_with(
                "t",
                [0xFF, 0xFE],
                QoS::AtMostOnce,
                0,
                props([Property::PayloadFormatIndicator(1)]),
            ))]),
            ReasonCode::PayloadFormatInvalid,
        ),
    ];
    for (what, send, expected) in cases {
        let mut client = v5(addr, "violator").await;
        match send {
            Send::Packets(packets) => client.send_all(packets).await,
            Send::Bytes(bytes) => client.write(&bytes).await,
        }
        let disconnect = loop {
            match client.try_recv(crate::support::DEADLINE).await {
                Ok(Packet::Disconnect(disconnect)) => break disconnect,
                // The QoS 2 messages within the receive maximum are answered first.
                Ok(Packet::PubRec(_)) => {}
                other => panic!("{what}: expected DISCONNECT, got {other:?}"),
            }
        };
        assert_eq!(disconnect.reason, expected, "{what}");
        assert!(
            disconnect.properties.reason_string().is_some(),
            "{what}: a Reason String explains it"
        );
        assert!(
            client.expect_closed().await.is_empty(),
            "{what}: closed after DISCONNECT"
        );
    }
    // Every refused message was dropped, nothing was delivered.
    let mut watcher = v5(addr, "watcher").await;
    watcher.subscribe(&[("#", QoS::AtMostOnce)]).await;
    nothing_pending(&mut watcher, "nothing retained or routed").await;
}

#[tokio::test]
async fn no_reason_string_for_a_client_that_asked_for_no_problem_information() {
    let broker = start(config()).await;
    let (mut client, _) = Client::connect5(
        broker.local_addr(),
        "terse",
        true,
        props([Property::RequestProblemInformation(0)]),
    )
    .await;
    client
        .send(Packet::Publish(publish_with(
            "t",
            "x",
            QoS::AtMostOnce,
            0,
            props([Property::TopicAlias(0)]),
        )))
        .await;
    let disconnect = client.expect_disconnect().await;
    assert_eq!(disconnect.reason, ReasonCode::TopicAliasInvalid);
    assert_eq!(disconnect.properties.reason_string(), None);
}

#[tokio::test]
async fn takeover_disconnects_the_old_connection_with_session_taken_over() {
    let broker = start(config()).await;
    let addr = broker.local_addr();
    let mut old = v5(addr, "same").await;
    let _new = v5(addr, "same").await;
    assert_eq!(old.disconnect_reason().await, ReasonCode::SessionTakenOver);
}

#[tokio::test]
async fn shutdown_disconnects_with_server_shutting_down() {
    let broker = start(config()).await;
    let mut client = v5(broker.local_addr(), "stays").await;
    let (mut old, _) = Client::connect(broker.local_addr(), "old", true).await;
    broker.shutdown_handle().shutdown();
    assert_eq!(
        client.disconnect_reason().await,
        ReasonCode::ServerShuttingDown
    );
    assert!(
        old.expect_closed().await.is_empty(),
        "3.1.1 has no DISCONNECT from the server"
    );
}

#[tokio::test]
async fn silent_client_is_disconnected_with_keep_alive_timeout() {
    let broker = start(config()).await;
    let connect = Connect {
        keep_alive: 1,
        ..connect5_packet("silent", true)
    };
    let (mut client, _) = Client::connect_with(broker.local_addr(), connect).await;
    let started = Instant::now();
    assert_eq!(
        client.disconnect_reason().await,
        ReasonCode::KeepAliveTimeout
    );
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "not before the keepalive: {:?}",
        started.elapsed()
    );
}

// ---------------------------------------------------------------------------------------
// Sessions

#[tokio::test]
async fn session_expiry_zero_ends_the_session_at_disconnect() {
    let broker = start(config()).await;
    let addr = broker.local_addr();
    let (mut client, _) = Client::connect5(addr, "brief", false, Properties::new()).await;
    client.subscribe(&[("b/#", QoS::AtLeastOnce)]).await;
    client.disconnect().await;
    let (_client, connack) = v5_session(addr, "brief", 60).await;
    assert!(!connack.session_present, "expiry 0: gone at disconnect");
}

#[tokio::test]
async fn session_lives_for_its_expiry_interval_and_then_is_removed() {
    let broker = start(config()).await;
    let addr = broker.local_addr();
    let (mut sub, _) = v5_session(addr, "two-seconds", 2).await;
    sub.subscribe(&[("e/#", QoS::AtLeastOnce)]).await;
    sub.disconnect().await;
    let (mut publisher, _) = Client::connect(addr, "pub", true).await;
    publisher
        .publish(publish("e/1", "while away", QoS::AtLeastOnce, 1))
        .await;
    let (mut sub, connack) = v5_session(addr, "two-seconds", 2).await;
    assert!(connack.session_present, "back within the expiry");
    let got = sub.next_publish().await;
    assert_eq!(payload(&got), "while away");

    sub.disconnect().await;
    let gone = Instant::now();
    assert_eq!(broker.stats().clients_total, 2, "kept after the disconnect");
    wait_until("the session expires", || broker.stats().clients_total == 1).await;
    assert!(
        gone.elapsed() >= Duration::from_millis(1500),
        "removed after {:?}, before its 2 s",
        gone.elapsed()
    );
    assert_eq!(
        broker.stats().subscriptions,
        0,
        "its subscription went with it"
    );
    let (_sub, connack) = v5_session(addr, "two-seconds", 2).await;
    assert!(!connack.session_present);
}

#[tokio::test]
async fn session_expiry_forever_outlives_shorter_sessions() {
    let broker = start(config()).await;
    let addr = broker.local_addr();
    let (forever, _) = v5_session(addr, "forever", u32::MAX).await;
    let (short, _) = v5_session(addr, "short", 1).await;
    forever.disconnect().await;
    short.disconnect().await;
    wait_until("the short session expires", || {
        broker.stats().clients_total == 1
    })
    .await;
    let (_forever, connack) = v5_session(addr, "forever", u32::MAX).await;
    assert!(connack.session_present);
}

#[tokio::test]
async fn disconnect_changes_the_session_expiry() {
    let broker = start(config()).await;
    let addr = broker.local_addr();
    // Shortened to 0: ends at once.
    let (client, _) = v5_session(addr, "shortened", 3600).await;
    client
        .disconnect_with(Disconnect {
            reason: ReasonCode::Success,
            properties: props([Property::SessionExpiryInterval(0)]),
        })
        .await;
    let (client, connack) = v5_session(addr, "shortened", 3600).await;
    assert!(!connack.session_present, "DISCONNECT set the expiry to 0");
    client.disconnect().await;

    // Lengthened: outlives a session that kept the same 1 s.
    let (lengthened, _) = v5_session(addr, "lengthened", 1).await;
    let (reference, _) = v5_session(addr, "reference", 1).await;
    lengthened
        .disconnect_with(Disconnect {
            reason: ReasonCode::Success,
            properties: props([Property::SessionExpiryInterval(3600)]),
        })
        .await;
    reference.disconnect().await;
    wait_until("the reference session expires", || {
        broker.stats().clients_total == 2
    })
    .await;
    let (_c, connack) = v5_session(addr, "lengthened", 1).await;
    assert!(connack.session_present, "DISCONNECT lengthened the expiry");
}

// ---------------------------------------------------------------------------------------
// Wills

async fn watcher(addr: SocketAddr, filter: &str) -> Client {
    let mut client = v5(addr, &format!("watch-{filter}")).await;
    client.subscribe(&[(filter, QoS::AtLeastOnce)]).await;
    client
}

async fn with_will(addr: SocketAddr, client_id: &str, expiry: u32, will: LastWill) -> Client {
    let connect = Connect {
        will: Some(will),
        clean_session: false,
        properties: props([Property::SessionExpiryInterval(expiry)]),
        ..connect5_packet(client_id, false)
    };
    let (client, connack) = Client::connect_with(addr, connect).await;
    assert_eq!(connack.code, ReasonCode::Success);
    client
}

#[tokio::test]
async fn will_is_published_after_its_delay_with_its_properties() {
    let broker = start(config()).await;
    let addr = broker.local_addr();
    let mut watch = watcher(addr, "will/#").await;
    let properties = props([
        Property::WillDelayInterval(1),
        Property::ContentType("text/plain".into()),
        Property::UserProperty(("k".into(), "v".into())),
    ]);
    let client = with_will(
        addr,
        "delayed",
        60,
        will5("will/delayed", "bye", properties),
    )
    .await;
    drop(client);
    let gone = Instant::now();
    let got = watch.next_publish().await;
    assert_eq!(
        (got.topic.to_string(), payload(&got)),
        ("will/delayed".into(), "bye".into())
    );
    assert!(
        gone.elapsed() >= Duration::from_millis(900),
        "published after {:?}, before its 1 s delay",
        gone.elapsed()
    );
    assert_eq!(
        got.properties.content_type().map(|s| &**s),
        Some("text/plain")
    );
    assert_eq!(
        got.properties
            .user_properties()
            .cloned()
            .collect::<Vec<_>>(),
        [("k".into(), "v".into())]
    );
    assert_eq!(got.properties.will_delay_interval(), None, "not forwarded");
}

#[tokio::test]
async fn will_is_cancelled_when_the_client_reconnects_within_the_delay() {
    let broker = start(config()).await;
    let addr = broker.local_addr();
    let mut watch = watcher(addr, "will/#").await;
    let delay = |seconds| props([Property::WillDelayInterval(seconds)]);
    let returns = with_will(addr, "returns", 60, will5("will/returns", "no", delay(4))).await;
    let reference = with_will(addr, "stays-away", 60, will5("will/away", "yes", delay(5))).await;
    drop(returns);
    drop(reference);
    wait_until("both are gone", || broker.stats().clients_connected == 1).await;
    let (_back, connack) = v5_session(addr, "returns", 60).await;
    assert!(connack.session_present);
    let got = watch.next_publish().await;
    assert_eq!(
        payload(&got),
        "yes",
        "the later will of the absent client comes, the cancelled one never"
    );
}

#[tokio::test]
async fn will_is_published_when_the_session_ends_before_the_delay() {
    let broker = start(config()).await;
    let addr = broker.local_addr();
    let mut watch = watcher(addr, "will/#").await;
    let client = with_will(
        addr,
        "ends",
        1,
        will5(
            "will/ends",
            "session over",
            props([Property::WillDelayInterval(3600)]),
        ),
    )
    .await;
    drop(client);
    let got = watch.next_publish().await;
    assert_eq!(payload(&got), "session over");
}

#[tokio::test]
async fn disconnect_with_will_message_publishes_the_will_and_a_normal_one_does_not() {
    let broker = start(config()).await;
    let addr = broker.local_addr();
    let mut watch = watcher(addr, "will/#").await;
    let normal = with_will(
        addr,
        "normal",
        0,
        will5("will/normal", "no", Properties::new()),
    )
    .await;
    normal.disconnect().await;
    let asks = with_will(
        addr,
        "asks",
        0,
        will5("will/asks", "yes", Properties::new()),
    )
    .await;
    asks.disconnect_with(Disconnect::new(ReasonCode::DisconnectWithWillMessage))
        .await;
    let got = watch.next_publish().await;
    assert_eq!(payload(&got), "yes");
    nothing_pending(&mut watch, "no will after a normal DISCONNECT").await;
}

// ---------------------------------------------------------------------------------------
// Message expiry

#[tokio::test]
async fn expired_messages_are_not_delivered_and_the_rest_carry_the_time_left() {
    let broker = start(config()).await;
    let addr = broker.local_addr();
    let (mut sub, _) = v5_session(addr, "late", 3600).await;
    sub.subscribe(&[("x/#", QoS::AtLeastOnce)]).await;
    sub.disconnect().await;
    let mut publisher = v5(addr, "pub").await;
    let expiry = |seconds| props([Property::MessageExpiryInterval(seconds)]);
    for (topic, text, seconds, retain) in [
        ("x/short", "expires", 1, false),
        ("x/long", "lives", 600, false),
        ("x/retained-short", "expires too", 1, true),
        ("x/retained-long", "stays", 600, true),
    ] {
        let pkid = publisher.pkid();
        publisher
            .publish(Publish {
                retain,
                ..publish_with(topic, text, QoS::AtLeastOnce, pkid, expiry(seconds))
            })
            .await;
    }
    let published = Instant::now();
    // Time must pass for the short ones to expire: this sleep sets up the case, it does
    // not stand for a condition.
    tokio::time::sleep(Duration::from_millis(2200)).await;

    let (mut sub, connack) = v5_session(addr, "late", 3600).await;
    assert!(connack.session_present);
    let mut got = Vec::new();
    for _ in 0..2 {
        let publish = sub.next_publish().await;
        got.push((
            payload(&publish),
            publish.properties.message_expiry_interval().copied(),
        ));
    }
    nothing_pending(&mut sub, "expired queued messages are not sent").await;
    let elapsed = published.elapsed().as_secs() as u32;
    for (text, left) in got {
        assert!(text == "lives" || text == "stays", "{text} delivered");
        let left = left.expect("the remaining expiry is forwarded");
        assert!(
            left <= 600 - 2 && left >= 600 - elapsed - 1,
            "{text}: {left} s left after {elapsed} s"
        );
    }

    let mut fresh = v5(addr, "fresh").await;
    fresh.subscribe(&[("x/#", QoS::AtLeastOnce)]).await;
    let retained = fresh.next_publish().await;
    assert_eq!(payload(&retained), "stays");
    assert!(retained
        .properties
        .message_expiry_interval()
        .is_some_and(|&left| left <= 598));
    nothing_pending(&mut fresh, "an expired retained message is not sent").await;
}

// ---------------------------------------------------------------------------------------
// Topic aliases

#[tokio::test]
async fn inbound_topic_aliases_are_resolved_and_forgotten_on_reconnect() {
    let broker = start(with_limits(|cfg| cfg.limits.topic_alias_maximum = 3)).await;
    let addr = broker.local_addr();
    let mut sub = v5(addr, "sub").await;
    sub.subscribe(&[("#", QoS::AtMostOnce)]).await;
    let mut publisher = v5(addr, "aliaser").await;
    let alias = |n| props([Property::TopicAlias(n)]);
    for (topic, text, n) in [
        ("a/b", "set", 1),
        ("", "used", 1),
        ("c/d", "re-set", 1),
        ("", "used again", 1),
        ("e", "other", 3),
        ("", "third", 3),
    ] {
        publisher
            .publish(publish_with(topic, text, QoS::AtMostOnce, 0, alias(n)))
            .await;
    }
    let mut got = Vec::new();
    for _ in 0..6 {
        let p = sub.next_publish().await;
        assert_eq!(
            p.properties.topic_alias(),
            None,
            "aliases are per connection"
        );
        got.push((p.topic.to_string(), payload(&p)));
    }
    assert_eq!(
        got,
        [
            ("a/b".into(), "set".into()),
            ("a/b".into(), "used".into()),
            ("c/d".into(), "re-set".into()),
            ("c/d".into(), "used again".into()),
            ("e".into(), "other".into()),
            ("e".into(), "third".into()),
        ] as [(String, String); 6]
    );
    drop(publisher);
    let mut publisher = v5(addr, "aliaser").await;
    publisher
        .send(Packet::Publish(publish_with(
            "",
            "x",
            QoS::AtMostOnce,
            0,
            alias(1),
        )))
        .await;
    assert_eq!(
        publisher.disconnect_reason().await,
        ReasonCode::ProtocolError
    );
}

#[tokio::test]
async fn outbound_topic_aliases_for_clients_that_allow_them() {
    let broker = start(with_limits(|cfg| cfg.limits.topic_alias_maximum = 8)).await;
    let addr = broker.local_addr();
    let (mut aliased, _) = Client::connect5(
        addr,
        "aliased",
        true,
        props([Property::TopicAliasMaximum(2)]),
    )
    .await;
    aliased.subscribe(&[("o/#", QoS::AtMostOnce)]).await;
    let mut plain = v5(addr, "plain").await;
    plain.subscribe(&[("o/#", QoS::AtMostOnce)]).await;
    let mut publisher = v5(addr, "pub").await;
    for text in ["1", "2", "3"] {
        publisher
            .publish(publish("o/topic", text, QoS::AtMostOnce, 0))
            .await;
    }
    let first = aliased.next_publish().await;
    assert_eq!(&*first.topic, "o/topic", "the first carries the topic");
    let alias = *first.properties.topic_alias().expect("and sets an alias");
    assert!(
        (1..=2).contains(&alias),
        "within the client's maximum: {alias}"
    );
    for text in ["2", "3"] {
        let next = aliased.next_publish().await;
        assert_eq!(payload(&next), text);
        assert_eq!(&*next.topic, "", "later ones carry only the alias");
        assert_eq!(next.properties.topic_alias(), Some(&alias));
    }
    for text in ["1", "2", "3"] {
        let got = plain.next_publish().await;
        assert_eq!((&*got.topic, payload(&got).as_str()), ("o/topic", text));
        assert_eq!(
            got.properties.topic_alias(),
            None,
            "no alias without a maximum"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Flow control and sizes

#[tokio::test]
async fn client_receive_maximum_bounds_unacknowledged_deliveries() {
    let broker = start(config()).await;
    let addr = broker.local_addr();
    let (mut sub, _) =
        Client::connect5(addr, "slow", true, props([Property::ReceiveMaximum(2)])).await;
    sub.subscribe(&[("rm", QoS::AtLeastOnce)]).await;
    let mut publisher = v5(addr, "pub").await;
    for n in 1..=5u16 {
        publisher
            .publish(publish("rm", n.to_string(), QoS::AtLeastOnce, n))
            .await;
    }
    let mut window = publishes(before_pong(&mut sub).await);
    while window.len() < 2 {
        window.push(sub.recv_publish().await);
        window.extend(publishes(before_pong(&mut sub).await));
    }
    let texts: Vec<String> = window.iter().map(payload).collect();
    assert_eq!(
        texts,
        ["1", "2"],
        "no more than the Receive Maximum unacknowledged"
    );
    let mut received = texts;
    let mut unacked: Vec<u16> = window.iter().map(|p| p.pkid).collect();
    while received.len() < 5 {
        let pkid = unacked.remove(0);
        sub.send(Packet::PubAck(PubAck::new(pkid))).await;
        let next = sub.recv_publish().await;
        received.push(payload(&next));
        unacked.push(next.pkid);
        let extra = publishes(before_pong(&mut sub).await);
        assert!(
            extra.is_empty(),
            "one acknowledgement lets one more through: {extra:?}"
        );
    }
    assert_eq!(received, ["1", "2", "3", "4", "5"]);
}

#[tokio::test]
async fn messages_above_the_clients_maximum_packet_size_are_skipped_and_counted() {
    let broker = start(with_limits(|cfg| cfg.sys_interval = Duration::from_secs(1))).await;
    let addr = broker.local_addr();
    let mut sys = v5(addr, "sys").await;
    sys.subscribe(&[("$SYS/broker/messages/oversized", QoS::AtMostOnce)])
        .await;
    let (mut small, _) = Client::connect5(
        addr,
        "small",
        true,
        props([Property::MaximumPacketSize(128)]),
    )
    .await;
    small.subscribe(&[("size/#", QoS::AtLeastOnce)]).await;
    let mut publisher = v5(addr, "pub").await;
    publisher
        .publish(publish("size/big", vec![b'x'; 400], QoS::AtLeastOnce, 1))
        .await;
    publisher
        .publish(publish("size/small", "fits", QoS::AtLeastOnce, 2))
        .await;
    let got = small.next_publish().await;
    assert_eq!(payload(&got), "fits", "the big one was not sent");
    assert_eq!(broker.stats().messages_oversized, 1);
    nothing_pending(&mut small, "nothing else").await;
    assert!(
        broker
            .stats()
            .exposition()
            .lines()
            .any(|line| line == "fieldbridge_broker_messages_oversized_total 1"),
        "the metric counts it"
    );
    while payload(&sys.next_publish().await) != "1" {}
}

// ---------------------------------------------------------------------------------------
// Acknowledgements

const ACL: &str = "\
topic readwrite open/#
topic read closed/#
";

#[tokio::test]
async fn puback_and_pubrec_reason_codes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cfg = config();
    cfg.auth.acl_file = Some(write_file(dir.path(), "acl", ACL));
    let broker = start(cfg).await;
    let addr = broker.local_addr();
    let mut publisher = v5(addr, "pub").await;
    let (mut terse, _) = Client::connect5(
        addr,
        "terse",
        true,
        props([Property::RequestProblemInformation(0)]),
    )
    .await;
    for qos in [QoS::AtLeastOnce, QoS::ExactlyOnce] {
        let pkid = publisher.pkid();
        assert_eq!(
            publisher
                .publish_acked(publish("open/none", "x", qos, pkid))
                .await,
            ReasonCode::NoMatchingSubscribers,
            "{qos:?}: nobody subscribed"
        );
        let pkid = publisher.pkid();
        let (reason, properties) = publisher
            .publish_answer(publish("closed/x", "x", qos, pkid))
            .await
            .expect("acknowledged");
        assert_eq!(
            reason,
            ReasonCode::NotAuthorized,
            "{qos:?}: refused by the ACL"
        );
        assert!(properties.reason_string().is_some(), "explained");
        let pkid = terse.pkid();
        let (reason, properties) = terse
            .publish_answer(publish("closed/x", "x", qos, pkid))
            .await
            .expect("acknowledged");
        assert_eq!(reason, ReasonCode::NotAuthorized);
        assert_eq!(
            properties.reason_string(),
            None,
            "Request Problem Information 0"
        );
        let pkid = publisher.pkid();
        let (reason, properties) = publisher
            .publish_answer(publish_with(
                "open/bad",
                [0xC3, 0x28],
                qos,
                pkid,
                props([Property::PayloadFormatIndicator(1)]),
            ))
            .await
            .expect("acknowledged");
        assert_eq!(reason, ReasonCode::PayloadFormatInvalid, "{qos:?}");
        assert!(properties.reason_string().is_some());
    }
    let mut sub = v5(addr, "sub").await;
    sub.subscribe(&[("open/#", QoS::ExactlyOnce)]).await;
    for qos in [QoS::AtLeastOnce, QoS::ExactlyOnce] {
        let pkid = publisher.pkid();
        assert_eq!(
            publisher
                .publish_acked(publish_with(
                    "open/yes",
                    "ok",
                    qos,
                    pkid,
                    props([Property::PayloadFormatIndicator(1)]),
                ))
                .await,
            ReasonCode::Success,
            "{qos:?}"
        );
        let got = sub.recv_publish().await;
        assert_eq!(payload(&got), "ok", "the refused ones were not delivered");
        sub.ack(&got).await;
    }
    nothing_pending(&mut sub, "nothing refused was delivered").await;
}

#[tokio::test]
async fn a_message_that_cannot_be_stored_gets_unspecified_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("broker.db");
    let mut cfg = config();
    cfg.persistence = Some(fieldbridge_broker::config::PersistenceConfig {
        path: db.clone(),
        synchronous: fieldbridge_broker::config::Synchronous::Full,
    });
    let broker = start(cfg).await;
    let addr = broker.local_addr();
    let (keeper, _) = v5_session(addr, "keeper", 3600).await;
    let mut keeper = keeper;
    keeper.subscribe(&[("d/#", QoS::AtLeastOnce)]).await;
    keeper.disconnect().await;
    let mut publisher = v5(addr, "pub").await;
    publisher
        .publish(publish("d/ok", "stored", QoS::AtLeastOnce, 1))
        .await;

    // From now on every stored message fails its transaction.
    {
        use sqlx::{ConnectOptions as _, Connection as _};
        let mut connection = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&db)
            .connect()
            .await
            .expect("the database opens");
        sqlx::query(
            "CREATE TRIGGER refuse BEFORE INSERT ON messages \
             BEGIN SELECT RAISE(ABORT, 'refused by the test'); END",
        )
        .execute(&mut connection)
        .await
        .expect("trigger created");
        connection.close().await.expect("closes");
    }
    for qos in [QoS::AtLeastOnce, QoS::ExactlyOnce] {
        let pkid = publisher.pkid();
        let reason = publisher
            .publish_acked(publish("d/refused", "not stored", qos, pkid))
            .await;
        assert_eq!(reason, ReasonCode::UnspecifiedError, "{qos:?}");
    }
    assert!(broker.stats().persistence_write_failures > 0);
    publisher.ping().await;
}

// ---------------------------------------------------------------------------------------
// SUBSCRIBE and UNSUBSCRIBE

#[tokio::test]
async fn suback_reason_codes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cfg = config();
    cfg.auth.acl_file = Some(write_file(
        dir.path(),
        "acl",
        "topic readwrite a/#\ntopic write w/#\n",
    ));
    cfg.limits.max_topic_levels = 4;
    cfg.limits.max_subscriptions_per_session = 4;
    let broker = start(cfg).await;
    let mut client = v5(broker.local_addr(), "subscriber").await;
    let suback = client
        .subscribe_with(
            vec![
                filter("a/0", QoS::AtMostOnce),
                filter("a/1", QoS::AtLeastOnce),
                filter("a/2", QoS::ExactlyOnce),
                filter("w/x", QoS::AtMostOnce),
                filter("a/b/c/d/e", QoS::AtMostOnce),
                filter("$share/g", QoS::AtMostOnce),
                filter("$share//a/x", QoS::AtMostOnce),
                filter("$share/g/w/x", QoS::AtMostOnce),
                filter("$share/g/a/s", QoS::AtMostOnce),
                filter("a/5", QoS::AtMostOnce),
            ],
            Properties::new(),
        )
        .await;
    use SubscribeReturnCode::Failure;
    assert_eq!(
        suback.return_codes,
        [
            granted(QoS::AtMostOnce),
            granted(QoS::AtLeastOnce),
            granted(QoS::ExactlyOnce),
            Failure(ReasonCode::NotAuthorized),
            Failure(ReasonCode::TopicFilterInvalid),
            Failure(ReasonCode::TopicFilterInvalid),
            Failure(ReasonCode::TopicFilterInvalid),
            Failure(ReasonCode::NotAuthorized),
            granted(QoS::AtMostOnce),
            Failure(ReasonCode::QuotaExceeded),
        ]
    );
    let unsuback = client
        .unsubscribe(&["a/1", "a/never", "$share/g/a/s"])
        .await;
    assert_eq!(
        unsuback.reason_codes,
        [
            ReasonCode::Success,
            ReasonCode::NoSubscriptionExisted,
            ReasonCode::Success
        ]
    );
    let unsuback = client.unsubscribe(&["a/1"]).await;
    assert_eq!(unsuback.reason_codes, [ReasonCode::NoSubscriptionExisted]);
}

#[tokio::test]
async fn no_local_keeps_a_clients_own_messages_from_it() {
    let broker = start(config()).await;
    let addr = broker.local_addr();
    let mut client = v5(addr, "talker").await;
    client
        .subscribe_with(
            vec![SubscribeFilter {
                no_local: true,
                ..filter("chat/#", QoS::AtLeastOnce)
            }],
            Properties::new(),
        )
        .await;
    let mut other = v5(addr, "other").await;
    client
        .publish(publish("chat/1", "mine", QoS::AtLeastOnce, 1))
        .await;
    other
        .publish(publish("chat/1", "theirs", QoS::AtLeastOnce, 1))
        .await;
    assert_eq!(payload(&client.next_publish().await), "theirs");
    nothing_pending(&mut client, "its own message never comes").await;
}

#[tokio::test]
async fn retain_as_published_keeps_the_retain_flag_of_live_messages() {
    let broker = start(config()).await;
    let addr = broker.local_addr();
    let mut keeps = v5(addr, "keeps").await;
    keeps
        .subscribe_with(
            vec![SubscribeFilter {
                retain_as_published: true,
                ..filter("rap/#", QoS::AtMostOnce)
            }],
            Properties::new(),
        )
        .await;
    let mut clears = v5(addr, "clears").await;
    clears.subscribe(&[("rap/#", QoS::AtMostOnce)]).await;
    let mut publisher = v5(addr, "pub").await;
    publisher
        .publish(Publish {
            retain: true,
            ..publish("rap/x", "r", QoS::AtMostOnce, 0)
        })
        .await;
    assert!(keeps.next_publish().await.retain, "Retain As Published");
    assert!(!clears.next_publish().await.retain, "cleared by default");
    let mut late = v5(addr, "late").await;
    late.subscribe(&[("rap/#", QoS::AtMostOnce)]).await;
    assert!(
        late.next_publish().await.retain,
        "retained on subscribe: flag set"
    );
}

#[tokio::test]
async fn retain_handling_0_1_and_2() {
    let broker = start(config()).await;
    let addr = broker.local_addr();
    let mut publisher = v5(addr, "pub").await;
    publisher
        .publish(Publish {
            retain: true,
            ..publish("rh/x", "retained", QoS::AtLeastOnce, 1)
        })
        .await;
    let mut client = v5(addr, "handler").await;
    let retained_on = async |client: &mut Client, filter_text: &str, handling| {
        client
            .subscribe_with(
                vec![SubscribeFilter {
                    retain_handling: handling,
                    ..filter(filter_text, QoS::AtMostOnce)
                }],
                Properties::new(),
            )
            .await;
        let sent = publishes(before_pong(client).await);
        sent.iter().filter(|p| payload(p) == "retained").count()
    };
    use RetainHandling::*;
    assert_eq!(retained_on(&mut client, "rh/#", OnSubscribe).await, 1);
    assert_eq!(
        retained_on(&mut client, "rh/#", OnSubscribe).await,
        1,
        "again"
    );
    assert_eq!(
        retained_on(&mut client, "rh/+", OnNewSubscription).await,
        1,
        "new"
    );
    assert_eq!(
        retained_on(&mut client, "rh/+", OnNewSubscription).await,
        0,
        "existing"
    );
    assert_eq!(retained_on(&mut client, "rh/x", Never).await, 0, "never");
    assert_eq!(
        retained_on(&mut client, "rh/x", Never).await,
        0,
        "never again"
    );
}

#[tokio::test]
async fn a_delivery_carries_every_matching_subscription_identifier() {
    let broker = start(config()).await;
    let addr = broker.local_addr();
    let mut client = v5(addr, "ids").await;
    client
        .subscribe_with(vec![filter("s/#", QoS::AtLeastOnce)], subscription_id(5))
        .await;
    client
        .subscribe_with(
            vec![filter("s/+/x", QoS::AtMostOnce)],
            subscription_id(70_000),
        )
        .await;
    client
        .subscribe_with(vec![filter("s/a/+", QoS::AtMostOnce)], Properties::new())
        .await;
    let mut publisher = v5(addr, "pub").await;
    publisher
        .publish(publish("s/a/x", "all three", QoS::AtLeastOnce, 1))
        .await;
    publisher
        .publish(publish("s/b", "one", QoS::AtLeastOnce, 2))
        .await;
    let first = client.next_publish().await;
    assert_eq!(payload(&first), "all three");
    assert_eq!(
        sub_ids(&first),
        [5, 70_000],
        "one delivery, every identifier"
    );
    assert_eq!(first.qos, QoS::AtLeastOnce, "the highest granted QoS");
    let second = client.next_publish().await;
    assert_eq!(sub_ids(&second), [5]);
    nothing_pending(&mut client, "one delivery per message").await;
}

// ---------------------------------------------------------------------------------------
// Shared subscriptions

#[tokio::test]
async fn shared_subscription_sends_each_message_to_one_member_of_each_group() {
    let broker = start(config()).await;
    let addr = broker.local_addr();
    let (mut old, _) = Client::connect(addr, "member-311", true).await;
    assert_eq!(
        old.subscribe(&[("$share/g/sh/#", QoS::AtLeastOnce)]).await,
        [granted(QoS::AtLeastOnce)]
    );
    let mut new = v5(addr, "member-5").await;
    new.subscribe(&[("$share/g/sh/#", QoS::AtLeastOnce)]).await;
    let mut other_group = v5(addr, "other-group").await;
    other_group
        .subscribe(&[("$share/h/sh/#", QoS::AtLeastOnce)])
        .await;
    let mut everyone = v5(addr, "plain").await;
    everyone.subscribe(&[("sh/#", QoS::AtLeastOnce)]).await;
    let mut publisher = v5(addr, "pub").await;
    for n in 1..=10u16 {
        publisher
            .publish(publish("sh/t", n.to_string(), QoS::AtLeastOnce, n))
            .await;
    }
    for _ in 0..10 {
        everyone.next_publish().await;
        other_group.next_publish().await;
    }
    let (mut a, mut b) = (Vec::new(), Vec::new());
    while a.len() + b.len() < 10 {
        a.extend(publishes(before_pong(&mut old).await));
        b.extend(publishes(before_pong(&mut new).await));
    }
    for p in a.iter() {
        old.ack(p).await;
    }
    for p in b.iter() {
        new.ack(p).await;
    }
    let mut all: Vec<u32> = a
        .iter()
        .chain(&b)
        .map(|p| payload(p).parse().unwrap())
        .collect();
    all.sort_unstable();
    assert_eq!(
        all,
        (1..=10).collect::<Vec<_>>(),
        "each message once in the group"
    );
    assert!(
        !a.is_empty() && !b.is_empty(),
        "both members take turns: 3.1.1 got {}, 5 got {}",
        a.len(),
        b.len()
    );
    nothing_pending(&mut everyone, "exactly ten").await;
    nothing_pending(&mut other_group, "exactly ten").await;
}

#[tokio::test]
async fn shared_subscription_prefers_connected_members_and_gets_no_retained_messages() {
    let broker = start(config()).await;
    let addr = broker.local_addr();
    let mut publisher = v5(addr, "pub").await;
    publisher
        .publish(Publish {
            retain: true,
            ..publish("job/old", "retained", QoS::AtLeastOnce, 1)
        })
        .await;
    let (mut away, _) = v5_session(addr, "away", 3600).await;
    away.subscribe(&[("$share/w/job/#", QoS::AtLeastOnce)])
        .await;
    away.disconnect().await;
    let mut here = v5(addr, "here").await;
    here.subscribe(&[("$share/w/job/#", QoS::AtLeastOnce)])
        .await;
    nothing_pending(&mut here, "no retained message on a shared subscription").await;
    for n in 2..=7u16 {
        publisher
            .publish(publish("job/new", n.to_string(), QoS::AtLeastOnce, n))
            .await;
    }
    for n in 2..=7 {
        assert_eq!(payload(&here.next_publish().await), n.to_string());
    }
    let (mut away, connack) = v5_session(addr, "away", 3600).await;
    assert!(connack.session_present);
    nothing_pending(&mut away, "nothing was queued for the absent member").await;
}

// ---------------------------------------------------------------------------------------
// Properties forwarded, versions mixed

fn message_properties() -> Properties {
    props([
        Property::PayloadFormatIndicator(1),
        Property::ContentType("application/json".into()),
        Property::ResponseTopic("reply/here".into()),
        Property::CorrelationData(Bytes::from_static(&[0, 1, 2, 0xFF])),
        Property::UserProperty(("b".into(), "2".into())),
        Property::UserProperty(("a".into(), "1".into())),
        Property::UserProperty(("b".into(), "2".into())),
    ])
}

#[tokio::test]
async fn message_properties_are_forwarded_to_5_and_dropped_toward_3_1_1() {
    let broker = start(config()).await;
    let addr = broker.local_addr();
    let mut new = v5(addr, "new").await;
    new.subscribe(&[("p/#", QoS::AtLeastOnce)]).await;
    let (mut old, _) = Client::connect(addr, "old", true).await;
    old.subscribe(&[("p/#", QoS::AtLeastOnce)]).await;
    let mut publisher = v5(addr, "pub5").await;
    publisher
        .publish(publish_with(
            "p/5",
            "{\"from\":5}",
            QoS::AtLeastOnce,
            1,
            message_properties(),
        ))
        .await;
    let got = new.next_publish().await;
    let expected: Vec<Property> = message_properties().iter().cloned().collect();
    let forwarded: Vec<Property> = got
        .properties
        .iter()
        .filter(|p| {
            !matches!(
                p,
                Property::TopicAlias(_) | Property::SubscriptionIdentifier(_)
            )
        })
        .cloned()
        .collect();
    assert_eq!(
        forwarded, expected,
        "every property, user properties in order"
    );
    let got_old = old.next_publish().await;
    assert_eq!(
        (
            &*got_old.topic,
            payload(&got_old).as_str(),
            got_old.properties.is_empty()
        ),
        ("p/5", "{\"from\":5}", true),
        "a 3.1.1 subscriber gets the message without properties"
    );

    let (mut old_publisher, _) = Client::connect(addr, "pub311", true).await;
    old_publisher
        .publish(publish("p/311", "from 3.1.1", QoS::AtLeastOnce, 1))
        .await;
    let got = new.next_publish().await;
    assert_eq!(payload(&got), "from 3.1.1");
    assert!(
        got.properties
            .iter()
            .all(|p| matches!(p, Property::TopicAlias(_))),
        "defaults toward 5: no properties: {:?}",
        got.properties
    );
    assert_eq!(payload(&old.next_publish().await), "from 3.1.1");
}

#[tokio::test]
async fn retained_message_properties_survive_for_later_subscribers() {
    let broker = start(config()).await;
    let addr = broker.local_addr();
    let mut publisher = v5(addr, "pub").await;
    publisher
        .publish(Publish {
            retain: true,
            ..publish_with("kept/p", "k", QoS::AtLeastOnce, 1, message_properties())
        })
        .await;
    let mut sub = v5(addr, "sub").await;
    sub.subscribe(&[("kept/#", QoS::AtLeastOnce)]).await;
    let got = sub.next_publish().await;
    assert!(got.retain);
    assert_eq!(
        got.properties.content_type().map(|s| &**s),
        Some("application/json")
    );
    assert_eq!(got.properties.user_properties().count(), 3);
}

// ---------------------------------------------------------------------------------------
// 3.1.1 strictness

fn raw_connect(protocol_name: &[u8], level: u8, client_id: &str) -> Vec<u8> {
    let mut body = BytesMut::new();
    body.put_u16(protocol_name.len() as u16);
    body.put_slice(protocol_name);
    body.put_u8(level);
    body.put_u8(0x02);
    body.put_u16(60);
    if level == 5 {
        body.put_u8(0);
    }
    body.put_u16(client_id.len() as u16);
    body.put_slice(client_id.as_bytes());
    let mut packet = vec![0x10, body.len() as u8];
    packet.extend_from_slice(&body);
    packet
}

#[tokio::test]
async fn connect_with_another_protocol_name_is_closed_without_connack() {
    let broker = start(config()).await;
    for (name, level) in [(&b"MQTX"[..], 4), (b"mqtt", 4), (b"MQTT5", 5), (b"HTTP", 5)] {
        let mut client = Client::tcp(broker.local_addr()).await;
        client.write(&raw_connect(name, level, "c")).await;
        let before = client.expect_closed().await;
        assert!(
            before.is_empty(),
            "{} level {level}: closed without an answer, got {before:?}",
            String::from_utf8_lossy(name)
        );
    }
    let mut client = Client::tcp(broker.local_addr()).await;
    client.write(&raw_connect(b"MQTT", 6, "c")).await;
    assert!(
        matches!(&client.expect_closed().await[..], [Packet::ConnAck(c)] if c.code == ReasonCode::UnsupportedProtocolVersion),
        "an unknown level of MQTT is still answered"
    );
}

#[tokio::test]
async fn control_characters_in_names_close_the_connection() {
    let broker = start(config()).await;
    let addr = broker.local_addr();
    for bad in ["a\u{1}b", "tab\there", "del\u{7f}", "c1\u{85}x", "c1\u{9f}"] {
        for version in [ProtocolVersion::V311, ProtocolVersion::V5] {
            let base = Connect {
                protocol: version,
                ..connect_packet("ok", true)
            };
            let connects = [
                (
                    "client id",
                    Connect {
                        client_id: bad.into(),
                        ..base.clone()
                    },
                ),
                (
                    "user name",
                    Connect {
                        username: Some(bad.into()),
                        ..base.clone()
                    },
                ),
                (
                    "will topic",
                    Connect {
                        will: Some(will(bad, "x", QoS::AtMostOnce, false)),
                        ..base.clone()
                    },
                ),
            ];
            for (what, connect) in connects {
                let mut client = Client::tcp(addr).await;
                client.send(Packet::Connect(Box::new(connect))).await;
                let before = client.expect_closed().await;
                assert!(
                    before.is_empty(),
                    "{version:?}, {what} {bad:?}: closed without CONNACK, got {before:?}"
                );
            }
            let (mut client, _) = Client::connect_with(addr, base.clone()).await;
            client
                .send(Packet::Publish(publish(bad, "x", QoS::AtMostOnce, 0)))
                .await;
            let before = client.expect_closed().await;
            assert!(
                before.iter().all(|p| matches!(p, Packet::Disconnect(d) if d.reason == ReasonCode::MalformedPacket)),
                "{version:?}, topic {bad:?}: {before:?}"
            );
            let (mut client, _) = Client::connect_with(addr, base).await;
            client
                .send(Packet::Subscribe(codec::Subscribe {
                    pkid: 1,
                    filters: vec![filter(&format!("{bad}/#"), QoS::AtMostOnce)],
                    properties: Properties::new(),
                }))
                .await;
            let before = client.expect_closed().await;
            assert!(
                before.iter().all(|p| matches!(p, Packet::Disconnect(d) if d.reason == ReasonCode::MalformedPacket)),
                "{version:?}, filter {bad:?}: {before:?}"
            );
        }
    }
    assert_eq!(broker.stats().subscriptions, 0);
    // Printable Unicode is fine.
    let (mut client, _) = Client::connect(addr, "ünïcødé-ok", true).await;
    client.subscribe(&[("ça/va/#", QoS::AtMostOnce)]).await;
}

#[tokio::test]
async fn acknowledgements_of_the_wrong_kind_close_the_connection() {
    let broker = start(config()).await;
    let addr = broker.local_addr();
    let mut publisher = v5(addr, "pub").await;
    type WrongAck = fn(u16) -> Packet;
    let cases: [(&str, QoS, WrongAck); 4] = [
        ("PUBREC for QoS 1", QoS::AtLeastOnce, |pkid| {
            Packet::PubRec(PubRec::new(pkid))
        }),
        ("PUBCOMP for QoS 1", QoS::AtLeastOnce, |pkid| {
            Packet::PubComp(PubComp::new(pkid))
        }),
        ("PUBACK for QoS 2", QoS::ExactlyOnce, |pkid| {
            Packet::PubAck(PubAck::new(pkid))
        }),
        ("PUBCOMP before PUBREL", QoS::ExactlyOnce, |pkid| {
            Packet::PubComp(PubComp::new(pkid))
        }),
    ];
    for (what, qos, wrong) in cases {
        let (mut sub, _) = Client::connect(addr, "wrong-acker", true).await;
        sub.subscribe(&[("wrong/#", qos)]).await;
        let pkid = publisher.pkid();
        publisher.publish(publish("wrong/x", what, qos, pkid)).await;
        let delivery = sub.recv_publish().await;
        assert_eq!(delivery.qos, qos);
        sub.send(wrong(delivery.pkid)).await;
        let before = sub.expect_closed().await;
        assert!(
            before.is_empty(),
            "{what}: closed, never answered: {before:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Keep-alive of a connection that is not silent (sanity of the timeout case)

#[tokio::test]
async fn a_client_that_pings_within_its_keepalive_stays() {
    let broker = start(config()).await;
    let connect = Connect {
        keep_alive: 2,
        ..connect5_packet("pinger", true)
    };
    let (mut client, _) = Client::connect_with(broker.local_addr(), connect).await;
    // Longer than the 3 s after which a silent client is disconnected.
    let until = Instant::now() + Duration::from_millis(4000);
    while Instant::now() < until {
        client.ping().await;
        match client.try_recv(Duration::from_millis(400)).await {
            Err(Silence::TimedOut) => {}
            other => panic!("a pinging client is left alone: {other:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Persistence

fn persistent(dir: &std::path::Path) -> Config {
    let mut cfg = config();
    cfg.persistence = Some(fieldbridge_broker::config::PersistenceConfig {
        path: dir.join("broker.db"),
        synchronous: fieldbridge_broker::config::Synchronous::Full,
    });
    cfg
}

#[tokio::test]
async fn mqtt5_session_state_survives_a_restart_and_expired_sessions_do_not() {
    let dir = tempfile::tempdir().expect("temp dir");
    let broker = start(persistent(dir.path())).await;
    let addr = broker.local_addr();
    let (mut keeper, _) = v5_session(addr, "keeper", 3600).await;
    keeper
        .subscribe_with(
            vec![SubscribeFilter {
                no_local: true,
                retain_as_published: true,
                ..filter("k/#", QoS::AtLeastOnce)
            }],
            subscription_id(9),
        )
        .await;
    keeper
        .subscribe_with(vec![filter("k/+/x", QoS::ExactlyOnce)], subscription_id(11))
        .await;
    keeper.disconnect().await;
    let (mut short, _) = v5_session(addr, "short", 2).await;
    short.subscribe(&[("k/#", QoS::AtLeastOnce)]).await;
    short.disconnect().await;
    let short_gone = Instant::now();
    let mut publisher = v5(addr, "pub").await;
    let properties = props([
        Property::MessageExpiryInterval(3600),
        Property::ContentType("text/plain".into()),
        Property::CorrelationData(Bytes::from_static(b"id-1")),
        Property::UserProperty(("origin".into(), "before restart".into())),
    ]);
    publisher
        .publish(publish_with(
            "k/a/x",
            "queued",
            QoS::AtLeastOnce,
            1,
            properties,
        ))
        .await;
    publisher
        .publish(publish_with(
            "k/a/x",
            "expires while down",
            QoS::AtLeastOnce,
            2,
            props([Property::MessageExpiryInterval(1)]),
        ))
        .await;
    drop(publisher);
    broker.shutdown().await;
    // The short session must be past its expiry when the broker starts again.
    tokio::time::sleep_until((short_gone + Duration::from_millis(2500)).into()).await;

    let broker = start(persistent(dir.path())).await;
    let addr = broker.local_addr();
    wait_until("the expired session is removed", || {
        broker.stats().clients_total == 1
    })
    .await;
    assert_eq!(broker.stats().subscriptions, 2, "the keeper's two");
    let (mut keeper, connack) = v5_session(addr, "keeper", 3600).await;
    assert!(connack.session_present, "restored");
    let got = keeper.next_publish().await;
    assert_eq!(payload(&got), "queued");
    assert_eq!(got.qos, QoS::AtLeastOnce);
    assert_eq!(sub_ids(&got), [9, 11], "identifiers restored");
    assert_eq!(
        got.properties.content_type().map(|s| &**s),
        Some("text/plain")
    );
    assert_eq!(
        got.properties.correlation_data().map(|b| &b[..]),
        Some(&b"id-1"[..])
    );
    assert_eq!(
        got.properties
            .user_properties()
            .cloned()
            .collect::<Vec<_>>(),
        [("origin".into(), "before restart".into())]
    );
    let left = *got
        .properties
        .message_expiry_interval()
        .expect("expiry restored");
    assert!((3500..3600).contains(&left), "{left} s left");
    nothing_pending(&mut keeper, "the expired message is not sent").await;

    keeper
        .publish(publish("k/self", "own", QoS::AtLeastOnce, 1))
        .await;
    let mut publisher = v5(addr, "pub").await;
    publisher
        .publish(Publish {
            retain: true,
            ..publish("k/r", "retained live", QoS::AtLeastOnce, 1)
        })
        .await;
    let got = keeper.next_publish().await;
    assert_eq!(payload(&got), "retained live", "No Local restored");
    assert!(got.retain, "Retain As Published restored");
    assert_eq!(sub_ids(&got), [9]);

    let (_short, connack) = v5_session(addr, "short", 2).await;
    assert!(
        !connack.session_present,
        "expired while the broker was down"
    );
}

// ---------------------------------------------------------------------------------------
// An independent MQTT 5 client: rumqttc's v5 client on both ends

mod rumqttc_v5 {
    use std::time::Duration;

    use bytes::Bytes;
    use rumqttc::v5::mqttbytes::v5::{
        Filter, Packet as RPacket, PublishProperties, RetainForwardRule, SubscribeProperties,
        SubscribeReasonCode,
    };
    use rumqttc::v5::mqttbytes::QoS as RQoS;
    use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
    use tokio::sync::mpsc;

    use crate::support::{config, start, DEADLINE};

    fn options(addr: std::net::SocketAddr, id: &str) -> MqttOptions {
        let mut options = MqttOptions::new(id, addr.ip().to_string(), addr.port());
        options.set_keep_alive(Duration::from_secs(30));
        options
    }

    /// Runs the event loop, forwarding every incoming packet.
    fn drive(mut events: EventLoop) -> mpsc::UnboundedReceiver<RPacket> {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(event) = events.poll().await {
                if let Event::Incoming(packet) = event {
                    if tx.send(packet).is_err() {
                        break;
                    }
                }
            }
        });
        rx
    }

    async fn next(rx: &mut mpsc::UnboundedReceiver<RPacket>, what: &str) -> RPacket {
        tokio::time::timeout(DEADLINE, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("no {what} in time"))
            .unwrap_or_else(|| panic!("event loop ended before {what}"))
    }

    async fn until<T>(
        rx: &mut mpsc::UnboundedReceiver<RPacket>,
        what: &str,
        mut pick: impl FnMut(RPacket) -> Option<T>,
    ) -> T {
        loop {
            if let Some(found) = pick(next(rx, what).await) {
                return found;
            }
        }
    }

    #[tokio::test]
    async fn rumqttc_v5_clients_exchange_messages_with_properties() {
        let broker = start(config()).await;
        let addr = broker.local_addr();
        let mut sub_options = options(addr, "rumqttc-v5-sub");
        sub_options
            .set_clean_start(false)
            .set_session_expiry_interval(Some(60))
            .set_topic_alias_max(Some(4))
            .set_receive_maximum(Some(4));
        let (subscriber, events) = AsyncClient::new(sub_options, 16);
        let mut sub_rx = drive(events);
        let connack = until(&mut sub_rx, "CONNACK", |p| match p {
            RPacket::ConnAck(connack) => Some(connack),
            _ => None,
        })
        .await;
        let caps = connack.properties.expect("CONNACK properties");
        assert_eq!(caps.shared_subscription_available, Some(1));
        assert_eq!(caps.subscription_identifiers_available, Some(1));
        assert!(caps.topic_alias_max.is_some_and(|max| max > 0));
        subscriber
            .subscribe_many_with_properties(
                [Filter {
                    path: "rq5/#".into(),
                    qos: RQoS::ExactlyOnce,
                    nolocal: true,
                    preserve_retain: true,
                    retain_forward_rule: RetainForwardRule::OnNewSubscribe,
                }],
                SubscribeProperties {
                    id: Some(42),
                    user_properties: vec![],
                },
            )
            .await
            .expect("subscribe queued");
        let suback = until(&mut sub_rx, "SUBACK", |p| match p {
            RPacket::SubAck(suback) => Some(suback),
            _ => None,
        })
        .await;
        assert_eq!(
            suback.return_codes,
            [SubscribeReasonCode::Success(RQoS::ExactlyOnce)]
        );

        let mut pub_options = options(addr, "rumqttc-v5-pub");
        pub_options.set_topic_alias_max(Some(0));
        let (publisher, events) = AsyncClient::new(pub_options, 16);
        let mut pub_rx = drive(events);
        until(&mut pub_rx, "CONNACK", |p| {
            matches!(p, RPacket::ConnAck(_)).then_some(())
        })
        .await;
        let qos_levels = [RQoS::AtMostOnce, RQoS::AtLeastOnce, RQoS::ExactlyOnce];
        for (n, qos) in qos_levels.into_iter().enumerate() {
            let properties = PublishProperties {
                payload_format_indicator: Some(1),
                message_expiry_interval: Some(600),
                response_topic: Some("rq5/replies".into()),
                correlation_data: Some(format!("corr-{n}").into_bytes().into()),
                user_properties: vec![("n".into(), n.to_string()), ("n".into(), "again".into())],
                content_type: Some("text/plain".into()),
                ..Default::default()
            };
            publisher
                .publish_with_properties("rq5/data", qos, false, format!("m{n}"), properties)
                .await
                .expect("publish queued");
        }
        let mut received = Vec::new();
        while received.len() < 3 {
            let publish = until(&mut sub_rx, "PUBLISH", |p| match p {
                RPacket::Publish(publish) => Some(publish),
                _ => None,
            })
            .await;
            received.push(publish);
        }
        // rumqttc reports a PUBLISH before it resolves a topic alias, so the test does.
        let mut aliases = std::collections::HashMap::new();
        let mut resolved: Vec<(Bytes, Bytes)> = Vec::new();
        for publish in &received {
            let alias = publish.properties.as_ref().and_then(|p| p.topic_alias);
            let topic = match (publish.topic.is_empty(), alias) {
                (false, Some(alias)) => {
                    aliases.insert(alias, publish.topic.clone());
                    publish.topic.clone()
                }
                (false, None) => publish.topic.clone(),
                (true, Some(alias)) => aliases.get(&alias).expect("alias set before").clone(),
                (true, None) => panic!("empty topic without alias"),
            };
            resolved.push((publish.payload.clone(), topic));
        }
        assert!(
            !aliases.is_empty(),
            "rumqttc allowed aliases: the broker used them"
        );
        received.sort_by_key(|p| p.payload.clone());
        resolved.sort();
        let resolved: Vec<Bytes> = resolved.into_iter().map(|(_, topic)| topic).collect();
        for (n, publish) in received.iter().enumerate() {
            assert_eq!(&publish.payload[..], format!("m{n}").as_bytes());
            assert_eq!(
                resolved[n],
                b"rq5/data"[..],
                "the topic, or an alias rumqttc accepted for it"
            );
            assert_eq!(publish.qos, qos_levels[n]);
            let properties = publish.properties.as_ref().expect("properties");
            assert_eq!(properties.payload_format_indicator, Some(1));
            assert!(properties
                .message_expiry_interval
                .is_some_and(|left| left <= 600 && left > 500));
            assert_eq!(properties.response_topic.as_deref(), Some("rq5/replies"));
            assert_eq!(
                properties.correlation_data.as_deref(),
                Some(format!("corr-{n}").as_bytes())
            );
            assert_eq!(
                properties.user_properties,
                [("n".into(), n.to_string()), ("n".into(), "again".into())]
            );
            assert_eq!(properties.content_type.as_deref(), Some("text/plain"));
            assert_eq!(properties.subscription_identifiers, [42]);
        }
        // The publisher saw its QoS 1 and QoS 2 exchanges complete.
        until(&mut pub_rx, "PUBACK", |p| {
            matches!(p, RPacket::PubAck(_)).then_some(())
        })
        .await;
        until(&mut pub_rx, "PUBCOMP", |p| {
            matches!(p, RPacket::PubComp(_)).then_some(())
        })
        .await;
        // The subscriber's own message never comes back (No Local).
        subscriber
            .publish("rq5/own", RQoS::AtLeastOnce, false, "own")
            .await
            .expect("publish queued");
        until(&mut sub_rx, "PUBACK of its own message", |p| match p {
            RPacket::PubAck(_) => Some(()),
            RPacket::Publish(publish) => panic!("No Local: {publish:?} came back"),
            _ => None,
        })
        .await;
        // A marker published after the subscriber's own message arrives alone.
        publisher
            .publish("rq5/marker", RQoS::AtLeastOnce, false, "marker")
            .await
            .expect("publish queued");
        let next = until(&mut sub_rx, "PUBLISH", |p| match p {
            RPacket::Publish(publish) => Some(publish),
            _ => None,
        })
        .await;
        assert_eq!(
            &next.payload[..],
            b"marker",
            "No Local: its own message skipped"
        );
        subscriber.disconnect().await.expect("disconnect queued");
        publisher.disconnect().await.expect("disconnect queued");
    }
}
