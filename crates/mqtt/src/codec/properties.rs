//! Properties of MQTT 5 packets (section 2.2.2): one list type for every packet, checked
//! against the specification's table when read (which packet may carry which property,
//! which may repeat, which values are allowed).
//!
//! A list rather than a struct of optional fields: a packet without properties (every
//! packet of a 3.1.1 client) pays for an empty `Vec`, not for thirty empty fields.

use bytes::{BufMut, Bytes, BytesMut};
use bytestring::ByteString;

use super::wire::{self, Reader};
use super::Error;
use crate::topic::valid_topic_name;

/// The packets (and the will of a CONNECT) that carry properties; each allows its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PropertyContext {
    Connect,
    Will,
    ConnAck,
    Publish,
    /// PUBACK, PUBREC, PUBREL and PUBCOMP.
    Ack,
    Subscribe,
    SubAck,
    Unsubscribe,
    UnsubAck,
    Disconnect,
    Auth,
}

impl PropertyContext {
    const fn bit(self) -> u16 {
        1 << self as u16
    }

    fn name(self) -> &'static str {
        match self {
            PropertyContext::Connect => "CONNECT",
            PropertyContext::Will => "the will",
            PropertyContext::ConnAck => "CONNACK",
            PropertyContext::Publish => "PUBLISH",
            PropertyContext::Ack => "an acknowledgement",
            PropertyContext::Subscribe => "SUBSCRIBE",
            PropertyContext::SubAck => "SUBACK",
            PropertyContext::Unsubscribe => "UNSUBSCRIBE",
            PropertyContext::UnsubAck => "UNSUBACK",
            PropertyContext::Disconnect => "DISCONNECT",
            PropertyContext::Auth => "AUTH",
        }
    }
}

macro_rules! contexts {
    ($($context:ident)|*) => {
        0 $(| PropertyContext::$context.bit())*
    };
}

/// How a property's value is written on the wire (section 1.5 data types).
trait Wire {
    type Value;
    fn read(r: &mut Reader) -> Result<Self::Value, Error>;
    fn len(value: &Self::Value) -> usize;
    fn write(value: &Self::Value, buf: &mut BytesMut) -> Result<(), Error>;
}

struct Byte;
struct TwoByte;
struct FourByte;
struct VarInt;
struct Utf8;
struct Binary;
struct Utf8Pair;

impl Wire for Byte {
    type Value = u8;
    fn read(r: &mut Reader) -> Result<u8, Error> {
        r.u8()
    }
    fn len(_: &u8) -> usize {
        1
    }
    fn write(value: &u8, buf: &mut BytesMut) -> Result<(), Error> {
        buf.put_u8(*value);
        Ok(())
    }
}

impl Wire for TwoByte {
    type Value = u16;
    fn read(r: &mut Reader) -> Result<u16, Error> {
        r.u16()
    }
    fn len(_: &u16) -> usize {
        2
    }
    fn write(value: &u16, buf: &mut BytesMut) -> Result<(), Error> {
        buf.put_u16(*value);
        Ok(())
    }
}

impl Wire for FourByte {
    type Value = u32;
    fn read(r: &mut Reader) -> Result<u32, Error> {
        r.u32()
    }
    fn len(_: &u32) -> usize {
        4
    }
    fn write(value: &u32, buf: &mut BytesMut) -> Result<(), Error> {
        buf.put_u32(*value);
        Ok(())
    }
}

impl Wire for VarInt {
    type Value = u32;
    fn read(r: &mut Reader) -> Result<u32, Error> {
        r.var_int()
    }
    fn len(value: &u32) -> usize {
        wire::remaining_length_len(*value as usize)
    }
    fn write(value: &u32, buf: &mut BytesMut) -> Result<(), Error> {
        if *value as usize > wire::MAX_REMAINING_LENGTH {
            return Err(Error::Unencodable("variable byte integer too large"));
        }
        wire::put_var_int(buf, *value as usize);
        Ok(())
    }
}

