//! Flat forms of the file's tagged sections (buses by `kind`, line parsers by
//! `regex`/`json`), converted into the typed enums after deserialization. Keys that
//! do not belong to a bus's kind are reported with their exact position by the
//! validation pass, which reads the keys from the YAML itself.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer};
use serde::Deserialize;

use super::schema::{Bus, BusTransport, FieldType, LineParser, Parity};
use fieldbridge_service::units::{Duration, Size};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum BusKind {
    Rtu,
    Tcp,
    RtuOverTcp,
    SerialLine,
}

impl BusKind {
    pub(crate) fn of(transport: &BusTransport) -> Self {
        match transport {
            BusTransport::Rtu { .. } => BusKind::Rtu,
            BusTransport::Tcp { .. } => BusKind::Tcp,
            BusTransport::RtuOverTcp { .. } => BusKind::RtuOverTcp,
            BusTransport::SerialLine { .. } => BusKind::SerialLine,
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            BusKind::Rtu => "rtu",
            BusKind::Tcp => "tcp",
            BusKind::RtuOverTcp => "rtu-over-tcp",
            BusKind::SerialLine => "serial-line",
        }
    }

    /// The keys a bus of this kind accepts.
    pub(crate) fn keys(self) -> &'static [&'static str] {
        match self {
            BusKind::Rtu => &[
                "name",
                "kind",
                "port",
                "baud",
                "parity",
                "data_bits",
                "stop_bits",
                "timeout",
                "delay_between_requests",
            ],
            BusKind::Tcp | BusKind::RtuOverTcp => &[
                "name",
                "kind",
                "host",
                "port",
                "timeout",
                "delay_between_requests",
            ],
            BusKind::SerialLine => &[
                "name",
                "kind",
                "port",
                "baud",
                "parity",
                "data_bits",
                "stop_bits",
                "max_line",
            ],
        }
    }
}

/// `port` is a device path on serial buses and a number on TCP buses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PortValue {
    Path(String),
    Number(u16),
}

impl<'de> Deserialize<'de> for PortValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PortVisitor;

        impl de::Visitor<'_> for PortVisitor {
            type Value = PortValue;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a serial device path or a TCP port number")
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<PortValue, E> {
                u16::try_from(v).map(PortValue::Number).map_err(|_| {
                    E::custom(format!("port {v} is out of range, expected 1 to 65535"))
                })
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<PortValue, E> {
                Err(E::custom(format!(
                    "port {v} is out of range, expected 1 to 65535"
                )))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<PortValue, E> {
                Ok(PortValue::Path(v.to_owned()))
            }
        }

        deserializer.deserialize_any(PortVisitor)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBus {
    name: String,
    kind: BusKind,
    port: Option<PortValue>,
    host: Option<String>,
    baud: Option<u32>,
    parity: Option<Parity>,
    data_bits: Option<u8>,
    stop_bits: Option<u8>,
    timeout: Option<Duration>,
    delay_between_requests: Option<Duration>,
    max_line: Option<Size>,
}

const DEFAULT_BAUD: u32 = 9600;
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
const DEFAULT_MODBUS_TCP_PORT: u16 = 502;
const DEFAULT_MAX_LINE: Size = Size::kib(1);

impl TryFrom<RawBus> for Bus {
    type Error = String;

    fn try_from(raw: RawBus) -> Result<Self, Self::Error> {
        let kind = raw.kind.name();
        let serial_port = |port: Option<PortValue>| match port {
            Some(PortValue::Path(path)) => Ok(path),
            Some(PortValue::Number(n)) => Err(format!(
                "`port` of a {kind} bus is a serial device path like /dev/ttyUSB0, not {n}"
            )),
            None => Err(format!(
                "a bus of kind {kind} needs `port` (a serial device path like /dev/ttyUSB0)"
            )),
        };
        let tcp_port = |port: Option<PortValue>, default: Option<u16>| match (port, default) {
            (Some(PortValue::Number(n)), _) if n > 0 => Ok(n),
            (Some(PortValue::Number(n)), _) => {
                Err(format!("TCP port {n} is out of range, expected 1 to 65535"))
            }
            (Some(PortValue::Path(text)), _) => Err(format!(
                "`port` of a {kind} bus is a TCP port number, not `{text}`"
            )),
            (None, Some(default)) => Ok(default),
            (None, None) => Err(format!(
                "a bus of kind {kind} needs `port` (a TCP port number)"
            )),
        };
        let host =
            |host: Option<String>| host.ok_or_else(|| format!("a bus of kind {kind} needs `host`"));
        let transport = match raw.kind {
            BusKind::Rtu => BusTransport::Rtu {
                port: serial_port(raw.port)?,
                baud: raw.baud.unwrap_or(DEFAULT_BAUD),
                parity: raw.parity.unwrap_or_default(),
                data_bits: raw.data_bits.unwrap_or(8),
                stop_bits: raw.stop_bits.unwrap_or(1),
                timeout: raw.timeout.unwrap_or(DEFAULT_TIMEOUT),
                delay_between_requests: raw.delay_between_requests.unwrap_or_default(),
            },
            BusKind::Tcp => BusTransport::Tcp {
                host: host(raw.host)?,
                port: tcp_port(raw.port, Some(DEFAULT_MODBUS_TCP_PORT))?,
                timeout: raw.timeout.unwrap_or(DEFAULT_TIMEOUT),
                delay_between_requests: raw.delay_between_requests.unwrap_or_default(),
            },
            BusKind::RtuOverTcp => BusTransport::RtuOverTcp {
                host: host(raw.host)?,
                port: tcp_port(raw.port, None)?,
                timeout: raw.timeout.unwrap_or(DEFAULT_TIMEOUT),
                delay_between_requests: raw.delay_between_requests.unwrap_or_default(),
            },
            BusKind::SerialLine => BusTransport::SerialLine {
                port: serial_port(raw.port)?,
                baud: raw.baud.unwrap_or(DEFAULT_BAUD),
                parity: raw.parity.unwrap_or_default(),
                data_bits: raw.data_bits.unwrap_or(8),
                stop_bits: raw.stop_bits.unwrap_or(1),
                max_line: raw.max_line.unwrap_or(DEFAULT_MAX_LINE),
            },
        };
        Ok(Bus {
            name: raw.name,
            transport,
        })
    }
}

/// A regular expression, compiled while the file is read so that a bad pattern is
/// reported at its own key.
#[derive(Debug)]
pub(crate) struct Pattern(regex::Regex);

impl<'de> Deserialize<'de> for Pattern {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        regex::RegexBuilder::new(&text)
            .size_limit(1 << 20)
            .build()
            .map(Pattern)
            .map_err(|e| de::Error::custom(describe_regex_error(&e)))
    }
}

