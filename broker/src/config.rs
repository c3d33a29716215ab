//! The broker's configuration file (YAML) and its defaults.
//!
//! Every error names the file, and where the YAML parser can tell, the line, column and
//! key path of the offending value.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{self, Deserializer};
use serde::Deserialize;

use fieldbridge_service::logging::LogSection;
use fieldbridge_service::units;

pub use crate::session::QueueFullPolicy;

/// Everything that can be wrong with a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    /// A YAML or schema error; `message` carries line and column when known.
    #[error("{path}: {key}: {message}")]
    Parse {
        path: PathBuf,
        key: String,
        message: String,
    },
    /// A value that parses but is not acceptable.
    #[error("{origin}: {key}: {message}")]
    Invalid {
        origin: String,
        key: &'static str,
        message: String,
    },
}

/// `allow_anonymous`: which listeners accept clients that did not authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AnonymousPolicy {
    /// Anonymous clients only on listeners bound to a loopback address.
    #[default]
    Loopback,
    Always,
    Never,
}

impl<'de> Deserialize<'de> for AnonymousPolicy {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bool(bool),
            Word(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Bool(true) => Ok(AnonymousPolicy::Always),
            Raw::Bool(false) => Ok(AnonymousPolicy::Never),
            Raw::Word(word) if word == "loopback" => Ok(AnonymousPolicy::Loopback),
            Raw::Word(word) => Err(de::Error::custom(format!(
                "expected true, false or loopback, found {word:?}"
            ))),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerProtocol {
    #[default]
    Mqtt,
    Mqtts,
    Ws,
    Wss,
}

impl fmt::Display for ListenerProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ListenerProtocol::Mqtt => "mqtt",
            ListenerProtocol::Mqtts => "mqtts",
            ListenerProtocol::Ws => "ws",
            ListenerProtocol::Wss => "wss",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// `ADDR:PORT`; port 0 picks a free port.
    pub bind: SocketAddr,
    #[serde(default)]
    pub protocol: ListenerProtocol,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// TLS listeners: clients must show a certificate issued by this CA (PEM). Such a
    /// client counts as authenticated for `allow_anonymous`.
    pub client_ca_file: Option<PathBuf>,
}

impl ListenerConfig {
    /// A plain MQTT listener.
    pub fn mqtt(bind: SocketAddr) -> Self {
        Self {
            bind,
            protocol: ListenerProtocol::Mqtt,
            cert_file: None,
            key_file: None,
            client_ca_file: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Simultaneous client connections; more are closed at once.
    pub max_connections: usize,
    /// Largest PUBLISH payload accepted, in bytes; a larger packet closes the connection.
    #[serde(deserialize_with = "units::size")]
    pub max_payload: usize,
    /// QoS 1 and 2 messages in flight to one client.
    pub max_inflight: usize,
    /// Messages queued for one client beyond its in-flight window.
    pub max_queued_messages: usize,
    /// Bytes (topic and payload) queued for one client.
    #[serde(deserialize_with = "units::size")]
    pub max_queued_bytes: usize,
    /// Largest keepalive granted, in seconds; a client asking for more (or for none) is
    /// disconnected after 1.5 times this. MQTT 3.1.1 cannot tell the client.
    pub max_keepalive: u16,
    /// Time a new connection has to send its CONNECT.
    #[serde(deserialize_with = "units::duration")]
    pub connect_timeout: Duration,
    /// Sessions (connected or persistent) the broker keeps.
    pub max_sessions: usize,
    /// Subscriptions of one session; more are refused (SUBACK 0x80).
    pub max_subscriptions_per_session: usize,
    /// Distinct retained topics; a new retained topic beyond this is not stored.
    pub max_retained_messages: usize,
    /// Topic and payload bytes of all retained messages; a retained publish that would
    /// exceed it is not stored (it is still delivered to current subscribers).
    #[serde(deserialize_with = "units::size")]
    pub max_retained_bytes: usize,
    /// Levels of a topic or filter (`a/b/c` has 3): a deeper subscription is refused
    /// (SUBACK 0x80), a deeper PUBLISH or will topic closes the connection.
    pub max_topic_levels: usize,
    /// Largest packet accepted from a client, fixed header included; MQTT 5 clients are
    /// told in CONNACK, and a larger packet closes the connection (5: DISCONNECT 0x95).
    /// Default: `max_payload` plus room for the longest topic and its properties.
    pub max_packet_size: Option<units::Size>,
    /// QoS 2 messages a client may have awaiting PUBREL (MQTT 5's Receive Maximum, told
    /// to 5 clients); one more closes the connection (5: DISCONNECT 0x93).
    pub receive_maximum: u16,
    /// Topic aliases an MQTT 5 client may set, and the most the broker sets for one.
    pub topic_alias_maximum: u16,
    /// How long a connected client's full queue may hold publishers back (nothing taken
    /// from it) before the client is disconnected.
    #[serde(deserialize_with = "units::duration")]
    pub slow_subscriber_timeout: Duration,
    /// What a full queue of an absent client does with one more QoS 1 or 2 message:
    /// `drop_newest`, `drop_oldest`, or `backpressure` (its publishers wait, as for a
    /// connected client, for as long as the client stays away).
    pub on_queue_full: QueueFullPolicy,
    /// Longest Session Expiry Interval granted to a client (MQTT 5 clients are told);
    /// also bounds the sessions of 3.1.1 clients with clean session 0. None: no limit.
    pub max_session_expiry: Option<units::Duration>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 100_000,
            max_payload: 1024 * 1024,
            max_inflight: 32,
            max_queued_messages: 1000,
            max_queued_bytes: 8 * 1024 * 1024,
            max_keepalive: u16::MAX,
            connect_timeout: Duration::from_secs(10),
            max_sessions: 100_000,
            max_subscriptions_per_session: 10_000,
            max_retained_messages: 100_000,
            max_retained_bytes: 64 * 1024 * 1024,
            max_topic_levels: 128,
            max_packet_size: None,
            receive_maximum: 1000,
            topic_alias_maximum: 64,
            slow_subscriber_timeout: Duration::from_secs(60),
            on_queue_full: QueueFullPolicy::DropNewest,
            max_session_expiry: None,
        }
    }
}

/// How hard SQLite flushes each commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    /// fsync on every commit: survives a power cut.
    #[default]
    Full,
    /// fsync at WAL checkpoints: survives a process crash, maybe not a power cut.
    Normal,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PersistenceConfig {
    /// The SQLite database file (created if missing).
    pub path: PathBuf,
    #[serde(default)]
    pub synchronous: Synchronous,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// `user:hash` lines, managed with `fieldbridge-broker passwd`.
    pub password_file: Option<PathBuf>,
    /// Mosquitto `acl_file` syntax.
    pub acl_file: Option<PathBuf>,
    #[serde(default)]
    pub login_backoff: LoginBackoffConfig,
}

/// `auth.login_backoff`: how failed logins (password or platform token) slow down
/// further attempts from the same address or for the same user name.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoginBackoffConfig {
    /// Failed logins of an address or user name before its attempts are refused.
    pub after_failures: u32,
    /// Refusal period after the failure that reaches `after_failures`; each further
    /// failure doubles it.
    #[serde(deserialize_with = "units::duration")]
    pub delay: Duration,
    /// Longest refusal period.
    #[serde(deserialize_with = "units::duration")]
    pub max_delay: Duration,
    /// Failures are forgotten after this long without a new one.
    #[serde(deserialize_with = "units::duration")]
    pub forget_after: Duration,
    /// Addresses, and user names, remembered (each); a new one evicts the one whose
    /// last failure is oldest. 0 turns the backoff off.
    pub tracked: usize,
}

