//! Retained messages and persistent sessions survive a restart of the broker.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use fieldbridge_broker::auth::set_password;
use fieldbridge_broker::config::{PersistenceConfig, Synchronous};
use fieldbridge_broker::Config;
use fieldbridge_mqtt::codec::{Connect, Packet, PubAck, Publish, QoS};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection};

use crate::support::{
    config, connect_packet, payload, publish, start, wait_until, write_file, Client, Process,
    Silence,
};

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

fn login(client_id: &str, user: &str, password: &str) -> Connect {
    Connect {
        username: Some(user.into()),
        password: Some(Bytes::copy_from_slice(password.as_bytes())),
        ..connect_packet(client_id, false)
    }
}

#[tokio::test]
async fn a_session_stays_its_owners_across_restarts() {
    let dir = tempfile::tempdir().expect("temp dir");
    let passwd = dir.path().join("passwd");
    set_password(&passwd, "alice", b"wonderland").expect("password set");
    set_password(&passwd, "bob", b"builder").expect("password set");
    let mut cfg = persistent_config(dir.path());
    cfg.auth.password_file = Some(passwd);
    cfg.auth.acl_file = Some(write_file(
        dir.path(),
        "acl",
        "topic write private/#\nuser alice\ntopic read private/alice/#\n",
    ));
    let broker = start(cfg.clone()).await;
    for client_id in ["a-1", "a-2"] {
        let (mut alice, connack) =
            Client::connect_with(broker.local_addr(), login(client_id, "alice", "wonderland"))
                .await;
        assert!(!connack.session_present);
        alice
            .subscribe(&[("private/alice/#", QoS::AtLeastOnce)])
            .await;
        alice.disconnect().await;
    }
    broker.shutdown().await;

    let broker = start(cfg.clone()).await;
    let addr = broker.local_addr();
    // Queued while alice is away: checked against the ACL as alice, her user name being
    // restored with the session.
    let (mut publisher, _) = Client::connect(addr, "pub", true).await;
    publisher
        .publish(publish(
            "private/alice/x",
            "while away",
            QoS::AtLeastOnce,
            1,
        ))
        .await;
    let (mut bob, connack) = Client::connect_with(addr, login("a-1", "bob", "builder")).await;
    assert!(
        !connack.session_present,
        "bob does not resume alice's session"
    );
    bob.ping().await;
    assert_eq!(
        bob.try_recv(Duration::from_millis(300)).await,
        Err(Silence::TimedOut)
    );
    bob.disconnect().await;
    let (mut alice, connack) =
        Client::connect_with(addr, login("a-2", "alice", "wonderland")).await;
    assert!(connack.session_present, "alice resumes her own");
    assert_eq!(payload(&alice.next_publish().await), "while away");
    alice.disconnect().await;
    broker.shutdown().await;

    // a-1 is bob's now, on disk too.
    let broker = start(cfg).await;
    let addr = broker.local_addr();
    let (_alice, connack) = Client::connect_with(addr, login("a-1", "alice", "wonderland")).await;
    assert!(!connack.session_present);
}

/// A database written before sessions recorded their owner is upgraded in place; its
/// sessions go to the first client that resumes them.
#[tokio::test]
async fn an_older_database_is_upgraded_in_place() {
    let dir = tempfile::tempdir().expect("temp dir");
    let first = dir.path().join("migrations");
    std::fs::create_dir(&first).expect("dir");
    write_file(
        &first,
        "0001_broker_state.sql",
        include_str!("../../migrations/0001_broker_state.sql"),
    );
    let mut connection = SqliteConnectOptions::new()
        .filename(dir.path().join("broker.db"))
        .create_if_missing(true)
        .connect()
        .await
        .expect("database");
    sqlx::migrate::Migrator::new(first.as_path())
        .await
        .expect("first migration")
        .run(&mut connection)
        .await
        .expect("migrates");
    for statement in [
        "INSERT INTO sessions (client_id) VALUES ('old')",
        "INSERT INTO subscriptions (client_id, filter, qos) VALUES ('old', 'o/#', 1)",
    ] {
        sqlx::query(statement)
            .execute(&mut connection)
            .await
            .expect("inserts");
    }
    connection.close().await.expect("closes");

    let cfg = persistent_config(dir.path());
    let broker = start(cfg.clone()).await;
    assert_eq!(broker.stats().clients_total, 1);
    assert_eq!(broker.stats().subscriptions, 1);
    let (carol, connack) =
        Client::connect_with(broker.local_addr(), login("old", "carol", "x")).await;
    assert!(connack.session_present, "the first to resume it");
    carol.disconnect().await;
    broker.shutdown().await;

    let broker = start(cfg).await;
    let addr = broker.local_addr();
    let (dave, connack) = Client::connect_with(addr, login("old", "dave", "x")).await;
    assert!(!connack.session_present, "carol's now");
    dave.disconnect().await;
    let (_dave, connack) = Client::connect_with(addr, login("old", "dave", "x")).await;
    assert!(connack.session_present);
}

