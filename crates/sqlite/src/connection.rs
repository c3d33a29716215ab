//! The connection of a database's only writer, kept outside any transaction it failed.

use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::{ConnectOptions, Connection};

/// A writing connection that is replaced by a fresh one when a failed transaction leaves
/// its state in doubt.
///
/// SQLite rolls a transaction back by itself after some errors (SQLITE_FULL, I/O errors, a
/// failed COMMIT); sqlx's ROLLBACK then fails and sqlx still counts the transaction as
/// open, so the connection's next BEGIN would be a SAVEPOINT inside a transaction that
/// never commits (and keeps the checkpoint from running).
#[derive(Debug)]
pub struct ReopeningConnection {
    /// `None` when reopening it failed; the next [`ReopeningConnection::get`] tries again.
    connection: Option<SqliteConnection>,
    /// Options of a fresh connection to the same database.
    reopen: SqliteConnectOptions,
}

impl ReopeningConnection {
    /// `reopen` should not create the file: a database that vanished is an error, not a
    /// new empty one.
    pub fn new(connection: SqliteConnection, reopen: SqliteConnectOptions) -> Self {
        ReopeningConnection {
            connection: Some(connection),
            reopen,
        }
    }

    /// The connection, opened afresh if that failed after the last failed transaction.
    pub async fn get(&mut self) -> Result<&mut SqliteConnection, sqlx::Error> {
        match &mut self.connection {
            Some(connection) => Ok(connection),
            empty => Ok(empty.insert(self.reopen.connect().await?)),
        }
    }

    /// After a failed transaction, makes sure the connection is not left inside it. The
    /// transaction should be rolled back explicitly rather than on drop, so that the
    /// outcome is known here: sqlx counts a ROLLBACK only when it worked, which ends
    /// SQLite's transaction too; otherwise the connection is replaced by a fresh one.
    pub async fn settle(&mut self) {
        let Some(connection) = &mut self.connection else {
            return;
        };
        // The ping runs after the rollback a dropped transaction has queued.
        if connection.ping().await.is_ok() && !connection.is_in_transaction() {
            return;
        }
        let database = self.reopen.get_filename().display();
        tracing::debug!("replacing the connection to {database} after a failed transaction");
        if let Some(connection) = self.connection.take() {
            // Closing rolls back whatever SQLite still has open.
            if let Err(error) = connection.close().await {
                tracing::debug!("closing the connection to {database}: {error}");
            }
        }
        match self.reopen.connect().await {
            Ok(connection) => self.connection = Some(connection),
            Err(error) => tracing::debug!("reopening {database}: {error}"),
        }
    }

    /// The connection, unless reopening it failed; for closing it.
    pub fn into_inner(self) -> Option<SqliteConnection> {
        self.connection
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn options(path: &Path) -> SqliteConnectOptions {
        SqliteConnectOptions::new().filename(path)
    }

    /// A database with a table `t`, and a writer on it with a TEMP table, which only the
    /// same connection sees.
    async fn writer_on(path: &Path) -> ReopeningConnection {
        let mut connection = options(path)
            .create_if_missing(true)
            .connect()
            .await
            .expect("connects");
        for statement in ["CREATE TABLE t (x BLOB)", "CREATE TEMP TABLE mine (x)"] {
            sqlx::query(statement)
                .execute(&mut connection)
                .await
                .expect("prepares");
        }
        ReopeningConnection::new(connection, options(path))
    }

    async fn same_connection(writer: &mut ReopeningConnection) -> bool {
        sqlx::query("SELECT * FROM mine")
            .fetch_all(writer.get().await.expect("open"))
            .await
            .is_ok()
    }

    /// What another connection sees: the rows of `t`, and whether it can write.
    async fn seen_from_outside(path: &Path) -> (i64, bool) {
        let mut other = options(path).connect().await.expect("connects");
        let rows = sqlx::query_scalar("SELECT COUNT(*) FROM t")
            .fetch_one(&mut other)
            .await
            .expect("reads");
        sqlx::query("PRAGMA busy_timeout = 0")
            .execute(&mut other)
            .await
            .expect("sets");
        let writable = sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut other)
            .await
            .is_ok();
        other.close().await.expect("closes");
        (rows, writable)
    }

