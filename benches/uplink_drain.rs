//! Drain benchmark: 100,000 queued QoS 1 events of 20 devices published to a loopback
//! Mosquitto by MQTT 3.1.1 and by MQTT 5 sessions, each against bare rumqttc QoS 1
//! publishers (no queue) of its version in the same run, with the bytes the broker read
//! per event (topic aliases at work with MQTT 5); then the memory one idle connected
//! session costs.
//!
//! Run: `cargo bench --bench uplink_drain` (needs `mosquitto` on the PATH); `-- 3.1.1`
//! or `-- 5` drains with that version only, `-- nodelay` turns Nagle's algorithm off in
//! Mosquitto.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::{BrokerConfig, BrokerKind, TestBroker};
use fieldbridge::event::{Event, Qos};
use fieldbridge::store::{Store, StoreSettings};
use fieldbridge::uplink::{DeviceIdentity, Protocol, SessionStatus, Uplink, UplinkSettings};
use rumqttc::{AsyncClient, Event as MqttEvent, MqttOptions, NetworkOptions, Packet, QoS};
use tokio::sync::{mpsc, watch};

const DEVICES: usize = 20;
const EVENTS: usize = 100_000;
const INFLIGHT: u16 = 100;
const IDLE_SESSIONS: usize = 500;
const TOPIC: &str = "iot-2/evt/status/fmt/json";

fn payload(seq: usize) -> Vec<u8> {
    format!(
        "{{\"d\":{{\"temperature\":21.5,\"pressure\":1.013,\"pump_on\":true,\"seq\":{seq}}},\
         \"ts\":\"2026-11-21T10:15:30.120Z\"}}"
    )
    .into_bytes()
}

fn device(index: usize) -> DeviceIdentity {
    DeviceIdentity {
        managed: false,
        id: format!("dev-{index:04}"),
        device_type: "bench".into(),
        token: None,
        tls: None,
    }
}

/// 20 plain rumqttc clients of `protocol`, each publishing its share at QoS 1 with the
/// same inflight window as the uplink (an MQTT 5 client also keeps to the broker's
/// Receive Maximum, as the uplink does), as fast as PUBACKs allow. Returns messages per
/// second.
async fn bare_publishers(port: u16, protocol: Protocol) -> f64 {
    let per_client = EVENTS / DEVICES;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for client_index in 0..DEVICES {
        let id = format!("bare-{client_index}");
        tasks.push(match protocol {
            Protocol::V311 => tokio::spawn(bare_v311(id, port, per_client)),
            Protocol::V5 => tokio::spawn(bare_v5(id, port, per_client)),
        });
    }
    for task in tasks {
        task.await.unwrap();
    }
    EVENTS as f64 / started.elapsed().as_secs_f64()
}

/// Publishes `messages` events at QoS 1 through `client` while polling `eventloop` until
/// each is acknowledged: rumqttc's two clients have the same methods under the same
/// names, and differ only in their types.
macro_rules! publish_until_acknowledged {
    ($client:expr, $eventloop:expr, $messages:expr, $qos:expr, $puback:pat) => {{
        let (client, mut eventloop, messages) = ($client, $eventloop, $messages);
        let publisher = tokio::spawn(async move {
            for seq in 0..messages {
                client
                    .publish(TOPIC, $qos, false, payload(seq))
                    .await
                    .expect("publish");
            }
            client
        });
        let mut acked = 0;
        while acked < messages {
            match eventloop.poll().await {
                Ok($puback) => acked += 1,
                Ok(_) => {}
                Err(error) => panic!("bare publisher: {error}"),
            }
        }
        let _client = publisher.await.unwrap();
    }};
}

async fn bare_v311(id: String, port: u16, messages: usize) {
    let mut options = MqttOptions::new(id, "127.0.0.1", port);
    options
        .set_clean_session(true)
        .set_inflight(INFLIGHT)
        .set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(options, usize::from(INFLIGHT));
    let mut network = NetworkOptions::new();
    network.set_tcp_nodelay(true);
    eventloop.set_network_options(network);
    publish_until_acknowledged!(
        client,
        eventloop,
        messages,
        QoS::AtLeastOnce,
        MqttEvent::Incoming(Packet::PubAck(_))
    );
}

