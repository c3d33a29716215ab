//! The few MQTT 3.1.1 packets the load generator sends and reads, encoded into and parsed
//! out of byte buffers without allocating per message.

use bytes::{Buf, BufMut, BytesMut};

/// Bytes at the start of every benchmark payload: publisher index (u32), sequence number
/// (u64) and send time in nanoseconds since the generator started (u64), big-endian.
pub const PAYLOAD_HEADER: usize = 20;

/// The header carried by a benchmark payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub publisher: u32,
    pub sequence: u64,
    pub sent_nanos: u64,
}

impl Stamp {
    fn write(&self, out: &mut BytesMut) {
        out.put_u32(self.publisher);
        out.put_u64(self.sequence);
        out.put_u64(self.sent_nanos);
    }

    /// Reads the header of a payload; `None` when the payload is too short to carry one.
    pub fn read(mut payload: &[u8]) -> Option<Self> {
        if payload.len() < PAYLOAD_HEADER {
            return None;
        }
        Some(Self {
            publisher: payload.get_u32(),
            sequence: payload.get_u64(),
            sent_nanos: payload.get_u64(),
        })
    }
}

fn put_remaining_length(out: &mut BytesMut, mut length: usize) {
    loop {
        let mut byte = (length % 128) as u8;
        length /= 128;
        if length > 0 {
            byte |= 0x80;
        }
        out.put_u8(byte);
        if length == 0 {
            break;
        }
    }
}

fn put_string(out: &mut BytesMut, text: &[u8]) {
    out.put_u16(text.len() as u16);
    out.put_slice(text);
}

/// Longest string field MQTT can carry.
pub const MAX_STRING: usize = u16::MAX as usize;

/// Options of a CONNECT packet.
pub struct Connect<'a> {
    pub client_id: &'a str,
    pub keepalive_secs: u16,
    pub username: Option<&'a str>,
    pub password: Option<&'a str>,
}

/// Appends a CONNECT (MQTT 3.1.1, clean session). Strings longer than MQTT allows are the
/// caller's error: the command line checks them.
pub fn put_connect(out: &mut BytesMut, connect: &Connect<'_>) {
    let mut flags = 0x02; // clean session
    let mut length = 10 + 2 + connect.client_id.len();
    if let Some(username) = connect.username {
        flags |= 0x80;
        length += 2 + username.len();
    }
    if let Some(password) = connect.password {
        flags |= 0x40;
        length += 2 + password.len();
    }
    out.put_u8(0x10);
    put_remaining_length(out, length);
    put_string(out, b"MQTT");
    out.put_u8(4);
    out.put_u8(flags);
    out.put_u16(connect.keepalive_secs);
    put_string(out, connect.client_id.as_bytes());
    if let Some(username) = connect.username {
        put_string(out, username.as_bytes());
    }
    if let Some(password) = connect.password {
        put_string(out, password.as_bytes());
    }
}

/// Appends a SUBSCRIBE of one filter.
pub fn put_subscribe(out: &mut BytesMut, packet_id: u16, filter: &str, qos: u8) {
    out.put_u8(0x82);
    put_remaining_length(out, 2 + 2 + filter.len() + 1);
    out.put_u16(packet_id);
    put_string(out, filter.as_bytes());
    out.put_u8(qos);
}

/// Appends a PUBLISH whose payload is `stamp` followed by `padding` (zeros).
pub fn put_publish(
    out: &mut BytesMut,
    topic: &[u8],
    qos: u8,
    packet_id: u16,
    stamp: Stamp,
    padding: &[u8],
) {
    let id_length = if qos > 0 { 2 } else { 0 };
    out.put_u8(0x30 | (qos << 1));
    put_remaining_length(
        out,
        2 + topic.len() + id_length + PAYLOAD_HEADER + padding.len(),
    );
    put_string(out, topic);
    if qos > 0 {
        out.put_u16(packet_id);
    }
    stamp.write(out);
    out.put_slice(padding);
}

pub fn put_puback(out: &mut BytesMut, packet_id: u16) {
    out.put_u8(0x40);
    out.put_u8(2);
    out.put_u16(packet_id);
}

pub fn put_pingreq(out: &mut BytesMut) {
    out.put_slice(&[0xC0, 0]);
}

pub fn put_disconnect(out: &mut BytesMut) {
    out.put_slice(&[0xE0, 0]);
}

/// What went wrong in the bytes the broker sent.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("malformed remaining length")]
    RemainingLength,
    #[error("packet of {0} bytes is larger than the {1} bytes allowed")]
    TooLarge(usize, usize),
    #[error("malformed {0} packet")]
    Malformed(&'static str),
    #[error("connection refused by the broker (CONNACK return code {0})")]
    Refused(u8),
    #[error("subscription refused by the broker (SUBACK return code 0x80)")]
    SubscriptionRefused,
    #[error("unexpected packet type {0} from the broker")]
    Unexpected(u8),
}

/// A packet from the broker, borrowing from the read buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming<'a> {
    ConnAck {
        return_code: u8,
    },
    Publish {
        qos: u8,
        packet_id: u16,
        topic: &'a [u8],
        payload: &'a [u8],
    },
    PubAck {
        packet_id: u16,
    },
    SubAck {
        packet_id: u16,
        granted: u8,
    },
    PingResp,
}

