use super::ReasonCode;

/// Why bytes could not be decoded into a packet, or a packet could not be encoded.
///
/// Every decoding error means the peer broke the protocol: the connection must be closed.
/// Before closing, a server answers a CONNECT that failed with [`Error::connack_code`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Packet type 0, and 15 (AUTH) before MQTT 5.
    #[error("reserved packet type {0}")]
    InvalidPacketType(u8),
    /// The flags of the fixed header are wrong for the packet type.
    #[error("invalid fixed header flags {flags:#06b} for packet type {packet_type}")]
    InvalidHeaderFlags { packet_type: u8, flags: u8 },
    /// More than 4 bytes, or a longer encoding than needed.
    #[error("malformed remaining length")]
    MalformedRemainingLength,
    /// The fixed header announces a packet above the limit; found before the body is read.
    #[error("packet of {size} bytes exceeds the limit of {max} bytes")]
    PacketTooLarge { size: usize, max: usize },
    /// CONNECT names a protocol other than "MQTT" or "MQIsdp".
    #[error("unknown protocol name in CONNECT")]
    InvalidProtocolName,
    /// CONNECT asks for a protocol level this server does not speak.
    #[error("unsupported protocol level {0}")]
    UnsupportedProtocolLevel(u8),
    /// A QoS of 3.
    #[error("invalid QoS {0}")]
    InvalidQoS(u8),
    /// A string that is not well-formed UTF-8.
    #[error("string is not valid UTF-8")]
    InvalidUtf8,
    /// A string containing U+0000.
    #[error("string contains the null character U+0000")]
    NullCharacter,
    /// A control character (U+0001..U+001F, U+007F..U+009F) in a client id, user name,
    /// topic name or topic filter: allowed by the specification, refused by this codec.
    #[error("control character in a name or topic")]
    ControlCharacter,
    /// A topic name that is empty or contains a wildcard.
    #[error("invalid topic name")]
    InvalidTopicName,
    /// A topic filter that is empty or misuses `+` or `#`.
    #[error("invalid topic filter")]
    InvalidTopicFilter,
    /// Packet identifier 0 where the packet needs one.
    #[error("packet identifier 0")]
    ZeroPacketId,
    /// Bytes left inside the remaining length after the packet's last field.
    #[error("{0} unexpected bytes at the end of the packet")]
    TrailingBytes(usize),
    /// A property identifier the specification does not define.
    #[error("unknown property identifier {0:#04x}")]
    UnknownProperty(u32),
    /// A property in a packet that may not carry it.
    #[error("property {id:#04x} is not allowed in {packet}")]
    PropertyNotAllowed { id: u8, packet: &'static str },
    /// A property that may appear once appears twice.
    #[error("property {0:#04x} included more than once")]
    DuplicateProperty(u8),
    /// A property value the specification forbids (a Receive Maximum of 0, ...).
    #[error("invalid value of property {0:#04x}")]
    InvalidPropertyValue(u8),
    /// A reason code that does not exist, or does not belong in this packet.
    #[error("invalid reason code {0:#04x}")]
    InvalidReasonCode(u8),
    /// Well-formed, but against the protocol's rules (MQTT 5's Protocol Error).
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    /// Any other violation of the packet format.
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
    /// The packet cannot be encoded as it is (a field too long, a required field missing).
    #[error("cannot encode packet: {0}")]
    Unencodable(&'static str),
    /// The transport failed (only from the `tokio_util` codec).
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl Error {
    /// The CONNACK code to send before closing when this error came from a CONNECT, if the
    /// specification asks for one: a protocol level this server does not speak. An unknown
    /// protocol name is closed without an answer: the peer may not speak MQTT at all.
    pub fn connack_code(&self) -> Option<ReasonCode> {
        match self {
            Error::UnsupportedProtocolLevel(_) => Some(ReasonCode::UnsupportedProtocolVersion),
            _ => None,
        }
    }

    /// The reason an MQTT 5 peer is told in the DISCONNECT sent before closing.
    pub fn disconnect_reason(&self) -> ReasonCode {
        match self {
            Error::PacketTooLarge { .. } => ReasonCode::PacketTooLarge,
            Error::DuplicateProperty(_)
            | Error::InvalidPropertyValue(_)
            | Error::ZeroPacketId
            | Error::Protocol(_) => ReasonCode::ProtocolError,
            Error::Io(_) | Error::Unencodable(_) => ReasonCode::UnspecifiedError,
            _ => ReasonCode::MalformedPacket,
        }
    }
}
