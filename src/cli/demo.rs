//! `fieldbridge demo`: the whole system in one process, with nothing to set up.
//!
//! - the companion broker, embedded, on a loopback port;
//! - a Modbus TCP boiler controller and two RTU slaves on a pseudo-terminal (one of
//!   them unplugged, to show health events), simulated, their values drifting;
//! - the gateway on a built-in configuration, publishing through its SQLite queue;
//! - an application client that prints every event as it arrives and sends the
//!   boiler one command, whose result it prints too.

use std::time::Duration;

use anyhow::Context as _;

use fieldbridge_broker::{Broker, Config as BrokerConfig};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

use super::run::Running;
use crate::config::Config;
use fieldbridge_sim::{self as sim, SimBus, SimSlave};

const DEMO_CONFIG: &str = r#"
gateway: { data_dir: "{data_dir}" }
upstream:
  url: "mqtt://127.0.0.1:{mqtt_port}"
  org: demo
  topic_scheme: custom
  topics: { event: "demo/{type}/{device}/evt/{event}", command: "demo/{type}/{device}/cmd/{command}" }
buses:
  - { name: plc, kind: tcp, host: 127.0.0.1, port: {tcp_port}, timeout: 500ms }
  - { name: rs485, kind: rtu, port: "{rtu_port}", baud: 19200, timeout: 200ms, delay_between_requests: 2ms }
devices:
  - id: boiler-1
    type: boiler
    bus: plc
    unit: 1
    poll: 1s
    event: status
    qos: 1
    registers:
      - { name: temperature, kind: holding, address: 0, type: f32, unit: "C" }
      - { name: pressure, kind: input, address: 10, type: u16, scale: 0.01, unit: bar }
      - { name: burner_on, kind: coil, address: 0, type: bool }
      - { name: alarm, kind: holding, address: 2, type: bool, bit: 0 }
      - { name: setpoint, kind: holding, address: 20, type: f32, unit: "C" }
    commands:
      - { name: setpoint, kind: holding, address: 20, type: f32, min: 5, max: 90, readback: true }
  - id: meter-1
    type: energy-meter
    bus: rs485
    unit: 7
    poll: 2s
    event: energy
    qos: 1
    publish: on_change
    heartbeat: 30s
    registers:
      - { name: energy_kwh, kind: input, address: 0, type: u32, order: CDAB, scale: 0.1, deadband: 0.5 }
      - { name: power_w, kind: input, address: 2, type: i16, deadband: 20 }
  - id: meter-2
    type: energy-meter
    bus: rs485
    unit: 8
    poll: 2s
    event: energy
    qos: 0
    registers:
      - { name: energy_kwh, kind: input, address: 0, type: u32 }
"#;

pub fn run(duration: Option<Duration>) -> anyhow::Result<()> {
    fieldbridge_service::logging::init(None);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(demo(duration))
}

async fn demo(duration: Option<Duration>) -> anyhow::Result<()> {
    let data_dir = tempfile::tempdir().context("cannot create a scratch data directory")?;
    let broker = Broker::new(BrokerConfig::ephemeral())?.start().await?;
    let mqtt_port = broker.local_addr().port();

    let boiler = SimSlave::default();
    let meter = SimSlave::default();
    let (tcp_port, _) = sim::spawn_tcp(SimBus::new([(1, boiler.clone())])).await?;
    // Unit 8 is configured but absent from the simulated line: it never answers.
    let (bus_end, gateway_end) =
        tokio_serial::SerialStream::pair().context("cannot create a pty pair")?;
    let rtu_port = tokio_serial::SerialPort::name(&gateway_end).context("pty has no name")?;
    tokio::spawn(sim::serve_rtu(bus_end, SimBus::new([(7, meter.clone())])));
    tokio::spawn(drift(boiler.clone(), meter));

    let text = DEMO_CONFIG
        .replace("{data_dir}", &data_dir.path().display().to_string())
        .replace("{mqtt_port}", &mqtt_port.to_string())
        .replace("{tcp_port}", &tcp_port.to_string())
        .replace("{rtu_port}", &rtu_port);
    let config = Config::from_str(&text, "demo configuration")?;
    println!("broker listening on 127.0.0.1:{mqtt_port}");
    println!("{}", super::check::describe(&config)?.trim_end());

    let application = tokio::spawn(application(mqtt_port));
    let running = Running::start(&config).await?;
    let stop = fieldbridge_service::stop_requested().context("installing the signal handlers")?;
    match duration {
        Some(duration) => {
            tokio::select! {
                _ = tokio::time::sleep(duration) => {}
                _ = stop => {}
            }
        }
        None => stop.await,
    }
    running.stop().await?;
    application.abort();
    broker.shutdown().await;
    // The pty's gateway end stays open until here so the simulated line never hangs up.
    drop(gateway_end);
    println!("demo stopped");
    Ok(())
}

/// An application on the broker: prints every event, and after the boiler's first
/// reading sends it a `setpoint` command.
async fn application(port: u16) {
    let mut options = MqttOptions::new("demo-application", "127.0.0.1", port);
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    let mut command_sent = false;
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                let _ = client.try_subscribe("demo/+/+/evt/+", QoS::AtLeastOnce);
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                println!(
                    "application got {} {}",
                    publish.topic,
                    String::from_utf8_lossy(&publish.payload)
                );
                if !command_sent && publish.topic == "demo/boiler/boiler-1/evt/status" {
                    command_sent = true;
                    let command = r#"{"d": {"value": 65.5}, "reqId": "demo-setpoint-1"}"#;
                    println!("application sends demo/boiler/boiler-1/cmd/setpoint {command}");
                    let _ = client.try_publish(
                        "demo/boiler/boiler-1/cmd/setpoint",
                        QoS::ExactlyOnce,
                        false,
                        command,
                    );
                }
            }
            Ok(_) => {}
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}
/// Moves the simulated values the way a boiler and a meter would.
async fn drift(boiler: SimSlave, meter: SimSlave) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut step: u32 = 0;
    loop {
        tick.tick().await;
        step = step.wrapping_add(1);
        let phase = f64::from(step) / 20.0;
        let temperature = 60.0 + 8.0 * phase.sin();
        boiler.set_holding(0, &f32_words(temperature as f32));
        boiler.set_input(10, &[(150.0 + 20.0 * phase.cos()) as u16]);
        boiler.set_coil(0, temperature > 62.0);
        boiler.set_holding(2, &[u16::from(temperature > 67.0)]);
        let energy = 123_450 + step * 3;
        meter.set_input(0, &[(energy & 0xFFFF) as u16, (energy >> 16) as u16]);
        meter.set_input(2, &[(1500.0 + 400.0 * (phase * 3.0).sin()) as i16 as u16]);
    }
}

fn f32_words(value: f32) -> [u16; 2] {
    let bits = value.to_bits();
    [(bits >> 16) as u16, bits as u16]
}
