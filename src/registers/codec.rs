//! Conversions between register contents and typed values: decode (read), encode
//! (write), engineering scale and offset, and the on-change comparison.
//!
//! Everything here is a pure function of its arguments.

use std::fmt;

use serde::Serialize;
use thiserror::Error;

use super::{DataType, WordOrder};

/// A decoded tag value. Serializes to the natural JSON value (bool, number, string).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Value {
    Bool(bool),
    U64(u64),
    I64(i64),
    /// Floats; NaN and the infinities serialize as JSON `null`.
    F64(f64),
    Text(String),
}

impl Value {
    /// The numeric value, if this is a number (large 64-bit integers lose precision).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::U64(v) => Some(v as f64),
            Value::I64(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            Value::Bool(_) | Value::Text(_) => None,
        }
    }

    /// Converts a JSON scalar (for example a command's `value`); arrays, objects and
    /// `null` have no register representation.
    pub fn from_json(json: &serde_json::Value) -> Option<Value> {
        match json {
            serde_json::Value::Bool(b) => Some(Value::Bool(*b)),
            serde_json::Value::Number(n) => n
                .as_u64()
                .map(Value::U64)
                .or_else(|| n.as_i64().map(Value::I64))
                .or_else(|| n.as_f64().map(Value::F64)),
            serde_json::Value::String(s) => Some(Value::Text(s.clone())),
            serde_json::Value::Null
            | serde_json::Value::Array(_)
            | serde_json::Value::Object(_) => None,
        }
    }

    /// What kind of value this is, for error messages.
    fn kind(&self) -> &'static str {
        match self {
            Value::Bool(_) => "a bool",
            Value::U64(_) | Value::I64(_) | Value::F64(_) => "a number",
            Value::Text(_) => "a string",
        }
    }

    /// Integer view, exact for every integer variant.
    fn as_i128(&self) -> Option<i128> {
        match *self {
            Value::U64(v) => Some(v.into()),
            Value::I64(v) => Some(v.into()),
            _ => None,
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Bool(v) => write!(f, "{v}"),
            Value::U64(v) => write!(f, "{v}"),
            Value::I64(v) => write!(f, "{v}"),
            Value::F64(v) => write!(f, "{v}"),
            Value::Text(v) => write!(f, "{v:?}"),
        }
    }
}

/// Why a value could not be decoded or encoded.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum CodecError {
    #[error("{data_type} occupies {expected} register(s), got {actual}")]
    Length {
        data_type: DataType,
        expected: usize,
        actual: usize,
    },
    #[error("{value} is out of range for {data_type} ({range})")]
    OutOfRange {
        data_type: DataType,
        value: String,
        range: &'static str,
    },
    #[error("{value} is not a whole number, {data_type} takes whole numbers ({range})")]
    NotIntegral {
        data_type: DataType,
        value: String,
        range: &'static str,
    },
    #[error("{data_type} expects {expected}, got {actual}")]
    WrongType {
        data_type: DataType,
        expected: &'static str,
        actual: &'static str,
    },
    #[error("text of {len} bytes does not fit {data_type}")]
    TextTooLong { data_type: DataType, len: usize },
    #[error("text for {data_type} must not contain NUL characters")]
    TextWithNul { data_type: DataType },
    #[error("bit {0} does not exist in a 16-bit register (0 to 15)")]
    BitOutOfRange(u8),
    #[error("scale must not be zero")]
    ZeroScale,
    #[error("scale and offset apply to numbers only, not to {0}")]
    NotNumeric(String),
}

/// The values an integer type holds, for range checks and error messages.
struct IntRange {
    min: i128,
    max: i128,
    text: &'static str,
}

