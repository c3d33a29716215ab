//! What running as a system service needs, shared by the broker and the gateway
//! binaries: the systemd notification protocol, logging to journald or stderr, and a
//! small Prometheus endpoint.

pub mod logging;
pub mod metrics;
pub mod notify;
