//! Which queued rows a session reads next, and when: the cursor through the device's
//! queue, the resync from the start after every (re)connect, and the delivery window.
//! Pure state, driven by the session; tested without sockets or a database.

use std::time::Duration;

use super::window::Window;

/// Wait before reading the queue again after a failed read.
const FETCH_RETRY: Duration = Duration::from_secs(1);

/// A read of the queue the session should start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct FetchRequest {
    /// Rows with an id above this one.
    pub after: i64,
    pub limit: usize,
    /// Connection generation the rows are for; stale when it has moved on.
    pub generation: u64,
    /// Wait this long first (after a failed read).
    pub delay: Option<Duration>,
}

/// What to do with the rows of a finished fetch.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Fetched {
    /// Publish them, in order, telling the feed about each.
    Publish,
    /// The connection changed (or the read failed): drop them.
    Discard,
}

#[derive(Debug)]
pub(super) struct Feed {
    pub window: Window,
    /// Bumped on every connect and loss; a fetch from an older one is discarded.
    generation: u64,
    /// Id of the last row handed to the client.
    cursor: i64,
    /// Read the queue from its start (after a (re)connect).
    resync: bool,
    /// The queue may hold rows after `cursor`.
    has_more: bool,
    fetching: bool,
    fetch_delay: Option<Duration>,
}