const U16_RANGE: IntRange = IntRange {
    min: 0,
    max: u16::MAX as i128,
    text: "0 to 65535",
};
const I16_RANGE: IntRange = IntRange {
    min: i16::MIN as i128,
    max: i16::MAX as i128,
    text: "-32768 to 32767",
};
const U32_RANGE: IntRange = IntRange {
    min: 0,
    max: u32::MAX as i128,
    text: "0 to 4294967295",
};
const I32_RANGE: IntRange = IntRange {
    min: i32::MIN as i128,
    max: i32::MAX as i128,
    text: "-2147483648 to 2147483647",
};
const U64_RANGE: IntRange = IntRange {
    min: 0,
    max: u64::MAX as i128,
    text: "0 to 18446744073709551615",
};
const I64_RANGE: IntRange = IntRange {
    min: i64::MIN as i128,
    max: i64::MAX as i128,
    text: "-9223372036854775808 to 9223372036854775807",
};

fn integer_range(data_type: DataType) -> Option<&'static IntRange> {
    match data_type {
        DataType::U16 => Some(&U16_RANGE),
        DataType::I16 => Some(&I16_RANGE),
        DataType::U32 => Some(&U32_RANGE),
        DataType::I32 => Some(&I32_RANGE),
        DataType::U64 => Some(&U64_RANGE),
        DataType::I64 => Some(&I64_RANGE),
        DataType::Bool | DataType::F32 | DataType::F64 | DataType::String(_) => None,
    }
}

/// Bytes of the value, most significant first, into registers in `order`.
fn bytes_to_words(be_bytes: &[u8], order: WordOrder) -> Vec<u16> {
    let mut words: Vec<u16> = be_bytes
        .chunks_exact(2)
        .map(|pair| u16::from_be_bytes([pair[0], pair[1]]))
        .collect();
    if order.swaps_words() {
        words.reverse();
    }
    if order.swaps_bytes() {
        words.iter_mut().for_each(|w| *w = w.swap_bytes());
    }
    words
}

/// Inverse of [`bytes_to_words`]: the value's bytes, most significant first.
fn words_to_bytes<const N: usize>(words: &[u16], order: WordOrder) -> [u8; N] {
    let mut bytes = [0u8; N];
    for (i, &word) in words.iter().enumerate() {
        let word = if order.swaps_bytes() {
            word.swap_bytes()
        } else {
            word
        };
        let slot = if order.swaps_words() {
            words.len() - 1 - i
        } else {
            i
        };
        bytes[2 * slot..2 * slot + 2].copy_from_slice(&word.to_be_bytes());
    }
    bytes
}

/// Decodes a tag from its registers, exactly `data_type.register_count()` of them.
///
/// - Integers come out as [`Value::U64`] (unsigned types) or [`Value::I64`] (signed),
///   floats as [`Value::F64`].
/// - `order` names where the bytes of the big-endian value land: for one-register
///   types only the byte swap (`BADC`, `DCBA`) matters; 64-bit types apply the same
///   meaning over four words (`CDAB` = `GHEFCDAB`).
/// - `String(n)`: the first `n` bytes in register order, each register's bytes swapped
///   for `BADC` and `DCBA` (word order does not apply to text). The text ends at the
///   first NUL; trailing spaces are trimmed; invalid UTF-8 is replaced with U+FFFD so
///   that a device sending garbage still yields a readable value.
/// - `Bool` from a register is `register != 0`; a single bit of a register is
///   [`decode_bit`], a coil or discrete input is [`decode_coil`].
pub fn decode(data_type: DataType, order: WordOrder, words: &[u16]) -> Result<Value, CodecError> {
    let expected = usize::from(data_type.register_count());
    if words.len() != expected {
        return Err(CodecError::Length {
            data_type,
            expected,
            actual: words.len(),
        });
    }
    Ok(match data_type {
        DataType::Bool => Value::Bool(words[0] != 0),
        DataType::U16 => Value::U64(u16::from_be_bytes(words_to_bytes(words, order)).into()),
        DataType::I16 => Value::I64(i16::from_be_bytes(words_to_bytes(words, order)).into()),
        DataType::U32 => Value::U64(u32::from_be_bytes(words_to_bytes(words, order)).into()),
        DataType::I32 => Value::I64(i32::from_be_bytes(words_to_bytes(words, order)).into()),
        DataType::U64 => Value::U64(u64::from_be_bytes(words_to_bytes(words, order))),
        DataType::I64 => Value::I64(i64::from_be_bytes(words_to_bytes(words, order))),
        DataType::F32 => Value::F64(widen_f32(f32::from_be_bytes(words_to_bytes(words, order)))),
        DataType::F64 => Value::F64(f64::from_be_bytes(words_to_bytes(words, order))),
        DataType::String(len) => Value::Text(decode_text(len, order, words)),
    })
}

