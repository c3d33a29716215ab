//! Publishes from the broker: the profile says what they call for; commands go to the
//! command service over a bounded channel.

use tokio::sync::mpsc;

use super::link::InboundPublish;
use super::profile::{Message, Profile};
use super::Inbound;
use crate::event::Reply;

/// Routes `publish` of a session; drops (and logs) what has no meaning or no room.
/// Returns what the profile wants published in answer.
pub(super) fn route(
    sender: Option<&mpsc::Sender<Inbound>>,
    profile: &mut dyn Profile,
    publish: InboundPublish,
) -> Vec<Message> {
    let Some(sender) = sender else {
        return Vec::new();
    };
    let reply = publish.response_topic.map(|topic| Reply {
        topic,
        correlation_data: publish.correlation_data.map(|data| data.to_vec()),
    });
    let reaction = profile.inbound(&publish.topic, publish.payload);
    for (device_id, kind, payload) in reaction.commands {
        let message = Inbound {
            device_id,
            kind,
            payload,
            dup: publish.dup,
            pkid: publish.pkid,
            reply: reply.clone(),
        };
        if sender.try_send(message).is_err() {
            tracing::warn!(device = %profile.name(), "inbound message dropped: its queue is full");
        }
    }
    reaction.publish
}