/// The regex crate explains syntax errors over several lines with a caret under the
/// pattern; fold that into one line with the character position.
fn describe_regex_error(error: &regex::Error) -> String {
    let text = error.to_string();
    let reason = text
        .lines()
        .rev()
        .find_map(|line| line.strip_prefix("error: "))
        .unwrap_or(text.lines().last().unwrap_or("invalid pattern"));
    let lines: Vec<&str> = text.lines().collect();
    let caret = lines
        .iter()
        .position(|line| line.trim_start().starts_with('^'))
        .filter(|&i| i >= 1);
    match caret {
        Some(i) => {
            let pattern_line = lines[i - 1];
            let indent = pattern_line.len() - pattern_line.trim_start().len();
            let column = lines[i].find('^').unwrap_or(indent).saturating_sub(indent) + 1;
            format!("invalid regex: {reason} (at character {column})")
        }
        None => format!("invalid regex: {reason}"),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLineParser {
    regex: Option<Pattern>,
    #[serde(default)]
    fields: BTreeMap<String, FieldType>,
    #[serde(default)]
    json: bool,
}

impl TryFrom<RawLineParser> for LineParser {
    type Error = String;

    fn try_from(raw: RawLineParser) -> Result<Self, Self::Error> {
        match (raw.regex, raw.json) {
            (Some(_), true) => {
                Err("a parser has either `regex` (with `fields`) or `json: true`, not both".into())
            }
            (Some(Pattern(regex)), false) => Ok(LineParser::Regex {
                regex,
                fields: raw.fields,
            }),
            (None, true) if raw.fields.is_empty() => Ok(LineParser::Json),
            (None, true) => {
                Err("`fields` only goes with `regex`; JSON lines keep their own types".into())
            }
            (None, false) => Err(
                "a parser needs `regex: PATTERN` (named groups, typed by `fields`) or `json: true`"
                    .into(),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regex_errors_fit_on_one_line() {
        // Built at run time: a literal bad pattern would be flagged at compile time.
        let pattern = ["^(?P<lat", "[0-9]+"].concat();
        let error = regex::Regex::new(&pattern).unwrap_err();
        let text = describe_regex_error(&error);
        assert!(!text.contains('\n'), "{text}");
        assert!(text.starts_with("invalid regex: "), "{text}");
        assert!(text.contains("at character"), "{text}");
    }
}
