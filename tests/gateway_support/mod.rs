//! Shared pieces of the gateway's bus tests: start a gateway on a YAML config and
//! wait for the events it produces.
#![allow(dead_code)]

use std::time::Duration;

use fieldbridge::config::Config;
use fieldbridge::event::{Event, EventSink};
use fieldbridge::gateway::Gateway;
use serde_json::Value;
use tokio::sync::mpsc::Receiver;

/// Generous: these tests run on a loaded two-core machine.
pub const DEADLINE: Duration = Duration::from_secs(30);

pub struct Running {
    pub gateway: Gateway,
    pub events: Receiver<Event>,
}

pub fn start(yaml: &str) -> Running {
    let config = Config::from_str(yaml, "test.yaml").expect("test config is valid");
    let (sink, events) = EventSink::channel(1024);
    let gateway = Gateway::start(&config, sink).expect("gateway starts");
    Running { gateway, events }
}

/// An event as `(device, event id, payload)`.
pub fn parsed(event: &Event) -> (String, String, Value) {
    (
        event.device_id.clone(),
        event.name().to_owned(),
        serde_json::from_slice(&event.platform_json()).expect("payload is JSON"),
    )
}

/// Receives events until `pick` returns `Some`, or panics after `DEADLINE`.
pub async fn wait_for<T>(
    events: &mut Receiver<Event>,
    what: &str,
    mut pick: impl FnMut(&str, &str, &Value) -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let event = tokio::time::timeout_at(deadline, events.recv())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
            .expect("event channel open");
        let (device, id, payload) = parsed(&event);
        if let Some(found) = pick(&device, &id, &payload) {
            return found;
        }
    }
}

/// The next reading event of `device`.
pub async fn next_reading(events: &mut Receiver<Event>, device: &str) -> Value {
    wait_for(events, &format!("a reading of {device}"), |d, id, p| {
        (d == device && id != "health").then(|| p["d"].clone())
    })
    .await
}

/// The next health event of `device`: `online`, and the error if any.
pub async fn next_health(events: &mut Receiver<Event>, device: &str) -> (bool, Option<String>) {
    wait_for(
        events,
        &format!("a health event of {device}"),
        |d, id, p| {
            (d == device && id == "health").then(|| {
                (
                    p["d"]["online"].as_bool().expect("online is a bool"),
                    p["d"]["error"].as_str().map(str::to_owned),
                )
            })
        },
    )
    .await
}

pub fn f32_words(value: f32) -> [u16; 2] {
    let bits = value.to_bits();
    [(bits >> 16) as u16, bits as u16]
}
