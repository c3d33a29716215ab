//! Enqueue benchmark: how many QoS 1 events per second the store-and-forward queue
//! commits while the broker is unreachable, directly and through the uplink's router
//! (20 devices), with `synchronous = FULL` (the default) and `NORMAL`.
//!
//! Run: `cargo bench --bench queue_enqueue`.

use std::path::Path;
use std::time::{Duration, Instant};

use fieldbridge::event::{Event, Qos};
use fieldbridge::store::{Store, StoreSettings, Synchronous};
use fieldbridge::uplink::{DeviceIdentity, Uplink, UplinkSettings};
use tokio::sync::mpsc;

const DEVICES: usize = 20;
const EVENTS: usize = 100_000;

fn event(seq: usize) -> Event {
    let mut values = serde_json::Map::new();
    values.insert("temperature".into(), 21.5.into());
    values.insert("pressure".into(), 1.013.into());
    values.insert("pump_on".into(), true.into());
    values.insert("seq".into(), seq.into());
    Event::new(
        &format!("dev-{:02}", seq % DEVICES),
        "status",
        Qos::AtLeastOnce,
        values,
        time::OffsetDateTime::now_utc(),
    )
}

async fn open(dir: &Path, synchronous: Synchronous) -> Store {
    let mut settings = StoreSettings::new(dir);
    settings.synchronous = synchronous;
    Store::open(settings).await.unwrap()
}

async fn queued(store: &Store) -> u64 {
    store.stats().await.unwrap().iter().map(|s| s.depth).sum()
}

/// `Store::enqueue` from one task until the last event is committed.
async fn direct(dir: &Path, synchronous: Synchronous) -> f64 {
    let store = open(dir, synchronous).await;
    let events: Vec<Event> = (0..EVENTS).map(event).collect();
    let started = Instant::now();
    for event in events {
        store.enqueue(event).await.unwrap();
    }
    store.flush().await.unwrap();
    let rate = EVENTS as f64 / started.elapsed().as_secs_f64();
    assert_eq!(queued(&store).await, EVENTS as u64);
    store.close().await;
    rate
}

/// Through the uplink's event channel while its 20 sessions cannot connect.
async fn through_uplink(dir: &Path, synchronous: Synchronous) -> f64 {
    let store = open(dir, synchronous).await;
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let devices = (0..DEVICES)
        .map(|i| DeviceIdentity {
            managed: false,
            id: format!("dev-{i:02}"),
            device_type: "bench".into(),
            token: None,
            tls: None,
        })
        .collect();
    let (sender, receiver) = mpsc::channel(1024);
    let settings = UplinkSettings::new(
        format!("mqtt://127.0.0.1:{closed_port}").parse().unwrap(),
        "bench",
    );
    let uplink = Uplink::start(settings, store.clone(), devices, receiver).unwrap();
    let events: Vec<Event> = (0..EVENTS).map(event).collect();
    let started = Instant::now();
    for event in events {
        sender.send(event).await.unwrap();
    }
    // The router has taken everything once its channel is empty; the flush then
    // waits for the commit (the router's last hand-over is checked below).
    while sender.capacity() < sender.max_capacity() {
        tokio::task::yield_now().await;
    }
    store.flush().await.unwrap();
    let rate = EVENTS as f64 / started.elapsed().as_secs_f64();
    while queued(&store).await < EVENTS as u64 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    uplink.shutdown().await;
    rate
}

fn main() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let tmp = tempfile::tempdir().unwrap();
        println!("enqueue of {EVENTS} QoS 1 events (~110-byte payloads) while offline:");
        for (name, synchronous) in [("FULL", Synchronous::Full), ("NORMAL", Synchronous::Normal)] {
            let direct = direct(&tmp.path().join(format!("direct-{name}")), synchronous).await;
            let uplink = through_uplink(&tmp.path().join(format!("uplink-{name}")), synchronous).await;
            println!("  synchronous={name:<6} Store::enqueue: {direct:8.0} events/s   through the uplink (20 devices): {uplink:8.0} events/s");
        }
    });
}
