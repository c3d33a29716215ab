//! What a run measured, printed for people or as one JSON object for scripts.

use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Publish-to-receive latency over all subscribers, in microseconds.
#[derive(Debug, Serialize)]
pub struct Latency {
    pub samples: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub mean_us: f64,
}

impl Latency {
    pub fn from_histogram(histogram: &Histogram<u64>) -> Option<Self> {
        (!histogram.is_empty()).then(|| Self {
            samples: histogram.len(),
            p50_us: histogram.value_at_quantile(0.50),
            p99_us: histogram.value_at_quantile(0.99),
            p999_us: histogram.value_at_quantile(0.999),
            max_us: histogram.max(),
            mean_us: histogram.mean(),
        })
    }
}

#[derive(Debug, Serialize)]
pub struct LoadReport {
    pub broker: String,
    pub publishers: usize,
    pub subscribers: usize,
    /// MQTT version of every connection ("3.1.1" or "5").
    pub protocol: String,
    pub qos: u8,
    pub payload_bytes: usize,
    /// Messages per second per publisher; `None` is flat out.
    pub rate_per_publisher: Option<f64>,
    pub warmup_secs: f64,
    pub window_secs: f64,
    pub connect_secs: f64,
    /// Rates inside the measurement window (after the warm-up).
    pub sent_per_sec: f64,
    pub acked_per_sec: Option<f64>,
    /// Deliveries to all subscribers together.
    pub received_per_sec: f64,
    /// Whole run, warm-up included.
    pub sent_total: u64,
    pub acked_total: Option<u64>,
    pub received_total: u64,
    /// Every subscriber should receive every message sent.
    pub expected_per_subscriber: u64,
    /// Messages missing between ones that arrived: dropped by the broker.
    pub lost_total: u64,
    /// Messages after the last one that arrived, still missing when the drain ended.
    pub undelivered_total: u64,
    pub subscribers_short: usize,
    pub min_received_per_subscriber: u64,
    pub max_received_per_subscriber: u64,
    pub out_of_order_or_duplicate: u64,
    pub foreign_messages: u64,
    pub latency: Option<Latency>,
    pub connections_failed: u64,
    pub first_failure: Option<String>,
    /// `drain_max` ended the wait for subscribers while messages were still arriving.
    pub drain_cut_short: bool,
    /// Everything received divided by the time from the first publication to the last
    /// delivery: counts what a broker buffered during the window and delivered later.
    pub delivered_per_sec_overall: f64,
    /// CPU the generator itself used (it shares the machine with the broker).
    pub bench_cpu_secs: f64,
    /// The overall deadline cut the run short: the figures are partial.
    pub deadline_reached: bool,
}

impl LoadReport {
    pub fn render(&self) -> String {
        let mut text = String::new();
        let pace = match self.rate_per_publisher {
            Some(rate) => format!("{} msg/s per publisher", group(rate.round() as u64)),
            None => "flat out".to_owned(),
        };
        let _ = writeln!(
            text,
            "fieldbridge-bench: {}: MQTT {}, {} publisher(s) -> {} subscriber(s), QoS {}, {} B payload, {pace}, {:.1} s measured after {:.1} s warm-up",
            self.broker,
            self.protocol,
            self.publishers,
            self.subscribers,
            self.qos,
            self.payload_bytes,
            self.window_secs,
            self.warmup_secs
        );
        let _ = writeln!(
            text,
            "  connect     {:.2} s for all clients",
            self.connect_secs
        );
        let _ = writeln!(
            text,
            "  sent        {:>12} msg/s   ({} in the whole run)",
            group(self.sent_per_sec.round() as u64),
            group(self.sent_total)
        );
        if let (Some(rate), Some(total)) = (self.acked_per_sec, self.acked_total) {
            let _ = writeln!(
                text,
                "  acked       {:>12} msg/s   ({} PUBACKs, {} unacknowledged)",
                group(rate.round() as u64),
                group(total),
                group(self.sent_total.saturating_sub(total))
            );
        }
        let _ = writeln!(
            text,
            "  received    {:>12} msg/s   (deliveries to all subscribers; {} in the whole run)",
            group(self.received_per_sec.round() as u64),
            group(self.received_total)
        );
        let _ = writeln!(
            text,
            "  delivered   {:>12} msg/s   (from the first publication to the last delivery)",
            group(self.delivered_per_sec_overall.round() as u64),
        );
        match (&self.latency, self.rate_per_publisher) {
            (Some(latency), _) => {
                let _ = writeln!(
                    text,
                    "  latency     p50 {} µs, p99 {} µs, p99.9 {} µs, max {} µs, mean {:.0} µs ({} samples)",
                    group(latency.p50_us),
                    group(latency.p99_us),
                    group(latency.p999_us),
                    group(latency.max_us),
                    latency.mean_us,
                    group(latency.samples)
                );
            }
            (None, Some(_)) => {
                let _ = writeln!(text, "  latency     no message received in the window");
            }
            (None, None) => {
                let _ = writeln!(
                    text,
                    "  latency     not measured flat out (it would be queueing): use --rate"
                );
            }
        }
        let _ = writeln!(
            text,
            "  losses      {} dropped, {} undelivered at the end; {} expected per subscriber; {} subscriber(s) short (received min {}, max {})",
            group(self.lost_total),
            group(self.undelivered_total),
            group(self.expected_per_subscriber),
            self.subscribers_short,
            group(self.min_received_per_subscriber),
            group(self.max_received_per_subscriber)
        );
        if self.out_of_order_or_duplicate > 0 || self.foreign_messages > 0 {
            let _ = writeln!(
                text,
                "  anomalies   {} out of order or duplicate, {} from other publishers",
                group(self.out_of_order_or_duplicate),
                group(self.foreign_messages)
            );
        }
        if self.drain_cut_short {
            let _ = writeln!(
                text,
                "  drain       stopped by --drain-max while messages were still arriving"
            );
        }
        let _ = writeln!(text, "  generator   {:.2} s of CPU", self.bench_cpu_secs);
        push_failures_and_deadline(
            &mut text,
            self.connections_failed,
            self.first_failure.as_deref(),
            self.deadline_reached,
        );
        text
    }
}

