//! The uplink against a real broker on 127.0.0.1 (the workspace's own, and Mosquitto
//! where installed): identities and topics, broker outages, a broker that lost its
//! sessions, and a full queue.

mod common;

use std::path::Path;
use std::time::Duration;

use common::scripted::ScriptedBroker;
use common::*;
use fieldbridge::event::{Event, Qos};
use fieldbridge::store::{read_stats, DeviceStats, OnFull, Store, StoreError, StoreSettings};
use fieldbridge::uplink::{DeviceIdentity, Protocol, TopicScheme, Uplink, UplinkSettings};
use fieldbridge_mqtt::codec::{ProtocolVersion, ReasonCode};
use fieldbridge_testkit::Suite;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

const PLATFORM_TOPIC: &str = "iot-2/evt/status/fmt/json";

async fn open_store(dir: &Path, max_messages: u64, on_full: OnFull) -> Store {
    let mut settings = StoreSettings::new(dir);
    settings.max_messages = max_messages;
    settings.on_full = on_full;
    Store::open(settings).await.expect("store opens")
}

/// Starts the uplink; events go in through the returned sender.
fn start(
    settings: UplinkSettings,
    store: &Store,
    devices: Vec<DeviceIdentity>,
) -> (Uplink, mpsc::Sender<Event>) {
    let (sender, events) = mpsc::channel(1024);
    let uplink = Uplink::start(settings, store.clone(), devices, events).expect("uplink starts");
    (uplink, sender)
}

async fn send(sender: &mpsc::Sender<Event>, device: &str, seqs: std::ops::Range<u64>, qos: Qos) {
    for seq in seqs {
        sender
            .send(test_event(device, "status", seq, qos))
            .await
            .expect("uplink accepts events");
    }
}

fn stats_of<'a>(stats: &'a [DeviceStats], device: &str) -> Option<&'a DeviceStats> {
    stats.iter().find(|s| s.device_id == device)
}

async fn depth(store: &Store, device: &str) -> u64 {
    let stats = store.stats().await.expect("stats");
    stats_of(&stats, device).map_or(0, |s| s.depth)
}

fn users(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(u, p)| (u.to_string(), p.to_string()))
        .collect()
}

async fn events_of_several_devices_reach_a_subscriber_with_their_identities(kind: BrokerKind) {
    let tmp = tempfile::tempdir().unwrap();
    let broker = TestBroker::start(
        kind,
        tmp.path(),
        BrokerConfig {
            users: users(&[("use-token-auth", "token-1"), ("reader", "reader-pw")]),
            ..BrokerConfig::default()
        },
    );
    let subscriber = Subscriber::start(SubscriberConfig {
        port: broker.port,
        client_id: "reader-1",
        filter: "#",
        persistent: false,
        credentials: Some(("reader", "reader-pw")),
    })
    .await;
    let store = open_store(&tmp.path().join("data"), 10_000, OnFull::DropOldest).await;
    let devices = vec![
        device_identity("boiler-1", "boiler", Some("token-1")),
        device_identity("boiler-2", "boiler", Some("token-1")),
        device_identity("pump-7", "pump", Some("token-1")),
        device_identity("intruder-1", "pump", Some("wrong-token")),
    ];
    let (uplink, sender) = start(uplink_settings(broker.url()), &store, devices);

    for seq in 0..50 {
        for id in ["boiler-1", "boiler-2", "pump-7", "intruder-1"] {
            sender
                .send(test_event(id, "status", seq, Qos::AtLeastOnce))
                .await
                .unwrap();
        }
    }
    subscriber.wait_for("150 events", |m| m.len() >= 150).await;
    let messages = subscriber.messages();
    for id in ["boiler-1", "boiler-2", "pump-7"] {
        let duplicates = check_complete_and_ordered(id, &seqs_of(&messages, id), 0..50);
        assert_eq!(
            duplicates, 0,
            "{id}: no reconnect happened, so no duplicate"
        );
    }
    for message in &messages {
        assert_eq!(message.topic, PLATFORM_TOPIC);
        let (id, seq) = parse(&message.payload);
        assert_eq!(message.payload, payload(&id, seq), "payload unchanged");
    }

    // The broker saw the specified client ids, clean_session = false, the keepalive
    // and the token user name; the wrong token was refused.
    let connections = broker.connections();
    for (id, device_type) in [
        ("boiler-1", "boiler"),
        ("boiler-2", "boiler"),
        ("pump-7", "pump"),
    ] {
        let expected = Connected {
            client_id: format!("d:myorg:{device_type}:{id}"),
            clean_session: false,
            keepalive: 30,
            username: Some("use-token-auth".into()),
        };
        assert!(
            connections.contains(&expected),
            "{expected:?} not among the broker's connections:\n{connections:#?}"
        );
    }
    wait_status(&uplink, "intruder-1", "a refused connection", |s| {
        s.last_error
            .as_deref()
            .is_some_and(|e| e.contains("refused"))
    })
    .await;
    let intruder = uplink.status("intruder-1").unwrap().borrow().clone();
    assert_eq!((intruder.connected, intruder.connections), (false, 0));
    assert!(seqs_of(&subscriber.messages(), "intruder-1").is_empty());

    // Acknowledged events leave the queue; the refused device's stay.
    wait_until_async("acknowledged rows deleted", || async {
        depth(&store, "boiler-1").await == 0
            && depth(&store, "boiler-2").await == 0
            && depth(&store, "pump-7").await == 0
    })
    .await;
    assert_eq!(depth(&store, "intruder-1").await, 50);
    wait_status(&uplink, "pump-7", "50 acknowledgements", |s| {
        s.acknowledged == 50
    })
    .await;

    // QoS 0 goes straight through while connected.
    sender
        .send(test_event("pump-7", "status", 1000, Qos::AtMostOnce))
        .await
        .unwrap();
    subscriber
        .wait_for("the QoS 0 event", |m| {
            m.iter()
                .any(|r| parse(&r.payload) == ("pump-7".to_owned(), 1000))
        })
        .await;

    // Shutdown takes about half a second (grace for acknowledgements, then the
    // DISCONNECTs); the bound only catches a hang on a loaded machine.
    let started = std::time::Instant::now();
    uplink.shutdown().await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "shutdown took {took:?}");
    wait_until("DISCONNECT in the broker log", || {
        broker.saw_disconnect("d:myorg:boiler:boiler-1")
    })
    .await;
    // The uplink closed the store it was given.
    let late = store
        .enqueue(test_event("pump-7", "status", 2000, Qos::AtLeastOnce))
        .await;
    assert!(matches!(late, Err(StoreError::Closed)), "{late:?}");
}

