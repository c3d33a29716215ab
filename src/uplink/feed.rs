//! Which queued rows a session sends next, and when: the cursor through the device's
//! queue, the rows read ahead of the window, the resync from the start after every
//! (re)connect, and the delivery window. Pure state, driven by the session; tested
//! without sockets or a database.

use std::collections::VecDeque;
use std::time::Duration;

use super::window::Window;

/// Wait before reading the queue again after a failed read.
const FETCH_RETRY: Duration = Duration::from_secs(1);

/// Rows read ahead, in configured windows. A read costs about as much for a few rows
/// as for a few hundred: reads of a window (or of Mosquitto's Receive Maximum of 20)
/// cost a drain 6 % more CPU per event than reads of three windows, and five times
/// smaller ones made the MQTT 5 drain 0.42x a bare publisher instead of 0.55x.
pub(super) const READ_AHEAD_WINDOWS: usize = 3;

/// A queued row, as far as the feed is concerned.
pub(super) trait Row {
    fn id(&self) -> i64;
}

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

#[derive(Debug)]
pub(super) struct Feed<R> {
    pub window: Window,
    /// Rows read and not yet handed to the client, in queue order, at most
    /// `read_ahead`. A slot the broker frees is filled from here at once: the publish goes
    /// out with the TCP acknowledgement of the PUBACK, which a broker with Nagle's
    /// algorithm on (Mosquitto by default) waits for before it sends further PUBACKs.
    /// Waiting for a read instead leaves that acknowledgement to the kernel's delayed
    /// ACK, up to 40 ms per window.
    ahead: VecDeque<R>,
    /// Rows read at most ahead (the session's [`READ_AHEAD_WINDOWS`] configured
    /// windows), also when the broker's Receive Maximum makes the window smaller.
    read_ahead: usize,
    /// Bumped on every connect and loss; a fetch from an older one is discarded.
    generation: u64,
    /// Id of the last row read.
    cursor: i64,
    /// Read the queue from its start (after a (re)connect).
    resync: bool,
    /// The queue may hold rows after `cursor`.
    has_more: bool,
    fetching: bool,
    fetch_delay: Option<Duration>,
}

