//! Semantic checks after the file has been read into the schema: everything serde
//! cannot see (cross references, ranges, combinations of keys). Each error points at
//! the offending key through the source map.

mod device;

use std::collections::HashMap;
use std::path::Path;

use super::error::ConfigError;
use super::raw::BusKind;
use super::schema::{
    Bus, BusTransport, Config, LogSection, MqttVersion, QueueSection, TopicScheme, Upstream,
};
use super::source_map::{child, item, SourceMap};
use fieldbridge_service::units::Size;

/// Builds errors located through the source map.
pub(crate) struct Checker<'a> {
    file: &'a Path,
    map: &'a SourceMap,
}

type Check = Result<(), ConfigError>;

impl<'a> Checker<'a> {
    pub(crate) fn new(file: &'a Path, map: &'a SourceMap) -> Self {
        Checker { file, map }
    }

    /// An error about the value at `path` (or its nearest written ancestor).
    fn error(&self, path: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::new(self.file, self.map.locate(path), path, message)
    }

    /// An error about the key `path` itself (a key that should not be there).
    fn key_error(&self, path: &str, message: impl Into<String>) -> ConfigError {
        let position = self
            .map
            .key_position(path)
            .or_else(|| self.map.locate(path));
        ConfigError::new(self.file, position, path, message)
    }

    fn fail<T>(&self, path: &str, message: impl Into<String>) -> Result<T, ConfigError> {
        Err(self.error(path, message))
    }

    /// `line N` of `path`, for messages that refer to a second place in the file.
    fn line_of(&self, path: &str) -> String {
        match self.map.locate(path) {
            Some(at) => format!("line {}", at.line),
            None => path.to_owned(),
        }
    }

    /// Rejects keys of the mapping at `path` that are written but do not apply.
    fn reject_present(&self, path: &str, keys: &[&str], why: &str) -> Check {
        for key in self.map.keys(path) {
            if keys.contains(&key.as_str()) {
                return Err(self.key_error(&child(path, key), format!("`{key}` {why}")));
            }
        }
        Ok(())
    }
}

pub(crate) fn validate(config: &Config, checker: &Checker) -> Check {
    if let Some(upstream) = &config.upstream {
        check_upstream(checker, upstream)?;
    }
    check_queue(checker, &config.queue)?;
    if let Some(log) = &config.log {
        check_log(checker, log)?;
    }
    let buses = check_buses(checker, &config.buses)?;
    device::check_devices(checker, config, &buses)
}

/// An id as used in MQTT client ids and topics: `[A-Za-z0-9._-]{1,36}`.
fn check_identifier(checker: &Checker, path: &str, what: &str, value: &str) -> Check {
    if fieldbridge_mqtt::platform::valid_name(value) {
        Ok(())
    } else {
        checker.fail(
            path,
            format!(
                "{what} `{value}` is not allowed: use 1 to 36 of the characters A-Z a-z 0-9 . _ -"
            ),
        )
    }
}

