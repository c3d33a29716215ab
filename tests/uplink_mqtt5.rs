//! MQTT 5 device sessions. Against a broker the test plays with the workspace's own
//! codec (what goes over the wire: CONNECT properties, topic aliases, content type,
//! Receive Maximum, and the answers to PUBACK reason codes), and against the real
//! brokers (an MQTT 5 subscriber sees the properties; an ACL refusal moves events to the
//! dead letters and loses nothing else).

mod common;

use std::path::Path;
use std::time::Duration;

use common::scripted::ScriptedBroker;
use common::*;
use fieldbridge::event::{Event, Qos};
use fieldbridge::store::{DeviceStats, Store, StoreSettings};
use fieldbridge::uplink::{Protocol, Uplink, UplinkSettings};
use fieldbridge_mqtt::codec::{
    self, ConnAck, Packet, Property, ProtocolVersion, Publish, ReasonCode,
};
use fieldbridge_testkit::Suite;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

const STATUS_TOPIC: &str = "iot-2/evt/status/fmt/json";

fn main() -> std::process::ExitCode {
    let mut suite = Suite::new();
    suite.async_test(
        "wire::properties_aliases_receive_maximum_and_reason_codes",
        &[],
        properties_aliases_receive_maximum_and_reason_codes,
    );
    broker_tests!(suite;
        an_mqtt5_subscriber_sees_json_events_with_their_properties,
        a_refused_event_goes_to_the_dead_letters_and_nothing_else_is_lost,
    );
    suite.run()
}

fn mqtt5_settings(url: impl AsRef<str>) -> UplinkSettings {
    let mut settings = uplink_settings(url);
    settings.protocol = Protocol::V5;
    settings
}

async fn start(
    settings: UplinkSettings,
    data_dir: &Path,
    device: &str,
) -> (Uplink, Store, mpsc::Sender<Event>) {
    let store = Store::open(StoreSettings::new(data_dir)).await.unwrap();
    let (sender, events) = mpsc::channel(64);
    let devices = vec![device_identity(device, "pump", None)];
    let uplink = Uplink::start(settings, store.clone(), devices, events).unwrap();
    (uplink, store, sender)
}

async fn stats_of(store: &Store, device: &str) -> DeviceStats {
    let stats = store.stats().await.unwrap();
    stats
        .into_iter()
        .find(|s| s.device_id == device)
        .unwrap_or_default()
}

fn seq_of(publish: &Publish) -> u64 {
    parse(&publish.payload).1
}

