//! Back after an outage: 20 device sessions connected to a loopback Mosquitto, the broker
//! stopped for 10, 30 and 60 s and started again; for each outage, the time from the
//! broker's return until each session is connected again (median and slowest), with
//! the default reconnect delays and with the previous default (doubling to 30 s).
//!
//! Run: `cargo bench --bench reconnect` (needs `mosquitto`; about four minutes); `-- 5`
//! with MQTT 5 sessions.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::TestBroker;
use fieldbridge::store::{Store, StoreSettings};
use fieldbridge::uplink::{DeviceIdentity, Protocol, Uplink, UplinkSettings};
use tokio::sync::mpsc;

const DEVICES: usize = 20;
const OUTAGES: [u64; 3] = [10, 30, 60];

fn device(index: usize) -> DeviceIdentity {
    DeviceIdentity {
        managed: false,
        id: format!("dev-{index:02}"),
        device_type: "bench".into(),
        token: None,
        tls: None,
    }
}

/// Seconds from the broker's return until each session is connected again, sorted.
async fn back_after(broker: &mut TestBroker, uplink: &Uplink, outage: Duration) -> Vec<f64> {
    let mut statuses: Vec<_> = (0..DEVICES)
        .map(|i| uplink.status(&device(i).id).unwrap())
        .collect();
    for status in &mut statuses {
        status.wait_for(|s| s.connected).await.unwrap();
    }
    broker.stop();
    for status in &mut statuses {
        status.wait_for(|s| !s.connected).await.unwrap();
    }
    tokio::time::sleep(outage).await;
    broker.restart();
    let back = Instant::now();
    let waits = statuses.into_iter().map(|mut status| async move {
        status.wait_for(|s| s.connected).await.unwrap();
        back.elapsed().as_secs_f64()
    });
    let mut waits = futures::future::join_all(waits).await;
    waits.sort_by(f64::total_cmp);
    waits
}

fn main() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let tmp = tempfile::tempdir().unwrap();
        let mut broker = TestBroker::quiet_mosquitto(tmp.path());
        let (protocol, version) = if std::env::args().any(|a| a == "5") {
            (Protocol::V5, "MQTT 5")
        } else {
            (Protocol::V311, "MQTT 3.1.1")
        };
        println!(
            "{DEVICES} {version} sessions; seconds from the broker's return until connected again"
        );
        println!("  reconnect delays                    outage   median   slowest");
        let defaults = UplinkSettings::new(broker.url().parse().unwrap(), "bench");
        let variants = [
            ("default (0.5 s doubling to 2 s)", defaults.reconnect_max),
            ("previous (0.5 s doubling to 30 s)", Duration::from_secs(30)),
        ];
        for (index, (name, reconnect_max)) in variants.into_iter().enumerate() {
            let store = Store::open(StoreSettings::new(tmp.path().join(format!("data-{index}"))))
                .await
                .unwrap();
            let mut settings = UplinkSettings::new(broker.url().parse().unwrap(), "bench");
            settings.reconnect_max = reconnect_max;
            settings.protocol = protocol;
            let (_sender, events) = mpsc::channel(16);
            let devices = (0..DEVICES).map(device).collect();
            let uplink = Uplink::start(settings, store, devices, events).unwrap();
            for outage in OUTAGES {
                let waits = back_after(&mut broker, &uplink, Duration::from_secs(outage)).await;
                println!(
                    "  {name:<35} {outage:>4} s   {:>6.2}   {:>7.2}",
                    waits[waits.len() / 2],
                    waits[waits.len() - 1]
                );
            }
            uplink.shutdown().await;
        }
    });
}
