//! Clean and persistent sessions, queue limits, client ids, takeover, wills, keepalive,
//! connection limits.

use std::time::{Duration, Instant};

use fieldbridge_mqtt::codec::{Packet, QoS, ReasonCode, SubscribeReturnCode};

use crate::support::{
    config, connect_packet, payload, publish, start, wait_until, will, Client, Silence,
};

#[tokio::test]
async fn persistent_session_queues_qos1_and_qos2_while_away() {
    let broker = start(config()).await;
    let addr = broker.local_addr();
    let (mut sub, _) = Client::connect(addr, "away", false).await;
    sub.subscribe(&[("q/#", QoS::ExactlyOnce)]).await;
    sub.disconnect().await;
    wait_until("the client is gone", || {
        broker.stats().clients_connected == 0
    })
    .await;

    let (mut publisher, _) = Client::connect(addr, "pub", true).await;
    publisher
        .publish(publish("q/1", "one", QoS::AtLeastOnce, 1))
        .await;
    publisher
        .publish(publish("q/0", "zero", QoS::AtMostOnce, 0))
        .await;
    publisher
        .publish(publish("q/2", "two", QoS::ExactlyOnce, 2))
        .await;
    publisher
        .publish(publish("q/3", "three", QoS::AtLeastOnce, 3))
        .await;

    let (mut sub, present) = Client::connect(addr, "away", false).await;
    assert!(present);
    for expected in ["one", "two", "three"] {
        let got = sub.recv_publish().await;
        assert_eq!(
            payload(&got),
            expected,
            "queued in order; QoS 0 is not kept for an absent client"
        );
        assert!(!got.dup, "never sent before");
        sub.ack(&got).await;
    }
    publisher
        .publish(publish("q/x", "live", QoS::AtMostOnce, 0))
        .await;
    assert_eq!(
        payload(&sub.recv_publish().await),
        "live",
        "the subscription survived"
    );
}

#[tokio::test]
async fn queue_limits_drop_and_count() {
    let mut cfg = config();
    cfg.limits.max_queued_messages = 3;
    let broker = start(cfg).await;
    let addr = broker.local_addr();
    let (mut sub, _) = Client::connect(addr, "limited", false).await;
    sub.subscribe(&[("l", QoS::AtLeastOnce)]).await;
    sub.disconnect().await;
    let (mut publisher, _) = Client::connect(addr, "pub", true).await;
    for pkid in 1..=5 {
        publisher
            .publish(publish("l", pkid.to_string(), QoS::AtLeastOnce, pkid))
            .await;
    }
    assert_eq!(broker.stats().messages_dropped, 2);
    let (mut sub, _) = Client::connect(addr, "limited", false).await;
    for expected in ["1", "2", "3"] {
        let got = sub.recv_publish().await;
        assert_eq!(
            payload(&got),
            expected,
            "the oldest are kept, the newest dropped"
        );
        sub.ack(&got).await;
    }
    publisher
        .publish(publish("l", "after", QoS::AtLeastOnce, 9))
        .await;
    assert_eq!(payload(&sub.recv_publish().await), "after");
}

#[tokio::test]
async fn queue_byte_limit_drops_too() {
    let mut cfg = config();
    cfg.limits.max_queued_bytes = 100;
    let broker = start(cfg).await;
    let addr = broker.local_addr();
    let (mut sub, _) = Client::connect(addr, "bytes", false).await;
    sub.subscribe(&[("b", QoS::AtLeastOnce)]).await;
    sub.disconnect().await;
    let (mut publisher, _) = Client::connect(addr, "pub", true).await;
    let forty = "x".repeat(40);
    for pkid in 1..=3 {
        publisher
            .publish(publish("b", &forty, QoS::AtLeastOnce, pkid))
            .await;
    }
    assert_eq!(
        broker.stats().messages_dropped,
        1,
        "two 41-byte messages fit in 100 bytes, not three"
    );
}

