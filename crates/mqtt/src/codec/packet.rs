//! The packets of MQTT 3.1 / 3.1.1 as plain data.
//!
//! Each packet with fields is its own struct so that MQTT 5 can add its reason codes and
//! `properties` as new fields of the same structs instead of a second set of types. Acks are
//! built with `new(pkid)` so that callers keep compiling when those fields arrive.

use bytes::Bytes;
use bytestring::ByteString;

use super::Error;

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
///
/// MQTT 5 is added here as `V5` (name "MQTT", level 5); every `match` on this enum is a place
/// that then has to learn about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProtocolVersion {
    /// MQTT 3.1: protocol name "MQIsdp", level 3.
    V31,
    /// MQTT 3.1.1: protocol name "MQTT", level 4.
    V311,
}

impl ProtocolVersion {
    /// The protocol name carried in CONNECT.
    pub fn protocol_name(self) -> &'static str {
        match self {
            ProtocolVersion::V31 => "MQIsdp",
            ProtocolVersion::V311 => "MQTT",
        }
    }

    /// The protocol level carried in CONNECT.
    pub fn level(self) -> u8 {
        match self {
            ProtocolVersion::V31 => 3,
            ProtocolVersion::V311 => 4,
        }
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
    Disconnect,
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
            Packet::Disconnect => "DISCONNECT",
        }
    }
}

/// CONNECT: the first packet of every connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    pub protocol: ProtocolVersion,
    pub clean_session: bool,
    /// Seconds; 0 disables the keepalive.
    pub keep_alive: u16,
    /// May be empty; the server decides whether to accept that (CONNACK 2 otherwise).
    pub client_id: ByteString,
    pub will: Option<LastWill>,
    pub username: Option<ByteString>,
    /// Only present together with `username`.
    pub password: Option<Bytes>,
}

/// The will message of a CONNECT, published when the client goes away abnormally.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastWill {
    /// A valid topic name (no wildcards), checked when decoded.
    pub topic: ByteString,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
}

/// CONNACK return codes of MQTT 3.1.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ConnectReturnCode {
    Accepted = 0,
    UnacceptableProtocolVersion = 1,
    IdentifierRejected = 2,
    ServerUnavailable = 3,
    BadUserNameOrPassword = 4,
    NotAuthorized = 5,
}

impl TryFrom<u8> for ConnectReturnCode {
    type Error = Error;

    fn try_from(value: u8) -> Result<Self, Error> {
        Ok(match value {
            0 => ConnectReturnCode::Accepted,
            1 => ConnectReturnCode::UnacceptableProtocolVersion,
            2 => ConnectReturnCode::IdentifierRejected,
            3 => ConnectReturnCode::ServerUnavailable,
            4 => ConnectReturnCode::BadUserNameOrPassword,
            5 => ConnectReturnCode::NotAuthorized,
            _ => return Err(Error::Malformed("unknown CONNACK return code")),
        })
    }
}

/// CONNACK: the server's answer to CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnAck {
    /// Must be false unless `code` is `Accepted`.
    pub session_present: bool,
    pub code: ConnectReturnCode,
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
}

macro_rules! ack_packet {
    ($(#[$doc:meta] $name:ident),* $(,)?) => {
        $(
            #[$doc]
            #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
            pub struct $name {
                /// Packet identifier of the packet acknowledged; never 0.
                pub pkid: u16,
            }

            impl $name {
                pub fn new(pkid: u16) -> Self {
                    Self { pkid }
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
    /// UNSUBACK: acknowledges an UNSUBSCRIBE.
    UnsubAck,
}

/// One topic filter of a SUBSCRIBE and the QoS asked for it (MQTT 5 adds its options here).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SubscribeFilter {
    /// A valid topic filter, checked when decoded.
    pub filter: ByteString,
    pub qos: QoS,
}

impl SubscribeFilter {
    pub fn new(filter: impl Into<ByteString>, qos: QoS) -> Self {
        Self {
            filter: filter.into(),
            qos,
        }
    }
}

/// SUBSCRIBE: at least one filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    pub pkid: u16,
    pub filters: Vec<SubscribeFilter>,
}

/// The answer to one filter of a SUBSCRIBE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SubscribeReturnCode {
    /// Granted, at this maximum QoS.
    Success(QoS),
    /// Refused (0x80), e.g. by the ACL.
    Failure,
}

impl SubscribeReturnCode {
    pub(crate) const FAILURE: u8 = 0x80;

    pub(crate) fn to_byte(self) -> u8 {
        match self {
            SubscribeReturnCode::Success(qos) => qos as u8,
            SubscribeReturnCode::Failure => Self::FAILURE,
        }
    }

    pub(crate) fn from_byte(byte: u8) -> Result<Self, Error> {
        match byte {
            Self::FAILURE => Ok(SubscribeReturnCode::Failure),
            0..=2 => QoS::try_from(byte).map(SubscribeReturnCode::Success),
            _ => Err(Error::Malformed("unknown SUBACK return code")),
        }
    }
}

/// SUBACK: one return code per filter of the SUBSCRIBE, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubAck {
    pub pkid: u16,
    pub return_codes: Vec<SubscribeReturnCode>,
}

/// UNSUBSCRIBE: at least one filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    pub pkid: u16,
    pub filters: Vec<ByteString>,
}