    async fn insert(writer: &mut ReopeningConnection, bytes: i64) -> Result<(), sqlx::Error> {
        let mut tx = writer.get().await?.begin().await?;
        if let Err(error) = sqlx::query("INSERT INTO t VALUES (zeroblob(?))")
            .bind(bytes)
            .execute(&mut *tx)
            .await
        {
            let _ = tx.rollback().await;
            return Err(error);
        }
        tx.commit().await
    }

    /// A failed transaction that SQLite left to the ROLLBACK: the connection is kept.
    #[tokio::test]
    async fn a_connection_outside_any_transaction_is_kept() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("t.db");
        let mut writer = writer_on(&path).await;
        let mut tx = writer
            .get()
            .await
            .expect("open")
            .begin()
            .await
            .expect("begins");
        sqlx::query("INSERT INTO missing VALUES (1)")
            .execute(&mut *tx)
            .await
            .expect_err("no such table");
        tx.rollback().await.expect("rolls back");
        writer.settle().await;
        assert!(same_connection(&mut writer).await, "kept");
        insert(&mut writer, 10).await.expect("stored");
        assert_eq!(seen_from_outside(&path).await, (1, true));
        writer
            .into_inner()
            .expect("open")
            .close()
            .await
            .expect("closes");
    }

    /// A database that cannot grow (as on a full disk): SQLite rolls the transaction back
    /// by itself, sqlx's ROLLBACK fails and sqlx still counts the transaction. The
    /// connection is replaced, and writes that fit commit.
    #[tokio::test]
    async fn a_connection_left_in_doubt_by_sqlite_full_is_replaced() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("t.db");
        let mut writer = writer_on(&path).await;
        let connection = writer.get().await.expect("open");
        let pages: i64 = sqlx::query_scalar("PRAGMA page_count")
            .fetch_one(&mut *connection)
            .await
            .expect("counts pages");
        sqlx::query(&format!("PRAGMA max_page_count = {}", pages + 8))
            .execute(&mut *connection)
            .await
            .expect("caps");

        let full = insert(&mut writer, 1 << 20).await.expect_err("no room");
        assert_eq!(crate::Fault::of(&full), crate::Fault::DiskFull, "{full}");
        let connection = writer.connection.as_mut().expect("open");
        connection.ping().await.expect("pings");
        assert!(connection.is_in_transaction(), "sqlx still counts it");
        writer.settle().await;
        assert!(!same_connection(&mut writer).await, "replaced");
        insert(&mut writer, 10).await.expect("fits");
        assert_eq!(
            seen_from_outside(&path).await,
            (1, true),
            "committed, and no transaction left open"
        );
        writer
            .into_inner()
            .expect("open")
            .close()
            .await
            .expect("closes");
    }

    /// The state a full disk leaves behind: sqlx counts a transaction SQLite no longer has,
    /// so the next BEGIN is a SAVEPOINT and a failed write's ROLLBACK TO keeps a transaction
    /// open for good. The connection is replaced, and later writes commit.
    #[tokio::test]
    async fn a_connection_left_inside_a_transaction_is_replaced() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("t.db");
        let mut writer = writer_on(&path).await;
        let connection = writer.get().await.expect("open");
        let mut tx = connection.begin().await.expect("begins");
        sqlx::query("ROLLBACK")
            .execute(&mut *tx)
            .await
            .expect("ends SQLite's transaction behind sqlx's back");
        drop(tx);
        // Runs the queued ROLLBACK, which fails: no transaction is active.
        connection.ping().await.expect("pings");
        assert!(connection.is_in_transaction(), "sqlx still counts it");
        // Writes fail on this connection only (a reopened one can write).
        sqlx::query("PRAGMA query_only = ON")
            .execute(&mut *connection)
            .await
            .expect("sets");

        insert(&mut writer, 10).await.expect_err("refused");
        writer.settle().await;
        let connection = writer.connection.as_ref().expect("reopened");
        assert!(!connection.is_in_transaction());
        assert!(!same_connection(&mut writer).await, "replaced");

        insert(&mut writer, 10).await.expect("stored");
        assert_eq!(
            seen_from_outside(&path).await,
            (1, true),
            "committed, and no transaction left open"
        );
        writer
            .into_inner()
            .expect("open")
            .close()
            .await
            .expect("closes");
    }
}