#[tokio::test]
async fn retained_messages_are_restored_within_the_limit() {
    let dir = tempfile::tempdir().expect("temp dir");
    let broker = start(persistent_config(dir.path())).await;
    let (mut publisher, _) = Client::connect(broker.local_addr(), "pub", true).await;
    let body = "x".repeat(100);
    for (pkid, topic) in (1..).zip(["r/1", "r/2", "r/3"]) {
        publisher
            .publish(Publish {
                retain: true,
                ..publish(topic, &body, QoS::AtLeastOnce, pkid)
            })
            .await;
    }
    broker.shutdown().await;

    // 103 bytes each: two fit.
    let mut small = persistent_config(dir.path());
    small.limits.max_retained_bytes = 250;
    let broker = start(small).await;
    assert_eq!(broker.stats().retained_messages, 2);
    assert_eq!(broker.stats().retained_refused, 1);
    broker.shutdown().await;

    // The one left out was deleted, not kept for a larger limit.
    let broker = start(persistent_config(dir.path())).await;
    assert_eq!(broker.stats().retained_messages, 2);
}

/// Resident memory of a process, from /proc.
fn rss_bytes(pid: u32) -> usize {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("process status")
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.split_whitespace().next()?.parse::<usize>().ok())
        .expect("VmRSS in kB")
        * 1024
}

/// An absent persistent session's backlog is kept in the database, not in memory: 48 MiB
/// queued for a client that is away leave the broker's resident memory below a quarter of
/// that (all of it in memory was the rule before), and every message still arrives, in
/// order, when the client comes back; and after a restart, where the backlog is not read
/// at start.
#[tokio::test]
async fn an_absent_sessions_backlog_stays_out_of_memory() {
    const MESSAGES: usize = 384;
    const SIZE: usize = 128 * 1024;
    let backlog = MESSAGES * SIZE;
    let dir = tempfile::tempdir().expect("temp dir");
    let config_file = write_file(
        dir.path(),
        "broker.yaml",
        &format!(
            "persistence: {{ path: {}, synchronous: normal }}\nsys_interval: 0\n\
             limits: {{ max_queued_messages: {MESSAGES}, max_queued_bytes: {} }}\n",
            dir.path().join("broker.db").display(),
            backlog + MESSAGES * 16
        ),
    );
    let args = [
        "--config",
        config_file.to_str().expect("utf-8"),
        "--listen",
        "127.0.0.1:0",
    ];
    let process = Process::spawn(&args).await;
    let pid = process.child.id().expect("running");
    let (mut away, _) = Client::connect(process.addr, "away", false).await;
    away.subscribe(&[("backlog/#", QoS::AtLeastOnce)]).await;
    away.disconnect().await;
    let (mut publisher, _) = Client::connect(process.addr, "feeder", true).await;
    // One message in flight at a time: what the broker holds is the backlog alone.
    publisher
        .publish(publish("warm/up", vec![0u8; SIZE], QoS::AtLeastOnce, 1))
        .await;
    let before = rss_bytes(pid);
    for n in 0..MESSAGES {
        let mut body = vec![b'.'; SIZE];
        body[..8].copy_from_slice(&(n as u64).to_be_bytes());
        let pkid = publisher.pkid();
        publisher
            .publish(publish("backlog/m", body, QoS::AtLeastOnce, pkid))
            .await;
    }
    let grown = rss_bytes(pid).saturating_sub(before);
    assert!(
        grown < backlog / 4,
        "the broker grew by {grown} bytes for a backlog of {backlog} bytes"
    );
    publisher.disconnect().await;

    // Back: every message, in order; half of them acknowledged, then away again.
    let (mut back, present) = Client::connect(process.addr, "away", false).await;
    assert!(present);
    for n in 0..MESSAGES / 2 {
        let got = back.recv_publish().await;
        assert_eq!(got.payload.len(), SIZE);
        assert_eq!(got.payload[..8], (n as u64).to_be_bytes(), "message {n}");
        back.ack(&got).await;
    }
    // Read in order: the acknowledgements before the DISCONNECT count.
    back.disconnect().await;
    process.terminate();
    let mut child = process.child;
    tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("the broker stops on SIGTERM")
        .expect("exit status");

    // After a restart: the rest, those sent before it first (again, DUP set).
    let process = Process::spawn(&args).await;
    let (mut back, present) = Client::connect(process.addr, "away", false).await;
    assert!(present);
    let mut resent = 0;
    for n in MESSAGES / 2..MESSAGES {
        let got = back.recv_publish().await;
        assert_eq!(got.payload[..8], (n as u64).to_be_bytes(), "message {n}");
        resent += usize::from(got.dup);
        back.ack(&got).await;
    }
    assert!(
        resent > 0,
        "the messages in flight at the restart come first"
    );
    assert!(matches!(
        back.try_recv(Duration::from_millis(300)).await,
        Err(Silence::TimedOut)
    ));
}