fn check_upstream(checker: &Checker, upstream: &Upstream) -> Check {
    check_identifier(checker, "upstream.org", "org", &upstream.org)?;
    let keepalive = upstream.keepalive.get();
    if keepalive.subsec_nanos() != 0 || keepalive.as_secs() > u64::from(u16::MAX) {
        return checker.fail(
            "upstream.keepalive",
            format!(
                "keepalive {} is not allowed: use whole seconds from 1s to 65535s, or 0s to disable it",
                upstream.keepalive
            ),
        );
    }
    if upstream.max_inflight == 0 {
        return checker.fail("upstream.max_inflight", "must be at least 1");
    }
    if !(Size::kib(1)..=Size::mib(256)).contains(&upstream.max_inbound) {
        return checker.fail("upstream.max_inbound", "must be from 1KiB to 256MiB");
    }
    if let Some(tls) = &upstream.tls {
        if !upstream.url.tls {
            return checker.fail(
                "upstream.tls",
                format!(
                    "TLS settings need an mqtts:// url, but the url is {}",
                    upstream.url
                ),
            );
        }
        if tls.cert_file.is_some() != tls.key_file.is_some() {
            return checker.fail(
                "upstream.tls",
                "a client certificate needs both `cert_file` and `key_file`",
            );
        }
    }
    if upstream.protocol != MqttVersion::V5 {
        checker.reject_present(
            "upstream",
            &["session_expiry", "message_expiry"],
            "only applies with `protocol: \"5\"`",
        )?;
    } else if upstream.topic_scheme == TopicScheme::Sparkplug {
        return checker.fail(
            "upstream.protocol",
            "Sparkplug B 3.0 is specified on MQTT 3.1.1: use `protocol: \"3.1.1\"` with `topic_scheme: sparkplug`",
        );
    }
    for (key, value) in [
        ("upstream.session_expiry", upstream.session_expiry),
        ("upstream.message_expiry", upstream.message_expiry),
    ] {
        if let Some(value) = value {
            let duration = value.get();
            if duration.subsec_nanos() != 0
                || duration.as_secs() == 0
                || duration.as_secs() > u64::from(u32::MAX - 1)
            {
                return checker.fail(
                    key,
                    format!("{value} is not allowed: use whole seconds from 1s to 4294967294s"),
                );
            }
        }
    }
    if upstream.topic_scheme != TopicScheme::Sparkplug {
        checker.reject_present(
            "upstream",
            &["sparkplug"],
            "only applies with `topic_scheme: sparkplug`",
        )?;
    }
    if upstream.topic_scheme != TopicScheme::HomeAssistant {
        checker.reject_present(
            "upstream",
            &["homeassistant"],
            "only applies with `topic_scheme: homeassistant`",
        )?;
    }
    match upstream.topic_scheme {
        TopicScheme::Platform => checker.reject_present(
            "upstream",
            &["topics", "username"],
            "only applies with `topic_scheme: custom` (the platform scheme fixes client ids, topics and the username)",
        ),
        TopicScheme::HomeAssistant => {
            checker.reject_present(
                "upstream",
                &["topics", "username"],
                "only applies with `topic_scheme: custom` (Home Assistant's topics are fixed)",
            )?;
            let section = upstream.homeassistant.clone().unwrap_or_default();
            for (key, topic) in [
                ("discovery_prefix", &section.discovery_prefix),
                ("base_topic", &section.base_topic),
            ] {
                if topic.is_empty() || topic.contains(['+', '#']) || topic.starts_with('$') {
                    return checker.fail(
                        &format!("upstream.homeassistant.{key}"),
                        format!("{topic:?} must be a topic without wildcards, not empty, not starting with `$`"),
                    );
                }
            }
            Ok(())
        }
        TopicScheme::Sparkplug => {
            checker.reject_present(
                "upstream",
                &["topics", "username"],
                "only applies with `topic_scheme: custom` (Sparkplug fixes the edge node's topics)",
            )?;
            let Some(sparkplug) = &upstream.sparkplug else {
                return checker.fail(
                    "upstream.topic_scheme",
                    "`topic_scheme: sparkplug` needs `upstream.sparkplug` with `group_id` and `edge_node_id`",
                );
            };
            let ids = [
                ("group_id", Some(&sparkplug.group_id)),
                ("edge_node_id", Some(&sparkplug.edge_node_id)),
                ("primary_host_id", sparkplug.primary_host_id.as_ref()),
            ];
            for (key, id) in ids {
                if let Some(id) = id.filter(|id| id.is_empty() || id.contains(['/', '+', '#'])) {
                    return checker.fail(
                        &format!("upstream.sparkplug.{key}"),
                        format!("{id:?} must be a non-empty topic level (no `/`, `+` or `#`)"),
                    );
                }
            }
            Ok(())
        }
        TopicScheme::Custom => {
            let templates = upstream.topics.clone().unwrap_or_default();
            let base = ["org", "type", "device"];
            check_template(checker, "upstream.topics.client_id", &templates.client_id, &base, &["device"], false)?;
            check_template(checker, "upstream.topics.event", &templates.event, &[&base[..], &["event"]].concat(), &["device", "event"], true)?;
            check_template(checker, "upstream.topics.command", &templates.command, &[&base[..], &["command"]].concat(), &["device", "command"], true)?;
            if command_is_not_a_whole_level(&templates.command) {
                return checker.fail(
                    "upstream.topics.command",
                    "`{command}` must fill a whole topic level (the gateway subscribes with `+` in its place)",
                );
            }
            if let Some(username) = &upstream.username {
                check_template(checker, "upstream.username", username, &base, &[], false)?;
            }
            Ok(())
        }
    }
}

fn command_is_not_a_whole_level(template: &str) -> bool {
    !template.split('/').any(|level| level == "{command}")
}

/// Checks the `{placeholder}`s of a template: only `allowed` ones, all of `required`.
fn check_template(
    checker: &Checker,
    path: &str,
    template: &str,
    allowed: &[&str],
    required: &[&str],
    is_topic: bool,
) -> Check {
    let allowed_list = allowed
        .iter()
        .map(|p| format!("{{{p}}}"))
        .collect::<Vec<_>>()
        .join(", ");
    if template.is_empty() {
        return checker.fail(path, "must not be empty");
    }
    if is_topic && template.contains(['+', '#']) {
        return checker.fail(
            path,
            "a topic template may not contain the wildcards + or #",
        );
    }
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}') else {
            return checker.fail(path, format!("unclosed `{{` in `{template}`"));
        };
        let name = &rest[open + 1..open + close];
        if !allowed.contains(&name) {
            return checker.fail(
                path,
                format!("unknown placeholder `{{{name}}}`, allowed: {allowed_list}"),
            );
        }
        rest = &rest[open + close + 1..];
    }
    for name in required {
        if !template.contains(&format!("{{{name}}}")) {
            return checker.fail(path, format!("`{template}` must contain `{{{name}}}`"));
        }
    }
    Ok(())
}