impl<R: Row> Feed<R> {
    /// A window of `window` rows in flight, reading up to `read_ahead` rows ahead.
    pub fn new(window: usize, read_ahead: usize) -> Self {
        Feed {
            window: Window::new(window),
            ahead: VecDeque::new(),
            read_ahead: read_ahead.max(1),
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
        self.ahead.clear();
    }

    /// The connection is gone; returns the QoS 0 publishes lost with it.
    pub fn lost(&mut self) -> usize {
        self.generation += 1;
        self.ahead.clear();
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

    /// The next read, if the connection allows one and the rows read ahead run low
    /// (half of `read_ahead` or less: reads stay large, and the next rows are there
    /// before the last ones go).
    pub fn next_fetch(&mut self, connected: bool) -> Option<FetchRequest> {
        if !connected || self.fetching || !self.has_more {
            return None;
        }
        if self.resync && (!self.window.settled() || self.window.unacknowledged() > 0) {
            // Acknowledged rows must be gone, and the others answered, before reading
            // from the start.
            return None;
        }
        let limit = self.read_ahead;
        if self.ahead.len() > limit / 2 {
            return None;
        }
        self.fetching = true;
        Some(FetchRequest {
            after: if self.resync { 0 } else { self.cursor },
            limit: limit - self.ahead.len(),
            generation: self.generation,
            delay: self.fetch_delay.take(),
        })
    }

    /// A read ended with these rows (`None`: it failed). Rows of an older connection
    /// are dropped: they are read again from the start.
    pub fn fetched(&mut self, request: FetchRequest, rows: Option<Vec<R>>, connected: bool) {
        self.fetching = false;
        if request.generation != self.generation || !connected {
            self.has_more = true;
            return;
        }
        let Some(rows) = rows else {
            self.fetch_delay = Some(FETCH_RETRY);
            self.has_more = true;
            return;
        };
        self.resync = false;
        self.has_more = rows.len() == request.limit;
        if let Some(last) = rows.last() {
            self.cursor = last.id();
        }
        self.ahead.extend(rows);
    }

    /// The next row to send, if the window has room for it.
    pub fn next_row(&mut self, connected: bool) -> Option<R> {
        if !connected || self.window.free() == 0 {
            return None;
        }
        self.ahead.pop_front()
    }

    /// The row from [`Self::next_row`] was handed to the client.
    pub fn sent(&mut self, row: i64) {
        self.window.submitted(row);
    }

    /// The client took no more: the row is sent first next time.
    pub fn put_back(&mut self, row: R) {
        self.ahead.push_front(row);
    }

    /// A row that cannot be sent at all: it is deleted as if acknowledged.
    pub fn skipped(&mut self, row: i64) {
        self.window.discard(row);
    }

    /// The broker refused a row for now (an MQTT 5 reason such as quota exceeded): once
    /// the rows in flight are answered, the queue is read again from the start (the
    /// refused row first) after `delay`.
    pub fn retry_from_start(&mut self, delay: Duration) {
        self.generation += 1;
        self.resync = true;
        self.has_more = true;
        self.fetch_delay = Some(delay);
        self.ahead.clear();
    }

    /// A row the broker would refuse for good (larger than it accepts): it leaves the
    /// queue for the dead letters.
    pub fn refused(&mut self, row: i64, reason: String) {
        self.window.dead_letter(row, reason);
    }
}

#[cfg(test)]
mod tests {
    use super::super::window::UNDELETED_WINDOWS;
    use super::*;

    impl Row for i64 {
        fn id(&self) -> i64 {
            *self
        }
    }

    /// Hands every row the window takes to the client; returns their ids.
    fn send_all(feed: &mut Feed<i64>) -> Vec<i64> {
        let mut sent = Vec::new();
        while let Some(row) = feed.next_row(true) {
            feed.sent(row);
            sent.push(row);
        }
        sent
    }

    #[test]
    fn nothing_is_read_while_disconnected_or_already_reading() {
        let mut feed = Feed::<i64>::new(4, 4);
        assert_eq!(feed.next_fetch(false), None);
        feed.connected();
        let first = feed.next_fetch(true).unwrap();
        assert_eq!((first.after, first.limit), (0, 4));
        assert_eq!(feed.next_fetch(true), None, "one read at a time");
    }

    #[test]
    fn rows_are_read_ahead_and_each_freed_slot_is_filled_at_once() {
        let mut feed = Feed::new(4, 4);
        feed.connected();
        let request = feed.next_fetch(true).unwrap();
        feed.fetched(request, Some(vec![11, 12, 13, 14]), true);
        assert_eq!(send_all(&mut feed), vec![11, 12, 13, 14]);
        // A full window leaves a window's worth to read ahead.
        let ahead = feed.next_fetch(true).unwrap();
        assert_eq!((ahead.after, ahead.limit), (14, 4));
        feed.fetched(ahead, Some(vec![15, 16, 17, 18]), true);
        assert_eq!(send_all(&mut feed), Vec::<i64>::new(), "no slot is free");
        assert_eq!(feed.next_fetch(true), None, "enough rows are read ahead");
        for pkid in 1..=4 {
            feed.window.on_outgoing_publish(pkid).unwrap();
        }
        assert_eq!(feed.window.on_puback(1), Some(11));
        assert_eq!(send_all(&mut feed), vec![15], "one slot, one row, no read");
        assert_eq!(feed.window.on_puback(2), Some(12));
        assert_eq!(feed.window.on_puback(3), Some(13));
        assert_eq!(send_all(&mut feed), vec![16, 17]);
        let next = feed.next_fetch(true).expect("half the rows ahead are gone");
        assert_eq!((next.after, next.limit), (18, 3));
    }

    #[test]
    fn reads_keep_their_size_when_the_broker_allows_fewer_in_flight() {
        let mut feed = Feed::new(4, 12);
        feed.set_window(2);
        feed.connected();
        let request = feed.next_fetch(true).unwrap();
        assert_eq!(request.limit, 12, "what the session reads ahead");
        feed.fetched(request, Some((1..=12).collect()), true);
        assert_eq!(
            send_all(&mut feed),
            vec![1, 2],
            "the broker's two in flight"
        );
        assert_eq!(feed.next_fetch(true), None, "ten rows ahead: enough");
    }

    #[test]
    fn a_short_read_waits_for_commits() {
        let mut feed = Feed::new(4, 4);
        feed.connected();
        let request = feed.next_fetch(true).unwrap();
        feed.fetched(request, Some(vec![11, 12, 13]), true);
        assert!(feed.idle(), "fewer rows than asked: the queue is drained");
        assert_eq!(feed.next_fetch(true), None);
        feed.rows_committed(true);
        assert_eq!(feed.next_fetch(true), None, "three rows ahead: enough");
        assert_eq!(send_all(&mut feed), vec![11, 12, 13]);
        let next = feed.next_fetch(true).unwrap();
        assert_eq!((next.after, next.limit), (13, 4));
    }

    #[test]
    fn acknowledged_rows_being_deleted_stop_sending_only_at_the_bound() {
        let mut feed = Feed::new(2, 2);
        feed.connected();
        let mut next_row = 1;
        let mut sent_total = 0;
        // Every row is acknowledged at once and its deletion requested, never committed.
        loop {
            if let Some(request) = feed.next_fetch(true) {
                let end = next_row + i64::try_from(request.limit).unwrap();
                feed.fetched(request, Some((next_row..end).collect()), true);
                next_row = end;
            }
            let sent = send_all(&mut feed);
            if sent.is_empty() {
                break;
            }
            for row in &sent {
                let pkid = u16::try_from(*row).unwrap();
                feed.window.on_outgoing_publish(pkid).unwrap();
                assert_eq!(feed.window.on_puback(pkid), Some(*row));
            }
            feed.window.take_acked();
            sent_total += sent.len();
        }
        assert_eq!(
            sent_total,
            UNDELETED_WINDOWS * 2,
            "deletions are not waited for until the bound"
        );
        feed.window.deleted(2);
        assert_eq!(
            send_all(&mut feed).len(),
            2,
            "a committed deletion makes room"
        );
    }

    #[test]
    fn a_reconnect_discards_a_stale_read_and_the_rows_ahead() {
        let mut feed = Feed::new(4, 4);
        feed.connected();
        let request = feed.next_fetch(true).unwrap();
        feed.fetched(request, Some(vec![1, 2, 3, 4]), true);
        send_all(&mut feed);
        let ahead = feed.next_fetch(true).unwrap();
        feed.fetched(ahead, Some(vec![5, 6]), true);
        assert_eq!(feed.lost(), 0);
        assert_eq!(
            feed.next_row(false),
            None,
            "nothing is sent while disconnected"
        );
        feed.connected();
        assert_eq!(
            send_all(&mut feed),
            Vec::<i64>::new(),
            "5 and 6 are forgotten"
        );
        let again = feed.next_fetch(true).unwrap();
        assert_eq!(again.after, 0, "unacknowledged rows are read again");
        feed.lost();
        feed.fetched(again, Some(vec![1, 2, 3, 4]), false);
        feed.connected();
        assert_eq!(
            send_all(&mut feed),
            Vec::<i64>::new(),
            "a stale read is dropped"
        );
        assert_eq!(feed.next_fetch(true).unwrap().after, 0);
    }

    #[test]
    fn a_failed_read_is_retried_after_a_delay() {
        let mut feed = Feed::<i64>::new(2, 2);
        feed.connected();
        let request = feed.next_fetch(true).unwrap();
        assert_eq!(request.delay, None);
        feed.fetched(request, None, true);
        let retry = feed.next_fetch(true).unwrap();
        assert_eq!(retry.delay, Some(FETCH_RETRY));
        assert_eq!(retry.after, 0, "still a resync");
    }

    #[test]
    fn a_passing_refusal_reads_the_queue_again_once_the_rest_is_answered() {
        let mut feed = Feed::new(4, 4);
        feed.connected();
        let request = feed.next_fetch(true).unwrap();
        feed.fetched(request, Some(vec![11, 12, 13]), true);
        send_all(&mut feed);
        for pkid in 1..=3 {
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

    #[test]
    fn a_row_the_client_did_not_take_goes_first_next_time() {
        let mut feed = Feed::new(4, 4);
        feed.connected();
        let request = feed.next_fetch(true).unwrap();
        feed.fetched(request, Some(vec![1, 2]), true);
        let row = feed.next_row(true).unwrap();
        feed.put_back(row);
        assert_eq!(send_all(&mut feed), vec![1, 2]);
    }

    #[test]
    fn a_skipped_row_is_deleted() {
        let mut feed = Feed::new(2, 2);
        feed.connected();
        let request = feed.next_fetch(true).unwrap();
        feed.fetched(request, Some(vec![5]), true);
        let row = feed.next_row(true).unwrap();
        feed.skipped(row);
        assert_eq!(feed.window.take_acked(), vec![5]);
    }
}
