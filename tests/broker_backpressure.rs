//! The gateway end to end against the companion broker with a slow application: the
//! broker holds the gateway's publishes back instead of dropping what it acknowledged, the
//! gateway's queue grows meanwhile, and every reading the field device gave reaches the
//! application, in order, once the queue has drained.
//!
//! The Modbus simulator's input register 0 counts its reads, so every event carries the
//! next number: a gap is a lost reading. The broker binary is the one `cargo test
//! --workspace` builds beside this test.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{spawn_broker, spawn_gateway, DEADLINE};
use fieldbridge::store::read_stats;
use fieldbridge_sim::{self as sim, SimBus, SimSlave};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::Value;

/// The application takes this long over each message: 10 a second at most, against the
/// gateway's 50 readings a second.
const APPLICATION_PACE: Duration = Duration::from_millis(100);
/// How long the device produces readings: the application takes 30 of them at most
/// meanwhile, and the broker holds 20 more for it (its queue and in-flight window).
const PRODUCING: Duration = Duration::from_secs(3);
/// Drain time allowed beyond the application's pace.
const DRAIN_DEADLINE: Duration = Duration::from_secs(90);

/// A QoS 1 subscriber that takes [`APPLICATION_PACE`] over every message (its
/// acknowledgement goes out only when it asks for the next one); returns the counter
/// values it received, in order.
async fn slow_application(
    addr: SocketAddr,
    subscribed: tokio::sync::oneshot::Sender<()>,
) -> Arc<Mutex<Vec<u64>>> {
    let received = Arc::new(Mutex::new(Vec::new()));
    let mut options = MqttOptions::new("slow-application", addr.ip().to_string(), addr.port());
    options.set_inflight(4);
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    let values = received.clone();
    tokio::spawn(async move {
        let mut subscribed = Some(subscribed);
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    client
                        .subscribe("iot-2/evt/status/fmt/json", QoS::AtLeastOnce)
                        .await
                        .expect("subscribe queued");
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(subscribed) = subscribed.take() {
                        let _ = subscribed.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    let event: Value = serde_json::from_slice(&publish.payload).unwrap_or_default();
                    let value = event["d"]["reads"].as_u64().unwrap_or(u64::MAX);
                    values.lock().expect("lock").push(value);
                    tokio::time::sleep(APPLICATION_PACE).await;
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });
    received
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_application_holds_the_gateway_back_and_loses_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    // Small windows, so that the broker's queue for the application fills at once.
    let broker_config = dir.path().join("broker.yaml");
    std::fs::write(
        &broker_config,
        "listeners: [{ bind: \"127.0.0.1:0\" }]\nsys_interval: 0\n\
         limits: { max_inflight: 4, max_queued_messages: 16 }\n",
    )
    .expect("write");
    let (_broker, addr) = spawn_broker(&broker_config);
    let (subscribed, ready) = tokio::sync::oneshot::channel();
    let received = slow_application(addr, subscribed).await;
    tokio::time::timeout(DEADLINE, ready)
        .await
        .expect("the application subscribes")
        .expect("subscribed");

    let plc = SimSlave::default();
    plc.count_reads(0);
    let (modbus_port, _) = sim::spawn_tcp(SimBus::new([(1, plc.clone())]))
        .await
        .expect("Modbus simulator");
    let data_dir = dir.path().join("data");
    let gateway_config = dir.path().join("gateway.yaml");
    std::fs::write(
        &gateway_config,
        format!(
            r#"
gateway: {{ data_dir: "{data}" }}
upstream:
  url: mqtt://127.0.0.1:{port}
  org: acme
  topic_scheme: platform
buses: [{{ name: plc, kind: tcp, host: 127.0.0.1, port: {modbus_port}, timeout: 1s }}]
devices:
  - id: counter-1
    type: counter
    token: "counter-token"
    bus: plc
    unit: 1
    poll: 20ms
    event: status
    qos: 1
    registers:
      - {{ name: reads, kind: input, address: 0, type: u16 }}
"#,
            data = data_dir.display(),
            port = addr.port(),
        ),
    )
    .expect("write");
    let log = dir.path().join("gateway.log");
    let _gateway = spawn_gateway(&gateway_config, &log);
    let gateway_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let depth = || async {
        read_stats(&data_dir)
            .await
            .ok()
            .and_then(|stats| stats.into_iter().find(|s| s.device_id == "counter-1"))
            .map_or(0, |stats| stats.depth)
    };

    // Producing: the gateway's queue grows, since the broker holds its publishes back.
    let started = Instant::now();
    let mut deepest = 0;
    while started.elapsed() < PRODUCING {
        deepest = deepest.max(depth().await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    plc.set_silent(true);
    let produced = u64::from(plc.input(0));
    assert!(
        produced >= 100,
        "the device was read {produced} times: {}",
        gateway_log()
    );
    assert!(
        deepest >= 30,
        "the gateway's queue reached {deepest} events only (of {produced})"
    );

    // Draining: every reading arrives, in order, and the queue empties.
    let deadline = Instant::now() + DRAIN_DEADLINE;
    loop {
        let got = received.lock().expect("lock").len() as u64;
        if got >= produced && depth().await == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{got} of {produced} readings arrived, {} still queued: {}",
            depth().await,
            gateway_log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let values = received.lock().expect("lock").clone();
    let expected: Vec<u64> = (0..produced).collect();
    assert_eq!(values, expected, "every reading, once, in order");
}
