//! Packet bodies of MQTT 3.1 and 3.1.1 (the same wire format but for CONNECT's protocol
//! name and level). MQTT 5 gets a sibling module with the same four functions.

use bytes::{BufMut, BytesMut};

use super::packet::{
    ConnAck, Connect, ConnectReturnCode, LastWill, Packet, ProtocolVersion, PubAck, PubComp,
    PubRec, PubRel, Publish, QoS, SubAck, Subscribe, SubscribeFilter, SubscribeReturnCode,
    UnsubAck, Unsubscribe,
};
use super::wire::{self, field_len, put_field, put_packet_id, FixedHeader, Reader};
use super::Error;
use crate::topic::{valid_topic_filter, valid_topic_name};

const CLEAN_SESSION: u8 = 0x02;
const WILL: u8 = 0x04;
const WILL_QOS_SHIFT: u8 = 3;
const WILL_RETAIN: u8 = 0x20;
const PASSWORD: u8 = 0x40;
const USERNAME: u8 = 0x80;
const CONNECT_RESERVED: u8 = 0x01;

/// Reads the rest of a CONNECT, after its protocol name and level.
pub(crate) fn read_connect(protocol: ProtocolVersion, mut r: Reader) -> Result<Packet, Error> {
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
    if has_password && !has_username {
        return Err(Error::Malformed("password without a user name"));
    }
    let keep_alive = r.u16()?;
    let client_id = r.string()?;
    let will = if has_will {
        let topic = r.string()?;
        if !valid_topic_name(&topic) {
            return Err(Error::InvalidTopicName);
        }
        let payload = r.binary()?;
        Some(LastWill {
            topic,
            payload,
            qos: will_qos,
            retain: will_retain,
        })
    } else {
        None
    };
    let username = has_username.then(|| r.string()).transpose()?;
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
    })))
}

/// Reads any packet but CONNECT; the fixed header is already checked.
pub(crate) fn read(header: FixedHeader, mut r: Reader) -> Result<Packet, Error> {
    let packet = match header.packet_type() {
        wire::CONNACK => {
            let flags = r.u8()?;
            if flags & 0xfe != 0 {
                return Err(Error::Malformed("reserved CONNACK flag set"));
            }
            let code = ConnectReturnCode::try_from(r.u8()?)?;
            let session_present = flags & 0x01 != 0;
            if session_present && code != ConnectReturnCode::Accepted {
                return Err(Error::Malformed("session present on a refused connection"));
            }
            Packet::ConnAck(ConnAck {
                session_present,
                code,
            })
        }
        wire::PUBLISH => return read_publish(header.flags(), r),
        wire::PUBACK => Packet::PubAck(PubAck::new(r.packet_id()?)),
        wire::PUBREC => Packet::PubRec(PubRec::new(r.packet_id()?)),
        wire::PUBREL => Packet::PubRel(PubRel::new(r.packet_id()?)),
        wire::PUBCOMP => Packet::PubComp(PubComp::new(r.packet_id()?)),
        wire::SUBSCRIBE => Packet::Subscribe(read_subscribe(&mut r)?),
        wire::SUBACK => {
            let pkid = r.packet_id()?;
            let mut return_codes = Vec::new();
            while r.has_remaining() {
                return_codes.push(SubscribeReturnCode::from_byte(r.u8()?)?);
            }
            if return_codes.is_empty() {
                return Err(Error::Malformed("SUBACK without return codes"));
            }
            Packet::SubAck(SubAck { pkid, return_codes })
        }
        wire::UNSUBSCRIBE => {
            let pkid = r.packet_id()?;
            let mut filters = Vec::new();
            while r.has_remaining() {
                filters.push(read_filter(&mut r)?);
            }
            if filters.is_empty() {
                return Err(Error::Malformed("UNSUBSCRIBE without topic filters"));
            }
            Packet::Unsubscribe(Unsubscribe { pkid, filters })
        }
        wire::UNSUBACK => Packet::UnsubAck(UnsubAck::new(r.packet_id()?)),
        wire::PINGREQ => Packet::PingReq,
        wire::PINGRESP => Packet::PingResp,
        wire::DISCONNECT => Packet::Disconnect,
        _ => return Err(Error::Malformed("unexpected packet type")),
    };
    r.finish()?;
    Ok(packet)
}

fn read_publish(flags: u8, mut r: Reader) -> Result<Packet, Error> {
    let qos = QoS::try_from((flags >> 1) & 0b11)?;
    let topic = r.string()?;
    if !valid_topic_name(&topic) {
        return Err(Error::InvalidTopicName);
    }
    let pkid = if qos == QoS::AtMostOnce {
        0
    } else {
        r.packet_id()?
    };
    Ok(Packet::Publish(Publish {
        dup: flags & 0b1000 != 0,
        qos,
        retain: flags & 0b0001 != 0,
        topic,
        pkid,
        payload: r.rest(),
    }))
}

