//! Publishes from the broker: the profile says what they call for; commands go to the
//! command service over a bounded channel.

use tokio::sync::mpsc;

use super::link::InboundPublish;
use super::profile::{Message, Profile};
use super::Inbound;

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
    let reaction = profile.inbound(&publish.topic, publish.payload);
    for (device_id, kind, payload) in reaction.commands {
        let message = Inbound {
            device_id,
            kind,
            payload,
            dup: publish.dup,
            pkid: publish.pkid,
        };
        if sender.try_send(message).is_err() {
            tracing::warn!(device = %profile.name(), "inbound message dropped: its queue is full");
        }
    }
    reaction.publish
}