/// Parses the packet at the start of `buf`: `Ok(Some((packet, size)))` when it is all there,
/// `Ok(None)` when more bytes are needed.
pub fn parse(buf: &[u8], max_packet: usize) -> Result<Option<(Incoming<'_>, usize)>, WireError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let mut length = 0usize;
    let mut header = 1;
    loop {
        let Some(&byte) = buf.get(header) else {
            return Ok(None);
        };
        length |= usize::from(byte & 0x7F) << (7 * (header - 1));
        header += 1;
        if byte & 0x80 == 0 {
            break;
        }
        if header > 4 {
            return Err(WireError::RemainingLength);
        }
    }
    if length > max_packet {
        return Err(WireError::TooLarge(length, max_packet));
    }
    let total = header + length;
    let Some(body) = buf.get(header..total) else {
        return Ok(None);
    };
    let packet = match first >> 4 {
        2 => match body {
            [_, return_code] => Incoming::ConnAck {
                return_code: *return_code,
            },
            _ => return Err(WireError::Malformed("CONNACK")),
        },
        3 => {
            let qos = (first >> 1) & 0x03;
            let malformed = || WireError::Malformed("PUBLISH");
            let topic_length = usize::from(u16::from_be_bytes([
                *body.first().ok_or_else(malformed)?,
                *body.get(1).ok_or_else(malformed)?,
            ]));
            let topic = body.get(2..2 + topic_length).ok_or_else(malformed)?;
            let mut rest = &body[2 + topic_length..];
            let mut packet_id = 0;
            if qos > 0 {
                if rest.len() < 2 {
                    return Err(malformed());
                }
                packet_id = rest.get_u16();
            }
            Incoming::Publish {
                qos,
                packet_id,
                topic,
                payload: rest,
            }
        }
        4 => match body {
            [high, low] => Incoming::PubAck {
                packet_id: u16::from_be_bytes([*high, *low]),
            },
            _ => return Err(WireError::Malformed("PUBACK")),
        },
        9 => match body {
            [high, low, granted] => Incoming::SubAck {
                packet_id: u16::from_be_bytes([*high, *low]),
                granted: *granted,
            },
            _ => return Err(WireError::Malformed("SUBACK")),
        },
        13 => Incoming::PingResp,
        other => return Err(WireError::Unexpected(other)),
    };
    Ok(Some((packet, total)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_round_trips_through_the_parser() {
        let mut out = BytesMut::new();
        let stamp = Stamp {
            publisher: 7,
            sequence: 1 << 40,
            sent_nanos: 123_456_789,
        };
        put_publish(&mut out, b"bench/7", 1, 42, stamp, &[0; 200]);
        let (packet, size) = parse(&out, 1 << 20).unwrap().unwrap();
        assert_eq!(size, out.len());
        let Incoming::Publish {
            qos,
            packet_id,
            topic,
            payload,
        } = packet
        else {
            panic!("not a publish: {packet:?}");
        };
        assert_eq!((qos, packet_id, topic), (1, 42, &b"bench/7"[..]));
        assert_eq!(payload.len(), PAYLOAD_HEADER + 200);
        assert_eq!(Stamp::read(payload), Some(stamp));
        // A packet cut anywhere needs more bytes.
        for cut in 0..out.len() {
            assert_eq!(parse(&out[..cut], 1 << 20), Ok(None));
        }
    }

    #[test]
    fn connect_matches_the_specification_example() {
        let mut out = BytesMut::new();
        put_connect(
            &mut out,
            &Connect {
                client_id: "c",
                keepalive_secs: 60,
                username: Some("u"),
                password: Some("p"),
            },
        );
        assert_eq!(
            &out[..],
            &[
                0x10, 19, 0, 4, b'M', b'Q', b'T', b'T', 4, 0xC2, 0, 60, 0, 1, b'c', 0, 1, b'u', 0,
                1, b'p'
            ]
        );
    }

    #[test]
    fn broker_packets_parse_and_oversized_ones_are_refused() {
        assert_eq!(
            parse(&[0x20, 2, 0, 5], 100),
            Ok(Some((Incoming::ConnAck { return_code: 5 }, 4)))
        );
        assert_eq!(
            parse(&[0x90, 3, 0, 1, 0x80], 100),
            Ok(Some((
                Incoming::SubAck {
                    packet_id: 1,
                    granted: 0x80
                },
                5
            )))
        );
        assert_eq!(parse(&[0xD0, 0], 100), Ok(Some((Incoming::PingResp, 2))));
        assert_eq!(
            parse(&[0x30, 0xFF, 0xFF, 0x7F], 100),
            Err(WireError::TooLarge(2_097_151, 100))
        );
        assert_eq!(
            parse(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF], usize::MAX),
            Err(WireError::RemainingLength)
        );
        assert_eq!(
            parse(&[0x30, 1, 0], 100),
            Err(WireError::Malformed("PUBLISH"))
        );
        let mut long = BytesMut::new();
        put_remaining_length(&mut long, 268_435_455);
        assert_eq!(&long[..], &[0xFF, 0xFF, 0xFF, 0x7F]);
    }
}