/// Room for at least one message of the largest payload (128 KiB).
const MIN_QUEUE_BYTES: Size = Size::kib(128);

fn check_queue(checker: &Checker, queue: &QueueSection) -> Check {
    if queue.max_messages == 0 {
        return checker.fail("queue.max_messages", "must be at least 1");
    }
    if queue.max_bytes < MIN_QUEUE_BYTES {
        return checker.fail(
            "queue.max_bytes",
            format!(
                "{} is too small: the queue must hold at least one largest message ({MIN_QUEUE_BYTES})",
                queue.max_bytes
            ),
        );
    }
    if queue.commit_window.get() > std::time::Duration::from_secs(1) {
        return checker.fail(
            "queue.commit_window",
            format!(
                "{} is too long: QoS 1 events wait that long before they can be sent; use 0s to 1s",
                queue.commit_window
            ),
        );
    }
    Ok(())
}

fn check_log(checker: &Checker, log: &LogSection) -> Check {
    tracing_subscriber::EnvFilter::builder()
        .parse(&log.level)
        .map(drop)
        .or_else(|e| {
            checker.fail(
                "log.level",
                format!(
                    "`{}` is not a log filter ({e}); use a level (error, warn, info, debug, trace) or directives like `fieldbridge=debug,info`",
                    log.level
                ),
            )
        })
}

const MAX_LINE_LIMIT: Size = Size::mib(1);

/// Checks the buses and returns them by name.
fn check_buses<'c>(
    checker: &Checker,
    buses: &'c [Bus],
) -> Result<HashMap<&'c str, (usize, &'c Bus)>, ConfigError> {
    let mut by_name = HashMap::new();
    for (index, bus) in buses.iter().enumerate() {
        let path = item("buses", index);
        let kind = BusKind::of(&bus.transport);
        let allowed = kind.keys();
        for key in checker.map.keys(&path) {
            if !allowed.contains(&key.as_str()) {
                return Err(checker.key_error(
                    &child(&path, key),
                    format!(
                        "`{key}` does not apply to a bus of kind {}; it takes: {}",
                        kind.name(),
                        allowed.join(", ")
                    ),
                ));
            }
        }
        check_identifier(checker, &child(&path, "name"), "bus name", &bus.name)?;
        if let Some((first, _)) = by_name.insert(bus.name.as_str(), (index, bus)) {
            let first_path = item("buses", first);
            return checker.fail(
                &child(&path, "name"),
                format!(
                    "bus name `{}` is already used by {first_path} ({})",
                    bus.name,
                    checker.line_of(&first_path)
                ),
            );
        }
        check_transport(checker, &path, &bus.transport)?;
    }
    Ok(by_name)
}

fn check_transport(checker: &Checker, path: &str, transport: &BusTransport) -> Check {
    match transport {
        BusTransport::Rtu {
            baud,
            data_bits,
            stop_bits,
            ..
        }
        | BusTransport::SerialLine {
            baud,
            data_bits,
            stop_bits,
            ..
        } => {
            if *baud == 0 {
                return checker.fail(&child(path, "baud"), "baud must be more than 0, e.g. 9600");
            }
            if !(5..=8).contains(data_bits) {
                return checker.fail(
                    &child(path, "data_bits"),
                    format!("data_bits {data_bits} is not allowed, expected 5, 6, 7 or 8"),
                );
            }
            if !(1..=2).contains(stop_bits) {
                return checker.fail(
                    &child(path, "stop_bits"),
                    format!("stop_bits {stop_bits} is not allowed, expected 1 or 2"),
                );
            }
        }
        BusTransport::Tcp { host, .. } | BusTransport::RtuOverTcp { host, .. } => {
            if host.trim().is_empty() {
                return checker.fail(&child(path, "host"), "host must not be empty");
            }
        }
    }
    if let Some(timeout) = transport.timeout() {
        if timeout.is_zero() {
            return checker.fail(
                &child(path, "timeout"),
                "timeout must be longer than 0s, e.g. 500ms",
            );
        }
    }
    if let BusTransport::SerialLine { max_line, .. } = transport {
        if max_line.bytes() < 16 || *max_line > MAX_LINE_LIMIT {
            return checker.fail(
                &child(path, "max_line"),
                format!("max_line {max_line} is not allowed, expected 16B to {MAX_LINE_LIMIT}"),
            );
        }
    }
    Ok(())
}
