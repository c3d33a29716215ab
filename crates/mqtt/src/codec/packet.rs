//! The packets of MQTT 3.1, 3.1.1 and 5.0 as plain data: one set of types for every
//! version. MQTT 5's reason codes and properties are fields of the same structs; a 3.1.1
//! connection leaves them at their defaults (success, no properties) and the encoder does
//! not write them.

use bytes::Bytes;
use bytestring::ByteString;

use super::{Error, Properties, ReasonCode};

/// Quality of service of a message or a subscription. Ordered, so the delivery QoS of a
/// message is `publish.qos.min(granted)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum QoS {
    AtMostOnce = 0,
    AtLeastOnce = 1,
    ExactlyOnce = 2,
}

impl TryFrom<u8> for QoS {
    type Error = Error;

    fn try_from(value: u8) -> Result<Self, Error> {
        match value {
            0 => Ok(QoS::AtMostOnce),
            1 => Ok(QoS::AtLeastOnce),
            2 => Ok(QoS::ExactlyOnce),
            other => Err(Error::InvalidQoS(other)),
        }
    }
}

/// The protocol a client speaks, chosen by its CONNECT (protocol name and level).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProtocolVersion {
    /// MQTT 3.1: protocol name "MQIsdp", level 3.
    V31,
    /// MQTT 3.1.1: protocol name "MQTT", level 4.
    V311,
    /// MQTT 5.0: protocol name "MQTT", level 5.
    V5,
}

impl ProtocolVersion {
    /// The protocol name carried in CONNECT.
    pub fn protocol_name(self) -> &'static str {
        match self {
            ProtocolVersion::V31 => "MQIsdp",
            ProtocolVersion::V311 | ProtocolVersion::V5 => "MQTT",
        }
    }

    /// The protocol level carried in CONNECT.
    pub fn level(self) -> u8 {
        match self {
            ProtocolVersion::V31 => 3,
            ProtocolVersion::V311 => 4,
            ProtocolVersion::V5 => 5,
        }
    }

    /// Whether packets carry reason codes and properties.
    pub fn is_v5(self) -> bool {
        self == ProtocolVersion::V5
    }
}

/// An MQTT control packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    // Boxed: CONNECT is by far the largest packet and arrives once per connection, so
    // every other packet moves a third of the bytes.
    Connect(Box<Connect>),
    ConnAck(ConnAck),
    Publish(Publish),
    PubAck(PubAck),
    PubRec(PubRec),
    PubRel(PubRel),
    PubComp(PubComp),
    Subscribe(Subscribe),
    SubAck(SubAck),
    Unsubscribe(Unsubscribe),
    UnsubAck(UnsubAck),
    PingReq,
    PingResp,
    Disconnect(Disconnect),
    /// MQTT 5 only.
    Auth(Auth),
}

impl Packet {
    /// The packet type's name as the specification writes it (for logs and errors).
    pub fn name(&self) -> &'static str {
        match self {
            Packet::Connect(_) => "CONNECT",
            Packet::ConnAck(_) => "CONNACK",
            Packet::Publish(_) => "PUBLISH",
            Packet::PubAck(_) => "PUBACK",
            Packet::PubRec(_) => "PUBREC",
            Packet::PubRel(_) => "PUBREL",
            Packet::PubComp(_) => "PUBCOMP",
            Packet::Subscribe(_) => "SUBSCRIBE",
            Packet::SubAck(_) => "SUBACK",
            Packet::Unsubscribe(_) => "UNSUBSCRIBE",
            Packet::UnsubAck(_) => "UNSUBACK",
            Packet::PingReq => "PINGREQ",
            Packet::PingResp => "PINGRESP",
            Packet::Disconnect(_) => "DISCONNECT",
            Packet::Auth(_) => "AUTH",
        }
    }
}

/// CONNECT: the first packet of every connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    pub protocol: ProtocolVersion,
    /// Clean Session in 3.1.1, Clean Start in 5.
    pub clean_session: bool,
    /// Seconds; 0 disables the keepalive.
    pub keep_alive: u16,
    /// May be empty; the server decides whether to accept that (CONNACK 2 otherwise).
    pub client_id: ByteString,
    pub will: Option<LastWill>,
    pub username: Option<ByteString>,
    /// Only present together with `username` before MQTT 5.
    pub password: Option<Bytes>,
    pub properties: Properties,
}

/// The will message of a CONNECT, published when the client goes away abnormally.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastWill {
    /// A valid topic name (no wildcards), checked when decoded.
    pub topic: ByteString,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// MQTT 5: the will's properties (Will Delay Interval and message properties).
    pub properties: Properties,
}

/// CONNACK: the server's answer to CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnAck {
    /// Must be false unless `code` is success.
    pub session_present: bool,
    /// 3.1.1 encodes it as the closest of its six return codes.
    pub code: ReasonCode,
    pub properties: Properties,
}