/// The session as the broker sees it: CONNECT with session expiry and Maximum Packet
/// Size; events as JSON with content type, the topic sent once and then only its alias;
/// never more unacknowledged than the broker's Receive Maximum; an event larger than
/// the broker's Maximum Packet Size, and one refused with 0x87, in the dead letters; one
/// refused with 0x97 (quota exceeded) sent again and then accepted.
async fn properties_aliases_receive_maximum_and_reason_codes() {
    let tmp = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut settings = mqtt5_settings(format!("mqtt://127.0.0.1:{port}"));
    settings.session_expiry = Duration::from_secs(3600);
    settings.max_inbound = 64 * 1024;
    let (uplink, store, sender) = start(settings, &tmp.path().join("data"), "pump-1").await;

    let mut broker = ScriptedBroker::accept(&listener, ProtocolVersion::V5).await;
    let connect = broker.connect().await;
    assert_eq!(connect.protocol, ProtocolVersion::V5);
    assert!(!connect.clean_session, "the session is kept");
    assert_eq!(connect.properties.session_expiry_interval(), Some(&3600));
    assert_eq!(connect.properties.maximum_packet_size(), Some(&(64 * 1024)));
    let connack = ConnAck {
        properties: codec::Properties::new()
            .with(Property::TopicAliasMaximum(4))
            .with(Property::ReceiveMaximum(2))
            .with(Property::MaximumPacketSize(1024)),
        ..ConnAck::new(false, ReasonCode::Success)
    };
    broker.send(Packet::ConnAck(connack)).await;
    wait_status(&uplink, "pump-1", "connected", |s| s.connected).await;

    // Event 2 is larger than the broker accepts.
    for seq in 0..6u64 {
        let mut event = test_event("pump-1", "status", seq, Qos::AtLeastOnce);
        if seq == 2 {
            let padding = "x".repeat(2000);
            event = Event::encoded(
                "pump-1",
                "status",
                Qos::AtLeastOnce,
                format!(r#"{{"device":"pump-1","seq":2,"pad":"{padding}"}}"#).into_bytes(),
            );
        }
        sender.send(event).await.unwrap();
    }

    let first = broker.publish().await;
    assert_eq!(&*first.topic, STATUS_TOPIC);
    assert_eq!(first.properties.topic_alias(), Some(&1));
    assert_eq!(
        first.properties.content_type().map(|c| &**c),
        Some("application/json")
    );
    assert_eq!(first.properties.payload_format_indicator(), Some(&1));
    let second = broker.publish().await;
    assert_eq!(&*second.topic, "", "the alias stands for the topic");
    assert_eq!(second.properties.topic_alias(), Some(&1));
    assert_eq!((seq_of(&first), seq_of(&second)), (0, 1));
    // Receive Maximum 2: nothing more until one is acknowledged.
    assert_eq!(
        broker.next_within(Duration::from_millis(500)).await,
        None,
        "a third publish beyond the broker's Receive Maximum"
    );
    broker.puback(first.pkid, ReasonCode::NotAuthorized).await;
    broker.puback(second.pkid, ReasonCode::QuotaExceeded).await;

    // Event 1 comes back once the others in flight are answered; event 2 never comes.
    let mut accepted = Vec::new();
    let mut refused_again = false;
    while accepted.len() < 4 {
        let publish = broker.publish().await;
        let seq = seq_of(&publish);
        assert!(seq != 0 && seq != 2, "event {seq} must not be sent again");
        if seq == 1 && !refused_again {
            // Refused once more for now, then accepted.
            refused_again = true;
            broker.puback(publish.pkid, ReasonCode::QuotaExceeded).await;
            continue;
        }
        accepted.push(seq);
        broker.puback(publish.pkid, ReasonCode::Success).await;
    }
    accepted.sort_unstable();
    assert_eq!(accepted, [1, 3, 4, 5]);
    wait_until_async("two dead letters and an empty queue", || async {
        let stats = stats_of(&store, "pump-1").await;
        stats.dead_lettered == 2 && stats.depth == 0
    })
    .await;
    let reasons = dead_letter_reasons(&tmp.path().join("data")).await;
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(
        reasons.iter().any(|r| r.starts_with("0x87 not authorized")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.starts_with("0x95 packet too large")),
        "{reasons:?}"
    );
    uplink.shutdown().await;
}

/// The reasons recorded in the dead letters, read from the database file.
async fn dead_letter_reasons(data_dir: &Path) -> Vec<String> {
    use sqlx::Connection;
    let url = format!("sqlite://{}?mode=ro", data_dir.join("queue.db").display());
    let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::query_scalar("SELECT reason FROM dead_letters ORDER BY id")
        .fetch_all(&mut conn)
        .await
        .unwrap()
}

/// A subscriber of the broker's own MQTT 5 (rumqttc's v5 client, not the gateway's
/// code): events arrive as JSON with their content type and payload format; QoS 0
/// events carry the configured message expiry.
async fn an_mqtt5_subscriber_sees_json_events_with_their_properties(kind: BrokerKind) {
    use rumqttc::v5::mqttbytes::v5::Packet as Packet5;
    use rumqttc::v5::{AsyncClient, Event as Event5, MqttOptions};
    let tmp = tempfile::tempdir().unwrap();
    let broker = TestBroker::start(kind, tmp.path(), BrokerConfig::default());
    let mut options = MqttOptions::new("v5-reader", "127.0.0.1", broker.port);
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    client
        .subscribe("iot-2/#", rumqttc::v5::mqttbytes::QoS::AtLeastOnce)
        .await
        .unwrap();
    let (received, mut publishes) = mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event5::Incoming(Packet5::SubAck(_))) => {
                    let _ = received.send(None);
                }
                Ok(Event5::Incoming(Packet5::Publish(publish))) => {
                    let _ = received.send(Some(publish));
                }
                Ok(_) => {}
                Err(error) => panic!("subscriber: {error}"),
            }
        }
    });
    assert!(publishes.recv().await.unwrap().is_none(), "SUBACK first");

    let mut settings = mqtt5_settings(broker.url());
    settings.message_expiry = Some(Duration::from_secs(90));
    let (uplink, _store, sender) = start(settings, &tmp.path().join("data"), "pump-1").await;
    // QoS 0 events are not kept while the session is not connected yet.
    wait_status(&uplink, "pump-1", "connected", |s| s.connected).await;
    sender
        .send(test_event("pump-1", "status", 0, Qos::AtLeastOnce))
        .await
        .unwrap();
    sender
        .send(test_event("pump-1", "status", 1, Qos::AtMostOnce))
        .await
        .unwrap();
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let publish = tokio::time::timeout(DEADLINE, publishes.recv())
            .await
            .expect("events in time")
            .unwrap()
            .expect("a publish");
        let properties = publish.properties.clone().expect("properties");
        assert_eq!(String::from_utf8_lossy(&publish.topic), STATUS_TOPIC);
        assert_eq!(properties.content_type.as_deref(), Some("application/json"));
        assert_eq!(properties.payload_format_indicator, Some(1));
        let (_, seq) = parse(&publish.payload);
        let expiry = properties.message_expiry_interval;
        match seq {
            0 => assert_eq!(expiry, None, "QoS 1 events do not expire"),
            _ => assert!(
                expiry.is_some_and(|left| (1..=90).contains(&left)),
                "{expiry:?}"
            ),
        }
        seen.push(seq);
    }
    seen.sort_unstable();
    assert_eq!(seen, [0, 1]);
    uplink.shutdown().await;
    reader.abort();
}

