//! An application message as the broker routes it.

use bytes::Bytes;
use bytestring::ByteString;

use fieldbridge_mqtt::codec::{Properties, Property, Publish, QoS};

/// A published message, shared (behind an `Arc`) by every session it is delivered to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub topic: ByteString,
    pub payload: Bytes,
    /// The QoS it was published with; each delivery uses at most this.
    pub qos: QoS,
    /// Whether it was published with the RETAIN flag.
    pub retain: bool,
    /// MQTT 5 properties passed on to subscribers unchanged (payload format, content type,
    /// response topic, correlation data, user properties); empty for 3.1.1 publishers.
    pub properties: Properties,
    /// When it stops being delivered ([`unix_now_ms`]), from its Message Expiry Interval.
    pub expires_at_ms: Option<u64>,
    /// The session that published it (0: the broker itself), for No Local subscriptions.
    pub publisher: u64,
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
            properties: Properties::new(),
            expires_at_ms: None,
            publisher: 0,
        }
    }

    /// The message of a received PUBLISH (aliases already resolved), received at `now_ms`;
    /// shares the packet's buffer.
    pub fn from_publish(publish: &Publish, now_ms: u64) -> Self {
        let mut message = Self::new(
            publish.topic.clone(),
            publish.payload.clone(),
            publish.qos,
            publish.retain,
        );
        message.set_properties(&publish.properties, now_ms);
        message
    }

    /// Takes the properties a subscriber is to see from a PUBLISH or a will; the expiry
    /// interval becomes a deadline (forwarded as the time left).
    pub fn set_properties(&mut self, properties: &Properties, now_ms: u64) {
        self.properties = properties
            .iter()
            .filter(|property| forwarded(property))
            .cloned()
            .collect();
        self.expires_at_ms = properties
            .message_expiry_interval()
            .map(|&seconds| now_ms.saturating_add(u64::from(seconds) * 1000));
    }

    /// Whether it expired by `now_ms`.
    pub fn expired(&self, now_ms: u64) -> bool {
        self.expires_at_ms
            .is_some_and(|deadline| deadline <= now_ms)
    }

    /// The Message Expiry Interval to forward at `now_ms`: the whole seconds left, at
    /// least 1 (an interval of 0 would mean something else).
    pub fn expiry_left(&self, now_ms: u64) -> Option<u32> {
        self.expires_at_ms.map(|deadline| {
            let left = deadline.saturating_sub(now_ms).div_ceil(1000).max(1);
            u32::try_from(left).unwrap_or(u32::MAX)
        })
    }

    /// A copy in buffers of its own. A decoded message is a slice of the read buffer it
    /// arrived in; one that is kept for long (retained, queued for an absent client) must
    /// not keep that whole buffer alive.
    pub fn detached(&self) -> Self {
        Self {
            topic: ByteString::from(&*self.topic),
            payload: Bytes::copy_from_slice(&self.payload),
            properties: detached_properties(&self.properties),
            ..self.clone()
        }
    }

    /// Bytes counted against a session's `max_queued_bytes`.
    pub fn size(&self) -> usize {
        self.topic.len() + self.payload.len()
    }
}

/// Milliseconds since the Unix epoch: the clock of message expiry, which outlives a
/// restart.
pub fn unix_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
        })
}

/// Properties in buffers of their own (see [`Message::detached`]).
pub fn detached_properties(properties: &Properties) -> Properties {
    properties.iter().map(detach).collect()
}

/// The properties a broker passes from publisher to subscriber (MQTT 5 section 3.3.2.3).
/// The expiry interval is not among them: it is rewritten per delivery.
fn forwarded(property: &Property) -> bool {
    matches!(
        property,
        Property::PayloadFormatIndicator(_)
            | Property::ContentType(_)
            | Property::ResponseTopic(_)
            | Property::CorrelationData(_)
            | Property::UserProperty(_)
    )
}

/// A property whose strings and data live in buffers of their own.
fn detach(property: &Property) -> Property {
    let copy = |text: &ByteString| ByteString::from(&**text);
    match property {
        Property::ContentType(text) => Property::ContentType(copy(text)),
        Property::ResponseTopic(text) => Property::ResponseTopic(copy(text)),
        Property::CorrelationData(data) => Property::CorrelationData(Bytes::copy_from_slice(data)),
        Property::UserProperty((name, value)) => Property::UserProperty((copy(name), copy(value))),
        other => other.clone(),
    }
}
