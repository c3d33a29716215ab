//! Codec tests. The vectors were computed with Python's `struct` module (big-endian
//! `pack`, then the register/byte permutation of each order), not with this code.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use DataType::{F32, F64, I16, I32, I64, U16, U32, U64};
use WordOrder::{ABCD, BADC, CDAB, DCBA};

const ORDERS: [WordOrder; 4] = [ABCD, BADC, CDAB, DCBA];

#[rustfmt::skip]
const VECTORS: &[(DataType, WordOrder, &[u16], Value)] = &[
    (U16, ABCD, &[0x1234], Value::U64(4660)),
    (U16, BADC, &[0x3412], Value::U64(4660)),
    (U16, CDAB, &[0x1234], Value::U64(4660)),
    (U16, DCBA, &[0x3412], Value::U64(4660)),
    (U16, ABCD, &[0xFF00], Value::U64(65280)),
    (U16, BADC, &[0x00FF], Value::U64(65280)),
    (U16, CDAB, &[0xFF00], Value::U64(65280)),
    (U16, DCBA, &[0x00FF], Value::U64(65280)),
    (U16, ABCD, &[0x0000], Value::U64(0)),
    (U16, BADC, &[0x0000], Value::U64(0)),
    (U16, CDAB, &[0x0000], Value::U64(0)),
    (U16, DCBA, &[0x0000], Value::U64(0)),
    (I16, ABCD, &[0xFFFF], Value::I64(-1)),
    (I16, BADC, &[0xFFFF], Value::I64(-1)),
    (I16, CDAB, &[0xFFFF], Value::I64(-1)),
    (I16, DCBA, &[0xFFFF], Value::I64(-1)),
    (I16, ABCD, &[0xFFFE], Value::I64(-2)),
    (I16, BADC, &[0xFEFF], Value::I64(-2)),
    (I16, CDAB, &[0xFFFE], Value::I64(-2)),
    (I16, DCBA, &[0xFEFF], Value::I64(-2)),
    (I16, ABCD, &[0x8000], Value::I64(-32768)),
    (I16, BADC, &[0x0080], Value::I64(-32768)),
    (I16, CDAB, &[0x8000], Value::I64(-32768)),
    (I16, DCBA, &[0x0080], Value::I64(-32768)),
    (I16, ABCD, &[0x012C], Value::I64(300)),
    (I16, BADC, &[0x2C01], Value::I64(300)),
    (I16, CDAB, &[0x012C], Value::I64(300)),
    (I16, DCBA, &[0x2C01], Value::I64(300)),
    (U32, ABCD, &[0x1234, 0x5678], Value::U64(305419896)),
    (U32, BADC, &[0x3412, 0x7856], Value::U64(305419896)),
    (U32, CDAB, &[0x5678, 0x1234], Value::U64(305419896)),
    (U32, DCBA, &[0x7856, 0x3412], Value::U64(305419896)),
    (U32, ABCD, &[0xFFFF, 0x0001], Value::U64(4294901761)),
    (U32, BADC, &[0xFFFF, 0x0100], Value::U64(4294901761)),
    (U32, CDAB, &[0x0001, 0xFFFF], Value::U64(4294901761)),
    (U32, DCBA, &[0x0100, 0xFFFF], Value::U64(4294901761)),
    (U32, ABCD, &[0x0000, 0x0001], Value::U64(1)),
    (U32, BADC, &[0x0000, 0x0100], Value::U64(1)),
    (U32, CDAB, &[0x0001, 0x0000], Value::U64(1)),
    (U32, DCBA, &[0x0100, 0x0000], Value::U64(1)),
    (I32, ABCD, &[0xF8A4, 0x32EB], Value::I64(-123456789)),
    (I32, BADC, &[0xA4F8, 0xEB32], Value::I64(-123456789)),
    (I32, CDAB, &[0x32EB, 0xF8A4], Value::I64(-123456789)),
    (I32, DCBA, &[0xEB32, 0xA4F8], Value::I64(-123456789)),
    (I32, ABCD, &[0x8000, 0x0000], Value::I64(-2147483648)),
    (I32, BADC, &[0x0080, 0x0000], Value::I64(-2147483648)),
    (I32, CDAB, &[0x0000, 0x8000], Value::I64(-2147483648)),
    (I32, DCBA, &[0x0000, 0x0080], Value::I64(-2147483648)),
    (I32, ABCD, &[0x7FFF, 0xFFFF], Value::I64(2147483647)),
    (I32, BADC, &[0xFF7F, 0xFFFF], Value::I64(2147483647)),
    (I32, CDAB, &[0xFFFF, 0x7FFF], Value::I64(2147483647)),
    (I32, DCBA, &[0xFFFF, 0xFF7F], Value::I64(2147483647)),
    (U64, ABCD, &[0x0123, 0x4567, 0x89AB, 0xCDEF], Value::U64(81985529216486895)),
    (U64, BADC, &[0x2301, 0x6745, 0xAB89, 0xEFCD], Value::U64(81985529216486895)),
    (U64, CDAB, &[0xCDEF, 0x89AB, 0x4567, 0x0123], Value::U64(81985529216486895)),
    (U64, DCBA, &[0xEFCD, 0xAB89, 0x6745, 0x2301], Value::U64(81985529216486895)),
    (U64, ABCD, &[0xFEDC, 0xBA98, 0x7654, 0x3210], Value::U64(18364758544493064720)),
    (U64, BADC, &[0xDCFE, 0x98BA, 0x5476, 0x1032], Value::U64(18364758544493064720)),
    (U64, CDAB, &[0x3210, 0x7654, 0xBA98, 0xFEDC], Value::U64(18364758544493064720)),
    (U64, DCBA, &[0x1032, 0x5476, 0x98BA, 0xDCFE], Value::U64(18364758544493064720)),
    (I64, ABCD, &[0xEEDD, 0xEF0B, 0x8216, 0x7EEB], Value::I64(-1234567890123456789)),
    (I64, BADC, &[0xDDEE, 0x0BEF, 0x1682, 0xEB7E], Value::I64(-1234567890123456789)),
    (I64, CDAB, &[0x7EEB, 0x8216, 0xEF0B, 0xEEDD], Value::I64(-1234567890123456789)),
    (I64, DCBA, &[0xEB7E, 0x1682, 0x0BEF, 0xDDEE], Value::I64(-1234567890123456789)),
    (I64, ABCD, &[0x8000, 0x0000, 0x0000, 0x0000], Value::I64(-9223372036854775808)),
    (I64, BADC, &[0x0080, 0x0000, 0x0000, 0x0000], Value::I64(-9223372036854775808)),
    (I64, CDAB, &[0x0000, 0x0000, 0x0000, 0x8000], Value::I64(-9223372036854775808)),
    (I64, DCBA, &[0x0000, 0x0000, 0x0000, 0x0080], Value::I64(-9223372036854775808)),
    (I64, ABCD, &[0x0000, 0x0000, 0x0000, 0x0002], Value::I64(2)),
    (I64, BADC, &[0x0000, 0x0000, 0x0000, 0x0200], Value::I64(2)),
    (I64, CDAB, &[0x0002, 0x0000, 0x0000, 0x0000], Value::I64(2)),
    (I64, DCBA, &[0x0200, 0x0000, 0x0000, 0x0000], Value::I64(2)),
    (F32, ABCD, &[0x41A4, 0x0000], Value::F64(20.5)),
    (F32, BADC, &[0xA441, 0x0000], Value::F64(20.5)),
    (F32, CDAB, &[0x0000, 0x41A4], Value::F64(20.5)),
    (F32, DCBA, &[0x0000, 0xA441], Value::F64(20.5)),
    (F32, ABCD, &[0xBFC0, 0x0000], Value::F64(-1.5)),
    (F32, BADC, &[0xC0BF, 0x0000], Value::F64(-1.5)),
    (F32, CDAB, &[0x0000, 0xBFC0], Value::F64(-1.5)),
    (F32, DCBA, &[0x0000, 0xC0BF], Value::F64(-1.5)),
    (F32, ABCD, &[0x4049, 0x0FD0], Value::F64(3.141590118408203)),
    (F32, BADC, &[0x4940, 0xD00F], Value::F64(3.141590118408203)),
    (F32, CDAB, &[0x0FD0, 0x4049], Value::F64(3.141590118408203)),
    (F32, DCBA, &[0xD00F, 0x4940], Value::F64(3.141590118408203)),
    (F32, ABCD, &[0x7F80, 0x0000], Value::F64(f64::INFINITY)),
    (F32, BADC, &[0x807F, 0x0000], Value::F64(f64::INFINITY)),
    (F32, CDAB, &[0x0000, 0x7F80], Value::F64(f64::INFINITY)),
    (F32, DCBA, &[0x0000, 0x807F], Value::F64(f64::INFINITY)),
    (F64, ABCD, &[0x4034, 0x8000, 0x0000, 0x0000], Value::F64(20.5)),
    (F64, BADC, &[0x3440, 0x0080, 0x0000, 0x0000], Value::F64(20.5)),
    (F64, CDAB, &[0x0000, 0x0000, 0x8000, 0x4034], Value::F64(20.5)),
    (F64, DCBA, &[0x0000, 0x0000, 0x0080, 0x3440], Value::F64(20.5)),
    (F64, ABCD, &[0xC05E, 0xDD2F, 0x1A9F, 0xBE77], Value::F64(-123.456)),
    (F64, BADC, &[0x5EC0, 0x2FDD, 0x9F1A, 0x77BE], Value::F64(-123.456)),
    (F64, CDAB, &[0xBE77, 0x1A9F, 0xDD2F, 0xC05E], Value::F64(-123.456)),
    (F64, DCBA, &[0x77BE, 0x9F1A, 0x2FDD, 0x5EC0], Value::F64(-123.456)),
    (F64, ABCD, &[0x01A5, 0x6E1F, 0xC2F8, 0xF359], Value::F64(1e-300)),
    (F64, BADC, &[0xA501, 0x1F6E, 0xF8C2, 0x59F3], Value::F64(1e-300)),
    (F64, CDAB, &[0xF359, 0xC2F8, 0x6E1F, 0x01A5], Value::F64(1e-300)),
    (F64, DCBA, &[0x59F3, 0xF8C2, 0x1F6E, 0xA501], Value::F64(1e-300)),
    (F64, ABCD, &[0xFFF0, 0x0000, 0x0000, 0x0000], Value::F64(f64::NEG_INFINITY)),
    (F64, BADC, &[0xF0FF, 0x0000, 0x0000, 0x0000], Value::F64(f64::NEG_INFINITY)),
    (F64, CDAB, &[0x0000, 0x0000, 0x0000, 0xFFF0], Value::F64(f64::NEG_INFINITY)),
    (F64, DCBA, &[0x0000, 0x0000, 0x0000, 0xF0FF], Value::F64(f64::NEG_INFINITY)),
];

