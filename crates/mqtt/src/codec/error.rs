use super::ConnectReturnCode;

/// Why bytes could not be decoded into a packet, or a packet could not be encoded.
///
/// Every decoding error means the peer broke the protocol: the connection must be closed.
/// Before closing, a server answers a CONNECT that failed with [`Error::connack_code`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Packet types 0 and 15 are reserved in MQTT 3.1.1.
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
    /// specification asks for one: an unknown protocol name or level gets
    /// [`ConnectReturnCode::UnacceptableProtocolVersion`].
    pub fn connack_code(&self) -> Option<ConnectReturnCode> {
        match self {
            Error::UnsupportedProtocolLevel(_) | Error::InvalidProtocolName => {
                Some(ConnectReturnCode::UnacceptableProtocolVersion)
            }
            _ => None,
        }
    }
}
