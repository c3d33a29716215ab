//! Acknowledged rows of a drain, deleted in bulk.
//!
//! Deleting each row as its acknowledgement arrived cost the writer more than all the
//! rest of a drain: a seek and a page rewritten per row, in the table and in its index,
//! the rows of all devices lying interleaved. Now, when a device's acknowledged rows
//! continue its acknowledged run, the writer only moves the device's `through` mark in
//! `acknowledged`: every row of the device up to it counts as gone (no read returns it,
//! no bound counts it). Such rows are deleted together later: all at once when nothing
//! unacknowledged is left (SQLite then clears the table without visiting its rows), or,
//! oldest first and in ranges, when the table would hold more than the queue's bounds.
//! Rows acknowledged out of order are deleted one by one, as before.
//!
//! Only a drain's deletions are marked. Under steady traffic new rows join every commit,
//! so the table is rarely empty enough to be cleared at once, and marked rows piled up
//! (the steady-state benchmark wrote 3.1 instead of 1.3 bytes per payload byte).

use std::collections::HashMap;

use sqlx::{Sqlite, SqliteConnection, Transaction};

use super::open::Occupancy;

/// Most acknowledged rows deleted per transaction to make room: its pages fit SQLite's
/// cache, and the queue's other writes go on between two.
const PURGE_ROWS: i64 = 4096;

/// The SQL condition under which a row of `queue` is still queued: above its device's
/// `through` mark.
macro_rules! unacknowledged {
    () => {
        "id > COALESCE((SELECT through FROM acknowledged WHERE acknowledged.device = queue.device), 0)"
    };
}
pub(super) use unacknowledged;

/// The `through` marks, and the rows they cover that are still in the table.
#[derive(Debug, Default)]
pub(super) struct Acknowledged {
    through: HashMap<String, i64>,
    /// Rows (and their payload bytes) acknowledged and not yet deleted.
    pub held: Occupancy,
}

/// How far one device's acknowledged rows continue its run.
#[derive(Debug)]
pub(super) struct Extension {
    /// The device's new mark (its old one when nothing continues the run).
    pub through: i64,
    /// The rows the mark now covers besides those it covered.
    pub covered: Occupancy,
    /// Acknowledged rows above the new mark, to delete one by one.
    pub rest: Vec<i64>,
}

impl Acknowledged {
    /// The marks in the database; `held` rows of the table are below them.
    pub(super) async fn load(
        conn: &mut SqliteConnection,
        held: Occupancy,
    ) -> Result<Self, sqlx::Error> {
        let through: Vec<(String, i64)> =
            sqlx::query_as("SELECT device, through FROM acknowledged")
                .fetch_all(conn)
                .await?;
        Ok(Acknowledged {
            through: through.into_iter().collect(),
            held,
        })
    }

    /// Committed: `device`'s run now reaches `through`.
    pub(super) fn moved(&mut self, device: String, through: i64) {
        self.through.insert(device, through);
    }

    /// Reads, inside `tx`, how far `acked` (ids of `device`'s rows the broker
    /// acknowledged) continues the device's run, and moves its mark there.
    pub(super) async fn extend(
        &self,
        tx: &mut Transaction<'_, Sqlite>,
        device: &str,
        acked: &[i64],
    ) -> Result<Extension, sqlx::Error> {
        let from = self.through.get(device).copied().unwrap_or(0);
        let mut acked: Vec<i64> = acked.iter().copied().filter(|id| *id > from).collect();
        acked.sort_unstable();
        acked.dedup();
        if acked.is_empty() {
            return Ok(continue_run(from, &acked, &[]));
        }
        // The device's next rows in order, from the index alone, as one JSON document
        // (sqlx hands rows over one at a time, which cost more than reading them).
        let next: String = sqlx::query_scalar(
            "SELECT json_group_array(json_array(id, size)) FROM \
             (SELECT id, size FROM queue WHERE device = ?1 AND id > ?2 ORDER BY id LIMIT ?3)",
        )
        .bind(device)
        .bind(from)
        .bind(i64::try_from(acked.len()).unwrap_or(i64::MAX))
        .fetch_one(&mut **tx)
        .await?;
        let mut next: Vec<(i64, i64)> =
            serde_json::from_str(&next).map_err(|error| sqlx::Error::Decode(error.into()))?;
        // An aggregate's order follows its input in SQLite, but is not promised.
        next.sort_unstable();
        let extension = continue_run(from, &acked, &next);
        if extension.through > from {
            sqlx::query(
                "INSERT INTO acknowledged (device, through) VALUES (?1, ?2) \
                 ON CONFLICT (device) DO UPDATE SET through = excluded.through",
            )
            .bind(device)
            .bind(extension.through)
            .execute(&mut **tx)
            .await?;
        }
        Ok(extension)
    }