async fn custom_templates_name_client_ids_users_and_topics(kind: BrokerKind) {
    let tmp = tempfile::tempdir().unwrap();
    let broker = TestBroker::start(kind, tmp.path(), BrokerConfig::default());
    let subscriber = Subscriber::start(SubscriberConfig {
        port: broker.port,
        client_id: "reader-2",
        filter: "plant/#",
        persistent: false,
        credentials: None,
    })
    .await;
    let store = open_store(&tmp.path().join("data"), 1000, OnFull::DropOldest).await;
    let mut settings = uplink_settings(broker.url());
    settings.topics = TopicScheme::Custom {
        client_id: "gw-{org}-{device}".into(),
        username: Some("{org}-{type}".into()),
        event: "plant/{org}/{type}/{id}/evt/{event}".into(),
        command: "plant/{org}/{type}/{id}/cmd/{command}".into(),
    };
    settings.keepalive = Duration::from_secs(15);
    let devices = vec![
        device_identity("line-3", "press", None),
        device_identity("line-4", "press", Some("token-4")),
    ];
    let (uplink, sender) = start(settings, &store, devices);
    for (seq, event_id) in [(0, "status"), (1, "health"), (2, "status")] {
        let e = test_event("line-3", event_id, seq, Qos::AtLeastOnce);
        sender.send(e).await.unwrap();
    }
    subscriber.wait_for("3 events", |m| m.len() >= 3).await;
    let topics: Vec<String> = subscriber.messages().into_iter().map(|m| m.topic).collect();
    assert_eq!(
        topics,
        [
            "plant/myorg/press/line-3/evt/status",
            "plant/myorg/press/line-3/evt/health",
            "plant/myorg/press/line-3/evt/status"
        ]
    );
    // The client id template, and the user name template for the device with a
    // token; without a token no user name is sent.
    wait_status(&uplink, "line-4", "connected", |s| s.connected).await;
    let connections = broker.connections();
    for (client_id, username) in [
        ("gw-myorg-line-3", None),
        ("gw-myorg-line-4", Some("myorg-press".to_owned())),
    ] {
        let expected = Connected {
            client_id: client_id.into(),
            clean_session: false,
            keepalive: 15,
            username,
        };
        assert!(connections.contains(&expected), "{connections:#?}");
    }
    uplink.shutdown().await;
}

