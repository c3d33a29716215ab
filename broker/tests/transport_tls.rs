//! `mqtts` listeners with a test CA made in the test: TLS 1.2 and 1.3 clients, a client
//! trusting another CA, an expired server certificate, client certificates (required,
//! from another CA, expired), and Mosquitto's `mosquitto_sub --cafile`.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use fieldbridge_broker::config::{AnonymousPolicy, ListenerConfig, ListenerProtocol};
use fieldbridge_broker::{Config, RunningBroker};
use fieldbridge_mqtt::codec::{Property, QoS, ReasonCode};
use fieldbridge_testkit::{Need, Suite};
use support::pki::{connect, Ca, ClientTls, Leaf, Validity};
use support::{
    connect5_packet, granted, login_packet, props, publish_with, text, Client, DEADLINE,
};
use tokio_rustls::rustls::{version, SupportedProtocolVersion};

fn tls_listener(server: &Leaf, client_ca: Option<&Path>) -> ListenerConfig {
    ListenerConfig {
        protocol: ListenerProtocol::Mqtts,
        cert_file: Some(server.cert_file.clone()),
        key_file: Some(server.key_file.clone()),
        client_ca_file: client_ca.map(Path::to_path_buf),
        ..ListenerConfig::mqtt(SocketAddr::from(([127, 0, 0, 1], 0)))
    }
}

/// A broker with a TLS listener first and a plain one second.
async fn broker(listener: ListenerConfig, anonymous: AnonymousPolicy) -> RunningBroker {
    let config = Config {
        listeners: vec![
            listener,
            ListenerConfig::mqtt(SocketAddr::from(([127, 0, 0, 1], 0))),
        ],
        allow_anonymous: anonymous,
        sys_interval: Duration::ZERO,
        ..Config::default()
    };
    support::start(config).await
}

async fn mqtt_over_tls(addr: SocketAddr, tls: &ClientTls<'_>, client_id: &str) -> Client {
    let stream = connect(addr, tls).await.expect("TLS handshake");
    let (client, connack) = Client::over(stream)
        .handshake(login_packet(client_id, None, None))
        .await;
    assert_eq!(connack.code, ReasonCode::Success, "{client_id}");
    client
}

/// Whether MQTT works over a TLS connection: the handshake, then a CONNACK. Failures of
/// client certificates show in TLS 1.3 only when the client reads.
async fn tls_connect_works(addr: SocketAddr, tls: &ClientTls<'_>) -> Result<(), String> {
    let stream = connect(addr, tls)
        .await
        .map_err(|error| error.to_string())?;
    let mut client = Client::over(stream);
    client
        .send(fieldbridge_mqtt::codec::Packet::Connect(Box::new(
            login_packet("probe", None, None),
        )))
        .await;
    match client.try_recv(DEADLINE).await {
        Ok(fieldbridge_mqtt::codec::Packet::ConnAck(_)) => Ok(()),
        other => Err(format!("{other:?}")),
    }
}

async fn mqtts_with_tls12_and_tls13_clients() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = Ca::new(dir.path(), "good");
    let server = ca.server(Validity::Current);
    let broker = broker(tls_listener(&server, None), AnonymousPolicy::Loopback).await;
    let tls_addr = broker.local_addrs()[0];
    let plain_addr = broker.local_addrs()[1];

    const TLS13: &[&SupportedProtocolVersion] = &[&version::TLS13];
    const TLS12: &[&SupportedProtocolVersion] = &[&version::TLS12];
    for (name, versions) in [("tls13", TLS13), ("tls12", TLS12)] {
        let tls = ClientTls {
            versions,
            ..ClientTls::trusting(&ca.ca_file)
        };
        let mut subscriber = mqtt_over_tls(tls_addr, &tls, &format!("sub-{name}")).await;
        assert_eq!(
            subscriber
                .subscribe(&[("secure/#", QoS::AtLeastOnce)])
                .await,
            [granted(QoS::AtLeastOnce)]
        );
        // From a plain client to the TLS one, and back.
        let mut plain = Client::log_in(plain_addr, &format!("plain-{name}"), None, None).await;
        plain.subscribe(&[("reply/#", QoS::AtLeastOnce)]).await;
        plain
            .publish_to("secure/x", name.as_bytes(), QoS::AtLeastOnce, false)
            .await;
        assert_eq!(text(&subscriber.next_publish().await), name);
        subscriber
            .publish_to("reply/x", b"over TLS", QoS::AtLeastOnce, false)
            .await;
        assert_eq!(text(&plain.next_publish().await), "over TLS");
        subscriber.disconnect().await;
    }
}

async fn clients_refuse_a_wrong_ca_and_an_expired_certificate() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = Ca::new(dir.path(), "good");
    let other = Ca::new(dir.path(), "other");
    let server = ca.server(Validity::Current);
    let good = broker(tls_listener(&server, None), AnonymousPolicy::Loopback).await;
    let error = connect(good.local_addr(), &ClientTls::trusting(&other.ca_file))
        .await
        .expect_err("a server from another CA");
    assert!(error.to_string().contains("UnknownIssuer"), "{error}");

    let expired = ca.server(Validity::Expired);
    let outdated = broker(tls_listener(&expired, None), AnonymousPolicy::Loopback).await;
    let error = connect(outdated.local_addr(), &ClientTls::trusting(&ca.ca_file))
        .await
        .expect_err("an expired server certificate");
    assert!(
        error.to_string().to_lowercase().contains("expired"),
        "{error}"
    );
}

