//! Packet bodies of every version: MQTT 3.1 and 3.1.1 (the same format but for CONNECT's
//! protocol name and level), and MQTT 5.0, which adds reason codes and properties at fixed
//! places of the same packets, and the AUTH packet. One function per direction: the
//! version decides only whether those fields are there.

use bytes::{BufMut, BytesMut};

use super::packet::{
    Auth, ConnAck, Connect, Disconnect, LastWill, Packet, ProtocolVersion, PubAck, PubComp, PubRec,
    PubRel, Publish, QoS, RetainHandling, SubAck, Subscribe, SubscribeFilter, SubscribeReturnCode,
    UnsubAck, Unsubscribe,
};
use super::properties::{Properties, PropertyContext};
use super::reason::{ReasonCode, ReasonContext};
use super::wire::{self, field_len, put_field, put_packet_id, FixedHeader, Reader};
use super::Error;
use crate::topic::{is_shared, valid_topic_filter, valid_topic_name};

const CLEAN_SESSION: u8 = 0x02;
const WILL: u8 = 0x04;
const WILL_QOS_SHIFT: u8 = 3;
const WILL_RETAIN: u8 = 0x20;
const PASSWORD: u8 = 0x40;
const USERNAME: u8 = 0x80;
const CONNECT_RESERVED: u8 = 0x01;

const NO_LOCAL: u8 = 0x04;
const RETAIN_AS_PUBLISHED: u8 = 0x08;
const RETAIN_HANDLING_SHIFT: u8 = 4;

/// SUBACK's refusal in 3.1.1, whatever the reason.
const SUBACK_FAILURE: u8 = 0x80;

/// Reads the rest of a CONNECT, after its protocol name and level.
pub(crate) fn read_connect(protocol: ProtocolVersion, mut r: Reader) -> Result<Packet, Error> {
    let v5 = protocol.is_v5();
    let flags = r.u8()?;
    if flags & CONNECT_RESERVED != 0 {
        return Err(Error::Malformed("reserved CONNECT flag set"));
    }
    let will_qos = QoS::try_from((flags >> WILL_QOS_SHIFT) & 0b11)?;
    let has_will = flags & WILL != 0;
    let will_retain = flags & WILL_RETAIN != 0;
    if !has_will && (will_qos != QoS::AtMostOnce || will_retain) {
        return Err(Error::Malformed("will QoS or retain set without a will"));
    }
    let has_username = flags & USERNAME != 0;
    let has_password = flags & PASSWORD != 0;
    if has_password && !has_username && !v5 {
        return Err(Error::Malformed("password without a user name"));
    }
    let keep_alive = r.u16()?;
    let properties = read_properties(&mut r, v5, PropertyContext::Connect)?;
    let client_id = r.name()?;
    let will = if has_will {
        let properties = read_properties(&mut r, v5, PropertyContext::Will)?;
        let topic = r.name()?;
        if !valid_topic_name(&topic) {
            return Err(Error::InvalidTopicName);
        }
        let payload = r.binary()?;
        Some(LastWill {
            topic,
            payload,
            qos: will_qos,
            retain: will_retain,
            properties,
        })
    } else {
        None
    };
    let username = has_username.then(|| r.name()).transpose()?;
    let password = has_password.then(|| r.binary()).transpose()?;
    r.finish()?;
    Ok(Packet::Connect(Box::new(Connect {
        protocol,
        clean_session: flags & CLEAN_SESSION != 0,
        keep_alive,
        client_id,
        will,
        username,
        password,
        properties,
    })))
}

