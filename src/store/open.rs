//! Opening the queue database: data directory checks, connection options, schema
//! migrations, and setting a corrupt file aside.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{ConnectOptions, Connection, SqlitePool};
use time::OffsetDateTime;

use super::acknowledged::{unacknowledged, Acknowledged};
use super::{StoreError, StoreSettings, Synchronous, DB_FILE, READ_CONNECTIONS};

/// How long a connection waits for a lock held by another connection or process.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// SQLite's primary result codes for a damaged file.
const SQLITE_CORRUPT: i32 = 11;
const SQLITE_NOTADB: i32 = 26;

/// Messages and their payload bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Occupancy {
    pub messages: u64,
    pub bytes: u64,
}

impl Occupancy {
    /// From SQLite's counts (never negative, but typed so).
    pub fn counted(messages: i64, bytes: i64) -> Self {
        Occupancy {
            messages: u64::try_from(messages).unwrap_or(0),
            bytes: u64::try_from(bytes).unwrap_or(0),
        }
    }

    pub fn add(&mut self, other: Occupancy) {
        self.messages += other.messages;
        self.bytes += other.bytes;
    }

    pub fn remove(&mut self, other: Occupancy) {
        self.messages = self.messages.saturating_sub(other.messages);
        self.bytes = self.bytes.saturating_sub(other.bytes);
    }
}

/// What the queue's table holds.
pub(super) struct Contents {
    /// Rows still queued (not acknowledged).
    pub queued: Occupancy,
    pub acknowledged: Acknowledged,
}

pub(super) struct Opened {
    pub path: PathBuf,
    pub writer: SqliteConnection,
    pub readers: SqlitePool,
    pub contents: Contents,
    /// Highest row id in the queue (0 when it is empty).
    pub last_id: i64,
}

pub(super) async fn open_read_write(settings: &StoreSettings) -> Result<Opened, StoreError> {
    prepare_data_dir(&settings.data_dir)?;
    let path = settings.data_dir.join(DB_FILE);
    match open_and_check(&path, settings.synchronous).await {
        Ok(opened) => Ok(opened),
        Err(Failure::Corrupt(detail)) => {
            let moved_to = move_aside(&path)?;
            tracing::error!(
                path = %path.display(),
                moved_to = %moved_to.display(),
                "queue database is corrupt ({detail}); moved it aside"
            );
            Err(StoreError::Corrupt {
                path,
                moved_to,
                detail,
            })
        }
        Err(Failure::Other(error)) => Err(error),
    }
}

/// A read-only connection for a second process (`fieldbridge queue`); works while the
/// gateway holds the database open and never creates or migrates anything.
pub(super) async fn open_read_only(data_dir: &Path) -> Result<SqliteConnection, StoreError> {
    let path = data_dir.join(DB_FILE);
    if !path.is_file() {
        return Err(StoreError::NotFound { path });
    }
    let options = SqliteConnectOptions::new()
        .filename(&path)
        .read_only(true)
        .create_if_missing(false)
        .busy_timeout(BUSY_TIMEOUT);
    match connect_and_read(&options).await {
        Ok(conn) => Ok(conn),
        // Reading a WAL database needs its -shm file, which a reader without write
        // access to the directory cannot create. Without a -wal file no gateway has
        // the database open, so it can be read as an immutable file instead.
        Err(_) if !PathBuf::from(format!("{}-wal", path.display())).exists() => {
            connect_and_read(&options.immutable(true))
                .await
                .map_err(|error| StoreError::Database { path, error })
        }
        Err(error) => Err(StoreError::Database { path, error }),
    }
}

/// Connects and reads the schema, which is when SQLite opens the WAL files.
async fn connect_and_read(options: &SqliteConnectOptions) -> Result<SqliteConnection, sqlx::Error> {
    let mut conn = options.connect().await?;
    sqlx::query("SELECT COUNT(*) FROM sqlite_master")
        .fetch_one(&mut conn)
        .await?;
    Ok(conn)
}

