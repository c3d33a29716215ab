//! Command round trip: an application publishes a command (QoS 2) to a device on a
//! loopback Mosquitto, the release `fieldbridge run` binary writes a simulated Modbus
//! TCP register and publishes the `cmd-result` (QoS 1); the application measures from
//! its publish to the result's arrival, one command at a time.
//!
//! Run: `cargo bench --bench command_roundtrip` (needs `mosquitto`; `-- N` commands,
//! default 1000).

#[path = "../tests/common/mod.rs"]
mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{BrokerConfig, BrokerKind, TestBroker};
use fieldbridge_sim::{self as sim, SimBus, SimSlave};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

fn main() {
    let count: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let dir = tempfile::tempdir().unwrap();
        let broker = TestBroker::start(
            BrokerKind::Mosquitto,
            dir.path(),
            BrokerConfig {
                quiet: true,
                // Without it Mosquitto's back-to-back small writes (PUBCOMP, then the
                // result) wait for the client's delayed ACK: 40 ms per hop.
                tcp_nodelay: true,
                ..Default::default()
            },
        );
        let plc = SimSlave::default();
        let (modbus_port, _) = sim::spawn_tcp(SimBus::new([(1, plc.clone())]))
            .await
            .unwrap();
        let config = dir.path().join("gateway.yaml");
        std::fs::write(
            &config,
            format!(
                r#"
gateway: {{ data_dir: "{data}" }}
upstream:
  url: {url}
  org: bench
  topic_scheme: custom
  topics: {{ event: "fb/{{type}}/{{device}}/evt/{{event}}", command: "fb/{{type}}/{{device}}/cmd/{{command}}" }}
buses: [{{ name: plc, kind: tcp, host: 127.0.0.1, port: {modbus_port}, timeout: 1s }}]
devices:
  - id: boiler-1
    type: boiler
    bus: plc
    unit: 1
    poll: 100ms
    qos: 0
    registers: [{{ name: temperature, kind: holding, address: 0, type: f32 }}]
    commands: [{{ name: setpoint, kind: holding, address: 20, type: f32, min: 0, max: 100000 }}]
"#,
                data = dir.path().join("data").display(),
                url = broker.url(),
            ),
        )
        .unwrap();
        let mut gateway = Command::new(env!("CARGO_BIN_EXE_fieldbridge"))
            .args(["run", "--config"])
            .arg(&config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap();

        let mut options = MqttOptions::new("bench-app", "127.0.0.1", broker.port);
        options.set_keep_alive(Duration::from_secs(30));
        let (client, mut eventloop) = AsyncClient::new(options, 64);
        let mut network = rumqttc::NetworkOptions::new();
        network.set_tcp_nodelay(true);
        eventloop.set_network_options(network);
        let (results, mut result_rx) = tokio::sync::mpsc::channel::<String>(64);
        tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let v: serde_json::Value = serde_json::from_slice(&p.payload).unwrap();
                        if let Some(id) = v["reqId"].as_str() {
                            let _ = results.send(id.to_owned()).await;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        client
            .subscribe("fb/boiler/boiler-1/evt/cmd-result", QoS::AtLeastOnce)
            .await
            .unwrap();

        let send = |id: String, value: usize| {
            let client = client.clone();
            async move {
                let body = format!("{{\"d\":{{\"value\":{value}}},\"reqId\":\"{id}\"}}");
                client
                    .publish("fb/boiler/boiler-1/cmd/setpoint", QoS::ExactlyOnce, false, body)
                    .await
                    .unwrap();
            }
        };
        // Until the gateway's subscription is in place, commands go nowhere: retry.
        let deadline = Instant::now() + Duration::from_secs(60);
        'ready: loop {
            assert!(Instant::now() < deadline, "the gateway never answered");
            send("warmup".into(), 1).await;
            let wait = tokio::time::sleep(Duration::from_secs(1));
            tokio::pin!(wait);
            loop {
                tokio::select! {
                    _ = &mut wait => break,
                    Some(id) = result_rx.recv() => if id == "warmup" { break 'ready },
                }
            }
        }
        while result_rx.try_recv().is_ok() {}

        let mut times = Vec::with_capacity(count);
        for i in 0..count {
            let id = format!("c{i}");
            let started = Instant::now();
            send(id.clone(), i).await;
            loop {
                let got = tokio::time::timeout(Duration::from_secs(10), result_rx.recv())
                    .await
                    .expect("a result within 10 s")
                    .unwrap();
                if got == id {
                    break;
                }
            }
            times.push(started.elapsed());
        }
        let _ = gateway.kill();
        let _ = gateway.wait();
        assert_eq!(
            plc.holding(20, 2),
            {
                let bits = (count as f32 - 1.0).to_bits();
                vec![(bits >> 16) as u16, bits as u16]
            },
            "the last command's value is in the register"
        );
        times.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!("command round trip over {count} commands (loopback Mosquitto, Modbus TCP simulator):");
        println!(
            "  p50 {:.2} ms   p90 {:.2} ms   p99 {:.2} ms   max {:.2} ms",
            ms(percentile(&times, 0.50)),
            ms(percentile(&times, 0.90)),
            ms(percentile(&times, 0.99)),
            ms(*times.last().unwrap())
        );
    });
}
