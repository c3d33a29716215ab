//! The hand-built malformed packets of `codec_packets` against the broker's codec: each is
//! refused with the error it claims (or, for misplaced well-formed packets, decodes), and
//! the raw-socket driver reads refusals correctly over real TCP connections.

mod codec_packets;

use bytes::BytesMut;
use codec_packets::{expect_rejected, malformed_cases, Expect, MalformedCase, CONNACK_ACCEPTED};
use fieldbridge_mqtt::codec::{
    self, ConnAck, Error, MqttCodec, Packet, ProtocolVersion, ReasonCode,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::Decoder;

const MAX_PACKET_SIZE: usize = 4096;

/// The name of an error's variant, as `codec_packets` spells it.
fn variant(error: &Error) -> String {
    let debug = format!("{error:?}");
    debug
        .split(['(', ' ', '{'])
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// The CONNACK refusing a 3.1.1 client with `code`, as the codec writes it.
fn v311_connack(code: ReasonCode) -> BytesMut {
    let mut out = BytesMut::new();
    let connack = Packet::ConnAck(ConnAck::new(false, code));
    codec::encode(&connack, ProtocolVersion::V311, &mut out).expect("encodes");
    out
}

fn expected_connack(case: &MalformedCase) -> Option<u8> {
    match case.expect {
        Expect::Close => None,
        Expect::ConnAckThenClose(code) => Some(code),
    }
}

#[test]
fn every_case_gets_the_codec_verdict_it_claims() {
    let cases = malformed_cases(MAX_PACKET_SIZE);
    assert!(cases.len() >= 40, "only {} cases", cases.len());
    for case in cases {
        let mut buf = BytesMut::from(&case.bytes[..]);
        match (
            case.codec_error,
            codec::decode(&mut buf, ProtocolVersion::V311, MAX_PACKET_SIZE),
        ) {
            (Some(expected), Err(error)) => {
                assert_eq!(variant(&error), expected, "{}: {error}", case.name);
                assert_eq!(
                    error.connack_code().map(|code| v311_connack(code)[3]),
                    expected_connack(&case),
                    "{}",
                    case.name
                );
            }
            (None, Ok(Some(_))) => assert!(buf.is_empty(), "{}: bytes left over", case.name),
            (expected, result) => panic!("{}: expected {expected:?}, got {result:?}", case.name),
        }
    }
}

#[test]
fn oversized_header_is_the_smallest_packet_over_the_limit() {
    for max in [2, 100, 127, 128, 129, 130, 16_386, 131_072 + 256, 2_097_156] {
        let header = codec_packets::oversized_publish_header(max);
        let Err(Error::PacketTooLarge { size, .. }) = codec::check(&header, max) else {
            panic!("max {max}: accepted");
        };
        // One byte more, or two where the remaining length grows a byte.
        assert!(size == max + 1 || size == max + 2, "max {max}: size {size}");
        assert_eq!(codec::check(&header, size).unwrap(), None, "max {max}");
    }
}

/// One connection handled the way the codec tells a strict broker to: CONNACK 0 to the
/// first CONNECT, the error's CONNACK code (if any) before closing on a decoding error, and
/// a close on any other packet (enough for the misplaced-packet cases).
async fn codec_driven_connection(mut stream: TcpStream) -> std::io::Result<()> {
    let mut codec = MqttCodec::new(MAX_PACKET_SIZE);
    let mut buf = BytesMut::new();
    let mut connected = false;
    loop {
        match codec.decode(&mut buf) {
            Ok(Some(Packet::Connect(_))) if !connected => {
                connected = true;
                stream.write_all(&CONNACK_ACCEPTED).await?;
            }
            Ok(Some(_)) => return Ok(()),
            Ok(None) => {
                if stream.read_buf(&mut buf).await? == 0 {
                    return Ok(());
                }
            }
            Err(error) => {
                if let Some(code) = error.connack_code() {
                    stream.write_all(&v311_connack(code)).await?;
                }
                return Ok(());
            }
        }
    }
}

#[tokio::test]
async fn raw_socket_driver_reads_each_refusal() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(codec_driven_connection(stream));
        }
    });
    for case in malformed_cases(MAX_PACKET_SIZE) {
        expect_rejected(addr, &case).await.unwrap();
    }
}

#[tokio::test]
async fn raw_socket_driver_reports_a_wrong_answer() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // Accepts anything with CONNACK 0, then closes.
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut first = [0u8; 2];
            if stream.read_exact(&mut first).await.is_ok() {
                let _ = stream.write_all(&CONNACK_ACCEPTED).await;
            }
        }
    });
    let cases = malformed_cases(MAX_PACKET_SIZE);
    let first_connect = cases
        .iter()
        .find(|case| case.name == "connect with the reserved flag")
        .unwrap();
    let error = expect_rejected(addr, first_connect).await.unwrap_err();
    assert!(error.contains("expected []"), "{error}");
    let wrong_level = cases
        .iter()
        .find(|case| case.expect == Expect::ConnAckThenClose(1))
        .unwrap();
    assert!(expect_rejected(addr, wrong_level).await.is_err());
}