/// Reads any packet but CONNECT; the fixed header is already checked.
pub(crate) fn read(
    header: FixedHeader,
    mut r: Reader,
    version: ProtocolVersion,
) -> Result<Packet, Error> {
    let v5 = version.is_v5();
    let packet = match header.packet_type() {
        wire::CONNACK => {
            let flags = r.u8()?;
            if flags & 0xfe != 0 {
                return Err(Error::Malformed("reserved CONNACK flag set"));
            }
            let code = if v5 {
                ReasonCode::read(r.u8()?, ReasonContext::ConnAck)?
            } else {
                ReasonCode::from_v311_connack(r.u8()?)?
            };
            let session_present = flags & 0x01 != 0;
            if session_present && code.is_failure() {
                return Err(Error::Malformed("session present on a refused connection"));
            }
            Packet::ConnAck(ConnAck {
                session_present,
                code,
                properties: read_properties(&mut r, v5, PropertyContext::ConnAck)?,
            })
        }
        wire::PUBLISH => return read_publish(header.flags(), r, v5),
        ack @ (wire::PUBACK | wire::PUBREC | wire::PUBREL | wire::PUBCOMP) => {
            read_ack(ack, &mut r, v5)?
        }
        wire::SUBSCRIBE => Packet::Subscribe(read_subscribe(&mut r, v5)?),
        wire::SUBACK => {
            let pkid = r.packet_id()?;
            let properties = read_properties(&mut r, v5, PropertyContext::SubAck)?;
            let mut return_codes = Vec::new();
            while r.has_remaining() {
                return_codes.push(read_suback_code(r.u8()?, v5)?);
            }
            if return_codes.is_empty() {
                return Err(Error::Malformed("SUBACK without return codes"));
            }
            Packet::SubAck(SubAck {
                pkid,
                return_codes,
                properties,
            })
        }
        wire::UNSUBSCRIBE => {
            let pkid = r.packet_id()?;
            let properties = read_properties(&mut r, v5, PropertyContext::Unsubscribe)?;
            let mut filters = Vec::new();
            while r.has_remaining() {
                filters.push(read_filter(&mut r)?);
            }
            if filters.is_empty() {
                return Err(Error::Malformed("UNSUBSCRIBE without topic filters"));
            }
            Packet::Unsubscribe(Unsubscribe {
                pkid,
                filters,
                properties,
            })
        }
        wire::UNSUBACK => {
            let pkid = r.packet_id()?;
            let properties = read_properties(&mut r, v5, PropertyContext::UnsubAck)?;
            let mut reason_codes = Vec::new();
            if v5 {
                while r.has_remaining() {
                    reason_codes.push(ReasonCode::read(r.u8()?, ReasonContext::UnsubAck)?);
                }
                if reason_codes.is_empty() {
                    return Err(Error::Malformed("UNSUBACK without reason codes"));
                }
            }
            Packet::UnsubAck(UnsubAck {
                pkid,
                reason_codes,
                properties,
            })
        }
        wire::PINGREQ => Packet::PingReq,
        wire::PINGRESP => Packet::PingResp,
        wire::DISCONNECT => {
            let (reason, properties) = read_reason(&mut r, v5, ReasonContext::Disconnect)?;
            Packet::Disconnect(Disconnect { reason, properties })
        }
        wire::AUTH if v5 => {
            let (reason, properties) = read_reason(&mut r, v5, ReasonContext::Auth)?;
            Packet::Auth(Auth { reason, properties })
        }
        wire::AUTH => return Err(Error::InvalidPacketType(wire::AUTH)),
        _ => return Err(Error::Malformed("unexpected packet type")),
    };
    r.finish()?;
    Ok(packet)
}

/// A property list where the version has one; none before MQTT 5.
fn read_properties(
    r: &mut Reader,
    v5: bool,
    context: PropertyContext,
) -> Result<Properties, Error> {
    if v5 {
        Properties::read(r, context)
    } else {
        Ok(Properties::new())
    }
}

