//! The Prometheus endpoint of the `fieldbridge-broker` binary (`metrics:` in the config).

use std::net::SocketAddr;

use fieldbridge_mqtt::codec::QoS;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{publish, wait_until, write_file, Client, Process, DEADLINE};

/// `GET /metrics`: the body of a 200 answer.
async fn scrape(addr: SocketAddr) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("metrics listener");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: broker\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    tokio::time::timeout(DEADLINE, stream.read_to_string(&mut response))
        .await
        .expect("answer within the deadline")
        .unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("HTTP answer");
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{response}");
    body.to_owned()
}

fn sample(body: &str, name: &str) -> f64 {
    body.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no sample {name} in:\n{body}"))
}

#[tokio::test]
async fn metrics_count_connections_messages_and_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_file(
        dir.path(),
        "broker.yaml",
        "listeners: [{ bind: \"127.0.0.1:0\" }]\nmetrics: 127.0.0.1:0\nsys_interval: 0s\n",
    );
    let process = Process::spawn(&["--config", config.to_str().unwrap()]).await;
    let lines = process.stderr.clone();
    let metrics_addr = || {
        lines
            .lock()
            .iter()
            .find_map(|line| line.strip_prefix("metrics on ")?.parse::<SocketAddr>().ok())
    };
    wait_until("the metrics address is printed", || {
        metrics_addr().is_some()
    })
    .await;
    let metrics_addr = metrics_addr().unwrap();

    let idle = scrape(metrics_addr).await;
    assert_eq!(sample(&idle, "fieldbridge_broker_clients_connected"), 0.0);
    assert_eq!(
        sample(&idle, "fieldbridge_broker_messages_received_total"),
        0.0
    );

    let (mut subscriber, _) = Client::connect(process.addr, "sub", true).await;
    subscriber
        .subscribe(&[("metered/#", QoS::AtLeastOnce)])
        .await;
    let (mut publisher, _) = Client::connect(process.addr, "pub", true).await;
    for pkid in 1..=3 {
        publisher
            .publish(publish("metered/t", "0123456789", QoS::AtLeastOnce, pkid))
            .await;
        let delivered = subscriber.recv_publish().await;
        subscriber.ack(&delivered).await;
    }

    // Connections add their counts in batches: wait until all three messages show.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let body = loop {
        let body = scrape(metrics_addr).await;
        if sample(&body, "fieldbridge_broker_messages_sent_total") >= 3.0 {
            break body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "sent messages never reached 3:\n{body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(sample(&body, "fieldbridge_broker_clients_connected"), 2.0);
    assert_eq!(
        sample(&body, "fieldbridge_broker_messages_received_total"),
        3.0
    );
    assert_eq!(sample(&body, "fieldbridge_broker_subscriptions"), 1.0);
    // Each PUBLISH carries at least its topic and payload (19 bytes).
    assert!(sample(&body, "fieldbridge_broker_bytes_received_total") >= 3.0 * 19.0);
    assert!(sample(&body, "fieldbridge_broker_bytes_sent_total") >= 3.0 * 19.0);
    assert!(body.contains("# TYPE fieldbridge_broker_messages_received_total counter"));

    let mut not_found = TcpStream::connect(metrics_addr).await.unwrap();
    not_found
        .write_all(b"GET /other HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    not_found.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 404"), "{response}");
}
