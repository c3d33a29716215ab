//! What a client's CONNECT told the broker about how to talk to it: the protocol version,
//! and for MQTT 5 the largest packet it takes, whether it wants reasons explained, and the
//! topic aliases of both directions. Decides, never sends.

use std::collections::HashMap;

use bytestring::ByteString;

use crate::message::Message;
use fieldbridge_mqtt::codec::{
    self, Connect, Packet, Properties, Property, ProtocolVersion, Publish, QoS, ReasonCode,
};

/// The longest Reason String sent: enough to explain, short enough for any client.
const MAX_REASON_STRING: usize = 256;

/// Why a client's topic alias is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct AliasError {
    pub reason: ReasonCode,
    pub what: &'static str,
}

/// Topic aliases of one connection (MQTT 5 section 3.3.2.3.4), both directions. They die
/// with the connection.
#[derive(Debug, Default)]
struct Aliases {
    /// Set by the client: alias to topic.
    inbound: HashMap<u16, ByteString>,
    /// Set by the broker: topic to alias, at most the client's Topic Alias Maximum.
    outbound: HashMap<ByteString, u16>,
}

#[derive(Debug)]
pub(super) struct Peer {
    pub version: ProtocolVersion,
    /// The client's Maximum Packet Size (no limit before MQTT 5, or when not set).
    pub max_packet_size: usize,
    /// Request Problem Information: whether acknowledgements may carry a Reason String.
    problem_information: bool,
    /// Aliases the client may set (the broker's Topic Alias Maximum).
    inbound_alias_max: u16,
    /// Aliases the broker may set (the client's Topic Alias Maximum, capped by ours).
    outbound_alias_max: u16,
    /// Allocated by the first alias: most connections never use one.
    aliases: Option<Box<Aliases>>,
}

impl Peer {
    /// The peer a CONNECT describes; `alias_max` is the broker's Topic Alias Maximum.
    pub fn from_connect(connect: &Connect, alias_max: u16) -> Self {
        let properties = &connect.properties;
        let v5 = connect.protocol.is_v5();
        Self {
            version: connect.protocol,
            max_packet_size: properties
                .maximum_packet_size()
                .filter(|_| v5)
                .map_or(usize::MAX, |&max| max as usize),
            problem_information: properties.request_problem_information() != Some(&0),
            inbound_alias_max: if v5 { alias_max } else { 0 },
            outbound_alias_max: properties
                .topic_alias_maximum()
                .filter(|_| v5)
                .map_or(0, |&max| max.min(alias_max)),
            aliases: None,
        }
    }

    /// Adds `what` as the Reason String of an acknowledgement, if the client wants them.
    pub fn explain(&self, properties: &mut Properties, what: &str) {
        if self.problem_information && self.version.is_v5() {
            properties.push(Property::ReasonString(reason_string(what)));
        }
    }

    /// Replaces a PUBLISH's Topic Alias by the topic it stands for, remembering a new one.
    /// The alias property itself is removed: it belongs to this connection only.
    pub fn resolve_alias(&mut self, publish: &mut Publish) -> Result<(), AliasError> {
        let Some(&alias) = publish.properties.topic_alias() else {
            return Ok(());
        };
        if alias == 0 || alias > self.inbound_alias_max {
            return Err(AliasError {
                reason: ReasonCode::TopicAliasInvalid,
                what: "topic alias 0 or above the maximum",
            });
        }
        publish
            .properties
            .retain(|property| !matches!(property, Property::TopicAlias(_)));
        let aliases = self.aliases.get_or_insert_with(Box::default);
        if publish.topic.is_empty() {
            match aliases.inbound.get(&alias) {
                Some(topic) => publish.topic = topic.clone(),
                None => {
                    return Err(AliasError {
                        reason: ReasonCode::ProtocolError,
                        what: "topic alias never set",
                    })
                }
            }
        } else {
            // Kept apart from the read buffer the topic arrived in.
            aliases
                .inbound
                .insert(alias, ByteString::from(&*publish.topic));
        }
        Ok(())
    }

    /// Whether the client's Maximum Packet Size lets `message` through: measured as the
    /// longest PUBLISH it could become (full topic, packet identifier, its properties and
    /// the most an expiry and subscription identifiers add).
    pub fn may_take(&self, message: &Message) -> bool {
        if self.max_packet_size == usize::MAX {
            return true;
        }
        let publish = Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: message.topic.clone(),
            pkid: 1,
            payload: message.payload.clone(),
            properties: message.properties.clone(),
        };
        // Message Expiry Interval (1 + 4 bytes) and a few identifiers (1 + 4 each).
        const PER_DELIVERY: usize = 5 + 4 * 5;
        codec::encoded_len(&Packet::Publish(publish), self.version) + PER_DELIVERY
            <= self.max_packet_size
    }

    /// Gives an outgoing PUBLISH a topic alias where the client allows them: the first
    /// message of a topic carries topic and alias, later ones the alias alone. Topics past
    /// the client's maximum keep their names.
    pub fn alias_outgoing(&mut self, publish: &mut Publish) {
        if self.outbound_alias_max == 0 {
            return;
        }
        let aliases = self.aliases.get_or_insert_with(Box::default);
        if let Some(&alias) = aliases.outbound.get(&publish.topic) {
            publish.topic = ByteString::new();
            publish.properties.push(Property::TopicAlias(alias));
            return;
        }
        let used = aliases.outbound.len();
        if used < usize::from(self.outbound_alias_max) {
            // `used` is below a u16 maximum.
            let alias = used as u16 + 1;
            aliases
                .outbound
                .insert(ByteString::from(&*publish.topic), alias);
            publish.properties.push(Property::TopicAlias(alias));
        }
    }
}

