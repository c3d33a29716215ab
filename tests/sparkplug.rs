//! `topic_scheme: sparkplug` end to end: the `fieldbridge run` binary as a Sparkplug B
//! edge node on a real broker (the workspace's own, and Mosquitto where installed),
//! Modbus simulators as its devices, and every message decoded by an independent
//! implementation (pysparkplug and the Tahu protobuf definition it ships).

mod common;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{
    spawn_gateway, wait_until, BrokerConfig, BrokerKind, Received, Subscriber, SubscriberConfig,
    TestBroker,
};
use fieldbridge_sim::{self as sim, SimBus, SimSlave};
use fieldbridge_testkit::{Need, Suite};
use rumqttc::{AsyncClient, MqttOptions, QoS};
use serde_json::{json, Value};

const TAHU: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sparkplug/tahu.py");

fn python_sparkplug() -> Need {
    let found = Command::new("python3")
        .args(["-c", "import pysparkplug"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    Need::condition(
        found,
        "python3 with pysparkplug is not installed (pip install pysparkplug==0.6.1)",
    )
}

/// Every message decoded by the independent implementation, in the order received.
fn decoded(messages: &[Received]) -> Vec<Value> {
    let mut child = Command::new("python3")
        .args([TAHU, "decode"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = String::new();
    for m in messages {
        let hex: String = m.payload.iter().map(|b| format!("{b:02x}")).collect();
        input.push_str(&format!("{} {hex}\n", m.topic));
    }
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "pysparkplug could not decode them");
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// A command payload encoded by the independent implementation.
fn encoded(metrics: Value) -> Vec<u8> {
    let output = Command::new("python3")
        .args([TAHU, "encode", &metrics.to_string()])
        .output()
        .unwrap();
    assert!(output.status.success());
    let hex = String::from_utf8(output.stdout).unwrap();
    (0..hex.trim().len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

/// NBIRTH, DDATA, ... or STATE.
fn kind(message: &Value) -> &str {
    let mut levels = message["topic"].as_str().unwrap().split('/').skip(1);
    match levels.next().unwrap() {
        "STATE" => "STATE",
        _ => levels.next().unwrap(),
    }
}

fn metric<'a>(message: &'a Value, name: &str) -> &'a Value {
    message["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == name)
        .unwrap_or_else(|| panic!("no metric {name} in {message}"))
}

fn config(dir: &Path, broker: &TestBroker, modbus_port: u16, primary_host: &str) -> PathBuf {
    let path = dir.join("gateway.yaml");
    std::fs::write(
        &path,
        format!(
            r#"
gateway: {{ data_dir: "{data}" }}
upstream:
  url: {url}
  org: test
  keepalive: 2s
  topic_scheme: sparkplug
  sparkplug: {{ group_id: plant, edge_node_id: gw1{primary_host} }}
buses: [{{ name: plc, kind: tcp, host: 127.0.0.1, port: {modbus_port}, timeout: 300ms }}]
devices:
  - id: boiler-1
    type: boiler
    bus: plc
    unit: 1
    poll: 100ms
    qos: 1
    registers:
      - {{ name: temperature, kind: holding, address: 0, type: i16, scale: 0.5, unit: "°C" }}
      - {{ name: counter, kind: input, address: 1, type: u16 }}
    commands:
      - {{ name: setpoint, kind: holding, address: 20, type: i16, min: -50, max: 90, readback: true }}
  - id: pump-2
    type: pump
    bus: plc
    unit: 2
    poll: 100ms
    qos: 1
    registers:
      - {{ name: running, kind: coil, address: 0, type: bool }}
"#,
            data = dir.join("data").display(),
            url = broker.url(),
        ),
    )
    .unwrap();
    path
}

async fn plc() -> (SimSlave, SimSlave, u16) {
    let (boiler, pump) = (SimSlave::default(), SimSlave::default());
    boiler.set_holding(0, &[40]);
    let (port, _) = sim::spawn_tcp(SimBus::new([(1, boiler.clone()), (2, pump.clone())]))
        .await
        .unwrap();
    (boiler, pump, port)
}

async fn subscriber(port: u16, id: &str) -> Subscriber {
    Subscriber::start(SubscriberConfig {
        port,
        client_id: id,
        filter: "spBv1.0/#",
        persistent: false,
        credentials: None,
    })
    .await
}

async fn host(port: u16) -> AsyncClient {
    let (client, mut eventloop) = AsyncClient::new(MqttOptions::new("host", "127.0.0.1", port), 16);
    tokio::spawn(async move {
        loop {
            if eventloop.poll().await.is_err() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });
    client
}

/// Waits until the decoded messages satisfy `done`; returns them.
async fn wait_decoded(sub: &Subscriber, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let mut last = Vec::new();
    wait_until(what, || {
        let messages = sub.messages();
        if messages.len() != last.len() {
            last = decoded(&messages);
        }
        done(&last)
    })
    .await;
    last
}

/// Messages of one birth sequence (an NBIRTH and what follows it) have consecutive seq.
fn check_seq(messages: &[Value]) {
    let mut expected: Option<u64> = None;
    for m in messages {
        match kind(m) {
            "NDEATH" | "STATE" | "NCMD" | "DCMD" => {}
            "NBIRTH" => {
                assert_eq!(m["seq"], 0, "NBIRTH has seq 0");
                expected = Some(1);
            }
            _ => {
                let want = expected.expect("no data before the first NBIRTH");
                assert_eq!(m["seq"], want, "seq continues in {m}");
                expected = Some((want + 1) % 256);
            }
        }
    }
}

fn last_bd_seq(messages: &[Value]) -> i64 {
    let nbirth = messages.iter().rev().find(|m| kind(m) == "NBIRTH").unwrap();
    metric(nbirth, "bdSeq")["value"].as_i64().unwrap()
}

fn ddata_values(messages: &[Value], alias: u64) -> Vec<(Value, bool)> {
    messages
        .iter()
        .filter(|m| kind(m) == "DDATA")
        .flat_map(|m| m["metrics"].as_array().unwrap().clone())
        .filter(|x| x["alias"] == alias)
        .map(|x| (x["value"].clone(), x["is_historical"] == true))
        .collect()
}

async fn edge_node_end_to_end(kind_: BrokerKind) {
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::start(kind_, dir.path(), BrokerConfig::default());
    let (boiler, pump, modbus) = plc().await;
    let sub = subscriber(broker.port, "watcher").await;
    let config = config(dir.path(), &broker, modbus, "");
    let log = dir.path().join("gateway.log");
    let mut gw = spawn_gateway(&config, &log);

    // Births: NBIRTH with bdSeq and Rebirth, a DBIRTH per device with aliases, types
    // and units; then DDATA by alias.
    let messages = wait_decoded(&sub, "births and data", |m| {
        m.iter()
            .any(|m| kind(m) == "DDATA" && m["topic"].as_str().unwrap().ends_with("boiler-1"))
    })
    .await;
    let nbirth = &messages[0];
    assert_eq!(nbirth["topic"], "spBv1.0/plant/NBIRTH/gw1");
    assert_eq!(metric(nbirth, "Node Control/Rebirth")["value"], false);
    assert!(metric(nbirth, "Node Control/Rebirth")
        .get("alias")
        .is_none());
    let bd_seq = last_bd_seq(&messages);
    let dbirth = messages
        .iter()
        .find(|m| m["topic"] == "spBv1.0/plant/DBIRTH/gw1/boiler-1")
        .unwrap();
    let temperature = metric(dbirth, "temperature");
    assert_eq!(temperature["datatype"], 10, "scaled: Double");
    assert_eq!(temperature["properties"]["engUnit"], "°C");
    assert_eq!(metric(dbirth, "counter")["datatype"], 6, "UInt16");
    assert_eq!(metric(dbirth, "setpoint")["datatype"], 2, "Int16");
    let pump_birth = messages
        .iter()
        .find(|m| m["topic"] == "spBv1.0/plant/DBIRTH/gw1/pump-2")
        .unwrap();
    assert_eq!(metric(pump_birth, "running")["datatype"], 11, "Boolean");
    let mut aliases: Vec<i64> = messages
        .iter()
        .filter(|m| kind(m) == "DBIRTH")
        .flat_map(|m| m["metrics"].as_array().unwrap().clone())
        .map(|m| m["alias"].as_i64().unwrap())
        .collect();
    aliases.sort();
    aliases.dedup();
    assert_eq!(aliases.len(), 4, "aliases unique across the node");
    let temp_alias = temperature["alias"].as_u64().unwrap();
    // (Historical when it was read before the births.)
    assert!(ddata_values(&messages, temp_alias)
        .iter()
        .any(|v| v.0 == json!(20.0)));

    // A changed register: DDATA with only that metric.
    boiler.set_holding(0, &[50]);
    wait_decoded(&sub, "DDATA with 25.0", |m| {
        ddata_values(m, temp_alias).contains(&(json!(25.0), false))
    })
    .await;

    // DCMD by name writes the register; the read-back value comes in DDATA.
    let setpoint_alias = metric(dbirth, "setpoint")["alias"].as_u64().unwrap();
    let node = host(broker.port).await;
    let dcmd = encoded(json!([{"name": "setpoint", "datatype": 2, "value": -7}]));
    node.publish(
        "spBv1.0/plant/DCMD/gw1/boiler-1",
        QoS::AtLeastOnce,
        false,
        dcmd,
    )
    .await
    .unwrap();
    wait_until("the DCMD write", || {
        boiler.holding(20, 1) == [(-7i16) as u16]
    })
    .await;
    wait_decoded(&sub, "DDATA with the new setpoint", |m| {
        ddata_values(m, setpoint_alias).contains(&(json!((-7i32) as u32), false))
    })
    .await;
    // By alias, and a metric that is not writable is refused (nothing written).
    let dcmd = encoded(
        json!([{"alias": setpoint_alias, "datatype": 2, "value": 12}, {"name": "counter", "datatype": 6, "value": 3}]),
    );
    node.publish(
        "spBv1.0/plant/DCMD/gw1/boiler-1",
        QoS::AtLeastOnce,
        false,
        dcmd,
    )
    .await
    .unwrap();
    wait_until("the DCMD by alias", || boiler.holding(20, 1) == [12]).await;

    // A dead slave: DDEATH; back: DBIRTH.
    pump.set_silent(true);
    wait_decoded(&sub, "DDEATH", |m| {
        m.iter()
            .any(|m| m["topic"] == "spBv1.0/plant/DDEATH/gw1/pump-2")
    })
    .await;
    pump.set_silent(false);
    wait_decoded(&sub, "DBIRTH again", |m| {
        m.iter()
            .filter(|m| m["topic"] == "spBv1.0/plant/DBIRTH/gw1/pump-2")
            .count()
            == 2
    })
    .await;

    // Rebirth: NBIRTH and DBIRTHs again, same bdSeq, no new connection.
    let rebirth = encoded(json!([{"name": "Node Control/Rebirth", "datatype": 11, "value": true}]));
    node.publish("spBv1.0/plant/NCMD/gw1", QoS::AtLeastOnce, false, rebirth)
        .await
        .unwrap();
    let messages = wait_decoded(&sub, "a second NBIRTH", |m| {
        m.iter().filter(|m| kind(m) == "NBIRTH").count() == 2
    })
    .await;
    assert_eq!(last_bd_seq(&messages), bd_seq, "same bdSeq on Rebirth");

    // A broker outage (the broker stops answering; the node's keepalive notices): data
    // read meanwhile comes after the new births, historical, oldest first, none lost.
    let before = sub.messages().len();
    broker.pause();
    wait_until("the node to notice the outage", || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("connection to the broker lost")
    })
    .await;
    for value in [60u16, 62, 64] {
        boiler.set_holding(0, &[value]);
        let polls = boiler.requests() + 4;
        wait_until("two polls of the new value", || boiler.requests() >= polls).await;
    }
    Command::new("kill")
        .args(["-CONT", &broker.pid().unwrap().to_string()])
        .status()
        .unwrap();
    let messages = wait_decoded(&sub, "historical data after the outage", |m| {
        ddata_values(&m[before.min(m.len())..], temp_alias)
            .iter()
            .filter(|v| v.1)
            .count()
            >= 3
    })
    .await;
    let after = &messages[before..];
    let first_birth = after
        .iter()
        .position(|m| kind(m) == "NBIRTH")
        .expect("births after the outage");
    let first_historical = after
        .iter()
        .position(|m| kind(m) == "DDATA" && m["metrics"][0]["is_historical"] == true)
        .unwrap();
    assert!(
        first_birth < first_historical,
        "historical data never overtakes the births"
    );
    let historical: Vec<Value> = ddata_values(after, temp_alias)
        .into_iter()
        .filter(|v| v.1)
        .map(|v| v.0)
        .collect();
    assert_eq!(
        historical,
        [json!(30.0), json!(31.0), json!(32.0)],
        "oldest first, none lost"
    );
    assert_ne!(
        last_bd_seq(&messages),
        bd_seq,
        "a new connection, a new bdSeq"
    );
    check_seq(&messages);

    // kill -9: the broker publishes the will, NDEATH with the bdSeq of the last NBIRTH;
    // the restarted node counts on from the one saved in SQLite.
    let bd_seq = last_bd_seq(&messages);
    common::signal(&gw, "KILL");
    let _ = gw.wait();
    let messages = wait_decoded(&sub, "NDEATH", |m| {
        m.iter()
            .any(|m| kind(m) == "NDEATH" && metric(m, "bdSeq")["value"] == bd_seq)
    })
    .await;
    let deaths = messages.iter().filter(|m| kind(m) == "NDEATH").count();
    gw = spawn_gateway(&config, &log);
    let messages = wait_decoded(&sub, "births after the restart", |m| {
        m.iter().filter(|m| kind(m) == "NBIRTH").count() > 3
            && m.iter().rev().take_while(|m| kind(m) != "NBIRTH").count() >= 2
    })
    .await;
    assert_eq!(
        last_bd_seq(&messages),
        (bd_seq + 1) % 256,
        "bdSeq kept across the restart"
    );
    assert_eq!(
        messages.iter().filter(|m| kind(m) == "NDEATH").count(),
        deaths
    );
    drop(gw);
}

async fn births_wait_for_the_primary_host(kind_: BrokerKind) {
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::start(kind_, dir.path(), BrokerConfig::default());
    let (boiler, _pump, modbus) = plc().await;
    let sub = subscriber(broker.port, "watcher").await;
    let config = config(dir.path(), &broker, modbus, ", primary_host_id: scada");
    let _gw = spawn_gateway(&config, &dir.path().join("gateway.log"));
    let host = host(broker.port).await;

    // Polling goes on, but nothing is born before the host says it is online.
    let polls = boiler.requests() + 10;
    wait_until("polls", || boiler.requests() >= polls).await;
    assert!(decoded(&sub.messages()).iter().all(|m| kind(m) == "STATE"));
    let state = |online: bool, timestamp: u64| {
        json!({"online": online, "timestamp": timestamp}).to_string()
    };
    host.publish(
        "spBv1.0/STATE/scada",
        QoS::AtLeastOnce,
        true,
        state(true, 1000),
    )
    .await
    .unwrap();
    let messages = wait_decoded(&sub, "births then data", |m| {
        m.iter().any(|m| kind(m) == "DDATA")
    })
    .await;
    let first = messages.iter().position(|m| kind(m) != "STATE").unwrap();
    assert_eq!(kind(&messages[first]), "NBIRTH");
    // Data queued while waiting is historical and comes after the births.
    assert!(messages
        .iter()
        .any(|m| kind(m) == "DDATA" && m["metrics"][0]["is_historical"] == true));

    // An older offline STATE is ignored; a current one gets an NDEATH, and data stops.
    host.publish(
        "spBv1.0/STATE/scada",
        QoS::AtLeastOnce,
        true,
        state(false, 999),
    )
    .await
    .unwrap();
    host.publish(
        "spBv1.0/STATE/scada",
        QoS::AtLeastOnce,
        true,
        state(false, 1001),
    )
    .await
    .unwrap();
    let messages = wait_decoded(&sub, "NDEATH", |m| m.iter().any(|m| kind(m) == "NDEATH")).await;
    let deaths = messages.iter().filter(|m| kind(m) == "NDEATH").count();
    assert_eq!(deaths, 1, "the older offline STATE was ignored");
    boiler.set_holding(0, &[90]);
    host.publish(
        "spBv1.0/STATE/scada",
        QoS::AtLeastOnce,
        true,
        state(true, 1002),
    )
    .await
    .unwrap();
    let messages = wait_decoded(&sub, "births again", |m| {
        m.iter().filter(|m| kind(m) == "NBIRTH").count() == 2
    })
    .await;
    check_seq(&messages);
}

fn main() -> std::process::ExitCode {
    let mut suite = Suite::new();
    for kind in [BrokerKind::Fieldbridge, BrokerKind::Mosquitto] {
        let mut needs = kind.needs();
        needs.push(python_sparkplug());
        let name = format!("{kind:?}").to_lowercase();
        suite.async_test(
            &format!("{name}::edge_node_end_to_end"),
            &needs,
            move || edge_node_end_to_end(kind),
        );
        suite.async_test(
            &format!("{name}::births_wait_for_the_primary_host"),
            &needs,
            move || births_wait_for_the_primary_host(kind),
        );
    }
    suite.run()
}
