//! Durations (`500ms`, `30s`) and sizes (`256MiB`, `64KiB`, `1GB`) in both programs'
//! configuration files, with one grammar:
//! - a duration has a unit (`ms`, `s`, `m`, `h`, `d`, combinable as `1h 30m`); a bare number
//!   other than `0` is refused, because `timeout: 500` reads as milliseconds to some and
//!   seconds to others;
//! - a size is a whole number of bytes, or a number with a unit: `B`, `KB`/`kB`, `MB`, `GB`,
//!   `TB` (powers of 1000) or `KiB`, `MiB`, `GiB`, `TiB` (powers of 1024).

use std::fmt;
use std::ops::Deref;
use std::str::FromStr;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// A span of time written with a unit: `500ms`, `30s`, `1m`, `2h`, `1h 30m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration(pub std::time::Duration);

impl Duration {
    pub const fn from_millis(ms: u64) -> Self {
        Duration(std::time::Duration::from_millis(ms))
    }

    pub const fn from_secs(secs: u64) -> Self {
        Duration(std::time::Duration::from_secs(secs))
    }

    pub const fn get(self) -> std::time::Duration {
        self.0
    }
}

impl Deref for Duration {
    type Target = std::time::Duration;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl From<Duration> for std::time::Duration {
    fn from(d: Duration) -> Self {
        d.0
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&humantime::format_duration(self.0), f)
    }
}

const DURATION_HELP: &str =
    "expected a number with a unit (ms, s, m, h, d), e.g. 500ms, 30s, 1m, 2h";

impl FromStr for Duration {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let trimmed = text.trim();
        if trimmed == "0" {
            return Ok(Duration::default());
        }
        if !trimmed.is_empty() && trimmed.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!(
                "`{trimmed}` has no unit, {DURATION_HELP} (`{trimmed}s` for seconds)"
            ));
        }
        humantime::parse_duration(trimmed)
            .map(Duration)
            .map_err(|_| format!("invalid duration `{trimmed}`, {DURATION_HELP}"))
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DurationVisitor;

        impl Visitor<'_> for DurationVisitor {
            type Value = Duration;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration with a unit, e.g. 500ms, 30s, 1m, 2h")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
                v.parse().map_err(E::custom)
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
                if v == 0 {
                    return Ok(Duration::default());
                }
                Err(E::custom(format!(
                    "`{v}` has no unit, {DURATION_HELP} (`{v}s` for seconds)"
                )))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
                Err(E::custom(format!(
                    "`{v}` is not a duration, {DURATION_HELP}"
                )))
            }

            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Duration, E> {
                Err(E::custom(format!(
                    "`{v}` is not a duration, {DURATION_HELP}"
                )))
            }
        }

        deserializer.deserialize_any(DurationVisitor)
    }
}

/// A number of bytes: a plain integer, or a number with a unit. Decimal units
/// (`KB`, `MB`, `GB`, `TB`) are powers of 1000, binary units (`KiB`, `MiB`, `GiB`,
/// `TiB`) powers of 1024; `B` means bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Size(pub u64);

impl Size {
    pub const fn bytes(self) -> u64 {
        self.0
    }

    pub const fn kib(n: u64) -> Self {
        Size(n * 1024)
    }

    pub const fn mib(n: u64) -> Self {
        Size(n * 1024 * 1024)
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(u64, &str); 4] = [
            (1 << 40, "TiB"),
            (1 << 30, "GiB"),
            (1 << 20, "MiB"),
            (1 << 10, "KiB"),
        ];
        for (factor, unit) in UNITS {
            if self.0 >= factor && self.0 % factor == 0 {
                return write!(f, "{}{unit}", self.0 / factor);
            }
        }
        write!(f, "{}B", self.0)
    }
}

const SIZE_HELP: &str = "expected bytes or a number with a unit: B, KB, MB, GB, TB (powers of 1000) or KiB, MiB, GiB, TiB (powers of 1024), e.g. 256MiB";

impl FromStr for Size {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let trimmed = text.trim();
        let split = trimmed
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(trimmed.len());
        let (number, unit) = trimmed.split_at(split);
        let invalid = || format!("invalid size `{trimmed}`, {SIZE_HELP}");
        let number: u64 = number.parse().map_err(|_| invalid())?;
        let factor: u64 = match unit.trim() {
            "" | "B" => 1,
            "KB" | "kB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            "TB" => 1_000_000_000_000,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            "TiB" => 1 << 40,
            _ => return Err(invalid()),
        };
        number
            .checked_mul(factor)
            .map(Size)
            .ok_or_else(|| format!("size `{trimmed}` is too large"))
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SizeVisitor;

