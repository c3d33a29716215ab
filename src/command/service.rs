//! Acts on the commands and management requests addressed to the gateway's devices.
//! One worker per device keeps a device's commands in order, while a slow or dead
//! device never holds up commands to the others.

use std::collections::{HashMap, HashSet, VecDeque};

use serde_json::{json, Value as Json};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::request::{parse, prepare, Rc, Refusal};
use crate::bus::modbus::{ReadData, RequestError};
use crate::config::{Command, Device};
use crate::event::{Body, CommandResult, Event, EventSink, Qos};
use crate::gateway::DeviceBus;
use crate::registers::codec::{apply_scale, decode, decode_coil};
use crate::store::Store;
use crate::uplink::{Inbound, InboundKind};

pub use crate::event::RESULT_EVENT;
/// Device management responses go to `iotdevice-1/<this>`.
const MANAGEMENT_RESPONSE: &str = "response";

/// Commands waiting for one device's worker; beyond that they are answered 503.
const DEVICE_QUEUE: usize = 16;
/// Packet ids remembered per device for commands without a reqId.
const RECENT_PACKETS: usize = 64;

/// Packet ids of the recent commands without a reqId (in memory only): a DUP
/// redelivery of one of them is a repeat.
#[derive(Default)]
struct RecentPackets(VecDeque<u16>);

impl RecentPackets {
    fn first_time(&mut self, pkid: u16, dup: bool) -> bool {
        let repeat = dup && self.0.contains(&pkid);
        if self.0.len() == RECENT_PACKETS {
            self.0.pop_front();
        }
        self.0.push_back(pkid);
        !repeat
    }
}

/// Where the reqIds acted on are kept (in the queue database), and how many per device.
#[derive(Clone)]
pub struct CommandLog {
    pub store: Store,
    pub remembered: u32,
}

/// Everything a device's worker needs.
struct Target {
    device_id: String,
    commands: Vec<Command>,
    registers: HashSet<String>,
    bus: Option<DeviceBus>,
    managed: bool,
}

/// Starts one worker per device and routes `messages` to them until the channel
/// closes; then waits for the workers to finish what they hold.
pub async fn serve(
    devices: Vec<Device>,
    mut buses: HashMap<String, DeviceBus>,
    log: CommandLog,
    sink: EventSink,
    mut messages: mpsc::Receiver<Inbound>,
) {
    let mut workers = JoinSet::new();
    let mut routes = HashMap::new();
    for device in devices {
        let target = Target {
            bus: buses.remove(&device.id),
            registers: device.registers.iter().map(|r| r.name.clone()).collect(),
            device_id: device.id,
            commands: device.commands,
            managed: device.managed,
        };
        let (tx, rx) = mpsc::channel(DEVICE_QUEUE);
        routes.insert(target.device_id.clone(), tx);
        workers.spawn(work(target, rx, log.clone(), sink.clone()));
    }
    while let Some(message) = messages.recv().await {
        let Some(route) = routes.get(&message.device_id) else {
            tracing::warn!(device = %message.device_id, "command for an unknown device dropped");
            continue;
        };
        if let Err(mpsc::error::TrySendError::Full(message)) = route.try_send(message) {
            let (req_id, _) = parse(&message.payload);
            let refusal =
                Refusal::new(Rc::Unavailable, "too many commands waiting for this device");
            if let InboundKind::Command(name) = &message.kind {
                let _ = sink
                    .emit(result_event(
                        &message.device_id,
                        name,
                        req_id.as_deref(),
                        None,
                        Err(refusal),
                    ))
                    .await;
            }
        }
    }
    drop(routes);
    while workers.join_next().await.is_some() {}
}

async fn work(
    target: Target,
    mut messages: mpsc::Receiver<Inbound>,
    log: CommandLog,
    sink: EventSink,
) {
    let mut recent_packets = RecentPackets::default();
    while let Some(message) = messages.recv().await {
        let (req_id, parsed) = parse(&message.payload);
        let first_time = match &req_id {
            Some(id) => match log
                .store
                .record_command(&target.device_id, id, log.remembered)
                .await
            {
                Ok(first) => first,
                Err(e) => {
                    tracing::error!(device = %target.device_id, "cannot record command {id}: {e}");
                    true
                }
            },
            None => recent_packets.first_time(message.pkid, message.dup),
        };
        if !first_time {
            tracing::info!(device = %target.device_id, req_id = ?req_id, "repeated command ignored");
            continue;
        }
        let event = match &message.kind {
            InboundKind::Command(name) => {
                let outcome = match parsed {
                    Ok(request) => target
                        .execute(name, &request.value)
                        .await
                        .map(|readback| (request.value, readback)),
                    Err(refusal) => Err(refusal),
                };
                let (value, outcome) = match outcome {
                    Ok((value, readback)) => (Some(value), Ok(readback)),
                    Err(refusal) => (None, Err(refusal)),
                };
                if let Err(refusal) = &outcome {
                    tracing::warn!(device = %target.device_id, command = %name, rc = refusal.rc as u16, "command refused: {}", refusal.message);
                }
                let mut event =
                    result_event(&target.device_id, name, req_id.as_deref(), value, outcome);
                if let Body::CommandResult(result) = &mut event.body {
                    result.reply = message.reply.clone();
                }
                event
            }
            InboundKind::Management(path) => {
                let (rc, message) = target.manage(path).await;
                management_response(&target.device_id, rc, &message, req_id.as_deref())
            }
        };
        if !sink.emit(event).await {
            break;
        }
    }
}

