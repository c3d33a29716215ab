//! The delivery window of one session: which queued rows are on their way to the
//! broker, under which packet id, and which are acknowledged but not yet deleted.
//!
//! rumqttc has no per-publish acknowledgement. It hands out packet ids as it takes
//! publishes off its request channel, in the order they were submitted, and reports
//! each one as `Outgoing::Publish(pkid)`; the broker's `PubAck(pkid)` then names the
//! row. At most `capacity` rows are on their way (the broker's Receive Maximum); an
//! acknowledged row frees its slot at once, while its deletion is committed with
//! others, so a session does not wait for the disk between two windows. Rows sent and
//! not yet deleted are at most [`UNDELETED_WINDOWS`] configured windows (`inflight`,
//! also when the broker allows fewer on their way): that is the bound on duplicates
//! after a crash.

use std::collections::{HashMap, VecDeque};

/// Windows of rows sent and not yet deleted. Deletions of many sessions share the
/// writer's commits, which take a while: a session held to two windows waited for
/// them, and a drain of 20 devices ran at 0.35-0.37x a bare publisher against
/// 0.42-0.44x with sixteen. Counted in configured windows: sixteen of Mosquitto's
/// Receive Maximum of 20 held MQTT 5 drains back (0.84-0.90x against 0.88-0.95x).
pub const UNDELETED_WINDOWS: usize = 16;
/// Windows of rows sent and not yet deleted from which their deletion is pressing.
const PRESSING_WINDOWS: usize = 1;

#[derive(Debug)]
pub(crate) struct Window {
    capacity: usize,
    /// Rows sent and not yet deleted at most: [`UNDELETED_WINDOWS`] configured windows.
    undeleted_bound: usize,
    /// QoS 1 rows handed to the client that have no packet id yet, in order.
    submitted: VecDeque<i64>,
    /// Packet id -> row, sent and not yet acknowledged.
    inflight: HashMap<u16, i64>,
    /// Acknowledged rows whose deletion has not been requested yet.
    acked: Vec<i64>,
    /// Rows the broker refused for good (or could never accept), with the reason, not
    /// yet handed over to be moved to the dead letters.
    refused: Vec<(i64, String)>,
    /// Rows whose deletion is being committed.
    deleting: usize,
    /// QoS 0 publishes handed to the client and not yet written.
    qos0_pending: usize,
}

/// A packet id that no submitted row explains: rumqttc and the window disagree.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Untracked(pub u16);

impl Window {
    pub(crate) fn new(capacity: usize) -> Self {
        Window {
            capacity: capacity.max(1),
            undeleted_bound: UNDELETED_WINDOWS * capacity.max(1),
            submitted: VecDeque::new(),
            inflight: HashMap::new(),
            acked: Vec::new(),
            refused: Vec::new(),
            deleting: 0,
            qos0_pending: 0,
        }
    }

    /// Rows that may still be fetched and sent.
    pub(crate) fn free(&self) -> usize {
        let on_the_way = self.submitted.len() + self.inflight.len();
        let sendable = self.capacity.saturating_sub(on_the_way);
        sendable.min(self.undeleted_bound.saturating_sub(self.undeleted()))
    }

    /// Rows sent and not yet deleted fill a window or more, as in a drain, where
    /// acknowledgements come faster than the store's commit window: their deletion
    /// should not wait for that window (an MQTT 5 drain acknowledged 20 at a time fell
    /// to a third of its speed in some runs when it waited until two windows, or half
    /// the bound). Steady traffic keeps far fewer.
    pub(crate) fn deletion_pressing(&self) -> bool {
        self.undeleted() >= PRESSING_WINDOWS * self.capacity
    }

    fn undeleted(&self) -> usize {
        self.submitted.len()
            + self.inflight.len()
            + self.acked.len()
            + self.refused.len()
            + self.deleting
    }

    /// Sent (or about to be sent) and not acknowledged.
    pub(crate) fn unacknowledged(&self) -> usize {
        self.submitted.len() + self.inflight.len()
    }

