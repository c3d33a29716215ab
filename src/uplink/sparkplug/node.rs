//! The Sparkplug B edge node as plain state: birth and death certificates, the shared
//! `seq`, metric aliases, which devices are born, the primary host's state, and what
//! an inbound NCMD, DCMD or STATE asks for. No I/O: the session drives it.

use std::collections::HashMap;

use prost::Message as _;
use serde_json::Value as Json;

use super::metric::{datatype_of, metric, properties, to_json, to_value};
use super::proto::{datatype, Metric, Payload, Value};
use crate::event::{unix_millis, Body, Event};
use crate::uplink::catalog::{Catalog, Tag};

/// Topic namespace of Sparkplug B.
pub const NAMESPACE: &str = "spBv1.0";
/// The node control metric a host sets to ask for new births.
pub const REBIRTH: &str = "Node Control/Rebirth";
const BD_SEQ: &str = "bdSeq";
const VERSION: &str = "Properties/Gateway Version";

/// `upstream.sparkplug`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SparkplugSettings {
    pub group_id: String,
    pub edge_node_id: String,
    /// Births wait for this host's STATE to say online.
    pub primary_host_id: Option<String>,
}

/// What an inbound publish asks the node to do.
#[derive(Debug, Clone, PartialEq)]
pub enum NodeInbound {
    /// NCMD `Node Control/Rebirth`: births again, same bdSeq.
    Rebirth,
    /// DCMD: writes, each a device, a command name and its value.
    Commands(Vec<(String, String, Json)>),
    /// The primary host came online: births may go out.
    HostOnline,
    /// The primary host went offline: NDEATH, and no data until it is back.
    HostOffline,
    Ignored(String),
}

struct DeviceSlot {
    id: String,
    /// Tag, alias, datatype.
    tags: Vec<(Tag, u64, u32)>,
    by_name: HashMap<String, usize>,
    /// The last value sent per tag (the birth's or a data message's).
    last: Vec<Option<Value>>,
    /// Not reported offline by its health.
    online: bool,
    born: bool,
}

pub struct EdgeNode {
    settings: SparkplugSettings,
    devices: Vec<DeviceSlot>,
    index: HashMap<String, usize>,
    bd_seq: u8,
    seq: u8,
    /// NBIRTH went out on this connection (and no NDEATH since).
    born: bool,
    /// Events from before the last NBIRTH are historical.
    birth_ms: u64,
    host_online: bool,
    host_timestamp: u64,
    /// Command results Sparkplug cannot carry (refusals), for the logs.
    pub refused: u64,
}

fn now_ms() -> u64 {
    u64::try_from(unix_millis(time::OffsetDateTime::now_utc())).unwrap_or(0)
}

impl EdgeNode {
    pub fn new(settings: SparkplugSettings, catalog: &Catalog) -> EdgeNode {
        let mut alias = 0;
        let mut devices = Vec::with_capacity(catalog.len());
        for (id, info) in catalog {
            let tags: Vec<(Tag, u64, u32)> = info
                .tags
                .iter()
                .map(|tag| {
                    alias += 1;
                    (tag.clone(), alias, datatype_of(tag))
                })
                .collect();
            devices.push(DeviceSlot {
                id: id.clone(),
                by_name: tags
                    .iter()
                    .enumerate()
                    .map(|(i, t)| (t.0.name.clone(), i))
                    .collect(),
                last: vec![None; tags.len()],
                tags,
                online: true,
                born: false,
            });
        }
        let index = devices
            .iter()
            .enumerate()
            .map(|(i, d)| (d.id.clone(), i))
            .collect();
        EdgeNode {
            host_online: settings.primary_host_id.is_none(),
            settings,
            devices,
            index,
            bd_seq: 0,
            seq: 0,
            born: false,
            birth_ms: 0,
            host_timestamp: 0,
            refused: 0,
        }
    }

    /// `spBv1.0/<group>/<kind>/<edge>[/<device>]`.
    pub fn topic(&self, kind: &str, device: Option<&str>) -> String {
        let SparkplugSettings {
            group_id,
            edge_node_id,
            ..
        } = &self.settings;
        match device {
            Some(device) => format!("{NAMESPACE}/{group_id}/{kind}/{edge_node_id}/{device}"),
            None => format!("{NAMESPACE}/{group_id}/{kind}/{edge_node_id}"),
        }
    }

    pub fn client_id(&self) -> String {
        format!("{}-{}", self.settings.group_id, self.settings.edge_node_id)
    }

