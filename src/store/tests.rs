//! Store tests against real SQLite files in temporary directories.

use std::time::{Duration, SystemTime};

use super::*;
use crate::event::{Event, Qos};

fn event(device: &str, seq: u32) -> Event {
    Event::encoded(
        device,
        "status",
        Qos::AtLeastOnce,
        format!("{{\"seq\":{seq}}}").into_bytes(),
    )
}

fn seqs(rows: &[QueuedEvent]) -> Vec<u32> {
    rows.iter()
        .map(|row| {
            let value: serde_json::Value = serde_json::from_slice(&row.payload).unwrap();
            value["seq"].as_u64().unwrap() as u32
        })
        .collect()
}

async fn open(dir: &Path, max_messages: u64, on_full: OnFull) -> Store {
    let mut settings = StoreSettings::new(dir);
    settings.max_messages = max_messages;
    settings.on_full = on_full;
    Store::open(settings).await.unwrap()
}

#[tokio::test]
async fn keeps_fifo_order_per_device_and_deletes_acknowledged_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path(), 1000, OnFull::DropOldest).await;
    for seq in 0..10 {
        store.enqueue(event("a", seq)).await.unwrap();
        store.enqueue(event("b", 100 + seq)).await.unwrap();
    }
    store.flush().await.unwrap();

    let a = store.fetch("a", 0, 100).await.unwrap();
    assert_eq!(seqs(&a), (0..10).collect::<Vec<_>>());
    assert!(a.windows(2).all(|w| w[0].id < w[1].id));
    assert_eq!(a[0].event_id, "status");
    let b_tail = store.fetch("b", 0, 100).await.unwrap();
    assert_eq!(seqs(&b_tail), (100..110).collect::<Vec<_>>());
    // Paging with the last id seen.
    let page = store.fetch("a", a[4].id, 3).await.unwrap();
    assert_eq!(seqs(&page), vec![5, 6, 7]);

    store
        .delete(Some("a"), a[..4].iter().map(|r| r.id).collect(), false)
        .await
        .unwrap();
    assert_eq!(
        seqs(&store.fetch("a", 0, 100).await.unwrap()),
        (4..10).collect::<Vec<_>>()
    );

    let stats = store.stats().await.unwrap();
    assert_eq!(stats.len(), 2);
    assert_eq!((stats[0].device_id.as_str(), stats[0].depth), ("a", 6));
    assert_eq!((stats[1].device_id.as_str(), stats[1].depth), ("b", 10));
    assert_eq!(stats[1].bytes, 10 * "{\"seq\":100}".len() as u64);
    let age = stats[0].oldest_age(SystemTime::now()).unwrap();
    assert!(age < Duration::from_secs(60), "{age:?}");
    store.close().await;
}

#[tokio::test]
async fn rows_survive_a_restart_and_ids_keep_increasing_after_the_queue_empties() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path(), 1000, OnFull::DropOldest).await;
    for seq in 0..3 {
        store.enqueue(event("a", seq)).await.unwrap();
    }
    store.close().await;
    assert!(matches!(
        store.enqueue(event("a", 9)).await,
        Err(StoreError::Closed)
    ));

    let store = open(tmp.path(), 1000, OnFull::DropOldest).await;
    let rows = store.fetch("a", 0, 10).await.unwrap();
    assert_eq!(seqs(&rows), vec![0, 1, 2]);
    let last_id = rows[2].id;
    store
        .delete(Some("a"), rows.iter().map(|r| r.id).collect(), false)
        .await
        .unwrap();
    store.enqueue(event("a", 3)).await.unwrap();
    store.flush().await.unwrap();
    let rows = store.fetch("a", 0, 10).await.unwrap();
    assert_eq!(seqs(&rows), vec![3]);
    assert!(rows[0].id > last_id, "ids are never reused");
    store.close().await;
}