/// f32 values are widened through their shortest decimal form, so compare them at
/// f32 precision; everything else exactly.
fn same_value(data_type: DataType, got: &Value, want: &Value) -> bool {
    match (data_type, got, want) {
        (F32, Value::F64(a), Value::F64(b)) => {
            (*a as f32).to_bits() == (*b as f32).to_bits() || (a.is_nan() && b.is_nan())
        }
        _ => got == want,
    }
}

#[test]
fn known_vectors_decode() {
    for (data_type, order, words, value) in VECTORS {
        let got = decode(*data_type, *order, words).unwrap();
        assert!(
            same_value(*data_type, &got, value),
            "{data_type} {order} {words:04X?}: {got:?} != {value:?}"
        );
    }
}

#[test]
fn f32_reads_as_its_shortest_decimal() {
    assert_eq!(decode(F32, ABCD, &[0x3F9D, 0xF3B6]), Ok(Value::F64(1.234)));
    assert_eq!(decode(F32, ABCD, &[0x41A0, 0xCCCD]), Ok(Value::F64(20.1)));
}

#[test]
fn known_vectors_encode() {
    for (data_type, order, words, value) in VECTORS {
        assert_eq!(
            encode(*data_type, *order, value).as_deref(),
            Ok(*words),
            "{data_type} {order} {value}"
        );
    }
}