impl Default for LoginBackoffConfig {
    fn default() -> Self {
        Self {
            after_failures: 5,
            delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(10),
            forget_after: Duration::from_secs(600),
            tracked: 10_000,
        }
    }
}

/// The IoT platform mode's settings (`platform: { org, registry, ... }`).
pub use crate::platform::PlatformConfig;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Listeners of the file; `--listen` adds more. None at all means 127.0.0.1:1883.
    #[serde(default)]
    pub listeners: Vec<ListenerConfig>,
    #[serde(default)]
    pub allow_anonymous: AnonymousPolicy,
    #[serde(default)]
    pub limits: Limits,
    pub persistence: Option<PersistenceConfig>,
    #[serde(default)]
    pub auth: AuthConfig,
    /// Period of the `$SYS/broker/...` messages; 0 turns them off.
    #[serde(default = "default_sys_interval", deserialize_with = "units::duration")]
    pub sys_interval: Duration,
    pub platform: Option<PlatformConfig>,
    pub log: Option<LogSection>,
    /// Where to serve Prometheus metrics (`GET /metrics`), e.g. `127.0.0.1:9465`.
    pub metrics: Option<SocketAddr>,
    /// MQTT 5 request/response: the Response Information given to a client that asks
    /// for it, followed by its client id (e.g. `responses/` gives `responses/<id>/`).
    /// None: not given.
    pub response_information: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listeners: Vec::new(),
            allow_anonymous: AnonymousPolicy::default(),
            limits: Limits::default(),
            persistence: None,
            auth: AuthConfig::default(),
            sys_interval: default_sys_interval(),
            platform: None,
            log: None,
            metrics: None,
            response_information: None,
        }
    }
}