#[tokio::test]
async fn drop_oldest_keeps_the_newest_events_and_persists_the_drop_count() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path(), 5, OnFull::DropOldest).await;
    for seq in 0..3 {
        store.enqueue(event("a", seq)).await.unwrap();
    }
    store.flush().await.unwrap();
    for seq in 0..4 {
        store.enqueue(event("b", seq)).await.unwrap();
    }
    store.flush().await.unwrap();
    // The two oldest rows, both of device a, made room.
    assert_eq!(seqs(&store.fetch("a", 0, 10).await.unwrap()), vec![2]);
    assert_eq!(
        seqs(&store.fetch("b", 0, 10).await.unwrap()),
        vec![0, 1, 2, 3]
    );
    store.close().await;

    let stats = read_stats(tmp.path()).await.unwrap();
    let a = stats.iter().find(|s| s.device_id == "a").unwrap();
    assert_eq!((a.depth, a.dropped_queue_full), (1, 2));
    let b = stats.iter().find(|s| s.device_id == "b").unwrap();
    assert_eq!((b.depth, b.dropped_queue_full), (4, 0));
}

#[tokio::test]
async fn drop_newest_keeps_the_queue_and_counts_the_rejected_events() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path(), 5, OnFull::DropNewest).await;
    for seq in 0..8 {
        store.enqueue(event("a", seq)).await.unwrap();
    }
    store.flush().await.unwrap();
    assert_eq!(
        seqs(&store.fetch("a", 0, 10).await.unwrap()),
        vec![0, 1, 2, 3, 4]
    );
    let stats = store.stats().await.unwrap();
    assert_eq!((stats[0].depth, stats[0].dropped_queue_full), (5, 3));

    // Acknowledged rows free room again.
    let rows = store.fetch("a", 0, 2).await.unwrap();
    store
        .delete(Some("a"), rows.iter().map(|r| r.id).collect(), false)
        .await
        .unwrap();
    store.enqueue(event("a", 8)).await.unwrap();
    store.flush().await.unwrap();
    assert_eq!(
        seqs(&store.fetch("a", 0, 10).await.unwrap()),
        vec![2, 3, 4, 8]
    );
    store.close().await;
}

#[tokio::test]
async fn max_bytes_bounds_the_payload_volume() {
    let tmp = tempfile::tempdir().unwrap();
    let mut settings = StoreSettings::new(tmp.path());
    settings.max_bytes = 3 * "{\"seq\":10}".len() as u64;
    let store = Store::open(settings).await.unwrap();
    for seq in 10..15 {
        store.enqueue(event("a", seq)).await.unwrap();
        store.flush().await.unwrap();
    }
    assert_eq!(
        seqs(&store.fetch("a", 0, 10).await.unwrap()),
        vec![12, 13, 14]
    );
    let stats = store.stats().await.unwrap();
    assert_eq!((stats[0].bytes, stats[0].dropped_queue_full), (30, 2));
    store.close().await;
}

#[tokio::test]
async fn offline_drops_are_counted_per_device() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path(), 10, OnFull::DropOldest).await;
    store.count_offline_drops("gps-1", 4).await.unwrap();
    store.count_offline_drops("gps-1", 3).await.unwrap();
    store.flush().await.unwrap();
    let stats = read_stats(tmp.path()).await.unwrap();
    assert_eq!(stats.len(), 1);
    assert_eq!(
        (
            stats[0].device_id.as_str(),
            stats[0].depth,
            stats[0].dropped_offline_qos0
        ),
        ("gps-1", 0, 7)
    );
    assert_eq!(stats[0].oldest_enqueued_at, None);
    store.close().await;
}

#[tokio::test]
async fn a_second_reader_sees_committed_rows_while_the_store_is_open() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path(), 1000, OnFull::DropOldest).await;
    for seq in 0..7 {
        store.enqueue(event("a", seq)).await.unwrap();
    }
    store.flush().await.unwrap();
    let stats = read_stats(tmp.path()).await.unwrap();
    assert_eq!(stats[0].depth, 7);
    // The writer keeps working while a reader is open.
    let reader = open::open_read_only(tmp.path()).await.unwrap();
    store.enqueue(event("a", 7)).await.unwrap();
    store.flush().await.unwrap();
    drop(reader);
    assert_eq!(read_stats(tmp.path()).await.unwrap()[0].depth, 8);
    store.close().await;
    assert_eq!(read_stats(tmp.path()).await.unwrap()[0].depth, 8);
}

