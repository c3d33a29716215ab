//! One MQTT client, whichever version it speaks. The session and the driver deal in
//! the version-free requests and events of this file; translating them to and from
//! rumqttc's 3.1.1 and 5 clients happens here and nowhere else.

use bytes::Bytes;
use rumqttc::v5;
use rumqttc::v5::mqttbytes::v5::{
    ConnAck as ConnAck5, Filter, LastWill as LastWill5, PubAckReason, Publish as Publish5,
    PublishProperties, Subscribe as Subscribe5,
};
use rumqttc::{Disconnect, LastWill, QoS, Request, Subscribe};
use tokio::sync::mpsc;

use super::batching::v311::V311;
use super::batching::v5::V5;
use super::batching::Batching;

/// MQTT 5's Payload Format Indicator for UTF-8 text.
const UTF8_PAYLOAD: u8 = 1;
const JSON_CONTENT_TYPE: &str = "application/json";

/// The MQTT version a session speaks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Protocol {
    #[default]
    V311,
    V5,
}

/// A publish the session hands to the client.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Outbound {
    /// Empty when `alias` stands for it.
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: QoS,
    pub retain: bool,
    /// MQTT 5 properties, ignored by a 3.1.1 client.
    pub properties: OutboundProperties,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct OutboundProperties {
    /// Content Type `application/json` and Payload Format Indicator 1.
    pub json: bool,
    pub message_expiry_secs: Option<u32>,
    pub topic_alias: Option<u16>,
    pub correlation_data: Option<Bytes>,
}

impl OutboundProperties {
    fn to_v5(&self) -> Option<PublishProperties> {
        if *self == OutboundProperties::default() {
            return None;
        }
        Some(PublishProperties {
            payload_format_indicator: self.json.then_some(UTF8_PAYLOAD),
            content_type: self.json.then(|| JSON_CONTENT_TYPE.to_owned()),
            message_expiry_interval: self.message_expiry_secs,
            topic_alias: self.topic_alias,
            correlation_data: self.correlation_data.clone(),
            ..PublishProperties::default()
        })
    }
}

/// What the broker said in its CONNACK about what it accepts (MQTT 5; nothing for
/// 3.1.1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct ServerLimits {
    pub topic_alias_maximum: u16,
    pub receive_maximum: Option<u16>,
    pub maximum_packet_size: Option<u32>,
}

/// The broker's answer to a QoS 1 publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ack {
    Accepted,
    /// An MQTT 5 failure reason code; `permanent` when sending it again cannot help.
    Refused {
        code: u8,
        permanent: bool,
    },
}

impl Ack {
    fn of(reason: PubAckReason) -> Ack {
        let (code, permanent) = match reason {
            PubAckReason::Success | PubAckReason::NoMatchingSubscribers => return Ack::Accepted,
            PubAckReason::NotAuthorized => (0x87, true),
            PubAckReason::TopicNameInvalid => (0x90, true),
            PubAckReason::PayloadFormatInvalid => (0x99, true),
            PubAckReason::UnspecifiedError => (0x80, false),
            PubAckReason::ImplementationSpecificError => (0x83, false),
            PubAckReason::PacketIdentifierInUse => (0x91, false),
            PubAckReason::QuotaExceeded => (0x97, false),
        };
        Ack::Refused { code, permanent }
    }
}

/// The name of a PUBACK reason code, for logs and the dead-letter table.
pub(super) fn reason_name(code: u8) -> &'static str {
    match code {
        0x80 => "unspecified error",
        0x83 => "implementation specific error",
        0x87 => "not authorized",
        0x90 => "topic name invalid",
        0x91 => "packet identifier in use",
        0x95 => "packet too large",
        0x97 => "quota exceeded",
        0x99 => "payload format invalid",
        _ => "refused",
    }
}

/// A publish the broker sent to the session.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct InboundPublish {
    pub topic: String,
    pub payload: Bytes,
    pub dup: bool,
    pub pkid: u16,
    /// MQTT 5 request/response: where the answer goes, and what it carries back.
    pub response_topic: Option<String>,
    pub correlation_data: Option<Bytes>,
}