        impl Visitor<'_> for SizeVisitor {
            type Value = Size;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size, e.g. 1024, 64KiB, 256MiB, 1GB")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Size, E> {
                v.parse().map_err(E::custom)
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Size, E> {
                Ok(Size(v))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Size, E> {
                u64::try_from(v)
                    .map(Size)
                    .map_err(|_| E::custom(format!("size `{v}` is negative, {SIZE_HELP}")))
            }

            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Size, E> {
                Err(E::custom(format!("size `{v}` is not whole, {SIZE_HELP}")))
            }
        }

        deserializer.deserialize_any(SizeVisitor)
    }
}

/// Reads a [`Duration`] into a `std::time::Duration` field:
/// `#[serde(deserialize_with = "fieldbridge_service::units::duration")]`.
pub fn duration<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<std::time::Duration, D::Error> {
    Duration::deserialize(deserializer).map(Duration::get)
}

/// Reads a [`Size`] into a `usize` field:
/// `#[serde(deserialize_with = "fieldbridge_service::units::size")]`.
pub fn size<'de, D: Deserializer<'de>>(deserializer: D) -> Result<usize, D::Error> {
    let size = Size::deserialize(deserializer)?;
    usize::try_from(size.bytes())
        .map_err(|_| de::Error::custom(format!("size `{size}` is too large for this machine")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(text: &str) -> u128 {
        text.parse::<Duration>().unwrap().as_millis()
    }

    #[test]
    fn durations_with_units() {
        assert_eq!(ms("500ms"), 500);
        assert_eq!(ms("30s"), 30_000);
        assert_eq!(ms("1m"), 60_000);
        assert_eq!(ms("2h"), 7_200_000);
        assert_eq!(ms("1h 30m"), 5_400_000);
        assert_eq!(ms("0s"), 0);
        assert_eq!(ms(" 5ms "), 5);
    }

    #[test]
    fn durations_without_unit_or_garbage_are_rejected() {
        let err = "30".parse::<Duration>().unwrap_err();
        assert!(err.contains("no unit") && err.contains("`30s`"), "{err}");
        for bad in ["", "fast", "5 parsecs", "-1s", "1.5.2s"] {
            let err = bad.parse::<Duration>().unwrap_err();
            assert!(err.contains("500ms, 30s"), "{bad}: {err}");
        }
    }

    #[test]
    fn duration_deserializes_from_yaml_and_rejects_bare_numbers() {
        let d: Duration = serde_yaml::from_str("250ms").unwrap();
        assert_eq!(d.get(), std::time::Duration::from_millis(250));
        let err = serde_yaml::from_str::<Duration>("30").unwrap_err();
        assert!(err.to_string().contains("has no unit"), "{err}");
        // Zero is zero in every unit.
        assert_eq!(
            serde_yaml::from_str::<Duration>("0").unwrap(),
            Duration::default()
        );
        assert_eq!("0".parse::<Duration>().unwrap(), Duration::default());
        assert_eq!(Duration::from_millis(1500).to_string(), "1s 500ms");
    }

    fn bytes(text: &str) -> u64 {
        text.parse::<Size>().unwrap().bytes()
    }

    #[test]
    fn sizes_with_units() {
        assert_eq!(bytes("1024"), 1024);
        assert_eq!(bytes("512B"), 512);
        assert_eq!(bytes("64KiB"), 65_536);
        assert_eq!(bytes("256MiB"), 268_435_456);
        assert_eq!(bytes("1GB"), 1_000_000_000);
        assert_eq!(bytes("2GiB"), 2_147_483_648);
        assert_eq!(bytes("10 kB"), 10_000);
        assert_eq!(bytes("1TiB"), 1 << 40);
    }

    #[test]
    fn bad_sizes_are_rejected() {
        for bad in ["", "MiB", "12 parsecs", "1.5MiB", "-3", "10mib"] {
            let err = bad.parse::<Size>().unwrap_err();
            assert!(err.contains("256MiB"), "{bad}: {err}");
        }
        let err = "99999999999TiB".parse::<Size>().unwrap_err();
        assert!(err.contains("too large"), "{err}");
    }

    #[test]
    fn size_deserializes_from_integers_and_text() {
        assert_eq!(serde_yaml::from_str::<Size>("4096").unwrap(), Size(4096));
        assert_eq!(serde_yaml::from_str::<Size>("1KiB").unwrap(), Size(1024));
        assert!(serde_yaml::from_str::<Size>("-1").is_err());
        assert_eq!(Size::mib(256).to_string(), "256MiB");
        assert_eq!(Size(1000).to_string(), "1000B");
    }
}