#[tokio::test]
async fn stats_of_a_data_dir_without_a_queue_is_not_found() {
    let tmp = tempfile::tempdir().unwrap();
    let err = read_stats(tmp.path()).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err}");
    assert!(!tmp.path().join(DB_FILE).exists());
}

#[tokio::test]
async fn stats_of_a_queue_being_created_are_empty() {
    use sqlx::Connection as _;
    let tmp = tempfile::tempdir().unwrap();
    // What a starting gateway leaves for an instant: the file, not yet its tables.
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(tmp.path().join(DB_FILE))
        .create_if_missing(true);
    let mut conn = sqlx::SqliteConnection::connect_with(&options)
        .await
        .unwrap();
    sqlx::query("CREATE TABLE queue (id INTEGER PRIMARY KEY)")
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    assert_eq!(read_stats(tmp.path()).await.unwrap(), Vec::new());
}

#[tokio::test]
async fn watchers_wake_up_after_a_commit_of_their_device() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path(), 1000, OnFull::DropOldest).await;
    let mut a = store.watch("a");
    let b = store.watch("b");
    store.enqueue(event("a", 1)).await.unwrap();
    tokio::time::timeout(Duration::from_secs(20), a.changed())
        .await
        .unwrap()
        .unwrap();
    // The row is readable once the watcher fires.
    assert_eq!(seqs(&store.fetch("a", 0, 10).await.unwrap()), vec![1]);
    store.flush().await.unwrap();
    assert!(!b.has_changed().unwrap());
    store.close().await;
}

#[tokio::test]
async fn a_corrupt_database_is_moved_aside_and_the_next_start_is_clean() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join(DB_FILE);
    let garbage = b"this is not an SQLite database, just bytes on a worn SD card".repeat(100);
    std::fs::write(&db, &garbage).unwrap();

    let err = Store::open(StoreSettings::new(tmp.path()))
        .await
        .err()
        .unwrap();
    let StoreError::Corrupt { moved_to, .. } = &err else {
        panic!("expected a corruption error, got {err}");
    };
    assert!(err.to_string().contains("corrupt"), "{err}");
    assert!(moved_to
        .file_name()
        .unwrap()
        .to_string_lossy()
        .starts_with("queue.db.corrupt-"));
    assert_eq!(std::fs::read(moved_to).unwrap(), garbage);

    let store = Store::open(StoreSettings::new(tmp.path())).await.unwrap();
    assert!(store.stats().await.unwrap().is_empty());
    store.close().await;
}

#[tokio::test]
async fn a_database_with_damaged_pages_is_detected_at_open() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path(), 100_000, OnFull::DropOldest).await;
    for seq in 0..2000 {
        store.enqueue(event("a", seq)).await.unwrap();
    }
    store.close().await;
    // Overwrite pages in the middle of the file, keeping the header intact.
    let db = tmp.path().join(DB_FILE);
    let mut bytes = std::fs::read(&db).unwrap();
    assert!(bytes.len() > 16 * 4096, "{}", bytes.len());
    for byte in &mut bytes[8 * 4096..12 * 4096] {
        *byte = 0xA5;
    }
    std::fs::write(&db, &bytes).unwrap();

    let err = Store::open(StoreSettings::new(tmp.path()))
        .await
        .err()
        .unwrap();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    assert!(!db.exists());
}

#[tokio::test]
async fn remembers_command_ids_across_reopen_and_forgets_the_oldest() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path(), 1000, OnFull::DropOldest).await;
    assert!(store.record_command("d1", "a", 3).await.unwrap());
    assert!(!store.record_command("d1", "a", 3).await.unwrap());
    assert!(
        store.record_command("d2", "a", 3).await.unwrap(),
        "ids are per device"
    );
    store.close().await;

    let store = open(tmp.path(), 1000, OnFull::DropOldest).await;
    assert!(
        !store.record_command("d1", "a", 3).await.unwrap(),
        "kept across a reopen"
    );
    for id in ["b", "c", "d"] {
        assert!(store.record_command("d1", id, 3).await.unwrap());
    }
    // Only the 3 most recent of d1 remain: "a" was forgotten, "b" is still known.
    assert!(!store.record_command("d1", "b", 3).await.unwrap());
    assert!(store.record_command("d1", "a", 3).await.unwrap());
    let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM command_seen WHERE device = 'd1'")
        .fetch_one(&store.inner.readers)
        .await
        .unwrap();
    assert_eq!(count, 3);
    store.close().await;
}

