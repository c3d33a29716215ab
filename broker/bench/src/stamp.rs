//! What makes a message a benchmark message: the header at the start of its payload, and
//! the PUBLISH that carries it, encoded without allocating per message.

use bytes::{Buf, Bytes, BytesMut};
use fieldbridge_mqtt::codec::{
    ByteString, Error as CodecError, MqttCodec, Packet, Properties, Publish, QoS,
};
use tokio_util::codec::Encoder;

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
    /// Writes the header over the first [`PAYLOAD_HEADER`] bytes of `payload`.
    fn write(&self, payload: &mut [u8]) {
        payload[..4].copy_from_slice(&self.publisher.to_be_bytes());
        payload[4..12].copy_from_slice(&self.sequence.to_be_bytes());
        payload[12..PAYLOAD_HEADER].copy_from_slice(&self.sent_nanos.to_be_bytes());
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

/// One publisher's PUBLISH, kept for the whole run: each message changes only its packet
/// identifier and stamp, so encoding one allocates nothing and copies only its bytes.
pub struct StampedPublish {
    packet: Packet,
    payload_len: usize,
}

impl StampedPublish {
    /// A PUBLISH on `topic` whose payload is a stamp followed by zeros, `payload_len`
    /// bytes in all (at least [`PAYLOAD_HEADER`]).
    pub fn new(topic: &str, qos: QoS, payload_len: usize) -> Self {
        let payload_len = payload_len.max(PAYLOAD_HEADER);
        Self {
            packet: Packet::Publish(Publish {
                dup: false,
                qos,
                retain: false,
                topic: ByteString::from(topic),
                pkid: 0,
                payload: Bytes::from(vec![0; payload_len]),
                properties: Properties::new(),
            }),
            payload_len,
        }
    }

    /// Appends the message with packet identifier `pkid` (not sent at QoS 0) and `stamp`.
    pub fn encode(
        &mut self,
        pkid: u16,
        stamp: Stamp,
        codec: &mut MqttCodec,
        out: &mut BytesMut,
    ) -> Result<(), CodecError> {
        if let Packet::Publish(publish) = &mut self.packet {
            publish.pkid = pkid;
        }
        codec.encode(&self.packet, out)?;
        // The payload is the last field of a PUBLISH in every MQTT version, so the stamp
        // goes over the first bytes of the encoded payload.
        let payload = out.len() - self.payload_len;
        stamp.write(&mut out[payload..payload + PAYLOAD_HEADER]);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use tokio_util::codec::Decoder;

    use super::*;

    const STAMP: Stamp = Stamp {
        publisher: 7,
        sequence: 1 << 40,
        sent_nanos: 123_456_789,
    };

    #[test]
    fn stamp_round_trips_and_short_payloads_carry_none() {
        let mut payload = [0xAA; PAYLOAD_HEADER + 3];
        STAMP.write(&mut payload);
        assert_eq!(
            &payload[..PAYLOAD_HEADER],
            &[0, 0, 0, 7, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7, 91, 205, 21]
        );
        assert_eq!(&payload[PAYLOAD_HEADER..], &[0xAA; 3]);
        assert_eq!(Stamp::read(&payload), Some(STAMP));
        assert_eq!(Stamp::read(&payload[..PAYLOAD_HEADER]), Some(STAMP));
        assert_eq!(Stamp::read(&payload[..PAYLOAD_HEADER - 1]), None);
    }

    #[test]
    fn stamped_publishes_decode_with_their_own_stamp_and_identifier() {
        let mut codec = MqttCodec::new(1 << 20);
        let mut out = BytesMut::new();
        let mut message = StampedPublish::new("bench/7", QoS::AtLeastOnce, PAYLOAD_HEADER + 200);
        let second = Stamp {
            sequence: STAMP.sequence + 1,
            ..STAMP
        };
        message.encode(42, STAMP, &mut codec, &mut out).unwrap();
        message.encode(43, second, &mut codec, &mut out).unwrap();
        for (pkid, stamp) in [(42, STAMP), (43, second)] {
            let Some(Packet::Publish(publish)) = codec.decode(&mut out).unwrap() else {
                panic!("not a PUBLISH");
            };
            assert_eq!(
                (publish.qos, publish.pkid, &publish.topic[..]),
                (QoS::AtLeastOnce, pkid, "bench/7")
            );
            assert_eq!(publish.payload.len(), PAYLOAD_HEADER + 200);
            assert_eq!(Stamp::read(&publish.payload), Some(stamp));
            assert!(publish.payload[PAYLOAD_HEADER..].iter().all(|&b| b == 0));
        }
        assert!(out.is_empty());
    }

    #[test]
    fn qos_0_publishes_carry_no_identifier_and_payloads_are_at_least_a_stamp() {
        let mut codec = MqttCodec::new(1 << 20);
        let mut out = BytesMut::new();
        let mut message = StampedPublish::new("b", QoS::AtMostOnce, 1);
        message.encode(9, STAMP, &mut codec, &mut out).unwrap();
        // Fixed header, topic "b", then the 20-byte stamp alone.
        assert_eq!(out.len(), 2 + 3 + PAYLOAD_HEADER);
        assert_eq!(&out[..5], &[0x30, 23, 0, 1, b'b']);
        assert_eq!(Stamp::read(&out[5..]), Some(STAMP));
    }
}
