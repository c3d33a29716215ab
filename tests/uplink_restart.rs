//! The gateway process killed with SIGKILL, during a broker outage and while it drains
//! its queue: after a restart no event is missing, and duplicates stay within the
//! inflight window.
//!
//! The gateway runs in a child process: this same test binary, started with
//! `FIELDBRIDGE_TEST_GATEWAY` set, runs the store and uplink instead of the tests and
//! takes commands on stdin (`send FROM TO`, `queue FROM TO`), answering `done TO` on
//! stdout.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc as std_mpsc;

use common::*;
use fieldbridge::event::Qos;
use fieldbridge::store::{read_stats, Store, StoreSettings};
use fieldbridge::uplink::{Protocol, Uplink, UNDELETED_WINDOWS};
use fieldbridge_testkit::Suite;
use tokio::io::AsyncBufReadExt;
use tokio::sync::mpsc;

const CHILD_ENV: &str = "FIELDBRIDGE_TEST_GATEWAY";
const DEVICES: [&str; 3] = ["tank-1", "tank-2", "tank-3"];
/// Small, so that the bound on duplicates is tight.
const WINDOW: u16 = 20;
/// Prefix of the child's protocol lines.
const REPLY: &str = "gateway-reply:";

fn main() -> std::process::ExitCode {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        run_gateway(&spec);
        return std::process::ExitCode::SUCCESS;
    }
    let mut suite = Suite::new();
    broker_tests!(suite;
        a_killed_gateway_loses_no_event,
        a_killed_gateway_with_mqtt5_sessions_loses_no_event,
    );
    suite.run()
}

async fn a_killed_gateway_loses_no_event(kind: BrokerKind) {
    killed_gateway(kind, Protocol::V311).await;
}

async fn a_killed_gateway_with_mqtt5_sessions_loses_no_event(kind: BrokerKind) {
    killed_gateway(kind, Protocol::V5).await;
}

async fn killed_gateway(kind: BrokerKind, protocol: Protocol) {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("data");
    let (mut broker, mut subscriber) =
        persistent_broker_and_reader(kind, tmp.path(), "restart-reader").await;
    let received_all = |upto: u64| {
        move |m: &[Received]| {
            DEVICES.iter().all(|d| {
                let seqs: std::collections::HashSet<u64> = seqs_of(m, d).into_iter().collect();
                (0..upto).all(|s| seqs.contains(&s))
            })
        }
    };

    // Connected: the first events go straight through.
    let mut gateway = GatewayProcess::spawn(&broker.url(), &data_dir, protocol);
    gateway.command("send 0 100");
    subscriber
        .wait_for("events 0..100", received_all(100))
        .await;

    // Outage: events pile up in the queue; the gateway dies with them committed.
    broker.stop();
    gateway.command("queue 100 3000");
    gateway.kill();
    let stats = read_stats(&data_dir).await.unwrap();
    for device in DEVICES {
        let queued = stats.iter().find(|s| s.device_id == device).unwrap().depth;
        assert!(queued >= 2900, "{device}: only {queued} events queued");
    }

    // The broker is back; a new gateway process drains the queue and is killed
    // again halfway through.
    broker.restart();
    subscriber.wait_subscribed(2).await;
    let mut gateway = GatewayProcess::spawn(&broker.url(), &data_dir, protocol);
    subscriber
        .wait_for("part of the backlog", |m| m.len() >= 1500)
        .await;
    gateway.kill();

    let mut gateway = GatewayProcess::spawn(&broker.url(), &data_dir, protocol);
    gateway.command("send 3000 3050");
    subscriber.wait_for("every event", received_all(3050)).await;
    gateway.stop();

    let messages = subscriber.messages();
    for device in DEVICES {
        let duplicates = check_complete_and_ordered(device, &seqs_of(&messages, device), 0..3050);
        println!("{device}: {duplicates} duplicates");
        // Rows sent but not yet deleted are at most UNDELETED_WINDOWS windows; they can
        // be resent after each of the three interruptions (broker stop, two kills).
        assert!(
            duplicates <= 3 * UNDELETED_WINDOWS * usize::from(WINDOW),
            "{device}: {duplicates} duplicates"
        );
    }
    let stats = read_stats(&data_dir).await.unwrap();
    assert!(stats.iter().all(|s| s.depth == 0), "{stats:?}");
}