#[tokio::test]
async fn a_command_id_repeated_within_one_batch_is_recorded_once() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path(), 1000, OnFull::DropOldest).await;
    let (first, second) = tokio::join!(
        store.record_command("d1", "x", 10),
        store.record_command("d1", "x", 10)
    );
    let mut outcomes = [first.unwrap(), second.unwrap()];
    outcomes.sort();
    assert_eq!(outcomes, [false, true], "exactly one of them is the first");
    store.close().await;
}

#[tokio::test]
async fn a_queue_of_the_previous_schema_is_upgraded_in_place() {
    use sqlx::Connection as _;
    let tmp = tempfile::tempdir().unwrap();
    // The schema before write failures were counted: every migration before 0003.
    let old_migrations = tmp.path().join("migrations");
    std::fs::create_dir(&old_migrations).unwrap();
    let current = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    for entry in std::fs::read_dir(&current).unwrap() {
        let name = entry.unwrap().file_name();
        if name.to_string_lossy().as_ref() < "0003" {
            std::fs::copy(current.join(&name), old_migrations.join(&name)).unwrap();
        }
    }
    let data_dir = tmp.path().join("data");
    std::fs::create_dir(&data_dir).unwrap();
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(data_dir.join(DB_FILE))
        .create_if_missing(true)
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal);
    let mut conn = sqlx::SqliteConnection::connect_with(&options)
        .await
        .unwrap();
    sqlx::migrate::Migrator::new(old_migrations.as_path())
        .await
        .unwrap()
        .run(&mut conn)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO queue (device, event, payload, size, enqueued_at) \
         VALUES ('a', 'status', '{\"seq\":1,\"unit\":\"°C\"}', 22, 0)",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    sqlx::query("INSERT INTO drops (device, queue_full, offline_qos0) VALUES ('a', 2, 3)")
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();

    // `fieldbridge queue` of the new version reads it before any gateway upgraded it.
    let stats = read_stats(&data_dir).await.unwrap();
    assert_eq!(
        (
            stats[0].depth,
            stats[0].dropped_queue_full,
            stats[0].dropped_write_failed
        ),
        (1, 2, 0)
    );

    let store = Store::open(StoreSettings::new(&data_dir)).await.unwrap();
    assert_eq!(seqs(&store.fetch("a", 0, 10).await.unwrap()), vec![1]);
    let stats = store.stats().await.unwrap();
    let counts = |s: &DeviceStats| {
        (
            s.depth,
            s.dropped_queue_full,
            s.dropped_offline_qos0,
            s.dropped_write_failed,
        )
    };
    assert_eq!(counts(&stats[0]), (1, 2, 3, 0));
    store.count_offline_drops("a", 1).await.unwrap();
    store.close().await;
    let stats = read_stats(&data_dir).await.unwrap();
    assert_eq!(counts(&stats[0]), (1, 2, 4, 0));
}

