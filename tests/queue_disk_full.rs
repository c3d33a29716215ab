//! The queue on a file system that fills up: writes fail at once instead of retrying,
//! the events that cannot be stored are counted per device, the queue keeps what it had
//! committed, and it works again as soon as there is space, with the counts persisted.
//! Needs a real small file system: a tmpfs mounted over the data directory (root).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use fieldbridge::event::{Event, Qos};
use fieldbridge::store::{read_stats, DeviceStats, QueuedEvent, Store, StoreError, StoreSettings};
use fieldbridge_testkit::{fill_file_system, CapturedLogs, Need, Suite, Tmpfs};

const DEVICES: [&str; 2] = ["meter-1", "meter-2"];
/// What "at once" means on a loaded 2-core machine; a sleeping retry takes 1.2 s.
const FAIL_FAST: Duration = Duration::from_secs(2);
/// Events of 4 KiB in one burst: more than SQLite's page cache (2 MiB) holds.
const BURST: u32 = 1000;

fn event(device: &str, seq: u32) -> Event {
    padded(device, seq, 0)
}

/// An event whose JSON is padded with spaces to at least `size` bytes.
fn padded(device: &str, seq: u32, size: usize) -> Event {
    let mut payload = format!("{{\"seq\":{seq},\"pad\":\"{}\"}}", "x".repeat(200)).into_bytes();
    if payload.len() < size {
        payload.resize(size, b' ');
    }
    Event::encoded(device, "status", Qos::AtLeastOnce, payload)
}

fn seqs(rows: &[QueuedEvent]) -> Vec<u32> {
    rows.iter()
        .map(|row| {
            let value: serde_json::Value = serde_json::from_slice(&row.payload).unwrap();
            value["seq"].as_u64().unwrap() as u32
        })
        .collect()
}

fn stats_of(stats: &[DeviceStats], device: &str) -> DeviceStats {
    stats
        .iter()
        .find(|s| s.device_id == device)
        .cloned()
        .unwrap_or_default()
}

async fn rows(store: &Store, device: &str) -> Vec<u32> {
    seqs(&store.fetch(device, 0, 10_000).await.unwrap())
}

