//! The gateway configuration: YAML schema, defaults and validation.

mod raw;
mod schema;
mod units;

pub use schema::{
    BrokerUrl, Bus, BusTransport, Command, Config, Device, FieldType, GatewaySection, LineParser,
    LogSection, LogTarget, OnFull, Parity, PublishMode, QueueSection, Register, Tls, TopicScheme,
    TopicTemplates, Upstream,
};
pub use units::{Duration, Secret, Size};
