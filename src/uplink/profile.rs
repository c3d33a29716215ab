//! What differs between upstream worlds, as hooks a session calls: its client identity
//! and will, what it subscribes to and announces on every connect, how an event becomes
//! a topic and payload, and what an inbound topic means. `platform` and `custom` share
//! one JSON implementation; they differ only in their templates.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use rumqttc::{LastWill, QoS};

use super::topics::{command_in, Naming, TemplateValues};
use super::{DeviceIdentity, InboundKind, MANAGEMENT_PUBLISH, MANAGEMENT_REQUESTS};
use crate::event::{self, Body, Event, Kind};
use crate::store::QueuedEvent;

/// Event topics remembered per session.
const TOPIC_CACHE: usize = 32;

/// A message a profile publishes: an event it encoded (QoS of the event), or an
/// announcement on connect (births, discovery), always QoS 0: the delivery window
/// tracks queued rows only.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Message {
    pub topic: String,
    pub retain: bool,
    pub payload: Vec<u8>,
    /// A JSON payload (MQTT 5: sent with its content type and as UTF-8).
    pub json: bool,
}

/// What a publish from the broker calls for.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Reaction {
    /// Handed to the command service: device, kind, payload.
    pub commands: Vec<(String, InboundKind, Bytes)>,
    /// Published at once.
    pub publish: Vec<Message>,
}

/// The hooks of one session.
pub(super) trait Profile: Send {
    /// Whose queued rows the session sends: one device's, or every device's (`None`).
    fn scope(&self) -> Option<&str>;
    /// The session's name in logs and drop counts.
    fn name(&self) -> &str;
    fn client_id(&self) -> String;
    /// User name and password, if any.
    fn credentials(&self) -> Option<(String, String)>;
    /// The key of a counter kept in the queue database and advanced (modulo 256)
    /// before every connection attempt, which the will carries (Sparkplug's bdSeq).
    fn connection_counter(&self) -> Option<&'static str> {
        None
    }
    /// The will of the next connection, which carries `counter`.
    fn will(&mut self, counter: u8) -> Option<LastWill>;
    /// Subscribed after every connect, when inbound publishes are routed.
    fn subscriptions(&self) -> Vec<(String, QoS)>;
    /// Published after every connect (`generation` counts connections).
    fn announcements(&mut self, generation: u64) -> Vec<Message>;
    /// Messages one connection may send at once.
    fn announcement_capacity(&self) -> usize {
        1
    }
    /// A value to keep in the queue database once the announcements went out (what
    /// Home Assistant was told about).
    fn remember(&mut self) -> Option<(&'static str, String)> {
        None
    }
    /// Whether queued rows may be sent now (Sparkplug: only after the births).
    fn ready(&self) -> bool {
        true
    }
    /// Topic and payload of an event; `None`: this profile sends nothing for it.
    fn encode(&mut self, event: &Event) -> Option<Message>;
    /// Topic and payload of a queued row this profile sends without decoding it;
    /// `None`: the row is decoded and [`Self::encode`]d.
    fn encode_stored(&mut self, _row: &QueuedEvent) -> Option<Message> {
        None
    }
    /// What a publish from the broker calls for.
    fn inbound(&mut self, topic: &str, payload: Bytes) -> Reaction;
}

/// `platform` and `custom`: JSON payloads on templated topics.
pub(super) struct JsonProfile {
    device: DeviceIdentity,
    org: Arc<str>,
    naming: Arc<Naming>,
    command_filter: String,
    command_qos: QoS,
    /// Commands are routed: subscribe, and announce a managed device.
    inbound: bool,
    topic_cache: HashMap<String, String>,
}

impl JsonProfile {
    pub fn new(
        device: DeviceIdentity,
        org: Arc<str>,
        naming: Arc<Naming>,
        command_qos: QoS,
        inbound: bool,
    ) -> Self {
        let command_filter = naming.command.render(&values(&org, &device), "+");
        JsonProfile {
            device,
            org,
            naming,
            command_filter,
            command_qos,
            inbound,
            topic_cache: HashMap::new(),
        }
    }

