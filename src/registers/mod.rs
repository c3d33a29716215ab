//! Register data types and their codecs: how tag values are laid out in Modbus
//! coils and 16-bit registers, for reading (decode) and writing (encode).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer};

pub mod codec;

pub use codec::{
    apply_scale, changed, decode, decode_bit, decode_coil, encode, encode_bit, remove_scale,
    CodecError, Value,
};

/// The four Modbus data tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RegisterKind {
    Coil,
    #[serde(alias = "discrete_input")]
    Discrete,
    Holding,
    Input,
}

impl RegisterKind {
    /// Coils and discrete inputs hold single bits; the others 16-bit words.
    pub fn is_bit(self) -> bool {
        matches!(self, RegisterKind::Coil | RegisterKind::Discrete)
    }

    /// Only coils and holding registers can be written.
    pub fn is_writable(self) -> bool {
        matches!(self, RegisterKind::Coil | RegisterKind::Holding)
    }

    /// The Modbus function code that reads this table (01, 02, 03 or 04).
    pub fn read_function_code(self) -> u8 {
        match self {
            RegisterKind::Coil => 1,
            RegisterKind::Discrete => 2,
            RegisterKind::Holding => 3,
            RegisterKind::Input => 4,
        }
    }

    /// The most items one read request may return (Modbus application protocol limits).
    pub fn max_read_count(self) -> u16 {
        if self.is_bit() {
            2000
        } else {
            125
        }
    }
}

impl fmt::Display for RegisterKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RegisterKind::Coil => "coil",
            RegisterKind::Discrete => "discrete",
            RegisterKind::Holding => "holding",
            RegisterKind::Input => "input",
        })
    }
}

/// A tag's value type. `String(n)` holds `n` bytes (two per register).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataType {
    Bool,
    U16,
    I16,
    U32,
    I32,
    U64,
    I64,
    F32,
    F64,
    String(u16),
}

impl DataType {
    /// How many 16-bit registers the value occupies (1 for bool: a bit of one register or one coil).
    pub fn register_count(self) -> u16 {
        match self {
            DataType::Bool | DataType::U16 | DataType::I16 => 1,
            DataType::U32 | DataType::I32 | DataType::F32 => 2,
            DataType::U64 | DataType::I64 | DataType::F64 => 4,
            DataType::String(len) => len.div_ceil(2),
        }
    }
}

impl FromStr for DataType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const ALLOWED: &str =
            "expected one of bool, u16, i16, u32, i32, u64, i64, f32, f64, string(N)";
        Ok(match s {
            "bool" => DataType::Bool,
            "u16" => DataType::U16,
            "i16" => DataType::I16,
            "u32" => DataType::U32,
            "i32" => DataType::I32,
            "u64" => DataType::U64,
            "i64" => DataType::I64,
            "f32" => DataType::F32,
            "f64" => DataType::F64,
            other => {
                let len = other
                    .strip_prefix("string(")
                    .and_then(|rest| rest.strip_suffix(')'))
                    .ok_or_else(|| format!("unknown type `{other}`, {ALLOWED}"))?;
                let len: u16 = len
                    .trim()
                    .parse()
                    .map_err(|_| format!("bad string length in `{other}`, {ALLOWED}"))?;
                if len == 0 || len > 250 {
                    return Err(format!(
                        "string length {len} in `{other}` must be 1 to 250 bytes"
                    ));
                }
                DataType::String(len)
            }
        })
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DataType::Bool => f.write_str("bool"),
            DataType::U16 => f.write_str("u16"),
            DataType::I16 => f.write_str("i16"),
            DataType::U32 => f.write_str("u32"),
            DataType::I32 => f.write_str("i32"),
            DataType::U64 => f.write_str("u64"),
            DataType::I64 => f.write_str("i64"),
            DataType::F32 => f.write_str("f32"),
            DataType::F64 => f.write_str("f64"),
            DataType::String(n) => write!(f, "string({n})"),
        }
    }
}

impl<'de> Deserialize<'de> for DataType {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Byte and word order of multi-register values, named by where the bytes of the
/// big-endian value `A B C D` land in the registers. For 64-bit values the same
/// names apply to all four words (`CDAB` reverses the word order), and the
/// eight-letter names are accepted as aliases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
pub enum WordOrder {
    /// Big-endian words, big-endian bytes (the Modbus standard).
    #[default]
    #[serde(alias = "ABCDEFGH")]
    ABCD,
    /// Big-endian words, bytes swapped within each word.
    #[serde(alias = "BADCFEHG")]
    BADC,
    /// Little-endian words (word swap), big-endian bytes.
    #[serde(alias = "GHEFCDAB")]
    CDAB,
    /// Fully little-endian.
    #[serde(alias = "HGFEDCBA")]
    DCBA,
}

impl WordOrder {
    pub fn swaps_bytes(self) -> bool {
        matches!(self, WordOrder::BADC | WordOrder::DCBA)
    }

    pub fn swaps_words(self) -> bool {
        matches!(self, WordOrder::CDAB | WordOrder::DCBA)
    }
}

impl fmt::Display for WordOrder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}
