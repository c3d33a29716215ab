//! MQTT 3.1, 3.1.1 and 5.0 packet codec: bytes in, [`Packet`]s out, and back. No I/O.
//!
//! # Why our own codec
//! - **Strictness is ours to decide.** The broker must refuse every malformed packet the
//!   OASIS specifications describe (reserved flags, non-minimal remaining lengths, U+0000
//!   in strings, wildcards in a PUBLISH topic, trailing bytes, properties a packet may not
//!   carry or carries twice, ...), tell the server which refusals need a CONNACK first
//!   ([`Error::connack_code`]) and which reason an MQTT 5 peer is told
//!   ([`Error::disconnect_reason`]). General-purpose codecs are lenient in different
//!   places, and their leniency would become our broker's behaviour.
//! - **Bounded before buffered.** [`check`] reads only the fixed header, so a packet above
//!   the configured size is refused before any of its body is buffered.
//! - **No allocation per packet beyond the payload.** A decoded packet's strings
//!   ([`ByteString`]) and payload ([`Bytes`](bytes::Bytes)) are slices of the one buffer
//!   the packet arrived in, so forwarding a PUBLISH to many subscribers clones reference
//!   counts, not bytes (SUBSCRIBE and UNSUBSCRIBE add their one `Vec` of filters, MQTT 5
//!   packets with properties one `Vec` of them).
//!
//! # Versions
//! One set of packet types serves every version: MQTT 5's reason codes and properties are
//! fields of the same structs, written only when the connection speaks 5 (`body`). What
//! every version shares (fixed header, remaining length, strings, [`check`]) lives in
//! `wire`. The version is decoder state ([`MqttCodec`] learns it from CONNECT); CONNECT's
//! protocol name and level are read before anything else, so one decoder serves all.
//!
//! # Limits
//! `max_packet_size` bounds a whole packet, fixed header included.

mod body;
mod error;
mod packet;
mod properties;
mod reason;
mod wire;

#[cfg(test)]
mod malformed_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod v5_tests;

pub use crate::topic::{valid_topic_filter, valid_topic_name};
pub use bytestring::ByteString;
pub use error::Error;
pub use packet::{
    Auth, ConnAck, Connect, Disconnect, LastWill, Packet, ProtocolVersion, PubAck, PubComp, PubRec,
    PubRel, Publish, QoS, RetainHandling, SubAck, Subscribe, SubscribeFilter, SubscribeReturnCode,
    UnsubAck, Unsubscribe,
};
pub use properties::{Properties, Property};
pub use reason::ReasonCode;
pub(crate) use wire::MAX_FIELD_LENGTH;

use bytes::BytesMut;
use tokio_util::codec::{Decoder, Encoder};

use wire::{FixedHeader, Reader, MAX_REMAINING_LENGTH};

/// Whether `buf` starts with a whole packet: `Ok(Some(total length))`, `Ok(None)` while more
/// bytes are needed. Reads only the fixed header and allocates nothing; fails as soon as the
/// header is invalid or announces a packet larger than `max_packet_size`.
pub fn check(buf: &[u8], max_packet_size: usize) -> Result<Option<usize>, Error> {
    Ok(wire::parse_fixed_header(buf, max_packet_size)?
        .map(|header| header.total_len())
        .filter(|&total| buf.len() >= total))
}

/// Takes one packet of a connection speaking `version` off the front of `buf` (a CONNECT
/// is read whatever its version), or returns `Ok(None)` (consuming nothing, but reserving
/// room for the rest of the packet) while it is incomplete.
pub fn decode(
    buf: &mut BytesMut,
    version: ProtocolVersion,
    max_packet_size: usize,
) -> Result<Option<Packet>, Error> {
    let Some(header) = wire::parse_fixed_header(buf, max_packet_size)? else {
        return Ok(None);
    };
    let total = header.total_len();
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    let mut body = buf.split_to(total).freeze();
    let body = body.split_off(header.header_len);
    read_packet(header, Reader::new(body), version).map(Some)
}