/// The data directory must exist (only its last component is created here) and be
/// writable: a probe file is created and removed, which also catches read-only mounts.
fn prepare_data_dir(dir: &Path) -> Result<(), StoreError> {
    let problem = |problem: String| StoreError::DataDir {
        path: dir.to_owned(),
        problem,
    };
    match fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => return Err(problem("exists but is not a directory".into())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let parent = dir
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            if !parent.is_dir() {
                return Err(problem(format!(
                    "does not exist, and neither does its parent directory {}",
                    parent.display()
                )));
            }
            fs::create_dir(dir).map_err(|e| problem(format!("cannot create it: {e}")))?;
            tracing::info!(path = %dir.display(), "created the data directory");
        }
        Err(e) => return Err(problem(format!("cannot access it: {e}"))),
    }
    let probe = dir.join(".fieldbridge-write-test");
    fs::write(&probe, b"").map_err(|e| problem(format!("is not writable: {e}")))?;
    let _ = fs::remove_file(&probe);
    Ok(())
}

enum Failure {
    Corrupt(String),
    Other(StoreError),
}

async fn open_and_check(path: &Path, synchronous: Synchronous) -> Result<Opened, Failure> {
    let existed = path.exists();
    let db_error = |source: sqlx::Error| match corruption(&source) {
        Some(detail) => Failure::Corrupt(detail),
        None => Failure::Other(StoreError::Database {
            path: path.to_owned(),
            error: source,
        }),
    };
    let mut writer = writer_options(path, synchronous)
        .create_if_missing(true)
        .connect()
        .await
        .map_err(db_error)?;

    if existed {
        // A power cut on flash storage that ignores fsync can leave damaged pages; find
        // them now rather than halfway through a drain. The check reads the whole file
        // once (about a second per 100 MB on a Raspberry Pi class SD card).
        let verdict: Vec<(String,)> = sqlx::query_as("PRAGMA quick_check")
            .fetch_all(&mut writer)
            .await
            .map_err(db_error)?;
        if verdict.first().map(|(line,)| line.as_str()) != Some("ok") {
            let detail = verdict
                .into_iter()
                .map(|(line,)| line)
                .take(3)
                .collect::<Vec<_>>()
                .join("; ");
            let _ = writer.close().await;
            return Err(Failure::Corrupt(format!("integrity check: {detail}")));
        }
    }

    if let Err(error) = sqlx::migrate!().run(&mut writer).await {
        let _ = writer.close().await;
        return Err(match &error {
            sqlx::migrate::MigrateError::Execute(source) => match corruption(source) {
                Some(detail) => Failure::Corrupt(detail),
                None => Failure::Other(StoreError::Migration {
                    path: path.to_owned(),
                    error,
                }),
            },
            _ => Failure::Other(StoreError::Migration {
                path: path.to_owned(),
                error,
            }),
        });
    }

    type Counts = (i64, i64, i64, i64, i64);
    let (messages, bytes, all_messages, all_bytes, last_id): Counts = sqlx::query_as(concat!(
        "SELECT COUNT(*) FILTER (WHERE ",
        unacknowledged!(),
        "), COALESCE(SUM(size) FILTER (WHERE ",
        unacknowledged!(),
        "), 0), COUNT(*), COALESCE(SUM(size), 0), COALESCE(MAX(id), 0) FROM queue"
    ))
    .fetch_one(&mut writer)
    .await
    .map_err(db_error)?;
    let queued = Occupancy::counted(messages, bytes);
    let mut held = Occupancy::counted(all_messages, all_bytes);
    held.remove(queued);
    let acknowledged = Acknowledged::load(&mut writer, held)
        .await
        .map_err(db_error)?;

    let readers = SqlitePoolOptions::new()
        .max_connections(READ_CONNECTIONS)
        .min_connections(0)
        // A read-only connection to a local file does not go bad between uses: no
        // round trip to the database thread before every read.
        .test_before_acquire(false)
        .connect_with(
            SqliteConnectOptions::new()
                .filename(path)
                .read_only(true)
                .busy_timeout(BUSY_TIMEOUT)
                .pragma("mmap_size", MMAP_SIZE.to_string()),
        )
        .await
        .map_err(db_error)?;

    Ok(Opened {
        path: path.to_owned(),
        writer,
        readers,
        contents: Contents {
            queued,
            acknowledged,
        },
        last_id,
    })
}

/// Page size of a new queue database. Every commit writes each page it touches whole
/// to the WAL, and a commit touches a few pages besides its rows (the header, the
/// tree's upper levels, the index, the free list): at 1 KiB, about half the bytes
/// written per event of 4 KiB pages. An existing database keeps the size it has.
const PAGE_SIZE: u32 = 1024;