#[tokio::test]
async fn clean_session_discards_the_session() {
    let broker = start(config()).await;
    let addr = broker.local_addr();
    let (mut sub, _) = Client::connect(addr, "c", false).await;
    sub.subscribe(&[("gone", QoS::AtLeastOnce)]).await;
    sub.disconnect().await;
    let (mut clean, present) = Client::connect(addr, "c", true).await;
    assert!(!present, "clean session 1 starts afresh");
    let (mut publisher, _) = Client::connect(addr, "pub", true).await;
    publisher
        .publish(publish("gone", "nobody", QoS::AtLeastOnce, 1))
        .await;
    clean.subscribe(&[("marker", QoS::AtMostOnce)]).await;
    publisher
        .publish(publish("marker", "m", QoS::AtMostOnce, 0))
        .await;
    assert_eq!(
        clean.recv_publish().await.topic,
        "marker",
        "the old subscription is gone"
    );
    clean.disconnect().await;
    wait_until("the clean session ends with its connection", || {
        broker.stats().clients_total == 1
    })
    .await;
    let (_again, present) = Client::connect(addr, "c", false).await;
    assert!(!present, "nothing was kept");
}

#[tokio::test]
async fn zero_length_client_id() {
    let broker = start(config()).await;
    let addr = broker.local_addr();
    let (mut anonymous, connack) = Client::connect_with(addr, connect_packet("", true)).await;
    assert_eq!(connack.code, ReasonCode::Success);
    anonymous.ping().await;
    let (mut refused, connack) = Client::connect_with(addr, connect_packet("", false)).await;
    assert_eq!(connack.code, ReasonCode::ClientIdentifierNotValid);
    assert!(!connack.session_present);
    refused.expect_closed().await;
}

#[tokio::test]
async fn second_connection_takes_the_client_id_over() {
    let broker = start(config()).await;
    let addr = broker.local_addr();
    let mut first_connect = connect_packet("twin", false);
    first_connect.will = Some(will("twin/status", "lost", QoS::AtMostOnce, false));
    let (mut watcher, _) = Client::connect(addr, "watcher", true).await;
    watcher.subscribe(&[("twin/#", QoS::AtMostOnce)]).await;
    let (mut first, _) = Client::connect_with(addr, first_connect).await;
    first.subscribe(&[("twin/cmd", QoS::AtLeastOnce)]).await;
    let (mut second, present) = Client::connect(addr, "twin", false).await;
    assert!(present, "the persistent session carries over");
    first.expect_closed().await;
    assert_eq!(
        payload(&watcher.recv_publish().await),
        "lost",
        "the replaced connection's will"
    );
    let (mut publisher, _) = Client::connect(addr, "pub", true).await;
    publisher
        .publish(publish("twin/cmd", "for the second", QoS::AtLeastOnce, 1))
        .await;
    assert_eq!(payload(&second.recv_publish().await), "for the second");
    assert_eq!(broker.stats().clients_connected, 3);
}

#[tokio::test]
async fn will_on_abnormal_disconnect_only() {
    let broker = start(config()).await;
    let addr = broker.local_addr();
    let (mut watcher, _) = Client::connect(addr, "watcher", true).await;
    watcher.subscribe(&[("wills/#", QoS::AtLeastOnce)]).await;

    let mut polite = connect_packet("polite", true);
    polite.will = Some(will(
        "wills/polite",
        "should not appear",
        QoS::AtLeastOnce,
        false,
    ));
    let (polite, _) = Client::connect_with(addr, polite).await;
    polite.disconnect().await;

    let mut rude = connect_packet("rude", true);
    rude.will = Some(will("wills/rude", "gone", QoS::AtLeastOnce, true));
    let (rude, _) = Client::connect_with(addr, rude).await;
    drop(rude);

    let got = watcher.recv_publish().await;
    assert_eq!(
        (got.topic.to_string(), payload(&got), got.qos),
        ("wills/rude".into(), "gone".into(), QoS::AtLeastOnce)
    );
    watcher.ack(&got).await;
    let (mut late, _) = Client::connect(addr, "late", true).await;
    late.subscribe(&[("wills/rude", QoS::AtMostOnce)]).await;
    assert!(
        late.recv_publish().await.retain,
        "a retained will is retained"
    );
}