    /// Subscribed before any birth.
    pub fn subscriptions(&self) -> Vec<String> {
        let mut filters = vec![self.topic("NCMD", None), self.topic("DCMD", Some("+"))];
        if let Some(host) = &self.settings.primary_host_id {
            filters.push(format!("{NAMESPACE}/STATE/{host}"));
        }
        filters
    }

    /// The bdSeq of the coming connection: its will and its NBIRTH carry it.
    pub fn set_bd_seq(&mut self, bd_seq: u8) {
        self.bd_seq = bd_seq;
    }

    /// NDEATH, the will of the session whose births carry the current bdSeq.
    pub fn death(&self) -> (String, Vec<u8>) {
        let payload = Payload {
            timestamp: Some(now_ms()),
            metrics: vec![self.bd_seq_metric()],
            seq: None,
        };
        (self.topic("NDEATH", None), payload.encode_to_vec())
    }

    fn bd_seq_metric(&self) -> Metric {
        Metric {
            name: Some(BD_SEQ.into()),
            ..metric(datatype::INT64, Some(Value::Long(u64::from(self.bd_seq))))
        }
    }

    /// A new connection: nothing is born, and the host's state is learnt again.
    pub fn connected(&mut self) {
        self.born = false;
        self.host_online = self.settings.primary_host_id.is_none();
    }

    /// Births may go out now (connected, host online, not born yet).
    pub fn may_birth(&self) -> bool {
        !self.born && self.host_online
    }

    /// Data flows only after the births.
    pub fn born(&self) -> bool {
        self.born
    }

    /// NBIRTH (seq 0) and a DBIRTH for every device not reported offline.
    pub fn births(&mut self) -> Vec<(String, Vec<u8>)> {
        let now = now_ms();
        self.seq = 0;
        self.born = true;
        self.birth_ms = now;
        let mut node_metrics = vec![
            self.bd_seq_metric(),
            Metric {
                name: Some(REBIRTH.into()),
                ..metric(datatype::BOOLEAN, Some(Value::Boolean(false)))
            },
            Metric {
                name: Some(VERSION.into()),
                ..metric(
                    datatype::STRING,
                    Some(Value::String(env!("CARGO_PKG_VERSION").into())),
                )
            },
        ];
        for m in &mut node_metrics {
            m.timestamp = Some(now);
        }
        let mut births = vec![(self.topic("NBIRTH", None), self.payload(now, node_metrics))];
        for index in 0..self.devices.len() {
            self.devices[index].born = false;
            if self.devices[index].online {
                births.push(self.device_birth(index, now));
            }
        }
        births
    }

    fn payload(&mut self, now: u64, metrics: Vec<Metric>) -> Vec<u8> {
        let seq = self.seq;
        self.seq = self.seq.wrapping_add(1);
        Payload {
            timestamp: Some(now),
            metrics,
            seq: Some(u64::from(seq)),
        }
        .encode_to_vec()
    }

    fn device_birth(&mut self, index: usize, now: u64) -> (String, Vec<u8>) {
        let device = &mut self.devices[index];
        device.born = true;
        let metrics = device
            .tags
            .iter()
            .zip(&device.last)
            .map(|((tag, alias, datatype), last)| Metric {
                name: Some(tag.name.clone()),
                alias: Some(*alias),
                timestamp: Some(now),
                properties: properties(tag),
                ..metric(*datatype, last.clone())
            })
            .collect();
        let topic = self.topic("DBIRTH", Some(&self.devices[index].id));
        (topic, self.payload(now, metrics))
    }

    /// NDEATH is published by the node itself (the primary host went offline).
    pub fn died(&mut self) {
        self.born = false;
    }

    /// Topic and payload for an event; `None`: nothing to send (no change, a refused
    /// command, an unknown device, not born).
    pub fn encode(&mut self, event: &Event) -> Option<(String, Vec<u8>)> {
        if !self.born {
            return None;
        }
        let event = event.typed()?;
        let index = *self.index.get(&event.device_id)?;
        let at = u64::try_from(unix_millis(event.at)).unwrap_or(0);
        match &event.body {
            Body::Data { values, .. } => self.data(index, values.iter(), at),
            Body::Health { online: false, .. } => {
                let device = &mut self.devices[index];
                device.online = false;
                if !std::mem::replace(&mut device.born, false) {
                    return None;
                }
                let topic = self.topic("DDEATH", Some(&self.devices[index].id));
                Some((topic, self.payload(now_ms(), Vec::new())))
            }
            Body::Health { online: true, .. } => {
                self.devices[index].online = true;
                (!self.devices[index].born).then(|| self.device_birth(index, now_ms()))
            }
            Body::CommandResult(result) if result.rc == 200 => {
                let value = result.readback.as_ref().or(result.value.as_ref())?;
                self.data(index, std::iter::once((&result.command, value)), at)
            }
            Body::CommandResult(result) => {
                self.refused += 1;
                tracing::warn!(
                    device = %event.device_id,
                    command = %result.command,
                    rc = result.rc,
                    refused = self.refused,
                    "command refused: {}",
                    result.message
                );
                None
            }
            Body::Management { .. } | Body::Encoded { .. } => None,
        }
    }