/// A broker whose ACL lets the device publish `status` but not `secret` events answers
/// the latter with 0x87: they move to the dead letters, counted, and every `status`
/// event still arrives.
async fn a_refused_event_goes_to_the_dead_letters_and_nothing_else_is_lost(kind: BrokerKind) {
    let tmp = tempfile::tempdir().unwrap();
    let broker = TestBroker::start(
        kind,
        tmp.path(),
        BrokerConfig {
            acl: Some(format!("topic write {STATUS_TOPIC}\ntopic read iot-2/#\n")),
            ..BrokerConfig::default()
        },
    );
    let subscriber = Subscriber::start(SubscriberConfig {
        port: broker.port,
        client_id: "acl-reader",
        filter: "iot-2/#",
        persistent: false,
        credentials: None,
    })
    .await;
    let (uplink, store, sender) = start(
        mqtt5_settings(broker.url()),
        &tmp.path().join("data"),
        "pump-1",
    )
    .await;
    for seq in 0..10 {
        let event = if seq % 3 == 1 { "secret" } else { "status" };
        sender
            .send(test_event("pump-1", event, seq, Qos::AtLeastOnce))
            .await
            .unwrap();
    }
    wait_until_async("three dead letters and an empty queue", || async {
        let stats = stats_of(&store, "pump-1").await;
        stats.dead_lettered == 3 && stats.depth == 0
    })
    .await;
    subscriber
        .wait_for("every status event", |m| seqs_of(m, "pump-1").len() >= 7)
        .await;
    let mut seqs = seqs_of(&subscriber.messages(), "pump-1");
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs, [0, 2, 3, 5, 6, 8, 9]);
    let reasons = dead_letter_reasons(&tmp.path().join("data")).await;
    assert!(
        reasons.iter().all(|r| r.starts_with("0x87 not authorized")),
        "{reasons:?}"
    );
    uplink.shutdown().await;
}