/// A queue written by the release before typed events (its `sqlite3 .dump`): the
/// migration keeps every row, which reads back as the same platform JSON, and new typed
/// rows go in beside them.
#[tokio::test]
async fn a_queue_of_the_previous_release_upgrades_in_place() {
    use sqlx::Connection as _;
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    std::fs::create_dir(&data_dir).unwrap();
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(data_dir.join(DB_FILE))
        .create_if_missing(true);
    let mut conn = sqlx::SqliteConnection::connect_with(&options)
        .await
        .unwrap();
    let dump = include_str!("../../tests/fixtures/queue-before-typed-events.sql");
    sqlx::raw_sql(dump).execute(&mut conn).await.unwrap();
    let old: Vec<(i64, String, Vec<u8>, i64)> =
        sqlx::query_as("SELECT id, event, payload, enqueued_at FROM queue ORDER BY id")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    conn.close().await.unwrap();
    assert_eq!(old.len(), 22);

    let store = Store::open(StoreSettings::new(&data_dir)).await.unwrap();
    let rows = store.fetch("boiler-1", 0, 100).await.unwrap();
    assert_eq!(rows.len(), old.len(), "no row lost");
    for (row, (id, event, payload, enqueued_at)) in rows.iter().zip(&old) {
        assert_eq!(
            (row.id, &row.event_id, row.kind),
            (*id, event, Kind::Encoded)
        );
        assert_eq!(row.at_ms, *enqueued_at);
        let typed = row.to_event().unwrap();
        assert_eq!(&typed.platform_json(), payload, "sent byte for byte");
    }
    assert!(rows.iter().any(|r| r.event_id == "health"));

    let mut values = serde_json::Map::new();
    values.insert("temperature".into(), 21.5.into());
    let at = time::macros::datetime!(2026-12-06 04:00:00.250 UTC);
    let typed = Event::new("boiler-1", "status", Qos::AtLeastOnce, values, at);
    store.enqueue(typed.clone()).await.unwrap();
    store.flush().await.unwrap();
    let last = store.fetch("boiler-1", rows[21].id, 10).await.unwrap();
    assert_eq!(last.len(), 1);
    assert_eq!(last[0].kind, Kind::Data);
    assert_eq!(last[0].to_event().unwrap(), typed);
    assert_eq!(store.stats().await.unwrap()[0].depth, 23);
    store.close().await;
}

/// A second, read-only connection to the store's database, to check what it holds.
async fn read_only(store: &Store) -> sqlx::SqliteConnection {
    use sqlx::Connection as _;
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(store.path())
        .read_only(true);
    sqlx::SqliteConnection::connect_with(&options)
        .await
        .unwrap()
}

/// A watched device's rows come from memory once its reader has caught up: what it reads
/// must always be what the database holds, through inserts, deletions and evictions.
#[tokio::test]
async fn a_watched_device_reads_what_the_database_holds() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path(), 12, OnFull::DropOldest).await;
    let _watch = store.watch("a");
    let mut db = read_only(&store).await;
    async fn in_db(db: &mut sqlx::SqliteConnection) -> Vec<i64> {
        sqlx::query_scalar("SELECT id FROM queue WHERE device = 'a' ORDER BY id")
            .fetch_all(db)
            .await
            .unwrap()
    }
    let ids = |rows: Vec<QueuedEvent>| rows.iter().map(|row| row.id).collect::<Vec<_>>();

    for seq in 0..6 {
        store.enqueue(event("a", seq)).await.unwrap();
        store.enqueue(event("b", seq)).await.unwrap();
    }
    store.flush().await.unwrap();
    let all = store.fetch("a", 0, 100).await.unwrap();
    assert_eq!(seqs(&all), (0..6).collect::<Vec<_>>());
    assert_eq!(ids(all.clone()), in_db(&mut db).await);
    let cursor = all[5].id;

    store
        .delete(None, vec![all[0].id, all[2].id], false)
        .await
        .unwrap();
    assert_eq!(
        ids(store.fetch("a", 0, 100).await.unwrap()),
        in_db(&mut db).await
    );

    // Six more of each: over max_messages (12), so the oldest rows are evicted.
    for seq in 6..12 {
        store.enqueue(event("a", seq)).await.unwrap();
        store.enqueue(event("b", seq)).await.unwrap();
    }
    store.flush().await.unwrap();
    let after_cursor = store.fetch("a", cursor, 100).await.unwrap();
    assert_eq!(seqs(&after_cursor), (6..12).collect::<Vec<_>>());
    let everything = ids(store.fetch("a", 0, 100).await.unwrap());
    assert_eq!(everything, in_db(&mut db).await);
    assert!(
        everything.len() < 10,
        "some rows were evicted: {everything:?}"
    );
    store.close().await;
}

fn values_event(device: &str, seq: u32) -> Event {
    let tags: Vec<String> = (0..50)
        .map(|tag| format!("\"h{tag}\":{}", (seq * 7919 + tag * 104_729) % 100_000))
        .collect();
    Event::encoded(
        device,
        "status",
        Qos::AtLeastOnce,
        format!("{{\"seq\":{seq},{}}}", tags.join(",")).into_bytes(),
    )
}