#[derive(Debug, Serialize)]
pub struct IdleReport {
    pub broker: String,
    /// MQTT version of the connections ("3.1.1" or "5").
    pub protocol: String,
    pub connections_requested: usize,
    pub connections_open: usize,
    pub connect_secs: f64,
    pub connections_failed: u64,
    pub first_failure: Option<String>,
    /// Connections the broker closed while they were held.
    pub dropped_while_held: u64,
    pub rss_before_kib: Option<u64>,
    pub rss_after_kib: Option<u64>,
    pub kib_per_connection: Option<f64>,
    pub deadline_reached: bool,
}

impl IdleReport {
    pub fn render(&self) -> String {
        let mut text = String::new();
        let _ = writeln!(
            text,
            "fieldbridge-bench: {}: {} of {} idle MQTT {} connections open in {:.2} s; {} dropped while held",
            self.broker,
            group(self.connections_open as u64),
            group(self.connections_requested as u64),
            self.protocol,
            self.connect_secs,
            self.dropped_while_held
        );
        if let (Some(before), Some(after)) = (self.rss_before_kib, self.rss_after_kib) {
            let _ = writeln!(
                text,
                "  broker RSS  {} KiB before, {} KiB with the connections open: {:.2} KiB per connection",
                group(before),
                group(after),
                self.kib_per_connection.unwrap_or(0.0)
            );
        }
        push_failures_and_deadline(
            &mut text,
            self.connections_failed,
            self.first_failure.as_deref(),
            self.deadline_reached,
        );
        text
    }
}

/// The closing lines every report shares: failed connections and a cut-short run.
fn push_failures_and_deadline(
    text: &mut String,
    count: u64,
    first: Option<&str>,
    deadline_reached: bool,
) {
    if count > 0 {
        let _ = writeln!(
            text,
            "  failures    {count} connection(s) failed or were closed; first: {}",
            first.unwrap_or("?")
        );
    }
    if deadline_reached {
        let _ = writeln!(
            text,
            "  DEADLINE reached: the run was cut short, figures are partial"
        );
    }
}

/// `1234567` as `1,234,567`.
pub fn group(value: u64) -> String {
    let digits = value.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index) % 3 == 0 {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_thousands() {
        assert_eq!(group(0), "0");
        assert_eq!(group(999), "999");
        assert_eq!(group(1000), "1,000");
        assert_eq!(group(1_234_567), "1,234,567");
    }

    #[test]
    fn latency_quantiles_come_from_the_histogram() {
        let mut histogram = crate::client::latency_histogram();
        for micros in 1..=1000 {
            histogram.record(micros).unwrap();
        }
        let latency = Latency::from_histogram(&histogram).unwrap();
        assert_eq!(latency.samples, 1000);
        assert!((495..=505).contains(&latency.p50_us), "{latency:?}");
        assert!((985..=1000).contains(&latency.p99_us), "{latency:?}");
        assert!(Latency::from_histogram(&crate::client::latency_histogram()).is_none());
    }
}
