//! Arbitrary bytes into the MQTT codec. Must never panic, and whatever decodes must:
//! - have been announced by `check` with the same length,
//! - encode back to exactly the bytes it came from for 3.1 and 3.1.1 (the strict decoder
//!   accepts one encoding per packet; MQTT 5 lets a sender spell out a success code and an
//!   empty property list that the encoder leaves out), with `encoded_len` bytes, and decode
//!   again to the same packet,
//! - decode the same when the bytes arrive in small chunks.
//!
//! The first input byte picks the chunk size; the rest is the stream.
#![no_main]

use bytes::BytesMut;
use fieldbridge_mqtt::codec::{self, MqttCodec, Packet, ProtocolVersion};
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;

const MAX_PACKET_SIZE: usize = 64 * 1024;

/// The packets of `stream` fed `chunk` bytes at a time, and whether decoding ended in error.
fn decode_stream(stream: &[u8], chunk: usize) -> (Vec<Packet>, bool) {
    let mut codec = MqttCodec::new(MAX_PACKET_SIZE);
    let mut buf = BytesMut::new();
    let mut packets = Vec::new();
    for piece in stream.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            let before = buf.clone();
            let checked = codec::check(&before, MAX_PACKET_SIZE);
            match codec.decode(&mut buf) {
                Ok(Some(packet)) => {
                    let consumed = before.len() - buf.len();
                    assert_eq!(checked.ok(), Some(Some(consumed)), "check disagrees");
                    assert_re_encodes(&packet, codec.version(), &before[..consumed]);
                    packets.push(packet);
                }
                Ok(None) => {
                    assert!(matches!(checked, Ok(None)), "check disagrees");
                    assert_eq!(buf.len(), before.len(), "incomplete packet consumed");
                    break;
                }
                Err(_) => return (packets, true),
            }
        }
    }
    (packets, false)
}

fn assert_re_encodes(packet: &Packet, version: ProtocolVersion, original: &[u8]) {
    let mut encoded = BytesMut::new();
    codec::encode(packet, version, &mut encoded).expect("a decoded packet encodes");
    if !version.is_v5() {
        assert_eq!(&encoded[..], original, "re-encoding differs");
    }
    assert_eq!(encoded.len(), codec::encoded_len(packet, version));
    let again =
        codec::decode(&mut encoded, version, usize::MAX).expect("re-encoded packet decodes");
    assert_eq!(again.as_ref(), Some(packet));
    assert!(encoded.is_empty());
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, stream)) = data.split_first() else {
        return;
    };
    let whole = decode_stream(stream, stream.len().max(1));
    let chunked = decode_stream(stream, usize::from(first % 16) + 1);
    assert_eq!(whole, chunked, "chunked decoding differs");
});