/// Larger payloads are stored compressed and read back exactly, from the database and
/// in the dead letters (which stay readable with any SQLite tool).
#[tokio::test]
async fn compressed_payloads_read_back_as_they_were_enqueued() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path(), 1000, OnFull::DropOldest).await;
    let sent: Vec<Event> = (0..3).map(|seq| values_event("a", seq)).collect();
    for event in &sent {
        store.enqueue(event.clone()).await.unwrap();
    }
    store.flush().await.unwrap();
    let rows = store.fetch("a", 0, 10).await.unwrap();
    let payload = |event: &Event| event.to_stored().payload;
    assert_eq!(
        rows.iter()
            .map(|row| row.payload.clone())
            .collect::<Vec<_>>(),
        sent.iter().map(payload).collect::<Vec<_>>()
    );

    let mut db = read_only(&store).await;
    let (compressed, stored, size): (bool, i64, i64) =
        sqlx::query_as("SELECT compressed, length(payload), size FROM queue WHERE id = ?")
            .bind(rows[0].id)
            .fetch_one(&mut db)
            .await
            .unwrap();
    assert!(compressed);
    assert_eq!(
        size as usize,
        payload(&sent[0]).len(),
        "size counts the payload"
    );
    assert!(stored * 3 < size * 2, "{size} bytes stored in {stored}");

    store
        .dead_letter(vec![(rows[1].id, "0x87 Not authorized".into())])
        .await
        .unwrap();
    let (dead, reason): (Vec<u8>, String) =
        sqlx::query_as("SELECT payload, reason FROM dead_letters WHERE id = ?")
            .bind(rows[1].id)
            .fetch_one(&mut db)
            .await
            .unwrap();
    assert_eq!(dead, payload(&sent[1]));
    assert_eq!(reason, "0x87 Not authorized");
    assert_eq!(seqs(&store.fetch("a", 0, 10).await.unwrap()), vec![0, 2]);
    store.close().await;
}

#[tokio::test]
async fn any_bytes_read_back_exactly_from_the_database() {
    let tmp = tempfile::tempdir().unwrap();
    // Every byte value, a payload too short to compress and one that compresses.
    let every_byte: Vec<u8> = (0..=255).collect();
    let short = vec![0xFF, 0x00, b'"', b'\\'];
    let repeated: Vec<u8> = every_byte.iter().cycle().take(4096).copied().collect();
    let payloads = [every_byte, short, repeated];
    {
        let store = open(tmp.path(), 1000, OnFull::DropOldest).await;
        for (index, payload) in payloads.iter().enumerate() {
            let device = if index == 1 { "b" } else { "a" };
            let event = Event::encoded(device, "raw\"ev", Qos::AtLeastOnce, payload.clone());
            store.enqueue(event).await.unwrap();
        }
        store.flush().await.unwrap();
        store.close().await;
    }
    // A store opened again has nothing in memory: every read goes to the database.
    let store = open(tmp.path(), 1000, OnFull::DropOldest).await;
    let a = store.fetch("a", 0, 10).await.unwrap();
    assert_eq!(a.len(), 2);
    assert_eq!(a[0].payload, payloads[0]);
    assert_eq!(a[1].payload, payloads[2]);
    assert_eq!(
        (a[0].device_id.as_str(), a[0].event_id.as_str()),
        ("a", "raw\"ev")
    );
    let all = store.fetch_all(0, 10).await.unwrap();
    let read: Vec<(&str, &[u8])> = all
        .iter()
        .map(|row| (row.device_id.as_str(), row.payload.as_slice()))
        .collect();
    assert_eq!(
        read,
        vec![
            ("a", &payloads[0][..]),
            ("b", &payloads[1][..]),
            ("a", &payloads[2][..])
        ]
    );
    assert!(all.iter().all(|row| row.unreadable.is_none()));
    assert_eq!(
        store.fetch_all(all[1].id, 1).await.unwrap()[0].id,
        all[2].id
    );
}

/// Rows in the table, acknowledged or not, per device.
async fn rows_in_table(db: &mut sqlx::SqliteConnection, device: &str) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM queue WHERE device = ?")
        .bind(device)
        .fetch_one(db)
        .await
        .unwrap()
}