/// Where the broker listens when nothing else is configured.
pub const DEFAULT_LISTENER: &str = "127.0.0.1:1883";

fn default_sys_interval() -> Duration {
    Duration::from_secs(10)
}

impl Config {
    /// Reads and validates a configuration file. Relative paths inside it are taken
    /// relative to the file's directory.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            error: source,
        })?;
        let mut config = Self::parse(&text, path)?;
        if let Some(dir) = path.parent() {
            config.resolve_paths(dir);
        }
        config.validate(&path.display().to_string())?;
        Ok(config)
    }

    /// Parses YAML text; `path` only names the origin in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        let deserializer = serde_yaml::Deserializer::from_str(text);
        serde_path_to_error::deserialize(deserializer).map_err(|error| {
            let key = error.path().to_string();
            ConfigError::Parse {
                path: path.to_owned(),
                key: if key == "." {
                    "(top level)".into()
                } else {
                    key
                },
                message: error.into_inner().to_string(),
            }
        })
    }

    /// A configuration for tests and embedding: one plain listener on loopback with a
    /// port the system picks.
    pub fn ephemeral() -> Self {
        Self {
            listeners: vec![ListenerConfig::mqtt(SocketAddr::from(([127, 0, 0, 1], 0)))],
            ..Self::default()
        }
    }

    fn resolve_paths(&mut self, dir: &Path) {
        let resolve = |path: &mut PathBuf| {
            if path.is_relative() {
                *path = dir.join(&*path);
            }
        };
        if let Some(persistence) = &mut self.persistence {
            resolve(&mut persistence.path);
        }
        if let Some(registry) = self.platform.as_mut().and_then(|p| p.registry.as_mut()) {
            resolve(registry);
        }
        for path in [&mut self.auth.password_file, &mut self.auth.acl_file]
            .into_iter()
            .flatten()
        {
            resolve(path);
        }
        for listener in &mut self.listeners {
            for path in [
                &mut listener.cert_file,
                &mut listener.key_file,
                &mut listener.client_ca_file,
            ]
            .into_iter()
            .flatten()
            {
                resolve(path);
            }
        }
    }

    /// Checks the values that parse but cannot work; `origin` names the file in errors.
    pub fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, message: &str| ConfigError::Invalid {
            origin: origin.to_owned(),
            key,
            message: message.to_owned(),
        };
        let limits = &self.limits;
        let positive = [
            ("limits.max_connections", limits.max_connections),
            ("limits.max_payload", limits.max_payload),
            ("limits.max_inflight", limits.max_inflight),
            ("limits.max_queued_messages", limits.max_queued_messages),
            ("limits.max_queued_bytes", limits.max_queued_bytes),
            ("limits.max_sessions", limits.max_sessions),
            (
                "limits.max_subscriptions_per_session",
                limits.max_subscriptions_per_session,
            ),
            ("limits.max_topic_levels", limits.max_topic_levels),
            (
                "limits.receive_maximum",
                usize::from(limits.receive_maximum),
            ),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        if limits.max_inflight > 65_000 {
            return Err(invalid(
                "limits.max_inflight",
                "must be at most 65000 (packet identifiers)",
            ));
        }
        if limits.max_payload > 268_435_455 - 65_541 {
            return Err(invalid(
                "limits.max_payload",
                "must leave room for the topic within MQTT's 256 MiB packet limit",
            ));
        }
        if let Some(size) = limits.max_packet_size {
            if !(64..=268_435_460).contains(&size.bytes()) {
                return Err(invalid(
                    "limits.max_packet_size",
                    "must be between 64 bytes and 256 MiB (MQTT's largest packet)",
                ));
            }
        }
        if limits
            .max_session_expiry
            .is_some_and(|expiry| expiry.get().as_secs() >= u64::from(u32::MAX))
        {
            return Err(invalid(
                "limits.max_session_expiry",
                "must be below 136 years (leave it out for no limit)",
            ));
        }
        if limits.max_keepalive == 0 {
            return Err(invalid("limits.max_keepalive", "must be at least 1 second"));
        }
        if limits.slow_subscriber_timeout.is_zero() {
            return Err(invalid(
                "limits.slow_subscriber_timeout",
                "must be more than 0",
            ));
        }
        if limits.connect_timeout.is_zero() {
            return Err(invalid("limits.connect_timeout", "must be more than 0"));
        }
        let backoff = &self.auth.login_backoff;
        if backoff.delay.is_zero() || backoff.max_delay < backoff.delay {
            return Err(invalid(
                "auth.login_backoff.max_delay",
                "delay must be more than 0 and max_delay at least delay",
            ));
        }
        if backoff.forget_after < backoff.max_delay {
            return Err(invalid(
                "auth.login_backoff.forget_after",
                "must be at least max_delay",
            ));
        }
        if !self.sys_interval.is_zero() && self.sys_interval < Duration::from_secs(1) {
            return Err(invalid("sys_interval", "must be 0 (off) or at least 1s"));
        }
        for listener in &self.listeners {
            let tls = matches!(
                listener.protocol,
                ListenerProtocol::Mqtts | ListenerProtocol::Wss
            );
            if tls && (listener.cert_file.is_none() || listener.key_file.is_none()) {
                return Err(invalid(
                    "listeners.cert_file",
                    "a TLS listener needs cert_file and key_file",
                ));
            }
            if !tls && listener.client_ca_file.is_some() {
                return Err(invalid(
                    "listeners.client_ca_file",
                    "client certificates need a TLS listener (mqtts or wss)",
                ));
            }
        }
        if let Some((key, message)) = self.platform.as_ref().and_then(|p| p.problem()) {
            return Err(invalid(key, &message));
        }
        Ok(())
    }

    /// The listeners to open: the configured ones, or the default one when there are none.
    pub fn effective_listeners(&self) -> Vec<ListenerConfig> {
        if self.listeners.is_empty() {
            let default = DEFAULT_LISTENER
                .parse()
                .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 1883)));
            vec![ListenerConfig::mqtt(default)]
        } else {
            self.listeners.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        let config = Config::parse(text, Path::new("broker.yaml"))?;
        config.validate("broker.yaml")?;
        Ok(config)
    }

    #[test]
    fn empty_file_is_the_default() {
        let config = parse("").expect("parses");
        assert_eq!(config, Config::default());
        assert_eq!(
            config.effective_listeners(),
            vec![ListenerConfig::mqtt("127.0.0.1:1883".parse().unwrap())]
        );
    }

    #[test]
    fn full_file() {
        let config = parse(
            r#"
listeners:
  - { bind: "0.0.0.0:1883" }
  - { bind: "[::1]:8883", protocol: mqtts, cert_file: cert.pem, key_file: key.pem }
allow_anonymous: false
limits:
  max_connections: 500
  max_payload: 128KiB
  max_inflight: 10
  max_queued_messages: 50
  max_queued_bytes: 1 MiB
  max_keepalive: 120
  connect_timeout: 5s
persistence: { path: /var/lib/fieldbridge-broker/broker.db, synchronous: normal }
auth: { password_file: passwd, acl_file: acl }
sys_interval: 30s
platform: { org: myorg, registry: registry.db }
"#,
        )
        .expect("parses");
        assert_eq!(config.listeners.len(), 2);
        assert_eq!(config.listeners[1].protocol, ListenerProtocol::Mqtts);
        assert_eq!(config.allow_anonymous, AnonymousPolicy::Never);
        assert_eq!(config.limits.max_payload, 128 * 1024);
        assert_eq!(config.limits.max_queued_bytes, 1 << 20);
        assert_eq!(config.limits.connect_timeout, Duration::from_secs(5));
        assert_eq!(config.limits.max_sessions, Limits::default().max_sessions);
        assert_eq!(config.sys_interval, Duration::from_secs(30));
        assert_eq!(
            config.persistence.as_ref().map(|p| p.synchronous),
            Some(Synchronous::Normal)
        );
        assert_eq!(
            config.platform.as_ref().map(|p| p.org.as_str()),
            Some("myorg")
        );
    }

    #[test]
    fn errors_name_key_and_line() {
        let error = parse("limits:\n  max_inflight: many\n")
            .expect_err("bad value")
            .to_string();
        assert!(error.contains("broker.yaml"), "{error}");
        assert!(error.contains("limits.max_inflight"), "{error}");
        assert!(error.contains("line 2"), "{error}");

        let error = parse("limits:\n  max_inflights: 3\n")
            .expect_err("unknown key")
            .to_string();
        assert!(error.contains("max_inflights"), "{error}");

        let error = parse("allow_anonymous: sometimes\n")
            .expect_err("bad policy")
            .to_string();
        assert!(error.contains("allow_anonymous"), "{error}");

        let error = parse("limits: { max_queued_bytes: 3 parsecs }\n")
            .expect_err("bad size")
            .to_string();
        assert!(error.contains("limits.max_queued_bytes"), "{error}");

        // One grammar with the gateway: a duration needs its unit.
        let error = parse("limits:\n  connect_timeout: 30\n")
            .expect_err("duration without a unit")
            .to_string();
        assert!(
            error.contains("limits.connect_timeout") && error.contains("`30s` for seconds"),
            "{error}"
        );
        assert!(error.contains("line 2"), "{error}");

        let error = parse("limits: { max_inflight: 0 }\n")
            .expect_err("zero")
            .to_string();
        assert!(error.contains("limits.max_inflight"), "{error}");

        let error = parse("listeners: [{ bind: \"0.0.0.0:8883\", protocol: mqtts }]\n")
            .expect_err("TLS without a certificate")
            .to_string();
        assert!(error.contains("cert_file"), "{error}");

        let error = parse("listeners: [{ bind: \"nowhere\" }]\n")
            .expect_err("bad address")
            .to_string();
        assert!(error.contains("listeners[0].bind"), "{error}");
    }

    #[test]
    fn login_backoff_and_retained_bytes() {
        let config = parse("").expect("parses");
        assert_eq!(config.auth.login_backoff, LoginBackoffConfig::default());
        assert_eq!(config.limits.max_retained_bytes, 64 << 20);
        let config = parse(
            "limits: { max_retained_bytes: 1 MiB }\nauth:\n  login_backoff: { after_failures: 3, max_delay: 1m }\n",
        )
        .expect("parses");
        assert_eq!(config.limits.max_retained_bytes, 1 << 20);
        assert_eq!(config.auth.login_backoff.after_failures, 3);
        assert_eq!(config.auth.login_backoff.max_delay, Duration::from_secs(60));
        assert_eq!(config.auth.login_backoff.delay, Duration::from_secs(1));
        for bad in [
            "auth: { login_backoff: { delay: 0 } }",
            "auth: { login_backoff: { delay: 20s } }",
            "auth: { login_backoff: { forget_after: 1s } }",
        ] {
            let error = parse(bad).expect_err(bad).to_string();
            assert!(error.contains("auth.login_backoff"), "{bad}: {error}");
        }
    }

    #[test]
    fn max_topic_levels() {
        assert_eq!(parse("").expect("parses").limits.max_topic_levels, 128);
        let config = parse("limits: { max_topic_levels: 100000 }\n").expect("parses");
        assert_eq!(config.limits.max_topic_levels, 100_000);
        for bad in ["0", "-1", "deep"] {
            let error = parse(&format!("limits:\n  max_topic_levels: {bad}\n"))
                .expect_err("bad value")
                .to_string();
            assert!(error.contains("limits.max_topic_levels"), "{bad}: {error}");
        }
    }

    #[test]
    fn example_file_is_valid_and_shows_the_defaults() {
        let config = parse(include_str!("../broker.example.yaml")).expect("the example parses");
        assert_eq!(config.limits, Limits::default());
        assert_eq!(config.auth.login_backoff, LoginBackoffConfig::default());
        assert_eq!(config.allow_anonymous, AnonymousPolicy::default());
        assert_eq!(config.sys_interval, default_sys_interval());
        assert_eq!(
            config.effective_listeners(),
            Config::default().effective_listeners()
        );
    }

    #[test]
    fn mqtt5_limits() {
        let config = parse(
            "limits: { max_session_expiry: 1d, max_packet_size: 64KiB, receive_maximum: 10, topic_alias_maximum: 0 }\nresponse_information: replies/\n",
        )
        .expect("valid");
        assert_eq!(
            config.limits.max_session_expiry.map(|expiry| expiry.get()),
            Some(Duration::from_secs(86_400))
        );
        assert_eq!(config.limits.max_packet_size, Some(units::Size::kib(64)));
        assert_eq!(config.response_information.as_deref(), Some("replies/"));
        for (text, key) in [
            ("limits: { receive_maximum: 0 }\n", "limits.receive_maximum"),
            (
                "limits: { max_packet_size: 10 }\n",
                "limits.max_packet_size",
            ),
            (
                "limits: { max_session_expiry: 200y }\n",
                "limits.max_session_expiry",
            ),
        ] {
            let error = parse(text).expect_err(text).to_string();
            assert!(error.contains(key), "{text}: {error}");
        }
    }

    #[test]
    fn metrics_and_log_sections() {
        let config = parse("metrics: 127.0.0.1:9465\nlog: { level: debug, target: stderr }\n")
            .expect("valid");
        assert_eq!(
            config.metrics,
            Some(SocketAddr::from(([127, 0, 0, 1], 9465)))
        );
        let log = config.log.expect("log section");
        assert_eq!(log.level, "debug");
        assert_eq!(log.target, fieldbridge_service::logging::LogTarget::Stderr);

        let error = parse("sys_interval: 1s\nmetrics: everywhere\n")
            .expect_err("bad address")
            .to_string();
        assert!(
            error.contains("metrics") && error.contains("line 2"),
            "{error}"
        );
        let error = parse("log: { target: syslog }\n")
            .expect_err("unknown target")
            .to_string();
        assert!(error.contains("log.target"), "{error}");
    }
}