/// The gateway child process.
struct GatewayProcess {
    child: Child,
    stdin: Option<ChildStdin>,
    replies: std_mpsc::Receiver<String>,
}

impl GatewayProcess {
    fn spawn(url: &str, data_dir: &Path, protocol: Protocol) -> GatewayProcess {
        let protocol = match protocol {
            Protocol::V311 => "3.1.1",
            Protocol::V5 => "5",
        };
        let mut child = Command::new(std::env::current_exe().unwrap())
            .env(
                CHILD_ENV,
                format!("{url}|{}|{protocol}", data_dir.display()),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("the test binary starts");
        let stdout = child.stdout.take().unwrap();
        let (sender, replies) = std_mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some((_, reply)) = line.split_once(REPLY) {
                    if sender.send(reply.trim().to_owned()).is_err() {
                        return;
                    }
                }
            }
        });
        let mut process = GatewayProcess {
            stdin: child.stdin.take(),
            child,
            replies,
        };
        process.expect_reply("ready");
        process
    }

    /// Sends a command and waits for its `done` reply.
    fn command(&mut self, command: &str) {
        let stdin = self.stdin.as_mut().expect("gateway running");
        writeln!(stdin, "{command}").unwrap();
        stdin.flush().unwrap();
        let upto = command.rsplit(' ').next().unwrap();
        self.expect_reply(&format!("done {upto}"));
    }

    fn expect_reply(&mut self, expected: &str) {
        match self.replies.recv_timeout(DEADLINE) {
            Ok(reply) => assert_eq!(reply, expected),
            Err(e) => panic!("gateway did not answer {expected:?}: {e}"),
        }
    }

    /// SIGKILL: no shutdown code runs.
    fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Closing stdin asks for a graceful shutdown.
    fn stop(&mut self) {
        self.stdin = None;
        let status = self.child.wait().unwrap();
        assert!(status.success(), "gateway exited with {status}");
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The child: a gateway (store + uplink) driven by commands on stdin.
fn run_gateway(spec: &str) {
    let [url, data_dir, protocol] = spec.split('|').collect::<Vec<_>>()[..] else {
        panic!("url|data_dir|protocol, not {spec}");
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let store = Store::open(StoreSettings::new(data_dir)).await.unwrap();
        let mut settings = uplink_settings(url);
        settings.inflight = WINDOW;
        if protocol == "5" {
            settings.protocol = Protocol::V5;
        }
        let devices = DEVICES
            .iter()
            .map(|id| device_identity(id, "tank", None))
            .collect();
        let (sender, events) = mpsc::channel(1024);
        let uplink = Uplink::start(settings, store.clone(), devices, events).unwrap();
        println!("{REPLY} ready");
        let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        while let Some(line) = lines.next_line().await.unwrap() {
            let words: Vec<&str> = line.split_whitespace().collect();
            let [verb, from, to] = words[..] else {
                panic!("bad command {line:?}");
            };
            let (from, to): (u64, u64) = (from.parse().unwrap(), to.parse().unwrap());
            for seq in from..to {
                for device in DEVICES {
                    let event = test_event(device, "level", seq, Qos::AtLeastOnce);
                    sender.send(event).await.unwrap();
                }
            }
            if verb == "queue" {
                // Offline: answer once the last event of every device is committed.
                wait_until_async("events committed", || async {
                    let mut committed = true;
                    for device in DEVICES {
                        let rows = store.fetch(device, 0, 100_000).await.unwrap();
                        committed &= rows.last().is_some_and(|r| parse(&r.payload).1 == to - 1);
                    }
                    committed
                })
                .await;
            }
            println!("{REPLY} done {to}");
        }
        uplink.shutdown().await;
    });
}
