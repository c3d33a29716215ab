//! Broker-wide counters for `$SYS/broker/...`, [`crate::RunningBroker::stats`] and the
//! Prometheus endpoint.

use std::sync::atomic::{AtomicU64, Ordering};

use fieldbridge_service::metrics::{Exposition, Family};

#[derive(Debug, Default)]
pub(crate) struct Metrics {
    pub clients_connected: AtomicU64,
    pub messages_received: AtomicU64,
    pub messages_sent: AtomicU64,
    pub bytes_received: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub messages_dropped: AtomicU64,
    pub messages_oversized: AtomicU64,
    pub slow_subscribers: AtomicU64,
}

/// Counts a connection keeps locally and adds to [`Metrics`] once per batch of work, so
/// that the hot path does not contend on shared cache lines. 32 bits each: a batch is one
/// turn of a connection's loop, bounded by its buffers.
#[derive(Debug, Default)]
pub(crate) struct LocalCounters {
    pub messages_received: u32,
    pub messages_sent: u32,
    pub bytes_received: u32,
    pub bytes_sent: u32,
}

impl LocalCounters {
    pub fn flush(&mut self, metrics: &Metrics) {
        let add = |counter: &AtomicU64, value: &mut u32| {
            if *value != 0 {
                counter.fetch_add(u64::from(*value), Ordering::Relaxed);
                *value = 0;
            }
        };
        add(&metrics.messages_received, &mut self.messages_received);
        add(&metrics.messages_sent, &mut self.messages_sent);
        add(&metrics.bytes_received, &mut self.bytes_received);
        add(&metrics.bytes_sent, &mut self.bytes_sent);
    }
}

/// A snapshot of the broker's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stats {
    pub uptime_secs: u64,
    pub clients_connected: u64,
    /// Sessions the broker holds: connected clients and absent persistent sessions.
    pub clients_total: u64,
    pub messages_received: u64,
    pub messages_sent: u64,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    /// Messages not queued because a session's queue was full.
    pub messages_dropped: u64,
    /// Messages not sent to an MQTT 5 client because they exceed its Maximum Packet Size.
    pub messages_oversized: u64,
    /// Clients disconnected because their full queue held publishers back too long.
    pub slow_subscribers: u64,
    pub subscriptions: u64,
    pub retained_messages: u64,
    /// Transactions of the persistence database that failed: what they carried was not
    /// stored, and not acknowledged to the clients that needed it.
    pub persistence_write_failures: u64,
    /// Retained messages not stored (published, or restored at start) because the
    /// retained store was full.
    pub retained_refused: u64,
}

impl Metrics {
    pub fn load(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// The Prometheus families of [`Stats`].
const STATS_FAMILIES: [Family<Stats>; 14] = [
    Family {
        name: "fieldbridge_broker_uptime_seconds",
        kind: "gauge",
        help: "Seconds since the broker started.",
        read: |s| s.uptime_secs as f64,
    },
    Family {
        name: "fieldbridge_broker_clients_connected",
        kind: "gauge",
        help: "Clients connected now.",
        read: |s| s.clients_connected as f64,
    },
    Family {
        name: "fieldbridge_broker_sessions",
        kind: "gauge",
        help: "Sessions held: connected clients and absent persistent sessions.",
        read: |s| s.clients_total as f64,
    },
    Family {
        name: "fieldbridge_broker_messages_received_total",
        kind: "counter",
        help: "PUBLISH packets received from clients.",
        read: |s| s.messages_received as f64,
    },
    Family {
        name: "fieldbridge_broker_messages_sent_total",
        kind: "counter",
        help: "PUBLISH packets sent to clients.",
        read: |s| s.messages_sent as f64,
    },
    Family {
        name: "fieldbridge_broker_bytes_received_total",
        kind: "counter",
        help: "Bytes received from clients.",
        read: |s| s.bytes_received as f64,
    },
    Family {
        name: "fieldbridge_broker_bytes_sent_total",
        kind: "counter",
        help: "Bytes sent to clients.",
        read: |s| s.bytes_sent as f64,
    },
    Family {
        name: "fieldbridge_broker_messages_dropped_total",
        kind: "counter",
        help: "Messages not queued because a session's queue was full.",
        read: |s| s.messages_dropped as f64,
    },
    Family {
        name: "fieldbridge_broker_messages_oversized_total",
        kind: "counter",
        help: "Messages not sent to a client because they exceed its Maximum Packet Size.",
        read: |s| s.messages_oversized as f64,
    },
    Family {
        name: "fieldbridge_broker_slow_subscribers_disconnected_total",
        kind: "counter",
        help: "Clients disconnected because their full queue held publishers back for slow_subscriber_timeout.",
        read: |s| s.slow_subscribers as f64,
    },
    Family {
        name: "fieldbridge_broker_subscriptions",
        kind: "gauge",
        help: "Subscriptions held.",
        read: |s| s.subscriptions as f64,
    },
    Family {
        name: "fieldbridge_broker_retained_messages",
        kind: "gauge",
        help: "Retained messages held.",
        read: |s| s.retained_messages as f64,
    },
    Family {
        name: "fieldbridge_broker_persistence_write_failures_total",
        kind: "counter",
        help: "Transactions of the persistence database that failed (nothing they carried was acknowledged).",
        read: |s| s.persistence_write_failures as f64,
    },
    Family {
        name: "fieldbridge_broker_retained_refused_total",
        kind: "counter",
        help: "Retained messages not stored because the retained store was full (published ones are still delivered).",
        read: |s| s.retained_refused as f64,
    },
];

impl Stats {
    /// The counters in the Prometheus text format.
    pub fn exposition(&self) -> String {
        let mut out = Exposition::default();
        out.single(&STATS_FAMILIES, self);
        out.into_text()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_counter_is_exposed_with_its_value() {
        let stats = Stats {
            uptime_secs: 1,
            clients_connected: 2,
            clients_total: 3,
            messages_received: 4,
            messages_sent: 5,
            bytes_received: 6,
            bytes_sent: 7,
            messages_dropped: 8,
            messages_oversized: 9,
            slow_subscribers: 10,
            subscriptions: 11,
            retained_messages: 12,
            persistence_write_failures: 13,
            retained_refused: 14,
        };
        let text = stats.exposition();
        for (family, value) in STATS_FAMILIES.iter().zip(1..) {
            assert!(
                text.contains(&format!(
                    "# TYPE {} {}\n{} {value}\n",
                    family.name, family.kind, family.name
                )),
                "{} = {value} missing from:\n{text}",
                family.name
            );
        }
    }
}
