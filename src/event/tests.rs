use super::*;
use std::borrow::Cow;
use time::macros::datetime;

#[test]
fn timestamps_have_milliseconds() {
    assert_eq!(
        timestamp(datetime!(2026-11-21 10:15:30.120456 UTC)),
        "2026-11-21T10:15:30.120Z"
    );
    assert_eq!(
        timestamp(datetime!(2026-11-21 10:15:30 UTC)),
        "2026-11-21T10:15:30.000Z"
    );
}

#[test]
fn event_payload_shape() {
    let mut d = Map::new();
    d.insert("temperature".into(), Value::from(21.5));
    let e = Event::new(
        "boiler-1",
        "status",
        Qos::AtLeastOnce,
        d,
        datetime!(2026-11-21 10:15:30.12 UTC),
    );
    let v: Value = serde_json::from_slice(&e.platform_json()).unwrap();
    assert_eq!(v["d"]["temperature"], 21.5);
    assert_eq!(v["ts"], "2026-11-21T10:15:30.120Z");
}

fn samples() -> Vec<Event> {
    let at = datetime!(2026-11-21 10:15:30.123 UTC);
    let mut values = Map::new();
    values.insert("temperature".into(), Value::from(21.5));
    values.insert("count".into(), Value::from(u64::MAX));
    values.insert("on".into(), Value::from(true));
    let event = |body| Event {
        device_id: "boiler-1".into(),
        qos: Qos::AtLeastOnce,
        at,
        body,
    };
    vec![
        event(Body::Data {
            event: "status".into(),
            values,
        }),
        event(Body::Health {
            online: false,
            error: Some("timeout after 500 ms".into()),
        }),
        event(Body::Health {
            online: true,
            error: None,
        }),
        event(Body::CommandResult(CommandResult {
            command: "setpoint".into(),
            rc: 200,
            message: "success".into(),
            req_id: Some("r1".into()),
            value: Some(Value::from(22.0)),
            readback: Some(Value::from(22.0)),
            // Kept with the row, never in the payload.
            reply: Some(Reply {
                topic: "app/replies/7".into(),
                correlation_data: Some(vec![0, 1, 255]),
            }),
        })),
        event(Body::Management {
            path: "response".into(),
            body: serde_json::json!({"rc": 200, "message": "ok", "reqId": null}),
        }),
        event(Body::Encoded {
            event: "status".into(),
            payload: b"{\"d\":{\"x\":1},\"ts\":\"2026-01-01T00:00:00.000Z\"}".to_vec(),
        }),
    ]
}

#[test]
fn the_stored_form_gives_back_the_same_event_and_bytes() {
    for event in samples() {
        let stored = event.to_stored();
        let back = stored.decode("boiler-1").unwrap();
        assert_eq!(back, event);
        assert_eq!(back.platform_json(), event.platform_json());
    }
}

#[test]
fn platform_json_is_what_acquisition_used_to_encode() {
    let json: Vec<String> = samples()
        .iter()
        .map(|e| String::from_utf8(e.platform_json()).unwrap())
        .collect();
    assert_eq!(
        json[0],
        r#"{"d":{"count":18446744073709551615,"on":true,"temperature":21.5},"ts":"2026-11-21T10:15:30.123Z"}"#
    );
    assert_eq!(
        json[1],
        r#"{"d":{"error":"timeout after 500 ms","online":false,"since":"2026-11-21T10:15:30.123Z"},"ts":"2026-11-21T10:15:30.123Z"}"#
    );
    assert_eq!(
        json[3],
        r#"{"d":{"command":"setpoint","readback":22.0,"value":22.0},"message":"success","rc":200,"reqId":"r1","ts":"2026-11-21T10:15:30.123Z"}"#
    );
    assert_eq!(json[4], r#"{"message":"ok","rc":200,"reqId":null}"#);
}

#[test]
fn an_unknown_kind_is_no_kind() {
    assert_eq!(Kind::from_column(3), Some(Kind::CommandResult));
    assert_eq!(Kind::from_column(9), None);
}

#[test]
fn platform_json_reads_back_as_typed_events() {
    for event in samples().into_iter().take(4) {
        let encoded = Event {
            body: Body::Encoded {
                event: event.name().to_owned(),
                payload: event.platform_json(),
            },
            ..event.clone()
        };
        let mut expected = event;
        if let Body::CommandResult(result) = &mut expected.body {
            // Where a result goes is not part of its payload.
            result.reply = None;
        }
        assert_eq!(encoded.typed().map(Cow::into_owned), Some(expected));
    }
    let management = Event::encoded(
        "b",
        "iotdevice-1/response",
        Qos::AtLeastOnce,
        b"{}".to_vec(),
    );
    assert_eq!(management.typed(), None);
}