/// PUBACK, PUBREC, PUBREL or PUBCOMP: a packet identifier, and for MQTT 5 a reason code
/// and properties (both optional: a body of two bytes means success).
fn read_ack(packet_type: u8, r: &mut Reader, v5: bool) -> Result<Packet, Error> {
    let pkid = r.packet_id()?;
    let context = match packet_type {
        wire::PUBACK | wire::PUBREC => ReasonContext::PubAck,
        _ => ReasonContext::PubRel,
    };
    let (reason, properties) = read_reason(r, v5, context)?;
    Ok(match packet_type {
        wire::PUBACK => Packet::PubAck(PubAck {
            pkid,
            reason,
            properties,
        }),
        wire::PUBREC => Packet::PubRec(PubRec {
            pkid,
            reason,
            properties,
        }),
        wire::PUBREL => Packet::PubRel(PubRel {
            pkid,
            reason,
            properties,
        }),
        _ => Packet::PubComp(PubComp {
            pkid,
            reason,
            properties,
        }),
    })
}

/// An optional reason code and optional properties (MQTT 5 acknowledgements, DISCONNECT,
/// AUTH); nothing at all means success.
fn read_reason(
    r: &mut Reader,
    v5: bool,
    context: ReasonContext,
) -> Result<(ReasonCode, Properties), Error> {
    if !v5 || !r.has_remaining() {
        return Ok((ReasonCode::Success, Properties::new()));
    }
    let reason = ReasonCode::read(r.u8()?, context)?;
    let properties = if r.has_remaining() {
        let property_context = match context {
            ReasonContext::Disconnect => PropertyContext::Disconnect,
            ReasonContext::Auth => PropertyContext::Auth,
            _ => PropertyContext::Ack,
        };
        Properties::read(r, property_context)?
    } else {
        Properties::new()
    };
    Ok((reason, properties))
}

fn read_suback_code(byte: u8, v5: bool) -> Result<SubscribeReturnCode, Error> {
    if byte <= 2 {
        return QoS::try_from(byte).map(SubscribeReturnCode::Success);
    }
    if v5 {
        return ReasonCode::read(byte, ReasonContext::SubAck).map(SubscribeReturnCode::Failure);
    }
    if byte == SUBACK_FAILURE {
        return Ok(SubscribeReturnCode::Failure(ReasonCode::UnspecifiedError));
    }
    Err(Error::Malformed("unknown SUBACK return code"))
}

fn read_publish(flags: u8, mut r: Reader, v5: bool) -> Result<Packet, Error> {
    let qos = QoS::try_from((flags >> 1) & 0b11)?;
    let topic = r.name()?;
    let pkid = if qos == QoS::AtMostOnce {
        0
    } else {
        r.packet_id()?
    };
    let properties = read_properties(&mut r, v5, PropertyContext::Publish)?;
    // MQTT 5: an empty topic name stands for the one a Topic Alias was set to.
    let aliased = topic.is_empty() && properties.topic_alias().is_some();
    if !aliased && !valid_topic_name(&topic) {
        if topic.is_empty() && v5 {
            return Err(Error::Protocol("empty topic name without a topic alias"));
        }
        return Err(Error::InvalidTopicName);
    }
    Ok(Packet::Publish(Publish {
        dup: flags & 0b1000 != 0,
        qos,
        retain: flags & 0b0001 != 0,
        topic,
        pkid,
        payload: r.rest(),
        properties,
    }))
}

fn read_subscribe(r: &mut Reader, v5: bool) -> Result<Subscribe, Error> {
    let pkid = r.packet_id()?;
    let properties = read_properties(r, v5, PropertyContext::Subscribe)?;
    let mut filters = Vec::new();
    while r.has_remaining() {
        let filter = read_filter(r)?;
        let options = r.u8()?;
        let reserved = if v5 { 0b1100_0000 } else { 0b1111_1100 };
        if options & reserved != 0 {
            return Err(Error::Malformed(
                "reserved bits set in subscription options",
            ));
        }
        let retain_handling = match options >> RETAIN_HANDLING_SHIFT & 0b11 {
            0 => RetainHandling::OnSubscribe,
            1 => RetainHandling::OnNewSubscription,
            2 => RetainHandling::Never,
            _ => return Err(Error::Protocol("retain handling 3")),
        };
        let no_local = options & NO_LOCAL != 0;
        if no_local && is_shared(&filter) {
            return Err(Error::Protocol("no local on a shared subscription"));
        }
        filters.push(SubscribeFilter {
            filter,
            qos: QoS::try_from(options & 0b11)?,
            no_local,
            retain_as_published: options & RETAIN_AS_PUBLISHED != 0,
            retain_handling,
        });
    }
    if filters.is_empty() {
        return Err(Error::Malformed("SUBSCRIBE without topic filters"));
    }
    Ok(Subscribe {
        pkid,
        filters,
        properties,
    })
}

