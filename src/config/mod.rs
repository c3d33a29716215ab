//! The gateway configuration: YAML schema, defaults and validation.
//!
//! [`Config::load`] reads a file in four steps: `${VAR}` substitution on the text,
//! deserialization into the typed schema (unknown keys and wrong types are rejected
//! there), semantic validation, and resolution of files the configuration refers to
//! (`token_file`, relative paths). Every [`ConfigError`] names the file, the line and
//! column, and the key path.

mod credentials;
mod env;
mod error;
mod raw;
mod schema;
mod secret;
mod source_map;
mod validate;

use std::io::Read;
use std::path::{Path, PathBuf};

pub use error::{ConfigError, Position};
pub use fieldbridge_service::units::{Duration, Size};
pub use schema::{
    BrokerUrl, Bus, BusTransport, Command, Config, Device, DeviceTls, FieldType, GatewaySection,
    HomeAssistantSection, LineParser, LogSection, LogTarget, MqttVersion, OnFull, Parity,
    PublishMode, QueueSection, Register, SparkplugSection, Tls, TopicScheme, TopicTemplates,
    Upstream,
};
pub use secret::Secret;

use source_map::{child, item, SourceMap};
use validate::Checker;

/// Largest configuration file accepted.
const MAX_CONFIG_BYTES: u64 = 16 << 20;
/// Largest token file accepted.
const MAX_TOKEN_BYTES: u64 = 64 << 10;

/// Looks up an environment variable for `${VAR}` substitution.
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

impl Config {
    /// Reads, checks and resolves the configuration file at `path`, substituting
    /// `${VAR}` from the process environment.
    pub fn load(path: impl AsRef<Path>) -> Result<Config, ConfigError> {
        Self::load_with_env(path, &process_env)
    }

    /// [`Config::load`] with variables looked up through `env`.
    pub fn load_with_env(path: impl AsRef<Path>, env: EnvLookup) -> Result<Config, ConfigError> {
        let path = path.as_ref();
        let text = read_bounded(path, MAX_CONFIG_BYTES)
            .map_err(|reason| ConfigError::new(path, None, "", reason))?;
        Self::from_str_with_env(&text, path, env)
    }

    /// Parses configuration text. `origin` names the file in errors, and relative
    /// paths in the configuration are taken from its directory.
    #[allow(clippy::should_implement_trait)]
    pub fn from_str(text: &str, origin: impl AsRef<Path>) -> Result<Config, ConfigError> {
        Self::from_str_with_env(text, origin, &process_env)
    }

    /// [`Config::from_str`] with variables looked up through `env`.
    pub fn from_str_with_env(
        text: &str,
        origin: impl AsRef<Path>,
        env: EnvLookup,
    ) -> Result<Config, ConfigError> {
        let file = origin.as_ref();
        let substituted = env::substitute(text, env).map_err(|e| {
            // The unsubstituted text usually parses too, and tells which key it was.
            let key = SourceMap::parse(text)
                .ok()
                .and_then(|map| map.path_at(e.position).map(str::to_owned))
                .unwrap_or_default();
            ConfigError::new(file, Some(e.position), key, e.message)
        })?;
        parse(&substituted.text, file).map_err(|mut error| {
            error.position = error.position.map(|at| substituted.original(at));
            error
        })
    }

    /// The bus named `name`.
    pub fn bus(&self, name: &str) -> Option<&Bus> {
        self.buses.iter().find(|bus| bus.name == name)
    }
}

/// Deserializes, validates and resolves substituted text.
fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
    let map = match SourceMap::parse(text) {
        Ok(map) => Some(map),
        Err((at, reason)) => {
            // Report the syntax error before any schema error that precedes it in
            // the file; the YAML parser serde uses has the final word.
            if let Err(error) = serde_yaml::from_str::<serde::de::IgnoredAny>(text) {
                return Err(syntax_error(file, &error));
            }
            tracing::debug!(line = at.line, "source map unavailable: {reason}");
            None
        }
    };
    let config = deserialize(text, file, map.as_ref())?;
    let map = map.unwrap_or_default();
    validate::validate(&config, &Checker::new(file, &map))?;
    resolve_files(config, file, &map)
}

fn read_bounded(path: &Path, limit: u64) -> Result<String, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read: {e}"))?;
    let mut bytes = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read: {e}"))?;
    if bytes.len() as u64 > limit {
        return Err(format!("the file is larger than {}", Size(limit)));
    }
    String::from_utf8(bytes).map_err(|e| {
        format!(
            "the file is not UTF-8 text (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        )
    })
}

