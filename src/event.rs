//! The normalized event: what a device poll, a health change or a command produces and
//! what every sink (stdout, the MQTT uplink) consumes. Events stay typed until the
//! uplink profile encodes them at send time; [`Stored`] is the form the queue keeps.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use time::OffsetDateTime;

/// MQTT delivery level of an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Qos {
    AtMostOnce = 0,
    AtLeastOnce = 1,
}

/// Event id of health changes.
pub const HEALTH_EVENT: &str = "health";
/// Event id of command results.
pub const RESULT_EVENT: &str = "cmd-result";

/// One event of one device.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub device_id: String,
    pub qos: Qos,
    /// When it happened (sent with millisecond precision).
    pub at: OffsetDateTime,
    pub body: Body,
}

/// What an event says, before any profile has encoded it.
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    /// Readings of one poll (or the changed ones), under the device's event id. Each
    /// value's register (type, unit, scale) is found by name in the device's config.
    Data {
        event: String,
        values: Map<String, Value>,
    },
    /// The field device stopped or started answering.
    Health {
        online: bool,
        error: Option<String>,
    },
    CommandResult(CommandResult),
    /// A device management response, published on `iotdevice-1/<path>`.
    Management {
        path: String,
        body: Value,
    },
    /// Platform JSON encoded before it was queued, under its event id (or an
    /// `iotdevice-1/` topic): what releases before typed events stored.
    Encoded {
        event: String,
        payload: Vec<u8>,
    },
}

/// The outcome of one command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandResult {
    pub command: String,
    pub rc: u16,
    pub message: String,
    #[serde(rename = "reqId")]
    pub req_id: Option<String>,
    /// The requested value as echoed back (long values shortened).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
    /// The value read back from the device after the write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readback: Option<Value>,
    /// Where the result goes instead of the event topic: the command was an MQTT 5
    /// request with a Response Topic. Kept with the queued row, never in the payload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<Reply>,
}

/// An MQTT 5 request's Response Topic and Correlation Data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    pub topic: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_data: Option<Vec<u8>>,
}

impl Event {
    /// A data event of `device_id`'s readings.
    pub fn new(
        device_id: &str,
        event_id: &str,
        qos: Qos,
        values: Map<String, Value>,
        at: OffsetDateTime,
    ) -> Self {
        Event {
            device_id: device_id.to_owned(),
            qos,
            at,
            body: Body::Data {
                event: event_id.to_owned(),
                values,
            },
        }
    }

    /// Platform JSON encoded by its producer, published as is by `platform` and
    /// `custom` (and decoded by the other profiles).
    pub fn encoded(device_id: &str, event_id: &str, qos: Qos, payload: Vec<u8>) -> Self {
        Event {
            device_id: device_id.to_owned(),
            qos,
            at: OffsetDateTime::now_utc(),
            body: Body::Encoded {
                event: event_id.to_owned(),
                payload,
            },
        }
    }

    /// The event id (`status`, `health`, `cmd-result`, a management path).
    pub fn name(&self) -> &str {
        match &self.body {
            Body::Data { event, .. } | Body::Encoded { event, .. } => event,
            Body::Health { .. } => HEALTH_EVENT,
            Body::CommandResult(_) => RESULT_EVENT,
            Body::Management { path, .. } => path,
        }
    }

    /// The platform's JSON body: `{"d": {...}, "ts": "..."}` for data and health,
    /// `{"rc", "message", "reqId", "d", "ts"}` for results, management bodies as they are.
    pub fn platform_json(&self) -> Vec<u8> {
        /// `{"d": ..., "ts": ...}` written straight from the values, not from a copy.
        #[derive(Serialize)]
        struct Reading<'a> {
            d: &'a Map<String, Value>,
            ts: &'a str,
        }
        // Encoded and management bodies carry no time of their own: none is formatted.
        let body = match &self.body {
            Body::Data { values, .. } => {
                let ts = timestamp(self.at);
                let reading = Reading { d: values, ts: &ts };
                return serde_json::to_vec(&reading).expect("JSON values always serialize");
            }
            Body::Health { online, error } => {
                let ts = timestamp(self.at);
                let mut d = Map::new();
                d.insert("online".into(), (*online).into());
                if let Some(error) = error {
                    d.insert("error".into(), error.as_str().into());
                }
                d.insert("since".into(), ts.as_str().into());
                serde_json::json!({ "d": d, "ts": ts })
            }
            Body::CommandResult(result) => {
                let mut d = serde_json::json!({ "command": result.command });
                if let Some(value) = &result.value {
                    d["value"] = value.clone();
                }
                if let Some(readback) = &result.readback {
                    d["readback"] = readback.clone();
                }
                serde_json::json!({
                    "rc": result.rc,
                    "message": result.message,
                    "reqId": result.req_id,
                    "d": d,
                    "ts": timestamp(self.at),
                })
            }
            Body::Management { body, .. } => {
                return serde_json::to_vec(body).expect("JSON values always serialize")
            }
            Body::Encoded { payload, .. } => return payload.clone(),
        };
        serde_json::to_vec(&body).expect("JSON values always serialize")
    }

    /// This event with an encoded body read back into its type (data, health or a
    /// command result, by event id and JSON shape), for profiles that do not send the
    /// platform's JSON; `None` when it is none of them (a management topic, not JSON).
    pub fn typed(&self) -> Option<Cow<'_, Event>> {
        let Body::Encoded { event, payload } = &self.body else {
            return Some(Cow::Borrowed(self));
        };
        let json: Value = serde_json::from_slice(payload).ok()?;
        let d = json.get("d")?.as_object()?;
        let at = json
            .get("ts")
            .and_then(Value::as_str)
            .and_then(|ts| {
                OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339).ok()
            })
            .unwrap_or(self.at);
        let body = match event.as_str() {
            HEALTH_EVENT => Body::Health {
                online: d.get("online")?.as_bool()?,
                error: d.get("error").and_then(Value::as_str).map(str::to_owned),
            },
            RESULT_EVENT => Body::CommandResult(CommandResult {
                command: d.get("command")?.as_str()?.to_owned(),
                rc: u16::try_from(json.get("rc")?.as_u64()?).ok()?,
                message: json.get("message")?.as_str()?.to_owned(),
                req_id: json.get("reqId").and_then(Value::as_str).map(str::to_owned),
                value: d.get("value").cloned(),
                readback: d.get("readback").cloned(),
                reply: None,
            }),
            name if name.contains('/') => return None,
            name => Body::Data {
                event: name.to_owned(),
                values: d.clone(),
            },
        };
        Some(Cow::Owned(Event {
            device_id: self.device_id.clone(),
            qos: self.qos,
            at,
            body,
        }))
    }

    /// The form the queue keeps.
    pub fn to_stored(&self) -> Stored {
        let (kind, payload) = match &self.body {
            Body::Encoded { payload, .. } => (Kind::Encoded, payload.clone()),
            Body::Data { values, .. } => (Kind::Data, to_json(values)),
            Body::Health { online, error } => (
                Kind::Health,
                to_json(&serde_json::json!({ "online": online, "error": error })),
            ),
            Body::CommandResult(result) => (Kind::CommandResult, to_json(result)),
            Body::Management { body, .. } => (Kind::Management, to_json(body)),
        };
        Stored {
            kind,
            event: self.name().to_owned(),
            payload,
            at_ms: unix_millis(self.at),
        }
    }
}

