//! The normalized event: what a device poll (or a health change) produces and what
//! every sink (stdout, the MQTT uplink) consumes.

use serde_json::{Map, Value};
use time::OffsetDateTime;

/// MQTT delivery level of an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Qos {
    AtMostOnce = 0,
    AtLeastOnce = 1,
}

/// One event of one device, ready to publish: `payload` is the JSON body.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub device_id: String,
    pub event_id: String,
    pub qos: Qos,
    pub payload: Vec<u8>,
}

impl Event {
    /// Builds `{"d": {...}, "ts": "..."}` with the timestamp in RFC 3339, milliseconds, UTC.
    pub fn new(
        device_id: &str,
        event_id: &str,
        qos: Qos,
        data: Map<String, Value>,
        at: OffsetDateTime,
    ) -> Self {
        let body = serde_json::json!({ "d": data, "ts": timestamp(at) });
        Event {
            device_id: device_id.to_owned(),
            event_id: event_id.to_owned(),
            qos,
            payload: serde_json::to_vec(&body).expect("JSON values always serialize"),
        }
    }
}

/// RFC 3339 in UTC with millisecond precision, e.g. `2026-11-21T10:15:30.120Z`.
pub fn timestamp(at: OffsetDateTime) -> String {
    const FORMAT: &[time::format_description::FormatItem<'_>] = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    at.to_offset(time::UtcOffset::UTC)
        .format(FORMAT)
        .expect("UTC times always format")
}

/// Where devices hand their events: the stdout printer or the MQTT uplink.
///
/// QoS 1 events wait for room (the consumer persists them quickly, and none may be
/// lost); QoS 0 events are dropped and counted when the consumer is behind, so a
/// slow uplink never stalls polling for fire-and-forget readings.
#[derive(Debug, Clone)]
pub struct EventSink {
    tx: tokio::sync::mpsc::Sender<Event>,
    dropped: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl EventSink {
    /// A sink and the receiving end, holding at most `capacity` events in flight.
    pub fn channel(capacity: usize) -> (EventSink, tokio::sync::mpsc::Receiver<Event>) {
        let (tx, rx) = tokio::sync::mpsc::channel(capacity);
        let sink = EventSink {
            tx,
            dropped: Default::default(),
        };
        (sink, rx)
    }

    /// Hands over one event. Returns false once the consumer is gone (shutdown).
    pub async fn emit(&self, event: Event) -> bool {
        match event.qos {
            Qos::AtLeastOnce => self.tx.send(event).await.is_ok(),
            Qos::AtMostOnce => match self.tx.try_send(event) {
                Ok(()) => true,
                Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => {
                    self.dropped
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    true
                }
                Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => false,
            },
        }
    }

    /// QoS 0 events dropped because the consumer was behind, for the metrics endpoint.
    pub fn dropped_counter(&self) -> std::sync::Arc<std::sync::atomic::AtomicU64> {
        self.dropped.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn timestamps_have_milliseconds() {
        assert_eq!(
            timestamp(datetime!(2026-11-21 10:15:30.120456 UTC)),
            "2026-11-21T10:15:30.120Z"
        );
        assert_eq!(
            timestamp(datetime!(2026-11-21 10:15:30 UTC)),
            "2026-11-21T10:15:30.000Z"
        );
    }

    #[test]
    fn event_payload_shape() {
        let mut d = Map::new();
        d.insert("temperature".into(), Value::from(21.5));
        let e = Event::new(
            "boiler-1",
            "status",
            Qos::AtLeastOnce,
            d,
            datetime!(2026-11-21 10:15:30.12 UTC),
        );
        let v: Value = serde_json::from_slice(&e.payload).unwrap();
        assert_eq!(v["d"]["temperature"], 21.5);
        assert_eq!(v["ts"], "2026-11-21T10:15:30.120Z");
    }
}
