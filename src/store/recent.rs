//! Rows committed lately, kept per watched device (or for every device, for a session
//! serving them all), so that a session which has read everything before them takes
//! them from memory instead of reading them back from the database. Pure state: the
//! writer updates it after each commit, sessions read it through [`super::Store::fetch`].
//!
//! Invariant: for a tracked key, every queued row of that key with an id above
//! `complete_after` is in `rows`, and nothing else (rows are removed here in the same
//! step as their deletion is published). A read that starts below `complete_after`
//! goes to the database.

use std::collections::{HashMap, VecDeque};

use super::QueuedEvent;

/// Rows kept per key; older ones are read from the database.
const ROWS_PER_KEY: usize = 256;
/// Bytes kept for all keys together (payloads and names).
const BUDGET_BYTES: usize = 4 * 1024 * 1024;
/// What a kept row costs besides its payload and names.
const ROW_OVERHEAD: usize = 64;

/// Rows that left the queue in a committed transaction.
#[derive(Debug, Default)]
pub(super) struct Removed {
    /// Deleted or moved rows.
    pub ids: Vec<i64>,
    /// Every row up to this id (the oldest rows evicted for room).
    pub through: Option<i64>,
}

#[derive(Debug)]
pub(super) struct Recent {
    tails: HashMap<String, Tail>,
    bytes: usize,
    /// Highest row id committed so far (a lower bound at start).
    last_id: i64,
}

#[derive(Debug)]
struct Tail {
    rows: VecDeque<QueuedEvent>,
    complete_after: i64,
}

fn cost(row: &QueuedEvent) -> usize {
    row.payload.len() + row.event_id.len() + row.device_id.len() + ROW_OVERHEAD
}

impl Recent {
    /// `last_id`: no committed row has a higher id.
    pub fn new(last_id: i64) -> Self {
        Recent {
            tails: HashMap::new(),
            bytes: 0,
            last_id,
        }
    }

    /// Keeps the rows of `key` committed from now on.
    pub fn track(&mut self, key: &str) {
        let last_id = self.last_id;
        self.tails.entry(key.to_owned()).or_insert_with(|| Tail {
            rows: VecDeque::new(),
            complete_after: last_id,
        });
    }

    /// A commit: `removed` left the queue, `inserted` (in id order) entered it. `any` is
    /// the key that collects the rows of every device.
    pub fn committed(&mut self, removed: Removed, inserted: Vec<QueuedEvent>, any: &str) {
        if !removed.ids.is_empty() || removed.through.is_some() {
            self.remove(removed);
        }
        for row in inserted {
            self.last_id = self.last_id.max(row.id);
            if self.tails.contains_key(any) {
                self.push(any, row.clone());
            }
            if self.tails.contains_key(&row.device_id) {
                let key = row.device_id.clone();
                self.push(&key, row);
            }
        }
    }

    /// The rows of `key` with an id above `after`, at most `limit`, if memory holds
    /// all of them.
    pub fn read(&self, key: &str, after: i64, limit: usize) -> Option<Vec<QueuedEvent>> {
        let tail = self.tails.get(key)?;
        if after < tail.complete_after {
            return None;
        }
        let start = tail.rows.partition_point(|row| row.id <= after);
        Some(tail.rows.iter().skip(start).take(limit).cloned().collect())
    }

    fn push(&mut self, key: &str, row: QueuedEvent) {
        let Some(tail) = self.tails.get_mut(key) else {
            return;
        };
        self.bytes += cost(&row);
        tail.rows.push_back(row);
        if tail.rows.len() > ROWS_PER_KEY {
            if let Some(oldest) = tail.rows.pop_front() {
                self.bytes -= cost(&oldest);
                tail.complete_after = oldest.id;
            }
        }
        if self.bytes > BUDGET_BYTES {
            // This key's rows are read from the database until it catches up again.
            if let Some(newest) = tail.rows.back() {
                tail.complete_after = newest.id;
            }
            self.bytes -= tail.rows.drain(..).map(|row| cost(&row)).sum::<usize>();
        }
    }