/// A device's rows acknowledged in order are gone for every read at once (fetch, stats,
/// a restart) while the table still holds them, and are deleted together once nothing
/// is left unacknowledged.
#[tokio::test]
async fn rows_acknowledged_in_order_are_gone_at_once_and_deleted_together() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path(), 1000, OnFull::DropOldest).await;
    for seq in 0..6 {
        store.enqueue(event("a", seq)).await.unwrap();
        store.enqueue(event("b", 100 + seq)).await.unwrap();
    }
    store.flush().await.unwrap();
    let a = store.fetch("a", 0, 100).await.unwrap();
    let mut db = read_only(&store).await;

    store
        .delete(Some("a"), a[..4].iter().map(|r| r.id).collect(), true)
        .await
        .unwrap();
    assert_eq!(seqs(&store.fetch("a", 0, 100).await.unwrap()), vec![4, 5]);
    assert_eq!(
        seqs(&store.fetch_all(0, 100).await.unwrap()),
        vec![100, 101, 102, 103, 4, 104, 5, 105]
    );
    let stats = store.stats().await.unwrap();
    assert_eq!((stats[0].depth, stats[0].bytes), (2, 2 * 9));
    assert_eq!(stats[1].depth, 6);
    assert_eq!(rows_in_table(&mut db, "a").await, 6, "deleted later");
    store.close().await;

    let store = open(tmp.path(), 1000, OnFull::DropOldest).await;
    assert_eq!(seqs(&store.fetch("a", 0, 100).await.unwrap()), vec![4, 5]);
    assert_eq!(read_stats(tmp.path()).await.unwrap()[0].depth, 2);
    let rest: Vec<i64> = store
        .fetch("a", 0, 100)
        .await
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    store.delete(Some("a"), rest, true).await.unwrap();
    assert_eq!(rows_in_table(&mut db, "a").await, 6, "b is still queued");
    let b: Vec<i64> = store
        .fetch("b", 0, 100)
        .await
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    store.delete(Some("b"), b, true).await.unwrap();
    assert_eq!(rows_in_table(&mut db, "a").await, 0);
    assert_eq!(rows_in_table(&mut db, "b").await, 0);
    assert!(store.stats().await.unwrap().is_empty());

    // Ids keep increasing after the table was cleared.
    store.enqueue(event("a", 6)).await.unwrap();
    store.flush().await.unwrap();
    let after = store.fetch("a", 0, 10).await.unwrap();
    assert_eq!(seqs(&after), vec![6]);
    assert!(after[0].id > a[5].id);
    store.close().await;
}

/// Rows acknowledged past one still on its way are deleted one by one; the run goes on
/// once that one is acknowledged too.
#[tokio::test]
async fn rows_acknowledged_out_of_order_are_deleted_one_by_one() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path(), 1000, OnFull::DropOldest).await;
    for seq in 0..5 {
        store.enqueue(event("a", seq)).await.unwrap();
    }
    store.enqueue(event("b", 100)).await.unwrap();
    store.flush().await.unwrap();
    let a = store.fetch("a", 0, 100).await.unwrap();
    let mut db = read_only(&store).await;

    store
        .delete(Some("a"), vec![a[1].id, a[3].id], true)
        .await
        .unwrap();
    assert_eq!(
        seqs(&store.fetch("a", 0, 100).await.unwrap()),
        vec![0, 2, 4]
    );
    assert_eq!(rows_in_table(&mut db, "a").await, 3);

    store.delete(Some("a"), vec![a[0].id], true).await.unwrap();
    assert_eq!(seqs(&store.fetch("a", 0, 100).await.unwrap()), vec![2, 4]);
    store.delete(Some("a"), vec![a[2].id], true).await.unwrap();
    assert_eq!(seqs(&store.fetch("a", 0, 100).await.unwrap()), vec![4]);
    assert_eq!(store.stats().await.unwrap()[0].depth, 1);
    assert_eq!(
        rows_in_table(&mut db, "a").await,
        3,
        "rows 0 and 2 wait to be deleted with others; 4 is queued"
    );
    store.close().await;
}

