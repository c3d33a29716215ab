//! The arm64 packages, cross-built by `packaging/build-packages.sh` (a release build into
//! target/cross: slow the first time, then reused), run under qemu-user by
//! `packaging/qemu-smoke.sh`: `--version` of both programs, `fieldbridge check` on the
//! installed and the example configuration, and the broker with one MQTT round trip.
//!
//! Without the cross tools and qemu, and when CI is not set, the test reports that it
//! skipped; `.ci/run` installs them.

use std::path::Path;
use std::process::{Command, Stdio};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn found(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// What this machine lacks for the test, if anything.
fn missing() -> Vec<&'static str> {
    let mut missing = Vec::new();
    if !cfg!(all(target_os = "linux", target_arch = "x86_64")) {
        missing.push("an x86_64 Linux host");
    }
    let needs = [
        ("qemu-aarch64", "qemu-aarch64 (package qemu-user)"),
        ("aarch64-linux-gnu-gcc", "gcc-aarch64-linux-gnu"),
        ("/usr/bin/rustc", "Debian's rustc (package rustc-web)"),
        ("cargo-deb", "cargo-deb"),
    ];
    for (program, what) in needs {
        if !found(program) {
            missing.push(what);
        }
    }
    if !Path::new("/usr/aarch64-linux-gnu/lib/libc.so.6").is_file() {
        missing.push("the arm64 C library (package libc6-dev-arm64-cross)");
    }
    missing
}

fn run(command: &mut Command) {
    let output = command
        .current_dir(repo())
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{command:?} failed with {}\nstdout:\n{stdout}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    print!("{stdout}");
}

#[test]
fn arm64_packages_run_under_qemu() {
    let missing = missing();
    if !missing.is_empty() {
        assert!(
            std::env::var("CI").is_err(),
            "CI requires the arm64 test, but this machine lacks: {}",
            missing.join(", ")
        );
        eprintln!("skipped: this machine lacks {}", missing.join(", "));
        return;
    }
    let out = tempfile::tempdir().expect("temporary directory");
    run(Command::new("packaging/build-packages.sh")
        .args(["--arch", "arm64", "--out"])
        .arg(out.path()));
    // The smoke script fails on any step; the broker's round trip needs
    // mosquitto_pub/mosquitto_sub, which the tests require anyway.
    assert!(found("mosquitto_pub"), "mosquitto-clients are needed");
    run(Command::new("packaging/qemu-smoke.sh")
        .args(["--arch", "arm64", "--packages"])
        .arg(out.path()));
}