    fn event_topic(&mut self, event_id: &str) -> String {
        if let Some(topic) = self.topic_cache.get(event_id) {
            return topic.clone();
        }
        let topic = self
            .naming
            .event
            .render(&values(&self.org, &self.device), event_id);
        if self.topic_cache.len() < TOPIC_CACHE {
            self.topic_cache.insert(event_id.to_owned(), topic.clone());
        }
        topic
    }
}

fn values<'a>(org: &'a str, device: &'a DeviceIdentity) -> TemplateValues<'a> {
    TemplateValues {
        org,
        device_type: &device.device_type,
        device_id: &device.id,
    }
}

impl Profile for JsonProfile {
    fn scope(&self) -> Option<&str> {
        Some(&self.device.id)
    }

    fn name(&self) -> &str {
        &self.device.id
    }

    fn client_id(&self) -> String {
        self.naming
            .client_id
            .render(&values(&self.org, &self.device), "")
    }

    fn credentials(&self) -> Option<(String, String)> {
        let token = self.device.token.as_ref()?;
        let user = self
            .naming
            .username
            .render(&values(&self.org, &self.device), "");
        Some((user, token.clone()))
    }

    fn will(&mut self, _counter: u8) -> Option<LastWill> {
        None
    }

    fn subscriptions(&self) -> Vec<(String, QoS)> {
        let mut filters = vec![(self.command_filter.clone(), self.command_qos)];
        if self.device.managed {
            filters.push((format!("{MANAGEMENT_REQUESTS}#"), QoS::AtLeastOnce));
        }
        filters
    }

    fn announcements(&mut self, generation: u64) -> Vec<Message> {
        if !(self.inbound && self.device.managed) {
            return Vec::new();
        }
        let manage = serde_json::json!({
            "d": {
                "supports": { "deviceActions": true, "firmwareActions": false },
                "deviceInfo": { "model": self.device.device_type, "description": "fieldbridge gateway device" },
                "metadata": {},
            },
            "reqId": format!("manage-{}-{generation}", self.device.id),
        });
        vec![Message {
            topic: format!("{MANAGEMENT_PUBLISH}mgmt/manage"),
            retain: false,
            payload: serde_json::to_vec(&manage).expect("JSON values always serialize"),
            json: true,
        }]
    }

    fn encode(&mut self, event: &Event) -> Option<Message> {
        let topic = match &event.body {
            Body::Management { path, .. } => format!("{MANAGEMENT_PUBLISH}{path}"),
            // Rows of earlier releases carried management topics as event ids.
            Body::Encoded { event, .. } if event.starts_with(MANAGEMENT_PUBLISH) => event.clone(),
            _ => self.event_topic(event.name()),
        };
        Some(Message {
            topic,
            retain: false,
            payload: event.platform_json(),
            json: true,
        })
    }

    /// Data rows: their stored values are the `d` of the platform JSON as they are.
    fn encode_stored(&mut self, row: &QueuedEvent) -> Option<Message> {
        if row.kind != Kind::Data || row.unreadable.is_some() {
            return None;
        }
        Some(Message {
            payload: event::stored_data_json(&row.payload, row.at_ms)?,
            topic: self.event_topic(&row.event_id),
            retain: false,
            json: true,
        })
    }