#[test]
fn vectors_cover_every_numeric_type_and_order() {
    for data_type in [U16, I16, U32, I32, U64, I64, F32, F64] {
        for order in ORDERS {
            assert!(
                VECTORS
                    .iter()
                    .any(|(t, o, _, _)| *t == data_type && *o == order),
                "no vector for {data_type} {order}"
            );
        }
    }
}

#[test]
fn nan_round_trips_through_floats() {
    let words = encode(F32, ABCD, &Value::F64(f64::NAN)).unwrap();
    assert_eq!(words[0] & 0x7F80, 0x7F80, "exponent all ones: {words:04X?}");
    assert!(matches!(decode(F32, ABCD, &words), Ok(Value::F64(v)) if v.is_nan()));
    let words = encode(F64, DCBA, &Value::F64(f64::NAN)).unwrap();
    assert!(matches!(decode(F64, DCBA, &words), Ok(Value::F64(v)) if v.is_nan()));
    // Python: struct.pack('>f', float('nan')) == b'\x7f\xc0\x00\x00'
    assert!(matches!(decode(F32, CDAB, &[0x0000, 0x7FC0]), Ok(Value::F64(v)) if v.is_nan()));
}

#[test]
fn strings_follow_byte_swap_only() {
    let hello = Value::Text("HELLO".into());
    let plain: &[u16] = &[0x4845, 0x4C4C, 0x4F00];
    let swapped: &[u16] = &[0x4548, 0x4C4C, 0x004F];
    for (order, words) in [
        (ABCD, plain),
        (CDAB, plain),
        (BADC, swapped),
        (DCBA, swapped),
    ] {
        assert_eq!(
            decode(DataType::String(6), order, words),
            Ok(hello.clone()),
            "{order}"
        );
        assert_eq!(
            encode(DataType::String(6), order, &hello).as_deref(),
            Ok(words),
            "{order}"
        );
    }
}

