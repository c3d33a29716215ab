//! Wire primitives that every protocol version shares: the fixed header, the remaining
//! length, two-byte integers, and length-prefixed strings and binary data.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use bytestring::ByteString;

use super::Error;

/// The largest remaining length four bytes can encode.
pub(crate) const MAX_REMAINING_LENGTH: usize = 268_435_455;

/// The longest string or binary field (two-byte length prefix).
pub(crate) const MAX_FIELD_LENGTH: usize = u16::MAX as usize;

pub(crate) const CONNECT: u8 = 1;
pub(crate) const CONNACK: u8 = 2;
pub(crate) const PUBLISH: u8 = 3;
pub(crate) const PUBACK: u8 = 4;
pub(crate) const PUBREC: u8 = 5;
pub(crate) const PUBREL: u8 = 6;
pub(crate) const PUBCOMP: u8 = 7;
pub(crate) const SUBSCRIBE: u8 = 8;
pub(crate) const SUBACK: u8 = 9;
pub(crate) const UNSUBSCRIBE: u8 = 10;
pub(crate) const UNSUBACK: u8 = 11;
pub(crate) const PINGREQ: u8 = 12;
pub(crate) const PINGRESP: u8 = 13;
pub(crate) const DISCONNECT: u8 = 14;
/// MQTT 5 only.
pub(crate) const AUTH: u8 = 15;

/// The fixed header of a packet whose first byte and remaining length have been read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FixedHeader {
    pub byte1: u8,
    /// Bytes taken by the fixed header itself (2 to 5).
    pub header_len: usize,
    pub remaining_len: usize,
}

impl FixedHeader {
    pub fn packet_type(&self) -> u8 {
        self.byte1 >> 4
    }

    pub fn flags(&self) -> u8 {
        self.byte1 & 0x0f
    }

    pub fn total_len(&self) -> usize {
        self.header_len + self.remaining_len
    }
}

/// Reads the fixed header at the start of `buf`: `Ok(None)` until all of it is there.
/// Rejects a bad type, bad flags, a malformed remaining length and a packet larger than
/// `max_packet_size` (whole packet, fixed header included) as soon as the bytes show it.
pub(crate) fn parse_fixed_header(
    buf: &[u8],
    max_packet_size: usize,
) -> Result<Option<FixedHeader>, Error> {
    let Some(&byte1) = buf.first() else {
        return Ok(None);
    };
    check_type_and_flags(byte1)?;
    let mut remaining_len = 0usize;
    for (index, &byte) in buf.iter().skip(1).take(4).enumerate() {
        remaining_len |= usize::from(byte & 0x7f) << (7 * index);
        if byte & 0x80 == 0 {
            if byte == 0 && index > 0 {
                return Err(Error::MalformedRemainingLength);
            }
            let header = FixedHeader {
                byte1,
                header_len: index + 2,
                remaining_len,
            };
            if header.total_len() > max_packet_size {
                return Err(Error::PacketTooLarge {
                    size: header.total_len(),
                    max: max_packet_size,
                });
            }
            return Ok(Some(header));
        }
    }
    if buf.len() > 4 {
        Err(Error::MalformedRemainingLength)
    } else {
        Ok(None)
    }
}

fn check_type_and_flags(byte1: u8) -> Result<(), Error> {
    let packet_type = byte1 >> 4;
    let flags = byte1 & 0x0f;
    let required = match packet_type {
        CONNECT | CONNACK | PUBACK | PUBREC | PUBCOMP | SUBACK | UNSUBACK | PINGREQ | PINGRESP
        | DISCONNECT | AUTH => 0,
        PUBREL | SUBSCRIBE | UNSUBSCRIBE => 0b0010,
        PUBLISH => {
            let qos = (flags >> 1) & 0b11;
            if qos == 3 {
                return Err(Error::InvalidQoS(qos));
            }
            if qos == 0 && flags & 0b1000 != 0 {
                return Err(Error::Malformed("DUP set on a QoS 0 PUBLISH"));
            }
            return Ok(());
        }
        // 0 is reserved (15, AUTH, is refused for 3.1.1 once the version is known).
        _ => return Err(Error::InvalidPacketType(packet_type)),
    };
    if flags == required {
        Ok(())
    } else {
        Err(Error::InvalidHeaderFlags { packet_type, flags })
    }
}