fn decode_text(len: u16, order: WordOrder, words: &[u16]) -> String {
    let mut bytes: Vec<u8> = words
        .iter()
        .flat_map(|&w| {
            if order.swaps_bytes() {
                w.to_le_bytes()
            } else {
                w.to_be_bytes()
            }
        })
        .take(usize::from(len))
        .collect();
    if let Some(nul) = bytes.iter().position(|&b| b == 0) {
        bytes.truncate(nul);
    }
    let text = String::from_utf8_lossy(&bytes);
    text.trim_end_matches(' ').to_owned()
}

/// A single bit of a register, `bit` 0 being the least significant of the register
/// value as transmitted (word order does not apply).
pub fn decode_bit(word: u16, bit: u8) -> Result<Value, CodecError> {
    if bit > 15 {
        return Err(CodecError::BitOutOfRange(bit));
    }
    Ok(Value::Bool(word & (1 << bit) != 0))
}

/// The value of a coil or discrete input tag (one bit of a bit-read response).
pub fn decode_coil(bits: &[bool]) -> Result<Value, CodecError> {
    match bits {
        [bit] => Ok(Value::Bool(*bit)),
        _ => Err(CodecError::Length {
            data_type: DataType::Bool,
            expected: 1,
            actual: bits.len(),
        }),
    }
}

/// `word` with `bit` set to `on`, for writing one bit of a holding register
/// (read-modify-write, or the masks of a mask-write request).
pub fn encode_bit(word: u16, bit: u8, on: bool) -> Result<u16, CodecError> {
    if bit > 15 {
        return Err(CodecError::BitOutOfRange(bit));
    }
    Ok(if on {
        word | (1 << bit)
    } else {
        word & !(1 << bit)
    })
}

/// Encodes a value into the registers of `data_type`: the exact inverse of [`decode`].
///
/// - Integer types take any number that is whole and within the type's range
///   (an error names the type and range otherwise); NaN and infinities are rejected.
/// - Float types take any number; NaN and the infinities are kept, a finite value
///   beyond the `f32` range is an error.
/// - `Bool` takes a bool, or the numbers 0 and 1, and encodes as one register 0 or 1
///   (a coil write uses `words[0] != 0`).
/// - `String(n)` takes text of at most `n` UTF-8 bytes without NUL characters, padded
///   with NULs to the full register count.
pub fn encode(
    data_type: DataType,
    order: WordOrder,
    value: &Value,
) -> Result<Vec<u16>, CodecError> {
    // The range checks in `integer_value` make the `as` conversions below lossless.
    let int = |range| integer_value(data_type, value, range);
    Ok(match data_type {
        DataType::Bool => vec![encode_bool(value)?],
        DataType::U16 => bytes_to_words(&(int(&U16_RANGE)? as u16).to_be_bytes(), order),
        DataType::I16 => bytes_to_words(&(int(&I16_RANGE)? as i16).to_be_bytes(), order),
        DataType::U32 => bytes_to_words(&(int(&U32_RANGE)? as u32).to_be_bytes(), order),
        DataType::I32 => bytes_to_words(&(int(&I32_RANGE)? as i32).to_be_bytes(), order),
        DataType::U64 => bytes_to_words(&(int(&U64_RANGE)? as u64).to_be_bytes(), order),
        DataType::I64 => bytes_to_words(&(int(&I64_RANGE)? as i64).to_be_bytes(), order),
        DataType::F32 => {
            let wide = float_value(data_type, value)?;
            let narrow = wide as f32;
            if narrow.is_infinite() && wide.is_finite() {
                return Err(CodecError::OutOfRange {
                    data_type,
                    value: show_float(wide),
                    range: "-3.4028235e38 to 3.4028235e38",
                });
            }
            bytes_to_words(&narrow.to_be_bytes(), order)
        }
        DataType::F64 => bytes_to_words(&float_value(data_type, value)?.to_be_bytes(), order),
        DataType::String(len) => encode_text(data_type, len, order, value)?,
    })
}