    /// Written to the connection and not acknowledged.
    pub(crate) fn sent(&self) -> usize {
        self.inflight.len()
    }

    /// Nothing acknowledged waits for its deletion: every row still in the queue is
    /// unacknowledged, so the queue can be read again from its start.
    pub(crate) fn settled(&self) -> bool {
        self.acked.is_empty() && self.refused.is_empty() && self.deleting == 0
    }

    /// At most this many rows on their way from now on (the broker's Receive Maximum).
    pub(crate) fn set_capacity(&mut self, capacity: usize) {
        self.capacity = capacity.max(1);
    }

    pub(crate) fn submitted(&mut self, row: i64) {
        self.submitted.push_back(row);
    }

    pub(crate) fn qos0_submitted(&mut self) {
        self.qos0_pending += 1;
    }

    pub(crate) fn qos0_pending(&self) -> usize {
        self.qos0_pending
    }

    /// rumqttc wrote a publish; packet id 0 is a QoS 0 one.
    pub(crate) fn on_outgoing_publish(&mut self, pkid: u16) -> Result<(), Untracked> {
        if pkid == 0 {
            self.qos0_pending = self.qos0_pending.saturating_sub(1);
            return Ok(());
        }
        let row = self.submitted.pop_front().ok_or(Untracked(pkid))?;
        if let Some(previous) = self.inflight.insert(pkid, row) {
            // rumqttc reuses an id only after its PubAck; keep the older row so that it
            // is resent after the next reconnect rather than forgotten.
            self.inflight.insert(pkid, previous);
            self.submitted.push_front(row);
            return Err(Untracked(pkid));
        }
        Ok(())
    }

    /// The broker acknowledged `pkid`; returns the row it names.
    pub(crate) fn on_puback(&mut self, pkid: u16) -> Option<i64> {
        let row = self.inflight.remove(&pkid)?;
        self.acked.push(row);
        Some(row)
    }

    /// The broker refused `pkid`: the row it names leaves the window but stays queued,
    /// unless the caller hands it to [`Self::dead_letter`].
    pub(crate) fn refuse(&mut self, pkid: u16) -> Option<i64> {
        self.inflight.remove(&pkid)
    }

    /// A row to move to the dead letters; it counts as undeleted until [`Self::deleted`].
    pub(crate) fn dead_letter(&mut self, row: i64, reason: String) {
        self.refused.push((row, reason));
    }

    /// Rows to move to the dead letters now, with their reasons.
    pub(crate) fn take_refused(&mut self) -> Vec<(i64, String)> {
        let rows = std::mem::take(&mut self.refused);
        self.deleting += rows.len();
        rows
    }

    /// A row that can never be sent: it is deleted as if acknowledged.
    pub(crate) fn discard(&mut self, row: i64) {
        self.acked.push(row);
    }

    /// Acknowledged rows to delete now; they count as undeleted until [`Self::deleted`].
    pub(crate) fn take_acked(&mut self) -> Vec<i64> {
        let rows = std::mem::take(&mut self.acked);
        self.deleting += rows.len();
        rows
    }

    pub(crate) fn deleted(&mut self, rows: usize) {
        self.deleting = self.deleting.saturating_sub(rows);
    }