/// Why a connection ended or could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub(super) struct LinkError {
    message: String,
    cause: Cause,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cause {
    /// The broker answered the CONNECT with a refusal.
    Refused,
    /// The broker sent a packet of this size, over the session's inbound limit.
    Oversized(usize),
    Other,
}

impl LinkError {
    /// The broker refused the connection (credentials, authorization): retrying soon
    /// would not change its answer.
    pub(super) fn refused(&self) -> bool {
        self.cause == Cause::Refused
    }

    /// The size of a packet from the broker that was over the inbound limit, if that is
    /// why the connection ended.
    pub(super) fn oversized(&self) -> Option<usize> {
        match self.cause {
            Cause::Oversized(size) => Some(size),
            _ => None,
        }
    }

    fn from_v4(error: &rumqttc::ConnectionError) -> LinkError {
        use rumqttc::{mqttbytes::Error as Decode, ConnectionError as E, StateError};
        let cause = match error {
            E::ConnectionRefused(_) => Cause::Refused,
            E::MqttState(StateError::Deserialization(Decode::PayloadSizeLimitExceeded(size))) => {
                Cause::Oversized(*size)
            }
            _ => Cause::Other,
        };
        LinkError {
            message: error.to_string(),
            cause,
        }
    }

    fn from_v5(error: &v5::ConnectionError) -> LinkError {
        use v5::mqttbytes::Error as Decode;
        use v5::{ConnectionError as E, StateError};
        let cause = match error {
            E::ConnectionRefused(_) | E::MqttState(StateError::ConnFail { .. }) => Cause::Refused,
            E::MqttState(StateError::Deserialization(Decode::PayloadSizeLimitExceeded {
                pkt_size,
                ..
            })) => Cause::Oversized(*pkt_size),
            _ => Cause::Other,
        };
        LinkError {
            message: error.to_string(),
            cause,
        }
    }

    fn client(error: impl std::fmt::Display) -> LinkError {
        LinkError {
            message: format!("the client is gone: {error}"),
            cause: Cause::Other,
        }
    }
}

/// What the event loop reports, in the order it happened.
#[derive(Debug)]
pub(super) enum LinkEvent {
    ConnAck {
        session_present: bool,
        limits: ServerLimits,
    },
    /// A publish was written; packet id 0 for QoS 0.
    Published(u16),
    PubAck(u16, Ack),
    Inbound(InboundPublish),
    Disconnected,
}

/// The requesting half of a client: requests for its [`Batching`] loop.
#[derive(Clone)]
pub(super) enum Client {
    V311(mpsc::Sender<Request>),
    V5(mpsc::Sender<v5::Request>),
}

impl Client {
    pub(super) fn publish(&self, outbound: Outbound) -> Result<(), LinkError> {
        let Outbound {
            topic,
            payload,
            qos,
            retain,
            properties,
        } = outbound;
        // An empty topic goes with an alias.
        if !rumqttc::mqttbytes::valid_topic(&topic) {
            return Err(LinkError::client(format!("invalid topic {topic:?}")));
        }
        match self {
            Client::V311(requests) => {
                let mut publish = rumqttc::Publish::new(topic, qos, payload);
                publish.retain = retain;
                requests
                    .try_send(Request::Publish(publish))
                    .map_err(LinkError::client)
            }
            Client::V5(requests) => {
                let mut publish = Publish5::new(topic, qos_v5(qos), payload, properties.to_v5());
                publish.retain = retain;
                requests
                    .try_send(v5::Request::Publish(publish))
                    .map_err(LinkError::client)
            }
        }
    }

    pub(super) fn subscribe(&self, filter: &str, qos: QoS) -> Result<(), LinkError> {
        if !rumqttc::mqttbytes::valid_filter(filter) {
            return Err(LinkError::client(format!("invalid filter {filter:?}")));
        }
        match self {
            Client::V311(requests) => requests
                .try_send(Request::Subscribe(Subscribe::new(filter, qos)))
                .map_err(LinkError::client),
            Client::V5(requests) => {
                let subscribe = Subscribe5::new(Filter::new(filter, qos_v5(qos)), None);
                requests
                    .try_send(v5::Request::Subscribe(subscribe))
                    .map_err(LinkError::client)
            }
        }
    }

