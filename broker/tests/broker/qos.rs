//! QoS 0, 1 and 2 in both directions, exactly-once, redelivery.

use std::time::Duration;

use fieldbridge_mqtt::codec::{
    Packet, PubAck, PubComp, PubRec, PubRel, Publish, QoS, SubscribeReturnCode,
};
use rumqttc::{AsyncClient, Event, Incoming, MqttOptions};

use crate::support::{config, payload, publish, start, Client, DEADLINE};

#[tokio::test]
async fn every_qos_in_both_directions() {
    let broker = start(config()).await;
    let addr = broker.local_addr();
    let (mut sub, _) = Client::connect(addr, "sub", true).await;
    assert_eq!(
        sub.subscribe(&[("t/#", QoS::ExactlyOnce)]).await,
        vec![SubscribeReturnCode::Success(QoS::ExactlyOnce)]
    );
    let (mut publisher, _) = Client::connect(addr, "pub", true).await;
    for (index, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
        .into_iter()
        .enumerate()
    {
        let pkid = if qos == QoS::AtMostOnce {
            0
        } else {
            10 + index as u16
        };
        publisher
            .publish(publish("t/x", format!("m{index}"), qos, pkid))
            .await;
        let received = sub.recv_publish().await;
        assert_eq!(
            (
                received.qos,
                payload(&received),
                received.retain,
                received.dup
            ),
            (qos, format!("m{index}"), false, false)
        );
        if qos != QoS::AtMostOnce {
            assert_ne!(received.pkid, 0);
        }
        sub.ack(&received).await;
    }
    assert_eq!(broker.stats().messages_received, 3);
}

#[tokio::test]
async fn delivery_qos_is_the_lower_of_published_and_granted() {
    let broker = start(config()).await;
    let addr = broker.local_addr();
    let (mut sub0, _) = Client::connect(addr, "sub0", true).await;
    let (mut sub1, _) = Client::connect(addr, "sub1", true).await;
    sub0.subscribe(&[("m", QoS::AtMostOnce)]).await;
    sub1.subscribe(&[("m", QoS::AtLeastOnce)]).await;
    let (mut publisher, _) = Client::connect(addr, "pub", true).await;
    publisher
        .publish(publish("m", "two", QoS::ExactlyOnce, 1))
        .await;
    assert_eq!(sub0.recv_publish().await.qos, QoS::AtMostOnce);
    let at_one = sub1.recv_publish().await;
    assert_eq!(at_one.qos, QoS::AtLeastOnce);
    sub1.ack(&at_one).await;
    publisher
        .publish(publish("m", "zero", QoS::AtMostOnce, 0))
        .await;
    assert_eq!(
        sub1.recv_publish().await.qos,
        QoS::AtMostOnce,
        "never upgraded"
    );
}

#[tokio::test]
async fn overlapping_subscriptions_deliver_once_at_the_highest_qos() {
    let broker = start(config()).await;
    let addr = broker.local_addr();
    let (mut sub, _) = Client::connect(addr, "sub", true).await;
    let codes = sub
        .subscribe(&[
            ("a/+", QoS::AtMostOnce),
            ("a/#", QoS::ExactlyOnce),
            ("a/b", QoS::AtLeastOnce),
        ])
        .await;
    assert_eq!(codes.len(), 3);
    let (mut publisher, _) = Client::connect(addr, "pub", true).await;
    publisher
        .publish(publish("a/b", "once", QoS::ExactlyOnce, 1))
        .await;
    publisher
        .publish(publish("a/b", "marker", QoS::AtMostOnce, 0))
        .await;
    let first = sub.recv_publish().await;
    assert_eq!(
        (payload(&first), first.qos),
        ("once".into(), QoS::ExactlyOnce)
    );
    sub.ack(&first).await;
    let next = sub.recv_publish().await;
    assert_eq!(
        payload(&next),
        "marker",
        "no second copy of the first message"
    );
}

#[tokio::test]
async fn qos2_duplicate_before_pubrel_is_delivered_once() {
    let broker = start(config()).await;
    let addr = broker.local_addr();
    let (mut sub, _) = Client::connect(addr, "sub", true).await;
    sub.subscribe(&[("x", QoS::ExactlyOnce)]).await;
    let (mut publisher, _) = Client::connect(addr, "pub", true).await;
    let original = publish("x", "exactly", QoS::ExactlyOnce, 7);
    publisher.send(Packet::Publish(original.clone())).await;
    assert_eq!(publisher.recv().await, Packet::PubRec(PubRec::new(7)));
    publisher
        .send(Packet::Publish(Publish {
            dup: true,
            ..original
        }))
        .await;
    assert_eq!(
        publisher.recv().await,
        Packet::PubRec(PubRec::new(7)),
        "the duplicate is acknowledged too"
    );
    publisher.send(Packet::PubRel(PubRel::new(7))).await;
    assert_eq!(publisher.recv().await, Packet::PubComp(PubComp::new(7)));
    publisher.send(Packet::PubRel(PubRel::new(7))).await;
    assert_eq!(
        publisher.recv().await,
        Packet::PubComp(PubComp::new(7)),
        "a repeated PUBREL is answered"
    );
    publisher
        .publish(publish("x", "marker", QoS::AtMostOnce, 0))
        .await;

    let first = sub.recv_publish().await;
    assert_eq!(payload(&first), "exactly");
    sub.ack(&first).await;
    assert_eq!(
        payload(&sub.recv_publish().await),
        "marker",
        "delivered exactly once"
    );
    // After PUBREL the identifier is free: a new message with it is a new message.
    publisher
        .publish(publish("x", "again", QoS::ExactlyOnce, 7))
        .await;
    assert_eq!(payload(&sub.recv_publish().await), "again");
}

#[tokio::test]
async fn unacknowledged_messages_are_resent_with_dup_in_order_on_reconnect() {
    let broker = start(config()).await;
    let addr = broker.local_addr();
    let (mut sub, present) = Client::connect(addr, "keeper", false).await;
    assert!(!present);
    sub.subscribe(&[("r/#", QoS::ExactlyOnce)]).await;
    let (mut publisher, _) = Client::connect(addr, "pub", true).await;
    let sent = [
        ("r/1", QoS::AtLeastOnce),
        ("r/2", QoS::ExactlyOnce),
        ("r/3", QoS::AtLeastOnce),
    ];
    for (pkid, (topic, qos)) in sent.iter().enumerate() {
        publisher
            .publish(publish(topic, topic, *qos, pkid as u16 + 1))
            .await;
    }
    let mut first_time = Vec::new();
    for _ in 0..sent.len() {
        first_time.push(sub.recv_publish().await);
    }
    drop(sub); // no acknowledgement, no DISCONNECT

    let (mut sub, present) = Client::connect(addr, "keeper", false).await;
    assert!(present, "the session was kept");
    for original in &first_time {
        let again = sub.recv_publish().await;
        assert!(again.dup, "resent with DUP");
        assert_eq!(
            (again.pkid, &again.topic, again.qos),
            (original.pkid, &original.topic, original.qos),
            "same id, same order"
        );
    }
    for original in &first_time {
        match original.qos {
            QoS::AtLeastOnce => sub.send(Packet::PubAck(PubAck::new(original.pkid))).await,
            _ => {
                sub.send(Packet::PubRec(PubRec::new(original.pkid))).await;
                sub.expect_pubrel(original.pkid).await;
                sub.send(Packet::PubComp(PubComp::new(original.pkid))).await;
            }
        }
    }
    publisher
        .publish(publish("r/4", "after", QoS::AtLeastOnce, 9))
        .await;
    let next = sub.recv_publish().await;
    assert_eq!(
        (payload(&next), next.dup),
        ("after".into(), false),
        "nothing resent once acknowledged"
    );
}

#[tokio::test]
async fn owed_pubrel_is_resent_on_reconnect() {
    let broker = start(config()).await;
    let addr = broker.local_addr();
    let (mut sub, _) = Client::connect(addr, "rel", false).await;
    sub.subscribe(&[("q2", QoS::ExactlyOnce)]).await;
    let (mut publisher, _) = Client::connect(addr, "pub", true).await;
    publisher
        .publish(publish("q2", "body", QoS::ExactlyOnce, 3))
        .await;
    let received = sub.recv_publish().await;
    sub.send(Packet::PubRec(PubRec::new(received.pkid))).await;
    assert_eq!(sub.recv().await, Packet::PubRel(PubRel::new(received.pkid)));
    drop(sub); // PUBCOMP never sent

    let (mut sub, present) = Client::connect(addr, "rel", false).await;
    assert!(present);
    assert_eq!(
        sub.recv().await,
        Packet::PubRel(PubRel::new(received.pkid)),
        "PUBREL, not the message again"
    );
    sub.send(Packet::PubComp(PubComp::new(received.pkid))).await;
    publisher
        .publish(publish("q2", "next", QoS::ExactlyOnce, 4))
        .await;
    assert_eq!(payload(&sub.recv_publish().await), "next");
}

#[tokio::test]
async fn inflight_window_holds_back_the_rest_until_acknowledged() {
    let mut cfg = config();
    cfg.limits.max_inflight = 2;
    let broker = start(cfg).await;
    let addr = broker.local_addr();
    let (mut sub, _) = Client::connect(addr, "slow", true).await;
    sub.subscribe(&[("w", QoS::AtLeastOnce)]).await;
    let (mut publisher, _) = Client::connect(addr, "pub", true).await;
    for pkid in 1..=3 {
        publisher
            .publish(publish("w", pkid.to_string(), QoS::AtLeastOnce, pkid))
            .await;
    }
    let first = sub.recv_publish().await;
    let second = sub.recv_publish().await;
    assert_eq!(
        sub.try_recv(Duration::from_millis(300)).await.err(),
        Some(crate::support::Silence::TimedOut)
    );
    sub.ack(&first).await;
    assert_eq!(payload(&sub.recv_publish().await), "3");
    sub.ack(&second).await;
}

/// rumqttc on both ends, QoS 1 and 2, through its own state machine.
#[tokio::test]
async fn rumqttc_clients_exchange_qos1_and_qos2() {
    let broker = start(config()).await;
    let addr = broker.local_addr();
    let options = |id: &str| {
        let mut options = MqttOptions::new(id, addr.ip().to_string(), addr.port());
        options.set_keep_alive(Duration::from_secs(30));
        options
    };
    let (subscriber, mut sub_events) = AsyncClient::new(options("rumqtt-sub"), 16);
    let (publisher, mut pub_events) = AsyncClient::new(options("rumqtt-pub"), 16);
    subscriber
        .subscribe("rq/#", rumqttc::QoS::ExactlyOnce)
        .await
        .expect("subscribe queued");
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    let (suback_tx, suback_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut suback_tx = Some(suback_tx);
        while let Ok(event) = sub_events.poll().await {
            match event {
                Event::Incoming(Incoming::SubAck(_)) => {
                    if let Some(tx) = suback_tx.take() {
                        let _ = tx.send(());
                    }
                }
                Event::Incoming(Incoming::Publish(publish)) => {
                    let _ = tx.send(publish).await;
                }
                _ => {}
            }
        }
    });
    let (done_tx, mut done_rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        while let Ok(event) = pub_events.poll().await {
            if let Event::Incoming(Incoming::PubAck(_) | Incoming::PubComp(_)) = event {
                let _ = done_tx.send(()).await;
            }
        }
    });
    tokio::time::timeout(DEADLINE, suback_rx)
        .await
        .expect("SUBACK in time")
        .expect("SUBACK");
    publisher
        .publish("rq/1", rumqttc::QoS::AtLeastOnce, false, "one")
        .await
        .expect("queued");
    publisher
        .publish("rq/2", rumqttc::QoS::ExactlyOnce, false, "two")
        .await
        .expect("queued");
    for (topic, qos, body) in [
        ("rq/1", rumqttc::QoS::AtLeastOnce, "one"),
        ("rq/2", rumqttc::QoS::ExactlyOnce, "two"),
    ] {
        let received = tokio::time::timeout(DEADLINE, rx.recv())
            .await
            .expect("in time")
            .expect("a message");
        assert_eq!(
            (received.topic.as_str(), received.qos, &received.payload[..]),
            (topic, qos, body.as_bytes())
        );
    }
    for _ in 0..2 {
        tokio::time::timeout(DEADLINE, done_rx.recv())
            .await
            .expect("publisher acknowledged in time");
    }
}
