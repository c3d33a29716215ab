//! The `fieldbridge` binary as users drive it: `check` and `run` without an uplink.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio_serial::SerialPort as _;

use fieldbridge_sim::{self as sim, SimBus, SimSlave};

const BIN: &str = env!("CARGO_BIN_EXE_fieldbridge");

const EXAMPLE_TOKENS: [&str; 6] = [
    "BOILER_1_TOKEN",
    "HEAT_METER_1_TOKEN",
    "PLC_1_TOKEN",
    "FLUE_1_TOKEN",
    "GPS_1_TOKEN",
    "DOSING_1_TOKEN",
];

#[test]
fn check_prints_devices_tags_and_planned_requests() {
    let mut command = Command::new(BIN);
    command.args(["check", "--config", "gateway.example.yaml"]);
    for var in EXAMPLE_TOKENS {
        command.env(var, "secret-token-value");
    }
    let out = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("device boiler-1"), "{stdout}");
    // Registers show their engineering unit.
    assert!(stdout.contains("[bar]"), "{stdout}");
    assert!(stdout.contains("request(s) per poll"), "{stdout}");
    assert!(
        stdout.lines().last().unwrap().starts_with("ok: "),
        "{stdout}"
    );
    assert!(!stdout.contains("secret-token-value"));
}

#[test]
fn check_fails_with_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.yaml");
    std::fs::write(
        &path,
        "buses: [{ name: plc, kind: tcp, host: 127.0.0.1, port: 502 }]\ndevices:\n  - id: d1\n    type: t\n    bus: plc\n    unit: 1\n    registers:\n      - { name: x, kind: coil, address: 0, type: f32 }\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("broken.yaml:8:"), "{stderr}");
    assert!(stderr.contains("devices[0].registers[0].type"), "{stderr}");
}

#[test]
fn run_without_upstream_prints_json_lines_and_stops_on_sigterm() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let plc = SimSlave::default();
    plc.set_holding(0, &[0x41A4, 0x0000]);
    let port = serve_plc(&runtime, plc);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.yaml");
    std::fs::write(&path, device_config(dir.path(), port, "boiler-1")).unwrap();
    let mut child = run_gateway(&path, Stdio::piped(), Stdio::null());
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut readings = 0;
    while readings < 3 {
        let line = lines.next().expect("gateway printed a line").unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["device"], "boiler-1");
        if v["event"] == "status" {
            assert_eq!(v["d"]["temperature"], 20.5);
            assert!(v["ts"].as_str().unwrap().ends_with('Z'));
            readings += 1;
        }
    }
    // SIGTERM: the gateway stops within a second or two and exits cleanly.
    let stopped = Instant::now();
    common::signal(&child, "TERM");
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(stopped.elapsed() < Duration::from_secs(5));
}

/// Serves `plc` as unit 1 on a free loopback port, on `runtime`; returns the port.
fn serve_plc(runtime: &tokio::runtime::Runtime, plc: SimSlave) -> u16 {
    let (port, _) = runtime
        .block_on(sim::spawn_tcp(SimBus::new([(1, plc)])))
        .unwrap();
    port
}

/// `fieldbridge run --config PATH` with the given output streams.
fn run_gateway(config: &Path, stdout: Stdio, stderr: Stdio) -> Child {
    Command::new(BIN)
        .args(["run", "--config"])
        .arg(config)
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .unwrap()
}

fn device_config(dir: &Path, port: u16, device: &str) -> String {
    format!(
        "gateway: {{ data_dir: {} }}\nbuses: [{{ name: plc, kind: tcp, host: 127.0.0.1, port: {port} }}]\ndevices:\n  - {{ id: {device}, type: boiler, bus: plc, unit: 1, poll: 100ms, registers: [{{ name: temperature, kind: holding, address: 0, type: f32 }}] }}\n",
        dir.display()
    )
}

/// Waits (up to 30 s) for a stdout line from `device`.
fn wait_for_device(lines: &std::sync::mpsc::Receiver<String>, device: &str) {
    let deadline = Instant::now() + common::DEADLINE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no event from {device} within 30 s"));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        if v["device"] == device {
            return;
        }
    }
}

