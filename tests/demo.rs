//! `fieldbridge demo` runs with nothing set up: embedded broker, simulated devices,
//! events reaching the application, one command round trip, clean exit.

use std::process::Command;

#[test]
fn demo_shows_events_and_a_command_result_then_exits_cleanly() {
    let out = Command::new(env!("CARGO_BIN_EXE_fieldbridge"))
        .args(["demo", "--duration", "8s"])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("application got demo/boiler/boiler-1/evt/status"),
        "{stdout}"
    );
    assert!(
        stdout.contains("application got demo/energy-meter/meter-1/evt/energy"),
        "{stdout}"
    );
    let result = stdout
        .lines()
        .find(|l| l.starts_with("application got demo/boiler/boiler-1/evt/cmd-result"))
        .unwrap_or_else(|| panic!("no command result in:\n{stdout}"));
    // "application got TOPIC PAYLOAD"
    let payload: serde_json::Value =
        serde_json::from_str(result.splitn(4, ' ').nth(3).unwrap()).unwrap();
    assert_eq!(payload["rc"], 200);
    assert_eq!(payload["reqId"], "demo-setpoint-1");
    assert_eq!(payload["d"]["readback"], 65.5);
    assert!(stdout.trim_end().ends_with("demo stopped"));
}
