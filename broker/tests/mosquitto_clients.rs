//! The broker with Mosquitto's command-line clients (`mosquitto_pub`, `mosquitto_sub`):
//! an independent implementation of the client side. Where they are not installed the
//! tests are reported as ignored (with CI=true they fail instead).

#[path = "support/mod.rs"]
mod support;

use fieldbridge_broker::config::AnonymousPolicy;
use fieldbridge_mqtt::codec::QoS;
use fieldbridge_testkit::{Need, Suite};
use tokio::process::Command;

use support::{config, publish, run, start, wait_until, Client, Process, DEADLINE};

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

/// The `passwd` subcommand writes a file the broker (and Mosquitto's clients) can use.
async fn passwd_command_and_mosquitto_clients_with_credentials() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("passwd");
    let file_arg = file.to_str().expect("utf-8 path");
    let broker_bin = env!("CARGO_BIN_EXE_fieldbridge-broker");
    let (ok, _, stderr) = run(broker_bin, &["passwd", "-b", file_arg, "device", "s3cret"]).await;
    assert!(ok, "{stderr}");
    let (ok, _, stderr) = run(broker_bin, &["passwd", "-b", file_arg, "other", "x"]).await;
    assert!(ok, "{stderr}");
    let (ok, _, stderr) = run(broker_bin, &["passwd", "-D", file_arg, "other"]).await;
    assert!(ok, "{stderr}");
    let (ok, _, stderr) = run(broker_bin, &["passwd", "-D", file_arg, "other"]).await;
    assert!(!ok && stderr.contains("no user"), "{stderr}");

    let mut cfg = config();
    cfg.auth.password_file = Some(file);
    cfg.allow_anonymous = AnonymousPolicy::Never;
    let broker = start(cfg).await;
    let port = broker.local_addr().port().to_string();
    let (ok, _, stderr) = run(
        "mosquitto_pub",
        &[
            "-p", &port, "-u", "device", "-P", "s3cret", "-t", "t", "-m", "m", "-q", "1",
        ],
    )
    .await;
    assert!(ok, "right password: {stderr}");
    let (ok, _, stderr) = run(
        "mosquitto_pub",
        &[
            "-p", &port, "-u", "device", "-P", "wrong", "-t", "t", "-m", "m",
        ],
    )
    .await;
    assert!(!ok, "wrong password refused: {stderr}");
    let (ok, _, _) = run(
        "mosquitto_pub",
        &["-p", &port, "-u", "other", "-P", "x", "-t", "t", "-m", "m"],
    )
    .await;
    assert!(!ok, "deleted user refused");
}

fn main() -> std::process::ExitCode {
    let mut suite = Suite::new();
    let needs = [Need::mosquitto_clients()];
    suite.async_test(
        "mosquitto_clients_publish_and_subscribe",
        &needs,
        mosquitto_clients_publish_and_subscribe,
    );
    suite.async_test(
        "mosquitto_sub_receives_live_messages",
        &needs,
        mosquitto_sub_receives_live_messages,
    );
    suite.async_test(
        "passwd_command_and_mosquitto_clients_with_credentials",
        &needs,
        passwd_command_and_mosquitto_clients_with_credentials,
    );
    suite.run()
}