#[test]
fn sighup_reloads_a_valid_config_and_keeps_the_old_one_on_errors() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let port = serve_plc(&runtime, SimSlave::default());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.yaml");
    std::fs::write(&path, device_config(dir.path(), port, "first")).unwrap();
    let log_path = dir.path().join("stderr.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = run_gateway(&path, Stdio::piped(), log.into());
    let stdout = child.stdout.take().unwrap();
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    wait_for_device(&lines, "first");

    // A broken file: refused, and the running configuration keeps publishing.
    std::fs::write(&path, "devices: [ this is not yaml").unwrap();
    common::signal(&child, "HUP");
    common::poll_blocking("a reload error logged", Duration::from_millis(50), || {
        let log = std::fs::read_to_string(&log_path).unwrap();
        log.contains("reload refused").then_some(())
    });
    while lines.try_recv().is_ok() {}
    wait_for_device(&lines, "first");

    // A valid one: the new device takes over.
    std::fs::write(&path, device_config(dir.path(), port, "second")).unwrap();
    common::signal(&child, "HUP");
    wait_for_device(&lines, "second");

    common::signal(&child, "TERM");
    assert!(child.wait().unwrap().success());
}

#[test]
fn metrics_endpoint_counts_polls_per_device() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let port = serve_plc(&runtime, SimSlave::default());
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.yaml");
    std::fs::write(
        &path,
        format!(
            "metrics: 127.0.0.1:{metrics_port}\n{}",
            device_config(dir.path(), port, "boiler-1")
        ),
    )
    .unwrap();
    let mut child = run_gateway(&path, Stdio::null(), Stdio::null());
    let body = common::poll_blocking("metrics with polls", Duration::from_millis(100), || {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", metrics_port)).ok()?;
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut response = String::new();
        let _ = stream.read_to_string(&mut response);
        let polled = response.lines().any(|l| {
            l.strip_prefix("fieldbridge_polls_total{device=\"boiler-1\"} ")
                .and_then(|n| n.parse::<f64>().ok())
                .is_some_and(|n| n >= 2.0)
        });
        polled.then_some(response)
    });
    assert!(body.starts_with("HTTP/1.1 200 OK"), "{body}");
    assert!(body.contains("# TYPE fieldbridge_poll_failures_total counter"));
    common::signal(&child, "TERM");
    assert!(child.wait().unwrap().success());
}

/// Garbage that differs line by line is logged once per minute, not once per line.
#[test]
fn varied_serial_garbage_is_logged_at_a_bounded_rate() {
    use tokio::io::AsyncWriteExt as _;
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let _context = runtime.enter();
    let dir = tempfile::tempdir().unwrap();
    let (mut device_end, gateway_end) = tokio_serial::SerialStream::pair().expect("pty pair");
    let port = gateway_end.name().expect("pty name");
    let path = dir.path().join("gateway.yaml");
    std::fs::write(
        &path,
        format!(
            "gateway: {{ data_dir: {} }}\nbuses: [{{ name: line, kind: serial-line, port: \"{port}\", baud: 115200 }}]\ndevices:\n  - {{ id: meter-1, type: meter, bus: line, event: reading, qos: 0, parser: {{ json: true }} }}\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let log = dir.path().join("stderr.log");
    let mut child = run_gateway(
        &path,
        Stdio::piped(),
        Stdio::from(std::fs::File::create(&log).unwrap()),
    );
    let stdout = child.stdout.take().unwrap();
    let (sender, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = sender.send(line);
        }
    });
    let mut garbage = String::new();
    for n in 0..2000 {
        garbage += &format!("garbage {n} {}\n", "x".repeat(n % 50));
    }
    garbage += "{\"kwh\": 12.5}\n";
    runtime
        .block_on(device_end.write_all(garbage.as_bytes()))
        .unwrap();
    wait_for_device(&lines, "meter-1");
    common::signal(&child, "TERM");
    assert!(child.wait().unwrap().success());
    let text = std::fs::read_to_string(&log).unwrap();
    let garbage_lines = text
        .lines()
        .filter(|l| l.contains("unusable input"))
        .count();
    assert_eq!(garbage_lines, 1, "{text}");
    drop(gateway_end);
}
