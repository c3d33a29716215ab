//! The reqIds a device has acted on, kept in the queue database so that a command
//! redelivered by the broker, or sent again after a restart, is written only once.

use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::{ConnectOptions, Connection};

use crate::store::DB_FILE;

/// A connection of its own to the queue database (the table comes with its migrations).
pub struct SeenCommands {
    conn: SqliteConnection,
    per_device: u32,
}

impl SeenCommands {
    /// Opens `queue.db` in `data_dir`, which the store has already created and migrated.
    pub async fn open(data_dir: &Path, per_device: u32) -> Result<Self, sqlx::Error> {
        let path = data_dir.join(DB_FILE);
        let conn = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))?
            .busy_timeout(Duration::from_secs(10))
            .synchronous(sqlx::sqlite::SqliteSynchronous::Full)
            .connect()
            .await?;
        Ok(SeenCommands {
            conn,
            per_device: per_device.max(1),
        })
    }

    /// Records `req_id` for `device`; false when it was already there (a duplicate).
    /// The record is committed before the command is acted on: a crash in between
    /// loses that command rather than repeating a write.
    pub async fn first_time(&mut self, device: &str, req_id: &str) -> Result<bool, sqlx::Error> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as i64;
        let mut tx = self.conn.begin().await?;
        let inserted = sqlx::query(
            "INSERT OR IGNORE INTO command_seen (device, req_id, seen_at) VALUES (?, ?, ?)",
        )
        .bind(device)
        .bind(req_id)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if inserted {
            sqlx::query(
                "DELETE FROM command_seen WHERE device = ?1 AND rowid <= \
                 (SELECT rowid FROM command_seen WHERE device = ?1 ORDER BY rowid DESC LIMIT 1 OFFSET ?2)",
            )
            .bind(device)
            .bind(i64::from(self.per_device))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(inserted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Store, StoreSettings};

    #[tokio::test]
    async fn remembers_across_reopen_and_forgets_the_oldest() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(StoreSettings::new(dir.path())).await.unwrap();
        let mut seen = SeenCommands::open(dir.path(), 3).await.unwrap();
        assert!(seen.first_time("d1", "a").await.unwrap());
        assert!(!seen.first_time("d1", "a").await.unwrap());
        assert!(
            seen.first_time("d2", "a").await.unwrap(),
            "ids are per device"
        );
        drop(seen);

        let mut seen = SeenCommands::open(dir.path(), 3).await.unwrap();
        assert!(
            !seen.first_time("d1", "a").await.unwrap(),
            "kept across a reopen"
        );
        for id in ["b", "c", "d"] {
            assert!(seen.first_time("d1", id).await.unwrap());
        }
        // Only the 3 most recent of d1 remain: "a" was forgotten, "b" is still known.
        assert!(!seen.first_time("d1", "b").await.unwrap());
        assert!(seen.first_time("d1", "a").await.unwrap());
        let count: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM command_seen WHERE device = 'd1'")
                .fetch_one(&mut seen.conn)
                .await
                .unwrap();
        assert_eq!(count, 3);
        store.close().await;
    }
}