impl ConnAck {
    pub fn new(session_present: bool, code: ReasonCode) -> Self {
        Self {
            session_present,
            code,
            properties: Properties::new(),
        }
    }
}

/// PUBLISH: an application message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// Only allowed with QoS 1 and 2.
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    /// A valid topic name (no wildcards), checked when decoded.
    pub topic: ByteString,
    /// Packet identifier: non-zero for QoS 1 and 2; 0 (and not encoded) for QoS 0.
    pub pkid: u16,
    pub payload: Bytes,
    pub properties: Properties,
}

macro_rules! ack_packet {
    ($(#[$doc:meta] $name:ident),* $(,)?) => {
        $(
            #[$doc]
            #[derive(Debug, Clone, PartialEq, Eq)]
            pub struct $name {
                /// Packet identifier of the packet acknowledged; never 0.
                pub pkid: u16,
                /// MQTT 5 only; success is not written when there are no properties.
                pub reason: ReasonCode,
                pub properties: Properties,
            }

            impl $name {
                pub fn new(pkid: u16) -> Self {
                    Self::with_reason(pkid, ReasonCode::Success)
                }

                pub fn with_reason(pkid: u16, reason: ReasonCode) -> Self {
                    Self {
                        pkid,
                        reason,
                        properties: Properties::new(),
                    }
                }
            }
        )*
    };
}

ack_packet! {
    /// PUBACK: acknowledges a QoS 1 PUBLISH.
    PubAck,
    /// PUBREC: first answer to a QoS 2 PUBLISH.
    PubRec,
    /// PUBREL: answer to PUBREC.
    PubRel,
    /// PUBCOMP: answer to PUBREL, ends a QoS 2 exchange.
    PubComp,
}

/// What a subscription does with retained messages when it is made (MQTT 5).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum RetainHandling {
    /// Send them (3.1.1's only behaviour).
    #[default]
    OnSubscribe = 0,
    /// Send them only if the subscription did not exist already.
    OnNewSubscription = 1,
    /// Never send them.
    Never = 2,
}

/// One topic filter of a SUBSCRIBE, the QoS asked for it and (MQTT 5) its options.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SubscribeFilter {
    /// A valid topic filter, checked when decoded.
    pub filter: ByteString,
    pub qos: QoS,
    /// Messages the subscriber itself publishes are not sent back to it.
    pub no_local: bool,
    /// Forwarded messages keep their RETAIN flag (otherwise it is cleared).
    pub retain_as_published: bool,
    pub retain_handling: RetainHandling,
}

impl SubscribeFilter {
    pub fn new(filter: impl Into<ByteString>, qos: QoS) -> Self {
        Self {
            filter: filter.into(),
            qos,
            no_local: false,
            retain_as_published: false,
            retain_handling: RetainHandling::OnSubscribe,
        }
    }
}

/// SUBSCRIBE: at least one filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    pub pkid: u16,
    pub filters: Vec<SubscribeFilter>,
    /// MQTT 5: a Subscription Identifier and user properties.
    pub properties: Properties,
}

/// The answer to one filter of a SUBSCRIBE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SubscribeReturnCode {
    /// Granted, at this maximum QoS.
    Success(QoS),
    /// Refused for this reason (3.1.1 writes every refusal as 0x80).
    Failure(ReasonCode),
}

/// SUBACK: one return code per filter of the SUBSCRIBE, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubAck {
    pub pkid: u16,
    pub return_codes: Vec<SubscribeReturnCode>,
    pub properties: Properties,
}

/// UNSUBSCRIBE: at least one filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    pub pkid: u16,
    pub filters: Vec<ByteString>,
    pub properties: Properties,
}

/// UNSUBACK: acknowledges an UNSUBSCRIBE; MQTT 5 adds one reason code per filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsubAck {
    pub pkid: u16,
    /// Empty for 3.1.1; one per filter, in order, for 5.
    pub reason_codes: Vec<ReasonCode>,
    pub properties: Properties,
}

impl UnsubAck {
    pub fn new(pkid: u16, reason_codes: Vec<ReasonCode>) -> Self {
        Self {
            pkid,
            reason_codes,
            properties: Properties::new(),
        }
    }
}

/// DISCONNECT: the end of a connection, from either side. 3.1.1's has no fields.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Disconnect {
    pub reason: ReasonCode,
    pub properties: Properties,
}

impl Disconnect {
    pub fn new(reason: ReasonCode) -> Self {
        Self {
            reason,
            properties: Properties::new(),
        }
    }
}

/// AUTH: a step of MQTT 5's enhanced authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Auth {
    pub reason: ReasonCode,
    pub properties: Properties,
}
