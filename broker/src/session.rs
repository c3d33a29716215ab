//! Per-client session state (MQTT 3.1.1 section 4.1): the messages queued for the client,
//! the QoS 1 and 2 messages in flight to it, and the QoS 2 messages received from it that
//! await their PUBREL. A plain state machine: it says what to send, it never sends.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use bytestring::ByteString;

use crate::message::Message;
use crate::subscriptions::Subscription;
use fieldbridge_mqtt::codec::{Property, Publish, QoS};

/// Queue capacity kept after a burst has drained; more is freed.
const SHRINK_ABOVE: usize = 64;

/// What a full queue does with one more QoS 1 or 2 message for an absent client (a
/// connected client's publishers always wait for room).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueFullPolicy {
    /// The new message is dropped (and counted).
    #[default]
    DropNewest,
    /// The oldest queued message makes room (and is counted as dropped).
    DropOldest,
    /// Its publisher waits, as for a connected client: an absent client can hold
    /// publishers back for as long as it stays away.
    Backpressure,
}

/// Bounds of one session, from the `limits` section of the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionLimits {
    /// QoS 1 and 2 messages sent to the client and not yet acknowledged.
    pub max_inflight: usize,
    /// Messages waiting to be sent (beyond the in-flight window).
    pub max_queued_messages: usize,
    /// Topic and payload bytes of the messages waiting to be sent.
    pub max_queued_bytes: usize,
    pub on_queue_full: QueueFullPolicy,
}

/// One message on its way to this session's client.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub message: Arc<Message>,
    /// min(published QoS, granted QoS).
    pub qos: QoS,
    /// The RETAIN flag it is sent with: set for retained messages sent on subscribe, and
    /// for live ones to a Retain As Published subscription.
    pub retain: bool,
    /// Position in this session's queue; names the message in persistent storage.
    pub seq: u64,
    /// Subscription Identifiers of the matching subscriptions (MQTT 5).
    pub identifiers: Vec<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InflightState {
    /// QoS 1 PUBLISH sent.
    AwaitingPubAck,
    /// QoS 2 PUBLISH sent.
    AwaitingPubRec,
    /// PUBREL sent (owed again after a reconnect).
    AwaitingPubComp,
}

#[derive(Debug, Clone)]
pub struct Inflight {
    pub pkid: u16,
    pub delivery: Delivery,
    pub state: InflightState,
}

/// A PUBLISH or PUBREL the connection must write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outgoing {
    /// `seq` names the message in persistent storage (see [`Delivery::seq`]).
    Publish {
        publish: Publish,
        seq: u64,
    },
    PubRel {
        pkid: u16,
    },
}

/// What [`SessionState::enqueue`] did with a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enqueued {
    /// Queued at this sequence number; `wake` when the connection must be told.
    /// `evicted`: the queued messages that made room for it (drop_oldest), by sequence.
    Queued {
        seq: u64,
        wake: bool,
        evicted: Vec<u64>,
    },
    /// Dropped: the queue is at `max_queued_messages` or `max_queued_bytes`.
    Dropped,
    /// Not queued, and not dropped: the queue is full and the message must wait for room
    /// (QoS 1 and 2 for a connected client, or any absent one under `Backpressure`).
    Full,
    /// A QoS 0 message for an absent client: not kept.
    Skipped,
}

/// What an acknowledgement from the client did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acked {
    /// The exchange for this message (at this sequence number) is over.
    Completed { seq: u64 },
    /// PUBREC of a QoS 2 message: PUBREL is owed from now on.
    Released { seq: u64 },
    /// No message in flight with this packet identifier and state.
    Unknown,
    /// The packet identifier is in flight, but the acknowledgement is of the wrong kind
    /// (PUBREC for a QoS 1 message, PUBACK for a QoS 2 one, PUBCOMP before PUBREL).
    WrongKind,
}

/// A queued message of an absent session that lives in the persistence database only:
/// its place in the queue and its size, so that the queue's limits still count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Spilled {
    seq: u64,
    size: usize,
}

