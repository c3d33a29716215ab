//! Passwords, anonymous access, ACLs, sessions owned by their user, failed-login backoff.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fieldbridge_broker::auth::set_password;
use fieldbridge_broker::config::{AnonymousPolicy, ListenerConfig};
use fieldbridge_broker::Config;
use fieldbridge_mqtt::codec::{Connect, QoS, ReasonCode, SubscribeReturnCode};

use crate::support::{
    config, connect_packet, granted, login_packet, payload, publish, start, wait_until, write_file,
    Client, Silence,
};

async fn login(
    addr: SocketAddr,
    client_id: &str,
    user: Option<&str>,
    password: Option<&str>,
) -> (Client, ReasonCode) {
    let (client, connack) =
        Client::connect_with(addr, login_packet(client_id, user, password)).await;
    (client, connack.code)
}

#[tokio::test]
async fn password_file_authenticates() {
    let dir = tempfile::tempdir().expect("temp dir");
    let passwords = dir.path().join("passwd");
    set_password(&passwords, "alice", b"wonderland").expect("password set");
    let mut cfg = config();
    cfg.auth.password_file = Some(passwords);
    cfg.allow_anonymous = AnonymousPolicy::Never;
    let broker = start(cfg).await;
    let addr = broker.local_addr();

    let (mut alice, code) = login(addr, "a", Some("alice"), Some("wonderland")).await;
    assert_eq!(code, ReasonCode::Success);
    alice.ping().await;
    let (mut wrong, code) = login(addr, "w", Some("alice"), Some("looking-glass")).await;
    assert_eq!(code, ReasonCode::BadUserNameOrPassword);
    wrong.expect_closed().await;
    let (_, code) = login(addr, "u", Some("mallory"), Some("wonderland")).await;
    assert_eq!(code, ReasonCode::BadUserNameOrPassword);
    let (_, code) = login(addr, "n", Some("alice"), None).await;
    assert_eq!(code, ReasonCode::BadUserNameOrPassword);
    let (mut anonymous, code) = login(addr, "anon", None, None).await;
    assert_eq!(code, ReasonCode::NotAuthorized);
    anonymous.expect_closed().await;
}

#[tokio::test]
async fn anonymous_clients_only_on_loopback_listeners_by_default() {
    let mut cfg = config();
    cfg.listeners
        .push(ListenerConfig::mqtt("0.0.0.0:0".parse().expect("address")));
    let broker = start(cfg).await;
    let loopback = broker.local_addrs()[0];
    let wildcard_port = broker.local_addrs()[1].port();
    let (mut on_loopback, code) = login(loopback, "here", None, None).await;
    assert_eq!(code, ReasonCode::Success);
    on_loopback.ping().await;
    // The same machine, through a listener that is not bound to loopback.
    let other = SocketAddr::from(([127, 0, 0, 1], wildcard_port));
    let (mut refused, code) = login(other, "there", None, None).await;
    assert_eq!(code, ReasonCode::NotAuthorized);
    refused.expect_closed().await;
}

#[tokio::test]
async fn anonymous_everywhere_when_allowed() {
    let mut cfg = config();
    cfg.listeners = vec![ListenerConfig::mqtt("0.0.0.0:0".parse().expect("address"))];
    cfg.allow_anonymous = AnonymousPolicy::Always;
    let broker = start(cfg).await;
    let addr = SocketAddr::from(([127, 0, 0, 1], broker.local_addr().port()));
    let (_, code) = login(addr, "anyone", None, None).await;
    assert_eq!(code, ReasonCode::Success);
}

const ACL: &str = "\
topic read public/#

user alice
topic readwrite sensors/#
topic deny sensors/secret

user carol
topic write sensors/#

user bob
topic write sensors/bob/#
topic read sensors/bob/#

pattern readwrite clients/%c/#
";

