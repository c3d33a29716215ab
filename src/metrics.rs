//! Per-device counters kept by the bus tasks for the Prometheus endpoint; the
//! exposition format and the HTTP endpoint are shared with the broker.

use std::sync::atomic::{AtomicU64, Ordering};

pub use fieldbridge_service::metrics::{bind, serve, Exposition, Family};

/// Counters of one device, shared between its bus task and the metrics endpoint.
#[derive(Debug, Default)]
pub struct DeviceCounters {
    pub polls: AtomicU64,
    pub poll_failures: AtomicU64,
    pub modbus_exceptions: AtomicU64,
}

impl DeviceCounters {
    pub fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// The families of [`DeviceCounters`].
pub const DEVICE_COUNTERS: [Family<DeviceCounters>; 3] = [
    Family {
        name: "fieldbridge_polls_total",
        kind: "counter",
        help: "Poll cycles run.",
        read: |c| c.polls.load(Ordering::Relaxed) as f64,
    },
    Family {
        name: "fieldbridge_poll_failures_total",
        kind: "counter",
        help: "Poll cycles that failed (timeout, link down, garbled answer).",
        read: |c| c.poll_failures.load(Ordering::Relaxed) as f64,
    },
    Family {
        name: "fieldbridge_modbus_exceptions_total",
        kind: "counter",
        help: "Modbus exception answers to reads.",
        read: |c| c.modbus_exceptions.load(Ordering::Relaxed) as f64,
    },
];
