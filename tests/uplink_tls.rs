//! `mqtts://` against a broker with a test CA (the workspace's own, and Mosquitto where
//! installed): server authentication, a client certificate the broker requires, a broker
//! signed by another CA, and `insecure`; over MQTT 3.1.1 and MQTT 5 (whose connections
//! the gateway makes itself).

mod common;

use std::path::{Path, PathBuf};

use common::*;
use fieldbridge::event::{Event, Qos};
use fieldbridge::store::{Store, StoreSettings};
use fieldbridge::uplink::{ClientCertificate, DeviceIdentity, Protocol, TlsSettings, Uplink};
use fieldbridge_testkit::Suite;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use tokio::sync::mpsc;

/// PEM files of a CA, and of a broker and a client certificate it signed.
struct Pki {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

fn make_pki(dir: &Path, name: &str) -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, format!("{name} test CA"));
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf = |sans: Vec<String>, common_name: &str| {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(sans).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        (params.signed_by(&key, &issuer).unwrap(), key)
    };
    let (server, server_key) = leaf(vec!["127.0.0.1".into()], "broker");
    let (client, client_key) = leaf(vec![], "d:myorg:boiler:boiler-1");
    let write = |file: &str, pem: String| {
        let path = dir.join(format!("{name}-{file}"));
        std::fs::write(&path, pem).unwrap();
        path
    };
    Pki {
        ca: write("ca.pem", ca_cert.pem()),
        server_cert: write("server.pem", server.pem()),
        server_key: write("server.key", server_key.serialize_pem()),
        client_cert: write("client.pem", client.pem()),
        client_key: write("client.key", client_key.serialize_pem()),
    }
}

/// A broker with a TLS listener that requires client certificates from `pki`'s CA,
/// and a plain listener for the test's subscriber.
fn tls_broker(kind: BrokerKind, dir: &Path, pki: &Pki, plain_port: u16) -> TestBroker {
    TestBroker::start(
        kind,
        dir,
        BrokerConfig {
            tls: Some(TlsListener {
                ca_file: pki.ca.clone(),
                cert_file: pki.server_cert.clone(),
                key_file: pki.server_key.clone(),
                plain_port,
            }),
            ..BrokerConfig::default()
        },
    )
}

async fn start(
    tls_port: u16,
    protocol: Protocol,
    tls: TlsSettings,
    data_dir: &Path,
) -> (Uplink, Store, mpsc::Sender<Event>) {
    let store = Store::open(StoreSettings::new(data_dir)).await.unwrap();
    let mut settings = uplink_settings(format!("mqtts://127.0.0.1:{tls_port}"));
    settings.protocol = protocol;
    settings.tls = tls;
    let device = device_identity("boiler-1", "boiler", None);
    let (sender, events) = mpsc::channel(16);
    let uplink = Uplink::start(settings, store.clone(), vec![device], events).unwrap();
    (uplink, store, sender)
}

async fn mqtts_with_a_ca_file_and_a_client_certificate(kind: BrokerKind, protocol: Protocol) {
    let tmp = tempfile::tempdir().unwrap();
    let pki = make_pki(tmp.path(), "good");
    let plain_port = free_port();
    let broker = tls_broker(kind, tmp.path(), &pki, plain_port);
    let subscriber = Subscriber::start(SubscriberConfig {
        port: plain_port,
        client_id: "tls-reader",
        filter: "iot-2/#",
        persistent: false,
        credentials: None,
    })
    .await;
    let tls = TlsSettings {
        ca_file: Some(pki.ca.clone()),
        cert_file: Some(pki.client_cert.clone()),
        key_file: Some(pki.client_key.clone()),
        insecure: false,
    };
    let (uplink, _store, sender) =
        start(broker.port, protocol, tls, &tmp.path().join("data")).await;
    for seq in 0..5 {
        sender
            .send(test_event("boiler-1", "status", seq, Qos::AtLeastOnce))
            .await
            .unwrap();
    }
    subscriber
        .wait_for("5 events over TLS", |m| m.len() >= 5)
        .await;
    check_complete_and_ordered(
        "boiler-1",
        &seqs_of(&subscriber.messages(), "boiler-1"),
        0..5,
    );
    uplink.shutdown().await;
}

