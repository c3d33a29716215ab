//! Acquisition cost: 20 simulated Modbus TCP devices x 50 tags polled at 10 Hz
//! (10,000 tag reads/s). Runs the release `fieldbridge run` binary as a child process
//! against in-process simulators and reports the child's CPU (% of one core), its
//! peak RSS, the event rate, and the requests per poll cycle against the planner's
//! minimum.
//!
//! Run: `cargo bench --bench acquisition` (optionally `-- SECONDS`, default 30).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fieldbridge_sim::{self as sim, SimBus, SimSlave};

const DEVICES: usize = 20;
const TAGS: usize = 50;

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

fn main() {
    let seconds: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(30);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let slaves: Vec<SimSlave> = (0..DEVICES).map(|_| SimSlave::default()).collect();
    let mut config = format!(
        "gateway: {{ data_dir: \"{}\" }}\nbuses:\n",
        dir.path().display()
    );
    let mut devices = String::from("devices:\n");
    for (i, slave) in slaves.iter().enumerate() {
        let (port, _) = runtime
            .block_on(sim::spawn_tcp(SimBus::new([(1, slave.clone())])))
            .unwrap();
        config.push_str(&format!(
            "  - {{ name: plc{i}, kind: tcp, host: 127.0.0.1, port: {port}, timeout: 1s }}\n"
        ));
        devices.push_str(&format!(
            "  - id: dev{i}\n    type: plc\n    bus: plc{i}\n    unit: 1\n    poll: 100ms\n    qos: 0\n    registers:\n{}",
            device_registers()
        ));
    }
    config.push_str(&devices);
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
        .expect("check prints the request count");

    let mut child = Command::new(binary)
        .args(["run", "--config"])
        .arg(&config_path)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let events = Arc::new(AtomicU64::new(0));
    let counter = events.clone();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if line.is_err() {
                break;
            }
            counter.fetch_add(1, Ordering::Relaxed);
        }
    });

    // Warm up, then measure.
    std::thread::sleep(Duration::from_secs(3));
    let ticks_per_second = 100.0; // USER_HZ on Linux
    let requests_before: u64 = slaves.iter().map(SimSlave::requests).sum();
    let events_before = events.load(Ordering::Relaxed);
    let ticks_before = cpu_ticks(pid);
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(seconds));
    let elapsed = started.elapsed().as_secs_f64();
    let ticks = cpu_ticks(pid) - ticks_before;
    let requests: u64 = slaves.iter().map(SimSlave::requests).sum::<u64>() - requests_before;
    let event_count = events.load(Ordering::Relaxed) - events_before;
    let peak_rss = status_kib(pid, "VmHWM:");
    let rss = status_kib(pid, "VmRSS:");
    let _ = child.kill();
    let _ = child.wait();

    let cpu_percent = ticks as f64 / ticks_per_second / elapsed * 100.0;
    let cycles = event_count as f64;
    println!("acquisition: {DEVICES} devices x {TAGS} tags, poll 100 ms, {elapsed:.1} s measured");
    println!(
        "  events/s         {:.0} (tag reads/s {:.0})",
        cycles / elapsed,
        cycles * TAGS as f64 / elapsed
    );
    println!("  cpu              {cpu_percent:.2} % of one core");
    println!(
        "  rss              {:.1} MiB now, {:.1} MiB peak",
        rss as f64 / 1024.0,
        peak_rss as f64 / 1024.0
    );
    println!(
        "  requests/cycle   {:.2} per device measured, {} per device planned (minimum), {TAGS} with one read per tag",
        requests as f64 / cycles.max(1.0),
        planned / DEVICES
    );
}
