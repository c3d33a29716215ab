//! Acquisition cost: 20 simulated Modbus TCP devices x 50 tags polled at 10 Hz
//! (1,000 tags, 10,000 tag reads/s). Runs the release `fieldbridge run` binary as a
//! child process against in-process simulators, once per output: events printed on
//! stdout, and through a loopback Mosquitto with each uplink profile (`platform`,
//! `sparkplug`, `homeassistant`; QoS 1, so every event goes through the SQLite queue).
//! The holding registers change every cycle, so every poll publishes. Reports the
//! child's CPU (% of one core), its RSS (and of it the anonymous memory), the event
//! rate, the requests per poll cycle against the planner's minimum, for Sparkplug the
//! DDATA bytes per changed value, and for the MQTT outputs what the queue costs the
//! disk: bytes the child wrote to storage (`write_bytes` of `/proc/PID/io`) per byte of
//! payload delivered, and, in a second window under `strace -f -c -e
//! trace=fsync,fdatasync` (where strace is installed), the fsync calls per second.
//!
//! Run: `cargo bench --bench acquisition` (optionally `-- SECONDS` per output, default
//! 30, and the outputs to run, default all; the uplink profiles need `mosquitto`).
//! `COMMIT_WINDOW=100ms` sets the queue's `commit_window` (default 200 ms).

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::TestBroker;
use fieldbridge_sim::{self as sim, SimBus, SimSlave};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

const DEVICES: usize = 20;
const TAGS: usize = 50;
/// Holding registers 0..HOLDING_WORDS change every cycle (the 30 holding tags).
const HOLDING_WORDS: u16 = 53;
const OUTPUTS: [&str; 4] = ["stdout", "platform", "sparkplug", "homeassistant"];

/// 50 tags per device: holding registers of mixed types with small gaps, a block of
/// input registers, and coils.
fn device_registers() -> String {
    let mut out = String::new();
    let mut address = 0u32;
    for i in 0..30 {
        let (ty, len) = match i % 3 {
            0 => ("f32", 2),
            1 => ("u16", 1),
            _ => ("i32", 2),
        };
        out.push_str(&format!(
            "      - {{ name: h{i}, kind: holding, address: {address}, type: {ty} }}\n"
        ));
        address += len + if i % 7 == 6 { 3 } else { 0 };
    }
    for i in 0..10 {
        out.push_str(&format!(
            "      - {{ name: in{i}, kind: input, address: {}, type: u16, scale: 0.1 }}\n",
            100 + i * 2
        ));
    }
    for i in 0..10 {
        out.push_str(&format!(
            "      - {{ name: c{i}, kind: coil, address: {}, type: bool }}\n",
            i * 3
        ));
    }
    out
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name: state is 3rd; utime and stime are 14th and 15th.
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: u64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0);
    let stime: u64 = fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    utime + stime
}

fn status_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// What an MQTT output delivered: messages of data, their bytes, and for Sparkplug the
/// metrics they carried.
#[derive(Default)]
struct Delivered {
    messages: AtomicU64,
    bytes: AtomicU64,
    metrics: AtomicU64,
}

/// Top-level fields 2 (metrics) of a Sparkplug payload, read with the protobuf wire
/// format's own rules (varint keys and lengths).
fn sparkplug_metrics(mut payload: &[u8]) -> u64 {
    fn varint(bytes: &mut &[u8]) -> Option<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = bytes.split_first()?;
            *bytes = rest;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some(value);
            }
        }
        None
    }
    let mut metrics = 0;
    while let Some(key) = varint(&mut payload) {
        match key & 7 {
            0 => {
                varint(&mut payload);
            }
            1 => payload = payload.get(8..).unwrap_or_default(),
            2 => {
                let len = varint(&mut payload).unwrap_or(0) as usize;
                metrics += u64::from(key >> 3 == 2);
                payload = payload.get(len..).unwrap_or_default();
            }
            5 => payload = payload.get(4..).unwrap_or_default(),
            _ => break,
        }
    }
    metrics
}

/// Subscribes to the data messages of `output` and counts them.
async fn count_data(port: u16, output: &'static str, delivered: Arc<Delivered>) {
    let filter = match output {
        "platform" => "iot-2/evt/status/fmt/json",
        "sparkplug" => "spBv1.0/bench/DDATA/#",
        _ => "fieldbridge/+/state",
    };
    let (client, mut eventloop) =
        AsyncClient::new(MqttOptions::new("counter", "127.0.0.1", port), 64);
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    client.try_subscribe(filter, QoS::AtMostOnce).unwrap();
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    delivered.messages.fetch_add(1, Ordering::Relaxed);
                    delivered
                        .bytes
                        .fetch_add(p.payload.len() as u64, Ordering::Relaxed);
                    if output == "sparkplug" {
                        delivered
                            .metrics
                            .fetch_add(sparkplug_metrics(&p.payload), Ordering::Relaxed);
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });
}