fn encode_bool(value: &Value) -> Result<u16, CodecError> {
    match value {
        Value::Bool(b) => Ok(u16::from(*b)),
        Value::U64(v @ (0 | 1)) => Ok(*v as u16),
        Value::I64(v @ (0 | 1)) => Ok(*v as u16),
        other => Err(CodecError::WrongType {
            data_type: DataType::Bool,
            expected: "true, false, 0 or 1",
            actual: other.kind(),
        }),
    }
}

/// The whole number `value` holds, checked against `min..=max`.
fn integer_value(data_type: DataType, value: &Value, range: &IntRange) -> Result<i128, CodecError> {
    let v = match *value {
        Value::U64(v) => i128::from(v),
        Value::I64(v) => i128::from(v),
        Value::F64(f) => {
            if !f.is_finite() || f.fract() != 0.0 {
                return Err(CodecError::NotIntegral {
                    data_type,
                    value: show_float(f),
                    range: range.text,
                });
            }
            // Whole floats beyond ±2^100 are far outside every range; below that the
            // conversion to i128 is exact.
            if f.abs() >= 2f64.powi(100) {
                return Err(CodecError::OutOfRange {
                    data_type,
                    value: show_float(f),
                    range: range.text,
                });
            }
            f as i128
        }
        Value::Bool(_) | Value::Text(_) => {
            return Err(CodecError::WrongType {
                data_type,
                expected: "a number",
                actual: value.kind(),
            })
        }
    };
    if v < range.min || v > range.max {
        return Err(CodecError::OutOfRange {
            data_type,
            value: v.to_string(),
            range: range.text,
        });
    }
    Ok(v)
}

/// Floats for error messages: plain decimals, exponent notation when huge or tiny.
fn show_float(f: f64) -> String {
    if f == 0.0 || (1e-6..1e16).contains(&f.abs()) || !f.is_finite() {
        f.to_string()
    } else {
        format!("{f:e}")
    }
}

fn float_value(data_type: DataType, value: &Value) -> Result<f64, CodecError> {
    value.as_f64().ok_or(CodecError::WrongType {
        data_type,
        expected: "a number",
        actual: value.kind(),
    })
}

fn encode_text(
    data_type: DataType,
    len: u16,
    order: WordOrder,
    value: &Value,
) -> Result<Vec<u16>, CodecError> {
    let Value::Text(text) = value else {
        return Err(CodecError::WrongType {
            data_type,
            expected: "a string",
            actual: value.kind(),
        });
    };
    if text.len() > usize::from(len) {
        return Err(CodecError::TextTooLong {
            data_type,
            len: text.len(),
        });
    }
    if text.contains('\0') {
        return Err(CodecError::TextWithNul { data_type });
    }
    let mut bytes = text.as_bytes().to_vec();
    bytes.resize(2 * usize::from(data_type.register_count()), 0);
    Ok(bytes
        .chunks(2)
        .map(|pair| {
            let word = u16::from_be_bytes([pair[0], pair[1]]);
            if order.swaps_bytes() {
                word.swap_bytes()
            } else {
                word
            }
        })
        .collect())
}

fn is_identity(scale: f64, offset: f64) -> bool {
    scale == 1.0 && offset == 0.0
}

