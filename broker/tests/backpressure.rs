//! A connected subscriber's full queue holds QoS 1 and 2 publishers back instead of
//! dropping what the broker acknowledged: every acknowledged message arrives, in order per
//! publisher, none twice at QoS 2; publishers that subscribe to what they publish (their
//! own topics, or each other's) keep running; a subscriber that stops taking messages is
//! disconnected after `slow_subscriber_timeout` and its publishers move on.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use fieldbridge_broker::config::QueueFullPolicy;
use fieldbridge_broker::Config;
use fieldbridge_mqtt::codec::{Packet, PubAck, PubComp, PubRec, PubRel, Publish, QoS};
use support::{config, payload, publish, start, wait_until, Client, Silence, DEADLINE};
use tokio::time::timeout;

/// A small queue, so that it is full most of the time.
fn small_queues() -> Config {
    let mut cfg = config();
    cfg.limits.max_queued_messages = 8;
    cfg.limits.max_inflight = 4;
    cfg
}

/// Sends `count` publishes to `topic` in one go (identifiers 1..=count, payload
/// `<name>-<n>`), without waiting for any answer.
async fn flood(client: &mut Client, name: &str, topic: &str, qos: QoS, count: u16) {
    let packets = (1..=count)
        .map(|n| Packet::Publish(publish(topic, format!("{name}-{n}"), qos, n)))
        .collect();
    client.send_all(packets).await;
}

/// Reads until each of the client's `count` publishes is acknowledged (the QoS 2
/// exchange completed), acknowledging what it receives meanwhile; returns the payloads it
/// received, in order.
async fn finish(client: &mut Client, count: usize) -> Vec<String> {
    let mut acknowledged = 0;
    let mut received = Vec::new();
    while acknowledged < count {
        match client.recv().await {
            Packet::PubAck(_) | Packet::PubComp(_) => acknowledged += 1,
            Packet::PubRec(rec) => client.send(Packet::PubRel(PubRel::new(rec.pkid))).await,
            Packet::Publish(message) => {
                acknowledge(client, &message).await;
                received.push(payload(&message));
            }
            Packet::PubRel(rel) => client.send(Packet::PubComp(PubComp::new(rel.pkid))).await,
            other => panic!("unexpected {other:?}"),
        }
    }
    received
}

async fn acknowledge(client: &mut Client, message: &Publish) {
    match message.qos {
        QoS::AtMostOnce => {}
        QoS::AtLeastOnce => client.send(Packet::PubAck(PubAck::new(message.pkid))).await,
        QoS::ExactlyOnce => client.send(Packet::PubRec(PubRec::new(message.pkid))).await,
    }
}