#[derive(Debug, Default)]
pub struct SessionState {
    /// The oldest part of the queue while its client is away and persistence is on (the
    /// message bodies stay in the database, out of memory), before `pending`.
    spilled: VecDeque<Spilled>,
    /// Whether messages queued while the client is away are spilled.
    spilling: bool,
    pending: VecDeque<Delivery>,
    /// Bytes of the whole queue, spilled part included.
    pending_bytes: usize,
    inflight: VecDeque<Inflight>,
    last_pkid: u16,
    next_seq: u64,
    // B-trees: no hasher state and no allocation while empty, in every session.
    incoming_qos2: BTreeSet<u16>,
    subscriptions: BTreeMap<ByteString, Subscription>,
    /// The client's Receive Maximum (MQTT 5), when below `max_inflight`.
    receive_maximum: Option<u16>,
    dropped: u64,
    /// Whether the last enqueue was dropped (to log the first drop of a run only).
    dropping: bool,
}

impl SessionState {
    pub fn new() -> Self {
        Self {
            next_seq: 1,
            ..Self::default()
        }
    }

    /// Queues a message for the client. `online` tells whether a connection is attached:
    /// an absent client's session keeps QoS 1 and 2 messages only.
    pub fn enqueue(
        &mut self,
        message: Arc<Message>,
        qos: QoS,
        retain: bool,
        identifiers: Vec<u32>,
        online: bool,
        limits: &SessionLimits,
    ) -> Enqueued {
        if !online && qos == QoS::AtMostOnce {
            return Enqueued::Skipped;
        }
        let spills = self.spilling && !online;
        let size = message.size();
        let mut evicted = Vec::new();
        if !self.fits(size, limits) {
            let waits = qos != QoS::AtMostOnce
                && (online || limits.on_queue_full == QueueFullPolicy::Backpressure);
            if waits {
                return Enqueued::Full;
            }
            self.dropping = true;
            let evicts = qos != QoS::AtMostOnce
                && limits.on_queue_full == QueueFullPolicy::DropOldest
                && size <= limits.max_queued_bytes;
            if !evicts {
                self.dropped += 1;
                return Enqueued::Dropped;
            }
            while !self.fits(size, limits) {
                let oldest = match self.spilled.pop_front() {
                    Some(spilled) => spilled,
                    None => match self.pending.pop_front() {
                        Some(delivery) => Spilled {
                            seq: delivery.seq,
                            size: delivery.message.size(),
                        },
                        None => break,
                    },
                };
                self.pending_bytes -= oldest.size;
                self.dropped += 1;
                evicted.push(oldest.seq);
            }
        } else {
            self.dropping = false;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let wake = online && self.pending.is_empty();
        self.pending_bytes += size;
        if spills {
            self.spilled.push_back(Spilled { seq, size });
            return Enqueued::Queued { seq, wake, evicted };
        }
        self.pending.push_back(Delivery {
            message,
            qos,
            retain,
            seq,
            identifiers,
        });
        Enqueued::Queued { seq, wake, evicted }
    }

    /// Whether a message of `size` bytes fits in the queue now.
    fn fits(&self, size: usize, limits: &SessionLimits) -> bool {
        self.queued_len() < limits.max_queued_messages
            && self.pending_bytes + size <= limits.max_queued_bytes
    }

    /// Whether the queue has drained far enough (to three quarters of its limits) that
    /// publishers waiting for room should try again: waking them at every message taken
    /// would have them compete for one place at a time.
    pub fn has_room_for_waiters(&self, limits: &SessionLimits) -> bool {
        self.queued_len() <= limits.max_queued_messages - limits.max_queued_messages / 4
            && self.pending_bytes <= limits.max_queued_bytes - limits.max_queued_bytes / 4
    }

    /// Limits the QoS 1 and 2 messages in flight to what the client accepts (its MQTT 5
    /// Receive Maximum); `None` for the configured window alone.
    pub fn set_receive_maximum(&mut self, receive_maximum: Option<u16>) {
        self.receive_maximum = receive_maximum;
    }

    /// The in-flight window: `max_inflight`, or less if the client asked for less.
    fn window(&self, limits: &SessionLimits) -> usize {
        self.receive_maximum.map_or(limits.max_inflight, |max| {
            usize::from(max).min(limits.max_inflight)
        })
    }

    /// Moves queued messages into flight, as far as the in-flight window and `budget`
    /// (bytes of payload the connection is ready to buffer) allow, and appends the PUBLISH
    /// packets to send. QoS 0 messages leave the session once handed out. `now_ms` is the
    /// broker clock: expired messages are not sent.
    pub fn poll_outgoing(
        &mut self,
        limits: &SessionLimits,
        budget: usize,
        now_ms: u64,
        out: &mut Vec<Outgoing>,
    ) {
        self.poll_outgoing_where(limits, budget, now_ms, out, |_| true, &mut Vec::new());
    }

    /// [`SessionState::poll_outgoing`], sending only the messages `allowed` accepts now
    /// (and that have not expired): the others leave the queue, and their sequence numbers
    /// are appended to `withheld`.
    pub fn poll_outgoing_where(
        &mut self,
        limits: &SessionLimits,
        budget: usize,
        now_ms: u64,
        out: &mut Vec<Outgoing>,
        mut allowed: impl FnMut(&Message) -> bool,
        withheld: &mut Vec<u64>,
    ) {
        let mut taken = 0;
        let window = self.window(limits);
        // Nothing overtakes a spilled message: its body must be read back first.
        while let Some(front) = self.pending.front().filter(|_| self.spilled.is_empty()) {
            if front.message.expired(now_ms) || !allowed(&front.message) {
                if let Some(dropped) = self.pending.pop_front() {
                    self.pending_bytes -= dropped.message.size();
                    withheld.push(dropped.seq);
                }
                continue;
            }
            if taken > 0 && taken + front.message.size() > budget {
                break;
            }
            if front.qos != QoS::AtMostOnce && self.inflight.len() >= window {
                break;
            }
            let Some(delivery) = self.pending.pop_front() else {
                break;
            };
            let size = delivery.message.size();
            taken += size;
            self.pending_bytes -= size;
            if delivery.qos == QoS::AtMostOnce {
                out.push(Outgoing::Publish {
                    publish: to_publish(&delivery, 0, false, now_ms),
                    seq: delivery.seq,
                });
                continue;
            }
            let pkid = self.allocate_pkid();
            out.push(Outgoing::Publish {
                publish: to_publish(&delivery, pkid, false, now_ms),
                seq: delivery.seq,
            });
            let state = if delivery.qos == QoS::AtLeastOnce {
                InflightState::AwaitingPubAck
            } else {
                InflightState::AwaitingPubRec
            };
            self.inflight.push_back(Inflight {
                pkid,
                delivery,
                state,
            });
        }
        if self.pending.is_empty() && self.pending.capacity() > SHRINK_ABOVE {
            // A burst is over: give its memory back.
            self.pending.shrink_to(0);
        }
    }

    /// Whether queued messages wait that the in-flight window lets out now.
    pub fn has_sendable(&self, limits: &SessionLimits) -> bool {
        self.spilled.is_empty()
            && self.pending.front().is_some_and(|front| {
                front.qos == QoS::AtMostOnce || self.inflight.len() < self.window(limits)
            })
    }

    /// Everything in flight again, in the order first sent, for a client that reconnected:
    /// PUBLISH with DUP set, or PUBREL where that is owed.
    pub fn resend(&mut self, now_ms: u64, out: &mut Vec<Outgoing>) {
        self.resend_where(now_ms, out, |_| true, &mut Vec::new());
    }

    /// [`SessionState::resend`], sending again only the messages `allowed` accepts now: the
    /// others leave the session (a PUBREL still owed is sent whatever the message), and
    /// their sequence numbers are appended to `withheld`.
    pub fn resend_where(
        &mut self,
        now_ms: u64,
        out: &mut Vec<Outgoing>,
        mut allowed: impl FnMut(&Message) -> bool,
        withheld: &mut Vec<u64>,
    ) {
        self.inflight.retain(|inflight| {
            let keep = inflight.state == InflightState::AwaitingPubComp
                || allowed(&inflight.delivery.message);
            if !keep {
                withheld.push(inflight.delivery.seq);
            }
            keep
        });
        for inflight in &self.inflight {
            out.push(match inflight.state {
                InflightState::AwaitingPubComp => Outgoing::PubRel {
                    pkid: inflight.pkid,
                },
                _ => Outgoing::Publish {
                    publish: to_publish(&inflight.delivery, inflight.pkid, true, now_ms),
                    seq: inflight.delivery.seq,
                },
            });
        }
    }

    pub fn puback(&mut self, pkid: u16) -> Acked {
        self.complete(pkid, InflightState::AwaitingPubAck)
    }

    /// PUBREC for a QoS 2 message: the caller sends PUBREL unless this is `WrongKind`.
    /// `refused` (an MQTT 5 failure code) ends the exchange at once: no PUBREL follows.
    pub fn pubrec(&mut self, pkid: u16, refused: bool) -> Acked {
        if refused {
            return self.complete(pkid, InflightState::AwaitingPubRec);
        }
        let Some(inflight) = self
            .inflight
            .iter_mut()
            .find(|inflight| inflight.pkid == pkid)
        else {
            return Acked::Unknown;
        };
        match inflight.state {
            InflightState::AwaitingPubAck => Acked::WrongKind,
            InflightState::AwaitingPubRec => {
                inflight.state = InflightState::AwaitingPubComp;
                Acked::Released {
                    seq: inflight.delivery.seq,
                }
            }
            // A repeated PUBREC: PUBREL is owed again, nothing changes.
            InflightState::AwaitingPubComp => Acked::Unknown,
        }
    }

    pub fn pubcomp(&mut self, pkid: u16) -> Acked {
        self.complete(pkid, InflightState::AwaitingPubComp)
    }

    fn complete(&mut self, pkid: u16, expected: InflightState) -> Acked {
        let Some(index) = self
            .inflight
            .iter()
            .position(|inflight| inflight.pkid == pkid)
        else {
            return Acked::Unknown;
        };
        if self.inflight[index].state != expected {
            return Acked::WrongKind;
        }
        match self.inflight.remove(index) {
            Some(inflight) => Acked::Completed {
                seq: inflight.delivery.seq,
            },
            None => Acked::Unknown,
        }
    }

    /// A QoS 2 PUBLISH from the client: true if it is new and must be routed, false if it
    /// repeats one whose PUBREL has not come yet (answered with PUBREC, not routed again).
    pub fn incoming_qos2(&mut self, pkid: u16) -> bool {
        self.incoming_qos2.insert(pkid)
    }

    /// Whether a QoS 2 message with this identifier awaits its PUBREL.
    pub fn awaits_pubrel(&self, pkid: u16) -> bool {
        self.incoming_qos2.contains(&pkid)
    }

    /// QoS 2 messages received and not yet released.
    pub fn incoming_qos2_len(&self) -> usize {
        self.incoming_qos2.len()
    }

    /// PUBREL from the client: true if it released a message we held.
    pub fn incoming_pubrel(&mut self, pkid: u16) -> bool {
        self.incoming_qos2.remove(&pkid)
    }

    /// Lowest packet identifier after the last one handed out that is not in flight.
    fn allocate_pkid(&mut self) -> u16 {
        loop {
            self.last_pkid = self.last_pkid.checked_add(1).unwrap_or(1);
            let candidate = self.last_pkid;
            if !self
                .inflight
                .iter()
                .any(|inflight| inflight.pkid == candidate)
            {
                return candidate;
            }
        }
    }

    pub fn subscriptions(&self) -> &BTreeMap<ByteString, Subscription> {
        &self.subscriptions
    }

    /// Records a subscription; true if it replaced one to the same filter.
    pub fn add_subscription(
        &mut self,
        filter: ByteString,
        subscription: impl Into<Subscription>,
    ) -> bool {
        self.subscriptions
            .insert(filter, subscription.into())
            .is_some()
    }

    pub fn remove_subscription(&mut self, filter: &str) -> bool {
        self.subscriptions.remove(filter).is_some()
    }

    /// Messages waiting to be sent, spilled ones included.
    pub fn queued_len(&self) -> usize {
        self.spilled.len() + self.pending.len()
    }

    pub fn queued_bytes(&self) -> usize {
        self.pending_bytes
    }

    pub fn inflight(&self) -> impl Iterator<Item = &Inflight> {
        self.inflight.iter()
    }

    /// The queued messages held in memory (not the spilled ones).
    pub fn queued(&self) -> impl Iterator<Item = &Delivery> {
        self.pending.iter()
    }

    /// From now on while the client is away, queued messages live in the persistence
    /// database only: the ones in memory now are let go too (the caller stored every one
    /// of them, as it does for each message of a persistent session).
    pub fn spill(&mut self) {
        self.spilling = true;
        for delivery in self.pending.drain(..) {
            self.spilled.push_back(Spilled {
                seq: delivery.seq,
                size: delivery.message.size(),
            });
        }
        self.pending.shrink_to(0);
    }

    /// The sequence number up to which the queue must be read back from the database
    /// before anything queued can be sent; `None` when nothing is spilled.
    pub fn spilled_through(&self) -> Option<u64> {
        self.spilled.back().map(|spilled| spilled.seq)
    }

    /// Puts the messages read back from the database, up to `through`, in the place of the
    /// spilled ones (`read` in sequence order; rows no longer spilled are ignored). Returns
    /// how many spilled messages were not in `read` (lost with a failed write) and so leave
    /// the queue; `None`, changing nothing, when more was spilled since `through` was
    /// taken (read again).
    pub fn unspill(&mut self, through: u64, read: Vec<Delivery>) -> Option<usize> {
        if self.spilled_through().is_some_and(|last| last > through) {
            return None;
        }
        let mut read = read.into_iter().peekable();
        let mut restored = VecDeque::with_capacity(self.spilled.len() + self.pending.len());
        let mut missing = 0;
        for spilled in self.spilled.drain(..) {
            while read
                .next_if(|delivery| delivery.seq < spilled.seq)
                .is_some()
            {}
            match read.next_if(|delivery| delivery.seq == spilled.seq) {
                Some(delivery) => {
                    self.pending_bytes =
                        self.pending_bytes - spilled.size + delivery.message.size();
                    restored.push_back(delivery);
                }
                None => {
                    self.pending_bytes -= spilled.size;
                    missing += 1;
                }
            }
        }
        restored.append(&mut self.pending);
        self.pending = restored;
        self.spilling = false;
        Some(missing)
    }

    /// Messages dropped because the queue was full, since the session began.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Whether the most recent enqueue was dropped.
    pub fn is_dropping(&self) -> bool {
        self.dropping
    }

    /// Restores a message that was in flight when the broker stopped.
    pub fn restore_inflight(&mut self, inflight: Inflight) {
        self.next_seq = self.next_seq.max(inflight.delivery.seq + 1);
        self.last_pkid = self.last_pkid.max(inflight.pkid);
        self.inflight.push_back(inflight);
    }

    /// Restores a message that was queued when the broker stopped and stays in the
    /// database until its client comes back (see [`SessionState::spill`]).
    pub fn restore_spilled(&mut self, seq: u64, size: usize) {
        self.next_seq = self.next_seq.max(seq + 1);
        self.pending_bytes += size;
        self.spilling = true;
        self.spilled.push_back(Spilled { seq, size });
    }

    pub fn restore_incoming_qos2(&mut self, pkid: u16) {
        self.incoming_qos2.insert(pkid);
    }
}

/// The PUBLISH of a delivery at `now_ms`: the message's properties, the time it has left
/// and the identifiers of the subscriptions it matched (all dropped for a 3.1.1 client by
/// the encoder).
fn to_publish(delivery: &Delivery, pkid: u16, dup: bool, now_ms: u64) -> Publish {
    let message = &delivery.message;
    let mut properties = message.properties.clone();
    if let Some(left) = message.expiry_left(now_ms) {
        properties.push(Property::MessageExpiryInterval(left));
    }
    for &identifier in &delivery.identifiers {
        properties.push(Property::SubscriptionIdentifier(identifier));
    }
    Publish {
        dup,
        qos: delivery.qos,
        retain: delivery.retain,
        topic: message.topic.clone(),
        pkid,
        payload: message.payload.clone(),
        properties,
    }
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