#[test]
fn strings_are_trimmed_and_cut_at_nul() {
    let text = |len, words: &[u16]| decode(DataType::String(len), ABCD, words);
    let value = |s: &str| Ok(Value::Text(s.into()));
    assert_eq!(text(4, &[0x4142, 0x2020]), value("AB"), "trailing spaces");
    assert_eq!(
        text(4, &[0x2041, 0x4200]),
        value(" AB"),
        "leading space kept"
    );
    assert_eq!(
        text(4, &[0x4100, 0x4242]),
        value("A"),
        "ends at the first NUL"
    );
    assert_eq!(
        text(3, &[0x4142, 0x4344]),
        value("ABC"),
        "odd length ignores the last byte"
    );
    assert_eq!(text(2, &[0x0000]), value(""));
    assert_eq!(
        text(2, &[0xFF41]),
        value("\u{FFFD}A"),
        "invalid UTF-8 is replaced"
    );
    assert_eq!(text(2, &[0xC3A9]), value("é"));
}

#[test]
fn string_encoding_checks_length_and_nul() {
    let s = DataType::String(3);
    assert_eq!(
        encode(s, ABCD, &Value::Text("ABC".into())),
        Ok(vec![0x4142, 0x4300])
    );
    assert_eq!(encode(s, ABCD, &Value::Text("".into())), Ok(vec![0, 0]));
    assert_eq!(
        encode(s, ABCD, &Value::Text("ABCD".into())),
        Err(CodecError::TextTooLong {
            data_type: s,
            len: 4
        })
    );
    assert_eq!(
        encode(s, ABCD, &Value::Text("A\0B".into())),
        Err(CodecError::TextWithNul { data_type: s })
    );
    assert!(matches!(
        encode(s, ABCD, &Value::U64(1)),
        Err(CodecError::WrongType { .. })
    ));
}