fn read_subscribe(r: &mut Reader) -> Result<Subscribe, Error> {
    let pkid = r.packet_id()?;
    let mut filters = Vec::new();
    while r.has_remaining() {
        let filter = read_filter(r)?;
        let requested = r.u8()?;
        if requested & 0b1111_1100 != 0 {
            return Err(Error::Malformed("reserved bits set in a requested QoS"));
        }
        filters.push(SubscribeFilter {
            filter,
            qos: QoS::try_from(requested)?,
        });
    }
    if filters.is_empty() {
        return Err(Error::Malformed("SUBSCRIBE without topic filters"));
    }
    Ok(Subscribe { pkid, filters })
}

fn read_filter(r: &mut Reader) -> Result<bytestring::ByteString, Error> {
    let filter = r.string()?;
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
        Packet::Disconnect => (wire::DISCONNECT, 0),
    };
    packet_type << 4 | flags
}

/// Length of the body (the remaining length) once encoded.
pub(crate) fn body_len(packet: &Packet) -> usize {
    match packet {
        Packet::Connect(connect) => {
            let will = connect.will.as_ref().map_or(0, |will| {
                field_len(will.topic.as_bytes()) + field_len(&will.payload)
            });
            field_len(connect.protocol.protocol_name().as_bytes())
                + 1 // level
                + 1 // flags
                + 2 // keep alive
                + field_len(connect.client_id.as_bytes())
                + will
                + connect.username.as_ref().map_or(0, |u| field_len(u.as_bytes()))
                + connect.password.as_ref().map_or(0, |p| field_len(p))
        }
        Packet::ConnAck(_) => 2,
        Packet::Publish(publish) => {
            let pkid = if publish.qos == QoS::AtMostOnce { 0 } else { 2 };
            field_len(publish.topic.as_bytes()) + pkid + publish.payload.len()
        }
        Packet::PubAck(_)
        | Packet::PubRec(_)
        | Packet::PubRel(_)
        | Packet::PubComp(_)
        | Packet::UnsubAck(_) => 2,
        Packet::Subscribe(subscribe) => {
            2 + subscribe
                .filters
                .iter()
                .map(|f| field_len(f.filter.as_bytes()) + 1)
                .sum::<usize>()
        }
        Packet::SubAck(suback) => 2 + suback.return_codes.len(),
        Packet::Unsubscribe(unsubscribe) => {
            2 + unsubscribe
                .filters
                .iter()
                .map(|f| field_len(f.as_bytes()))
                .sum::<usize>()
        }
        Packet::PingReq | Packet::PingResp | Packet::Disconnect => 0,
    }
}

/// Writes the body of `packet`. Refuses what a strict peer would reject for its structure
/// (identifier 0, empty lists, fields too long, inconsistent flags); string contents are
/// the caller's to validate.
pub(crate) fn write_body(packet: &Packet, buf: &mut BytesMut) -> Result<(), Error> {
    match packet {
        Packet::Connect(connect) => write_connect(connect, buf)?,
        Packet::ConnAck(connack) => {
            if connack.session_present && connack.code != ConnectReturnCode::Accepted {
                return Err(Error::Unencodable(
                    "session present on a refused connection",
                ));
            }
            buf.put_u8(u8::from(connack.session_present));
            buf.put_u8(connack.code as u8);
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
            buf.put_slice(&publish.payload);
        }
        Packet::PubAck(PubAck { pkid })
        | Packet::PubRec(PubRec { pkid })
        | Packet::PubRel(PubRel { pkid })
        | Packet::PubComp(PubComp { pkid })
        | Packet::UnsubAck(UnsubAck { pkid }) => put_packet_id(buf, *pkid)?,
        Packet::Subscribe(subscribe) => {
            if subscribe.filters.is_empty() {
                return Err(Error::Unencodable("SUBSCRIBE without topic filters"));
            }
            put_packet_id(buf, subscribe.pkid)?;
            for filter in &subscribe.filters {
                put_field(buf, filter.filter.as_bytes(), "topic filter too long")?;
                buf.put_u8(filter.qos as u8);
            }
        }
        Packet::SubAck(suback) => {
            if suback.return_codes.is_empty() {
                return Err(Error::Unencodable("SUBACK without return codes"));
            }
            put_packet_id(buf, suback.pkid)?;
            for code in &suback.return_codes {
                buf.put_u8(code.to_byte());
            }
        }
        Packet::Unsubscribe(unsubscribe) => {
            if unsubscribe.filters.is_empty() {
                return Err(Error::Unencodable("UNSUBSCRIBE without topic filters"));
            }
            put_packet_id(buf, unsubscribe.pkid)?;
            for filter in &unsubscribe.filters {
                put_field(buf, filter.as_bytes(), "topic filter too long")?;
            }
        }
        Packet::PingReq | Packet::PingResp | Packet::Disconnect => {}
    }
    Ok(())
}

fn write_connect(connect: &Connect, buf: &mut BytesMut) -> Result<(), Error> {
    if connect.password.is_some() && connect.username.is_none() {
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
    let protocol = connect.protocol;
    put_field(buf, protocol.protocol_name().as_bytes(), "protocol name")?;
    buf.put_u8(protocol.level());
    buf.put_u8(flags);
    buf.put_u16(connect.keep_alive);
    put_field(buf, connect.client_id.as_bytes(), "client id too long")?;
    if let Some(will) = &connect.will {
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
