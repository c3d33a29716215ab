//! An application message as the broker routes it.

use bytes::Bytes;
use bytestring::ByteString;

use fieldbridge_mqtt::codec::{Publish, QoS};

/// A published message, shared (behind an `Arc`) by every session it is delivered to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub topic: ByteString,
    pub payload: Bytes,
    /// The QoS it was published with; each delivery uses at most this.
    pub qos: QoS,
    /// Whether it was published with the RETAIN flag.
    pub retain: bool,
}

impl Message {
    pub fn new(
        topic: impl Into<ByteString>,
        payload: impl Into<Bytes>,
        qos: QoS,
        retain: bool,
    ) -> Self {
        Self {
            topic: topic.into(),
            payload: payload.into(),
            qos,
            retain,
        }
    }

    /// The message of a received PUBLISH; shares the packet's buffer.
    pub fn from_publish(publish: &Publish) -> Self {
        Self {
            topic: publish.topic.clone(),
            payload: publish.payload.clone(),
            qos: publish.qos,
            retain: publish.retain,
        }
    }

    /// A copy in buffers of its own. A decoded message is a slice of the read buffer it
    /// arrived in; one that is kept for long (retained, queued for an absent client) must
    /// not keep that whole buffer alive.
    pub fn detached(&self) -> Self {
        Self {
            topic: ByteString::from(&*self.topic),
            payload: Bytes::copy_from_slice(&self.payload),
            qos: self.qos,
            retain: self.retain,
        }
    }

    /// Bytes counted against a session's `max_queued_bytes`.
    pub fn size(&self) -> usize {
        self.topic.len() + self.payload.len()
    }
}
