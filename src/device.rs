//! What the gateway knows about one field device between polls: its health and the
//! values it last published. Plain state, driven by the bus tasks; no I/O here.

use std::time::{Duration, Instant};

use serde_json::Map;
use time::OffsetDateTime;

use crate::config::PublishMode;
pub use crate::event::HEALTH_EVENT;
use crate::event::{Body, Event, Qos};
use crate::registers::codec::{changed, Value};

/// A device is declared offline after this many failed poll cycles in a row, so a
/// single CRC error on a noisy line does not flap its health.
pub const OFFLINE_AFTER_FAILURES: u32 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Health {
    Unknown,
    Online,
    Offline,
}

/// How values become events for one device.
#[derive(Debug, Clone)]
pub struct PublishPolicy {
    pub mode: PublishMode,
    /// With `on_change`, republish everything when nothing was published for this long.
    pub heartbeat: Option<Duration>,
}

/// Most tag values one device remembers for `on_change`. A Modbus device has its
/// declared tags; a JSON line device names its own, so one sending ever new keys would
/// otherwise grow the map without end. Values of keys beyond it are still published, as
/// changed every time.
pub const MAX_REMEMBERED_VALUES: usize = 1024;

/// Health and publishing state of one device.
#[derive(Debug)]
pub struct DeviceState {
    id: String,
    event: String,
    qos: Qos,
    policy: PublishPolicy,
    /// Last published value of every tag, by tag name (`on_change` only).
    published: std::collections::HashMap<String, Value>,
    last_publish: Option<Instant>,
    health: Health,
    consecutive_failures: u32,
    /// Values not remembered because [`MAX_REMEMBERED_VALUES`] was reached.
    unremembered: u64,
}