    /// The connection is gone: whatever was sent and not acknowledged will be read
    /// from the queue again. Returns the QoS 0 publishes that were lost with it.
    pub(crate) fn connection_lost(&mut self) -> usize {
        self.submitted.clear();
        self.inflight.clear();
        std::mem::take(&mut self.qos0_pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_packet_ids_to_rows_in_submission_order() {
        let mut w = Window::new(4);
        for row in [10, 11, 12] {
            w.submitted(row);
        }
        w.qos0_submitted();
        assert_eq!(w.free(), 1);
        w.on_outgoing_publish(1).unwrap();
        w.on_outgoing_publish(0).unwrap(); // the QoS 0 one does not take a row
        w.on_outgoing_publish(2).unwrap();
        w.on_outgoing_publish(3).unwrap();
        assert_eq!(w.qos0_pending(), 0);
        assert_eq!(w.on_puback(2), Some(11));
        assert_eq!(w.on_puback(2), None, "a second ack names nothing");
        assert_eq!(w.on_puback(1), Some(10));
        assert_eq!(w.unacknowledged(), 1);
    }

    /// Sends `rows` as packet ids equal to the rows and has the broker acknowledge them.
    fn send_and_acknowledge(w: &mut Window, rows: std::ops::RangeInclusive<i64>) {
        for row in rows.clone() {
            w.submitted(row);
        }
        for row in rows {
            let pkid = u16::try_from(row).unwrap();
            w.on_outgoing_publish(pkid).unwrap();
            assert_eq!(w.on_puback(pkid), Some(row));
        }
    }

    #[test]
    fn an_acknowledgement_frees_a_slot_and_undeleted_rows_stay_within_the_bound() {
        let mut w = Window::new(2);
        w.submitted(1);
        assert!(!w.deletion_pressing(), "one row short of a window");
        w.submitted(2);
        assert!(w.deletion_pressing(), "a window of rows not deleted");
        w.on_outgoing_publish(1).unwrap();
        w.on_outgoing_publish(2).unwrap();
        assert_eq!(w.free(), 0, "the broker has two on their way");
        w.on_puback(1);
        w.on_puback(2);
        assert_eq!(w.free(), 2, "acknowledged: their slots are free");
        assert!(!w.settled());
        assert_eq!(w.take_acked(), vec![1, 2]);
        let bound = i64::try_from(UNDELETED_WINDOWS * 2).unwrap();
        send_and_acknowledge(&mut w, 3..=bound - 1);
        assert_eq!(w.free(), 1, "one row short of the bound");
        send_and_acknowledge(&mut w, bound..=bound);
        assert_eq!(w.free(), 0, "rows sent and not deleted reach the bound");
        w.deleted(2);
        assert_eq!(w.free(), 2, "the first deletion committed");
        assert_eq!(w.take_acked().len(), UNDELETED_WINDOWS * 2 - 2);
        w.deleted(UNDELETED_WINDOWS * 2 - 2);
        assert!(w.settled());
    }

    #[test]
    fn a_smaller_broker_window_keeps_the_bound_of_the_configured_one() {
        let mut w = Window::new(2);
        w.set_capacity(1);
        let bound = i64::try_from(UNDELETED_WINDOWS * 2).unwrap();
        send_and_acknowledge(&mut w, 1..=bound - 1);
        assert_eq!(
            w.free(),
            1,
            "one on its way at a time, the bound not reached"
        );
        send_and_acknowledge(&mut w, bound..=bound);
        assert_eq!(w.free(), 0, "rows sent and not deleted reach the bound");
    }

    #[test]
    fn losing_the_connection_forgets_unacknowledged_rows_but_not_acknowledged_ones() {
        let mut w = Window::new(10);
        for row in 1..=4 {
            w.submitted(row);
        }
        w.on_outgoing_publish(1).unwrap();
        w.on_outgoing_publish(2).unwrap();
        w.on_puback(1);
        w.qos0_submitted();
        w.qos0_submitted();
        assert_eq!(w.connection_lost(), 2);
        assert_eq!(w.unacknowledged(), 0);
        assert!(!w.settled(), "row 1 still has to be deleted");
        assert_eq!(w.take_acked(), vec![1]);
        assert_eq!(w.on_puback(2), None);
    }

    #[test]
    fn unexplained_packet_ids_are_reported() {
        let mut w = Window::new(3);
        assert_eq!(w.on_outgoing_publish(7), Err(Untracked(7)));
        w.submitted(1);
        w.submitted(2);
        w.on_outgoing_publish(1).unwrap();
        assert_eq!(w.on_outgoing_publish(1), Err(Untracked(1)));
        assert_eq!(w.on_puback(1), Some(1), "the first row keeps the id");
        assert_eq!(w.unacknowledged(), 1, "row 2 waits to be sent again");
    }
}
