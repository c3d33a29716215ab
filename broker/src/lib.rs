//! fieldbridge-broker: the companion MQTT broker of the fieldbridge gateway.
//!
//! ```no_run
//! # async fn example() -> Result<(), fieldbridge_broker::BrokerError> {
//! use fieldbridge_broker::{Broker, Config};
//! let broker = Broker::new(Config::ephemeral())?.start().await?;
//! println!("MQTT on {}", broker.local_addr());
//! broker.shutdown().await;
//! # Ok(()) }
//! ```

pub mod acl;
pub mod auth;
pub mod config;
pub mod message;
pub mod persistence;
pub mod platform;
pub mod retained;
pub mod session;
pub mod shared_subscriptions;
pub mod subscriptions;
pub mod transport;

mod backoff;
mod connection;
mod context;
mod metrics;
mod registry;
mod router;
mod server;
mod sys;

pub use config::Config;
pub use metrics::Stats;
pub use server::{Broker, BrokerError, RunningBroker, ShutdownHandle, StatsHandle};

/// The broker's version, as reported in `$SYS/broker/version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