async fn events_queued_during_a_broker_outage_all_arrive_in_order(kind: BrokerKind) {
    outage(kind, Protocol::V311).await;
}

async fn events_queued_during_an_outage_all_arrive_over_mqtt5(kind: BrokerKind) {
    outage(kind, Protocol::V5).await;
}

async fn outage(kind: BrokerKind, protocol: Protocol) {
    let tmp = tempfile::tempdir().unwrap();
    let (mut broker, mut subscriber) =
        persistent_broker_and_reader(kind, tmp.path(), "outage-reader").await;
    let store = open_store(&tmp.path().join("data"), 100_000, OnFull::DropOldest).await;
    let ids = ["meter-a", "meter-b", "meter-c"];
    let devices = ids
        .iter()
        .map(|id| device_identity(id, "meter", None))
        .collect();
    let mut settings = uplink_settings(broker.url());
    settings.protocol = protocol;
    let (uplink, sender) = start(settings, &store, devices);
    for id in ids {
        send(&sender, id, 0..10, Qos::AtLeastOnce).await;
    }
    subscriber.wait_for("30 events", |m| m.len() >= 30).await;

    broker.stop();
    for id in ids {
        wait_status(&uplink, id, "disconnected", |s| !s.connected).await;
    }
    for id in ids {
        send(&sender, id, 10..1010, Qos::AtLeastOnce).await;
    }
    wait_until_async("1000 events queued per device", || async {
        let stats = store.stats().await.unwrap();
        ids.iter()
            .all(|id| stats_of(&stats, id).is_some_and(|s| s.depth == 1000))
    })
    .await;
    // The second process view agrees while the gateway runs.
    let stats = read_stats(&tmp.path().join("data")).await.unwrap();
    assert!(stats
        .iter()
        .all(|s| s.depth == 1000 && s.oldest_enqueued_at.is_some()));

    broker.restart();
    subscriber.wait_subscribed(2).await;
    subscriber
        .wait_for("every event", |m| {
            ids.iter().all(|id| {
                seqs_of(m, id)
                    .iter()
                    .collect::<std::collections::HashSet<_>>()
                    .len()
                    == 1010
            })
        })
        .await;
    let messages = subscriber.messages();
    for id in ids {
        let duplicates = check_complete_and_ordered(id, &seqs_of(&messages, id), 0..1010);
        assert!(
            duplicates <= 100,
            "{id}: {duplicates} duplicates exceed the window"
        );
    }
    wait_until_async("the queue drained", || async {
        store.stats().await.unwrap().iter().all(|s| s.depth == 0)
    })
    .await;
    for id in ids {
        let status = uplink.status(id).unwrap().borrow().clone();
        assert!(status.connections >= 2, "{id}: {status:?}");
        assert!(
            status.session_present,
            "persistent broker keeps the session: {status:?}"
        );
    }
    uplink.shutdown().await;
}

/// With the default reconnect delays, sessions come back within seconds of the broker's
/// return after an outage long enough that a doubling backoff would wait far longer
/// (its attempts 7.5 and 15.5 s after the loss).
async fn sessions_are_back_within_seconds_of_the_end_of_an_outage(kind: BrokerKind) {
    const OUTAGE: Duration = Duration::from_secs(8);
    let tmp = tempfile::tempdir().unwrap();
    let mut broker = TestBroker::start(kind, tmp.path(), BrokerConfig::default());
    let store = open_store(&tmp.path().join("data"), 1000, OnFull::DropOldest).await;
    let ids: Vec<String> = (0..6).map(|i| format!("pump-{i}")).collect();
    let devices = ids
        .iter()
        .map(|id| device_identity(id, "pump", None))
        .collect();
    let mut settings = uplink_settings(broker.url());
    let defaults = UplinkSettings::new(broker.url().parse().unwrap(), "myorg");
    settings.reconnect_min = defaults.reconnect_min;
    settings.reconnect_max = defaults.reconnect_max;
    let (uplink, _sender) = start(settings, &store, devices);
    for id in &ids {
        wait_status(&uplink, id, "connected", |s| s.connected).await;
    }
    broker.stop();
    for id in &ids {
        wait_status(&uplink, id, "disconnected", |s| !s.connected).await;
    }
    tokio::time::sleep(OUTAGE).await;
    broker.restart();
    let back = std::time::Instant::now();
    let mut waits = Vec::new();
    for id in &ids {
        wait_status(&uplink, id, "connected again", |s| s.connected).await;
        waits.push(back.elapsed());
    }
    // Attempts are at most 3 s apart; a doubling backoff would be 7 s late or more.
    let last = waits.last().copied().unwrap_or_default();
    assert!(
        last < Duration::from_secs(5),
        "sessions back {waits:?} after the broker"
    );
    uplink.shutdown().await;
}