impl Feed {
    pub fn new(window: usize) -> Self {
        Feed {
            window: Window::new(window),
            generation: 0,
            cursor: 0,
            resync: true,
            has_more: true,
            fetching: false,
            fetch_delay: None,
        }
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// At most `capacity` rows on their way from now on (the broker's Receive Maximum).
    pub fn set_window(&mut self, capacity: usize) {
        self.window.set_capacity(capacity);
    }

    /// A CONNACK: everything not acknowledged is read again from the start.
    pub fn connected(&mut self) {
        self.generation += 1;
        self.resync = true;
        self.has_more = true;
    }

    /// The connection is gone; returns the QoS 0 publishes lost with it.
    pub fn lost(&mut self) -> usize {
        self.generation += 1;
        self.window.connection_lost()
    }

    /// Whether the session should wait for new rows to be committed.
    pub fn idle(&self) -> bool {
        !self.has_more
    }

    /// New rows were committed (or the store is closing: `more` false).
    pub fn rows_committed(&mut self, more: bool) {
        self.has_more = more;
    }

    /// The next read, if the connection and the window allow one.
    pub fn next_fetch(&mut self, connected: bool) -> Option<FetchRequest> {
        if !connected || self.fetching || !self.has_more {
            return None;
        }
        if self.resync && (!self.window.settled() || self.window.unacknowledged() > 0) {
            // Acknowledged rows must be gone, and the others answered, before reading
            // from the start.
            return None;
        }
        // One read at a time batches by itself: the slots freed while a read runs make
        // the next one. Waiting for more would hold the next publish back, and with it
        // the TCP acknowledgement it carries; a broker with Nagle's algorithm on (as
        // Mosquitto by default) then holds its further PUBACKs until the delayed
        // acknowledgement, up to 40 ms.
        let free = self.window.free();
        if free == 0 {
            return None;
        }
        self.window.reserve(free);
        self.fetching = true;
        Some(FetchRequest {
            after: if self.resync { 0 } else { self.cursor },
            limit: free,
            generation: self.generation,
            delay: self.fetch_delay.take(),
        })
    }

    /// A read ended with `rows` rows (`None`: it failed).
    pub fn fetched(
        &mut self,
        request: FetchRequest,
        rows: Option<usize>,
        connected: bool,
    ) -> Fetched {
        self.fetching = false;
        self.window.release(request.limit);
        if request.generation != self.generation || !connected {
            self.has_more = true;
            return Fetched::Discard;
        }
        let Some(rows) = rows else {
            self.fetch_delay = Some(FETCH_RETRY);
            self.has_more = true;
            return Fetched::Discard;
        };
        self.resync = false;
        self.has_more = rows == request.limit;
        Fetched::Publish
    }

    /// A fetched row was handed to the client.
    pub fn sent(&mut self, row: i64) {
        self.window.submitted(row);
        self.cursor = row;
    }

    /// A fetched row cannot be sent at all: it is deleted as if acknowledged.
    pub fn skipped(&mut self, row: i64) {
        self.window.discard(row);
        self.cursor = row;
    }

    /// The broker refused a row for now (an MQTT 5 reason such as quota exceeded): once
    /// the rows in flight are answered, the queue is read again from the start (the
    /// refused row first) after `delay`.
    pub fn retry_from_start(&mut self, delay: Duration) {
        self.generation += 1;
        self.resync = true;
        self.has_more = true;
        self.fetch_delay = Some(delay);
    }

    /// A fetched row the broker would refuse for good (larger than it accepts): it
    /// leaves the queue for the dead letters.
    pub fn refused(&mut self, row: i64, reason: String) {
        self.window.dead_letter(row, reason);
        self.cursor = row;
    }

    /// The client took no more rows; the rest are read again later.
    pub fn stalled(&mut self) {
        self.has_more = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_read_while_disconnected_or_already_reading() {
        let mut feed = Feed::new(4);
        assert_eq!(feed.next_fetch(false), None);
        feed.connected();
        let first = feed.next_fetch(true).unwrap();
        assert_eq!((first.after, first.limit), (0, 4));
        assert_eq!(feed.next_fetch(true), None, "one read at a time");
    }

    #[test]
    fn the_cursor_moves_on_and_a_short_read_waits_for_commits() {
        let mut feed = Feed::new(4);
        feed.connected();
        let request = feed.next_fetch(true).unwrap();
        assert_eq!(feed.fetched(request, Some(3), true), Fetched::Publish);
        for row in 11..=13 {
            feed.sent(row);
        }
        assert!(feed.idle(), "fewer rows than asked: the queue is drained");
        assert_eq!(feed.next_fetch(true), None);
        feed.rows_committed(true);
        // The one free slot is filled at once, though rows are unacknowledged.
        let one = feed.next_fetch(true).unwrap();
        assert_eq!((one.after, one.limit), (13, 1));
        assert_eq!(feed.fetched(one, Some(1), true), Fetched::Publish);
        feed.sent(14);
        assert_eq!(feed.next_fetch(true), None, "the window is full");
        for pkid in 1..=4 {
            feed.window.on_outgoing_publish(pkid).unwrap();
        }
        assert_eq!(feed.window.on_puback(1), Some(11));
        assert_eq!(feed.window.on_puback(2), Some(12));
        let rows = feed.window.take_acked();
        assert_eq!(rows, vec![11, 12]);
        // Their deletion is still being committed; the next read does not wait for it.
        let next = feed.next_fetch(true).unwrap();
        assert_eq!((next.after, next.limit), (14, 2));
    }

    #[test]
    fn a_reconnect_discards_a_stale_read_and_starts_from_the_top() {
        let mut feed = Feed::new(4);
        feed.connected();
        let request = feed.next_fetch(true).unwrap();
        assert_eq!(feed.fetched(request, Some(4), true), Fetched::Publish);
        for row in 1..=4 {
            feed.sent(row);
        }
        feed.rows_committed(true);
        assert_eq!(feed.lost(), 0);
        feed.connected();
        let again = feed.next_fetch(true).unwrap();
        assert_eq!(again.after, 0, "unacknowledged rows are read again");
        feed.lost();
        assert_eq!(feed.fetched(again, Some(4), false), Fetched::Discard);
        assert_eq!(feed.window.free(), 4, "the reservation is released");
    }

    #[test]
    fn a_failed_read_is_retried_after_a_delay() {
        let mut feed = Feed::new(2);
        feed.connected();
        let request = feed.next_fetch(true).unwrap();
        assert_eq!(request.delay, None);
        assert_eq!(feed.fetched(request, None, true), Fetched::Discard);
        let retry = feed.next_fetch(true).unwrap();
        assert_eq!(retry.delay, Some(FETCH_RETRY));
        assert_eq!(retry.after, 0, "still a resync");
    }

    #[test]
    fn a_passing_refusal_reads_the_queue_again_once_the_rest_is_answered() {
        let mut feed = Feed::new(4);
        feed.connected();
        let request = feed.next_fetch(true).unwrap();
        feed.fetched(request, Some(3), true);
        for (pkid, row) in [(1, 11), (2, 12), (3, 13)] {
            feed.sent(row);
            feed.window.on_outgoing_publish(pkid).unwrap();
        }
        assert_eq!(feed.window.refuse(1), Some(11));
        feed.retry_from_start(Duration::from_millis(500));
        feed.rows_committed(true);
        assert_eq!(
            feed.next_fetch(true),
            None,
            "rows 12 and 13 are still in flight"
        );
        feed.window.on_puback(2);
        feed.window.on_puback(3);
        assert_eq!(feed.next_fetch(true), None, "their deletion first");
        let deleted = feed.window.take_acked();
        feed.window.deleted(deleted.len());
        let again = feed.next_fetch(true).unwrap();
        assert_eq!(
            (again.after, again.delay),
            (0, Some(Duration::from_millis(500)))
        );
    }

    /// A broker that takes only two at a time: reads follow the smaller window.
    #[test]
    fn a_smaller_window_fetches_smaller_batches() {
        let mut feed = Feed::new(100);
        feed.set_window(2);
        feed.connected();
        let request = feed.next_fetch(true).unwrap();
        assert_eq!(request.limit, 2);
        feed.fetched(request, Some(1), true);
        feed.sent(7);
        feed.window.on_outgoing_publish(1).unwrap();
        feed.rows_committed(true);
        let next = feed.next_fetch(true).expect("the free slot is filled");
        assert_eq!((next.after, next.limit), (7, 1));
    }

    #[test]
    fn a_skipped_row_moves_the_cursor_and_is_deleted() {
        let mut feed = Feed::new(2);
        feed.connected();
        let request = feed.next_fetch(true).unwrap();
        feed.fetched(request, Some(1), true);
        feed.skipped(5);
        assert_eq!(feed.window.take_acked(), vec![5]);
    }
}
