//! The service's stop: SIGTERM during a broker outage exits within 5 s, and every
//! queued event is delivered after the restart.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    broker_tests, BrokerConfig, BrokerKind, KillOnDrop, Subscriber, SubscriberConfig, TestBroker,
};
use fieldbridge_sim::{self as sim, SimBus, SimSlave};
use fieldbridge_testkit::Suite;

const BIN: &str = env!("CARGO_BIN_EXE_fieldbridge");

fn queued(config: &std::path::Path) -> u64 {
    let out = Command::new(BIN)
        .args(["queue", "--config"])
        .arg(config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    text.lines()
        .find(|l| l.starts_with("boiler-1 "))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no queue row for boiler-1 in:\n{text}"))
}

fn start(config: &std::path::Path) -> KillOnDrop {
    KillOnDrop(
        Command::new(BIN)
            .args(["run", "--config"])
            .arg(config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

async fn sigterm_during_an_outage_is_quick_and_loses_nothing(kind: BrokerKind) {
    let dir = tempfile::tempdir().unwrap();
    let plc = SimSlave::default();
    let (modbus_port, _) = sim::spawn_tcp(SimBus::new([(1, plc)])).await.unwrap();
    // The broker is down at first: events pile up in the queue.
    let mqtt_port = common::free_port();
    let config = dir.path().join("gateway.yaml");
    std::fs::write(
        &config,
        format!(
            r#"
gateway: {{ data_dir: "{data}" }}
upstream:
  url: mqtt://127.0.0.1:{mqtt_port}
  org: test
  topic_scheme: custom
  topics: {{ event: "fb/{{type}}/{{device}}/evt/{{event}}", command: "fb/{{type}}/{{device}}/cmd/{{command}}" }}
buses: [{{ name: plc, kind: tcp, host: 127.0.0.1, port: {modbus_port} }}]
devices:
  - {{ id: boiler-1, type: boiler, bus: plc, unit: 1, poll: 50ms, qos: 1, registers: [{{ name: t, kind: holding, address: 0, type: u16 }}] }}
"#,
            data = dir.path().join("data").display(),
        ),
    )
    .unwrap();
    let mut gateway = start(&config);
    common::wait_until_async("events queued during the outage", || async {
        std::path::Path::new(&dir.path().join("data/queue.db")).exists() && queued(&config) >= 20
    })
    .await;

    let stopping = Instant::now();
    common::signal(&gateway, "TERM");
    let status = loop {
        if let Some(status) = gateway.try_wait().unwrap() {
            break status;
        }
        assert!(
            stopping.elapsed() < Duration::from_secs(5),
            "the gateway did not exit within 5 s of SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status:?}");
    let kept = queued(&config);
    assert!(kept >= 20, "only {kept} events kept");

    // The broker comes up on that port; after a restart the queue drains fully.
    let mut broker = TestBroker::start(kind, dir.path(), BrokerConfig::default());
    broker.stop();
    broker.port = mqtt_port;
    broker.restart();
    let subscriber = Subscriber::start(SubscriberConfig {
        port: mqtt_port,
        client_id: "app",
        filter: "fb/boiler/boiler-1/evt/status",
        persistent: false,
        credentials: None,
    })
    .await;
    let gateway = start(&config);
    // The device keeps producing 20 events a second: with the queue's 200 ms commit
    // window the rows of the last commit are on their way and those acknowledged since
    // wait for the next one to be deleted (about 4 each), so "drained" means the backlog.
    common::wait_until_async("the queue to drain", || async { queued(&config) <= 12 }).await;
    subscriber
        .wait_for("every event kept across the stop", |m| {
            m.len() as u64 >= kept
        })
        .await;
    drop(gateway);
}

fn main() -> std::process::ExitCode {
    let mut suite = Suite::new();
    broker_tests!(suite; sigterm_during_an_outage_is_quick_and_loses_nothing);
    suite.run()
}