#[test]
fn register_bits() {
    assert_eq!(decode_bit(0x8001, 0), Ok(Value::Bool(true)));
    assert_eq!(decode_bit(0x8001, 1), Ok(Value::Bool(false)));
    assert_eq!(decode_bit(0x8001, 15), Ok(Value::Bool(true)));
    assert_eq!(decode_bit(0x0400, 10), Ok(Value::Bool(true)));
    assert_eq!(decode_bit(0xFFFF, 16), Err(CodecError::BitOutOfRange(16)));
    assert_eq!(encode_bit(0x00F0, 0, true), Ok(0x00F1));
    assert_eq!(encode_bit(0x00F0, 4, false), Ok(0x00E0));
    assert_eq!(encode_bit(0x00F0, 15, true), Ok(0x80F0));
    assert_eq!(encode_bit(0, 16, true), Err(CodecError::BitOutOfRange(16)));
}

#[test]
fn bools_from_coils_and_registers() {
    assert_eq!(decode_coil(&[true]), Ok(Value::Bool(true)));
    assert_eq!(decode_coil(&[false]), Ok(Value::Bool(false)));
    assert!(matches!(decode_coil(&[]), Err(CodecError::Length { .. })));
    assert!(matches!(
        decode_coil(&[true, false]),
        Err(CodecError::Length { .. })
    ));
    assert_eq!(
        decode(DataType::Bool, ABCD, &[0x0004]),
        Ok(Value::Bool(true))
    );
    assert_eq!(decode(DataType::Bool, DCBA, &[0]), Ok(Value::Bool(false)));
    assert_eq!(
        encode(DataType::Bool, ABCD, &Value::Bool(true)),
        Ok(vec![1])
    );
    assert_eq!(
        encode(DataType::Bool, ABCD, &Value::Bool(false)),
        Ok(vec![0])
    );
    assert_eq!(encode(DataType::Bool, ABCD, &Value::U64(1)), Ok(vec![1]));
    assert_eq!(encode(DataType::Bool, ABCD, &Value::I64(0)), Ok(vec![0]));
    assert!(matches!(
        encode(DataType::Bool, ABCD, &Value::U64(2)),
        Err(CodecError::WrongType { .. })
    ));
    assert!(matches!(
        encode(DataType::Bool, ABCD, &Value::Text("true".into())),
        Err(CodecError::WrongType { .. })
    ));
}

#[test]
fn wrong_register_count_is_an_error() {
    assert_eq!(
        decode(F32, ABCD, &[0x41A4]),
        Err(CodecError::Length {
            data_type: F32,
            expected: 2,
            actual: 1
        })
    );
    assert!(decode(U64, ABCD, &[0; 5]).is_err());
    assert!(decode(U16, ABCD, &[]).is_err());
    assert!(decode(DataType::String(5), ABCD, &[0; 2]).is_err());
    let message = decode(F64, ABCD, &[0; 2]).unwrap_err().to_string();
    assert_eq!(message, "f64 occupies 4 register(s), got 2");
}