impl Wire for Utf8 {
    type Value = ByteString;
    fn read(r: &mut Reader) -> Result<ByteString, Error> {
        r.string()
    }
    fn len(value: &ByteString) -> usize {
        wire::field_len(value.as_bytes())
    }
    fn write(value: &ByteString, buf: &mut BytesMut) -> Result<(), Error> {
        wire::put_field(buf, value.as_bytes(), "property string too long")
    }
}

impl Wire for Binary {
    type Value = Bytes;
    fn read(r: &mut Reader) -> Result<Bytes, Error> {
        r.binary()
    }
    fn len(value: &Bytes) -> usize {
        wire::field_len(value)
    }
    fn write(value: &Bytes, buf: &mut BytesMut) -> Result<(), Error> {
        wire::put_field(buf, value, "property data too long")
    }
}

impl Wire for Utf8Pair {
    type Value = (ByteString, ByteString);
    fn read(r: &mut Reader) -> Result<Self::Value, Error> {
        Ok((r.string()?, r.string()?))
    }
    fn len((name, value): &Self::Value) -> usize {
        Utf8::len(name) + Utf8::len(value)
    }
    fn write((name, value): &Self::Value, buf: &mut BytesMut) -> Result<(), Error> {
        Utf8::write(name, buf)?;
        Utf8::write(value, buf)
    }
}