async fn bare_v5(id: String, port: u16, messages: usize) {
    use rumqttc::v5::mqttbytes::v5::Packet as Packet5;
    use rumqttc::v5::mqttbytes::QoS as QoS5;
    use rumqttc::v5::{AsyncClient as Client5, Event as Event5, MqttOptions as Options5};
    let mut options = Options5::new(id, "127.0.0.1", port);
    options
        .set_clean_start(true)
        .set_outgoing_inflight_upper_limit(INFLIGHT)
        .set_keep_alive(Duration::from_secs(30));
    let mut network = NetworkOptions::new();
    network.set_tcp_nodelay(true);
    options.set_network_options(network);
    let (client, eventloop) = Client5::new(options, usize::from(INFLIGHT));
    publish_until_acknowledged!(
        client,
        eventloop,
        messages,
        QoS5::AtLeastOnce,
        Event5::Incoming(Packet5::PubAck(_))
    );
}

/// What one queue drain measured.
struct Drain {
    acknowledged_rate: f64,
    deleted_rate: f64,
    /// CPU milliseconds per 1000 messages: this process, the broker.
    cpu: (f64, f64),
    /// Bytes the broker read from its sockets per event.
    wire_bytes: f64,
}

/// Fills the queue while the broker is down, starts the broker and measures until
/// every event is acknowledged, then until every row is deleted.
async fn queue_drain(
    broker: &mut TestBroker,
    data_dir: &std::path::Path,
    protocol: Protocol,
) -> Drain {
    let store = Store::open(StoreSettings::new(data_dir)).await.unwrap();
    let mut settings = UplinkSettings::new(broker.url().parse().unwrap(), "bench");
    settings.protocol = protocol;
    settings.inflight = INFLIGHT;
    settings.reconnect_min = Duration::from_millis(20);
    settings.reconnect_max = Duration::from_millis(20);
    let devices: Vec<DeviceIdentity> = (0..DEVICES).map(device).collect();
    broker.stop();
    let (sender, events) = mpsc::channel(1024);
    let uplink = Uplink::start(settings, store.clone(), devices.clone(), events).unwrap();
    for seq in 0..EVENTS {
        let device = &devices[seq % DEVICES];
        sender
            .send(Event::encoded(
                &device.id,
                "status",
                Qos::AtLeastOnce,
                payload(seq),
            ))
            .await
            .unwrap();
    }
    loop {
        let queued: u64 = store.stats().await.unwrap().iter().map(|s| s.depth).sum();
        if queued == EVENTS as u64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let statuses: Vec<_> = devices
        .iter()
        .map(|d| uplink.status(&d.id).unwrap())
        .collect();
    let acknowledged = |statuses: &[watch::Receiver<SessionStatus>]| -> u64 {
        statuses.iter().map(|s| s.borrow().acknowledged).sum()
    };
    let own_cpu = cpu_seconds("self");
    let started = Instant::now();
    broker.restart();
    while acknowledged(&statuses) < EVENTS as u64 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let acked_rate = EVENTS as f64 / started.elapsed().as_secs_f64();
    // The restarted broker's CPU is all drain work (plus its negligible start-up).
    let broker_pid = broker.pid().unwrap().to_string();
    let cpu = (
        per_thousand(cpu_seconds("self") - own_cpu),
        per_thousand(cpu_seconds(&broker_pid)),
    );
    let wire_bytes = read_bytes(&broker_pid) as f64 / EVENTS as f64;
    loop {
        let queued: u64 = store.stats().await.unwrap().iter().map(|s| s.depth).sum();
        if queued == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let deleted_rate = EVENTS as f64 / started.elapsed().as_secs_f64();
    uplink.shutdown().await;
    Drain {
        acknowledged_rate: acked_rate,
        deleted_rate,
        cpu,
        wire_bytes,
    }
}

/// Runs the future `work` makes on a one-thread runtime of its own, as `fieldbridge run`
/// runs.
fn as_the_gateway_runs<T: Send, F: std::future::Future<Output = T>>(
    work: impl FnOnce() -> F + Send,
) -> T {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap()
                    .block_on(work())
            })
            .join()
            .unwrap()
    })
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap()
}

/// RSS growth per connected, idle session.
async fn session_memory(broker: &TestBroker, data_dir: &std::path::Path) -> f64 {
    let store = Store::open(StoreSettings::new(data_dir)).await.unwrap();
    let devices: Vec<DeviceIdentity> = (0..IDLE_SESSIONS).map(|i| device(1000 + i)).collect();
    let before = rss_kib();
    let (_sender, events) = mpsc::channel(1024);
    let uplink = Uplink::start(
        UplinkSettings::new(broker.url().parse().unwrap(), "bench"),
        store.clone(),
        devices.clone(),
        events,
    )
    .unwrap();
    for d in &devices {
        let mut status = uplink.status(&d.id).unwrap();
        status.wait_for(|s| s.connected).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss_kib();
    uplink.shutdown().await;
    (after.saturating_sub(before)) as f64 / IDLE_SESSIONS as f64
}

/// Bytes a process has read so far (`rchar`: sockets included).
fn read_bytes(pid: &str) -> u64 {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap_or_default();
    io.lines()
        .find_map(|line| line.strip_prefix("rchar:"))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0)
}