#[tokio::test]
async fn acl_refuses_subscriptions_and_drops_publishes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cfg = config();
    cfg.auth.acl_file = Some(write_file(dir.path(), "acl", ACL));
    let broker = start(cfg).await;
    let addr = broker.local_addr();

    let (mut alice, _) = login(addr, "alice-1", Some("alice"), Some("x")).await;
    let codes = alice
        .subscribe(&[
            ("sensors/#", QoS::AtLeastOnce),
            ("#", QoS::AtMostOnce),
            ("clients/alice-1/#", QoS::AtMostOnce),
        ])
        .await;
    assert_eq!(
        codes,
        vec![
            SubscribeReturnCode::Success(QoS::AtLeastOnce),
            SubscribeReturnCode::Failure(ReasonCode::UnspecifiedError),
            SubscribeReturnCode::Success(QoS::AtMostOnce)
        ]
    );

    let (mut bob, _) = login(addr, "bob-1", Some("bob"), Some("x")).await;
    assert_eq!(
        bob.subscribe(&[("sensors/alice", QoS::AtMostOnce)]).await,
        vec![SubscribeReturnCode::Failure(ReasonCode::UnspecifiedError)]
    );
    // Refused: dropped without a word (the PUBACK still comes), then an allowed one.
    bob.publish(publish("sensors/alice/x", "forbidden", QoS::AtLeastOnce, 1))
        .await;
    bob.publish(publish("sensors/bob/t", "allowed", QoS::AtLeastOnce, 2))
        .await;
    let got = alice.recv_publish().await;
    assert_eq!(
        (got.topic.to_string(), payload(&got)),
        ("sensors/bob/t".into(), "allowed".into())
    );
    alice.ack(&got).await;

    // A deny rule inside a granted subscription filters messages on delivery.
    let (mut carol, _) = login(addr, "carol-1", Some("carol"), Some("x")).await;
    carol
        .publish(publish("sensors/secret", "hidden", QoS::AtLeastOnce, 3))
        .await;
    bob.publish(publish("sensors/bob/u", "shown", QoS::AtMostOnce, 0))
        .await;
    assert_eq!(payload(&alice.recv_publish().await), "shown");

    let (mut anonymous, _) = login(addr, "anon", None, None).await;
    assert_eq!(
        anonymous.subscribe(&[("public/#", QoS::AtMostOnce)]).await,
        vec![SubscribeReturnCode::Success(QoS::AtMostOnce)]
    );
    assert_eq!(
        anonymous.subscribe(&[("sensors/#", QoS::AtMostOnce)]).await,
        vec![SubscribeReturnCode::Failure(ReasonCode::UnspecifiedError)]
    );
}

#[tokio::test]
async fn will_topic_must_be_writable() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cfg = config();
    cfg.auth.acl_file = Some(write_file(dir.path(), "acl", ACL));
    let broker = start(cfg).await;
    let mut connect = connect_packet("bob-2", true);
    connect.username = Some("bob".into());
    connect.will = Some(crate::support::will(
        "sensors/alice",
        "x",
        QoS::AtMostOnce,
        false,
    ));
    let (_, connack) = Client::connect_with(broker.local_addr(), connect).await;
    assert_eq!(connack.code, ReasonCode::NotAuthorized);
}

/// A clean session 0 CONNECT with credentials.
fn persistent_login(client_id: &str, user: &str, password: &str) -> Connect {
    Connect {
        username: Some(user.into()),
        password: Some(Bytes::copy_from_slice(password.as_bytes())),
        ..connect_packet(client_id, false)
    }
}

/// A password file with `users` (name, password) in `dir`.
fn password_file(dir: &Path, users: &[(&str, &str)]) -> std::path::PathBuf {
    let path = dir.join("passwd");
    for (user, password) in users {
        set_password(&path, user, password.as_bytes()).expect("password set");
    }
    path
}

/// Anonymous clients (the publishers here) write; each user reads their own topics.
const OWN_TOPICS_ACL: &str = "\
topic write private/#

user alice
topic read private/alice/#

user bob
topic read private/bob/#
";

/// Asserts that nothing comes for `client` within a short while.
async fn assert_silent(client: &mut Client, what: &str) {
    client.ping().await;
    assert_eq!(
        client.try_recv(Duration::from_millis(300)).await,
        Err(Silence::TimedOut),
        "{what}"
    );
}