async fn a_broker_that_lost_the_session_gets_unacknowledged_events_again(kind: BrokerKind) {
    let tmp = tempfile::tempdir().unwrap();
    let gateway = ("use-token-auth", "token-9");
    let reader = ("reader", "reader-pw");
    let mut broker = TestBroker::start(
        kind,
        tmp.path(),
        BrokerConfig {
            users: users(&[gateway, reader]),
            ..BrokerConfig::default()
        },
    );
    let mut subscriber = Subscriber::start(SubscriberConfig {
        port: broker.port,
        client_id: "reader-4",
        filter: "iot-2/#",
        persistent: false,
        credentials: Some(reader),
    })
    .await;
    let store = open_store(&tmp.path().join("data"), 10_000, OnFull::DropOldest).await;
    let (uplink, sender) = start(
        uplink_settings(broker.url()),
        &store,
        vec![device_identity("valve-1", "valve", Some(gateway.1))],
    );
    send(&sender, "valve-1", 0..5, Qos::AtLeastOnce).await;
    subscriber.wait_for("5 events", |m| m.len() >= 5).await;
    wait_status(&uplink, "valve-1", "5 acknowledgements", |s| {
        s.acknowledged == 5
    })
    .await;

    // A frozen broker receives publishes but acknowledges none.
    broker.pause();
    send(&sender, "valve-1", 5..55, Qos::AtLeastOnce).await;
    wait_status(&uplink, "valve-1", "50 events in flight", |s| {
        s.in_flight == 50
    })
    .await;
    assert_eq!(uplink.status("valve-1").unwrap().borrow().acknowledged, 5);

    // It dies and comes back without any memory of the session. The gateway is kept
    // out until the subscriber is back, then let in.
    broker.kill();
    broker.set_users(&[reader]);
    broker.restart();
    subscriber.wait_subscribed(2).await;
    broker.set_users(&[gateway, reader]);

    wait_status(&uplink, "valve-1", "a new session", |s| s.connections == 2).await;
    subscriber
        .wait_for("the 50 unacknowledged events", |m| m.len() >= 55)
        .await;
    let seqs = seqs_of(&subscriber.messages(), "valve-1");
    check_complete_and_ordered("valve-1", &seqs, 0..55);
    let status = uplink.status("valve-1").unwrap().borrow().clone();
    assert!(!status.session_present, "{status:?}");
    wait_status(&uplink, "valve-1", "all acknowledged", |s| {
        s.acknowledged == 55
    })
    .await;
    uplink.shutdown().await;
}

async fn queue_full(kind: BrokerKind, on_full: OnFull) -> (Vec<u64>, Vec<u64>, Vec<DeviceStats>) {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("data");
    let (mut broker, mut subscriber) =
        persistent_broker_and_reader(kind, tmp.path(), "full-reader").await;
    broker.stop();

    let store = open_store(&data_dir, 100, on_full).await;
    let devices = vec![
        device_identity("dev-a", "meter", None),
        device_identity("dev-b", "meter", None),
    ];
    let (uplink, sender) = start(uplink_settings(broker.url()), &store, devices);
    send(&sender, "dev-a", 0..150, Qos::AtLeastOnce).await;
    send(&sender, "dev-b", 0..20, Qos::AtLeastOnce).await;
    send(&sender, "dev-b", 100..105, Qos::AtMostOnce).await;
    store.flush().await.unwrap();
    wait_until_async("all 170 events handled", || async {
        let stats = store.stats().await.unwrap();
        stats
            .iter()
            .map(|s| s.depth + s.dropped_queue_full)
            .sum::<u64>()
            == 170
    })
    .await;
    let total: u64 = store.stats().await.unwrap().iter().map(|s| s.depth).sum();
    assert_eq!(total, 100, "the queue holds max_messages");

    broker.restart();
    subscriber.wait_subscribed(2).await;
    wait_until_async("the queue drained", || async {
        store.stats().await.unwrap().iter().all(|s| s.depth == 0)
    })
    .await;
    subscriber.wait_for("100 events", |m| m.len() >= 100).await;
    uplink.shutdown().await;
    let messages = subscriber.messages();
    let stats = read_stats(&data_dir).await.unwrap();
    (
        seqs_of(&messages, "dev-a"),
        seqs_of(&messages, "dev-b"),
        stats,
    )
}

