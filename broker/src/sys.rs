//! `$SYS/broker/...`: the broker's counters as retained messages, every `sys_interval`.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::MissedTickBehavior;

use crate::context::BrokerContext;
use crate::message::Message;
use crate::metrics::Stats;
use fieldbridge_mqtt::codec::QoS;

/// The `$SYS` topics and their values.
pub(crate) fn sys_messages(stats: &Stats) -> Vec<(&'static str, String)> {
    vec![
        (
            "$SYS/broker/version",
            format!("fieldbridge-broker {}", crate::VERSION),
        ),
        (
            "$SYS/broker/uptime",
            format!("{} seconds", stats.uptime_secs),
        ),
        (
            "$SYS/broker/clients/connected",
            stats.clients_connected.to_string(),
        ),
        ("$SYS/broker/clients/total", stats.clients_total.to_string()),
        (
            "$SYS/broker/messages/received",
            stats.messages_received.to_string(),
        ),
        ("$SYS/broker/messages/sent", stats.messages_sent.to_string()),
        (
            "$SYS/broker/messages/dropped",
            stats.messages_dropped.to_string(),
        ),
        (
            "$SYS/broker/messages/oversized",
            stats.messages_oversized.to_string(),
        ),
        (
            "$SYS/broker/clients/slow disconnected",
            stats.slow_subscribers.to_string(),
        ),
        (
            "$SYS/broker/bytes/received",
            stats.bytes_received.to_string(),
        ),
        ("$SYS/broker/bytes/sent", stats.bytes_sent.to_string()),
        (
            "$SYS/broker/subscriptions/count",
            stats.subscriptions.to_string(),
        ),
        (
            "$SYS/broker/retained messages/count",
            stats.retained_messages.to_string(),
        ),
        (
            "$SYS/broker/persistence/write failures",
            stats.persistence_write_failures.to_string(),
        ),
    ]
}

/// Publishes the `$SYS` messages now and every `interval` until shutdown.
pub(crate) async fn run(ctx: Arc<BrokerContext>, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut matches = Vec::new();
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = ctx.shutdown.cancelled() => return,
        }
        for (topic, value) in sys_messages(&ctx.stats()) {
            let message = Arc::new(Message::new(topic, value, QoS::AtMostOnce, true));
            // QoS 0 and not persisted: this cannot fail.
            let _ = ctx.router.publish(message, &mut matches, false, None).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn persistence_write_failures_are_published() {
        let stats = Stats {
            persistence_write_failures: 3,
            ..Stats::default()
        };
        assert!(sys_messages(&stats)
            .contains(&("$SYS/broker/persistence/write failures", "3".to_owned())));
    }
}
