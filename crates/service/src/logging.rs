//! Where log lines go: journald under systemd (through systemd-journal-logger, with
//! the priority of each level), human-readable lines on stderr elsewhere.

use serde::Deserialize;

/// The `log:` section of both programs' configuration files.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSection {
    /// A tracing filter: `info`, `debug`, `fieldbridge=debug,info`, ...
    #[serde(default = "default_log_level")]
    pub level: String,
    #[serde(default)]
    pub target: LogTarget,
}

fn default_log_level() -> String {
    "info".into()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogTarget {
    /// The journal when started by systemd, stderr otherwise.
    #[default]
    Auto,
    Stderr,
    Journald,
}

/// Sets up logging once per process. The level comes from `RUST_LOG` when set,
/// else from the config's `log.level` (default `info`).
pub fn init(section: Option<&LogSection>) {
    let level = section.map_or("info", |l| l.level.as_str());
    let target = section.map_or(LogTarget::Auto, |l| l.target);
    let journald = match target {
        LogTarget::Journald => true,
        LogTarget::Stderr => false,
        // systemd sets JOURNAL_STREAM when stderr is connected to the journal.
        LogTarget::Auto => systemd_journal_logger::connected_to_journal(),
    };
    if journald && init_journald(level) {
        return;
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// Sends every record to journald; tracing events reach it as `log` records (with
/// their fields, such as `device` and `bus`, written into the message).
fn init_journald(level: &str) -> bool {
    let Ok(journal) = systemd_journal_logger::JournalLog::new() else {
        return false;
    };
    if journal.install().is_err() {
        return false;
    }
    let level = std::env::var("RUST_LOG").unwrap_or_else(|_| level.to_owned());
    log::set_max_level(parse_level(&level));
    true
}

/// The most verbose level named in a filter such as `info` or `warn,fieldbridge=debug`.
fn parse_level(filter: &str) -> log::LevelFilter {
    filter
        .split(',')
        .filter_map(|part| {
            part.rsplit('=')
                .next()?
                .trim()
                .parse::<log::LevelFilter>()
                .ok()
        })
        .max()
        .unwrap_or(log::LevelFilter::Info)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn level_filters_map_to_the_most_verbose_level() {
        assert_eq!(parse_level("warn"), log::LevelFilter::Warn);
        assert_eq!(
            parse_level("warn,fieldbridge=debug"),
            log::LevelFilter::Debug
        );
        assert_eq!(parse_level("nonsense"), log::LevelFilter::Info);
    }
}