#[tokio::test]
async fn will_on_keepalive_expiry() {
    let broker = start(config()).await;
    let addr = broker.local_addr();
    let (mut watcher, _) = Client::connect(addr, "watcher", true).await;
    watcher
        .subscribe(&[("silent/status", QoS::AtMostOnce)])
        .await;
    let mut connect = connect_packet("silent", true);
    connect.keep_alive = 1;
    connect.will = Some(will("silent/status", "expired", QoS::AtMostOnce, false));
    let started = Instant::now();
    let (mut silent, _) = Client::connect_with(addr, connect).await;
    silent.expect_closed().await;
    assert!(
        started.elapsed() >= Duration::from_millis(1400),
        "not before 1.5 times the keepalive"
    );
    assert_eq!(payload(&watcher.recv_publish().await), "expired");
}

#[tokio::test]
async fn activity_keeps_the_connection_alive() {
    let broker = start(config()).await;
    let addr = broker.local_addr();
    let mut connect = connect_packet("busy", true);
    connect.keep_alive = 2;
    let (mut busy, _) = Client::connect_with(addr, connect).await;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(4) {
        busy.ping().await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    busy.ping().await;
}

#[tokio::test]
async fn max_keepalive_caps_what_the_client_asks() {
    let mut cfg = config();
    cfg.limits.max_keepalive = 1;
    let broker = start(cfg).await;
    let addr = broker.local_addr();
    let mut connect = connect_packet("lazy", true);
    connect.keep_alive = 0;
    let (mut lazy, _) = Client::connect_with(addr, connect).await;
    lazy.expect_closed().await;
}

#[tokio::test]
async fn max_connections() {
    let mut cfg = config();
    cfg.limits.max_connections = 2;
    let broker = start(cfg).await;
    let addr = broker.local_addr();
    let (mut one, _) = Client::connect(addr, "one", true).await;
    let (two, _) = Client::connect(addr, "two", true).await;
    let mut three = Client::tcp(addr).await;
    three
        .send(Packet::Connect(Box::new(connect_packet("three", true))))
        .await;
    assert_eq!(
        three.expect_closed().await,
        Vec::new(),
        "closed without a CONNACK"
    );
    one.ping().await;
    two.disconnect().await;
    // The freed slot is usable again.
    let mut attempts = 0;
    loop {
        attempts += 1;
        let mut four = Client::tcp(addr).await;
        four.send(Packet::Connect(Box::new(connect_packet("four", true))))
            .await;
        match four.try_recv(Duration::from_secs(5)).await {
            Ok(Packet::ConnAck(connack)) => {
                assert_eq!(connack.code, ReasonCode::Success);
                break;
            }
            Err(Silence::Closed) if attempts < 100 => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            other => panic!("no slot freed: {other:?}"),
        }
    }
}

#[tokio::test]
async fn session_and_subscription_limits() {
    let mut cfg = config();
    cfg.limits.max_sessions = 2;
    cfg.limits.max_subscriptions_per_session = 2;
    let broker = start(cfg).await;
    let addr = broker.local_addr();
    let (mut one, _) = Client::connect(addr, "one", false).await;
    let granted = |qos| SubscribeReturnCode::Success(qos);
    assert_eq!(
        one.subscribe(&[
            ("a", QoS::AtMostOnce),
            ("b", QoS::AtMostOnce),
            ("c", QoS::AtMostOnce)
        ])
        .await,
        vec![
            granted(QoS::AtMostOnce),
            granted(QoS::AtMostOnce),
            SubscribeReturnCode::Failure(ReasonCode::UnspecifiedError)
        ]
    );
    assert_eq!(
        one.subscribe(&[("a", QoS::AtLeastOnce)]).await,
        vec![granted(QoS::AtLeastOnce)],
        "replacing a subscription is not one more"
    );
    one.disconnect().await;
    let (_two, _) = Client::connect(addr, "two", true).await;
    let (mut three, connack) = Client::connect_with(addr, connect_packet("three", true)).await;
    assert_eq!(
        connack.code,
        ReasonCode::ServerUnavailable,
        "the absent persistent session counts"
    );
    three.expect_closed().await;
    let (_again, present) = Client::connect(addr, "one", false).await;
    assert!(present, "an existing session is resumed at the limit");
}
