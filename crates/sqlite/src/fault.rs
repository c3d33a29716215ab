//! What kind of fault made a write fail.

use std::fmt;
use std::io;

/// SQLite's primary result codes that say something about the storage.
const SQLITE_BUSY: i32 = 5;
const SQLITE_LOCKED: i32 = 6;
const SQLITE_READONLY: i32 = 8;
const SQLITE_IOERR: i32 = 10;
const SQLITE_FULL: i32 = 13;
const SQLITE_CANTOPEN: i32 = 14;

/// Why a transaction failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fault {
    /// SQLITE_FULL (or ENOSPC, EDQUOT): no room on the file system.
    DiskFull,
    /// SQLITE_IOERR and SQLITE_CANTOPEN: the storage failed a read, write or fsync.
    Io,
    /// SQLITE_READONLY: e.g. a file system remounted read-only after errors.
    ReadOnly,
    /// SQLITE_BUSY or SQLITE_LOCKED past the busy timeout: another connection's lock,
    /// which passes.
    Busy,
    /// Anything else (a lost connection, a bug).
    Other,
}

impl Fault {
    /// The kind of fault `error` reports.
    pub fn of(error: &sqlx::Error) -> Fault {
        match error {
            sqlx::Error::Database(db) => {
                let code = db.code().and_then(|code| code.parse::<i32>().ok());
                match code.map(|code| code & 0xff) {
                    Some(SQLITE_FULL) => Fault::DiskFull,
                    Some(SQLITE_IOERR | SQLITE_CANTOPEN) => Fault::Io,
                    Some(SQLITE_READONLY) => Fault::ReadOnly,
                    Some(SQLITE_BUSY | SQLITE_LOCKED) => Fault::Busy,
                    _ => Fault::Other,
                }
            }
            sqlx::Error::Io(error) => match error.kind() {
                io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => Fault::DiskFull,
                io::ErrorKind::ReadOnlyFilesystem => Fault::ReadOnly,
                _ => Fault::Io,
            },
            _ => Fault::Other,
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Fault::DiskFull => "the file system is full",
            Fault::Io => "I/O error",
            Fault::ReadOnly => "the file system is read-only",
            Fault::Busy => "the database stayed locked",
            Fault::Other => "write failed",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_are_classified() {
        let io = |kind: io::ErrorKind| sqlx::Error::Io(io::Error::from(kind));
        assert_eq!(Fault::of(&io(io::ErrorKind::StorageFull)), Fault::DiskFull);
        assert_eq!(
            Fault::of(&io(io::ErrorKind::QuotaExceeded)),
            Fault::DiskFull
        );
        assert_eq!(
            Fault::of(&io(io::ErrorKind::ReadOnlyFilesystem)),
            Fault::ReadOnly
        );
        assert_eq!(Fault::of(&io(io::ErrorKind::Other)), Fault::Io);
        assert_eq!(Fault::of(&sqlx::Error::WorkerCrashed), Fault::Other);
    }

    /// Real SQLite errors, by their (extended) result codes.
    #[tokio::test]
    async fn sqlite_errors_are_classified_by_their_primary_code() {
        use sqlx::{Connection as _, Executor as _};
        let tmp = tempfile::tempdir().unwrap();
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(tmp.path().join("t.db"))
            .create_if_missing(true);
        let mut conn = sqlx::SqliteConnection::connect_with(&options)
            .await
            .unwrap();
        conn.execute("CREATE TABLE t (x BLOB)").await.unwrap();
        // A database capped at its current size: SQLITE_FULL, as from a full disk.
        conn.execute("PRAGMA max_page_count = 2").await.unwrap();
        let full = conn
            .execute("INSERT INTO t VALUES (zeroblob(100000))")
            .await
            .unwrap_err();
        assert_eq!(Fault::of(&full), Fault::DiskFull, "{full}");
        let syntax = conn.execute("INSERT INTO").await.unwrap_err();
        assert_eq!(Fault::of(&syntax), Fault::Other, "{syntax}");
        conn.close().await.unwrap();

        let read_only = sqlx::SqliteConnection::connect_with(&options.read_only(true))
            .await
            .unwrap()
            .execute("INSERT INTO t VALUES (1)")
            .await
            .unwrap_err();
        assert_eq!(Fault::of(&read_only), Fault::ReadOnly, "{read_only}");
    }
}