async fn a_broker_signed_by_another_ca_is_refused_unless_insecure(
    kind: BrokerKind,
    protocol: Protocol,
) {
    let tmp = tempfile::tempdir().unwrap();
    let broker_pki = make_pki(tmp.path(), "broker");
    let other_pki = make_pki(tmp.path(), "other");
    let broker = tls_broker(kind, tmp.path(), &broker_pki, free_port());

    let tls = TlsSettings {
        ca_file: Some(other_pki.ca.clone()),
        cert_file: Some(broker_pki.client_cert.clone()),
        key_file: Some(broker_pki.client_key.clone()),
        insecure: false,
    };
    let (uplink, _store, sender) =
        start(broker.port, protocol, tls, &tmp.path().join("strict")).await;
    sender
        .send(test_event("boiler-1", "status", 0, Qos::AtLeastOnce))
        .await
        .unwrap();
    wait_status(&uplink, "boiler-1", "a certificate error", |s| {
        s.last_error
            .as_deref()
            .is_some_and(|e| e.contains("certificate"))
    })
    .await;
    assert_eq!(uplink.status("boiler-1").unwrap().borrow().connections, 0);
    uplink.shutdown().await;

    // insecure: true skips the chain check (and warns); the client certificate is
    // still presented, so the broker lets it in.
    let tls = TlsSettings {
        ca_file: None,
        cert_file: Some(broker_pki.client_cert.clone()),
        key_file: Some(broker_pki.client_key.clone()),
        insecure: true,
    };
    let (uplink, _store, _sender) =
        start(broker.port, protocol, tls, &tmp.path().join("insecure")).await;
    wait_status(&uplink, "boiler-1", "a connection", |s| s.connected).await;
    uplink.shutdown().await;
}

/// Devices with certificates of their own, the upstream settings giving none, and a
/// broker that requires client certificates: the device whose certificate the broker's
/// CA signed is let in and its events arrive; the one signed by another CA is refused
/// and its events stay queued.
async fn each_device_presents_its_own_certificate(kind: BrokerKind, protocol: Protocol) {
    let tmp = tempfile::tempdir().unwrap();
    let pki = make_pki(tmp.path(), "own");
    let stranger = make_pki(tmp.path(), "stranger");
    let plain_port = free_port();
    let broker = tls_broker(kind, tmp.path(), &pki, plain_port);
    let subscriber = Subscriber::start(SubscriberConfig {
        port: plain_port,
        client_id: "device-cert-reader",
        filter: "iot-2/#",
        persistent: false,
        credentials: None,
    })
    .await;
    let store = Store::open(StoreSettings::new(tmp.path().join("data")))
        .await
        .unwrap();
    let mut settings = uplink_settings(format!("mqtts://127.0.0.1:{}", broker.port));
    settings.protocol = protocol;
    settings.tls = TlsSettings {
        ca_file: Some(pki.ca.clone()),
        ..TlsSettings::default()
    };
    let with_certificate = |id: &str, pki: &Pki| DeviceIdentity {
        tls: Some(ClientCertificate {
            cert_file: pki.client_cert.clone(),
            key_file: pki.client_key.clone(),
        }),
        ..device_identity(id, "pump", None)
    };
    let devices = vec![
        with_certificate("pump-1", &pki),
        with_certificate("pump-2", &stranger),
    ];
    let (sender, events) = mpsc::channel(16);
    let uplink = Uplink::start(settings, store.clone(), devices, events).unwrap();
    for device in ["pump-1", "pump-2"] {
        for seq in 0..3 {
            sender
                .send(test_event(device, "status", seq, Qos::AtLeastOnce))
                .await
                .unwrap();
        }
    }
    subscriber
        .wait_for("pump-1's events", |m| seqs_of(m, "pump-1").len() >= 3)
        .await;
    wait_status(&uplink, "pump-2", "a refused handshake", |s| {
        s.last_error.is_some()
    })
    .await;
    assert_eq!(uplink.status("pump-2").unwrap().borrow().connections, 0);
    assert!(seqs_of(&subscriber.messages(), "pump-2").is_empty());
    let stats = store.stats().await.unwrap();
    let queued = |id: &str| {
        stats
            .iter()
            .find(|s| s.device_id == id)
            .map_or(0, |s| s.depth)
    };
    assert_eq!(queued("pump-2"), 3, "{stats:?}");
    uplink.shutdown().await;
}

fn main() -> std::process::ExitCode {
    let mut suite = Suite::new();
    for (version, protocol) in [("mqtt311", Protocol::V311), ("mqtt5", Protocol::V5)] {
        broker_test(
            &mut suite,
            &format!("{version}::mqtts_with_a_ca_file_and_a_client_certificate"),
            move |kind| mqtts_with_a_ca_file_and_a_client_certificate(kind, protocol),
        );
        broker_test(
            &mut suite,
            &format!("{version}::a_broker_signed_by_another_ca_is_refused_unless_insecure"),
            move |kind| a_broker_signed_by_another_ca_is_refused_unless_insecure(kind, protocol),
        );
        broker_test(
            &mut suite,
            &format!("{version}::each_device_presents_its_own_certificate"),
            move |kind| each_device_presents_its_own_certificate(kind, protocol),
        );
    }
    suite.run()
}