macro_rules! property_table {
    ($($(#[$doc:meta])* $id:literal $name:ident($type:ty as $wire:ident) in $contexts:expr, getter $getter:ident;)*) => {
        /// One property of an MQTT 5 packet.
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub enum Property {
            $($(#[$doc])* $name($type),)*
        }

        impl Property {
            /// The property's identifier on the wire.
            pub fn id(&self) -> u8 {
                match self {
                    $(Property::$name(_) => $id,)*
                }
            }

            fn allowed(id: u8) -> Option<u16> {
                match id {
                    $($id => Some($contexts),)*
                    _ => None,
                }
            }

            fn read_value(id: u8, r: &mut Reader) -> Result<Self, Error> {
                match id {
                    $($id => Ok(Property::$name($wire::read(r)?)),)*
                    other => Err(Error::UnknownProperty(other.into())),
                }
            }

            fn value_len(&self) -> usize {
                match self {
                    $(Property::$name(value) => $wire::len(value),)*
                }
            }

            fn write_value(&self, buf: &mut BytesMut) -> Result<(), Error> {
                match self {
                    $(Property::$name(value) => $wire::write(value, buf),)*
                }
            }
        }

        impl Properties {
            $(
                #[doc = concat!("The first `", stringify!($name), "` property, if any.")]
                pub fn $getter(&self) -> Option<&$type> {
                    self.0.iter().find_map(|property| match property {
                        Property::$name(value) => Some(value),
                        #[allow(unreachable_patterns)]
                        _ => None,
                    })
                }
            )*
        }
    };
}

property_table! {
    /// 0 unspecified bytes, 1 UTF-8 text.
    0x01 PayloadFormatIndicator(u8 as Byte) in contexts!(Publish | Will), getter payload_format_indicator;
    /// Seconds the message lives.
    0x02 MessageExpiryInterval(u32 as FourByte) in contexts!(Publish | Will), getter message_expiry_interval;
    0x03 ContentType(ByteString as Utf8) in contexts!(Publish | Will), getter content_type;
    0x08 ResponseTopic(ByteString as Utf8) in contexts!(Publish | Will), getter response_topic;
    0x09 CorrelationData(Bytes as Binary) in contexts!(Publish | Will), getter correlation_data;
    0x0B SubscriptionIdentifier(u32 as VarInt) in contexts!(Publish | Subscribe), getter subscription_identifier;
    /// Seconds the session outlives its connection; 0xFFFFFFFF forever.
    0x11 SessionExpiryInterval(u32 as FourByte) in contexts!(Connect | ConnAck | Disconnect), getter session_expiry_interval;
    0x12 AssignedClientIdentifier(ByteString as Utf8) in contexts!(ConnAck), getter assigned_client_identifier;
    0x13 ServerKeepAlive(u16 as TwoByte) in contexts!(ConnAck), getter server_keep_alive;
    0x15 AuthenticationMethod(ByteString as Utf8) in contexts!(Connect | ConnAck | Auth), getter authentication_method;
    0x16 AuthenticationData(Bytes as Binary) in contexts!(Connect | ConnAck | Auth), getter authentication_data;
    0x17 RequestProblemInformation(u8 as Byte) in contexts!(Connect), getter request_problem_information;
    /// Seconds to wait before publishing the will.
    0x18 WillDelayInterval(u32 as FourByte) in contexts!(Will), getter will_delay_interval;
    0x19 RequestResponseInformation(u8 as Byte) in contexts!(Connect), getter request_response_information;
    0x1A ResponseInformation(ByteString as Utf8) in contexts!(ConnAck), getter response_information;
    0x1C ServerReference(ByteString as Utf8) in contexts!(ConnAck | Disconnect), getter server_reference;
    0x1F ReasonString(ByteString as Utf8) in contexts!(ConnAck | Ack | SubAck | UnsubAck | Disconnect | Auth), getter reason_string;
    0x21 ReceiveMaximum(u16 as TwoByte) in contexts!(Connect | ConnAck), getter receive_maximum;
    0x22 TopicAliasMaximum(u16 as TwoByte) in contexts!(Connect | ConnAck), getter topic_alias_maximum;
    0x23 TopicAlias(u16 as TwoByte) in contexts!(Publish), getter topic_alias;
    0x24 MaximumQoS(u8 as Byte) in contexts!(ConnAck), getter maximum_qos;
    0x25 RetainAvailable(u8 as Byte) in contexts!(ConnAck), getter retain_available;
    0x26 UserProperty((ByteString, ByteString) as Utf8Pair) in contexts!(Connect | Will | ConnAck | Publish | Ack | Subscribe | SubAck | Unsubscribe | UnsubAck | Disconnect | Auth), getter user_property;
    0x27 MaximumPacketSize(u32 as FourByte) in contexts!(Connect | ConnAck), getter maximum_packet_size;
    0x28 WildcardSubscriptionAvailable(u8 as Byte) in contexts!(ConnAck), getter wildcard_subscription_available;
    0x29 SubscriptionIdentifierAvailable(u8 as Byte) in contexts!(ConnAck), getter subscription_identifier_available;
    0x2A SharedSubscriptionAvailable(u8 as Byte) in contexts!(ConnAck), getter shared_subscription_available;
}

/// The properties of one packet, in the order they were read or pushed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Properties(Vec<Property>);

impl Properties {
    pub fn new() -> Self {
        Self(Vec::new())
    }

    /// An empty list with room for `capacity` properties (one allocation for a packet
    /// whose properties are known in advance).
    pub fn with_capacity(capacity: usize) -> Self {
        Self(Vec::with_capacity(capacity))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> std::slice::Iter<'_, Property> {
        self.0.iter()
    }

    pub fn push(&mut self, property: Property) {
        self.0.push(property);
    }

    /// `self` with `property` appended (for building packets).
    pub fn with(mut self, property: Property) -> Self {
        self.0.push(property);
        self
    }

    /// Keeps the properties `keep` accepts.
    pub fn retain(&mut self, keep: impl FnMut(&Property) -> bool) {
        self.0.retain(keep);
    }

    /// The user properties, in order, repetitions included.
    pub fn user_properties(&self) -> impl Iterator<Item = &(ByteString, ByteString)> {
        self.0.iter().filter_map(|property| match property {
            Property::UserProperty(pair) => Some(pair),
            _ => None,
        })
    }

    /// Every subscription identifier (a PUBLISH may carry several).
    pub fn subscription_identifiers(&self) -> impl Iterator<Item = u32> + '_ {
        self.0.iter().filter_map(|property| match property {
            Property::SubscriptionIdentifier(id) => Some(*id),
            _ => None,
        })
    }

    /// The list as MQTT 5 encodes it (length prefix included), to store it.
    pub fn to_bytes(&self) -> Bytes {
        let mut buf = BytesMut::with_capacity(self.encoded_len());
        match self.write(&mut buf) {
            Ok(()) => buf.freeze(),
            // Only a string over 64 KiB fails, which no decoded property holds.
            Err(_) => Bytes::from_static(&[0]),
        }
    }

    /// A list stored with [`Properties::to_bytes`], checked as a PUBLISH's.
    pub fn from_bytes(bytes: Bytes) -> Result<Self, Error> {
        let mut reader = Reader::new(bytes);
        let properties = Self::read(&mut reader, PropertyContext::Publish)?;
        reader.finish()?;
        Ok(properties)
    }

    /// Bytes of the property list, without its length prefix.
    fn body_len(&self) -> usize {
        self.0.iter().map(|property| 1 + property.value_len()).sum()
    }

    /// Bytes of the property list as encoded: length prefix and properties.
    pub(crate) fn encoded_len(&self) -> usize {
        let body = self.body_len();
        wire::remaining_length_len(body) + body
    }

    pub(crate) fn write(&self, buf: &mut BytesMut) -> Result<(), Error> {
        wire::put_var_int(buf, self.body_len());
        for property in &self.0 {
            buf.put_u8(property.id());
            property.write_value(buf)?;
        }
        Ok(())
    }

    /// Reads a property list (length prefix included) of a packet of kind `context`.
    pub(crate) fn read(r: &mut Reader, context: PropertyContext) -> Result<Self, Error> {
        let len = r.var_int()? as usize;
        let mut r = r.split(len)?;
        let mut list = Vec::new();
        let mut seen = 0u64;
        while r.has_remaining() {
            let id = r.var_int()?;
            let byte = u8::try_from(id).map_err(|_| Error::UnknownProperty(id))?;
            let allowed = Property::allowed(byte).ok_or(Error::UnknownProperty(id))?;
            if allowed & context.bit() == 0 {
                return Err(Error::PropertyNotAllowed {
                    id: byte,
                    packet: context.name(),
                });
            }
            let property = Property::read_value(byte, &mut r)?;
            let repeatable = matches!(property, Property::UserProperty(_))
                || (context == PropertyContext::Publish
                    && matches!(property, Property::SubscriptionIdentifier(_)));
            if !repeatable && seen & (1 << byte) != 0 {
                return Err(Error::DuplicateProperty(byte));
            }
            seen |= 1 << byte;
            check_value(&property)?;
            list.push(property);
        }
        Ok(Self(list))
    }
}

impl<'a> IntoIterator for &'a Properties {
    type Item = &'a Property;
    type IntoIter = std::slice::Iter<'a, Property>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl FromIterator<Property> for Properties {
    fn from_iter<T: IntoIterator<Item = Property>>(iter: T) -> Self {
        Self(iter.into_iter().collect())
    }
}

/// The values the specification forbids: each is a Protocol Error.
fn check_value(property: &Property) -> Result<(), Error> {
    let valid = match property {
        Property::PayloadFormatIndicator(value)
        | Property::RequestProblemInformation(value)
        | Property::RequestResponseInformation(value)
        | Property::MaximumQoS(value)
        | Property::RetainAvailable(value)
        | Property::WildcardSubscriptionAvailable(value)
        | Property::SubscriptionIdentifierAvailable(value)
        | Property::SharedSubscriptionAvailable(value) => *value <= 1,
        Property::ReceiveMaximum(value) => *value != 0,
        Property::MaximumPacketSize(value) | Property::SubscriptionIdentifier(value) => *value != 0,
        Property::ResponseTopic(topic) => valid_topic_name(topic),
        _ => true,
    };
    if valid {
        Ok(())
    } else {
        Err(Error::InvalidPropertyValue(property.id()))
    }
}