fn read_filter(r: &mut Reader) -> Result<bytestring::ByteString, Error> {
    let filter = r.name()?;
    if !valid_topic_filter(&filter) {
        return Err(Error::InvalidTopicFilter);
    }
    Ok(filter)
}

/// First byte of the fixed header.
pub(crate) fn header_byte(packet: &Packet) -> u8 {
    let (packet_type, flags) = match packet {
        Packet::Connect(_) => (wire::CONNECT, 0),
        Packet::ConnAck(_) => (wire::CONNACK, 0),
        Packet::Publish(publish) => (
            wire::PUBLISH,
            u8::from(publish.dup) << 3 | (publish.qos as u8) << 1 | u8::from(publish.retain),
        ),
        Packet::PubAck(_) => (wire::PUBACK, 0),
        Packet::PubRec(_) => (wire::PUBREC, 0),
        Packet::PubRel(_) => (wire::PUBREL, 0b0010),
        Packet::PubComp(_) => (wire::PUBCOMP, 0),
        Packet::Subscribe(_) => (wire::SUBSCRIBE, 0b0010),
        Packet::SubAck(_) => (wire::SUBACK, 0),
        Packet::Unsubscribe(_) => (wire::UNSUBSCRIBE, 0b0010),
        Packet::UnsubAck(_) => (wire::UNSUBACK, 0),
        Packet::PingReq => (wire::PINGREQ, 0),
        Packet::PingResp => (wire::PINGRESP, 0),
        Packet::Disconnect(_) => (wire::DISCONNECT, 0),
        Packet::Auth(_) => (wire::AUTH, 0),
    };
    packet_type << 4 | flags
}

/// Encoded size of a property list in this version (nothing before MQTT 5).
fn properties_len(properties: &Properties, v5: bool) -> usize {
    if v5 {
        properties.encoded_len()
    } else {
        0
    }
}

/// Size of an optional reason code and optional properties, as [`write_reason`] writes
/// them.
fn reason_len(reason: ReasonCode, properties: &Properties, v5: bool) -> usize {
    match (v5, reason, properties.is_empty()) {
        (false, _, _) | (true, ReasonCode::Success, true) => 0,
        (true, _, true) => 1,
        (true, _, false) => 1 + properties.encoded_len(),
    }
}

/// Length of the body (the remaining length) once encoded.
pub(crate) fn body_len(packet: &Packet, version: ProtocolVersion) -> usize {
    let v5 = version.is_v5();
    match packet {
        Packet::Connect(connect) => {
            let will = connect.will.as_ref().map_or(0, |will| {
                properties_len(&will.properties, v5)
                    + field_len(will.topic.as_bytes())
                    + field_len(&will.payload)
            });
            field_len(connect.protocol.protocol_name().as_bytes())
                + 1 // level
                + 1 // flags
                + 2 // keep alive
                + properties_len(&connect.properties, v5)
                + field_len(connect.client_id.as_bytes())
                + will
                + connect.username.as_ref().map_or(0, |u| field_len(u.as_bytes()))
                + connect.password.as_ref().map_or(0, |p| field_len(p))
        }
        Packet::ConnAck(connack) => 2 + properties_len(&connack.properties, v5),
        Packet::Publish(publish) => {
            let pkid = if publish.qos == QoS::AtMostOnce { 0 } else { 2 };
            field_len(publish.topic.as_bytes())
                + pkid
                + properties_len(&publish.properties, v5)
                + publish.payload.len()
        }
        Packet::PubAck(PubAck {
            reason, properties, ..
        })
        | Packet::PubRec(PubRec {
            reason, properties, ..
        })
        | Packet::PubRel(PubRel {
            reason, properties, ..
        })
        | Packet::PubComp(PubComp {
            reason, properties, ..
        }) => 2 + reason_len(*reason, properties, v5),
        Packet::Subscribe(subscribe) => {
            2 + properties_len(&subscribe.properties, v5)
                + subscribe
                    .filters
                    .iter()
                    .map(|f| field_len(f.filter.as_bytes()) + 1)
                    .sum::<usize>()
        }
        Packet::SubAck(suback) => {
            2 + properties_len(&suback.properties, v5) + suback.return_codes.len()
        }
        Packet::Unsubscribe(unsubscribe) => {
            2 + properties_len(&unsubscribe.properties, v5)
                + unsubscribe
                    .filters
                    .iter()
                    .map(|f| field_len(f.as_bytes()))
                    .sum::<usize>()
        }
        Packet::UnsubAck(unsuback) if v5 => {
            2 + unsuback.properties.encoded_len() + unsuback.reason_codes.len()
        }
        Packet::UnsubAck(_) => 2,
        Packet::PingReq | Packet::PingResp => 0,
        Packet::Disconnect(Disconnect { reason, properties })
        | Packet::Auth(Auth { reason, properties }) => reason_len(*reason, properties, v5),
    }
}

