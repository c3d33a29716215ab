//! `topic_scheme: homeassistant` end to end: the `fieldbridge run` binary announces its
//! devices by device-based MQTT discovery on a real broker (the workspace's own, and
//! Mosquitto where installed), checked against Home Assistant's documented schema by an
//! independent checker that also renders the value templates with Jinja2.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{spawn_gateway, wait_until, BrokerConfig, BrokerKind, TestBroker};
use fieldbridge_sim::{self as sim, SimBus, SimSlave};
use fieldbridge_testkit::{Need, Suite};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::Value;

const CHECK: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/homeassistant/check_discovery.py"
);

fn python_jinja() -> Need {
    let found = Command::new("python3")
        .args(["-c", "import jinja2"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    Need::condition(
        found,
        "python3 with jinja2 is not installed (pip install jinja2)",
    )
}

/// A message with its retain flag as the broker delivered it.
#[derive(Debug, Clone)]
struct Got {
    topic: String,
    payload: Vec<u8>,
    retain: bool,
}

/// A client subscribed to Home Assistant's and the gateway's topics, recording all.
struct Watcher {
    got: Arc<Mutex<Vec<Got>>>,
    client: AsyncClient,
    _task: tokio::task::JoinHandle<()>,
}

impl Watcher {
    async fn start(port: u16, id: &str) -> Watcher {
        let (client, mut eventloop) = AsyncClient::new(MqttOptions::new(id, "127.0.0.1", port), 64);
        let got = Arc::new(Mutex::new(Vec::new()));
        let subscribed = Arc::new(Mutex::new(false));
        let (sink, done, subscriber) = (got.clone(), subscribed.clone(), client.clone());
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        for filter in ["homeassistant/#", "fieldbridge/#"] {
                            subscriber.try_subscribe(filter, QoS::AtLeastOnce).unwrap();
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => *done.lock().unwrap() = true,
                    Ok(Event::Incoming(Packet::Publish(p))) => sink.lock().unwrap().push(Got {
                        topic: p.topic.clone(),
                        payload: p.payload.to_vec(),
                        retain: p.retain,
                    }),
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        wait_until("the watcher's subscription", || *subscribed.lock().unwrap()).await;
        Watcher {
            got,
            client,
            _task: task,
        }
    }

    fn on(&self, topic: &str) -> Vec<Got> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .filter(|g| g.topic == topic)
            .cloned()
            .collect()
    }

    async fn wait_on(&self, topic: &str, what: &str, done: impl Fn(&[Got]) -> bool) -> Vec<Got> {
        wait_until(what, || done(&self.on(topic))).await;
        self.on(topic)
    }

    async fn publish(&self, topic: &str, payload: &str) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload.to_owned())
            .await
            .unwrap();
    }
}

fn json_of(got: &Got) -> Value {
    serde_json::from_slice(&got.payload).unwrap()
}