impl DeviceState {
    pub fn new(id: &str, event: &str, qos: Qos, policy: PublishPolicy) -> Self {
        DeviceState {
            id: id.to_owned(),
            event: event.to_owned(),
            qos,
            policy,
            published: std::collections::HashMap::new(),
            last_publish: None,
            health: Health::Unknown,
            consecutive_failures: 0,
            unremembered: 0,
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Failed poll cycles in a row (0 after any answer).
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    /// The device answered: `values` are the tags read this cycle (a tag whose read
    /// failed with an exception is simply absent). `deadband` gives a tag's deadband.
    pub fn record_values(
        &mut self,
        values: Vec<(String, Value)>,
        deadband: impl Fn(&str) -> Option<f64>,
        now: Instant,
        wall: OffsetDateTime,
    ) -> Vec<Event> {
        let mut events = Vec::new();
        self.consecutive_failures = 0;
        if self.health != Health::Online {
            self.health = Health::Online;
            events.push(self.health_event(true, None, wall));
        }
        let data = match self.policy.mode {
            PublishMode::EveryPoll => values,
            PublishMode::OnChange => {
                let heartbeat_due = match (self.policy.heartbeat, self.last_publish) {
                    (Some(every), Some(last)) => now.duration_since(last) >= every,
                    _ => false,
                };
                if heartbeat_due {
                    values
                } else {
                    values
                        .into_iter()
                        .filter(|(name, value)| {
                            self.published
                                .get(name)
                                .is_none_or(|old| changed(old, value, deadband(name)))
                        })
                        .collect()
                }
            }
        };
        if !data.is_empty() {
            let mut json = Map::new();
            // Only `on_change` compares with what was published.
            let remember = self.policy.mode == PublishMode::OnChange;
            for (name, value) in data {
                let encoded = serde_json::to_value(&value).unwrap_or_default();
                if remember {
                    self.remember(name.clone(), value);
                }
                json.insert(name, encoded);
            }
            self.last_publish = Some(now);
            events.push(Event::new(&self.id, &self.event, self.qos, json, wall));
        }
        events
    }

    fn remember(&mut self, name: String, value: Value) {
        if self.published.len() < MAX_REMEMBERED_VALUES || self.published.contains_key(&name) {
            self.published.insert(name, value);
            return;
        }
        if self.unremembered == 0 {
            tracing::warn!(
                device = %self.id,
                "more than {MAX_REMEMBERED_VALUES} distinct value names: new ones are published but not remembered for on_change"
            );
        }
        self.unremembered += 1;
    }

    /// Values published but not remembered (see [`MAX_REMEMBERED_VALUES`]).
    pub fn unremembered(&self) -> u64 {
        self.unremembered
    }

    /// A poll cycle failed (timeout, link down, garbage): may produce the offline event.
    pub fn record_failure(&mut self, error: &str, wall: OffsetDateTime) -> Option<Event> {
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        if self.health != Health::Offline && self.consecutive_failures >= OFFLINE_AFTER_FAILURES {
            self.health = Health::Offline;
            return Some(self.health_event(false, Some(error), wall));
        }
        None
    }

    /// Forget health and published values, as for a device that was just restarted:
    /// its next answer is reported online and publishes every value.
    pub fn restart(&mut self) {
        self.health = Health::Unknown;
        self.consecutive_failures = 0;
        self.published.clear();
        self.last_publish = None;
    }

    pub fn is_offline(&self) -> bool {
        self.health == Health::Offline
    }

    fn health_event(&self, online: bool, error: Option<&str>, wall: OffsetDateTime) -> Event {
        // Health is rare and matters: always queued, whatever the readings' QoS.
        Event {
            device_id: self.id.clone(),
            qos: Qos::AtLeastOnce,
            at: wall,
            body: Body::Health {
                online,
                error: error.map(str::to_owned),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(pairs: &[(&str, Value)]) -> Vec<(String, Value)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    fn payload(event: &Event) -> serde_json::Value {
        serde_json::from_slice(&event.platform_json()).unwrap()
    }

    #[test]
    fn every_poll_publishes_all_values_and_first_answer_is_online() {
        let mut s = DeviceState::new(
            "b1",
            "status",
            Qos::AtLeastOnce,
            PublishPolicy {
                mode: PublishMode::EveryPoll,
                heartbeat: None,
            },
        );
        let now = Instant::now();
        let wall = OffsetDateTime::now_utc();
        let ev = s.record_values(values(&[("t", Value::F64(1.0))]), |_| None, now, wall);
        assert_eq!(ev.len(), 2);
        assert_eq!(ev[0].name(), HEALTH_EVENT);
        assert_eq!(payload(&ev[0])["d"]["online"], true);
        let ev = s.record_values(values(&[("t", Value::F64(1.0))]), |_| None, now, wall);
        assert_eq!(ev.len(), 1);
        assert_eq!(payload(&ev[0])["d"]["t"], 1.0);
        assert!(
            s.published.is_empty(),
            "nothing to compare with: no copy kept"
        );
    }

    #[test]
    fn ever_new_value_names_are_published_but_not_all_remembered() {
        let mut s = DeviceState::new(
            "json-1",
            "reading",
            Qos::AtMostOnce,
            PublishPolicy {
                mode: PublishMode::OnChange,
                heartbeat: None,
            },
        );
        let now = Instant::now();
        let wall = OffsetDateTime::now_utc();
        let names = MAX_REMEMBERED_VALUES + 500;
        for n in 0..names {
            let name = format!("key{n}");
            let events = s.record_values(values(&[(&name, Value::U64(1))]), |_| None, now, wall);
            let reading = events.last().expect("a reading");
            assert_eq!(payload(reading)["d"][&name], 1, "{name} is published");
        }
        assert_eq!(s.published.len(), MAX_REMEMBERED_VALUES);
        assert_eq!(s.unremembered(), 500);
        // A remembered value still counts as unchanged; one beyond the cap is sent again.
        assert!(s
            .record_values(values(&[("key0", Value::U64(1))]), |_| None, now, wall)
            .is_empty());
        let beyond = format!("key{}", names - 1);
        assert_eq!(
            s.record_values(values(&[(&beyond, Value::U64(1))]), |_| None, now, wall)
                .len(),
            1
        );
    }

    #[test]
    fn on_change_respects_deadband_and_heartbeat() {
        let mut s = DeviceState::new(
            "b1",
            "status",
            Qos::AtMostOnce,
            PublishPolicy {
                mode: PublishMode::OnChange,
                heartbeat: Some(Duration::from_secs(60)),
            },
        );
        let t0 = Instant::now();
        let wall = OffsetDateTime::now_utc();
        let band = |name: &str| (name == "p").then_some(0.05);
        let first = s.record_values(
            values(&[("p", Value::F64(1.0)), ("on", Value::Bool(true))]),
            band,
            t0,
            wall,
        );
        assert_eq!(first.len(), 2);
        // Within the deadband and unchanged bool: nothing.
        let quiet = s.record_values(
            values(&[("p", Value::F64(1.04)), ("on", Value::Bool(true))]),
            band,
            t0 + Duration::from_secs(1),
            wall,
        );
        assert!(quiet.is_empty());
        // Beyond the deadband: only the changed tag.
        let moved = s.record_values(
            values(&[("p", Value::F64(1.06)), ("on", Value::Bool(true))]),
            band,
            t0 + Duration::from_secs(2),
            wall,
        );
        assert_eq!(moved.len(), 1);
        let d = payload(&moved[0])["d"].clone();
        assert_eq!(d, serde_json::json!({"p": 1.06}));
        // Heartbeat: everything again.
        let beat = s.record_values(
            values(&[("p", Value::F64(1.06)), ("on", Value::Bool(true))]),
            band,
            t0 + Duration::from_secs(63),
            wall,
        );
        assert_eq!(
            payload(&beat[0])["d"],
            serde_json::json!({"p": 1.06, "on": true})
        );
    }

    #[test]
    fn offline_after_consecutive_failures_then_online_again() {
        let mut s = DeviceState::new(
            "b1",
            "status",
            Qos::AtLeastOnce,
            PublishPolicy {
                mode: PublishMode::EveryPoll,
                heartbeat: None,
            },
        );
        let wall = OffsetDateTime::now_utc();
        for _ in 1..OFFLINE_AFTER_FAILURES {
            assert!(s.record_failure("timeout after 500 ms", wall).is_none());
        }
        let off = s.record_failure("timeout after 500 ms", wall).unwrap();
        let p = payload(&off);
        assert_eq!(p["d"]["online"], false);
        assert_eq!(p["d"]["error"], "timeout after 500 ms");
        assert!(s.record_failure("again", wall).is_none());
        let back = s.record_values(
            values(&[("t", Value::U64(2))]),
            |_| None,
            Instant::now(),
            wall,
        );
        assert_eq!(payload(&back[0])["d"]["online"], true);
    }
}
