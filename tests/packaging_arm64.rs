//! The arm64 packages, cross-built by `packaging/build-packages.sh` (a release build into
//! target/cross: slow the first time, then reused), run under qemu-user by
//! `packaging/qemu-smoke.sh`: `--version` of both programs, `fieldbridge check` on the
//! installed and the example configuration, and the broker with one MQTT round trip.
//!
//! Without the cross tools and qemu the test is reported as ignored (with CI=true it
//! fails instead); `.ci/run` installs them.

use std::path::Path;
use std::process::{Command, Stdio};

use fieldbridge_testkit::{Need, Suite};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// What the test needs from this machine.
fn needs() -> Vec<Need> {
    vec![
        Need::condition(
            cfg!(all(target_os = "linux", target_arch = "x86_64")),
            "the arm64 packages are cross-built on an x86_64 Linux host",
        ),
        Need::program("qemu-aarch64", "apt-get install qemu-user"),
        Need::program(
            "aarch64-linux-gnu-gcc",
            "apt-get install gcc-aarch64-linux-gnu",
        ),
        Need::file(
            "/usr/bin/rustc",
            "Debian's rustc: apt-get install rustc-web",
        ),
        Need::program("cargo-deb", "cargo install cargo-deb --locked"),
        Need::file(
            "/usr/aarch64-linux-gnu/lib/libc.so.6",
            "apt-get install libc6-dev-arm64-cross",
        ),
        Need::mosquitto_clients(),
    ]
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

fn arm64_packages_run_under_qemu() {
    let out = tempfile::tempdir().expect("temporary directory");
    run(Command::new("packaging/build-packages.sh")
        .args(["--arch", "arm64", "--out"])
        .arg(out.path()));
    // The smoke script fails on any step; the broker's round trip uses
    // mosquitto_pub/mosquitto_sub (one of the needs).
    run(Command::new("packaging/qemu-smoke.sh")
        .args(["--arch", "arm64", "--packages"])
        .arg(out.path()));
}

fn main() -> std::process::ExitCode {
    let mut suite = Suite::new();
    suite.test(
        "arm64_packages_run_under_qemu",
        &needs(),
        arm64_packages_run_under_qemu,
    );
    suite.run()
}
