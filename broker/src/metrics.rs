//! Broker-wide counters for `$SYS/broker/...` and [`crate::RunningBroker::stats`].

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub(crate) struct Metrics {
    pub clients_connected: AtomicU64,
    pub messages_received: AtomicU64,
    pub messages_sent: AtomicU64,
    pub bytes_received: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub messages_dropped: AtomicU64,
}

/// Counts a connection keeps locally and adds to [`Metrics`] once per batch of work, so
/// that the hot path does not contend on shared cache lines.
#[derive(Debug, Default)]
pub(crate) struct LocalCounters {
    pub messages_received: u64,
    pub messages_sent: u64,
    pub bytes_received: u64,
    pub bytes_sent: u64,
}

impl LocalCounters {
    pub fn flush(&mut self, metrics: &Metrics) {
        let add = |counter: &AtomicU64, value: &mut u64| {
            if *value != 0 {
                counter.fetch_add(*value, Ordering::Relaxed);
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
    pub subscriptions: u64,
    pub retained_messages: u64,
}

impl Metrics {
    pub fn load(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