fn upstream(output: &str, url: &str) -> String {
    let scheme = match output {
        "platform" => "platform",
        "sparkplug" => "sparkplug\n  sparkplug: { group_id: bench, edge_node_id: gw }",
        _ => "homeassistant",
    };
    format!("upstream:\n  url: {url}\n  org: bench\n  topic_scheme: {scheme}\n")
}

struct Figures {
    events_per_s: f64,
    cpu_percent: f64,
    rss_mib: f64,
    /// Of which anonymous memory (the rest: the executable's and the database's mapped
    /// pages, which the kernel can drop and read again).
    anon_mib: f64,
    peak_mib: f64,
    requests_per_cycle: f64,
    planned: usize,
    ddata_bytes_per_value: Option<f64>,
    /// Bytes written to storage per payload byte delivered (MQTT outputs).
    written_per_payload_byte: Option<f64>,
    fsyncs_per_s: Option<f64>,
}

/// Bytes a process caused to be written to storage so far.
fn written_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/io"))
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("write_bytes:"))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0)
}

/// fsync and fdatasync calls per second of `pid` (all threads) over `seconds`, counted
/// by strace; `None` without strace.
fn fsyncs_per_second(pid: u32, seconds: u64) -> Option<f64> {
    if !fieldbridge_testkit::found("strace") {
        return None;
    }
    let out = tempfile::NamedTempFile::new().ok()?;
    let mut strace = Command::new("strace")
        .args(["-f", "-c", "-e", "trace=fsync,fdatasync", "-o"])
        .arg(out.path())
        .args(["-p", &pid.to_string()])
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    std::thread::sleep(Duration::from_secs(seconds));
    common::signal(&strace, "INT");
    strace.wait().ok()?;
    let summary = std::fs::read_to_string(out.path()).ok()?;
    // The last line: "100.00  SECONDS  USECS/CALL  CALLS  [ERRORS]  total"; no calls at
    // all leaves no table.
    let calls: u64 = summary
        .lines()
        .find(|line| line.trim_end().ends_with("total"))
        .and_then(|line| line.split_whitespace().nth(3))
        .and_then(|calls| calls.parse().ok())
        .unwrap_or(0);
    Some(calls as f64 / seconds as f64)
}