async fn client_certificates_from_the_ca_authenticate() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = Ca::new(dir.path(), "good");
    let other = Ca::new(dir.path(), "other");
    let server = ca.server(Validity::Current);
    let device = ca.leaf("device", &["device-1"], Validity::Current);
    let expired = ca.leaf("expired", &["device-2"], Validity::Expired);
    let stranger = other.leaf("stranger", &["device-3"], Validity::Current);
    // No anonymous clients anywhere: only the certificate lets a client in.
    let broker = broker(
        tls_listener(&server, Some(&ca.ca_file)),
        AnonymousPolicy::Never,
    )
    .await;
    let addr = broker.local_addr();

    let with = |identity| ClientTls {
        identity,
        ..ClientTls::trusting(&ca.ca_file)
    };
    tls_connect_works(addr, &with(Some(&device)))
        .await
        .expect("a certificate from the CA");
    for (what, identity) in [
        ("no certificate", None),
        ("an expired certificate", Some(&expired)),
        ("a certificate from another CA", Some(&stranger)),
    ] {
        assert!(
            tls_connect_works(addr, &with(identity)).await.is_err(),
            "{what} accepted"
        );
    }
    // The plain listener still refuses anonymous clients.
    assert_eq!(
        Client::attempt(broker.local_addrs()[1], login_packet("anon", None, None)).await,
        ReasonCode::NotAuthorized
    );
    // An MQTT 5 client with the certificate: CONNACK and a round trip in 5.
    let stream = connect(addr, &with(Some(&device))).await.expect("TLS");
    let (mut client, connack) = Client::over(stream)
        .handshake(connect5_packet("device-1", true))
        .await;
    assert_eq!(connack.code, ReasonCode::Success);
    client.subscribe(&[("devices/1/#", QoS::AtLeastOnce)]).await;
    let message = publish_with(
        "devices/1/t",
        "21.5",
        QoS::AtLeastOnce,
        1,
        props([Property::PayloadFormatIndicator(1)]),
    );
    assert_eq!(client.publish_acked(message).await, ReasonCode::Success);
    let got = client.next_publish().await;
    assert_eq!(got.properties.payload_format_indicator(), Some(&1));
    client.disconnect().await;
    // An MQTT 5 client without one gets no session at all.
    assert!(
        tls_connect_works(addr, &ClientTls::trusting(&ca.ca_file))
            .await
            .is_err(),
        "no certificate accepted"
    );
}

async fn mosquitto_sub_with_cafile() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = Ca::new(dir.path(), "good");
    let other = Ca::new(dir.path(), "other");
    let server = ca.server(Validity::Current);
    let broker = broker(tls_listener(&server, None), AnonymousPolicy::Loopback).await;
    let tls_port = broker.local_addr().port().to_string();
    let mut publisher = Client::log_in(broker.local_addrs()[1], "publisher", None, None).await;
    // Retained: there when mosquitto_sub subscribes, whenever that is.
    publisher
        .publish_to("secure/greeting", b"hello over TLS", QoS::AtLeastOnce, true)
        .await;

    let sub = |ca_file: &Path| {
        tokio::process::Command::new("mosquitto_sub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &tls_port,
                "-t",
                "secure/#",
                "-C",
                "1",
            ])
            .arg("--cafile")
            .arg(ca_file)
            .args(["-W", "20"])
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output()
    };
    let output = tokio::time::timeout(DEADLINE, sub(&ca.ca_file))
        .await
        .expect("mosquitto_sub finishes")
        .expect("mosquitto_sub runs (mosquitto-clients installed?)");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "hello over TLS"
    );

    let output = tokio::time::timeout(DEADLINE, sub(&other.ca_file))
        .await
        .expect("mosquitto_sub finishes")
        .expect("mosquitto_sub runs");
    assert!(!output.status.success(), "the wrong CA was accepted");
    assert!(output.stdout.is_empty());
}

fn unreadable_certificate_files_stop_the_start() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = Leaf {
        cert_file: dir.path().join("missing.pem"),
        key_file: dir.path().join("missing.key"),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let config = Config {
        listeners: vec![tls_listener(&missing, None)],
        ..Config::default()
    };
    let error = runtime
        .block_on(
            fieldbridge_broker::Broker::new(config)
                .expect("valid config")
                .start(),
        )
        .expect_err("missing files");
    assert!(error.to_string().contains("missing.pem"), "{error}");
}

fn main() -> std::process::ExitCode {
    let mut suite = Suite::new();
    suite.async_test(
        "mqtts_with_tls12_and_tls13_clients",
        &[],
        mqtts_with_tls12_and_tls13_clients,
    );
    suite.async_test(
        "clients_refuse_a_wrong_ca_and_an_expired_certificate",
        &[],
        clients_refuse_a_wrong_ca_and_an_expired_certificate,
    );
    suite.async_test(
        "client_certificates_from_the_ca_authenticate",
        &[],
        client_certificates_from_the_ca_authenticate,
    );
    suite.async_test(
        "mosquitto_sub_with_cafile",
        &[Need::mosquitto_clients()],
        mosquitto_sub_with_cafile,
    );
    suite.test(
        "unreadable_certificate_files_stop_the_start",
        &[],
        unreadable_certificate_files_stop_the_start,
    );
    suite.run()
}