/// Bytes needed to encode `len` as a remaining length.
pub(crate) fn remaining_length_len(len: usize) -> usize {
    match len {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Writes the fixed header; `remaining_len` must be at most [`MAX_REMAINING_LENGTH`].
pub(crate) fn put_fixed_header(buf: &mut BytesMut, byte1: u8, remaining_len: usize) {
    buf.put_u8(byte1);
    put_var_int(buf, remaining_len);
}

/// Writes a Variable Byte Integer (at most [`MAX_REMAINING_LENGTH`]).
pub(crate) fn put_var_int(buf: &mut BytesMut, mut value: usize) {
    loop {
        // Truncation is the point: the low seven bits of what is left.
        let mut byte = (value & 0x7f) as u8;
        value >>= 7;
        if value > 0 {
            byte |= 0x80;
        }
        buf.put_u8(byte);
        if value == 0 {
            break;
        }
    }
}

/// Cursor over a packet's body (the bytes after the fixed header). Slices share the
/// packet's buffer: strings and payloads are not copied.
pub(crate) struct Reader {
    buf: Bytes,
}

impl Reader {
    pub fn new(buf: Bytes) -> Self {
        Self { buf }
    }

    pub fn has_remaining(&self) -> bool {
        !self.buf.is_empty()
    }

    pub fn u8(&mut self) -> Result<u8, Error> {
        if self.buf.is_empty() {
            return Err(Error::Malformed("packet ends inside a field"));
        }
        Ok(self.buf.get_u8())
    }

    pub fn u16(&mut self) -> Result<u16, Error> {
        if self.buf.len() < 2 {
            return Err(Error::Malformed("packet ends inside a field"));
        }
        Ok(self.buf.get_u16())
    }

    pub fn u32(&mut self) -> Result<u32, Error> {
        if self.buf.len() < 4 {
            return Err(Error::Malformed("packet ends inside a field"));
        }
        Ok(self.buf.get_u32())
    }

    /// A Variable Byte Integer: at most four bytes, in the fewest bytes needed.
    pub fn var_int(&mut self) -> Result<u32, Error> {
        let mut value = 0u32;
        for index in 0..4 {
            let byte = self.u8()?;
            value |= u32::from(byte & 0x7f) << (7 * index);
            if byte & 0x80 == 0 {
                if byte == 0 && index > 0 {
                    return Err(Error::Malformed("variable byte integer longer than needed"));
                }
                return Ok(value);
            }
        }
        Err(Error::Malformed(
            "variable byte integer of more than four bytes",
        ))
    }

    /// The next `len` bytes as a reader of their own (a property list).
    pub fn split(&mut self, len: usize) -> Result<Reader, Error> {
        if self.buf.len() < len {
            return Err(Error::Malformed("property length beyond the packet"));
        }
        Ok(Reader::new(self.buf.split_to(len)))
    }

    /// A packet identifier, which is never 0.
    pub fn packet_id(&mut self) -> Result<u16, Error> {
        match self.u16()? {
            0 => Err(Error::ZeroPacketId),
            pkid => Ok(pkid),
        }
    }

    /// Binary data with a two-byte length prefix.
    pub fn binary(&mut self) -> Result<Bytes, Error> {
        let len = usize::from(self.u16()?);
        if self.buf.len() < len {
            return Err(Error::Malformed("field longer than the packet"));
        }
        Ok(self.buf.split_to(len))
    }

    /// A UTF-8 string with a two-byte length prefix, without U+0000.
    pub fn string(&mut self) -> Result<ByteString, Error> {
        let bytes = self.binary()?;
        let string = ByteString::try_from(bytes).map_err(|_| Error::InvalidUtf8)?;
        if string.contains('\0') {
            return Err(Error::NullCharacter);
        }
        Ok(string)
    }

    /// A string that names something (client id, user name, topic, filter): no control
    /// characters either.
    pub fn name(&mut self) -> Result<ByteString, Error> {
        let string = self.string()?;
        if string.chars().any(char::is_control) {
            return Err(Error::ControlCharacter);
        }
        Ok(string)
    }

    /// Everything left (a PUBLISH payload).
    pub fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.buf)
    }

    /// Ends the packet: nothing may be left inside its remaining length.
    pub fn finish(self) -> Result<(), Error> {
        match self.buf.len() {
            0 => Ok(()),
            left => Err(Error::TrailingBytes(left)),
        }
    }
}

/// Encoded size of a string or binary field.
pub(crate) fn field_len(field: &[u8]) -> usize {
    2 + field.len()
}

/// Writes a string or binary field with its length prefix.
pub(crate) fn put_field(buf: &mut BytesMut, field: &[u8], what: &'static str) -> Result<(), Error> {
    let len = u16::try_from(field.len()).map_err(|_| Error::Unencodable(what))?;
    buf.put_u16(len);
    buf.put_slice(field);
    Ok(())
}

/// Writes a packet identifier, refusing 0.
pub(crate) fn put_packet_id(buf: &mut BytesMut, pkid: u16) -> Result<(), Error> {
    if pkid == 0 {
        return Err(Error::Unencodable("packet identifier 0"));
    }
    buf.put_u16(pkid);
    Ok(())
}
