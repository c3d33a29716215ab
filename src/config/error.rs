//! The one error type of configuration loading: where (file, line, column, key path)
//! and what is wrong, printed on one line.

use std::fmt;
use std::path::{Path, PathBuf};

/// A position in the configuration file, 1-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

/// Why a configuration file was rejected.
///
/// Displays as `FILE:LINE:COLUMN: KEY: message`, e.g.
/// `gateway.yaml:31:27: devices[0].registers[2].type: f32 does not fit a coil ...`.
/// The position or key is left out when it is unknown (an unreadable file has neither).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    pub position: Option<Position>,
    /// Key path like `devices[2].registers[0].type`; empty for the file as a whole.
    pub key: String,
    pub message: String,
}

impl ConfigError {
    pub(crate) fn new(
        file: &Path,
        position: Option<Position>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        ConfigError {
            file: file.to_path_buf(),
            position,
            key: key.into(),
            message: message.into(),
        }
    }

    pub fn line(&self) -> Option<usize> {
        self.position.map(|p| p.line)
    }

    pub fn column(&self) -> Option<usize> {
        self.position.map(|p| p.column)
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(Position { line, column }) = self.position {
            write!(f, ":{line}:{column}")?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_is_one_line_with_location_and_key() {
        let e = ConfigError::new(
            Path::new("gw.yaml"),
            Some(Position { line: 3, column: 9 }),
            "devices[0].poll",
            "must be longer than 0s",
        );
        assert_eq!(
            e.to_string(),
            "gw.yaml:3:9: devices[0].poll: must be longer than 0s"
        );
        let e = ConfigError::new(Path::new("gw.yaml"), None, "", "cannot read: gone");
        assert_eq!(e.to_string(), "gw.yaml: cannot read: gone");
    }
}
