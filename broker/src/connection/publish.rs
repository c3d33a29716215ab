//! PUBLISH from the client: checks, routing, and the QoS 1 and 2 answers.

use std::sync::Arc;

use super::{Connection, End};
use crate::context::BrokerContext;
use crate::message::Message;
use crate::persistence::{NotDurable, Op, StoreHandle};
use crate::platform::Inbound;
use crate::router::MatchBuffer;
use fieldbridge_mqtt::codec::{Packet, PubAck, PubRec, Publish, QoS};
use fieldbridge_mqtt::topic::level_count;

impl Connection {
    pub(super) async fn on_publish(&mut self, publish: Publish) -> Result<(), End> {
        self.counters.messages_received += 1;
        if publish.payload.len() > self.ctx.limits.max_payload {
            return Err(End::Protocol(format!(
                "payload of {} bytes exceeds max_payload",
                publish.payload.len()
            )));
        }
        // Like an oversized payload, a topic deeper than the limit closes the connection:
        // MQTT 3.1.1 has no way to refuse one PUBLISH, and acknowledging a message that is
        // then dropped would tell a QoS 1 or 2 publisher it was delivered. Checked on the
        // topic as the client sent it, before the platform rewrites it.
        let levels = level_count(&publish.topic);
        if levels > self.ctx.limits.max_topic_levels {
            return Err(End::Protocol(format!(
                "topic of {levels} levels exceeds max_topic_levels"
            )));
        }
        let publish = match self.platform.as_deref_mut() {
            None => publish,
            Some(client) => match client.inbound(publish) {
                Inbound::Route(publish) => publish,
                Inbound::Drop => return Ok(()),
                Inbound::Refuse(reason) => return Err(End::Protocol(reason)),
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
        let message = allowed.then(|| Arc::new(Message::from_publish(&publish)));
        match publish.qos {
            QoS::AtMostOnce | QoS::AtLeastOnce => {
                if let Some(message) = message {
                    route(&self.ctx, &mut self.matches, message, false).await?;
                }
                if publish.qos == QoS::AtLeastOnce {
                    self.write_packet(&Packet::PubAck(PubAck::new(publish.pkid)));
                }
            }
            QoS::ExactlyOnce => {
                let fresh = {
                    let mut inner = self.session.inner.lock();
                    if inner.state.incoming_qos2_len() >= self.ctx.limits.max_queued_messages {
                        return Err(End::Protocol(
                            "too many QoS 2 messages awaiting PUBREL".into(),
                        ));
                    }
                    inner.state.incoming_qos2(publish.pkid)
                };
                if fresh {
                    if let Err(error) = self.route_qos2(publish.pkid, message).await {
                        self.session
                            .inner
                            .lock()
                            .state
                            .incoming_pubrel(publish.pkid);
                        // Its record may be stored while the message is not: after a
                        // restart the copy sent again would pass for a duplicate.
                        if let Some(store) = self.durable_store() {
                            store.try_send(Op::IncomingReleased {
                                client_id: self.session.client_id.clone(),
                                pkid: publish.pkid,
                            });
                        }
                        return Err(error.into());
                    }
                }
                self.write_packet(&Packet::PubRec(PubRec::new(publish.pkid)));
            }
        }
        Ok(())
    }

    /// Routes a new QoS 2 message, and for a persistent session records durably that its
    /// packet identifier awaits PUBREL, so that a copy sent again after a restart is not
    /// delivered twice.
    async fn route_qos2(
        &mut self,
        pkid: u16,
        message: Option<Arc<Message>>,
    ) -> Result<(), NotDurable> {
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
                    )
                    .await
            }
            None => match (self.durable_store(), since) {
                (Some(store), Some(since)) => store.barrier_since(since).await,
                _ => Ok(()),
            },
        }
    }
}

/// Hands a message to the router, with the connection's routing scratch space (allocated
/// once the client publishes); `force_barrier` also waits for the client's earlier writes
/// to be durable.
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
        )
        .await
}
