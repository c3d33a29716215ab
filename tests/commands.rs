//! Commands end to end: an application publishes to a device's command topic on a real
//! broker (the workspace's own, and Mosquitto where installed), the `fieldbridge run`
//! binary writes the simulated register and answers with a `cmd-result` event.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    broker_tests, BrokerConfig, BrokerKind, Received, Subscriber, SubscriberConfig, TestBroker,
};
use fieldbridge_sim::{self as sim, SimBus, SimSlave};
use fieldbridge_testkit::Suite;
use rumqttc::{AsyncClient, MqttOptions, QoS};
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_fieldbridge");

/// A simulated PLC (unit 1) and a configured but absent unit 2 on one TCP bus.
async fn plc() -> (SimSlave, u16) {
    let plc = SimSlave::default();
    plc.set_holding(0, &[0x41A4, 0x0000]);
    let (port, _) = sim::spawn_tcp(SimBus::new([(1, plc.clone())]))
        .await
        .unwrap();
    (plc, port)
}

fn config(dir: &Path, broker: &TestBroker, modbus_port: u16) -> PathBuf {
    config_with(dir, broker, modbus_port, "")
}

/// [`config`] with `upstream_extra` (whole lines) added to the upstream section.
fn config_with(dir: &Path, broker: &TestBroker, modbus_port: u16, upstream_extra: &str) -> PathBuf {
    let path = dir.join("gateway.yaml");
    std::fs::write(
        &path,
        format!(
            r#"
gateway: {{ data_dir: "{data}" }}
upstream:
  url: {url}
  org: test
  topic_scheme: custom
  topics: {{ event: "fb/{{type}}/{{device}}/evt/{{event}}", command: "fb/{{type}}/{{device}}/cmd/{{command}}" }}
{upstream_extra}buses: [{{ name: plc, kind: tcp, host: 127.0.0.1, port: {modbus_port}, timeout: 300ms }}]
devices:
  - id: boiler-1
    type: boiler
    bus: plc
    unit: 1
    poll: 200ms
    qos: 0
    registers:
      - {{ name: temperature, kind: holding, address: 0, type: f32 }}
    commands:
      - {{ name: setpoint, kind: holding, address: 20, type: f32, min: 5, max: 90, readback: true }}
      - {{ name: mode, kind: holding, address: 22, type: u16, values: {{ off: 0, eco: 1, comfort: 2 }} }}
      - {{ name: pump, kind: coil, address: 3, type: bool }}
      - {{ name: beyond_map, kind: holding, address: 5000, type: u16 }}
  - id: boiler-2
    type: boiler
    bus: plc
    unit: 2
    poll: 200ms
    qos: 0
    registers:
      - {{ name: temperature, kind: holding, address: 0, type: f32 }}
    commands:
      - {{ name: setpoint, kind: holding, address: 20, type: f32 }}
"#,
            data = dir.join("data").display(),
            url = broker.url(),
        ),
    )
    .unwrap();
    path
}

struct Gateway(Child);

