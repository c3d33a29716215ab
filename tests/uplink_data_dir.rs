//! A broken `gateway.data_dir` stops the start with a clear error; a corrupt queue
//! database is set aside (never deleted) and the next start gets a fresh queue.

use std::path::{Path, PathBuf};
use std::process::Command;

use fieldbridge::event::{Event, Qos};
use fieldbridge::store::{read_stats, Store, StoreError, StoreSettings, DB_FILE};

async fn open_error(data_dir: &Path) -> StoreError {
    match Store::open(StoreSettings::new(data_dir)).await {
        Ok(store) => {
            store.close().await;
            panic!("{} opened", data_dir.display())
        }
        Err(error) => error,
    }
}

#[tokio::test]
async fn a_missing_parent_directory_is_an_error_and_nothing_is_created() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("no-such-dir").join("fieldbridge");
    let message = open_error(&data_dir).await.to_string();
    assert!(
        message.contains(&data_dir.display().to_string()),
        "{message}"
    );
    assert!(message.contains("neither does its parent"), "{message}");
    assert!(!tmp.path().join("no-such-dir").exists());
}

#[tokio::test]
async fn a_file_where_the_directory_should_be_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("fieldbridge");
    std::fs::write(&data_dir, b"not a directory").unwrap();
    let message = open_error(&data_dir).await.to_string();
    assert!(
        message.contains("exists but is not a directory"),
        "{message}"
    );
    assert_eq!(std::fs::read(&data_dir).unwrap(), b"not a directory");
}

#[tokio::test]
async fn an_unwritable_directory_is_an_error() {
    // sysfs refuses new files even to root.
    let message = open_error(Path::new("/sys")).await.to_string();
    assert!(
        message.contains("data_dir /sys: is not writable"),
        "{message}"
    );

    // A read-only mount, as on a gateway with a read-only root file system.
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("ro");
    std::fs::create_dir(&data_dir).unwrap();
    let Some(_mount) = ReadOnlyMount::new(&data_dir) else {
        println!("cannot bind-mount here (not root?); only /sys was checked");
        return;
    };
    let message = open_error(&data_dir).await.to_string();
    assert!(message.contains("is not writable"), "{message}");
    assert!(message.contains("Read-only file system"), "{message}");
}

#[tokio::test]
async fn a_corrupt_database_is_moved_aside_and_the_next_start_has_an_empty_queue() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("data");
    let store = Store::open(StoreSettings::new(&data_dir)).await.unwrap();
    store
        .enqueue(Event::encoded(
            "boiler-1",
            "status",
            Qos::AtLeastOnce,
            b"{\"seq\":1}".to_vec(),
        ))
        .await
        .unwrap();
    store.close().await;

    // Scribble over the file's header, as a failing SD card might.
    let db = data_dir.join(DB_FILE);
    let mut bytes = std::fs::read(&db).unwrap();
    bytes[..100].fill(0x5A);
    std::fs::write(&db, &bytes).unwrap();

    let error = open_error(&data_dir).await;
    let message = error.to_string();
    let StoreError::Corrupt { moved_to, .. } = error else {
        panic!("expected a corruption error: {message}");
    };
    assert!(message.contains("is corrupt"), "{message}");
    assert!(
        message.contains(&moved_to.display().to_string()),
        "{message}"
    );
    assert_eq!(
        std::fs::read(&moved_to).unwrap(),
        bytes,
        "kept byte for byte"
    );
    let kept: Vec<PathBuf> = std::fs::read_dir(&data_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains(".corrupt-"))
        .collect();
    assert_eq!(kept, vec![moved_to.clone()]);

    let store = Store::open(StoreSettings::new(&data_dir)).await.unwrap();
    assert!(store.stats().await.unwrap().is_empty());
    store.close().await;
    assert!(moved_to.exists(), "the corrupt copy stays");
}

#[tokio::test]
async fn statistics_are_readable_from_a_read_only_data_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("data");
    let store = Store::open(StoreSettings::new(&data_dir)).await.unwrap();
    for seq in 0..3 {
        store
            .enqueue(Event::encoded(
                "meter-1",
                "status",
                Qos::AtLeastOnce,
                format!("{{\"seq\":{seq}}}").into_bytes(),
            ))
            .await
            .unwrap();
    }
    store.close().await;
    // As for a user who may read the data directory but not write to it.
    let Some(_mount) = ReadOnlyMount::new(&data_dir) else {
        println!("cannot bind-mount here (not root?); skipped");
        return;
    };
    let stats = read_stats(&data_dir).await.unwrap();
    assert_eq!(stats.len(), 1);
    assert_eq!(
        (stats[0].device_id.as_str(), stats[0].depth),
        ("meter-1", 3)
    );
}

/// A read-only bind mount of a directory onto itself, undone on drop.
struct ReadOnlyMount(PathBuf);

impl ReadOnlyMount {
    fn new(dir: &Path) -> Option<ReadOnlyMount> {
        let path = dir.to_str()?;
        let run = |args: &[&str]| {
            Command::new("mount")
                .args(args)
                .status()
                .is_ok_and(|s| s.success())
        };
        if !run(&["--bind", path, path]) {
            return None;
        }
        let mount = ReadOnlyMount(dir.to_owned());
        run(&["-o", "remount,ro,bind", path]).then_some(mount)
    }
}

impl Drop for ReadOnlyMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}
