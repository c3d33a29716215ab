//! The gateway, unchanged, against the companion broker in platform mode: a device
//! registered with `fieldbridge-broker device add`, the gateway configured with its token
//! and the platform topic scheme, a Modbus simulator behind it. Events reach an
//! application on the full topic; an application's command is written to the simulator
//! and its `cmd-result` comes back.
//!
//! The broker binary is the one `cargo test --workspace` builds beside this test.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{broker_binary, spawn_broker, spawn_gateway, Subscriber, SubscriberConfig, DEADLINE};
use fieldbridge_sim::{self as sim, SimBus, SimSlave};
use rumqttc::{AsyncClient, MqttOptions, QoS};
use serde_json::{json, Value};

/// Runs `fieldbridge-broker ARGS` to completion; returns its standard output's last line.
fn cli(binary: &Path, args: &[&str]) -> String {
    let output = Command::new(binary)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("fieldbridge-broker runs");
    assert!(
        output.status.success(),
        "fieldbridge-broker {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .last()
        .expect("a last line")
        .to_owned()
}

/// Registers boiler/boiler-1 and the applications dash and ops; returns the device token
/// and the applications' (API key, token).
async fn register(config: &Path) -> (String, (String, String), (String, String)) {
    let app_credentials = |line: String| {
        let (key, token) = line.split_once(' ').expect("<api key> <token>");
        (key.to_owned(), token.to_owned())
    };
    let binary = broker_binary();
    let config = config.to_str().expect("UTF-8 path");
    let token = cli(
        &binary,
        &[
            "device", "add", "--config", config, "--type", "boiler", "--id", "boiler-1",
        ],
    );
    let dash = app_credentials(cli(
        &binary,
        &["app", "add", "--config", config, "--id", "dash"],
    ));
    let ops = app_credentials(cli(
        &binary,
        &["app", "add", "--config", config, "--id", "ops"],
    ));
    (token, dash, ops)
}

fn write(dir: &Path, name: &str, text: String) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write");
    path
}

fn f32_words(value: f32) -> [u16; 2] {
    let bits = value.to_bits();
    [(bits >> 16) as u16, bits as u16]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_against_the_platform_broker() {
    let dir = tempfile::tempdir().expect("temp dir");
    let broker_config = write(
        dir.path(),
        "broker.yaml",
        "listeners: [{ bind: \"127.0.0.1:0\" }]\nsys_interval: 0\nplatform: { org: acme, registry: registry.db }\n".into(),
    );
    let (token, dash, ops) = register(&broker_config).await;
    let (_broker, addr) = spawn_broker(&broker_config);

    let plc = SimSlave::default();
    plc.set_holding(0, &f32_words(21.5));
    let (modbus_port, _) = sim::spawn_tcp(SimBus::new([(1, plc.clone())]))
        .await
        .expect("Modbus simulator");

    // The application side: events and command results, and a separate command sender.
    let events = Subscriber::start(SubscriberConfig {
        port: addr.port(),
        client_id: "a:acme:dash",
        filter: "iot-2/type/boiler/id/boiler-1/evt/+/fmt/json",
        persistent: false,
        credentials: Some((&dash.0, &dash.1)),
    })
    .await;

    let gateway_config = write(
        dir.path(),
        "gateway.yaml",
        format!(
            r#"
gateway: {{ data_dir: "{data}" }}
upstream:
  url: mqtt://127.0.0.1:{port}
  org: acme
  topic_scheme: platform
buses: [{{ name: plc, kind: tcp, host: 127.0.0.1, port: {modbus_port}, timeout: 500ms }}]
devices:
  - id: boiler-1
    type: boiler
    token: "{token}"
    bus: plc
    unit: 1
    poll: 200ms
    event: status
    qos: 1
    registers:
      - {{ name: temperature, kind: holding, address: 0, type: f32 }}
    commands:
      - {{ name: setpoint, kind: holding, address: 20, type: f32, min: 5, max: 90 }}
"#,
            data = dir.path().join("data").display(),
            port = addr.port(),
        ),
    );
    let log = dir.path().join("gateway.log");
    let _gateway = spawn_gateway(&gateway_config, &log);
    let gateway_log = || std::fs::read_to_string(&log).unwrap_or_default();

    // Events arrive on the application's full topic.
    let parsed = |payload: &[u8]| serde_json::from_slice::<Value>(payload).unwrap_or(Value::Null);
    let deadline = Instant::now() + DEADLINE;
    loop {
        let got = events.messages().iter().any(|m| {
            m.topic == "iot-2/type/boiler/id/boiler-1/evt/status/fmt/json"
                && parsed(&m.payload)["d"]["temperature"] == json!(21.5)
        });
        if got {
            break;
        }
        assert!(Instant::now() < deadline, "no event: {}", gateway_log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A command from another application is written and answered.
    let mut options = MqttOptions::new("a:acme:ops", addr.ip().to_string(), addr.port());
    options.set_credentials(ops.0.clone(), ops.1.clone());
    let (commands, mut eventloop) = AsyncClient::new(options, 16);
    let driver = tokio::spawn(async move {
        loop {
            if eventloop.poll().await.is_err() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });
    let result_of = |req_id: &str| {
        events
            .messages()
            .iter()
            .filter(|m| m.topic == "iot-2/type/boiler/id/boiler-1/evt/cmd-result/fmt/json")
            .map(|m| parsed(&m.payload))
            .find(|result| result["reqId"] == req_id)
    };
    // The gateway subscribes to commands some time after connecting: send until answered.
    let deadline = Instant::now() + DEADLINE;
    let mut attempt = 0u32;
    let result = loop {
        assert!(
            Instant::now() < deadline,
            "no command result: {}",
            gateway_log()
        );
        let req_id = format!("setpoint-{attempt}");
        attempt += 1;
        commands
            .publish(
                "iot-2/type/boiler/id/boiler-1/cmd/setpoint/fmt/json",
                QoS::AtLeastOnce,
                false,
                json!({"d": {"value": 42.5}, "reqId": req_id}).to_string(),
            )
            .await
            .expect("command queued");
        let answer_by = Instant::now() + Duration::from_secs(2);
        let mut answer = result_of(&req_id);
        while answer.is_none() && Instant::now() < answer_by {
            tokio::time::sleep(Duration::from_millis(20)).await;
            answer = result_of(&req_id);
        }
        if let Some(result) = answer {
            break result;
        }
    };
    assert_eq!(result["rc"], 200, "{result}");
    assert_eq!(result["d"]["command"], "setpoint");
    assert_eq!(plc.holding(20, 2), f32_words(42.5));
    driver.abort();
}