/// Bytes of the database file each connection reads through a memory map instead of a
/// `pread` per page. A reader's page cache is dropped whenever the writer commits, so
/// without the map every read copied its pages from the kernel again (a drain spent
/// about 7 % less CPU per event with it). Pages of the map count in the process's RSS
/// while the kernel keeps them, so the map covers a typical queue, not the largest.
const MMAP_SIZE: u64 = 64 * 1024 * 1024;

/// The writing connection's settings; a reopened connection gets the same ones.
fn writer_options(path: &Path, synchronous: Synchronous) -> SqliteConnectOptions {
    let synchronous = match synchronous {
        Synchronous::Full => SqliteSynchronous::Full,
        Synchronous::Normal => SqliteSynchronous::Normal,
    };
    SqliteConnectOptions::new()
        .filename(path)
        .page_size(PAGE_SIZE)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(synchronous)
        .busy_timeout(BUSY_TIMEOUT)
        .pragma("mmap_size", MMAP_SIZE.to_string())
}

/// For a fresh writing connection to the database the store opened (and checked and
/// migrated) at start. Never creates the file: a vanished database is an error.
pub(super) fn reopen_options(path: &Path, synchronous: Synchronous) -> SqliteConnectOptions {
    writer_options(path, synchronous).create_if_missing(false)
}

/// The SQLite message if the error says the file is damaged or not a database.
fn corruption(error: &sqlx::Error) -> Option<String> {
    let sqlx::Error::Database(db) = error else {
        return None;
    };
    let code: i32 = db.code()?.parse().ok()?;
    matches!(code & 0xff, SQLITE_CORRUPT | SQLITE_NOTADB).then(|| db.message().to_owned())
}

/// Renames `queue.db` (and its `-wal`/`-shm` companions, so the copy stays readable)
/// to `queue.db.corrupt-<UTC timestamp>`.
fn move_aside(path: &Path) -> Result<PathBuf, StoreError> {
    let stamp = OffsetDateTime::now_utc()
        .format(time::macros::format_description!(
            "[year][month][day]T[hour][minute][second]Z"
        ))
        .unwrap_or_else(|_| "unknown-time".into());
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| DB_FILE.to_owned());
    let mut target = path.with_file_name(format!("{file_name}.corrupt-{stamp}"));
    let mut attempt = 1;
    while target.exists() {
        attempt += 1;
        target = path.with_file_name(format!("{file_name}.corrupt-{stamp}-{attempt}"));
    }
    fs::rename(path, &target).map_err(|e| StoreError::DataDir {
        path: path.to_owned(),
        problem: format!("corrupt queue database could not be moved aside: {e}"),
    })?;
    for suffix in ["-wal", "-shm"] {
        let companion = PathBuf::from(format!("{}{suffix}", path.display()));
        if companion.exists() {
            let moved = PathBuf::from(format!("{}{suffix}", target.display()));
            if let Err(e) = fs::rename(&companion, &moved) {
                tracing::warn!(path = %companion.display(), "could not move aside: {e}");
            }
        }
    }
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_dir_that_is_a_file_is_rejected() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("not-a-dir");
        fs::write(&file, b"x").unwrap();
        let err = prepare_data_dir(&file).unwrap_err().to_string();
        assert!(err.contains("not a directory"), "{err}");
    }

    #[test]
    fn missing_last_component_is_created_but_not_a_missing_parent() {
        let tmp = tempfile::tempdir().unwrap();
        let leaf = tmp.path().join("data");
        prepare_data_dir(&leaf).unwrap();
        assert!(leaf.is_dir());
        let deep = tmp.path().join("missing").join("data");
        let err = prepare_data_dir(&deep).unwrap_err().to_string();
        assert!(err.contains("neither does its parent"), "{err}");
        assert!(!deep.exists());
    }

    #[test]
    fn moving_aside_keeps_the_file_and_its_wal() {
        let tmp = tempfile::tempdir().unwrap();
        let db = tmp.path().join(DB_FILE);
        fs::write(&db, b"garbage").unwrap();
        fs::write(tmp.path().join("queue.db-wal"), b"wal").unwrap();
        let first = move_aside(&db).unwrap();
        fs::write(&db, b"garbage again").unwrap();
        let second = move_aside(&db).unwrap();
        assert_ne!(first, second);
        assert_eq!(fs::read(&first).unwrap(), b"garbage");
        assert_eq!(fs::read(&second).unwrap(), b"garbage again");
        let wal = PathBuf::from(format!("{}-wal", first.display()));
        assert_eq!(fs::read(wal).unwrap(), b"wal");
        assert!(!db.exists());
    }
}
