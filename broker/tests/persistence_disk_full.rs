//! Persistence on a file system that fills up: QoS 1 and 2 messages that cannot be stored
//! are not acknowledged (the client is disconnected at once; an MQTT 5 client is told with
//! PUBACK 0x80 instead), new persistent sessions are refused, the failures are counted and
//! logged, writes work again as soon as there is space, and after a restart everything
//! that was acknowledged is there and nothing that was refused.
//! Needs a real small file system: a tmpfs mounted over the database's directory (root).

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use fieldbridge_broker::config::{PersistenceConfig, Synchronous};
use fieldbridge_broker::{Config, RunningBroker};
use fieldbridge_mqtt::codec::{
    Connect, Packet, ProtocolVersion, PubComp, PubRec, PubRel, Publish, QoS, ReasonCode,
};
use fieldbridge_testkit::{fill_file_system, CapturedLogs, Need, Suite, Tmpfs};
use sqlx::{ConnectOptions as _, Connection as _};
use support::{config, connect_packet, payload, publish, start, Client, Silence, DEADLINE};

/// What "at once" means on a loaded 2-core machine.
const FAIL_FAST: Duration = Duration::from_secs(2);

fn persistent_config(db: &Path) -> Config {
    let mut cfg = config();
    cfg.persistence = Some(PersistenceConfig {
        path: db.to_owned(),
        synchronous: Synchronous::Full,
    });
    cfg
}

fn retained(topic: &str, text: &str, pkid: u16) -> Publish {
    Publish {
        retain: true,
        ..publish(topic, text, QoS::AtLeastOnce, pkid)
    }
}

fn failures(broker: &RunningBroker) -> u64 {
    broker.stats().persistence_write_failures
}

/// Sends `packet` on a new clean-session connection and asserts the broker closes it
/// without answering, at once. Returns how long that took.
async fn refused(addr: SocketAddr, client_id: &str, packet: Packet) -> Duration {
    let started = Instant::now();
    let (mut client, _) = Client::connect(addr, client_id, true).await;
    client.send(packet).await;
    closed_unanswered(&mut client, client_id).await;
    started.elapsed()
}

async fn closed_unanswered(client: &mut Client, client_id: &str) {
    match client.try_recv(DEADLINE).await {
        Err(Silence::Closed) => {}
        Ok(answer) => panic!("{client_id}: {answer:?} while the disk is full"),
        Err(Silence::TimedOut) => panic!("{client_id}: neither answered nor disconnected"),
    }
}

/// What the database holds: the keeper's queued payloads in order, and the retained topics.
async fn stored(db: &Path) -> (Vec<String>, Vec<String>) {
    let mut connection = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(db)
        .connect()
        .await
        .expect("the database opens");
    let queued: Vec<Vec<u8>> = sqlx::query_scalar(
        "SELECT m.payload FROM queue q JOIN messages m ON m.id = q.message_id \
         WHERE q.client_id = 'keeper' ORDER BY q.seq",
    )
    .fetch_all(&mut connection)
    .await
    .expect("reads the queue");
    let retained: Vec<String> = sqlx::query_scalar("SELECT topic FROM retained ORDER BY topic")
        .fetch_all(&mut connection)
        .await
        .expect("reads the retained messages");
    connection.close().await.expect("closes");
    let queued = queued
        .into_iter()
        .map(|payload| String::from_utf8(payload).expect("UTF-8"))
        .collect();
    (queued, retained)
}

/// Whether another connection can take the write lock now (the broker holds no
/// transaction open).
async fn writable(db: &Path) -> bool {
    let mut connection = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(db)
        .busy_timeout(Duration::ZERO)
        .connect()
        .await
        .expect("the database opens");
    let locked = sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut connection)
        .await
        .is_ok();
    connection.close().await.expect("closes");
    locked
}