fn measure(
    runtime: &tokio::runtime::Runtime,
    output: &'static str,
    seconds: u64,
    slaves: &[SimSlave],
    buses: &str,
) -> Figures {
    let dir = tempfile::tempdir().unwrap();
    let broker = (output != "stdout").then(|| TestBroker::quiet_mosquitto(dir.path()));
    let delivered = Arc::new(Delivered::default());
    let mut config = format!(
        "gateway: {{ data_dir: \"{}\" }}\n",
        dir.path().join("data").display()
    );
    if let Ok(window) = std::env::var("COMMIT_WINDOW") {
        config.push_str(&format!("queue: {{ commit_window: {window} }}\n"));
    }
    if let Some(broker) = &broker {
        config.push_str(&upstream(output, &broker.url()));
        runtime.block_on(count_data(broker.port, output, delivered.clone()));
    }
    config.push_str(buses);
    let config_path = dir.path().join("bench.yaml");
    std::fs::write(&config_path, config).unwrap();

    let binary = env!("CARGO_BIN_EXE_fieldbridge");
    let check = Command::new(binary)
        .args(["check", "--config"])
        .arg(&config_path)
        .output()
        .unwrap();
    let check_text = String::from_utf8_lossy(&check.stdout);
    let planned: usize = check_text
        .lines()
        .last()
        .and_then(|l| l.split(", ").nth(3))
        .and_then(|p| p.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "check prints the request count: {}",
                String::from_utf8_lossy(&check.stderr)
            )
        });

    let mut child = Command::new(binary)
        .args(["run", "--config"])
        .arg(&config_path)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let lines = Arc::new(AtomicU64::new(0));
    let counter = lines.clone();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if line.is_err() {
                break;
            }
            counter.fetch_add(1, Ordering::Relaxed);
        }
    });
    let events = || match output {
        "stdout" => lines.load(Ordering::Relaxed),
        _ => delivered.messages.load(Ordering::Relaxed),
    };

    // Warm up, then measure.
    std::thread::sleep(Duration::from_secs(3));
    let ticks_per_second = 100.0; // USER_HZ on Linux
    let requests_before: u64 = slaves.iter().map(SimSlave::requests).sum();
    let events_before = events();
    let (bytes_before, metrics_before) = (
        delivered.bytes.load(Ordering::Relaxed),
        delivered.metrics.load(Ordering::Relaxed),
    );
    let ticks_before = cpu_ticks(pid);
    let written_before = written_bytes(pid);
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(seconds));
    let elapsed = started.elapsed().as_secs_f64();
    let ticks = cpu_ticks(pid) - ticks_before;
    let written = written_bytes(pid) - written_before;
    let requests: u64 = slaves.iter().map(SimSlave::requests).sum::<u64>() - requests_before;
    let cycles = (events() - events_before) as f64;
    let bytes = delivered.bytes.load(Ordering::Relaxed) - bytes_before;
    let metrics = delivered.metrics.load(Ordering::Relaxed) - metrics_before;
    let peak_rss = status_kib(pid, "VmHWM:");
    let rss = status_kib(pid, "VmRSS:");
    let anon = status_kib(pid, "RssAnon:");
    // Separately: strace slows what it traces.
    let fsyncs = (output != "stdout")
        .then(|| fsyncs_per_second(pid, seconds.min(10)))
        .flatten();
    let _ = child.kill();
    let _ = child.wait();
    drop(broker);
    Figures {
        events_per_s: cycles / elapsed,
        cpu_percent: ticks as f64 / ticks_per_second / elapsed * 100.0,
        rss_mib: rss as f64 / 1024.0,
        anon_mib: anon as f64 / 1024.0,
        peak_mib: peak_rss as f64 / 1024.0,
        requests_per_cycle: requests as f64 / (elapsed * 10.0 * DEVICES as f64),
        planned: planned / DEVICES,
        ddata_bytes_per_value: (output == "sparkplug" && metrics > 0)
            .then(|| bytes as f64 / metrics as f64),
        written_per_payload_byte: (output != "stdout" && bytes > 0)
            .then(|| written as f64 / bytes as f64),
        fsyncs_per_s: fsyncs,
    }
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let seconds: u64 = args.iter().find_map(|a| a.parse().ok()).unwrap_or(30);
    let mut outputs: Vec<&'static str> = OUTPUTS
        .into_iter()
        .filter(|o| args.iter().any(|a| a == o))
        .collect();
    if outputs.is_empty() {
        outputs = OUTPUTS.to_vec();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let slaves: Vec<SimSlave> = (0..DEVICES).map(|_| SimSlave::default()).collect();
    let mut buses = String::from("buses:\n");
    let mut devices = String::from("devices:\n");
    for (i, slave) in slaves.iter().enumerate() {
        let (port, _) = runtime
            .block_on(sim::spawn_tcp(SimBus::new([(1, slave.clone())])))
            .unwrap();
        buses.push_str(&format!(
            "  - {{ name: plc{i}, kind: tcp, host: 127.0.0.1, port: {port}, timeout: 1s }}\n"
        ));
        devices.push_str(&format!(
            "  - id: dev{i}\n    type: plc\n    token: bench-token\n    bus: plc{i}\n    unit: 1\n    poll: 100ms\n    qos: 1\n    registers:\n{}",
            device_registers()
        ));
    }
    buses.push_str(&devices);
    // Every cycle's holding registers differ from the last ones.
    let changing = Arc::new(AtomicBool::new(true));
    let running = changing.clone();
    let changed = slaves.clone();
    std::thread::spawn(move || {
        let mut round = 0u16;
        while running.load(Ordering::Relaxed) {
            round = round.wrapping_add(1);
            let words: Vec<u16> = (0..HOLDING_WORDS).map(|i| round.wrapping_add(i)).collect();
            for slave in &changed {
                slave.set_holding(0, &words);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });

    println!("acquisition: {DEVICES} devices x {TAGS} tags, poll 100 ms, holding registers changing every cycle, {seconds} s per output");
    println!("  output          events/s  cpu % of a core  rss MiB (peak)  anon MiB  requests/cycle (planned)  DDATA bytes/value  written B/payload B  fsync/s");
    for output in outputs {
        if output != "stdout" && !fieldbridge_testkit::found("mosquitto") {
            println!("  {output:<15} skipped: mosquitto is not installed");
            continue;
        }
        let f = measure(&runtime, output, seconds, &slaves, &buses);
        println!(
            "  {output:<15} {:>8.0}  {:>15.2}  {:>6.1} ({:>5.1})  {:>8.1}  {:>14.2} ({})  {:>17}  {:>19}  {:>7}",
            f.events_per_s,
            f.cpu_percent,
            f.rss_mib,
            f.peak_mib,
            f.anon_mib,
            f.requests_per_cycle,
            f.planned,
            f.ddata_bytes_per_value
                .map_or("-".to_owned(), |b| format!("{b:.1}")),
            f.written_per_payload_byte
                .map_or("-".to_owned(), |b| format!("{b:.2}")),
            f.fsyncs_per_s.map_or("-".to_owned(), |n| format!("{n:.1}")),
        );
    }
    changing.store(false, Ordering::Relaxed);
}
