//! `topic_scheme: homeassistant`: each device is a Home Assistant device, announced by
//! device-based MQTT discovery. One session per device: its will makes it unavailable,
//! its state is one JSON object, and number/switch/select entities write through the
//! command path.

mod discovery;

use std::collections::BTreeSet;

use bytes::Bytes;
use rumqttc::{LastWill, QoS};
use serde_json::{Map, Value as Json};

use super::catalog::DeviceInfo;
use super::profile::{Message, Profile, Reaction};
use super::{DeviceIdentity, InboundKind};
use crate::event::{Body, Event};
use discovery::DeviceTopics;

/// Where the devices announced last are kept (`uplink_state`), so that the ones
/// dropped from the configuration can be removed from Home Assistant.
pub const ANNOUNCED_KEY: &str = "homeassistant.announced";
/// Most removed devices remembered and cleared on connect.
const MAX_REMOVED: usize = 1024;

/// `upstream.homeassistant`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HomeAssistantSettings {
    pub discovery_prefix: String,
    pub base_topic: String,
    /// The devices announced by the previous run (read from `uplink_state` at start).
    pub announced_before: Vec<String>,
}

/// The hooks of one device's session.
pub(super) struct HomeAssistantProfile {
    device: DeviceIdentity,
    info: DeviceInfo,
    settings: HomeAssistantSettings,
    topics: DeviceTopics,
    /// Devices to remove from Home Assistant (given to one session only), and the
    /// devices to remember as announced once they were.
    removals: Option<(Vec<String>, Vec<String>)>,
    /// The last value of every tag, sent whole as the state.
    state: Map<String, Json>,
    /// Not reported offline by the device's health.
    online: bool,
}

impl HomeAssistantProfile {
    /// `configured`: every device of this run; the first one's session clears the
    /// devices announced before and no longer configured.
    pub fn new(
        device: DeviceIdentity,
        info: DeviceInfo,
        settings: &HomeAssistantSettings,
        configured: &[String],
    ) -> Self {
        let removals = (configured.first() == Some(&device.id)).then(|| {
            let now: BTreeSet<&String> = configured.iter().collect();
            let removed = settings
                .announced_before
                .iter()
                .filter(|id| !now.contains(id))
                .take(MAX_REMOVED)
                .cloned()
                .collect();
            (removed, configured.to_vec())
        });
        HomeAssistantProfile {
            topics: DeviceTopics::new(&settings.discovery_prefix, &settings.base_topic, &device.id),
            device,
            info,
            settings: settings.clone(),
            removals,
            state: Map::new(),
            online: true,
        }
    }

    fn status_topic(&self) -> String {
        format!("{}/status", self.settings.discovery_prefix)
    }

    fn availability(&self, online: bool) -> Message {
        Message {
            topic: self.topics.availability.clone(),
            retain: true,
            payload: if online {
                b"online".to_vec()
            } else {
                b"offline".to_vec()
            },
            json: false,
        }
    }

    fn discovery(&self) -> Message {
        let config = discovery::config(
            &self.device.id,
            &self.info,
            &self.topics,
            &self.settings.base_topic,
        );
        Message {
            topic: self.topics.config.clone(),
            retain: true,
            payload: serde_json::to_vec(&config).expect("JSON values always serialize"),
            json: true,
        }
    }

    fn state_message<'a>(
        &mut self,
        values: impl IntoIterator<Item = (&'a String, &'a Json)>,
    ) -> Message {
        for (name, value) in values {
            let room = self.state.len() < MAX_REMOVED;
            match self.state.get_mut(name) {
                Some(slot) => slot.clone_from(value),
                // Bounded by the tags a device has, with room for serial-line fields.
                None if room => {
                    self.state.insert(name.clone(), value.clone());
                }
                None => {}
            }
        }
        Message {
            topic: self.topics.state.clone(),
            retain: true,
            payload: serde_json::to_vec(&self.state).expect("JSON values always serialize"),
            json: true,
        }
    }
}

impl Profile for HomeAssistantProfile {
    fn scope(&self) -> Option<&str> {
        Some(&self.device.id)
    }

    fn name(&self) -> &str {
        &self.device.id
    }

    fn client_id(&self) -> String {
        format!("{}-{}", self.settings.base_topic, self.device.id)
    }

    fn credentials(&self) -> Option<(String, String)> {
        let token = self.device.token.as_ref()?;
        Some((self.device.id.clone(), token.clone()))
    }

    fn will(&mut self, _counter: u8) -> Option<LastWill> {
        Some(LastWill::new(
            &self.topics.availability,
            "offline",
            QoS::AtLeastOnce,
            true,
        ))
    }

    fn subscriptions(&self) -> Vec<(String, QoS)> {
        vec![
            (format!("{}+", self.topics.set), QoS::AtLeastOnce),
            (self.status_topic(), QoS::AtLeastOnce),
        ]
    }

    fn announcement_capacity(&self) -> usize {
        2 + self.removals.as_ref().map_or(0, |r| r.0.len())
    }

    fn announcements(&mut self, _generation: u64) -> Vec<Message> {
        let mut messages = vec![self.discovery(), self.availability(self.online)];
        if let Some((removed, _)) = &self.removals {
            for id in removed {
                messages.push(Message {
                    topic: DeviceTopics::new(
                        &self.settings.discovery_prefix,
                        &self.settings.base_topic,
                        id,
                    )
                    .config,
                    retain: true,
                    payload: Vec::new(),
                    json: false,
                });
            }
        }
        messages
    }

    fn remember(&mut self) -> Option<(&'static str, String)> {
        let (_, configured) = self.removals.as_ref()?;
        Some((
            ANNOUNCED_KEY,
            serde_json::to_string(configured).expect("strings serialize"),
        ))
    }

    fn encode(&mut self, event: &Event) -> Option<Message> {
        let event = event.typed()?;
        match &event.body {
            Body::Data { values, .. } => Some(self.state_message(values)),
            Body::Health { online, .. } => {
                self.online = *online;
                Some(self.availability(*online))
            }
            Body::CommandResult(result) if result.rc == 200 => {
                let value = result.readback.as_ref().or(result.value.as_ref())?;
                Some(self.state_message([(&result.command, value)]))
            }
            Body::CommandResult(result) => {
                tracing::warn!(device = %self.device.id, command = %result.command, rc = result.rc, "command refused: {}", result.message);
                None
            }
            Body::Management { .. } | Body::Encoded { .. } => None,
        }
    }

    fn inbound(&mut self, topic: &str, payload: Bytes) -> Reaction {
        let mut reaction = Reaction::default();
        if topic == self.status_topic() {
            if payload.as_ref() == b"online" {
                // Home Assistant restarted: announce again.
                reaction.publish = self.announcements(0);
            }
            return reaction;
        }
        let writable = topic
            .strip_prefix(&self.topics.set)
            .and_then(|name| self.info.tags.iter().find(|t| t.name == name))
            .and_then(|tag| Some((tag.name.clone(), tag.command.as_ref()?)));
        let Some((name, writable)) = writable else {
            tracing::warn!(device = %self.device.id, %topic, "publish on an unexpected topic ignored");
            return reaction;
        };
        let value = discovery::command_value(writable, &String::from_utf8_lossy(&payload));
        let body = serde_json::json!({ "d": { "value": value } });
        let payload = serde_json::to_vec(&body).expect("JSON values always serialize");
        reaction.commands.push((
            self.device.id.clone(),
            InboundKind::Command(name),
            Bytes::from(payload),
        ));
        reaction
    }
}
