//! Retained messages, `$` topics and `$SYS`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fieldbridge_mqtt::codec::{Publish, QoS};

use crate::support::{config, payload, publish, start, wait_until, Client, DEADLINE};

fn retained(topic: &str, body: &str, qos: QoS, pkid: u16) -> Publish {
    Publish {
        retain: true,
        ..publish(topic, body, qos, pkid)
    }
}

#[tokio::test]
async fn retained_set_replace_clear() {
    let broker = start(config()).await;
    let addr = broker.local_addr();
    let (mut publisher, _) = Client::connect(addr, "pub", true).await;
    publisher
        .publish(retained("r/x", "v1", QoS::AtLeastOnce, 1))
        .await;
    publisher
        .publish(retained("r/x", "v2", QoS::AtLeastOnce, 2))
        .await;

    let (mut late, _) = Client::connect(addr, "late", true).await;
    late.subscribe(&[("r/x", QoS::AtLeastOnce)]).await;
    let got = late.recv_publish().await;
    assert_eq!(
        (payload(&got), got.retain, got.qos),
        ("v2".into(), true, QoS::AtLeastOnce),
        "only the latest, flagged retained"
    );
    late.ack(&got).await;

    // Live delivery of a retained publish to an existing subscriber: RETAIN is 0.
    publisher
        .publish(retained("r/x", "v3", QoS::AtMostOnce, 0))
        .await;
    let live = late.recv_publish().await;
    assert_eq!((payload(&live), live.retain), ("v3".into(), false));

    // An empty retained payload clears (and is delivered as a normal message).
    publisher
        .publish(retained("r/x", "", QoS::AtMostOnce, 0))
        .await;
    assert_eq!(payload(&late.recv_publish().await), "");
    wait_until("the retained message is cleared", || {
        broker.stats().retained_messages == 0
    })
    .await;

    let (mut later, _) = Client::connect(addr, "later", true).await;
    later.subscribe(&[("r/x", QoS::AtMostOnce)]).await;
    publisher
        .publish(publish("r/x", "marker", QoS::AtMostOnce, 0))
        .await;
    assert_eq!(
        payload(&later.recv_publish().await),
        "marker",
        "no retained message after clearing"
    );
}

#[tokio::test]
async fn retained_messages_reach_wildcard_subscriptions() {
    let broker = start(config()).await;
    let addr = broker.local_addr();
    let (mut publisher, _) = Client::connect(addr, "pub", true).await;
    for topic in ["a/b", "a/c/d", "b/x", "a"] {
        publisher
            .publish(retained(topic, topic, QoS::AtLeastOnce, 1))
            .await;
    }
    let (mut sub, _) = Client::connect(addr, "sub", true).await;
    sub.subscribe(&[("a/#", QoS::AtMostOnce)]).await;
    let mut topics = Vec::new();
    for _ in 0..3 {
        let got = sub.recv_publish().await;
        assert!(got.retain);
        assert_eq!(got.qos, QoS::AtMostOnce, "min(retained QoS 1, granted 0)");
        topics.push(got.topic.to_string());
    }
    topics.sort();
    assert_eq!(topics, ["a", "a/b", "a/c/d"]);

    sub.subscribe(&[("+/x", QoS::AtLeastOnce)]).await;
    let got = sub.recv_publish().await;
    assert_eq!((got.topic.to_string(), got.retain), ("b/x".into(), true));
}

#[tokio::test]
async fn dollar_topics_are_not_matched_by_leading_wildcards() {
    let broker = start(config()).await;
    let addr = broker.local_addr();
    let (mut everything, _) = Client::connect(addr, "all", true).await;
    everything
        .subscribe(&[("#", QoS::AtMostOnce), ("+/status", QoS::AtMostOnce)])
        .await;
    let (mut dollar, _) = Client::connect(addr, "dollar", true).await;
    dollar.subscribe(&[("$app/#", QoS::AtMostOnce)]).await;
    let (mut publisher, _) = Client::connect(addr, "pub", true).await;
    publisher
        .publish(publish("$app/status", "hidden", QoS::AtMostOnce, 0))
        .await;
    publisher
        .publish(publish("app/status", "visible", QoS::AtMostOnce, 0))
        .await;
    assert_eq!(payload(&dollar.recv_publish().await), "hidden");
    let first = everything.recv_publish().await;
    assert_eq!(
        payload(&first),
        "visible",
        "neither # nor +/status matched $app/status"
    );
}