    fn remove(&mut self, removed: Removed) {
        let mut ids = removed.ids;
        ids.sort_unstable();
        let through = removed.through.unwrap_or(i64::MIN);
        let mut freed = 0;
        for tail in self.tails.values_mut() {
            let (Some(first), Some(last)) = (tail.rows.front(), tail.rows.back()) else {
                continue;
            };
            let overlaps = ids
                .get(ids.partition_point(|&id| id < first.id))
                .is_some_and(|&id| id <= last.id);
            if !overlaps && first.id > through {
                continue;
            }
            tail.rows.retain(|row| {
                let gone = row.id <= through || ids.binary_search(&row.id).is_ok();
                if gone {
                    freed += cost(row);
                }
                !gone
            });
        }
        self.bytes -= freed;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Kind;

    const ANY: &str = "";

    fn row(id: i64, device: &str) -> QueuedEvent {
        QueuedEvent {
            id,
            device_id: device.into(),
            event_id: "status".into(),
            kind: Kind::Encoded,
            payload: vec![b'x'; 100],
            at_ms: id,
            unreadable: None,
        }
    }

    fn ids(rows: Option<Vec<QueuedEvent>>) -> Option<Vec<i64>> {
        rows.map(|rows| rows.iter().map(|row| row.id).collect())
    }

    #[test]
    fn rows_committed_before_tracking_began_are_read_from_the_database() {
        let mut recent = Recent::new(10);
        recent.track("a");
        recent.committed(Removed::default(), vec![row(11, "a"), row(12, "b")], ANY);
        assert_eq!(
            ids(recent.read("a", 0, 100)),
            None,
            "rows 1-10 are not here"
        );
        assert_eq!(ids(recent.read("a", 9, 100)), None);
        assert_eq!(ids(recent.read("a", 10, 100)), Some(vec![11]));
        assert_eq!(ids(recent.read("a", 11, 100)), Some(vec![]), "caught up");
        assert_eq!(ids(recent.read("b", 10, 100)), None, "b is not tracked");
    }

    #[test]
    fn the_key_of_every_device_sees_every_row_in_order() {
        let mut recent = Recent::new(0);
        recent.track(ANY);
        recent.track("a");
        let rows = vec![row(1, "a"), row(2, "b"), row(3, "a")];
        recent.committed(Removed::default(), rows, ANY);
        assert_eq!(ids(recent.read(ANY, 0, 2)), Some(vec![1, 2]), "limit");
        assert_eq!(ids(recent.read(ANY, 1, 100)), Some(vec![2, 3]));
        assert_eq!(ids(recent.read("a", 0, 100)), Some(vec![1, 3]));
    }

    #[test]
    fn deleted_and_evicted_rows_are_gone_from_memory_too() {
        let mut recent = Recent::new(0);
        recent.track("a");
        recent.track("b");
        let rows = (1..=6).map(|id| row(id, if id % 2 == 0 { "b" } else { "a" }));
        recent.committed(Removed::default(), rows.collect(), ANY);
        let removed = Removed {
            ids: vec![5, 2],
            through: None,
        };
        recent.committed(removed, Vec::new(), ANY);
        assert_eq!(ids(recent.read("a", 0, 100)), Some(vec![1, 3]));
        assert_eq!(ids(recent.read("b", 0, 100)), Some(vec![4, 6]));
        let evicted = Removed {
            ids: Vec::new(),
            through: Some(3),
        };
        recent.committed(evicted, Vec::new(), ANY);
        assert_eq!(ids(recent.read("a", 0, 100)), Some(vec![]));
        assert_eq!(ids(recent.read("b", 0, 100)), Some(vec![4, 6]));
        assert_eq!(recent.bytes, 2 * cost(&row(4, "b")));
    }

    #[test]
    fn a_full_key_forgets_its_oldest_rows_and_reads_them_from_the_database() {
        let mut recent = Recent::new(0);
        recent.track("a");
        let rows = (1..=ROWS_PER_KEY as i64 + 2).map(|id| row(id, "a"));
        recent.committed(Removed::default(), rows.collect(), ANY);
        assert_eq!(ids(recent.read("a", 1, 1)), None, "rows 1-2 were forgotten");
        assert_eq!(ids(recent.read("a", 2, 1)), Some(vec![3]));
    }

    #[test]
    fn the_byte_budget_holds_for_all_keys_together() {
        let mut recent = Recent::new(0);
        let big = |id: i64, device: &str| QueuedEvent {
            payload: vec![0; 200 * 1024],
            ..row(id, device)
        };
        recent.track("a");
        recent.track("b");
        let rows: Vec<_> = (1..=30)
            .map(|id| big(id, if id <= 15 { "a" } else { "b" }))
            .collect();
        recent.committed(Removed::default(), rows, ANY);
        assert!(recent.bytes <= BUDGET_BYTES, "{} bytes kept", recent.bytes);
        assert_eq!(ids(recent.read("a", 15, 100)), Some(vec![]));
        let kept_b = ids(recent.read("b", 30, 100));
        assert_eq!(kept_b, Some(vec![]), "b caught up with its newest row");
        // b's rows after the point where memory was cleared are read from the database.
        assert_eq!(ids(recent.read("b", 15, 100)), None);
    }
}