/// Appends the encoding of `packet` for a connection speaking `version` to `buf`; on
/// error `buf` is left as it was.
pub fn encode(packet: &Packet, version: ProtocolVersion, buf: &mut BytesMut) -> Result<(), Error> {
    let start = buf.len();
    let written = write_packet(packet, version, buf);
    if written.is_err() {
        buf.truncate(start);
    }
    written
}

/// Bytes [`encode`] writes for `packet`, fixed header included.
pub fn encoded_len(packet: &Packet, version: ProtocolVersion) -> usize {
    let body = body::body_len(packet, version);
    1 + wire::remaining_length_len(body) + body
}

fn read_packet(
    header: FixedHeader,
    mut body: Reader,
    version: ProtocolVersion,
) -> Result<Packet, Error> {
    if header.packet_type() == wire::CONNECT {
        let protocol = read_protocol(&mut body)?;
        return body::read_connect(protocol, body);
    }
    body::read(header, body, version)
}

/// CONNECT's protocol name and level, common to every version.
fn read_protocol(body: &mut Reader) -> Result<ProtocolVersion, Error> {
    let name = body.binary()?;
    let level = match &name[..] {
        b"MQTT" | b"MQIsdp" => body.u8()?,
        _ => return Err(Error::InvalidProtocolName),
    };
    [
        ProtocolVersion::V31,
        ProtocolVersion::V311,
        ProtocolVersion::V5,
    ]
    .into_iter()
    .find(|version| version.protocol_name().as_bytes() == &name[..] && version.level() == level)
    .ok_or(Error::UnsupportedProtocolLevel(level))
}

fn write_packet(
    packet: &Packet,
    version: ProtocolVersion,
    buf: &mut BytesMut,
) -> Result<(), Error> {
    let body_len = body::body_len(packet, version);
    if body_len > MAX_REMAINING_LENGTH {
        return Err(Error::Unencodable("packet larger than the protocol allows"));
    }
    buf.reserve(1 + wire::remaining_length_len(body_len) + body_len);
    wire::put_fixed_header(buf, body::header_byte(packet), body_len);
    body::write_body(packet, version, buf)
}

/// Stateful codec for `tokio_util::codec::Framed`: bounds packets to `max_packet_size` and
/// keeps the protocol version negotiated by CONNECT (decoded on a server, encoded on a
/// client) for the packets after it.
#[derive(Debug, Clone)]
pub struct MqttCodec {
    max_packet_size: usize,
    version: ProtocolVersion,
}

impl MqttCodec {
    /// A codec speaking MQTT 3.1.1 until a CONNECT says otherwise.
    pub fn new(max_packet_size: usize) -> Self {
        Self {
            max_packet_size,
            version: ProtocolVersion::V311,
        }
    }

    /// The protocol version of the connection so far.
    pub fn version(&self) -> ProtocolVersion {
        self.version
    }

    pub fn max_packet_size(&self) -> usize {
        self.max_packet_size
    }
}

impl Decoder for MqttCodec {
    type Item = Packet;
    type Error = Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Packet>, Error> {
        let packet = decode(src, self.version, self.max_packet_size)?;
        if let Some(Packet::Connect(connect)) = &packet {
            self.version = connect.protocol;
        }
        Ok(packet)
    }
}

impl Encoder<&Packet> for MqttCodec {
    type Error = Error;

    fn encode(&mut self, packet: &Packet, dst: &mut BytesMut) -> Result<(), Error> {
        if let Packet::Connect(connect) = packet {
            self.version = connect.protocol;
        }
        encode(packet, self.version, dst)
    }
}

impl Encoder<Packet> for MqttCodec {
    type Error = Error;

    fn encode(&mut self, packet: Packet, dst: &mut BytesMut) -> Result<(), Error> {
        Encoder::<&Packet>::encode(self, &packet, dst)
    }
}
