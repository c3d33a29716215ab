//! Status messages: when a device or application connects or disconnects, the broker
//! publishes a retained JSON document on its `mon` topic (`iot-2/type/<t>/id/<d>/mon`,
//! `iot-2/app/<a>/mon`).

use std::sync::Arc;
use std::time::SystemTime;

use serde_json::json;

use super::PlatformClient;
use crate::context::BrokerContext;
use crate::message::Message;
use fieldbridge_mqtt::codec::QoS;

/// Bytes and messages of one connection, for its disconnect status.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    pub read_bytes: u64,
    pub read_messages: u64,
    pub write_bytes: u64,
    pub write_messages: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Connect,
    Disconnect,
}

fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_millis(time).to_string()
}

/// The status document of `client` at `now`.
pub(crate) fn document(
    client: &PlatformClient,
    action: Action,
    reason: Option<&str>,
    now: SystemTime,
) -> serde_json::Value {
    let mut document = json!({
        "Action": match action {
            Action::Connect => "Connect",
            Action::Disconnect => "Disconnect",
        },
        "Time": rfc3339(now),
        "ClientAddr": client.peer.ip().to_string(),
        "ClientID": client.identity.to_string(),
        "Port": client.local_port,
        "Ssl": client.transport.encrypted(),
        "Protocol": client.transport.name(),
        "User": client.username.as_deref().unwrap_or_default(),
        "ConnectTime": rfc3339(client.connected_at),
    });
    if action == Action::Disconnect {
        let totals = client.totals;
        if let Some(object) = document.as_object_mut() {
            object.insert("Reason".into(), json!(reason.unwrap_or_default()));
            object.insert("ReadBytes".into(), json!(totals.read_bytes));
            object.insert("ReadMsg".into(), json!(totals.read_messages));
            object.insert("WriteBytes".into(), json!(totals.write_bytes));
            object.insert("WriteMsg".into(), json!(totals.write_messages));
            // Quickstart: events over the rate limit.
            object.insert("DroppedMsg".into(), json!(client.dropped_events()));
        }
    }
    document
}

/// Publishes the client's status. `retain` is false for the disconnect of a connection
/// that was taken over: the new connection's status stays the retained one.
pub(crate) async fn publish(
    ctx: &BrokerContext,
    client: &PlatformClient,
    action: Action,
    reason: Option<&str>,
    retain: bool,
) {
    let payload = document(client, action, reason, SystemTime::now()).to_string();
    let message = Arc::new(Message::new(
        client.identity.status_topic(),
        payload,
        QoS::AtMostOnce,
        retain,
    ));
    if let Err(error) = ctx
        .router
        .publish(message, &mut Vec::new(), false, None)
        .await
    {
        tracing::warn!(client = %client.identity, %error, "status message not stored durably");
    }
}