    /// Deletes, inside `tx`, the rows held when nothing else is queued; returns whether
    /// it did. `unacknowledged` is the writer's count of rows still queued, checked
    /// against the table first.
    pub(super) async fn clear_if_all(
        tx: &mut Transaction<'_, Sqlite>,
        unacknowledged: u64,
    ) -> Result<bool, sqlx::Error> {
        if unacknowledged > 0 {
            return Ok(false);
        }
        let queued: bool = sqlx::query_scalar(concat!(
            "SELECT EXISTS (SELECT 1 FROM queue WHERE ",
            unacknowledged!(),
            ")"
        ))
        .fetch_one(&mut **tx)
        .await?;
        if queued {
            return Ok(false);
        }
        // Without a WHERE clause SQLite drops the table's pages instead of its rows.
        sqlx::query("DELETE FROM queue").execute(&mut **tx).await?;
        Ok(true)
    }

    /// Deletes, inside `tx`, up to [`PURGE_ROWS`] rows held, oldest first: those below
    /// the first row still queued in one range (rows in id order share pages), then
    /// device by device. `marks` are the marks moved in this transaction. Returns what
    /// was deleted.
    pub(super) async fn purge(
        &self,
        tx: &mut Transaction<'_, Sqlite>,
        marks: &[(String, i64)],
    ) -> Result<Occupancy, sqlx::Error> {
        let first_queued: Option<i64> = sqlx::query_scalar(concat!(
            "SELECT MIN(id) FROM queue WHERE ",
            unacknowledged!()
        ))
        .fetch_one(&mut **tx)
        .await?;
        let below = first_queued.unwrap_or(i64::MAX);
        let mut freed = delete_range(tx, None, i64::MIN, below - 1, PURGE_ROWS).await?;
        let mut through = self.through.clone();
        through.extend(marks.iter().cloned());
        for (device, mark) in through.iter().filter(|(_, mark)| **mark >= below) {
            let budget = PURGE_ROWS - i64::try_from(freed.messages).unwrap_or(PURGE_ROWS);
            if budget <= 0 {
                break;
            }
            freed.add(delete_range(tx, Some(device), below, *mark, budget).await?);
        }
        Ok(freed)
    }
}

/// Deletes inside `tx` the first `limit` rows (of `device`, or of any) with ids from
/// `low` to `high`; returns what was deleted.
async fn delete_range(
    tx: &mut Transaction<'_, Sqlite>,
    device: Option<&str>,
    low: i64,
    high: i64,
    limit: i64,
) -> Result<Occupancy, sqlx::Error> {
    let (messages, bytes, last): (i64, i64, Option<i64>) = sqlx::query_as(
        "SELECT COUNT(*), COALESCE(SUM(size), 0), MAX(id) FROM (SELECT id, size FROM queue \
         WHERE (?1 IS NULL OR device = ?1) AND id >= ?2 AND id <= ?3 ORDER BY id LIMIT ?4)",
    )
    .bind(device)
    .bind(low)
    .bind(high)
    .bind(limit)
    .fetch_one(&mut **tx)
    .await?;
    if let Some(last) = last {
        sqlx::query(
            "DELETE FROM queue WHERE (?1 IS NULL OR device = ?1) AND id >= ?2 AND id <= ?3",
        )
        .bind(device)
        .bind(low)
        .bind(last)
        .execute(&mut **tx)
        .await?;
    }
    Ok(Occupancy::counted(messages, bytes))
}