impl Target {
    /// Writes the command's value; the value read back when the command asks for it.
    async fn execute(&self, name: &str, value: &Json) -> Result<Option<Json>, Refusal> {
        let Some(command) = self.commands.iter().find(|c| c.name == name) else {
            return Err(if self.registers.contains(name) {
                Refusal::new(
                    Rc::NotWritable,
                    format!("{name} can be read but is not declared as a command"),
                )
            } else {
                Refusal::new(Rc::UnknownCommand, format!("unknown command {name:?}"))
            });
        };
        let data = prepare(command, value)?;
        let Some(bus) = &self.bus else {
            return Err(Refusal::new(
                Rc::NotWritable,
                "this device takes no commands",
            ));
        };
        let readback = command.readback.then(|| {
            (
                command.kind,
                if command.kind.is_bit() {
                    1
                } else {
                    command.data_type.register_count()
                },
            )
        });
        match bus.write(command.address, data, readback).await {
            Ok(None) => Ok(None),
            Ok(Some(data)) => Ok(Some(read_back_value(command, &data)?)),
            Err(e @ RequestError::Exception { .. }) => {
                Err(Refusal::new(Rc::DeviceException, e.to_string()))
            }
            Err(e) => Err(Refusal::new(
                Rc::Unavailable,
                format!("device offline or not answering: {e}"),
            )),
        }
    }

    /// Answers a device management request: (rc, message).
    async fn manage(&self, path: &str) -> (Rc, String) {
        if !self.managed {
            return (
                Rc::NotImplemented,
                "device management is not enabled for this device".into(),
            );
        }
        match path {
            "mgmt/initiate/device/reboot" => match &self.bus {
                Some(bus) => match bus.reinitialize().await {
                    Ok(()) => (Rc::Accepted, "reinitializing".into()),
                    Err(e) => (Rc::Unavailable, e.to_string()),
                },
                None => (
                    Rc::NotImplemented,
                    "this device cannot be reinitialized".into(),
                ),
            },
            "device/update" => (Rc::Updated, "updated".into()),
            other => (Rc::NotImplemented, format!("{other} is not supported")),
        }
    }
}

fn read_back_value(command: &Command, data: &ReadData) -> Result<Json, Refusal> {
    let raw = match data {
        ReadData::Bits(bits) => decode_coil(bits),
        ReadData::Words(words) => decode(command.data_type, command.order, words),
    };
    raw.and_then(|raw| apply_scale(raw, command.scale, command.offset))
        .map(|v| serde_json::to_value(v).unwrap_or(Json::Null))
        .map_err(|e| Refusal::new(Rc::DeviceException, format!("read-back: {e}")))
}

/// The `cmd-result` event: `{"rc", "message", "reqId", "d": {"command", "value", "readback"}, "ts"}`.
pub fn result_event(
    device_id: &str,
    command: &str,
    req_id: Option<&str>,
    value: Option<Json>,
    outcome: Result<Option<Json>, Refusal>,
) -> Event {
    let (rc, message, readback) = match outcome {
        Ok(readback) => (Rc::Done, "success".to_owned(), readback),
        Err(refusal) => (refusal.rc, refusal.message, None),
    };
    Event {
        device_id: device_id.to_owned(),
        qos: Qos::AtLeastOnce,
        at: time::OffsetDateTime::now_utc(),
        body: Body::CommandResult(CommandResult {
            command: command.to_owned(),
            rc: rc as u16,
            message,
            req_id: req_id.map(str::to_owned),
            value: value.as_ref().map(super::request::echo),
            readback,
            reply: None,
        }),
    }
}

/// A response on `iotdevice-1/response`.
fn management_response(device_id: &str, rc: Rc, message: &str, req_id: Option<&str>) -> Event {
    Event {
        device_id: device_id.to_owned(),
        qos: Qos::AtLeastOnce,
        at: time::OffsetDateTime::now_utc(),
        body: Body::Management {
            path: MANAGEMENT_RESPONSE.to_owned(),
            body: json!({ "rc": rc as u16, "message": message, "reqId": req_id }),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dup_redelivery_of_a_recent_packet_is_a_repeat() {
        let mut recent = RecentPackets::default();
        assert!(recent.first_time(7, false));
        assert!(!recent.first_time(7, true), "redelivered with DUP");
        assert!(recent.first_time(8, true), "DUP of a packet never seen");
        assert!(recent.first_time(7, false), "a new packet reusing the id");
        for pkid in 100..100 + RECENT_PACKETS as u16 {
            assert!(recent.first_time(pkid, false));
        }
        assert!(
            recent.first_time(7, true),
            "forgotten beyond the last {RECENT_PACKETS}"
        );
    }
}
