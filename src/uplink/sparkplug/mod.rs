//! `topic_scheme: sparkplug`: the gateway as one Sparkplug B 3.0 edge node whose field
//! devices are Sparkplug devices. One MQTT session for the node; its will is NDEATH
//! with a bdSeq kept in the queue database; births go out once the connection (and the
//! primary host, when one is configured) allows, and queued data only after them.

mod metric;
mod node;
mod proto;

use bytes::Bytes;
use rumqttc::{LastWill, QoS};

pub use node::SparkplugSettings;
use node::{EdgeNode, NodeInbound};

use super::catalog::Catalog;
use super::profile::{Message, Profile, Reaction};
use super::InboundKind;
use crate::event::Event;

/// Where the node's bdSeq is kept (`uplink_state`).
const BD_SEQ_KEY: &str = "sparkplug.bd_seq";

/// The hooks of the edge node's session.
pub(super) struct SparkplugProfile {
    node: EdgeNode,
    name: String,
    devices: usize,
}

impl SparkplugProfile {
    pub fn new(settings: SparkplugSettings, catalog: &Catalog) -> Self {
        SparkplugProfile {
            name: settings.edge_node_id.clone(),
            node: EdgeNode::new(settings, catalog),
            devices: catalog.len(),
        }
    }

    fn births(&mut self) -> Vec<Message> {
        self.node
            .births()
            .into_iter()
            .map(|(topic, payload)| Message {
                topic,
                retain: false,
                payload,
                json: false,
            })
            .collect()
    }
}

impl Profile for SparkplugProfile {
    fn scope(&self) -> Option<&str> {
        None
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn client_id(&self) -> String {
        self.node.client_id()
    }

    fn credentials(&self) -> Option<(String, String)> {
        None
    }

    fn connection_counter(&self) -> Option<&'static str> {
        Some(BD_SEQ_KEY)
    }

    fn will(&mut self, counter: u8) -> Option<LastWill> {
        self.node.set_bd_seq(counter);
        let (topic, payload) = self.node.death();
        Some(LastWill::new(topic, payload, QoS::AtLeastOnce, false))
    }

    fn subscriptions(&self) -> Vec<(String, QoS)> {
        self.node
            .subscriptions()
            .into_iter()
            .map(|filter| (filter, QoS::AtLeastOnce))
            .collect()
    }

    fn announcement_capacity(&self) -> usize {
        // NBIRTH and every DBIRTH, or an NDEATH.
        self.devices + 1
    }

    fn announcements(&mut self, _generation: u64) -> Vec<Message> {
        self.node.connected();
        if self.node.may_birth() {
            self.births()
        } else {
            Vec::new()
        }
    }

    fn ready(&self) -> bool {
        self.node.born()
    }

    fn encode(&mut self, event: &Event) -> Option<Message> {
        let (topic, payload) = self.node.encode(event)?;
        Some(Message {
            topic,
            retain: false,
            payload,
            json: false,
        })
    }

    fn inbound(&mut self, topic: &str, payload: Bytes) -> Reaction {
        let mut reaction = Reaction::default();
        match self.node.inbound(topic, &payload) {
            NodeInbound::Rebirth => {
                if self.node.born() {
                    reaction.publish = self.births();
                }
            }
            NodeInbound::HostOnline => {
                if self.node.may_birth() {
                    reaction.publish = self.births();
                }
            }
            NodeInbound::HostOffline => {
                if self.node.born() {
                    self.node.died();
                    let (topic, payload) = self.node.death();
                    reaction.publish.push(Message {
                        topic,
                        retain: false,
                        payload,
                        json: false,
                    });
                }
            }
            NodeInbound::Commands(commands) => {
                reaction.commands = commands
                    .into_iter()
                    .map(|(device, command, value)| {
                        let body = serde_json::json!({ "d": { "value": value } });
                        let payload =
                            serde_json::to_vec(&body).expect("JSON values always serialize");
                        (device, InboundKind::Command(command), Bytes::from(payload))
                    })
                    .collect();
            }
            NodeInbound::Ignored(why) => {
                tracing::warn!(node = %self.name, "inbound publish ignored: {why}");
            }
        }
        reaction
    }
}