/// Whether `held` rows (acknowledged, still in the table) are to be deleted although
/// `queued` ones are not: the table holds more than the queue's bounds. (Deleting them
/// from 4,096 on cost the 3.1.1 drain 0.87x -> 0.78x a bare publisher, MQTT 5
/// 0.67x -> 0.46x.)
pub(super) fn purge_due(
    held: Occupancy,
    queued: Occupancy,
    max_messages: u64,
    max_bytes: u64,
) -> bool {
    held.messages > 0
        && (held.messages + queued.messages > max_messages || held.bytes + queued.bytes > max_bytes)
}

/// How far the sorted ids `acked` continue a run that reached `from`, given the
/// device's next rows (id, size) in order: the run takes rows while they are
/// acknowledged, and stops at the first that is not.
fn continue_run(from: i64, acked: &[i64], next: &[(i64, i64)]) -> Extension {
    let mut through = from;
    let mut covered = Occupancy::default();
    let mut acked_ids = acked.iter().peekable();
    for &(id, size) in next {
        // Acknowledged ids below this row are rows no longer in the table.
        while acked_ids.next_if(|acked| **acked < id).is_some() {}
        if acked_ids.next_if_eq(&&id).is_none() {
            break;
        }
        through = id;
        covered.add(Occupancy::counted(1, size));
    }
    Extension {
        through,
        covered,
        rest: acked.iter().copied().filter(|id| *id > through).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn occupancy(messages: u64, bytes: u64) -> Occupancy {
        Occupancy { messages, bytes }
    }

    #[test]
    fn a_run_takes_the_next_rows_while_they_are_acknowledged() {
        let next = [(12, 10), (15, 20), (17, 30), (20, 40)];
        let extension = continue_run(10, &[12, 15, 17, 20], &next);
        assert_eq!(extension.through, 20);
        assert_eq!(extension.covered, occupancy(4, 100));
        assert!(extension.rest.is_empty());
    }

    #[test]
    fn a_row_not_acknowledged_stops_the_run_and_later_ones_are_deleted_one_by_one() {
        let next = [(12, 10), (15, 20), (17, 30), (20, 40)];
        let extension = continue_run(10, &[12, 17, 20], &next);
        assert_eq!(extension.through, 12, "row 15 is still on its way");
        assert_eq!(extension.covered, occupancy(1, 10));
        assert_eq!(extension.rest, vec![17, 20]);

        let extension = continue_run(10, &[15, 17], &next);
        assert_eq!(extension.through, 10, "row 12 is not acknowledged");
        assert_eq!(extension.covered, occupancy(0, 0));
        assert_eq!(extension.rest, vec![15, 17]);
    }

    #[test]
    fn acknowledged_rows_gone_from_the_table_do_not_stop_the_run() {
        // 13 was moved to the dead letters or evicted meanwhile.
        let next = [(12, 10), (15, 20)];
        let extension = continue_run(10, &[12, 13, 15], &next);
        assert_eq!(extension.through, 15);
        assert_eq!(extension.covered, occupancy(2, 30));
        assert!(extension.rest.is_empty());
    }

    #[test]
    fn held_rows_make_room_when_the_table_would_pass_either_bound() {
        let held = occupancy(10, 100);
        assert!(!purge_due(held, occupancy(5, 50), 15, 150));
        assert!(purge_due(held, occupancy(6, 50), 15, 150));
        assert!(purge_due(held, occupancy(5, 51), 15, 150));
        assert!(!purge_due(occupancy(0, 0), occupancy(20, 200), 15, 150));
    }
}
