//! Publishes from the broker, classified by the profile and handed to the command
//! service over a bounded channel.

use rumqttc::Publish;
use tokio::sync::mpsc;

use super::profile::DeviceProfile;
use super::Inbound;

/// Routes `publish` of `device_id`'s session; drops (and logs) what has no meaning or
/// no room.
pub(super) fn route(
    sender: Option<&mpsc::Sender<Inbound>>,
    profile: &dyn DeviceProfile,
    device_id: &str,
    publish: Publish,
) {
    let Some(sender) = sender else {
        return;
    };
    let Some(kind) = profile.classify(&publish.topic) else {
        tracing::warn!(device = %device_id, topic = %publish.topic, "publish on an unexpected topic ignored");
        return;
    };
    let message = Inbound {
        device_id: device_id.to_owned(),
        kind,
        payload: publish.payload,
        dup: publish.dup,
        pkid: publish.pkid,
    };
    if sender.try_send(message).is_err() {
        tracing::warn!(device = %device_id, "inbound message dropped: its queue is full");
    }
}