impl Gateway {
    fn start(config: &Path, log: &Path) -> Gateway {
        let child = Command::new(BIN)
            .args(["run", "--config"])
            .arg(config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap();
        Gateway(child)
    }

    fn stop(mut self) {
        common::signal(&self.0, "TERM");
        common::poll_blocking("the gateway to stop", Duration::from_millis(20), || {
            self.0.try_wait().unwrap()
        });
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The application side: publishes commands, reads results.
struct Application {
    client: AsyncClient,
    results: Subscriber,
    _task: tokio::task::JoinHandle<()>,
}

impl Application {
    async fn connect(port: u16) -> Application {
        let results = Subscriber::start(SubscriberConfig {
            port,
            client_id: "app-results",
            filter: "fb/+/+/evt/cmd-result",
            persistent: false,
            credentials: None,
        })
        .await;
        let mut options = MqttOptions::new("app-commands", "127.0.0.1", port);
        // Room for the oversized commands some tests send.
        options.set_max_packet_size(2 << 20, 2 << 20);
        let (client, mut eventloop) = AsyncClient::new(options, 64);
        let task = tokio::spawn(async move {
            loop {
                if eventloop.poll().await.is_err() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        });
        Application {
            client,
            results,
            _task: task,
        }
    }

    async fn send(&self, device: &str, command: &str, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(
                format!("fb/boiler/{device}/cmd/{command}"),
                QoS::ExactlyOnce,
                false,
                payload.into(),
            )
            .await
            .unwrap();
    }

    fn results_for(&self, req_id: &str) -> Vec<Value> {
        self.results
            .messages()
            .iter()
            .map(json_of)
            .filter(|v| v["reqId"] == req_id)
            .collect()
    }

    async fn result(&self, req_id: &str) -> Value {
        let result = self
            .results
            .first_matching(&format!("result of {req_id}"), |m| {
                json_of(m)["reqId"] == req_id
            })
            .await;
        json_of(&result)
    }

    /// Sends again the command that set `mode` to eco with reqId `once`.
    async fn repeat_once(&self) {
        self.send(
            "boiler-1",
            "mode",
            json!({"d": {"value": "eco"}, "reqId": "once"}).to_string(),
        )
        .await;
    }

    /// Sends a command and returns its result.
    async fn call(&self, device: &str, command: &str, value: Value, req_id: &str) -> Value {
        let payload = json!({ "d": { "value": value }, "reqId": req_id });
        self.send(device, command, payload.to_string()).await;
        self.result(req_id).await
    }
}

fn json_of(message: &Received) -> Value {
    serde_json::from_slice(&message.payload).unwrap()
}

fn f32_of(words: &[u16]) -> f32 {
    f32::from_bits((u32::from(words[0]) << 16) | u32::from(words[1]))
}

/// Waits until the gateway's command subscription is in place, by retrying a
/// command that writes nothing (an unknown one, answered 404) until it is answered.
async fn wait_until_listening(app: &Application) {
    let deadline = Instant::now() + common::DEADLINE;
    for attempt in 0.. {
        let req_id = format!("ping-{attempt}");
        app.send(
            "boiler-1",
            "ping",
            json!({"d": {"value": 0}, "reqId": req_id}).to_string(),
        )
        .await;
        let answered = tokio::time::timeout(Duration::from_secs(2), app.result(&req_id)).await;
        if answered.is_ok() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the gateway never answered a command"
        );
    }
}

async fn commands_write_registers_answer_and_refuse_bad_input(kind: BrokerKind) {
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::start(kind, dir.path(), BrokerConfig::default());
    let (plc, modbus_port) = plc().await;
    let config = config(dir.path(), &broker, modbus_port);
    let _gateway = Gateway::start(&config, &dir.path().join("gateway.log"));
    let app = Application::connect(broker.port).await;
    wait_until_listening(&app).await;

    // The round trip: written, read back, answered 200 with the same reqId.
    let result = app.call("boiler-1", "setpoint", json!(22.5), "r-ok").await;
    assert_eq!(result["rc"], 200, "{result}");
    assert_eq!(result["message"], "success");
    assert_eq!(result["d"]["command"], "setpoint");
    assert_eq!(result["d"]["value"], 22.5);
    assert_eq!(result["d"]["readback"], 22.5);
    assert_eq!(f32_of(&plc.holding(20, 2)), 22.5);

    let result = app
        .call("boiler-1", "mode", json!("comfort"), "r-enum")
        .await;
    assert_eq!(result["rc"], 200, "{result}");
    assert_eq!(plc.holding(22, 1), [2]);
    let result = app.call("boiler-1", "pump", json!(true), "r-coil").await;
    assert_eq!(result["rc"], 200, "{result}");
    assert!(plc.coil(3));

    // Bad input: answered, nothing written.
    let before = (plc.holding(20, 2), plc.holding(22, 1));
    for (command, payload, req_id, rc) in [
        ("setpoint", "not json at all".to_string(), None, 400),
        (
            "setpoint",
            json!({"d": {}, "reqId": "r-missing"}).to_string(),
            Some("r-missing"),
            400,
        ),
        (
            "setpoint",
            json!({"d": {"value": "warm"}, "reqId": "r-type"}).to_string(),
            Some("r-type"),
            400,
        ),
        (
            "setpoint",
            json!({"d": {"value": 95}, "reqId": "r-range"}).to_string(),
            Some("r-range"),
            400,
        ),
        (
            "mode",
            json!({"d": {"value": "turbo"}, "reqId": "r-enum-bad"}).to_string(),
            Some("r-enum-bad"),
            400,
        ),
        (
            "self_destruct",
            json!({"d": {"value": 1}, "reqId": "r-unknown"}).to_string(),
            Some("r-unknown"),
            404,
        ),
        (
            "temperature",
            json!({"d": {"value": 1}, "reqId": "r-readonly"}).to_string(),
            Some("r-readonly"),
            403,
        ),
        (
            "beyond_map",
            json!({"d": {"value": 1}, "reqId": "r-exception"}).to_string(),
            Some("r-exception"),
            500,
        ),
    ] {
        app.send("boiler-1", command, payload).await;
        if let Some(req_id) = req_id {
            let result = app.result(req_id).await;
            assert_eq!(result["rc"], rc, "{command} {req_id}: {result}");
            assert!(result["message"].as_str().is_some_and(|m| !m.is_empty()));
            if rc == 500 {
                let message = result["message"].as_str().unwrap();
                assert!(message.contains("exception"), "{message}");
            }
        } else {
            app.results
                .wait_for("the result of a payload that is not JSON", |messages| {
                    messages.iter().any(|m| {
                        let v: Value = serde_json::from_slice(&m.payload).unwrap();
                        v["reqId"].is_null() && v["rc"] == 400
                    })
                })
                .await;
        }
    }
    assert_eq!((plc.holding(20, 2), plc.holding(22, 1)), before);

    // A dead slave: 503 within the bus timeout (300 ms, plus queueing), while the
    // live device's readings keep flowing.
    let events = Subscriber::start(SubscriberConfig {
        port: broker.port,
        client_id: "app-events",
        filter: "fb/boiler/boiler-1/evt/status",
        persistent: false,
        credentials: None,
    })
    .await;
    let sent = Instant::now();
    let result = app.call("boiler-2", "setpoint", json!(30), "r-dead").await;
    assert_eq!(result["rc"], 503, "{result}");
    assert!(sent.elapsed() < Duration::from_secs(10));
    let seen = events.messages().len();
    events
        .wait_for("more readings of the live device", |m| m.len() >= seen + 3)
        .await;
}

async fn a_command_is_acted_on_once_per_req_id_even_across_a_restart(kind: BrokerKind) {
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::start(kind, dir.path(), BrokerConfig::default());
    let (plc, modbus_port) = plc().await;
    let config = config(dir.path(), &broker, modbus_port);
    let gateway = Gateway::start(&config, &dir.path().join("gateway.log"));
    let app = Application::connect(broker.port).await;
    wait_until_listening(&app).await;

    let result = app.call("boiler-1", "mode", json!("eco"), "once").await;
    assert_eq!(result["rc"], 200);
    assert_eq!(plc.holding(22, 1), [1]);
    // Someone changes the register locally; a repeat of the command must not undo it.
    plc.set_holding(22, &[7]);
    app.repeat_once().await;
    // Commands of a device are handled in order: once this one is answered, the
    // repeat has been seen (and ignored).
    assert_eq!(
        app.call("boiler-1", "setpoint", json!(40), "after-repeat")
            .await["rc"],
        200
    );
    assert_eq!(plc.holding(22, 1), [7]);
    assert_eq!(app.results_for("once").len(), 1);

    gateway.stop();
    let _gateway = Gateway::start(&config, &dir.path().join("gateway-2.log"));
    wait_until_listening(&app).await;
    app.repeat_once().await;
    assert_eq!(
        app.call("boiler-1", "setpoint", json!(41), "after-restart")
            .await["rc"],
        200
    );
    assert_eq!(
        plc.holding(22, 1),
        [7],
        "the repeat after a restart wrote again"
    );
    assert_eq!(app.results_for("once").len(), 1);
}

/// A command over the gateway's limit is answered 400; a packet over `max_inbound`
/// (which MQTT 3.1.1 cannot refuse) restarts the session clean instead of being
/// redelivered forever, and the device takes commands again.
async fn oversized_commands_are_refused_and_do_not_poison_the_session(kind: BrokerKind) {
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::start(kind, dir.path(), BrokerConfig::default());
    let (_plc, modbus_port) = plc().await;
    let config = config(dir.path(), &broker, modbus_port);
    let log = dir.path().join("gateway.log");
    let _gateway = Gateway::start(&config, &log);
    let app = Application::connect(broker.port).await;
    wait_until_listening(&app).await;

    let big = |req_id: &str, bytes: usize| {
        json!({"d": {"value": "x".repeat(bytes)}, "reqId": req_id}).to_string()
    };
    app.send("boiler-1", "setpoint", big("big", 200_000)).await;
    let result = app.result("big").await;
    assert_eq!(result["rc"], 400, "{result}");
    let message = result["message"].as_str().unwrap();
    assert!(message.starts_with("payload too large"), "{message}");

    app.send("boiler-1", "setpoint", big("huge", 600_000)).await;
    common::poll_blocking(
        "the oversized packet logged",
        Duration::from_millis(50),
        || {
            std::fs::read_to_string(&log)
                .unwrap()
                .contains("larger than upstream.max_inbound")
                .then_some(())
        },
    );
    wait_until_listening(&app).await;
    let result = app.call("boiler-1", "setpoint", json!(30.0), "after").await;
    assert_eq!(result["rc"], 200, "{result}");
    assert!(app.results_for("huge").is_empty());
    // The session was restarted once, not in a loop.
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        text.matches("larger than upstream.max_inbound").count(),
        1,
        "{text}"
    );
}

async fn managed_device_announces_itself_and_answers_management_requests(kind: BrokerKind) {
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::start(kind, dir.path(), BrokerConfig::default());
    let (_plc, modbus_port) = plc().await;
    let watcher = Subscriber::start(SubscriberConfig {
        port: broker.port,
        client_id: "app-watch",
        filter: "#",
        persistent: false,
        credentials: None,
    })
    .await;
    let path = dir.path().join("managed.yaml");
    std::fs::write(
        &path,
        format!(
            r#"
gateway: {{ data_dir: "{data}" }}
upstream: {{ url: {url}, org: test }}
buses: [{{ name: plc, kind: tcp, host: 127.0.0.1, port: {modbus_port}, timeout: 300ms }}]
devices:
  - {{ id: plc-1, type: plc, token: secret, bus: plc, unit: 1, poll: 200ms, managed: true,
      registers: [{{ name: temperature, kind: holding, address: 0, type: f32 }}] }}
"#,
            data = dir.path().join("data").display(),
            url = broker.url(),
        ),
    )
    .unwrap();
    let _gateway = Gateway::start(&path, &dir.path().join("gateway.log"));
    watcher
        .wait_for("the manage announcement", |m| {
            m.iter().any(|m| m.topic == "iotdevice-1/mgmt/manage")
        })
        .await;

    let (client, mut eventloop) =
        AsyncClient::new(MqttOptions::new("app-dm", "127.0.0.1", broker.port), 16);
    tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    let response = |req_id: &'static str| {
        let watcher = &watcher;
        async move {
            let response = watcher
                .first_matching(&format!("response {req_id}"), |m| {
                    m.topic == "iotdevice-1/response" && json_of(m)["reqId"] == req_id
                })
                .await;
            json_of(&response)
        }
    };
    let health_before = watcher
        .messages()
        .iter()
        .filter(|m| m.topic == "iot-2/evt/health/fmt/json")
        .count();
    for (topic, req_id, rc) in [
        ("iotdm-1/mgmt/initiate/device/reboot", "m-reboot", 202),
        ("iotdm-1/device/update", "m-update", 204),
        ("iotdm-1/mgmt/initiate/firmware/download", "m-firmware", 501),
    ] {
        client
            .publish(
                topic,
                QoS::AtLeastOnce,
                false,
                json!({ "reqId": req_id }).to_string(),
            )
            .await
            .unwrap();
        assert_eq!(response(req_id).await["rc"], rc, "{topic}");
    }
    // The reboot re-initialised the device: it reports itself online again.
    watcher
        .wait_for("a health event after the reboot", |m| {
            m.iter()
                .filter(|m| m.topic == "iot-2/evt/health/fmt/json")
                .count()
                > health_before
        })
        .await;
}

/// MQTT 5 request/response: a command with a Response Topic and Correlation Data gets
/// its result on that topic with the same correlation data, instead of the event topic.
/// The requester is rumqttc's v5 client.
async fn an_mqtt5_request_is_answered_on_its_response_topic(kind: BrokerKind) {
    use rumqttc::v5::mqttbytes::v5::{Packet as Packet5, PublishProperties};
    use rumqttc::v5::mqttbytes::QoS as QoS5;
    use rumqttc::v5::{AsyncClient as Client5, Event as Event5, MqttOptions as Options5};
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::start(kind, dir.path(), BrokerConfig::default());
    let (plc, modbus_port) = plc().await;
    let config = config_with(dir.path(), &broker, modbus_port, "  protocol: \"5\"\n");
    let _gateway = Gateway::start(&config, &dir.path().join("gateway.log"));
    let app = Application::connect(broker.port).await;
    wait_until_listening(&app).await;

    let (requester, mut eventloop) =
        Client5::new(Options5::new("requester", "127.0.0.1", broker.port), 16);
    requester
        .subscribe("app/replies/#", QoS5::AtLeastOnce)
        .await
        .unwrap();
    let (replies, mut received) = tokio::sync::mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        while let Ok(event) = eventloop.poll().await {
            match event {
                Event5::Incoming(Packet5::SubAck(_)) => {
                    let _ = replies.send(None);
                }
                Event5::Incoming(Packet5::Publish(publish)) => {
                    let _ = replies.send(Some(publish));
                }
                _ => {}
            }
        }
    });
    assert!(received.recv().await.unwrap().is_none(), "SUBACK first");
    let properties = PublishProperties {
        response_topic: Some("app/replies/r5".into()),
        correlation_data: Some(bytes::Bytes::from_static(b"corr-42")),
        ..PublishProperties::default()
    };
    requester
        .publish_with_properties(
            "fb/boiler/boiler-1/cmd/setpoint",
            QoS5::ExactlyOnce,
            false,
            json!({"d": {"value": 33}, "reqId": "rr-1"}).to_string(),
            properties,
        )
        .await
        .unwrap();
    let reply = tokio::time::timeout(common::DEADLINE, received.recv())
        .await
        .expect("a reply in time")
        .unwrap()
        .expect("a publish");
    assert_eq!(String::from_utf8_lossy(&reply.topic), "app/replies/r5");
    let properties = reply.properties.expect("properties");
    assert_eq!(
        properties.correlation_data.as_deref(),
        Some(&b"corr-42"[..])
    );
    assert_eq!(properties.content_type.as_deref(), Some("application/json"));
    let result: Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(
        (result["rc"].clone(), result["reqId"].clone()),
        (json!(200), json!("rr-1"))
    );
    assert_eq!(f32_of(&plc.holding(20, 2)), 33.0);
    // Results of one device come in order: once a later command is answered on the
    // event topic, the request's result would have been there too.
    assert_eq!(
        app.call("boiler-1", "mode", json!("eco"), "after").await["rc"],
        200
    );
    assert!(
        app.results_for("rr-1").is_empty(),
        "the result went to the event topic too"
    );
    reader.abort();
}

fn main() -> std::process::ExitCode {
    let mut suite = Suite::new();
    broker_tests!(suite;
        commands_write_registers_answer_and_refuse_bad_input,
        a_command_is_acted_on_once_per_req_id_even_across_a_restart,
        oversized_commands_are_refused_and_do_not_poison_the_session,
        managed_device_announces_itself_and_answers_management_requests,
        an_mqtt5_request_is_answered_on_its_response_topic,
    );
    suite.run()
}