#[tokio::test]
async fn another_user_does_not_resume_a_persistent_session() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cfg = config();
    cfg.auth.password_file = Some(password_file(
        dir.path(),
        &[("alice", "wonderland"), ("bob", "builder")],
    ));
    cfg.auth.acl_file = Some(write_file(dir.path(), "acl", OWN_TOPICS_ACL));
    let broker = start(cfg).await;
    let addr = broker.local_addr();

    let (mut alice, connack) =
        Client::connect_with(addr, persistent_login("phone", "alice", "wonderland")).await;
    assert_eq!(connack.code, ReasonCode::Success);
    assert_eq!(
        alice
            .subscribe(&[("private/alice/#", QoS::AtLeastOnce)])
            .await,
        vec![granted(QoS::AtLeastOnce)]
    );
    alice.disconnect().await;
    wait_until("alice is gone", || broker.stats().clients_connected == 0).await;
    let (mut publisher, _) = Client::connect(addr, "pub", true).await;
    publisher
        .publish(publish(
            "private/alice/diary",
            "secret",
            QoS::AtLeastOnce,
            1,
        ))
        .await;

    // Bob, with his own password and alice's client id: a fresh session of his own.
    let (mut bob, connack) =
        Client::connect_with(addr, persistent_login("phone", "bob", "builder")).await;
    assert_eq!(connack.code, ReasonCode::Success);
    assert!(
        !connack.session_present,
        "bob does not resume alice's session"
    );
    assert_silent(&mut bob, "nothing queued for alice reaches bob").await;
    publisher
        .publish(publish("private/alice/diary", "more", QoS::AtLeastOnce, 2))
        .await;
    assert_silent(&mut bob, "alice's subscription is not bob's").await;
    bob.disconnect().await;

    // Alice's session was replaced by bob's (the client id names one session): she
    // starts afresh, and what was queued for her went with her session.
    let (mut alice, connack) =
        Client::connect_with(addr, persistent_login("phone", "alice", "wonderland")).await;
    assert_eq!(connack.code, ReasonCode::Success);
    assert!(
        !connack.session_present,
        "bob's session is not alice's either"
    );
    assert_silent(&mut alice, "her old queue is gone").await;
    alice.disconnect().await;

    // Her own fresh session resumes as usual.
    let (_alice, connack) =
        Client::connect_with(addr, persistent_login("phone", "alice", "wonderland")).await;
    assert!(connack.session_present);
}

#[tokio::test]
async fn queued_messages_are_checked_against_the_acl_when_sent() {
    let dir = tempfile::tempdir().expect("temp dir");
    let acl = write_file(dir.path(), "acl", OWN_TOPICS_ACL);
    let mut cfg = config();
    cfg.auth.acl_file = Some(acl.clone());
    // One message in flight, the next one queued behind it.
    cfg.limits.max_inflight = 1;
    let mut broker = start(cfg.clone()).await;
    let addr = broker.local_addr();
    let alice_login = || Connect {
        username: Some("alice".into()),
        ..connect_packet("alice-1", false)
    };

    let (mut alice, _) = Client::connect_with(addr, alice_login()).await;
    alice
        .subscribe(&[("private/alice/#", QoS::AtLeastOnce)])
        .await;
    alice.disconnect().await;
    wait_until("alice is gone", || broker.stats().clients_connected == 0).await;
    let (mut publisher, _) = Client::connect(addr, "pub", true).await;
    for (pkid, body) in [(1, "one"), (2, "two")] {
        publisher
            .publish(publish(
                "private/alice/secret",
                body,
                QoS::AtLeastOnce,
                pkid,
            ))
            .await;
    }
    let (mut alice, connack) = Client::connect_with(addr, alice_login()).await;
    assert!(connack.session_present);
    let first = alice.recv_publish().await;
    assert_eq!(payload(&first), "one", "in flight, not acknowledged");
    drop(alice);
    wait_until("alice is gone", || broker.stats().clients_connected == 1).await;

    // The ACL now lets alice read her public topics only.
    std::fs::write(
        &acl,
        OWN_TOPICS_ACL.replace(
            "topic read private/alice/#",
            "topic read private/alice/public/#",
        ),
    )
    .expect("ACL rewritten");
    broker.reload(cfg).expect("reloads");

    let (mut alice, connack) = Client::connect_with(addr, alice_login()).await;
    assert!(connack.session_present);
    publisher
        .publish(publish(
            "private/alice/public/news",
            "allowed",
            QoS::AtLeastOnce,
            3,
        ))
        .await;
    let got = alice.next_publish().await;
    assert_eq!(
        (payload(&got), got.dup),
        ("allowed".into(), false),
        "neither the message in flight nor the queued one is sent after the reload"
    );
    assert_silent(&mut alice, "nothing else").await;
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

#[tokio::test]
async fn unknown_users_take_as_long_as_known_ones() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cfg = config();
    cfg.auth.password_file = Some(password_file(dir.path(), &[("alice", "wonderland")]));
    cfg.auth.login_backoff.tracked = 0;
    let broker = start(cfg).await;
    let addr = broker.local_addr();
    let attempt = |user: &'static str| async move {
        let client = Client::tcp(addr).await;
        let started = Instant::now();
        let (_, connack) = client
            .handshake(login_packet("probe", Some(user), Some("guess")))
            .await;
        assert_eq!(connack.code, ReasonCode::BadUserNameOrPassword);
        started.elapsed()
    };
    // The first unknown user also makes the dummy hash.
    attempt("nobody").await;
    let (mut known, mut unknown) = (Vec::new(), Vec::new());
    for round in 0..15 {
        if round % 2 == 0 {
            known.push(attempt("alice").await);
            unknown.push(attempt("nobody").await);
        } else {
            unknown.push(attempt("nobody").await);
            known.push(attempt("alice").await);
        }
    }
    let (known, unknown) = (median(known), median(unknown));
    eprintln!("failed logins, median: known user {known:?}, unknown user {unknown:?}");
    assert!(
        unknown * 2 >= known && known * 2 >= unknown,
        "known user {known:?}, unknown user {unknown:?}"
    );
}

