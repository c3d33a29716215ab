//! Topics and filters with many levels: deep ones are routed, retained, unsubscribed and
//! dropped without exhausting the stack of the broker's tasks, and `max_topic_levels`
//! refuses what goes beyond it.

use std::net::SocketAddr;

use fieldbridge_broker::Config;
use fieldbridge_mqtt::codec::{Packet, QoS, ReasonCode, SubscribeReturnCode};

use crate::support::{
    config, connect_packet, granted, payload, publish, start, wait_until, will, Client,
};

/// `levels` levels of `level`, separated by `/`.
fn levels(level: &str, levels: usize) -> String {
    vec![level; levels].join("/")
}

fn deep_config() -> Config {
    let mut config = config();
    config.limits.max_topic_levels = 100_000;
    config
}

/// The broker still accepts a client and routes its messages.
async fn still_serving(addr: SocketAddr) {
    let (mut client, _) = Client::connect(addr, "afterwards", true).await;
    assert_eq!(
        client.subscribe(&[("after/+", QoS::AtLeastOnce)]).await,
        [granted(QoS::AtLeastOnce)]
    );
    client
        .publish_to("after/x", b"still here", QoS::AtLeastOnce, false)
        .await;
    assert_eq!(payload(&client.next_publish().await), "still here");
    client.disconnect().await;
}

// Multi-threaded like the broker's own runtime: its worker threads have the default
// stack size, where a walk recursing once per level overflowed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_levels_are_routed_and_removed() {
    const LEVELS: usize = 10_000;
    let broker = start(deep_config()).await;
    let addr = broker.local_addr();
    let topic = levels("l", LEVELS);
    // `+` every other level, `#` as the last one.
    let wildcards: Vec<&str> = (0..LEVELS)
        .map(|i| match i {
            _ if i == LEVELS - 1 => "#",
            _ if i % 2 == 1 => "+",
            _ => "l",
        })
        .collect();
    let wildcards = wildcards.join("/");
    assert!(topic.len() > 19_000 && wildcards.len() > 19_000);

    let (mut exact, _) = Client::connect(addr, "exact", true).await;
    let (mut wild, _) = Client::connect(addr, "wild", true).await;
    assert_eq!(
        exact.subscribe(&[(&topic, QoS::AtLeastOnce)]).await,
        [granted(QoS::AtLeastOnce)]
    );
    assert_eq!(
        wild.subscribe(&[(&wildcards, QoS::AtLeastOnce)]).await,
        [granted(QoS::AtLeastOnce)]
    );

    let (mut publisher, _) = Client::connect(addr, "publisher", true).await;
    publisher
        .publish_to(&topic, b"deep", QoS::AtLeastOnce, false)
        .await;
    for subscriber in [&mut exact, &mut wild] {
        let got = subscriber.next_publish().await;
        assert_eq!(
            (&*got.topic, payload(&got)),
            (topic.as_str(), "deep".into())
        );
    }

    // Retained: stored, found by a deep wildcard subscription, cleared.
    publisher
        .publish_to(&topic, b"kept", QoS::AtLeastOnce, true)
        .await;
    for subscriber in [&mut exact, &mut wild] {
        assert_eq!(payload(&subscriber.next_publish().await), "kept");
    }
    let (mut late, _) = Client::connect(addr, "late", true).await;
    let all_plus = levels("+", LEVELS);
    assert_eq!(
        late.subscribe(&[(&all_plus, QoS::AtMostOnce)]).await,
        [granted(QoS::AtMostOnce)]
    );
    let retained = late.next_publish().await;
    assert_eq!((payload(&retained), retained.retain), ("kept".into(), true));
    publisher
        .publish_to(&topic, b"", QoS::AtLeastOnce, true)
        .await;
    assert_eq!(broker.stats().retained_messages, 0);

    // Removed by UNSUBSCRIBE, and by the end of a clean session.
    exact.unsubscribe(&[&topic]).await;
    late.unsubscribe(&[&all_plus]).await;
    exact.disconnect().await;
    late.disconnect().await;
    drop(wild);
    publisher.disconnect().await;
    wait_until("the deep subscriptions are gone", || {
        broker.stats().subscriptions == 0
    })
    .await;

    still_serving(addr).await;
}

#[tokio::test]
async fn max_topic_levels_refuses_deeper_topics_and_filters() {
    let broker = start(config()).await;
    let addr = broker.local_addr();
    let at_limit = levels("l", 128);
    let beyond = levels("l", 129);
    let wild_beyond = format!("{}/#", levels("+", 128));

    let (mut client, _) = Client::connect(addr, "deep", true).await;
    assert_eq!(
        client
            .subscribe(&[
                (&beyond, QoS::AtLeastOnce),
                (&at_limit, QoS::AtLeastOnce),
                (&wild_beyond, QoS::AtMostOnce),
                ("ok/#", QoS::AtMostOnce),
            ])
            .await,
        [
            SubscribeReturnCode::Failure(ReasonCode::UnspecifiedError),
            granted(QoS::AtLeastOnce),
            SubscribeReturnCode::Failure(ReasonCode::UnspecifiedError),
            granted(QoS::AtMostOnce)
        ]
    );
    // A filter it could not subscribe to matches nothing.
    client.unsubscribe(&[&beyond]).await;
    client
        .publish_to(&at_limit, b"at the limit", QoS::AtLeastOnce, false)
        .await;
    assert_eq!(payload(&client.next_publish().await), "at the limit");
    assert_eq!(broker.stats().subscriptions, 2);

    // A PUBLISH beyond the limit closes the connection, unacknowledged.
    client
        .send(Packet::Publish(publish(
            &beyond,
            "too deep",
            QoS::AtLeastOnce,
            7,
        )))
        .await;
    assert_eq!(client.expect_closed().await, vec![]);

    // A will beyond the limit is refused at CONNECT.
    let mut connect = connect_packet("deep-will", true);
    connect.will = Some(will(&beyond, "gone", QoS::AtMostOnce, false));
    let mut refused = Client::tcp(addr).await;
    refused.send(Packet::Connect(Box::new(connect))).await;
    assert_eq!(refused.expect_closed().await, vec![]);
    let mut connect = connect_packet("will-at-limit", true);
    connect.will = Some(will(&at_limit, "gone", QoS::AtMostOnce, false));
    let (accepted, connack) = Client::connect_with(addr, connect).await;
    assert_eq!(connack.code, ReasonCode::Success);
    accepted.disconnect().await;

    still_serving(addr).await;
}
