//! Retained messages and persistent sessions survive a restart of the broker.

use std::path::Path;

use fieldbridge_broker::config::{PersistenceConfig, Synchronous};
use fieldbridge_broker::Config;
use fieldbridge_mqtt::codec::{Packet, PubAck, Publish, QoS};

use crate::support::{config, payload, publish, start, wait_until, write_file, Client, Process};

fn persistent_config(dir: &Path) -> Config {
    let mut cfg = config();
    cfg.persistence = Some(PersistenceConfig {
        path: dir.join("broker.db"),
        synchronous: Synchronous::Full,
    });
    cfg
}

#[tokio::test]
async fn state_survives_a_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let broker = start(persistent_config(dir.path())).await;
    let addr = broker.local_addr();

    let (mut sub, _) = Client::connect(addr, "durable", false).await;
    sub.subscribe(&[("d/#", QoS::ExactlyOnce), ("other", QoS::AtMostOnce)])
        .await;
    let (mut publisher, _) = Client::connect(addr, "pub", true).await;
    publisher
        .publish(publish(
            "d/inflight",
            "sent, not acked",
            QoS::AtLeastOnce,
            1,
        ))
        .await;
    let inflight = sub.recv_publish().await;
    drop(sub);
    wait_until("the subscriber is gone", || {
        broker.stats().clients_connected == 1
    })
    .await;
    publisher
        .publish(publish("d/1", "one", QoS::AtLeastOnce, 2))
        .await;
    publisher
        .publish(publish("d/2", "two", QoS::ExactlyOnce, 3))
        .await;
    publisher
        .publish(Publish {
            retain: true,
            ..publish("keep/me", "retained", QoS::AtLeastOnce, 4)
        })
        .await;
    publisher
        .publish(Publish {
            retain: true,
            ..publish("keep/not", "gone", QoS::AtLeastOnce, 5)
        })
        .await;
    publisher
        .publish(Publish {
            retain: true,
            ..publish("keep/not", "", QoS::AtLeastOnce, 6)
        })
        .await;
    broker.shutdown().await;

    let broker = start(persistent_config(dir.path())).await;
    let addr = broker.local_addr();
    assert_eq!(broker.stats().retained_messages, 1);
    assert_eq!(broker.stats().subscriptions, 2);
    let (mut sub, present) = Client::connect(addr, "durable", false).await;
    assert!(present, "the session was restored");
    let again = sub.recv_publish().await;
    assert_eq!(
        (payload(&again), again.pkid, again.dup),
        (payload(&inflight), inflight.pkid, true),
        "in flight before: resent with DUP"
    );
    sub.ack(&again).await;
    for expected in ["one", "two"] {
        let got = sub.recv_publish().await;
        assert_eq!(payload(&got), expected);
        sub.ack(&got).await;
    }
    let (mut fresh, _) = Client::connect(addr, "fresh", true).await;
    fresh.subscribe(&[("keep/#", QoS::AtLeastOnce)]).await;
    let got = fresh.recv_publish().await;
    assert_eq!(
        (got.topic.to_string(), payload(&got), got.retain),
        ("keep/me".into(), "retained".into(), true)
    );
    broker.shutdown().await;

    // Acknowledged messages are gone for good.
    let broker = start(persistent_config(dir.path())).await;
    let (mut sub, present) = Client::connect(broker.local_addr(), "durable", false).await;
    assert!(present);
    let (mut publisher, _) = Client::connect(broker.local_addr(), "pub", true).await;
    publisher
        .publish(publish("d/new", "new", QoS::AtLeastOnce, 1))
        .await;
    assert_eq!(
        payload(&sub.recv_publish().await),
        "new",
        "nothing old was left to resend"
    );
}

#[tokio::test]
async fn clean_session_removes_the_stored_session() {
    let dir = tempfile::tempdir().expect("temp dir");
    let broker = start(persistent_config(dir.path())).await;
    let (mut sub, _) = Client::connect(broker.local_addr(), "c", false).await;
    sub.subscribe(&[("x", QoS::AtLeastOnce)]).await;
    sub.disconnect().await;
    let (clean, _) = Client::connect(broker.local_addr(), "c", true).await;
    clean.disconnect().await;
    broker.shutdown().await;
    let broker = start(persistent_config(dir.path())).await;
    assert_eq!(broker.stats().clients_total, 0);
    assert_eq!(broker.stats().subscriptions, 0);
}

/// A publisher's PUBACK means the message is on disk: killing the broker right after
/// (no shutdown at all) loses nothing.
#[tokio::test]
async fn acknowledged_messages_survive_a_crash() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("broker.db");
    let config_file = write_file(
        dir.path(),
        "broker.yaml",
        &format!(
            "persistence: {{ path: {} }}\nsys_interval: 0\n",
            db.display()
        ),
    );
    let args = [
        "--config",
        config_file.to_str().expect("utf-8"),
        "--listen",
        "127.0.0.1:0",
    ];
    let process = Process::spawn(&args).await;
    let (mut sub, _) = Client::connect(process.addr, "crash-sub", false).await;
    sub.subscribe(&[("c/#", QoS::AtLeastOnce)]).await;
    sub.disconnect().await;
    let (mut publisher, _) = Client::connect(process.addr, "crash-pub", true).await;
    for pkid in 1..=20u16 {
        publisher
            .send(Packet::Publish(publish(
                "c/m",
                pkid.to_string(),
                QoS::AtLeastOnce,
                pkid,
            )))
            .await;
    }
    for pkid in 1..=20u16 {
        assert_eq!(publisher.recv().await, Packet::PubAck(PubAck::new(pkid)));
    }
    process.kill_hard();
    drop(process);

    let process = Process::spawn(&args).await;
    let (mut sub, present) = Client::connect(process.addr, "crash-sub", false).await;
    assert!(present);
    for pkid in 1..=20u16 {
        let got = sub.recv_publish().await;
        assert_eq!(payload(&got), pkid.to_string());
        sub.ack(&got).await;
    }
}
