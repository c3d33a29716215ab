//! fieldbridge-broker: the companion MQTT broker of the fieldbridge gateway.

pub mod acl;
pub mod auth;
pub mod codec;
pub mod config;
pub mod message;
pub mod persistence;
pub mod retained;
pub mod session;
pub mod subscriptions;
pub mod topic;

/// The broker's version, as reported in `$SYS/broker/version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