/// The CONNACK code of a login from `local`.
async fn login_from(local: [u8; 4], addr: SocketAddr, user: &str, password: &str) -> ReasonCode {
    let local = IpAddr::V4(Ipv4Addr::from(local));
    let client = Client::tcp_from(local, addr).await;
    let (_, connack) = client
        .handshake(login_packet("c", Some(user), Some(password)))
        .await;
    connack.code
}

#[tokio::test]
async fn failed_logins_back_off_per_address_and_per_user() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cfg: Config = config();
    cfg.auth.password_file = Some(password_file(
        dir.path(),
        &[("alice", "wonderland"), ("bob", "builder")],
    ));
    cfg.allow_anonymous = AnonymousPolicy::Never;
    // Long enough that no refusal period ends during the test.
    let backoff = &mut cfg.auth.login_backoff;
    backoff.after_failures = 3;
    backoff.delay = Duration::from_secs(60);
    backoff.max_delay = Duration::from_secs(120);
    let broker = start(cfg).await;
    let addr = broker.local_addr();
    use ReasonCode::{BadUserNameOrPassword, Success as Accepted};

    // Guesses from 127.0.0.2, two of them for a user that does not exist.
    for (user, guess) in [("mallory", "1"), ("alice", "2"), ("mallory", "3")] {
        assert_eq!(
            login_from([127, 0, 0, 2], addr, user, guess).await,
            BadUserNameOrPassword
        );
    }
    // That address is refused now, even with the right password.
    assert_eq!(
        login_from([127, 0, 0, 2], addr, "alice", "wonderland").await,
        BadUserNameOrPassword,
        "refused from the guessing address"
    );
    // Another address is not, nor are the users (alice failed once, mallory twice).
    assert_eq!(
        login_from([127, 0, 0, 1], addr, "alice", "wonderland").await,
        Accepted
    );
    assert_eq!(
        login_from([127, 0, 0, 1], addr, "bob", "builder").await,
        Accepted
    );

    // Guesses for one user from several addresses hold that user back, not the others.
    for (last, guess) in [(3, "a"), (4, "b"), (5, "c")] {
        assert_eq!(
            login_from([127, 0, 0, last], addr, "bob", guess).await,
            BadUserNameOrPassword
        );
    }
    assert_eq!(
        login_from([127, 0, 0, 1], addr, "bob", "builder").await,
        BadUserNameOrPassword,
        "bob is held back"
    );
    assert_eq!(
        login_from([127, 0, 0, 1], addr, "alice", "wonderland").await,
        Accepted,
        "another user from the same address is not"
    );
}