#[test]
fn integer_range_errors_name_the_type_and_range() {
    let cases: &[(DataType, Value, &str)] = &[
        (U16, Value::U64(65536), "65536 is out of range for u16 (0 to 65535)"),
        (U16, Value::I64(-1), "-1 is out of range for u16 (0 to 65535)"),
        (I16, Value::I64(-32769), "-32769 is out of range for i16 (-32768 to 32767)"),
        (I16, Value::U64(32768), "32768 is out of range for i16 (-32768 to 32767)"),
        (U32, Value::F64(4294967296.0), "4294967296 is out of range for u32 (0 to 4294967295)"),
        (I32, Value::I64(2147483648), "2147483648 is out of range for i32 (-2147483648 to 2147483647)"),
        (U64, Value::I64(-5), "-5 is out of range for u64 (0 to 18446744073709551615)"),
        (U64, Value::F64(18446744073709551616.0), "18446744073709551616 is out of range for u64 (0 to 18446744073709551615)"),
        (I64, Value::U64(1 << 63), "9223372036854775808 is out of range for i64 (-9223372036854775808 to 9223372036854775807)"),
        (U16, Value::F64(1e300), "1e300 is out of range for u16 (0 to 65535)"),
        (U16, Value::F64(2.5), "2.5 is not a whole number, u16 takes whole numbers (0 to 65535)"),
        (I32, Value::F64(-0.1), "-0.1 is not a whole number, i32 takes whole numbers (-2147483648 to 2147483647)"),
        (I16, Value::F64(f64::NAN), "NaN is not a whole number, i16 takes whole numbers (-32768 to 32767)"),
        (U32, Value::F64(f64::INFINITY), "inf is not a whole number, u32 takes whole numbers (0 to 4294967295)"),
        (U16, Value::Bool(true), "u16 expects a number, got a bool"),
        (I64, Value::Text("1".into()), "i64 expects a number, got a string"),
        (F32, Value::F64(1e39), "1e39 is out of range for f32 (-3.4028235e38 to 3.4028235e38)"),
        (F32, Value::F64(-1e39), "-1e39 is out of range for f32 (-3.4028235e38 to 3.4028235e38)"),
        (F64, Value::Bool(false), "f64 expects a number, got a bool"),
    ];
    for (data_type, value, message) in cases {
        let error = encode(*data_type, ABCD, value).expect_err(message);
        assert_eq!(error.to_string(), *message);
    }
}

#[test]
fn integer_types_accept_whole_floats_and_extremes() {
    assert_eq!(encode(U16, ABCD, &Value::F64(65535.0)), Ok(vec![0xFFFF]));
    assert_eq!(encode(I16, ABCD, &Value::F64(-32768.0)), Ok(vec![0x8000]));
    assert_eq!(encode(I16, ABCD, &Value::U64(5)), Ok(vec![0x0005]));
    assert_eq!(
        encode(U64, ABCD, &Value::U64(u64::MAX)),
        Ok(vec![0xFFFF; 4])
    );
    assert_eq!(
        encode(I64, ABCD, &Value::I64(i64::MIN)),
        Ok(vec![0x8000, 0, 0, 0])
    );
    assert_eq!(encode(F32, ABCD, &Value::U64(20)), Ok(vec![0x41A0, 0x0000]));
    assert_eq!(
        encode(F32, ABCD, &Value::F64(f64::NEG_INFINITY)),
        Ok(vec![0xFF80, 0x0000])
    );
}

/// Random registers decode and re-encode to the same registers, for every numeric
/// type and order (float NaN payloads are covered separately).
#[test]
fn random_registers_round_trip() {
    let mut rng = StdRng::seed_from_u64(0x5EED_0001);
    for data_type in [U16, I16, U32, I32, U64, I64, F32, F64] {
        for order in ORDERS {
            for _ in 0..2000 {
                let words: Vec<u16> = (0..data_type.register_count()).map(|_| rng.gen()).collect();
                let value = decode(data_type, order, &words).unwrap();
                if matches!(value, Value::F64(v) if v.is_nan()) {
                    continue;
                }
                assert_eq!(
                    encode(data_type, order, &value).as_deref(),
                    Ok(&words[..]),
                    "{data_type} {order} {value}"
                );
            }
        }
    }
}