/// CPU seconds (user + system) a process has used so far.
fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 12th and
    // 13th of them, in clock ticks (100 per second on Linux).
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: u64 = fields[11..13]
        .iter()
        .map(|f| f.parse::<u64>().unwrap_or(0))
        .sum();
    ticks as f64 / 100.0
}

fn per_thousand(cpu_seconds: f64) -> f64 {
    cpu_seconds * 1000.0 / (EVENTS as f64 / 1000.0)
}

/// Runs `phase`, returning its rate and the CPU milliseconds per 1000 messages
/// spent by this process and by the broker.
async fn measured<F: std::future::Future<Output = f64>>(
    broker_pid: &str,
    phase: F,
) -> (f64, f64, f64) {
    let (own, theirs) = (cpu_seconds("self"), cpu_seconds(broker_pid));
    let rate = phase.await;
    (
        rate,
        per_thousand(cpu_seconds("self") - own),
        per_thousand(cpu_seconds(broker_pid) - theirs),
    )
}

fn main() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let tmp = tempfile::tempdir().unwrap();
        let args: Vec<String> = std::env::args().skip(1).collect();
        // `nodelay`: Mosquitto with `set_tcp_nodelay true` (not its default), to see what
        // Nagle's algorithm on its side costs.
        let config = BrokerConfig {
            quiet: true,
            tcp_nodelay: args.iter().any(|a| a == "nodelay"),
            ..BrokerConfig::default()
        };
        let mut broker = TestBroker::start(BrokerKind::Mosquitto, tmp.path(), config);
        println!("drain of {EVENTS} queued QoS 1 events, {DEVICES} devices, inflight {INFLIGHT}");
        println!("(CPU = milliseconds per 1000 messages, this process / mosquitto)");
        println!("(wire = bytes the broker read per event)");
        let protocols: Vec<(Protocol, &str)> = [(Protocol::V311, "3.1.1"), (Protocol::V5, "5")]
            .into_iter()
            .filter(|(_, name)| !args.iter().any(|a| a == "3.1.1" || a == "5") || args.iter().any(|a| a == name))
            .collect();
        // Rounds alternate the bare publishers and the drains so that both see the same
        // machine; each protocol's drain is set against bare publishers of its version.
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        let mut rates = vec![(Vec::new(), Vec::new()); protocols.len()];
        for round in 0..3 {
            for (index, (protocol, name)) in protocols.iter().enumerate() {
                let pid = broker.pid().unwrap().to_string();
                let (rate, own, theirs) =
                    measured(&pid, bare_publishers(broker.port, *protocol)).await;
                println!("  bare rumqttc publishers, MQTT {name:5}: {rate:8.0} msg/s   CPU {own:5.1} / {theirs:5.1}");
                rates[index].0.push(rate);
                if round == 2 {
                    continue;
                }
                let dir = tmp.path().join(format!("drain-{round}-{name}"));
                let drain = as_the_gateway_runs(|| queue_drain(&mut broker, &dir, *protocol));
                println!(
                    "  queue drain, MQTT {name:5}:            {:8.0} msg/s   CPU {:5.1} / {:5.1}   wire {:5.1} B   (rows deleted: {:.0} msg/s)",
                    drain.acknowledged_rate, drain.cpu.0, drain.cpu.1, drain.wire_bytes, drain.deleted_rate
                );
                rates[index].1.push(drain.acknowledged_rate);
            }
        }
        for ((_, name), (bare, drain)) in protocols.iter().zip(&rates) {
            let (bare, drain) = (mean(bare), mean(drain));
            println!(
                "mean, MQTT {name}: bare {bare:.0} msg/s, queue drain {drain:.0} msg/s = {:.2}x bare",
                drain / bare
            );
        }

        let memory_dir = tmp.path().join("memory");
        let per_session = as_the_gateway_runs(|| session_memory(&broker, &memory_dir));
        println!(
            "memory: {per_session:.0} KiB RSS per idle connected session ({IDLE_SESSIONS} sessions)"
        );
    });
}