fn to_json(value: &impl Serialize) -> Vec<u8> {
    serde_json::to_vec(value).expect("JSON values always serialize")
}

/// What a queued row holds (the `kind` column).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Platform JSON, as releases before typed events queued every row.
    Encoded = 0,
    Data = 1,
    Health = 2,
    CommandResult = 3,
    Management = 4,
}

impl Kind {
    pub fn from_column(kind: i64) -> Option<Kind> {
        Some(match kind {
            0 => Kind::Encoded,
            1 => Kind::Data,
            2 => Kind::Health,
            3 => Kind::CommandResult,
            4 => Kind::Management,
            _ => return None,
        })
    }
}

/// An event as the queue stores it: its kind, event id, JSON body and time.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    pub kind: Kind,
    pub event: String,
    pub payload: Vec<u8>,
    pub at_ms: i64,
}

#[derive(Debug, thiserror::Error)]
#[error("queued {kind:?} event {event:?} cannot be read: {reason}")]
pub struct DecodeError {
    kind: Kind,
    event: String,
    reason: String,
}

impl DecodeError {
    /// A stored event whose bytes cannot be read back at all.
    pub fn unreadable(kind: Kind, event: &str, reason: String) -> Self {
        DecodeError {
            kind,
            event: event.to_owned(),
            reason,
        }
    }
}

impl Stored {
    /// The (QoS 1) event back from its stored form.
    pub fn decode(self, device_id: &str) -> Result<Event, DecodeError> {
        let Stored {
            kind,
            event,
            payload,
            at_ms,
        } = self;
        let fail = |reason: String| DecodeError {
            kind,
            event: event.clone(),
            reason,
        };
        let json = |bytes: &[u8]| serde_json::from_slice::<Value>(bytes);
        let body = match kind {
            Kind::Encoded => Body::Encoded { event, payload },
            Kind::Data => match json(&payload) {
                Ok(Value::Object(values)) => Body::Data { event, values },
                Ok(_) => return Err(fail("not an object".into())),
                Err(error) => return Err(fail(error.to_string())),
            },
            Kind::Health => {
                let value = json(&payload).map_err(|e| fail(e.to_string()))?;
                Body::Health {
                    online: value["online"].as_bool().unwrap_or(false),
                    error: value["error"].as_str().map(str::to_owned),
                }
            }
            Kind::CommandResult => Body::CommandResult(
                serde_json::from_slice(&payload).map_err(|e| fail(e.to_string()))?,
            ),
            Kind::Management => Body::Management {
                body: json(&payload).map_err(|e| fail(e.to_string()))?,
                path: event,
            },
        };
        Ok(Event {
            device_id: device_id.to_owned(),
            qos: Qos::AtLeastOnce,
            at: from_unix_millis(at_ms),
            body,
        })
    }
}

/// The platform JSON of a data event (`{"d": {...}, "ts": "..."}`, as
/// [`Event::platform_json`] writes it) from its stored values, without decoding them
/// into a map and encoding them again; `None` when they are not a JSON object.
pub fn stored_data_json(values: &[u8], at_ms: i64) -> Option<Vec<u8>> {
    let object = values.trim_ascii_start().first() == Some(&b'{');
    if !object || serde_json::from_slice::<serde::de::IgnoredAny>(values).is_err() {
        return None;
    }
    let ts = timestamp(from_unix_millis(at_ms));
    let mut json = Vec::with_capacity(values.len() + ts.len() + 16);
    json.extend_from_slice(b"{\"d\":");
    json.extend_from_slice(values);
    json.extend_from_slice(b",\"ts\":\"");
    json.extend_from_slice(ts.as_bytes());
    json.extend_from_slice(b"\"}");
    Some(json)
}

fn from_unix_millis(at_ms: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(at_ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// Unix time in milliseconds.
pub fn unix_millis(at: OffsetDateTime) -> i64 {
    i64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
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
mod tests;
