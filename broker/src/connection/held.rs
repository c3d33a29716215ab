//! QoS 1 and 2 publishes whose acknowledgement waits: for room in a connected subscriber's
//! full queue (the broker holds the publisher back rather than drop what it acknowledged),
//! or behind an earlier publish that does, since acknowledgements go out in order.
//!
//! The connection keeps reading while publishes are held, so that the client's PUBACKs
//! and PINGREQs still come in (a client subscribed to its own topics drains the very queue
//! it waits for). Only once the held publishes reach the client's limit (our Receive
//! Maximum, told to MQTT 5 clients; the same bound for 3.1.1) or `max_queued_bytes` does it
//! stop reading.

use std::collections::VecDeque;
use std::sync::Arc;

use super::publish::success;
use super::{Connection, End};
use crate::message::Message;
use crate::persistence::{NotDurable, Op};
use crate::router::Blocked;
use fieldbridge_mqtt::codec::{Publish, QoS, ReasonCode};

/// One QoS 1 or 2 publish on its way to its acknowledgement.
pub(super) struct Held {
    publish: Publish,
    /// `None` when the ACL refused it (acknowledged all the same before MQTT 5).
    message: Option<Arc<Message>>,
    /// Answered with this failure instead of being routed (MQTT 5).
    refusal: Option<(ReasonCode, &'static str)>,
    routed: bool,
    delivered: usize,
    /// Deliveries waiting for room.
    blocked: Vec<Blocked>,
}

impl Held {
    pub fn new(publish: Publish, message: Option<Arc<Message>>) -> Self {
        Self {
            publish,
            message,
            refusal: None,
            routed: false,
            delivered: 0,
            blocked: Vec::new(),
        }
    }

    pub fn refused(publish: Publish, reason: ReasonCode, what: &'static str) -> Self {
        Self {
            refusal: Some((reason, what)),
            ..Self::new(publish, None)
        }
    }

    fn bytes(&self) -> usize {
        self.publish.topic.len() + self.publish.payload.len()
    }
}

/// The held publishes of one connection, oldest first.
#[derive(Default)]
pub(super) struct HeldPublishes {
    /// Allocated by the first held publish: most connections never hold one.
    queue: Option<Box<HeldQueue>>,
}

#[derive(Default)]
struct HeldQueue {
    held: VecDeque<Held>,
    bytes: usize,
}

impl HeldPublishes {
    pub fn is_empty(&self) -> bool {
        self.queue
            .as_ref()
            .is_none_or(|queue| queue.held.is_empty())
    }

    /// Whether a QoS 2 publish with this identifier waits here.
    pub fn contains(&self, pkid: u16) -> bool {
        self.queue.as_ref().is_some_and(|queue| {
            queue
                .held
                .iter()
                .any(|held| held.publish.qos == QoS::ExactlyOnce && held.publish.pkid == pkid)
        })
    }

    /// Whether no more publishes may be read: `max_count` held, or `max_bytes`.
    pub fn is_full(&self, max_count: usize, max_bytes: usize) -> bool {
        self.queue
            .as_ref()
            .is_some_and(|queue| queue.held.len() >= max_count || queue.bytes >= max_bytes)
    }

    fn push_back(&mut self, held: Held) {
        let queue = self.queue.get_or_insert_with(Box::default);
        queue.bytes += held.bytes();
        queue.held.push_back(held);
    }

    fn push_front(&mut self, held: Held) {
        let queue = self.queue.get_or_insert_with(Box::default);
        queue.bytes += held.bytes();
        queue.held.push_front(held);
    }

    fn pop_front(&mut self) -> Option<Held> {
        let queue = self.queue.as_mut()?;
        let held = queue.held.pop_front()?;
        queue.bytes -= held.bytes();
        if queue.held.is_empty() && queue.held.capacity() > 64 {
            self.queue = None;
        }
        Some(held)
    }
}

impl Connection {
    /// Queues a QoS 1 or 2 publish behind those already held, and moves the queue on.
    pub(super) async fn hold(&mut self, held: Held) -> Result<(), End> {
        self.held.push_back(held);
        self.advance_held().await
    }

    /// Whether reading more packets must wait until held publishes complete.
    pub(super) fn held_full(&self) -> bool {
        let limits = &self.ctx.limits;
        self.held
            .is_full(usize::from(limits.receive_maximum), limits.max_queued_bytes)
    }

    /// Routes, retries and acknowledges held publishes in order, as far as the queues
    /// they wait for have room.
    pub(super) async fn advance_held(&mut self) -> Result<(), End> {
        while let Some(mut held) = self.held.pop_front() {
            if let Some((reason, what)) = held.refusal {
                self.answer(&held.publish, reason, what);
                continue;
            }
            let moved = if held.routed {
                self.retry_held(&mut held).await
            } else {
                self.route_held(&mut held).await
            };
            if let Err(error) = moved {
                self.fail_held(&held, error)?;
                continue;
            }
            if !held.blocked.is_empty() {
                self.held.push_front(held);
                break;
            }
            let reason = success(held.message.is_some(), held.delivered);
            self.answer(&held.publish, reason, "");
        }
        Ok(())
    }

    async fn route_held(&mut self, held: &mut Held) -> Result<(), NotDurable> {
        held.routed = true;
        let routed = if held.publish.qos == QoS::ExactlyOnce {
            self.route_qos2(held.publish.pkid, held.message.clone())
                .await?
        } else {
            let Some(message) = held.message.clone() else {
                return Ok(());
            };
            self.ctx
                .router
                .publish(
                    message,
                    self.matches.get_or_insert_with(Box::default),
                    false,
                    Some(&self.signal),
                )
                .await?
        };
        held.delivered = routed.delivered;
        held.blocked = routed.blocked;
        Ok(())
    }

    async fn retry_held(&mut self, held: &mut Held) -> Result<(), NotDurable> {
        let Some(message) = &held.message else {
            held.blocked.clear();
            return Ok(());
        };
        self.ctx
            .router
            .retry(message, &mut held.blocked, &self.signal)
            .await
    }

    /// A held publish that could not be stored: an MQTT 5 client is told (and may send it
    /// again), a 3.1.1 client is disconnected.
    fn fail_held(&mut self, held: &Held, error: NotDurable) -> Result<(), End> {
        let pkid = held.publish.pkid;
        if held.publish.qos == QoS::ExactlyOnce {
            self.session.inner.lock().state.incoming_pubrel(pkid);
            // Its record may be stored while the message is not: after a restart the
            // copy sent again would pass for a duplicate.
            if let Some(store) = self.durable_store() {
                store.try_send(Op::IncomingReleased {
                    client_id: self.session.client_id.clone(),
                    pkid,
                });
            }
        }
        if !self.peer.version.is_v5() {
            return Err(error.into());
        }
        self.answer(
            &held.publish,
            ReasonCode::UnspecifiedError,
            "the message could not be stored",
        );
        Ok(())
    }
}