/// Random values encode and decode back to themselves.
#[test]
fn random_values_round_trip() {
    let mut rng = StdRng::seed_from_u64(0x5EED_0002);
    for order in ORDERS {
        for _ in 0..2000 {
            let values = [
                (U16, Value::U64(rng.gen::<u16>().into())),
                (I16, Value::I64(rng.gen::<i16>().into())),
                (U32, Value::U64(rng.gen::<u32>().into())),
                (I32, Value::I64(rng.gen::<i32>().into())),
                (U64, Value::U64(rng.gen())),
                (I64, Value::I64(rng.gen())),
                (
                    F32,
                    Value::F64(f32::from_bits(rng.gen_range(0..0x7F80_0000)).into()),
                ),
                (F64, Value::F64(rng.gen_range(-1e12..1e12))),
            ];
            for (data_type, value) in values {
                let words = encode(data_type, order, &value).unwrap();
                let got = decode(data_type, order, &words).unwrap();
                assert!(
                    same_value(data_type, &got, &value),
                    "{data_type} {order}: {got:?} != {value:?}"
                );
                // And it encodes back to the very same registers.
                assert_eq!(encode(data_type, order, &got).unwrap(), words);
            }
            let len = rng.gen_range(1..=20u16);
            let text: String = (0..rng.gen_range(0..=len))
                .map(|_| rng.gen_range(b'!'..=b'~') as char)
                .collect();
            let value = Value::Text(text);
            let words = encode(DataType::String(len), order, &value).unwrap();
            assert_eq!(decode(DataType::String(len), order, &words), Ok(value));
        }
    }
}

#[test]
fn scale_and_offset_on_read() {
    assert_eq!(
        apply_scale(Value::U64(2150), 0.01, 0.0),
        Ok(Value::F64(21.5))
    );
    assert_eq!(apply_scale(Value::U64(3), 0.1, 0.0), Ok(Value::F64(0.3)));
    assert_eq!(
        apply_scale(Value::I64(-40), 0.5, 10.0),
        Ok(Value::F64(-10.0))
    );
    assert_eq!(apply_scale(Value::U64(7), 10.0, -1.0), Ok(Value::F64(69.0)));
    assert_eq!(
        apply_scale(Value::I64(123), -0.1, 0.0),
        Ok(Value::F64(-12.3))
    );
    assert_eq!(
        apply_scale(Value::F64(1.5), 2.0, 0.25),
        Ok(Value::F64(3.25))
    );
    assert_eq!(
        apply_scale(Value::U64(u64::MAX), 1.0, 0.0),
        Ok(Value::U64(u64::MAX))
    );
    assert_eq!(
        apply_scale(Value::Bool(true), 1.0, 0.0),
        Ok(Value::Bool(true))
    );
    assert_eq!(
        apply_scale(Value::Text("x".into()), 2.0, 0.0)
            .unwrap_err()
            .to_string(),
        "scale and offset apply to numbers only, not to a string"
    );
}

#[test]
fn scale_and_offset_on_write() {
    assert_eq!(
        remove_scale(U16, &Value::F64(21.5), 0.01, 0.0),
        Ok(Value::U64(2150))
    );
    assert_eq!(
        remove_scale(U16, &Value::F64(21.504), 0.01, 0.0),
        Ok(Value::U64(2150))
    );
    assert_eq!(
        remove_scale(U16, &Value::F64(21.505), 0.01, 0.0),
        Ok(Value::U64(2151))
    );
    assert_eq!(
        remove_scale(I16, &Value::F64(-10.0), 0.5, 10.0),
        Ok(Value::I64(-40))
    );
    assert_eq!(
        remove_scale(I32, &Value::U64(50), 0.5, 0.0),
        Ok(Value::I64(100))
    );
    assert_eq!(
        remove_scale(F32, &Value::F64(25.0), 2.0, 5.0),
        Ok(Value::F64(10.0))
    );
    assert_eq!(
        remove_scale(U64, &Value::U64(u64::MAX), 1.0, 0.0),
        Ok(Value::U64(u64::MAX))
    );
    // Without scale the value is passed through: encode rejects fractions itself.
    assert_eq!(
        remove_scale(U16, &Value::F64(2.5), 1.0, 0.0),
        Ok(Value::F64(2.5))
    );
    assert_eq!(
        remove_scale(U16, &Value::F64(700.0), 0.01, 0.0)
            .unwrap_err()
            .to_string(),
        "70000 is out of range for u16 (0 to 65535)"
    );
    assert_eq!(
        remove_scale(U16, &Value::F64(-0.2), 0.1, 0.0)
            .unwrap_err()
            .to_string(),
        "-2 is out of range for u16 (0 to 65535)"
    );
    assert_eq!(
        remove_scale(U16, &Value::F64(1.0), 0.0, 1.0),
        Err(CodecError::ZeroScale)
    );
    assert!(matches!(
        remove_scale(U16, &Value::Bool(true), 2.0, 0.0),
        Err(CodecError::NotNumeric(_))
    ));
    assert!(matches!(
        remove_scale(DataType::Bool, &Value::U64(1), 2.0, 0.0),
        Err(CodecError::NotNumeric(_))
    ));
}