#[tokio::test]
async fn sys_topics_report_the_broker() {
    let mut cfg = config();
    cfg.sys_interval = Duration::from_secs(1);
    let broker = start(cfg).await;
    let addr = broker.local_addr();
    let (mut publisher, _) = Client::connect(addr, "pub", true).await;
    for pkid in 1..=3 {
        publisher
            .publish(publish("count/me", "x", QoS::AtLeastOnce, pkid))
            .await;
    }
    let (mut sys, _) = Client::connect(addr, "sys", true).await;
    sys.subscribe(&[("$SYS/broker/#", QoS::AtMostOnce)]).await;
    let mut values = HashMap::new();
    let wanted = [
        "version",
        "uptime",
        "clients/connected",
        "clients/total",
        "messages/received",
        "messages/sent",
        "bytes/received",
        "bytes/sent",
        "subscriptions/count",
        "retained messages/count",
    ];
    // The retained values may come from an update made before this client connected or
    // subscribed: read on until an update counts both (one comes every second; a
    // broker that never counts them fails on the receive deadline).
    let at_least = |values: &HashMap<String, String>, key: &str, least: u64| {
        values
            .get(key)
            .and_then(|value| value.parse::<u64>().ok())
            .is_some_and(|value| value >= least)
    };
    while !wanted.iter().all(|key| values.contains_key(*key))
        || values.get("clients/connected").map(String::as_str) != Some("2")
        || !at_least(&values, "subscriptions/count", 1)
        || !at_least(&values, "messages/received", 3)
    {
        let got = sys.recv_publish().await;
        let key = got
            .topic
            .strip_prefix("$SYS/broker/")
            .expect("a $SYS topic")
            .to_owned();
        values.insert(key, payload(&got));
    }
    assert!(
        values["version"].starts_with("fieldbridge-broker "),
        "{values:?}"
    );
    assert!(values["uptime"].ends_with(" seconds"), "{values:?}");
    let number = |key: &str| {
        values[key]
            .parse::<u64>()
            .unwrap_or_else(|_| panic!("{key} is a number: {values:?}"))
    };
    assert_eq!(number("clients/connected"), 2);
    assert!(number("messages/received") >= 3, "{values:?}");
    assert!(number("bytes/received") > 0);
    assert!(number("subscriptions/count") >= 1);
    number("messages/sent");
    number("bytes/sent");
    number("retained messages/count");

    // `#` does not see $SYS; the next update shows the new subscriber.
    let (mut all, _) = Client::connect(addr, "all", true).await;
    all.subscribe(&[("#", QoS::AtMostOnce)]).await;
    publisher
        .publish(publish("plain", "marker", QoS::AtMostOnce, 0))
        .await;
    assert_eq!(all.recv_publish().await.topic, "plain");
    loop {
        let got = sys.recv_publish().await;
        if got.topic == "$SYS/broker/clients/connected" && payload(&got) == "3" {
            break;
        }
    }
}

#[tokio::test]
async fn retained_messages_are_limited_in_bytes() {
    let mut cfg = config();
    // Topic and payload: "big/n" and 40 bytes make 45; two fit.
    cfg.limits.max_retained_bytes = 100;
    let broker = start(cfg).await;
    let addr = broker.local_addr();
    let (mut live, _) = Client::connect(addr, "live", true).await;
    live.subscribe(&[("big/#", QoS::AtMostOnce)]).await;
    let (mut publisher, _) = Client::connect(addr, "pub", true).await;
    let body = "y".repeat(40);
    for (pkid, topic) in (1..).zip(["big/1", "big/2", "big/3"]) {
        publisher
            .publish(retained(topic, &body, QoS::AtLeastOnce, pkid))
            .await;
    }
    for topic in ["big/1", "big/2", "big/3"] {
        let got = live.recv_publish().await;
        assert_eq!(
            (got.topic.to_string(), got.retain),
            (topic.into(), false),
            "current subscribers get every message"
        );
    }
    assert_eq!(broker.stats().retained_messages, 2);
    assert_eq!(broker.stats().retained_refused, 1);

    let retained_topics = || async {
        let (mut late, _) = Client::connect(addr, "late", true).await;
        late.subscribe(&[("big/#", QoS::AtMostOnce)]).await;
        let (mut marker, _) = Client::connect(addr, "marker", true).await;
        marker
            .publish(publish("big/marker", "end", QoS::AtMostOnce, 0))
            .await;
        let mut topics = Vec::new();
        loop {
            let got = late.recv_publish().await;
            if got.topic == "big/marker" {
                return topics;
            }
            assert!(got.retain);
            topics.push(got.topic.to_string());
        }
    };
    let mut topics = retained_topics().await;
    topics.sort();
    assert_eq!(topics, ["big/1", "big/2"], "the third was not stored");

    // Clearing one frees its bytes for another.
    publisher
        .publish(retained("big/1", "", QoS::AtLeastOnce, 4))
        .await;
    publisher
        .publish(retained("big/3", &body, QoS::AtLeastOnce, 5))
        .await;
    assert_eq!(broker.stats().retained_messages, 2);
    assert_eq!(broker.stats().retained_refused, 1);
    let mut topics = retained_topics().await;
    topics.sort();
    assert_eq!(topics, ["big/2", "big/3"]);
}

/// Reading the broker's figures (the watchdog does before every feed, `$SYS` and the
/// metrics endpoint too) while retained messages are stored never blocks: `stats` once
/// held the retained store's read lock while taking it again, and a writer queued in
/// between blocked both for good. The broker runs on a runtime of its own thread, so
/// that a deadlock fails the test instead of hanging it.
#[test]
fn figures_are_read_while_retained_messages_are_stored() {
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let _ = done.send(runtime.block_on(store_retained_while_reading_figures()));
    });
    let retained = finished
        .recv_timeout(DEADLINE)
        .expect("storing retained messages or reading the figures blocked");
    assert_eq!(retained, 50);
}

/// Stores 2,000 retained messages on 50 topics while another thread reads the figures;
/// returns the retained messages counted at the end.
async fn store_retained_while_reading_figures() -> u64 {
    let broker = start(config()).await;
    let stats = broker.stats_handle();
    let stop = Arc::new(AtomicBool::new(false));
    let reading = stop.clone();
    let reader = std::thread::spawn(move || {
        let mut reads = 0u64;
        while !reading.load(Ordering::Relaxed) {
            stats.get();
            reads += 1;
        }
        reads
    });
    let (mut publisher, _) = Client::connect(broker.local_addr(), "pub", true).await;
    for round in 0..2_000u16 {
        let topic = format!("r/{}", round % 50);
        // Acknowledged, so each is stored before the next.
        publisher
            .publish(retained(&topic, "v", QoS::AtLeastOnce, round % 1000 + 1))
            .await;
    }
    stop.store(true, Ordering::Relaxed);
    assert!(reader.join().unwrap() > 0);
    broker.stats().retained_messages
}