    fn inbound(&mut self, topic: &str, payload: Bytes) -> Reaction {
        let kind = match topic.strip_prefix(MANAGEMENT_REQUESTS) {
            Some(rest) if self.device.managed => Some(InboundKind::Management(rest.to_owned())),
            _ => command_in(&self.command_filter, topic).map(InboundKind::Command),
        };
        if kind.is_none() {
            tracing::warn!(device = %self.device.id, %topic, "publish on an unexpected topic ignored");
        }
        Reaction {
            commands: kind
                .map(|kind| (self.device.id.clone(), kind, payload))
                .into_iter()
                .collect(),
            publish: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Qos;
    use crate::uplink::TopicScheme;

    fn profile(managed: bool) -> JsonProfile {
        let device = DeviceIdentity {
            id: "boiler-1".into(),
            device_type: "boiler".into(),
            token: Some("t".into()),
            managed,
            tls: None,
        };
        let naming = Arc::new(Naming::new(&TopicScheme::Platform).unwrap());
        JsonProfile::new(device, "myorg".into(), naming, QoS::ExactlyOnce, true)
    }

    #[test]
    fn platform_identity_and_topics() {
        let mut p = profile(true);
        assert_eq!(p.client_id(), "d:myorg:boiler:boiler-1");
        assert_eq!(p.credentials(), Some(("use-token-auth".into(), "t".into())));
        let event = Event::encoded("boiler-1", "status", Qos::AtLeastOnce, b"{}".to_vec());
        assert_eq!(
            p.encode(&event).unwrap(),
            Message {
                topic: "iot-2/evt/status/fmt/json".into(),
                retain: false,
                payload: b"{}".to_vec(),
                json: true,
            }
        );
        let legacy = Event::encoded(
            "boiler-1",
            "iotdevice-1/response",
            Qos::AtLeastOnce,
            b"{}".to_vec(),
        );
        assert_eq!(p.encode(&legacy).unwrap().topic, "iotdevice-1/response");
        let kinds = |p: &mut JsonProfile, topic: &str| -> Vec<InboundKind> {
            let reaction = p.inbound(topic, Bytes::new());
            reaction.commands.into_iter().map(|c| c.1).collect()
        };
        assert_eq!(
            kinds(&mut p, "iot-2/cmd/setpoint/fmt/json"),
            [InboundKind::Command("setpoint".into())]
        );
        assert_eq!(
            kinds(&mut p, "iotdm-1/device/reboot"),
            [InboundKind::Management("device/reboot".into())]
        );
        assert_eq!(kinds(&mut p, "elsewhere"), []);
        assert_eq!(p.announcements(3)[0].topic, "iotdevice-1/mgmt/manage");
        assert!(profile(false).announcements(1).is_empty());
    }

    /// The row a store would read back for `event`.
    fn queued(event: &Event) -> QueuedEvent {
        let stored = event.to_stored();
        QueuedEvent {
            id: 1,
            device_id: event.device_id.clone(),
            event_id: stored.event,
            kind: stored.kind,
            payload: stored.payload,
            at_ms: stored.at_ms,
            unreadable: None,
        }
    }

    #[test]
    fn data_rows_are_sent_as_their_decoded_event_would_be() {
        let mut p = profile(false);
        let values = serde_json::json!({
            "temperature": 21.5, "tiny": 1.0e-7, "big": 1.7976931348623157e308,
            "count": 18_446_744_073_709_551_615_u64, "below": -42, "on": true, "none": null,
            "text": "quote \" backslash \\ tab \t é 😀 \u{1}", "list": [1, {"a": []}],
        });
        let serde_json::Value::Object(values) = values else {
            unreachable!()
        };
        let at = time::macros::datetime!(2026-11-21 10:15:30.120456 UTC);
        let event = Event::new("boiler-1", "status", Qos::AtLeastOnce, values, at);
        let row = queued(&event);
        let stored = p.encode_stored(&row).expect("a data row");
        // As the event read back and encoded would be, byte for byte.
        let decoded = row.to_event().unwrap();
        assert_eq!(Some(&stored), p.encode(&decoded).as_ref());
        let json: serde_json::Value = serde_json::from_slice(&stored.payload).unwrap();
        assert_eq!(json["ts"], "2026-11-21T10:15:30.120Z");
        assert_eq!(json["d"]["text"], "quote \" backslash \\ tab \t é 😀 \u{1}");
        assert_eq!(stored.topic, "iot-2/evt/status/fmt/json");

        // Anything else is decoded first: other kinds, and values that are not an object
        // (which decoding refuses).
        let encoded = Event::encoded("boiler-1", "status", Qos::AtLeastOnce, b"{}".to_vec());
        assert_eq!(p.encode_stored(&queued(&encoded)), None);
        for damaged in [&b"[1]"[..], b"{\"a\":", b"", b"{} {}", b"nul"] {
            let row = QueuedEvent {
                payload: damaged.to_vec(),
                ..row.clone()
            };
            assert_eq!(p.encode_stored(&row), None, "{damaged:?}");
            assert!(row.to_event().is_err(), "{damaged:?}");
        }
    }
}