/// `what`, cut at a character boundary to [`MAX_REASON_STRING`] bytes.
fn reason_string(what: &str) -> ByteString {
    let mut end = what.len().min(MAX_REASON_STRING);
    while !what.is_char_boundary(end) {
        end -= 1;
    }
    ByteString::from(&what[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use fieldbridge_mqtt::codec::QoS;

    fn connect(properties: Properties) -> Connect {
        Connect {
            protocol: ProtocolVersion::V5,
            clean_session: true,
            keep_alive: 0,
            client_id: "c".into(),
            will: None,
            username: None,
            password: None,
            properties,
        }
    }

    fn properties_with_max(size: u32) -> Properties {
        Properties::new().with(Property::MaximumPacketSize(size))
    }

    fn publish(topic: &str, alias: Option<u16>) -> Publish {
        let mut properties = Properties::new();
        if let Some(alias) = alias {
            properties.push(Property::TopicAlias(alias));
        }
        Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: topic.into(),
            pkid: 0,
            payload: Bytes::from_static(b"x"),
            properties,
        }
    }

    #[test]
    fn inbound_aliases_are_set_used_and_bounded() {
        let mut peer = Peer::from_connect(&connect(Properties::new()), 2);
        let mut first = publish("a/b", Some(2));
        peer.resolve_alias(&mut first).unwrap();
        assert_eq!(first.topic, "a/b");
        assert!(first.properties.is_empty(), "alias not forwarded");
        let mut again = publish("", Some(2));
        peer.resolve_alias(&mut again).unwrap();
        assert_eq!(again.topic, "a/b");
        let mut unknown = publish("", Some(1));
        assert_eq!(
            peer.resolve_alias(&mut unknown).unwrap_err().reason,
            ReasonCode::ProtocolError
        );
        for bad in [0, 3] {
            assert_eq!(
                peer.resolve_alias(&mut publish("t", Some(bad)))
                    .unwrap_err()
                    .reason,
                ReasonCode::TopicAliasInvalid
            );
        }
        // A 3.1.1 peer (or a broker maximum of 0) takes none.
        let mut none = Peer::from_connect(&connect(Properties::new()), 0);
        assert!(none.resolve_alias(&mut publish("t", Some(1))).is_err());
    }

    #[test]
    fn outbound_aliases_shorten_repeats_up_to_the_clients_maximum() {
        let properties = Properties::new().with(Property::TopicAliasMaximum(1));
        let mut peer = Peer::from_connect(&connect(properties), 10);
        let mut first = publish("a/b", None);
        peer.alias_outgoing(&mut first);
        assert_eq!(first.topic, "a/b");
        assert_eq!(first.properties.topic_alias(), Some(&1));
        let mut second = publish("a/b", None);
        peer.alias_outgoing(&mut second);
        assert_eq!(second.topic, "");
        assert_eq!(second.properties.topic_alias(), Some(&1));
        let mut other = publish("c", None);
        peer.alias_outgoing(&mut other);
        assert_eq!(other.topic, "c");
        assert!(
            other.properties.is_empty(),
            "no alias left for a second topic"
        );
        // A client that allows none gets none.
        let mut plain = Peer::from_connect(&connect(Properties::new()), 10);
        let mut message = publish("a/b", None);
        plain.alias_outgoing(&mut message);
        assert!(message.properties.is_empty());
    }

    #[test]
    fn messages_above_the_clients_maximum_are_not_taken() {
        let peer = Peer::from_connect(&connect(properties_with_max(40)), 0);
        // 2 + 2 + 1 topic + 2 pkid + 1 properties + 1 payload + 25 per delivery = 34;
        // 7 more topic bytes make 41.
        assert!(peer.may_take(&Message::new("a", "x", QoS::AtLeastOnce, false)));
        assert!(!peer.may_take(&Message::new("abcdefgh", "x", QoS::AtLeastOnce, false)));
        let mut old = connect(properties_with_max(40));
        old.protocol = ProtocolVersion::V311;
        let v311 = Peer::from_connect(&old, 0);
        assert!(v311.may_take(&Message::new("abcdefg", "x", QoS::AtLeastOnce, false)));
    }

    #[test]
    fn reasons_are_explained_only_to_clients_that_want_them() {
        let mut properties = Properties::new();
        Peer::from_connect(&connect(Properties::new()), 0).explain(&mut properties, "why");
        assert_eq!(properties.reason_string().map(|s| &**s), Some("why"));
        let quiet = Properties::new().with(Property::RequestProblemInformation(0));
        let mut properties = Properties::new();
        Peer::from_connect(&connect(quiet), 0).explain(&mut properties, "why");
        assert!(properties.is_empty());
        assert_eq!(reason_string(&"é".repeat(200)).len(), 256);
    }
}