    pub(super) fn disconnect(&self) -> Result<(), LinkError> {
        match self {
            Client::V311(requests) => requests
                .try_send(Request::Disconnect(Disconnect))
                .map_err(LinkError::client),
            Client::V5(requests) => requests
                .try_send(v5::Request::Disconnect)
                .map_err(LinkError::client),
        }
    }
}

/// The polling half of a client. Reaches into rumqttc's state machine where its polling
/// API falls short (see the driver).
pub(super) enum EventLoop {
    V311(Box<Batching<V311>>),
    V5(Box<Batching<V5>>),
}

impl EventLoop {
    /// The next event rumqttc produces; `None` for one the session does not care about.
    pub(super) async fn poll(&mut self) -> Result<Option<LinkEvent>, LinkError> {
        match self {
            EventLoop::V311(batching) => match batching.poll().await {
                Ok(event) => Ok(event_v4(event)),
                Err(error) => Err(LinkError::from_v4(&error)),
            },
            EventLoop::V5(batching) => match batching.poll().await {
                Ok(event) => Ok(event_v5(event)),
                Err(error) => Err(LinkError::from_v5(&error)),
            },
        }
    }

    /// Events rumqttc has already read and would hand out one per poll.
    pub(super) fn buffered(&mut self) -> Vec<LinkEvent> {
        match self {
            EventLoop::V311(batching) => batching
                .connection()
                .0
                .state
                .events
                .drain(..)
                .filter_map(event_v4)
                .collect(),
            EventLoop::V5(batching) => batching
                .connection()
                .state
                .events
                .drain(..)
                .filter_map(event_v5)
                .collect(),
        }
    }

    /// Drops requests queued before the loss (stale) and their buffered events.
    pub(super) fn forget_stale_requests(&mut self) {
        match self {
            EventLoop::V311(batching) => batching.forget_stale_requests(),
            EventLoop::V5(batching) => batching.forget_stale_requests(),
        }
    }

    /// Whether the next connection starts a new session (3.1.1 clean session, 5 clean
    /// start).
    pub(super) fn clean_start(&mut self) -> bool {
        match self {
            EventLoop::V311(batching) => batching.connection().0.mqtt_options.clean_session(),
            EventLoop::V5(batching) => batching.connection().options.clean_start(),
        }
    }

    pub(super) fn set_clean_start(&mut self, clean: bool) {
        match self {
            EventLoop::V311(batching) => {
                batching
                    .connection()
                    .0
                    .mqtt_options
                    .set_clean_session(clean);
            }
            EventLoop::V5(batching) => {
                batching.connection().options.set_clean_start(clean);
            }
        }
    }

    pub(super) fn set_will(&mut self, will: LastWill) {
        match self {
            EventLoop::V311(batching) => {
                batching.connection().0.mqtt_options.set_last_will(will);
            }
            EventLoop::V5(batching) => {
                batching.connection().options.set_last_will(will_v5(will));
            }
        }
    }
}

fn event_v4(event: rumqttc::Event) -> Option<LinkEvent> {
    use rumqttc::{Event, Outgoing, Packet};
    match event {
        Event::Incoming(Packet::ConnAck(ack)) => Some(LinkEvent::ConnAck {
            session_present: ack.session_present,
            limits: ServerLimits::default(),
        }),
        Event::Incoming(Packet::PubAck(ack)) => Some(LinkEvent::PubAck(ack.pkid, Ack::Accepted)),
        Event::Incoming(Packet::Publish(publish)) => Some(LinkEvent::Inbound(InboundPublish {
            topic: publish.topic,
            payload: publish.payload,
            dup: publish.dup,
            pkid: publish.pkid,
            response_topic: None,
            correlation_data: None,
        })),
        Event::Outgoing(Outgoing::Publish(pkid)) => Some(LinkEvent::Published(pkid)),
        Event::Outgoing(Outgoing::Disconnect) => Some(LinkEvent::Disconnected),
        _ => None,
    }
}