/// Writes the body of `packet`. Refuses what a strict peer would reject for its structure
/// (identifier 0, empty lists, fields too long, inconsistent flags, AUTH before MQTT 5);
/// string contents are the caller's to validate. Reason codes and properties are written
/// for MQTT 5 only.
pub(crate) fn write_body(
    packet: &Packet,
    version: ProtocolVersion,
    buf: &mut BytesMut,
) -> Result<(), Error> {
    let v5 = version.is_v5();
    match packet {
        Packet::Connect(connect) => write_connect(connect, buf)?,
        Packet::ConnAck(connack) => {
            if connack.session_present && connack.code.is_failure() {
                return Err(Error::Unencodable(
                    "session present on a refused connection",
                ));
            }
            buf.put_u8(u8::from(connack.session_present));
            if v5 {
                buf.put_u8(connack.code as u8);
                connack.properties.write(buf)?;
            } else {
                buf.put_u8(connack.code.v311_connack());
            }
        }
        Packet::Publish(publish) => {
            put_field(buf, publish.topic.as_bytes(), "topic name too long")?;
            if publish.qos == QoS::AtMostOnce {
                if publish.dup {
                    return Err(Error::Unencodable("DUP set on a QoS 0 PUBLISH"));
                }
            } else {
                put_packet_id(buf, publish.pkid)?;
            }
            if v5 {
                publish.properties.write(buf)?;
            }
            buf.put_slice(&publish.payload);
        }
        Packet::PubAck(PubAck {
            pkid,
            reason,
            properties,
        })
        | Packet::PubRec(PubRec {
            pkid,
            reason,
            properties,
        })
        | Packet::PubRel(PubRel {
            pkid,
            reason,
            properties,
        })
        | Packet::PubComp(PubComp {
            pkid,
            reason,
            properties,
        }) => {
            put_packet_id(buf, *pkid)?;
            write_reason(*reason, properties, v5, buf)?;
        }
        Packet::Subscribe(subscribe) => {
            if subscribe.filters.is_empty() {
                return Err(Error::Unencodable("SUBSCRIBE without topic filters"));
            }
            put_packet_id(buf, subscribe.pkid)?;
            if v5 {
                subscribe.properties.write(buf)?;
            }
            for filter in &subscribe.filters {
                put_field(buf, filter.filter.as_bytes(), "topic filter too long")?;
                let mut options = filter.qos as u8;
                if v5 {
                    if filter.no_local {
                        options |= NO_LOCAL;
                    }
                    if filter.retain_as_published {
                        options |= RETAIN_AS_PUBLISHED;
                    }
                    options |= (filter.retain_handling as u8) << RETAIN_HANDLING_SHIFT;
                }
                buf.put_u8(options);
            }
        }
        Packet::SubAck(suback) => {
            if suback.return_codes.is_empty() {
                return Err(Error::Unencodable("SUBACK without return codes"));
            }
            put_packet_id(buf, suback.pkid)?;
            if v5 {
                suback.properties.write(buf)?;
            }
            for code in &suback.return_codes {
                buf.put_u8(match code {
                    SubscribeReturnCode::Success(qos) => *qos as u8,
                    SubscribeReturnCode::Failure(reason) if v5 => *reason as u8,
                    SubscribeReturnCode::Failure(_) => SUBACK_FAILURE,
                });
            }
        }
        Packet::Unsubscribe(unsubscribe) => {
            if unsubscribe.filters.is_empty() {
                return Err(Error::Unencodable("UNSUBSCRIBE without topic filters"));
            }
            put_packet_id(buf, unsubscribe.pkid)?;
            if v5 {
                unsubscribe.properties.write(buf)?;
            }
            for filter in &unsubscribe.filters {
                put_field(buf, filter.as_bytes(), "topic filter too long")?;
            }
        }
        Packet::UnsubAck(unsuback) => {
            put_packet_id(buf, unsuback.pkid)?;
            if v5 {
                if unsuback.reason_codes.is_empty() {
                    return Err(Error::Unencodable("UNSUBACK without reason codes"));
                }
                unsuback.properties.write(buf)?;
                for code in &unsuback.reason_codes {
                    buf.put_u8(*code as u8);
                }
            }
        }
        Packet::PingReq | Packet::PingResp => {}
        Packet::Disconnect(Disconnect { reason, properties }) => {
            write_reason(*reason, properties, v5, buf)?;
        }
        Packet::Auth(Auth { reason, properties }) => {
            if !v5 {
                return Err(Error::Unencodable("AUTH before MQTT 5"));
            }
            write_reason(*reason, properties, v5, buf)?;
        }
    }
    Ok(())
}