/// The independent check; returns each component's rendered value.
fn check(dir: &Path, config: &Value, state: &Value) -> Value {
    let (config_path, state_path) = (dir.join("config.json"), dir.join("state.json"));
    std::fs::write(&config_path, config.to_string()).unwrap();
    std::fs::write(&state_path, state.to_string()).unwrap();
    let output = Command::new("python3")
        .arg(CHECK)
        .arg(&config_path)
        .arg(&state_path)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "discovery payload rejected:\n{}\n{config:#}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

fn config(dir: &Path, broker: &TestBroker, modbus_port: u16, with_pump: bool) -> PathBuf {
    let pump = if with_pump {
        r#"
  - id: pump-2
    type: pump
    bus: plc
    unit: 2
    poll: 100ms
    qos: 1
    registers:
      - { name: running, kind: coil, address: 0, type: bool }"#
    } else {
        ""
    };
    let path = dir.join("gateway.yaml");
    std::fs::write(
        &path,
        format!(
            r#"
gateway: {{ data_dir: "{data}" }}
upstream:
  url: {url}
  org: test
  topic_scheme: homeassistant
  homeassistant: {{ discovery_prefix: homeassistant, base_topic: fieldbridge }}
buses: [{{ name: plc, kind: tcp, host: 127.0.0.1, port: {modbus_port}, timeout: 300ms }}]
devices:
  - id: boiler-1
    type: boiler
    bus: plc
    unit: 1
    poll: 100ms
    qos: 1
    registers:
      - {{ name: temperature, kind: holding, address: 0, type: i16, scale: 0.1, unit: "°C" }}
      - {{ name: energy, kind: input, address: 2, type: u32, unit: kWh }}
      - {{ name: burner, kind: coil, address: 0, type: bool }}
      - {{ name: level, kind: input, address: 4, type: u16, unit: "%", icon: "mdi:water-percent", state_class: measurement }}
    commands:
      - {{ name: setpoint, kind: holding, address: 20, type: i16, min: 5, max: 90, readback: true }}
      - {{ name: pump, kind: coil, address: 3, type: bool, readback: true }}
      - {{ name: mode, kind: holding, address: 22, type: u16, values: {{ off: 0, eco: 1, comfort: 2 }}, readback: true }}{pump}
"#,
            data = dir.join("data").display(),
            url = broker.url(),
        ),
    )
    .unwrap();
    path
}

const CONFIG: &str = "homeassistant/device/boiler-1/config";
const STATE: &str = "fieldbridge/boiler-1/state";
const AVAILABILITY: &str = "fieldbridge/boiler-1/availability";

async fn discovery_state_commands_and_availability(kind: BrokerKind) {
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::start(kind, dir.path(), BrokerConfig::default());
    let (boiler, pump) = (SimSlave::default(), SimSlave::default());
    boiler.set_holding(0, &[215]);
    boiler.set_input(2, &[0, 1234]);
    boiler.set_input(4, &[40]);
    let (modbus, _) = sim::spawn_tcp(SimBus::new([(1, boiler.clone()), (2, pump.clone())]))
        .await
        .unwrap();
    let watcher = Watcher::start(broker.port, "watcher").await;
    let config_path = config(dir.path(), &broker, modbus, true);
    let log = dir.path().join("gateway.log");
    let mut gw = spawn_gateway(&config_path, &log);

    // Discovery and availability are retained: a client that comes later gets them.
    watcher
        .wait_on(AVAILABILITY, "online", |g| {
            g.iter().any(|g| g.payload == b"online")
        })
        .await;
    watcher
        .wait_on(
            "homeassistant/device/pump-2/config",
            "pump discovery",
            |g| !g.is_empty(),
        )
        .await;
    let late = Watcher::start(broker.port, "late").await;
    let retained = late
        .wait_on(CONFIG, "the retained config", |g| !g.is_empty())
        .await;
    assert!(retained[0].retain, "discovery is retained");
    let available = late
        .wait_on(AVAILABILITY, "retained availability", |g| !g.is_empty())
        .await;
    assert!(available[0].retain && available[0].payload == b"online");

    // The config passes the schema check, and its templates read the state.
    let state = watcher
        .wait_on(STATE, "a full state", |g| {
            g.last().is_some_and(|g| json_of(g)["energy"] == 1234)
        })
        .await;
    let discovery = json_of(&retained[0]);
    let rendered = check(dir.path(), &discovery, &json_of(state.last().unwrap()));
    assert_eq!(rendered["temperature"], "21.5");
    assert_eq!(rendered["energy"], "1234");
    assert_eq!(rendered["burner"], "OFF");
    let c = &discovery["cmps"];
    assert_eq!(
        (
            c["temperature"]["device_class"].as_str(),
            c["temperature"]["unit_of_measurement"].as_str()
        ),
        (Some("temperature"), Some("°C"))
    );
    assert_eq!(c["energy"]["state_class"], "total_increasing");
    assert_eq!(c["level"]["icon"], "mdi:water-percent");
    assert_eq!(discovery["o"]["name"], "fieldbridge");
    assert_eq!(discovery["dev"]["model"], "boiler");

    // number, switch and select write through the command path; the state shows the
    // value read back, which the templates render as Home Assistant would.
    watcher
        .publish("fieldbridge/boiler-1/set/setpoint", "22")
        .await;
    wait_until("the setpoint write", || boiler.holding(20, 1) == [22]).await;
    watcher.publish("fieldbridge/boiler-1/set/pump", "ON").await;
    wait_until("the pump coil", || boiler.coil(3)).await;
    watcher
        .publish("fieldbridge/boiler-1/set/mode", "eco")
        .await;
    wait_until("the mode write", || boiler.holding(22, 1) == [1]).await;
    watcher
        .publish("fieldbridge/boiler-1/set/setpoint", "95")
        .await; // out of range: refused
    let state = watcher
        .wait_on(STATE, "the read-back values", |g| {
            g.last().is_some_and(|g| {
                let s = json_of(g);
                s["setpoint"] == 22 && s["pump"] == true && s["mode"] == 1
            })
        })
        .await;
    let rendered = check(dir.path(), &discovery, &json_of(state.last().unwrap()));
    assert_eq!(
        (
            rendered["setpoint"].as_str(),
            rendered["pump"].as_str(),
            rendered["mode"].as_str()
        ),
        (Some("22"), Some("ON"), Some("eco"))
    );
    assert_eq!(
        boiler.holding(20, 1),
        [22],
        "the out-of-range value was not written"
    );

    // Home Assistant restarting (`homeassistant/status` online) gets discovery again.
    let announced = watcher.on(CONFIG).len();
    watcher.publish("homeassistant/status", "online").await;
    watcher
        .wait_on(CONFIG, "discovery again", |g| g.len() > announced)
        .await;

    // A dead slave is unavailable; back, available.
    pump.set_silent(true);
    watcher
        .wait_on("fieldbridge/pump-2/availability", "offline", |g| {
            g.last().is_some_and(|g| g.payload == b"offline")
        })
        .await;
    pump.set_silent(false);
    watcher
        .wait_on("fieldbridge/pump-2/availability", "online", |g| {
            g.last().is_some_and(|g| g.payload == b"online")
        })
        .await;

    // kill -9: the broker publishes the session's will.
    common::signal(&gw, "KILL");
    let _ = gw.wait();
    watcher
        .wait_on(AVAILABILITY, "the will", |g| {
            g.last().is_some_and(|g| g.payload == b"offline")
        })
        .await;

    // A device dropped from the configuration is removed (empty retained config).
    let config_path = config(dir.path(), &broker, modbus, false);
    gw = spawn_gateway(&config_path, &log);
    watcher
        .wait_on("homeassistant/device/pump-2/config", "the removal", |g| {
            g.last().is_some_and(|g| g.payload.is_empty())
        })
        .await;
    watcher
        .wait_on(AVAILABILITY, "online again", |g| {
            g.last().is_some_and(|g| g.payload == b"online")
        })
        .await;
    let after = Watcher::start(broker.port, "after").await;
    after
        .wait_on(CONFIG, "boiler still announced", |g| !g.is_empty())
        .await;
    assert!(
        after.on("homeassistant/device/pump-2/config").is_empty(),
        "nothing retained for the removed device"
    );
    drop(gw);
}

fn main() -> std::process::ExitCode {
    let mut suite = Suite::new();
    for kind in [BrokerKind::Fieldbridge, BrokerKind::Mosquitto] {
        let mut needs = kind.needs();
        needs.push(python_jinja());
        let name = format!("{kind:?}").to_lowercase();
        suite.async_test(
            &format!("{name}::discovery_state_commands_and_availability"),
            &needs,
            move || discovery_state_commands_and_availability(kind),
        );
    }
    suite.run()
}