/// The f64 nearest to the shortest decimal that reads back as `value`: a sensor's
/// 20.1f32 becomes 20.1 in JSON rather than 20.100000381469727, and encoding it
/// again gives back the same f32.
fn widen_f32(value: f32) -> f64 {
    if !value.is_finite() {
        return value.into();
    }
    let mut buffer = ryu::Buffer::new();
    buffer
        .format_finite(value)
        .parse()
        .unwrap_or_else(|_| value.into())
}

/// Engineering value from a decoded raw value: `raw * scale + offset`.
///
/// With scale 1 and offset 0 the value is returned unchanged (integers stay exact);
/// otherwise numbers become [`Value::F64`]. Bools and text accept only that identity.
pub fn apply_scale(raw: Value, scale: f64, offset: f64) -> Result<Value, CodecError> {
    if is_identity(scale, offset) {
        return Ok(raw);
    }
    let v = raw
        .as_f64()
        .ok_or_else(|| CodecError::NotNumeric(raw.kind().to_owned()))?;
    // Scales like 0.1 or 0.01 are not exact in binary: dividing by their whole-number
    // reciprocal gives the correctly rounded result (3 * 0.1 = 0.30000000000000004,
    // but 3 / 10 = 0.3), which is what users expect to see in the JSON.
    let inverse = 1.0 / scale;
    let scaled = if inverse.abs() >= 1.0 && inverse.round() == inverse {
        v / inverse
    } else {
        v * scale
    };
    Ok(Value::F64(scaled + offset))
}

/// Raw value to encode from an engineering value: `(value - offset) / scale`, rounded
/// to the nearest whole number (halves away from zero) for integer types and range
/// checked, ready for [`encode`].
///
/// With scale 1 and offset 0 the value is passed through unchanged, so that
/// [`encode`] sees (and rejects) non-integral values exactly as given.
pub fn remove_scale(
    data_type: DataType,
    value: &Value,
    scale: f64,
    offset: f64,
) -> Result<Value, CodecError> {
    if is_identity(scale, offset) {
        return Ok(value.clone());
    }
    if scale == 0.0 {
        return Err(CodecError::ZeroScale);
    }
    let v = value
        .as_f64()
        .ok_or_else(|| CodecError::NotNumeric(value.kind().to_owned()))?;
    let raw = (v - offset) / scale;
    let Some(range) = integer_range(data_type) else {
        return match data_type {
            DataType::F32 | DataType::F64 => Ok(Value::F64(raw)),
            _ => Err(CodecError::NotNumeric(data_type.to_string())),
        };
    };
    let whole = integer_value(data_type, &Value::F64(raw.round()), range)?;
    // In range for the type, so the conversions are lossless.
    Ok(if range.min == 0 {
        Value::U64(whole as u64)
    } else {
        Value::I64(whole as i64)
    })
}

/// Whether `new` differs from the last published `old` enough to publish again.
///
/// Numbers: `|new - old| > deadband`, or any difference without a deadband (two NaNs
/// count as equal, so a sensor stuck on NaN does not publish every poll). Bools, text,
/// and a change of kind: any difference.
pub fn changed(old: &Value, new: &Value, deadband: Option<f64>) -> bool {
    match (old.as_i128(), new.as_i128()) {
        // Both integers: exact, even beyond 2^53.
        (Some(a), Some(b)) => match deadband {
            Some(band) => ((b - a).unsigned_abs() as f64) > band,
            None => a != b,
        },
        _ => match (old.as_f64(), new.as_f64()) {
            (Some(a), Some(b)) => {
                if a.is_nan() || b.is_nan() {
                    a.is_nan() != b.is_nan()
                } else {
                    match deadband {
                        Some(band) => (b - a).abs() > band,
                        None => a != b,
                    }
                }
            }
            _ => old != new,
        },
    }
}

#[cfg(test)]
mod tests;
