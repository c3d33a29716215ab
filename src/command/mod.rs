//! Inbound MQTT commands: validated, translated into register writes through the
//! device's bus, acted on once per reqId, and answered with a `cmd-result` event.

pub mod request;
pub mod service;