async fn a_full_queue_drops_the_oldest_events_and_counts_them(kind: BrokerKind) {
    let (a, b, stats) = queue_full(kind, OnFull::DropOldest).await;
    // 170 events for 100 places: the 70 oldest, all of dev-a, were dropped.
    check_complete_and_ordered("dev-a", &a, 70..150);
    check_complete_and_ordered("dev-b", &b, 0..20);
    let (sa, sb) = (
        stats_of(&stats, "dev-a").unwrap(),
        stats_of(&stats, "dev-b").unwrap(),
    );
    assert_eq!((sa.depth, sa.dropped_queue_full), (0, 70));
    assert_eq!((sb.depth, sb.dropped_queue_full), (0, 0));
    // QoS 0 events sent while offline were never stored, only counted.
    assert_eq!(sb.dropped_offline_qos0, 5);
}

async fn a_full_queue_drops_new_events_with_drop_newest(kind: BrokerKind) {
    let (a, b, stats) = queue_full(kind, OnFull::DropNewest).await;
    check_complete_and_ordered("dev-a", &a, 0..100);
    assert!(
        b.is_empty(),
        "dev-b's events came after the queue was full: {b:?}"
    );
    let (sa, sb) = (
        stats_of(&stats, "dev-a").unwrap(),
        stats_of(&stats, "dev-b").unwrap(),
    );
    assert_eq!(sa.dropped_queue_full, 50);
    assert_eq!(sb.dropped_queue_full, 20);
    assert_eq!(sb.dropped_offline_qos0, 5);
}

/// A 3.1.1 session with nothing to send pings the broker within its keepalive, so the
/// broker keeps it, and an event sent afterwards goes out on the same connection.
/// (fieldbridge-broker drops a client silent for 1.5 keepalives; Mosquitto checks less
/// often and may not notice within the test.)
async fn an_idle_session_keeps_its_connection_with_pings(kind: BrokerKind) {
    idle(kind, Protocol::V311).await;
}

/// A keepalive under rumqttc's MQTT 5 minimum of 5 s works as well.
async fn an_idle_mqtt5_session_keeps_its_connection_with_pings(kind: BrokerKind) {
    idle(kind, Protocol::V5).await;
}

async fn idle(kind: BrokerKind, protocol: Protocol) {
    let tmp = tempfile::tempdir().unwrap();
    let broker = TestBroker::start(kind, tmp.path(), BrokerConfig::default());
    let subscriber = Subscriber::start(SubscriberConfig {
        port: broker.port,
        client_id: "idle-reader",
        filter: "iot-2/#",
        persistent: false,
        credentials: None,
    })
    .await;
    let store = open_store(&tmp.path().join("data"), 1000, OnFull::DropOldest).await;
    let mut settings = uplink_settings(broker.url());
    settings.keepalive = Duration::from_secs(1);
    settings.protocol = protocol;
    let (uplink, sender) = start(
        settings,
        &store,
        vec![device_identity("idle-1", "pump", None)],
    );
    wait_status(&uplink, "idle-1", "connected", |s| s.connected).await;
    tokio::time::sleep(Duration::from_millis(3500)).await;
    send(&sender, "idle-1", 0..1, Qos::AtLeastOnce).await;
    subscriber.wait_for("the event", |m| !m.is_empty()).await;
    let status = uplink.status("idle-1").unwrap().borrow().clone();
    assert_eq!(
        (status.connected, status.connections),
        (true, 1),
        "one connection all along: {status:?}"
    );
    uplink.shutdown().await;
}