fn deserialize(text: &str, file: &Path, map: Option<&SourceMap>) -> Result<Config, ConfigError> {
    if map.is_some_and(|map| !map.contains("")) {
        return Err(ConfigError::new(
            file,
            None,
            "",
            "the file has no settings (see gateway.example.yaml for every option)",
        ));
    }
    let deserializer = serde_yaml::Deserializer::from_str(text);
    serde_path_to_error::deserialize(deserializer).map_err(|error| {
        let mut path = match error.path().to_string() {
            root if root == "." => String::new(),
            path => path,
        };
        let inner = error.inner();
        let mut message = serde_message(inner);
        let mut key_error = message.starts_with("unknown field `");
        if let Some(field) = message
            .strip_prefix("duplicate field `")
            .and_then(|rest| rest.split_once('`'))
            .map(|(field, _)| field.to_owned())
        {
            // The path names the mapping; the map records the later of the two keys.
            path = child(&path, &field);
            key_error = true;
            message.push_str(" (each key may appear once)");
        }
        let written = map.and_then(|map| {
            if key_error {
                map.key_position(&path)
            } else {
                map.value_position(&path)
            }
        });
        let position = written
            .or_else(|| {
                inner.location().map(|at| Position {
                    line: at.line(),
                    column: at.column(),
                })
            })
            .or_else(|| map.and_then(|map| map.locate(&path)));
        ConfigError::new(file, position, path, message)
    })
}

fn syntax_error(file: &Path, error: &serde_yaml::Error) -> ConfigError {
    let position = error.location().map(|at| Position {
        line: at.line(),
        column: at.column(),
    });
    ConfigError::new(
        file,
        position,
        "",
        format!("invalid YAML: {}", serde_message(error)),
    )
}

/// The top-level keys: serde_yaml starts messages about nested keys with their path.
const SECTIONS: [&str; 6] = ["gateway", "upstream", "queue", "buses", "devices", "log"];

/// serde_yaml's message without the location it appends and the key path it
/// prepends (the error carries those separately).
fn serde_message(error: &serde_yaml::Error) -> String {
    let mut message = error.to_string();
    if let Some(at) = error.location() {
        let suffix = format!(" at line {} column {}", at.line(), at.column());
        if let Some(cut) = message.rfind(&suffix) {
            message.replace_range(cut..cut + suffix.len(), "");
        }
    }
    if let Some((head, rest)) = message.split_once(": ") {
        let is_path = SECTIONS.iter().any(|section| {
            head.strip_prefix(section)
                .is_some_and(|tail| tail.is_empty() || tail.starts_with(['.', '[']))
        });
        if is_path {
            message = rest.to_owned();
        }
    }
    message
}

/// Reads token files and anchors relative paths at the config file's directory.
fn resolve_files(mut config: Config, file: &Path, map: &SourceMap) -> Result<Config, ConfigError> {
    let base = file.parent().unwrap_or(Path::new(""));
    let anchor = |path: &mut PathBuf| {
        if path.is_relative() {
            *path = base.join(&*path);
        }
    };
    anchor(&mut config.gateway.data_dir);
    if let Some(tls) = config.upstream.as_mut().and_then(|u| u.tls.as_mut()) {
        for path in [&mut tls.ca_file, &mut tls.cert_file, &mut tls.key_file]
            .into_iter()
            .flatten()
        {
            anchor(path);
        }
    }
    let now = std::time::SystemTime::now();
    if let Some(tls) = config.upstream.as_ref().and_then(|u| u.tls.as_ref()) {
        if let (Some(cert_file), Some(key_file)) = (&tls.cert_file, &tls.key_file) {
            let key = "upstream.tls.cert_file";
            match credentials::check_pair(cert_file, key_file, now) {
                Ok(warning) => config
                    .warnings
                    .extend(warning.map(|w| format!("{key}: {w}"))),
                Err(reason) => return Err(ConfigError::new(file, map.locate(key), key, reason)),
            }
        }
    }
    for (index, device) in config.devices.iter_mut().enumerate() {
        let Some(tls) = device.tls.as_mut() else {
            continue;
        };
        anchor(&mut tls.cert_file);
        anchor(&mut tls.key_file);
        let key = child(&child(&item("devices", index), "tls"), "cert_file");
        match credentials::check_pair(&tls.cert_file, &tls.key_file, now) {
            Ok(warning) => config
                .warnings
                .extend(warning.map(|w| format!("{key}: {w}"))),
            Err(reason) => return Err(ConfigError::new(file, map.locate(&key), key, reason)),
        }
    }
    for (index, device) in config.devices.iter_mut().enumerate() {
        let Some(token_file) = device.token_file.as_mut() else {
            continue;
        };
        anchor(token_file);
        let key = child(&item("devices", index), "token_file");
        let fail = |message: String| ConfigError::new(file, map.locate(&key), key.clone(), message);
        let shown = token_file.display();
        let text = read_bounded(token_file, MAX_TOKEN_BYTES)
            .map_err(|reason| fail(format!("token file {shown}: {reason}")))?;
        let token = text.trim_end_matches(['\n', '\r']);
        if token.is_empty() {
            return Err(fail(format!("token file {shown} is empty")));
        }
        if token.contains(['\n', '\r']) {
            return Err(fail(format!(
                "token file {shown} has more than one line; it holds only the token"
            )));
        }
        device.token = Some(Secret::new(token));
    }
    Ok(config)
}
