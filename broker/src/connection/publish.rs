//! PUBLISH from the client: checks, routing (QoS 1 and 2 through the held queue, see
//! `held`), and the answers.

use std::sync::Arc;

use super::held::Held;
use super::{Connection, End};
use crate::context::BrokerContext;
use crate::message::Message;
use crate::persistence::{NotDurable, Op, StoreHandle};
use crate::platform::Inbound;
use crate::router::{MatchBuffer, Routed};
use fieldbridge_mqtt::codec::{Packet, PubAck, PubRec, Publish, QoS, ReasonCode};
use fieldbridge_mqtt::topic::level_count;

impl Connection {
    pub(super) async fn on_publish(&mut self, mut publish: Publish) -> Result<(), End> {
        self.counters.messages_received += 1;
        if publish.payload.len() > self.ctx.limits.max_payload {
            return Err(End::protocol(
                ReasonCode::PacketTooLarge,
                format!(
                    "payload of {} bytes exceeds max_payload",
                    publish.payload.len()
                ),
            ));
        }
        self.peer
            .resolve_alias(&mut publish)
            .map_err(|error| End::protocol(error.reason, error.what))?;
        if publish.properties.payload_format_indicator() == Some(&1)
            && std::str::from_utf8(&publish.payload).is_err()
        {
            // MQTT 5 lets the receiver refuse just this message where it can say so.
            let what = "payload format indicator says UTF-8, the payload is not";
            if publish.qos == QoS::AtMostOnce {
                return Err(End::protocol(ReasonCode::PayloadFormatInvalid, what));
            }
            return self
                .hold(Held::refused(
                    publish,
                    ReasonCode::PayloadFormatInvalid,
                    what,
                ))
                .await;
        }
        // Like an oversized payload, a topic deeper than the limit closes the connection:
        // MQTT 3.1.1 has no way to refuse one PUBLISH, and acknowledging a message that is
        // then dropped would tell a QoS 1 or 2 publisher it was delivered. Checked on the
        // topic as the client sent it, before the platform rewrites it.
        let levels = level_count(&publish.topic);
        if levels > self.ctx.limits.max_topic_levels {
            return Err(End::protocol(
                ReasonCode::TopicNameInvalid,
                format!("topic of {levels} levels exceeds max_topic_levels"),
            ));
        }
        let publish = match self.platform.as_deref_mut() {
            None => publish,
            Some(client) => match client.inbound(publish) {
                Inbound::Route(publish) => publish,
                Inbound::Drop => return Ok(()),
                Inbound::Refuse(reason) => {
                    return Err(End::protocol(ReasonCode::NotAuthorized, reason))
                }
            },
        };
        let allowed = if publish.topic.starts_with("$SYS") {
            false
        } else {
            self.acl_allows(|acl, who| acl.can_publish(who, &publish.topic))
        };
        if !allowed {
            tracing::info!(client_id = %self.session.client_id, topic = %publish.topic, "publish refused by the ACL: dropped");
        }
        let message = allowed.then(|| Arc::new(self.message_of(&publish)));
        match publish.qos {
            QoS::AtMostOnce => {
                if let Some(message) = message {
                    route(&self.ctx, &mut self.matches, message, false).await?;
                }
                return Ok(());
            }
            QoS::AtLeastOnce => {}
            QoS::ExactlyOnce if !allowed && self.peer.version.is_v5() => {
                // A refusing PUBREC ends the exchange: nothing awaits a PUBREL.
                let refusal =
                    Held::refused(publish, ReasonCode::NotAuthorized, "not allowed by the ACL");
                return self.hold(refusal).await;
            }
            QoS::ExactlyOnce => {
                let fresh = {
                    let mut inner = self.session.inner.lock();
                    // A copy sent again does not count twice.
                    if !inner.state.awaits_pubrel(publish.pkid)
                        && inner.state.incoming_qos2_len()
                            >= usize::from(self.ctx.limits.receive_maximum)
                    {
                        return Err(End::protocol(
                            ReasonCode::ReceiveMaximumExceeded,
                            "more QoS 2 messages awaiting PUBREL than the receive maximum",
                        ));
                    }
                    inner.state.incoming_qos2(publish.pkid)
                };
                if !fresh {
                    // A copy sent again: answered now, unless the first one still waits
                    // (its PUBREC answers both).
                    if !self.held.contains(publish.pkid) {
                        self.answer(&publish, ReasonCode::Success, "");
                    }
                    return Ok(());
                }
            }
        }
        self.hold(Held::new(publish, message)).await
    }

    /// The message a PUBLISH becomes, with the properties MQTT 5 forwards.
    fn message_of(&self, publish: &Publish) -> Message {
        let mut message = Message::from_publish(publish, crate::message::unix_now_ms());
        message.publisher = self.session.id;
        message
    }

    /// PUBACK or PUBREC for a QoS 1 or 2 PUBLISH, with the reason code for a 5 client
    /// (a 3.1.1 client's acknowledgement carries none).
    pub(super) fn answer(&mut self, publish: &Publish, reason: ReasonCode, what: &str) {
        let packet = if publish.qos == QoS::ExactlyOnce {
            let mut rec = PubRec::with_reason(publish.pkid, reason);
            if reason.is_failure() {
                self.peer.explain(&mut rec.properties, what);
            }
            Packet::PubRec(rec)
        } else {
            let mut ack = PubAck::with_reason(publish.pkid, reason);
            if reason.is_failure() {
                self.peer.explain(&mut ack.properties, what);
            }
            Packet::PubAck(ack)
        };
        self.write_packet(&packet);
    }

    /// Routes a new QoS 2 message, and for a persistent session records durably that its
    /// packet identifier awaits PUBREL, so that a copy sent again after a restart is not
    /// delivered twice.
    pub(super) async fn route_qos2(
        &mut self,
        pkid: u16,
        message: Option<Arc<Message>>,
    ) -> Result<Routed, NotDurable> {
        let since = self.durable_store().map(StoreHandle::mark);
        if let Some(store) = self.durable_store() {
            store
                .send(Op::IncomingQos2 {
                    client_id: self.session.client_id.clone(),
                    pkid,
                })
                .await?;
        }
        match message {
            Some(message) => {
                self.ctx
                    .router
                    .publish_since(
                        message,
                        self.matches.get_or_insert_with(Box::default),
                        since,
                        Some(&self.signal),
                    )
                    .await
            }
            None => match (self.durable_store(), since) {
                (Some(store), Some(since)) => {
                    store.barrier_since(since).await.map(|()| Routed::default())
                }
                _ => Ok(Routed::default()),
            },
        }
    }
}

/// The success code of an acknowledgement: MQTT 5 tells a publisher that no one
/// subscribed, and that the ACL refused its message.
pub(super) fn success(allowed: bool, delivered: usize) -> ReasonCode {
    match (allowed, delivered) {
        (false, _) => ReasonCode::NotAuthorized,
        (true, 0) => ReasonCode::NoMatchingSubscribers,
        (true, _) => ReasonCode::Success,
    }
}

/// Hands a message that nothing waits on (QoS 0, a will) to the router, with the
/// connection's routing scratch space (allocated once the client publishes);
/// `force_barrier` also waits for the client's earlier writes to be durable. A full queue
/// drops it.
pub(super) async fn route(
    ctx: &BrokerContext,
    matches: &mut Option<Box<MatchBuffer>>,
    message: Arc<Message>,
    force_barrier: bool,
) -> Result<(), NotDurable> {
    ctx.router
        .publish(
            message,
            matches.get_or_insert_with(Box::default),
            force_barrier,
            None,
        )
        .await
        .map(drop)
}