/// A broker that acknowledges a window backwards: the packet id rumqttc picks next is
/// still in flight, so that publish and every one after it wait for its acknowledgement,
/// then go out in order, each PUBACK deleting the row it names.
async fn acknowledgements_out_of_order_keep_every_event_in_its_place(protocol: Protocol) {
    let tmp = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let store = open_store(&tmp.path().join("data"), 1000, OnFull::DropOldest).await;
    let mut settings = uplink_settings(format!("mqtt://127.0.0.1:{port}"));
    settings.inflight = 4;
    settings.protocol = protocol;
    let (uplink, sender) = start(
        settings,
        &store,
        vec![device_identity("pump-1", "pump", None)],
    );
    send(&sender, "pump-1", 0..12, Qos::AtLeastOnce).await;

    let mut broker = ScriptedBroker::connected(&listener, wire_version(protocol)).await;
    let mut window = Vec::new();
    for _ in 0..4 {
        let publish = broker.publish().await;
        window.push((publish.pkid, parse(&publish.payload).1));
    }
    assert_eq!(window, [(1, 0), (2, 1), (3, 2), (4, 3)]);
    // Backwards: 4, 3 and 2 free slots, but the next packet id is 1, still in flight.
    for pkid in [4, 3, 2] {
        broker.puback(pkid, ReasonCode::Success).await;
    }
    assert_eq!(
        broker.next_within(Duration::from_millis(500)).await,
        None,
        "nothing goes out while packet id 1 is in flight"
    );
    broker.puback(1, ReasonCode::Success).await;
    let mut seqs = Vec::new();
    while seqs.len() < 8 {
        let publish = broker.publish().await;
        seqs.push(parse(&publish.payload).1);
        broker.puback(publish.pkid, ReasonCode::Success).await;
    }
    assert_eq!(
        seqs,
        (4..12).collect::<Vec<_>>(),
        "the rest, in order, once each"
    );
    wait_until_async("every row deleted", || async {
        depth(&store, "pump-1").await == 0
    })
    .await;
    uplink.shutdown().await;
}

fn wire_version(protocol: Protocol) -> ProtocolVersion {
    match protocol {
        Protocol::V311 => ProtocolVersion::V311,
        Protocol::V5 => ProtocolVersion::V5,
    }
}

/// A broker that takes the connection and the CONNECT but never answers: the attempt is
/// given up after `connect_timeout` and made again, and the events go once a broker
/// answers.
async fn a_broker_that_never_answers_the_connect_is_tried_again(protocol: Protocol) {
    let tmp = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let store = open_store(&tmp.path().join("data"), 1000, OnFull::DropOldest).await;
    let mut settings = uplink_settings(format!("mqtt://127.0.0.1:{port}"));
    settings.protocol = protocol;
    settings.connect_timeout = Duration::from_secs(1);
    let (uplink, sender) = start(
        settings,
        &store,
        vec![device_identity("pump-1", "pump", None)],
    );
    send(&sender, "pump-1", 0..3, Qos::AtLeastOnce).await;

    let mut silent = ScriptedBroker::accept(&listener, wire_version(protocol)).await;
    silent.connect().await;
    wait_status(&uplink, "pump-1", "the attempt given up", |s| {
        s.last_error.is_some()
    })
    .await;
    let status = uplink.status("pump-1").unwrap().borrow().clone();
    assert_eq!(status.connections, 0, "{status:?}");

    // The next attempt, to a broker that answers.
    let mut broker = ScriptedBroker::connected(&listener, wire_version(protocol)).await;
    let mut seqs = Vec::new();
    while seqs.len() < 3 {
        let publish = broker.publish().await;
        seqs.push(parse(&publish.payload).1);
        broker.puback(publish.pkid, ReasonCode::Success).await;
    }
    assert_eq!(seqs, [0, 1, 2]);
    drop(silent);
    uplink.shutdown().await;
}

fn main() -> std::process::ExitCode {
    let mut suite = Suite::new();
    broker_tests!(suite;
        events_of_several_devices_reach_a_subscriber_with_their_identities,
        custom_templates_name_client_ids_users_and_topics,
        events_queued_during_a_broker_outage_all_arrive_in_order,
        events_queued_during_an_outage_all_arrive_over_mqtt5,
        sessions_are_back_within_seconds_of_the_end_of_an_outage,
        a_broker_that_lost_the_session_gets_unacknowledged_events_again,
        a_full_queue_drops_the_oldest_events_and_counts_them,
        a_full_queue_drops_new_events_with_drop_newest,
        an_idle_session_keeps_its_connection_with_pings,
        an_idle_mqtt5_session_keeps_its_connection_with_pings,
    );
    for (version, protocol) in [("mqtt311", Protocol::V311), ("mqtt5", Protocol::V5)] {
        suite.async_test(
            &format!(
                "wire::{version}::acknowledgements_out_of_order_keep_every_event_in_its_place"
            ),
            &[],
            move || acknowledgements_out_of_order_keep_every_event_in_its_place(protocol),
        );
        suite.async_test(
            &format!("wire::{version}::a_broker_that_never_answers_the_connect_is_tried_again"),
            &[],
            move || a_broker_that_never_answers_the_connect_is_tried_again(protocol),
        );
    }
    suite.run()
}