/// The optional reason code and properties of MQTT 5 acknowledgements, DISCONNECT and
/// AUTH: left out while they say nothing (success, no properties).
fn write_reason(
    reason: ReasonCode,
    properties: &Properties,
    v5: bool,
    buf: &mut BytesMut,
) -> Result<(), Error> {
    if reason_len(reason, properties, v5) == 0 {
        return Ok(());
    }
    buf.put_u8(reason as u8);
    if !properties.is_empty() {
        properties.write(buf)?;
    }
    Ok(())
}

fn write_connect(connect: &Connect, buf: &mut BytesMut) -> Result<(), Error> {
    let protocol = connect.protocol;
    let v5 = protocol.is_v5();
    if connect.password.is_some() && connect.username.is_none() && !v5 {
        return Err(Error::Unencodable("password without a user name"));
    }
    let mut flags = 0;
    if connect.clean_session {
        flags |= CLEAN_SESSION;
    }
    if let Some(will) = &connect.will {
        flags |= WILL | (will.qos as u8) << WILL_QOS_SHIFT;
        if will.retain {
            flags |= WILL_RETAIN;
        }
    }
    if connect.username.is_some() {
        flags |= USERNAME;
    }
    if connect.password.is_some() {
        flags |= PASSWORD;
    }
    put_field(buf, protocol.protocol_name().as_bytes(), "protocol name")?;
    buf.put_u8(protocol.level());
    buf.put_u8(flags);
    buf.put_u16(connect.keep_alive);
    if v5 {
        connect.properties.write(buf)?;
    }
    put_field(buf, connect.client_id.as_bytes(), "client id too long")?;
    if let Some(will) = &connect.will {
        if v5 {
            will.properties.write(buf)?;
        }
        put_field(buf, will.topic.as_bytes(), "will topic too long")?;
        put_field(buf, &will.payload, "will payload too long")?;
    }
    if let Some(username) = &connect.username {
        put_field(buf, username.as_bytes(), "user name too long")?;
    }
    if let Some(password) = &connect.password {
        put_field(buf, password, "password too long")?;
    }
    Ok(())
}
