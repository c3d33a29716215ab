//! MQTT 3.1 / 3.1.1 packet codec: bytes in, [`Packet`]s out, and back. No I/O.
//!
//! # Why our own codec
//! - **Strictness is ours to decide.** The broker must refuse every malformed packet the
//!   OASIS 3.1.1 specification describes (reserved flags, non-minimal remaining lengths,
//!   U+0000 in strings, wildcards in a PUBLISH topic, trailing bytes, ...) and tell the server
//!   which refusals need a CONNACK first ([`Error::connack_code`]). General-purpose codecs are
//!   lenient in different places, and their leniency would become our broker's behaviour.
//! - **Bounded before buffered.** [`check`] reads only the fixed header, so a packet above
//!   the configured size is refused before any of its body is buffered.
//! - **No allocation per packet beyond the payload.** A decoded packet's strings
//!   ([`ByteString`]) and payload ([`Bytes`]) are slices of the one buffer the packet arrived
//!   in, so forwarding a PUBLISH to many subscribers clones reference counts, not bytes
//!   (SUBSCRIBE and UNSUBSCRIBE add their one `Vec` of filters).
//!
//! # Where MQTT 5 goes
//! Everything version-independent lives in `wire` (fixed header, remaining length, strings,
//! [`check`]). The protocol version is decoder state ([`MqttCodec`] learns it from CONNECT),
//! and `read_packet` / `write_packet` below dispatch on [`ProtocolVersion`]: MQTT 5 adds a
//! `ProtocolVersion::V5`, a `v5` module beside `v311` with the same four functions, its
//! reason codes and `properties` as new fields of the packet structs in `packet`, and the
//! AUTH packet (type 15, refused by `wire` today). CONNECT's protocol name and level are read
//! before the dispatch, so one decoder serves every version.
//!
//! # Limits
//! `max_packet_size` bounds a whole packet, fixed header included.

mod error;
mod packet;
mod v311;
mod wire;

#[cfg(test)]
mod malformed_tests;
#[cfg(test)]
mod tests;

pub use crate::topic::{valid_topic_filter, valid_topic_name};
pub use bytestring::ByteString;
pub use error::Error;
pub use packet::{
    ConnAck, Connect, ConnectReturnCode, LastWill, Packet, ProtocolVersion, PubAck, PubComp,
    PubRec, PubRel, Publish, QoS, SubAck, Subscribe, SubscribeFilter, SubscribeReturnCode,
    UnsubAck, Unsubscribe,
};
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

/// Takes one MQTT 3.1.1 packet off the front of `buf`, or returns `Ok(None)` (consuming
/// nothing, but reserving room for the rest of the packet) while it is incomplete.
/// A stream that negotiated another version is read through [`MqttCodec`].
pub fn decode(buf: &mut BytesMut, max_packet_size: usize) -> Result<Option<Packet>, Error> {
    decode_as(buf, ProtocolVersion::V311, max_packet_size)
}

/// Appends the MQTT 3.1.1 encoding of `packet` to `buf`; on error `buf` is left as it was.
pub fn encode(packet: &Packet, buf: &mut BytesMut) -> Result<(), Error> {
    encode_as(packet, ProtocolVersion::V311, buf)
}

/// Bytes [`encode`] writes for `packet`, fixed header included.
pub fn encoded_len(packet: &Packet) -> usize {
    let body = v311::body_len(packet);
    1 + wire::remaining_length_len(body) + body
}

fn decode_as(
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

fn read_packet(
    header: FixedHeader,
    mut body: Reader,
    version: ProtocolVersion,
) -> Result<Packet, Error> {
    if header.packet_type() == wire::CONNECT {
        let protocol = read_protocol(&mut body)?;
        return match protocol {
            ProtocolVersion::V31 | ProtocolVersion::V311 => v311::read_connect(protocol, body),
        };
    }
    match version {
        ProtocolVersion::V31 | ProtocolVersion::V311 => v311::read(header, body),
    }
}

/// CONNECT's protocol name and level, common to every version.
fn read_protocol(body: &mut Reader) -> Result<ProtocolVersion, Error> {
    let name = body.binary()?;
    let expected = match &name[..] {
        b"MQTT" => ProtocolVersion::V311,
        b"MQIsdp" => ProtocolVersion::V31,
        _ => return Err(Error::InvalidProtocolName),
    };
    match body.u8()? {
        level if level == expected.level() => Ok(expected),
        level => Err(Error::UnsupportedProtocolLevel(level)),
    }
}

fn encode_as(packet: &Packet, version: ProtocolVersion, buf: &mut BytesMut) -> Result<(), Error> {
    let start = buf.len();
    let written = match version {
        ProtocolVersion::V31 | ProtocolVersion::V311 => write_v311(packet, buf),
    };
    if written.is_err() {
        buf.truncate(start);
    }
    written
}

fn write_v311(packet: &Packet, buf: &mut BytesMut) -> Result<(), Error> {
    let body_len = v311::body_len(packet);
    if body_len > MAX_REMAINING_LENGTH {
        return Err(Error::Unencodable("packet larger than the protocol allows"));
    }
    buf.reserve(1 + wire::remaining_length_len(body_len) + body_len);
    wire::put_fixed_header(buf, v311::header_byte(packet), body_len);
    v311::write_body(packet, buf)
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
        let packet = decode_as(src, self.version, self.max_packet_size)?;
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
        encode_as(packet, self.version, dst)
    }
}

impl Encoder<Packet> for MqttCodec {
    type Error = Error;

    fn encode(&mut self, packet: Packet, dst: &mut BytesMut) -> Result<(), Error> {
        Encoder::<&Packet>::encode(self, &packet, dst)
    }
}
