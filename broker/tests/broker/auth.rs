//! Passwords, anonymous access, ACLs.

use std::net::SocketAddr;

use fieldbridge_broker::auth::set_password;
use fieldbridge_broker::config::{AnonymousPolicy, ListenerConfig};
use fieldbridge_mqtt::codec::{ConnectReturnCode, QoS, SubscribeReturnCode};

use crate::support::{
    config, connect_packet, login_packet, payload, publish, start, write_file, Client,
};

async fn login(
    addr: SocketAddr,
    client_id: &str,
    user: Option<&str>,
    password: Option<&str>,
) -> (Client, ConnectReturnCode) {
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
    assert_eq!(code, ConnectReturnCode::Accepted);
    alice.ping().await;
    let (mut wrong, code) = login(addr, "w", Some("alice"), Some("looking-glass")).await;
    assert_eq!(code, ConnectReturnCode::BadUserNameOrPassword);
    wrong.expect_closed().await;
    let (_, code) = login(addr, "u", Some("mallory"), Some("wonderland")).await;
    assert_eq!(code, ConnectReturnCode::BadUserNameOrPassword);
    let (_, code) = login(addr, "n", Some("alice"), None).await;
    assert_eq!(code, ConnectReturnCode::BadUserNameOrPassword);
    let (mut anonymous, code) = login(addr, "anon", None, None).await;
    assert_eq!(code, ConnectReturnCode::NotAuthorized);
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
    assert_eq!(code, ConnectReturnCode::Accepted);
    on_loopback.ping().await;
    // The same machine, through a listener that is not bound to loopback.
    let other = SocketAddr::from(([127, 0, 0, 1], wildcard_port));
    let (mut refused, code) = login(other, "there", None, None).await;
    assert_eq!(code, ConnectReturnCode::NotAuthorized);
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
    assert_eq!(code, ConnectReturnCode::Accepted);
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
            SubscribeReturnCode::Failure,
            SubscribeReturnCode::Success(QoS::AtMostOnce)
        ]
    );

    let (mut bob, _) = login(addr, "bob-1", Some("bob"), Some("x")).await;
    assert_eq!(
        bob.subscribe(&[("sensors/alice", QoS::AtMostOnce)]).await,
        vec![SubscribeReturnCode::Failure]
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
        vec![SubscribeReturnCode::Failure]
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
    assert_eq!(connack.code, ConnectReturnCode::NotAuthorized);
}