#[test]
fn scaled_values_round_trip_within_half_a_step() {
    let mut rng = StdRng::seed_from_u64(0x5EED_0003);
    for _ in 0..5000 {
        let scale = [0.1, 0.01, 0.5, 2.0, 0.001, -0.1][rng.gen_range(0..6)];
        let offset = rng.gen_range(-100.0..100.0);
        let raw: i16 = rng.gen();
        let engineering = apply_scale(Value::I64(raw.into()), scale, offset).unwrap();
        assert_eq!(
            remove_scale(I16, &engineering, scale, offset),
            Ok(Value::I64(raw.into())),
            "raw {raw} scale {scale} offset {offset}"
        );
    }
}

#[test]
fn change_detection() {
    use Value::{Bool, Text, F64 as F, I64 as I, U64 as U};
    assert!(!changed(&U(5), &U(5), None));
    assert!(changed(&U(5), &U(6), None));
    assert!(
        !changed(&U(5), &U(6), Some(1.0)),
        "a change equal to the deadband is not enough"
    );
    assert!(changed(&U(5), &U(7), Some(1.0)));
    assert!(changed(&U(7), &U(5), Some(1.0)), "both directions");
    assert!(
        changed(&U(u64::MAX), &U(u64::MAX - 1), None),
        "exact beyond 2^53"
    );
    assert!(changed(&I(-3), &U(3), Some(5.0)));
    assert!(!changed(&F(20.0), &F(20.04), Some(0.05)));
    assert!(changed(&F(20.0), &F(20.06), Some(0.05)));
    assert!(changed(&F(20.0), &F(19.94), Some(0.05)));
    assert!(changed(&F(20.0), &F(20.0000001), None));
    assert!(!changed(&F(f64::NAN), &F(f64::NAN), None));
    assert!(changed(&F(f64::NAN), &F(1.0), Some(100.0)));
    assert!(changed(&F(1.0), &F(f64::NAN), Some(100.0)));
    assert!(!changed(&Bool(true), &Bool(true), Some(1.0)));
    assert!(changed(&Bool(true), &Bool(false), Some(1.0)));
    assert!(!changed(&Text("a".into()), &Text("a".into()), None));
    assert!(changed(&Text("a".into()), &Text("b".into()), Some(10.0)));
    assert!(changed(&Bool(true), &U(1), None), "a change of kind");
}

#[test]
fn values_are_json_scalars() {
    let json = |v: Value| serde_json::to_string(&v).unwrap();
    assert_eq!(json(Value::Bool(true)), "true");
    assert_eq!(json(Value::U64(u64::MAX)), "18446744073709551615");
    assert_eq!(json(Value::I64(-7)), "-7");
    assert_eq!(json(Value::F64(21.5)), "21.5");
    assert_eq!(json(Value::F64(f64::NAN)), "null");
    assert_eq!(json(Value::Text("ok \"x\"".into())), r#""ok \"x\"""#);

    let from = |text: &str| Value::from_json(&serde_json::from_str(text).unwrap());
    assert_eq!(from("22.5"), Some(Value::F64(22.5)));
    assert_eq!(from("22"), Some(Value::U64(22)));
    assert_eq!(from("-22"), Some(Value::I64(-22)));
    assert_eq!(from("true"), Some(Value::Bool(true)));
    assert_eq!(from(r#""heat""#), Some(Value::Text("heat".into())));
    assert_eq!(from("null"), None);
    assert_eq!(from("[1]"), None);
    assert_eq!(from("{}"), None);
}
