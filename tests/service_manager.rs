//! Both programs under systemd's notification protocol, with a datagram socket standing
//! in for systemd: READY once serving, the watchdog fed at half its period,
//! RELOADING then READY around a gateway reload, STOPPING on SIGTERM.

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{broker_binary, signal, KillOnDrop, DEADLINE};
use fieldbridge_sim::{self as sim, SimBus, SimSlave};

/// Watchdog period given to the programs: they must notify every 250 ms.
const WATCHDOG_USEC: &str = "500000";

/// The socket a program under test notifies.
struct NotifySocket {
    socket: UnixDatagram,
    path: PathBuf,
}

impl NotifySocket {
    fn bind(dir: &Path) -> Self {
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
        NotifySocket { socket, path }
    }

    /// Starts `program` as systemd would: NOTIFY_SOCKET, and a watchdog for its pid.
    /// Killed when the test ends, also when it fails.
    fn spawn(&self, program: &Path, args: &[&str]) -> KillOnDrop {
        let child = Command::new("sh")
            // exec keeps the shell's pid, so WATCHDOG_PID names the program.
            .args(["-c", "WATCHDOG_PID=$$ exec \"$0\" \"$@\""])
            .arg(program)
            .args(args)
            .env("NOTIFY_SOCKET", &self.path)
            .env("WATCHDOG_USEC", WATCHDOG_USEC)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("program starts");
        KillOnDrop(child)
    }

    /// Reads notifications until one has the line `wanted`; returns it whole.
    fn wait_for(&self, wanted: &str) -> String {
        let deadline = Instant::now() + DEADLINE;
        let mut seen = Vec::new();
        let mut buffer = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no {wanted} within {DEADLINE:?}; got {seen:?}"
            );
            self.socket.set_read_timeout(Some(left)).unwrap();
            let Ok(n) = self.socket.recv(&mut buffer) else {
                continue;
            };
            let message = String::from_utf8_lossy(&buffer[..n]).into_owned();
            if message.lines().any(|line| line == wanted) {
                return message;
            }
            seen.push(message);
        }
    }

    /// The watchdog is fed repeatedly, not once.
    fn expect_watchdog_feeding(&self) {
        for _ in 0..3 {
            self.wait_for("WATCHDOG=1");
        }
    }
}

fn exits_successfully(child: &mut Child) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            return;
        }
        assert!(Instant::now() < deadline, "no exit within {DEADLINE:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_notifies_ready_watchdog_reload_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let (port, _) = sim::spawn_tcp(SimBus::new([(1, SimSlave::default())]))
        .await
        .unwrap();
    let config = dir.path().join("gateway.yaml");
    std::fs::write(
        &config,
        format!(
            "gateway: {{ data_dir: {data} }}\nbuses: [{{ name: plc, kind: tcp, host: 127.0.0.1, port: {port} }}]\ndevices:\n  - {{ id: boiler-1, type: boiler, bus: plc, unit: 1, poll: 1s, registers: [{{ name: temperature, kind: holding, address: 0, type: u16 }}] }}\n",
            data = dir.path().display()
        ),
    )
    .unwrap();
    let notify = NotifySocket::bind(dir.path());
    let mut gateway = notify.spawn(
        Path::new(env!("CARGO_BIN_EXE_fieldbridge")),
        &["run", "--config", config.to_str().unwrap()],
    );
    let ready = tokio::task::block_in_place(|| notify.wait_for("READY=1"));
    assert!(ready.contains("STATUS="), "{ready}");
    tokio::task::block_in_place(|| {
        notify.expect_watchdog_feeding();
        signal(&gateway, "HUP");
        notify.wait_for("RELOADING=1");
        notify.wait_for("READY=1");
        signal(&gateway, "TERM");
        notify.wait_for("STOPPING=1");
        exits_successfully(&mut gateway);
    });
}

#[test]
fn broker_notifies_ready_watchdog_and_stopping() {
    let broker = broker_binary();
    let dir = tempfile::tempdir().unwrap();
    let notify = NotifySocket::bind(dir.path());
    let mut process = notify.spawn(&broker, &["--listen", "127.0.0.1:0"]);
    let ready = notify.wait_for("READY=1");
    assert!(ready.contains("STATUS=listening on 127.0.0.1:"), "{ready}");
    notify.expect_watchdog_feeding();
    signal(&process, "TERM");
    notify.wait_for("STOPPING=1");
    exits_successfully(&mut process);
}
