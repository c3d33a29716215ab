//! The `fieldbridge-broker` binary: command line, Mosquitto's clients, SIGTERM.

use std::time::Duration;

use fieldbridge_mqtt::codec::QoS;
use tokio::process::Command;

use crate::support::{
    config, publish, run, start, wait_until, write_file, Client, Process, DEADLINE,
};

#[tokio::test]
async fn mosquitto_clients_publish_and_subscribe() {
    let process = Process::spawn(&["--listen", "127.0.0.1:0"]).await;
    let port = process.addr.port().to_string();
    for qos in ["0", "1", "2"] {
        let topic = format!("mosq/{qos}");
        let (ok, _, stderr) = run(
            "mosquitto_pub",
            &["-p", &port, "-t", &topic, "-m", "retained", "-r", "-q", qos],
        )
        .await;
        assert!(ok, "{stderr}");
    }
    let (ok, stdout, stderr) = run(
        "mosquitto_sub",
        &[
            "-p", &port, "-t", "mosq/#", "-q", "2", "-C", "3", "-v", "-W", "15",
        ],
    )
    .await;
    assert!(ok, "{stderr}");
    let mut lines: Vec<_> = stdout.lines().collect();
    lines.sort();
    assert_eq!(
        lines,
        ["mosq/0 retained", "mosq/1 retained", "mosq/2 retained"]
    );
}

/// Live messages to mosquitto_sub, published once the broker shows its subscription.
#[tokio::test]
async fn mosquitto_sub_receives_live_messages() {
    let broker = start(config()).await;
    let port = broker.local_addr().port().to_string();
    let sub = Command::new("mosquitto_sub")
        .args([
            "-p", &port, "-t", "live/#", "-q", "2", "-C", "2", "-W", "15",
        ])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("mosquitto_sub runs");
    wait_until("mosquitto_sub has subscribed", || {
        broker.stats().subscriptions == 1
    })
    .await;
    let (mut publisher, _) = Client::connect(broker.local_addr(), "pub", true).await;
    publisher
        .publish(publish("live/a", "first", QoS::ExactlyOnce, 1))
        .await;
    publisher
        .publish(publish("live/b", "second", QoS::AtLeastOnce, 2))
        .await;
    let output = tokio::time::timeout(DEADLINE, sub.wait_with_output())
        .await
        .expect("exits")
        .expect("output");
    assert!(output.status.success());
    // mosquitto_sub prints a QoS 2 message once released, so the order of lines may differ.
    let mut lines: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    lines.sort();
    assert_eq!(lines, ["first", "second"]);
}

#[tokio::test]
async fn sigterm_stops_the_broker_cleanly() {
    let process = Process::spawn(&["--listen", "127.0.0.1:0"]).await;
    let (mut client, _) = Client::connect(process.addr, "c", true).await;
    client.ping().await;
    process.terminate();
    client.expect_closed().await;
    let mut child = process.child;
    let status = tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .expect("exits soon after SIGTERM")
        .expect("status");
    assert!(status.success(), "{status}");
    let stderr = process.stderr.clone();
    wait_until("the broker logs its stop", || {
        stderr
            .lock()
            .iter()
            .any(|line| line.contains("broker stopped"))
    })
    .await;
}

#[tokio::test]
async fn config_errors_name_the_file_key_and_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = write_file(dir.path(), "broker.yaml", "limits:\n  max_inflight: lots\n");
    let (ok, _, stderr) = run(
        env!("CARGO_BIN_EXE_fieldbridge-broker"),
        &["--config", file.to_str().expect("utf-8")],
    )
    .await;
    assert!(!ok);
    assert!(
        stderr.contains("broker.yaml")
            && stderr.contains("limits.max_inflight")
            && stderr.contains("line 2"),
        "{stderr}"
    );

    let file = write_file(
        dir.path(),
        "tls.yaml",
        "listeners: [{ bind: \"127.0.0.1:0\", protocol: mqtts }]\n",
    );
    let (ok, _, stderr) = run(
        env!("CARGO_BIN_EXE_fieldbridge-broker"),
        &["--config", file.to_str().expect("utf-8")],
    )
    .await;
    assert!(!ok);
    assert!(
        stderr.contains("tls.yaml") && stderr.contains("cert_file"),
        "{stderr}"
    );
}

#[tokio::test]
async fn config_file_listeners_and_cli_listeners_together() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = write_file(
        dir.path(),
        "broker.yaml",
        "listeners:\n  - bind: \"127.0.0.1:0\"\nsys_interval: 0\n",
    );
    let process = Process::spawn(&[
        "--config",
        file.to_str().expect("utf-8"),
        "--listen",
        "127.0.0.1:0",
    ])
    .await;
    let (mut client, _) = Client::connect(process.addr, "first", true).await;
    client.ping().await;
    let addresses: Vec<String> = process
        .stderr
        .lock()
        .iter()
        .filter_map(|line| line.strip_prefix("listening on ").map(str::to_owned))
        .collect();
    // The second line may still be on its way: wait for it.
    let mut addresses = addresses;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while addresses.len() < 2 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        addresses = process
            .stderr
            .lock()
            .iter()
            .filter_map(|line| line.strip_prefix("listening on ").map(str::to_owned))
            .collect();
    }
    assert_eq!(addresses.len(), 2, "{addresses:?}");
    let second = addresses[1].parse().expect("an address");
    let (mut other, _) = Client::connect(second, "second", true).await;
    other.ping().await;
}