/// Acknowledged rows are deleted while others are still queued once the table would
/// hold more than the queue's bounds; eviction takes the oldest queued rows, never an
/// acknowledged one.
#[tokio::test]
async fn acknowledged_rows_make_room_and_are_never_evicted() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path(), 16, OnFull::DropOldest).await;
    let ids = |rows: Vec<QueuedEvent>| rows.iter().map(|r| r.id).collect::<Vec<_>>();
    store.enqueue(event("b", 100)).await.unwrap();
    for seq in 0..10 {
        store.enqueue(event("a", seq)).await.unwrap();
    }
    store.flush().await.unwrap();
    let a = ids(store.fetch("a", 0, 100).await.unwrap());
    let mut db = read_only(&store).await;

    store
        .delete(Some("a"), a[..8].to_vec(), true)
        .await
        .unwrap();
    for seq in 101..106 {
        store.enqueue(event("b", seq)).await.unwrap();
    }
    store.flush().await.unwrap();
    assert_eq!(
        rows_in_table(&mut db, "a").await,
        10,
        "8 held and 8 queued rows fit in 16"
    );
    store.enqueue(event("b", 106)).await.unwrap();
    store.flush().await.unwrap();
    assert_eq!(rows_in_table(&mut db, "a").await, 2, "the 17th made room");

    // 8 more b rows: 17 queued for 16 places, b's 100 goes.
    for seq in 107..115 {
        store.enqueue(event("b", seq)).await.unwrap();
    }
    store.flush().await.unwrap();
    // 15 queued once a8 is acknowledged, and two more: 17 for 16 places. The oldest
    // queued row (a9) goes, never the older acknowledged a8 (taken in one batch if
    // the writer gathers these together), which then makes room as well.
    let (deleted, first, second) = tokio::join!(
        store.delete(Some("a"), vec![a[8]], true),
        store.enqueue(event("b", 115)),
        store.enqueue(event("b", 116)),
    );
    deleted.and(first).and(second).unwrap();
    store.flush().await.unwrap();
    let stats = store.stats().await.unwrap();
    assert_eq!(
        (stats[0].dropped_queue_full, stats[1].dropped_queue_full),
        (1, 1)
    );
    assert!(store.fetch("a", 0, 10).await.unwrap().is_empty());
    assert_eq!(seqs(&store.fetch("b", 0, 1).await.unwrap()), vec![101]);
    assert_eq!(stats.iter().map(|s| s.depth).sum::<u64>(), 16);
    assert_eq!(rows_in_table(&mut db, "a").await, 0);
    store.close().await;
}

/// A deletion the session cannot wait for (a drain's) commits within the short busy
/// window; others wait for the commit window.
#[tokio::test]
async fn a_pressing_deletion_does_not_wait_for_the_commit_window() {
    let tmp = tempfile::tempdir().unwrap();
    let mut settings = StoreSettings::new(tmp.path());
    settings.commit_window = Duration::from_secs(60);
    let store = Store::open(settings).await.unwrap();
    for seq in 0..4 {
        store.enqueue(event("a", seq)).await.unwrap();
    }
    store.flush().await.unwrap();
    let a = store.fetch("a", 0, 10).await.unwrap();

    let waiting = tokio::spawn({
        let store = store.clone();
        let id = a[0].id;
        async move { store.delete(Some("a"), vec![id], false).await }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!waiting.is_finished(), "waits for the window");
    tokio::time::timeout(
        Duration::from_secs(20),
        store.delete(Some("a"), vec![a[1].id], true),
    )
    .await
    .expect("committed without waiting for the window")
    .unwrap();
    tokio::time::timeout(Duration::from_secs(20), waiting)
        .await
        .expect("taken along")
        .unwrap()
        .unwrap();
    assert_eq!(seqs(&store.fetch("a", 0, 10).await.unwrap()), vec![2, 3]);
    // Steady traffic's deletions are made at once, never marked: a0 is gone, the
    // drain's a1 is marked and kept.
    let mut db = read_only(&store).await;
    assert_eq!(rows_in_table(&mut db, "a").await, 3);
    // Polled first, the deletion is sent before the flush that commits it.
    let (deleted, flushed) =
        tokio::join!(store.delete(Some("a"), vec![a[2].id], false), store.flush());
    deleted.and(flushed).unwrap();
    assert_eq!(rows_in_table(&mut db, "a").await, 2);
}