async fn a_full_disk_refuses_unstorable_messages_and_loses_nothing_acknowledged(
    logs: CapturedLogs,
) {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let _mount = Tmpfs::mount(&data, "2m").expect("mount a tmpfs");
    let db = data.join("broker.db");
    let broker = start(persistent_config(&db)).await;
    let addr = broker.local_addr();

    // A persistent subscriber, away: its stored queue holds what it is owed.
    let (mut keeper, _) = Client::connect(addr, "keeper", false).await;
    keeper.subscribe(&[("d/#", QoS::AtLeastOnce)]).await;
    keeper.disconnect().await;

    let mut acknowledged: Vec<String> = Vec::new();
    let (mut publisher, _) = Client::connect(addr, "pub", true).await;
    for n in 1..=10u16 {
        let text = format!("before-{n}");
        publisher
            .publish(publish("d/m", &text, QoS::AtLeastOnce, n))
            .await;
        acknowledged.push(text);
    }
    publisher.publish(retained("r/before", "kept", 11)).await;
    publisher.disconnect().await;
    // A persistent QoS 2 publisher whose PUBREL comes when the disk is full.
    let (mut releaser, _) = Client::connect(addr, "releaser", false).await;
    releaser
        .send(Packet::Publish(publish(
            "d/m",
            "exactly-once",
            QoS::ExactlyOnce,
            7,
        )))
        .await;
    assert_eq!(releaser.recv().await, Packet::PubRec(PubRec::new(7)));
    acknowledged.push("exactly-once".into());
    assert_eq!(failures(&broker), 0);

    let filler = data.join("filler");
    println!("filled the tmpfs with {} bytes", fill_file_system(&filler));

    // Full: nothing is acknowledged, each refusal is counted, and comes at once.
    let mut timings = Vec::new();
    let mut counted = failures(&broker);
    let full_publishes = (1..=5u16)
        .map(|n| publish("d/m", format!("refused-{n}"), QoS::AtLeastOnce, n))
        .chain([
            publish("d/m", "refused-qos2", QoS::ExactlyOnce, 6),
            retained("r/refused", "not kept", 7),
        ]);
    for (n, packet) in full_publishes.enumerate() {
        timings.push(refused(addr, &format!("full-{n}"), Packet::Publish(packet)).await);
        let now = failures(&broker);
        assert!(
            now > counted,
            "a refusal is a counted failure ({counted} -> {now})"
        );
        counted = now;
    }
    releaser.send(Packet::PubRel(PubRel::new(7))).await;
    closed_unanswered(&mut releaser, "releaser").await;
    assert!(
        failures(&broker) > counted,
        "the release is a counted failure"
    );
    timings.sort();
    println!("refusals while full took {timings:?}");
    assert!(
        timings[timings.len() - 1] < FAIL_FAST,
        "refusals must not wait: {timings:?}"
    );

    // An MQTT 5 publisher is told instead (PUBACK 0x80), and stays connected.
    let v5 = Connect {
        protocol: ProtocolVersion::V5,
        ..connect_packet("full-v5", true)
    };
    let (mut told, connack) = Client::connect_with(addr, v5).await;
    assert_eq!(connack.code, ReasonCode::Success);
    told.send(Packet::Publish(publish(
        "d/m",
        "refused-v5",
        QoS::AtLeastOnce,
        1,
    )))
    .await;
    match told.recv().await {
        Packet::PubAck(ack) => {
            assert_eq!((ack.pkid, ack.reason), (1, ReasonCode::UnspecifiedError))
        }
        other => panic!("expected PUBACK 0x80, got {other:?}"),
    }
    told.ping().await;
    // A new persistent session cannot be stored: refused, not promised.
    let (_, connack) = Client::connect_with(addr, connect_packet("newcomer", false)).await;
    assert_eq!(connack.code, ReasonCode::ServerUnavailable);

    // Space again: the next messages are stored and acknowledged.
    std::fs::remove_file(&filler).unwrap();
    let failed_while_full = failures(&broker);
    let (mut releaser, present) = Client::connect(addr, "releaser", false).await;
    assert!(present);
    releaser.send(Packet::PubRel(PubRel::new(7))).await;
    assert_eq!(releaser.recv().await, Packet::PubComp(PubComp::new(7)));
    releaser.disconnect().await;
    let (mut publisher, _) = Client::connect(addr, "pub", true).await;
    for n in 1..=10u16 {
        let text = format!("after-{n}");
        publisher
            .publish(publish("d/m", &text, QoS::AtLeastOnce, n))
            .await;
        acknowledged.push(text);
    }
    publisher.publish(retained("r/after", "kept too", 11)).await;
    publisher.disconnect().await;
    assert_eq!(
        failures(&broker),
        failed_while_full,
        "no failure once there is space"
    );
    assert!(writable(&db).await, "the broker holds no transaction open");
    assert_eq!(
        stored(&db).await,
        (
            acknowledged.clone(),
            vec!["r/after".to_owned(), "r/before".to_owned()]
        ),
        "committed, and visible to another connection"
    );

    broker.shutdown().await;
    let text = logs.text();
    let failure_lines = text.matches("persistence write failed").count();
    println!("{failure_lines} failure lines for {failed_while_full} failed transactions");
    assert!(failure_lines >= 1, "the failure is logged:\n{text}");
    assert!(
        (failure_lines as u64) < failed_while_full,
        "at a bounded rate:\n{text}"
    );
    assert!(
        text.contains("persistence writes succeed again"),
        "the recovery is logged:\n{text}"
    );

    // The same database after a restart: exactly what was acknowledged.
    let broker = start(persistent_config(&db)).await;
    let addr = broker.local_addr();
    let (mut keeper, present) = Client::connect(addr, "keeper", false).await;
    assert!(present, "the session was restored");
    let mut received = Vec::new();
    for _ in 0..acknowledged.len() {
        let got = keeper.recv_publish().await;
        keeper.ack(&got).await;
        received.push(payload(&got));
    }
    assert_eq!(received, acknowledged);
    keeper.ping().await;
    assert_eq!(
        keeper.try_recv(Duration::ZERO).await,
        Err(Silence::TimedOut),
        "nothing refused was stored"
    );
    let (mut fresh, _) = Client::connect(addr, "fresh", true).await;
    fresh.subscribe(&[("r/#", QoS::AtLeastOnce)]).await;
    fresh.ping().await;
    let mut topics = Vec::new();
    while let Ok(Packet::Publish(got)) = fresh.try_recv(Duration::ZERO).await {
        topics.push(got.topic.to_string());
    }
    topics.sort();
    assert_eq!(topics, ["r/after", "r/before"]);
    broker.shutdown().await;
}

fn main() -> ExitCode {
    let logs = CapturedLogs::install();
    let mut suite = Suite::new();
    suite.async_test(
        "a_full_disk_refuses_unstorable_messages_and_loses_nothing_acknowledged",
        &[Need::tmpfs()],
        move || a_full_disk_refuses_unstorable_messages_and_loses_nothing_acknowledged(logs),
    );
    suite.run()
}