/// Receives messages until `received` holds `count`, acknowledging them, as a slow
/// subscriber (a pause every few messages) and completing the QoS 2 exchanges.
async fn receive_slowly(
    client: &mut Client,
    mut received: Vec<String>,
    count: usize,
) -> Vec<String> {
    while received.len() < count {
        match client.recv().await {
            Packet::Publish(message) => {
                acknowledge(client, &message).await;
                received.push(payload(&message));
                if received.len() % 16 == 0 {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
            Packet::PubRel(rel) => client.send(Packet::PubComp(PubComp::new(rel.pkid))).await,
            other => panic!("unexpected {other:?}"),
        }
    }
    received
}

/// Completes the last QoS 2 exchanges; fails if a message comes twice.
async fn settle(client: &mut Client) {
    client.send(Packet::PingReq).await;
    loop {
        match client.recv().await {
            Packet::PubRel(rel) => client.send(Packet::PubComp(PubComp::new(rel.pkid))).await,
            Packet::PingResp => return,
            other => panic!("{other:?} after everything arrived"),
        }
    }
}

#[tokio::test]
async fn a_slow_subscriber_gets_every_acknowledged_message_in_order() {
    let broker = start(small_queues()).await;
    let addr = broker.local_addr();
    let (mut subscriber, _) = Client::connect(addr, "slow", true).await;
    subscriber.subscribe(&[("bp/#", QoS::ExactlyOnce)]).await;

    const PUBLISHERS: usize = 20;
    const EACH: u16 = 50;
    let mut publishers = Vec::new();
    for p in 0..PUBLISHERS {
        publishers.push(tokio::spawn(async move {
            let name = format!("p{p}");
            let (mut client, _) = Client::connect(addr, &name, true).await;
            let qos = if p % 2 == 0 {
                QoS::AtLeastOnce
            } else {
                QoS::ExactlyOnce
            };
            flood(&mut client, &name, &format!("bp/{name}"), qos, EACH).await;
            finish(&mut client, usize::from(EACH)).await;
        }));
    }
    let received = timeout(
        DEADLINE,
        receive_slowly(&mut subscriber, Vec::new(), PUBLISHERS * usize::from(EACH)),
    )
    .await
    .expect("every message arrives");
    settle(&mut subscriber).await;
    for publisher in publishers {
        timeout(DEADLINE, publisher)
            .await
            .expect("every publish is acknowledged")
            .expect("publisher task");
    }
    // Per publisher: all of them, in order, once.
    let mut by_publisher: HashMap<&str, Vec<u16>> = HashMap::new();
    for text in &received {
        let (name, n) = text.split_once('-').expect("name-n");
        by_publisher
            .entry(name)
            .or_default()
            .push(n.parse().expect("number"));
    }
    assert_eq!(by_publisher.len(), PUBLISHERS);
    for (name, numbers) in by_publisher {
        assert_eq!(numbers, (1..=EACH).collect::<Vec<_>>(), "{name}");
    }
    assert_eq!(broker.stats().messages_dropped, 0, "nothing dropped");
    assert_eq!(
        subscriber.try_recv(Duration::from_millis(100)).await,
        Err(Silence::TimedOut),
        "nothing twice"
    );
}

/// A client publishing to its own subscription, flat out, at QoS 1 and at QoS 2.
#[tokio::test]
async fn a_publisher_subscribed_to_itself_keeps_running() {
    let broker = start(small_queues()).await;
    let addr = broker.local_addr();
    for qos in [QoS::AtLeastOnce, QoS::ExactlyOnce] {
        let (mut client, _) = Client::connect(addr, "narcissus", true).await;
        client.subscribe(&[("self/#", qos)]).await;
        flood(&mut client, "me", "self/x", qos, 200).await;
        let received = timeout(DEADLINE, finish(&mut client, 200))
            .await
            .expect("no deadlock");
        let received = timeout(DEADLINE, receive_slowly(&mut client, received, 200))
            .await
            .expect("the rest of its own messages");
        settle(&mut client).await;
        let expected: Vec<String> = (1..=200).map(|n| format!("me-{n}")).collect();
        assert_eq!(received, expected, "{qos:?}");
        client.disconnect().await;
    }
    assert_eq!(broker.stats().messages_dropped, 0);
}

/// Two clients subscribed to each other's topics, both flat out.
#[tokio::test]
async fn two_clients_feeding_each_other_do_not_deadlock() {
    let broker = start(small_queues()).await;
    let addr = broker.local_addr();
    let subscribed = |me: &'static str| async move {
        let (mut client, _) = Client::connect(addr, me, true).await;
        client
            .subscribe(&[(&format!("to/{me}"), QoS::AtLeastOnce)])
            .await;
        client
    };
    let a = subscribed("a").await;
    let b = subscribed("b").await;
    let task = |mut client: Client, name: &'static str, to: &'static str| {
        tokio::spawn(async move {
            flood(
                &mut client,
                name,
                &format!("to/{to}"),
                QoS::AtLeastOnce,
                300,
            )
            .await;
            let received = finish(&mut client, 300).await;
            receive_slowly(&mut client, received, 300).await
        })
    };
    let joined = timeout(DEADLINE, async {
        tokio::join!(task(a, "a", "b"), task(b, "b", "a"))
    })
    .await
    .expect("no deadlock");
    let from_b = joined.0.expect("a's task");
    let from_a = joined.1.expect("b's task");
    assert_eq!(from_a.len(), 300);
    assert_eq!(from_b.len(), 300);
    assert_eq!(from_a.last().map(String::as_str), Some("a-300"));
    assert_eq!(from_b.last().map(String::as_str), Some("b-300"));
}

/// A subscriber that takes nothing more (it stops acknowledging) is disconnected after
/// `slow_subscriber_timeout`, counted, and the publisher it held back moves on.
#[tokio::test]
async fn a_stuck_subscriber_is_disconnected_and_its_publishers_resume() {
    let mut cfg = small_queues();
    cfg.limits.slow_subscriber_timeout = Duration::from_secs(1);
    let broker = start(cfg).await;
    let addr = broker.local_addr();
    let (mut stuck, _) = Client::connect(addr, "stuck", true).await;
    stuck.subscribe(&[("jam/#", QoS::AtLeastOnce)]).await;
    let (mut publisher, _) = Client::connect(addr, "pusher", true).await;
    flood(&mut publisher, "m", "jam/x", QoS::AtLeastOnce, 40).await;
    // The stuck client reads its first messages but acknowledges none.
    let first = stuck.recv_publish().await;
    assert_eq!(payload(&first), "m-1");
    timeout(DEADLINE, finish(&mut publisher, 40))
        .await
        .expect("the publisher is acknowledged once the stuck client is gone");
    wait_until("the stuck subscriber is counted", || {
        broker.stats().slow_subscribers == 1
    })
    .await;
    loop {
        match stuck.try_recv(DEADLINE).await {
            Ok(_) => continue,
            Err(Silence::Closed) => break,
            Err(Silence::TimedOut) => panic!("the stuck subscriber stayed connected"),
        }
    }
}

/// An absent persistent session under `drop_oldest` keeps the newest messages.
#[tokio::test]
async fn an_absent_session_under_drop_oldest_keeps_the_newest() {
    let mut cfg = config();
    cfg.limits.max_queued_messages = 3;
    cfg.limits.on_queue_full = QueueFullPolicy::DropOldest;
    let broker = start(cfg).await;
    let addr = broker.local_addr();
    let (mut away, _) = Client::connect(addr, "away", false).await;
    away.subscribe(&[("news", QoS::AtLeastOnce)]).await;
    away.disconnect().await;
    let (mut publisher, _) = Client::connect(addr, "press", true).await;
    for n in 1..=10u16 {
        publisher
            .publish(publish("news", format!("n{n}"), QoS::AtLeastOnce, n))
            .await;
    }
    assert_eq!(broker.stats().messages_dropped, 7);
    let (mut back, present) = Client::connect(addr, "away", false).await;
    assert!(present);
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(payload(&back.next_publish().await));
    }
    assert_eq!(got, ["n8", "n9", "n10"]);
}
