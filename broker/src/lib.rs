//! fieldbridge-broker: the companion MQTT broker of the fieldbridge gateway.

/// The broker's version, as reported in `$SYS/broker/version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