async fn a_full_file_system_loses_new_events_fast_counts_them_and_recovers(logs: CapturedLogs) {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("data");
    std::fs::create_dir(&data_dir).unwrap();
    let _mount = Tmpfs::mount(&data_dir, "2m").expect("mount a tmpfs");
    let store = Store::open(StoreSettings::new(&data_dir)).await.unwrap();

    // Committed while there is space.
    let mut seq = 0;
    let mut expected: Vec<u32> = Vec::new();
    for _ in 0..20 {
        for device in DEVICES {
            store.enqueue(event(device, seq)).await.unwrap();
        }
        expected.push(seq);
        seq += 1;
    }
    store.flush().await.unwrap();
    for device in DEVICES {
        assert_eq!(rows(&store, device).await, expected);
    }

    let filler = data_dir.join("filler");
    let filled = fill_file_system(&filler);
    println!("filled the tmpfs with {filled} bytes");

    // Full: every write fails, at once, and is never acknowledged.
    let mut timings = Vec::new();
    let rounds = 15u64;
    for _ in 0..rounds {
        let started = Instant::now();
        for device in DEVICES {
            store.enqueue(event(device, seq)).await.unwrap();
        }
        seq += 1;
        let result = store.flush().await;
        timings.push(started.elapsed());
        assert!(
            matches!(result, Err(StoreError::WriteFailed(_))),
            "a write on a full file system: {result:?}"
        );
    }
    // A burst larger than SQLite's page cache, which spills pages before the COMMIT.
    let started = Instant::now();
    for n in 0..BURST {
        store.enqueue(padded("meter-3", n, 4096)).await.unwrap();
    }
    store.count_offline_drops("meter-1", 3).await.unwrap();
    assert!(store.flush().await.is_err());
    let burst = started.elapsed();
    println!("while full: a burst of {BURST} events of 4 KiB failed in {burst:?}");
    assert!(burst < FAIL_FAST, "{burst:?}");
    timings.sort();
    println!(
        "while full: enqueue+flush took {:?} (median), {:?} (max) over {} rounds",
        timings[timings.len() / 2],
        timings[timings.len() - 1],
        timings.len()
    );
    assert!(
        timings[timings.len() - 1] < FAIL_FAST,
        "failing writes must not wait: {timings:?}"
    );
    assert!(
        timings[timings.len() / 2] < Duration::from_millis(200),
        "failing writes must not sleep between retries: {timings:?}"
    );

    // Counted per device while the database cannot take the counts (not yet persisted).
    let stats = store.stats().await.unwrap();
    for device in DEVICES {
        let s = stats_of(&stats, device);
        assert_eq!(
            (s.depth, s.dropped_write_failed),
            (20, rounds),
            "{device}: {s:?}"
        );
    }
    assert_eq!(stats_of(&stats, "meter-1").dropped_offline_qos0, 3);
    let meter_3 = stats_of(&stats, "meter-3");
    assert_eq!(
        (meter_3.depth, meter_3.dropped_write_failed),
        (0, u64::from(BURST))
    );
    let persisted = read_stats(&data_dir).await.unwrap();
    assert_eq!(stats_of(&persisted, "meter-1").dropped_write_failed, 0);
    // What was committed is still there.
    for device in DEVICES {
        assert_eq!(rows(&store, device).await, expected);
    }

    // Space again. Without any traffic the counts are saved within a few seconds.
    std::fs::remove_file(&filler).unwrap();
    let started = Instant::now();
    loop {
        let persisted = read_stats(&data_dir).await.unwrap();
        if DEVICES
            .iter()
            .all(|d| stats_of(&persisted, d).dropped_write_failed == rounds)
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the counts were not saved: {persisted:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "counts saved {:?} after the space came back",
        started.elapsed()
    );

    // New events commit.
    let started = Instant::now();
    for device in DEVICES {
        store.enqueue(event(device, seq)).await.unwrap();
    }
    store
        .flush()
        .await
        .expect("writes succeed once there is space");
    println!(
        "enqueue+flush after the space came back: {:?}",
        started.elapsed()
    );
    expected.push(seq);
    for device in DEVICES {
        assert_eq!(rows(&store, device).await, expected, "{device}");
    }
    let persisted = read_stats(&data_dir).await.unwrap();
    let live = store.stats().await.unwrap();
    for device in DEVICES {
        let (p, l) = (stats_of(&persisted, device), stats_of(&live, device));
        assert_eq!((p.depth, p.dropped_write_failed), (21, rounds), "{p:?}");
        assert_eq!(p, l, "nothing is counted twice");
    }
    assert_eq!(stats_of(&persisted, "meter-1").dropped_offline_qos0, 3);
    assert_eq!(
        stats_of(&persisted, "meter-3").dropped_write_failed,
        u64::from(BURST)
    );

    store.close().await;
    let wal = data_dir.join("queue.db-wal");
    assert!(
        std::fs::metadata(&wal).map_or(true, |m| m.len() == 0),
        "the WAL was checkpointed"
    );
    let text = logs.text();
    assert!(
        text.contains("QoS 1 events are being lost"),
        "the loss is logged:\n{text}"
    );
    assert!(
        text.contains("meter-1: ") && text.contains("meter-2: "),
        "per device:\n{text}"
    );
    assert!(
        text.contains("queue writes succeed again"),
        "the recovery is logged:\n{text}"
    );
    assert!(
        !text.contains("checkpoint at shutdown failed") && !text.contains("table is locked"),
        "the shutdown checkpoint works:\n{text}"
    );

    // The counts survive a restart.
    let store = Store::open(StoreSettings::new(&data_dir)).await.unwrap();
    let stats = store.stats().await.unwrap();
    for device in DEVICES {
        let s = stats_of(&stats, device);
        assert_eq!((s.depth, s.dropped_write_failed), (21, rounds), "{s:?}");
        assert_eq!(rows(&store, device).await, expected);
    }
    store.close().await;
}

fn main() -> ExitCode {
    let logs = CapturedLogs::install();
    let mut suite = Suite::new();
    suite.async_test(
        "a_full_file_system_loses_new_events_fast_counts_them_and_recovers",
        &[Need::tmpfs()],
        move || a_full_file_system_loses_new_events_fast_counts_them_and_recovers(logs),
    );
    suite.run()
}