    fn data<'a>(
        &mut self,
        index: usize,
        values: impl Iterator<Item = (&'a String, &'a Json)>,
        at: u64,
    ) -> Option<(String, Vec<u8>)> {
        let historical = at < self.birth_ms;
        let device = &mut self.devices[index];
        let mut metrics = Vec::new();
        for (name, json) in values {
            let Some(&slot) = device.by_name.get(name) else {
                continue;
            };
            let (_, alias, datatype) = &device.tags[slot];
            let Some(value) = to_value(*datatype, json) else {
                continue;
            };
            // Rows are sent oldest first, so historical ones are compared in order too.
            if device.last[slot].as_ref() == Some(&value) {
                continue;
            }
            device.last[slot] = Some(value.clone());
            metrics.push(Metric {
                alias: Some(*alias),
                timestamp: Some(at),
                is_historical: historical.then_some(true),
                ..metric(*datatype, Some(value))
            });
        }
        if !device.born {
            // Data of a device that was reported offline: it is back.
            device.online = true;
            return Some(self.device_birth(index, now_ms()));
        }
        if metrics.is_empty() {
            return None;
        }
        let topic = self.topic("DDATA", Some(&self.devices[index].id));
        Some((topic, self.payload(now_ms(), metrics)))
    }

    /// What a publish on one of the node's subscriptions asks for.
    pub fn inbound(&mut self, topic: &str, payload: &[u8]) -> NodeInbound {
        let ignored = |why: &str| NodeInbound::Ignored(format!("{topic}: {why}"));
        if let Some(host) = &self.settings.primary_host_id {
            if topic == format!("{NAMESPACE}/STATE/{host}") {
                return self
                    .host_state(payload)
                    .unwrap_or_else(|| ignored("not a STATE payload"));
            }
        }
        let Ok(message) = Payload::decode(payload) else {
            return ignored("not a Sparkplug B payload");
        };
        if topic == self.topic("NCMD", None) {
            let rebirth = message.metrics.iter().any(|m| {
                m.name.as_deref() == Some(REBIRTH) && m.value == Some(Value::Boolean(true))
            });
            return if rebirth {
                NodeInbound::Rebirth
            } else {
                ignored("no Rebirth request")
            };
        }
        let prefix = self.topic("DCMD", None) + "/";
        let Some(index) = topic
            .strip_prefix(&prefix)
            .and_then(|id| self.index.get(id))
        else {
            return ignored("not a configured device");
        };
        let device = &self.devices[*index];
        let mut commands = Vec::new();
        for m in &message.metrics {
            let slot = match (&m.name, m.alias) {
                (Some(name), _) => device.by_name.get(name).copied(),
                (None, Some(alias)) => device.tags.iter().position(|t| t.1 == alias),
                (None, None) => None,
            };
            let writable = slot.filter(|&s| device.tags[s].0.command.is_some());
            match (writable, &m.value) {
                (Some(slot), Some(value)) => {
                    let (tag, _, datatype) = &device.tags[slot];
                    commands.push((
                        device.id.clone(),
                        tag.name.clone(),
                        to_json(*datatype, value),
                    ));
                }
                _ => {
                    self.refused += 1;
                    tracing::warn!(
                        device = %device.id,
                        metric = ?m.name.as_deref().map(str::to_owned).or(m.alias.map(|a| a.to_string())),
                        refused = self.refused,
                        "DCMD refused: not a writable metric with a value"
                    );
                }
            }
        }
        NodeInbound::Commands(commands)
    }

    fn host_state(&mut self, payload: &[u8]) -> Option<NodeInbound> {
        let state: Json = serde_json::from_slice(payload).ok()?;
        let online = state.get("online")?.as_bool()?;
        let timestamp = state.get("timestamp").and_then(Json::as_u64).unwrap_or(0);
        if online {
            self.host_online = true;
            self.host_timestamp = self.host_timestamp.max(timestamp);
            return Some(NodeInbound::HostOnline);
        }
        if timestamp < self.host_timestamp {
            return Some(NodeInbound::Ignored(
                "an offline STATE older than the online one".into(),
            ));
        }
        self.host_online = false;
        Some(NodeInbound::HostOffline)
    }
}

#[cfg(test)]
mod tests;
