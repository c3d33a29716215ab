//! The `fieldbridge-broker` binary: command line, SIGTERM.

use std::time::Duration;

use crate::support::{run, wait_until, write_file, Client, Process, DEADLINE};

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