fn event_v5(event: v5::Event) -> Option<LinkEvent> {
    use rumqttc::Outgoing;
    use v5::mqttbytes::v5::Packet;
    use v5::Event;
    match event {
        Event::Incoming(Packet::ConnAck(ack)) => Some(connack_v5(&ack)),
        Event::Incoming(Packet::PubAck(ack)) => {
            Some(LinkEvent::PubAck(ack.pkid, Ack::of(ack.reason)))
        }
        Event::Incoming(Packet::Publish(publish)) => Some(LinkEvent::Inbound(inbound_v5(publish))),
        Event::Outgoing(Outgoing::Publish(pkid)) => Some(LinkEvent::Published(pkid)),
        Event::Outgoing(Outgoing::Disconnect) => Some(LinkEvent::Disconnected),
        _ => None,
    }
}

fn connack_v5(ack: &ConnAck5) -> LinkEvent {
    let properties = ack.properties.as_ref();
    LinkEvent::ConnAck {
        session_present: ack.session_present,
        limits: ServerLimits {
            topic_alias_maximum: properties.and_then(|p| p.topic_alias_max).unwrap_or(0),
            receive_maximum: properties.and_then(|p| p.receive_max),
            maximum_packet_size: properties.and_then(|p| p.max_packet_size),
        },
    }
}

fn inbound_v5(publish: Publish5) -> InboundPublish {
    let (response_topic, correlation_data) = match publish.properties {
        Some(properties) => (properties.response_topic, properties.correlation_data),
        None => (None, None),
    };
    InboundPublish {
        topic: String::from_utf8_lossy(&publish.topic).into_owned(),
        payload: publish.payload,
        dup: publish.dup,
        pkid: publish.pkid,
        response_topic,
        correlation_data,
    }
}

fn qos_v5(qos: QoS) -> v5::mqttbytes::QoS {
    match qos {
        QoS::AtMostOnce => v5::mqttbytes::QoS::AtMostOnce,
        QoS::AtLeastOnce => v5::mqttbytes::QoS::AtLeastOnce,
        QoS::ExactlyOnce => v5::mqttbytes::QoS::ExactlyOnce,
    }
}

pub(super) fn will_v5(will: LastWill) -> LastWill5 {
    LastWill5 {
        topic: Bytes::copy_from_slice(will.topic.as_bytes()),
        message: will.message,
        qos: qos_v5(will.qos),
        retain: will.retain,
        properties: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn puback_reasons_sort_into_final_and_passing_refusals() {
        assert_eq!(Ack::of(PubAckReason::Success), Ack::Accepted);
        assert_eq!(Ack::of(PubAckReason::NoMatchingSubscribers), Ack::Accepted);
        for (reason, code, permanent) in [
            (PubAckReason::NotAuthorized, 0x87, true),
            (PubAckReason::TopicNameInvalid, 0x90, true),
            (PubAckReason::PayloadFormatInvalid, 0x99, true),
            (PubAckReason::QuotaExceeded, 0x97, false),
            (PubAckReason::UnspecifiedError, 0x80, false),
            (PubAckReason::ImplementationSpecificError, 0x83, false),
        ] {
            assert_eq!(Ack::of(reason), Ack::Refused { code, permanent });
        }
    }

    #[test]
    fn json_publishes_carry_content_type_and_format_indicator() {
        assert_eq!(OutboundProperties::default().to_v5(), None);
        let properties = OutboundProperties {
            json: true,
            message_expiry_secs: Some(30),
            topic_alias: Some(2),
            correlation_data: None,
        }
        .to_v5()
        .unwrap();
        assert_eq!(properties.payload_format_indicator, Some(1));
        assert_eq!(properties.content_type.as_deref(), Some("application/json"));
        assert_eq!(properties.message_expiry_interval, Some(30));
        assert_eq!(properties.topic_alias, Some(2));
    }
}
