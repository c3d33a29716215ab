//! What running as a system service needs, shared by the gateway and the broker: logging to
//! journald or stderr, the systemd notification protocol and the main loop around it, a
//! small Prometheus endpoint, a log throttle for repeating faults, and the duration and
//! size types of both configuration files.

pub mod lifecycle;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod throttle;
pub mod units;

pub use lifecycle::{run_until_stopped, stop_requested, Service};
pub use throttle::LogThrottle;
