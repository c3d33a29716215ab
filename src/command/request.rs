//! A command as it arrives (`{"d": {"value": ...}, "reqId": "..."}`), checked against
//! the device's declared command and turned into the registers or coils to write.

use serde_json::Value as Json;

use crate::bus::modbus::WriteData;
use crate::config::Command;
use crate::registers::codec::{encode, remove_scale, Value};
use crate::registers::{DataType, RegisterKind};

/// The answer code of a command result, as in HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rc {
    Done = 200,
    Accepted = 202,
    Updated = 204,
    BadRequest = 400,
    NotWritable = 403,
    UnknownCommand = 404,
    DeviceException = 500,
    NotImplemented = 501,
    Unavailable = 503,
}

/// A refused or failed command: its code and a message for the result event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    pub rc: Rc,
    pub message: String,
}

impl Refusal {
    pub fn new(rc: Rc, message: impl Into<String>) -> Self {
        Refusal {
            rc,
            message: message.into(),
        }
    }
}

/// Longest `reqId` kept; longer ones are refused (they are stored to act once).
pub const MAX_REQ_ID: usize = 128;

/// Largest command payload acted on (the platform's payload limit); a larger one is
/// refused with 400, its `reqId` recovered when it parses.
pub const MAX_COMMAND: usize = fieldbridge_mqtt::platform::MAX_PAYLOAD;

/// The parts of a command payload the gateway uses.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandRequest {
    pub value: Json,
    pub req_id: Option<String>,
}

/// Reads `{"d": {"value": V}, "reqId": "..."}`. The `reqId` is recovered even from
/// an otherwise invalid payload, so the refusal can carry it.
pub fn parse(payload: &[u8]) -> (Option<String>, Result<CommandRequest, Refusal>) {
    let json: Json = match serde_json::from_slice(payload) {
        Ok(json) => json,
        Err(e) => {
            return (
                None,
                Err(Refusal::new(
                    Rc::BadRequest,
                    format!("payload is not JSON: {e}"),
                )),
            )
        }
    };
    let req_id = match json.get("reqId") {
        None | Some(Json::Null) => None,
        Some(Json::String(id)) if id.len() <= MAX_REQ_ID => Some(id.clone()),
        Some(Json::String(_)) => {
            return (
                None,
                Err(Refusal::new(
                    Rc::BadRequest,
                    format!("reqId is longer than {MAX_REQ_ID} bytes"),
                )),
            )
        }
        Some(_) => {
            return (
                None,
                Err(Refusal::new(Rc::BadRequest, "reqId must be a string")),
            )
        }
    };
    if payload.len() > MAX_COMMAND {
        return (
            req_id,
            Err(Refusal::new(
                Rc::BadRequest,
                format!(
                    "payload too large: {} bytes, at most {MAX_COMMAND}",
                    payload.len()
                ),
            )),
        );
    }
    let value = match json.get("d").and_then(|d| d.get("value")) {
        Some(value) => Ok(CommandRequest {
            value: value.clone(),
            req_id: req_id.clone(),
        }),
        None => Err(Refusal::new(
            Rc::BadRequest,
            "payload needs {\"d\": {\"value\": ...}}",
        )),
    };
    (req_id, value)
}

/// Checks `value` against the command's declaration and encodes what to write.
pub fn prepare(command: &Command, value: &Json) -> Result<WriteData, Refusal> {
    if !command.kind.is_writable() {
        return Err(Refusal::new(
            Rc::NotWritable,
            format!("{} {} is not writable", command.kind, command.address),
        ));
    }
    let engineering = engineering_value(command, value)?;
    if let Some(number) = engineering.as_f64() {
        let below = command.min.is_some_and(|min| number < min);
        let above = command.max.is_some_and(|max| number > max);
        if below || above || number.is_nan() {
            return Err(Refusal::new(
                Rc::BadRequest,
                format!("value {number} is out of range {}", range(command)),
            ));
        }
    }
    if command.kind == RegisterKind::Coil {
        return match engineering {
            Value::Bool(on) => Ok(WriteData::Coils(vec![on])),
            Value::U64(n @ (0 | 1)) => Ok(WriteData::Coils(vec![n == 1])),
            other => Err(Refusal::new(
                Rc::BadRequest,
                format!("a coil takes true or false, not {other}"),
            )),
        };
    }
    let raw = remove_scale(
        command.data_type,
        &engineering,
        command.scale,
        command.offset,
    )
    .map_err(|e| Refusal::new(Rc::BadRequest, e.to_string()))?;
    let words = encode(command.data_type, command.order, &raw)
        .map_err(|e| Refusal::new(Rc::BadRequest, e.to_string()))?;
    Ok(WriteData::Registers(words))
}

/// The command's value in engineering units: a named value (`values:`) becomes its
/// number; anything else must be a scalar of the right kind.
fn engineering_value(command: &Command, value: &Json) -> Result<Value, Refusal> {
    if let (Some(names), Json::String(name)) = (&command.values, value) {
        let number = names.get(name).ok_or_else(|| {
            let known: Vec<&str> = names.keys().map(String::as_str).collect();
            Refusal::new(
                Rc::BadRequest,
                format!(
                    "unknown value {:?}, expected one of {}",
                    shortened(name),
                    known.join(", ")
                ),
            )
        })?;
        return Ok(Value::F64(*number));
    }
    let scalar = Value::from_json(value)
        .ok_or_else(|| Refusal::new(Rc::BadRequest, "value must be a number, bool or string"))?;
    let fits = match command.data_type {
        DataType::Bool => matches!(scalar, Value::Bool(_) | Value::U64(0 | 1)),
        DataType::String(_) => matches!(scalar, Value::Text(_)),
        _ => matches!(scalar, Value::U64(_) | Value::I64(_) | Value::F64(_)),
    };
    if !fits {
        return Err(Refusal::new(
            Rc::BadRequest,
            format!(
                "value {} does not fit {} ({})",
                shortened(&scalar.to_string()),
                command.name,
                command.data_type
            ),
        ));
    }
    Ok(scalar)
}

/// Longest part of a command's value repeated in a result or a log line.
pub const MAX_ECHO: usize = 64;

/// `text` as it is when short, else its first [`MAX_ECHO`] characters and a marker with
/// its length: a refused 100 KB value is not sent back whole.
pub fn shortened(text: &str) -> String {
    match text.char_indices().nth(MAX_ECHO) {
        None => text.to_owned(),
        Some((end, _)) => format!("{}… ({} bytes)", &text[..end], text.len()),
    }
}

/// The value to repeat in the result: itself when short, else shortened as text.
pub fn echo(value: &Json) -> Json {
    let text = value.to_string();
    if text.chars().nth(MAX_ECHO).is_none() {
        value.clone()
    } else {
        Json::String(shortened(&text))
    }
}

fn range(command: &Command) -> String {
    let end = |bound: Option<f64>| bound.map_or_else(|| "..".to_owned(), |b| b.to_string());
    format!("[{}, {}]", end(command.min), end(command.max))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registers::WordOrder;
    use serde_json::json;

    fn setpoint() -> Command {
        Command {
            name: "setpoint".into(),
            kind: RegisterKind::Holding,
            address: 20,
            data_type: DataType::F32,
            order: WordOrder::ABCD,
            scale: 1.0,
            offset: 0.0,
            min: Some(5.0),
            max: Some(90.0),
            values: None,
            readback: false,
            device_class: None,
            icon: None,
        }
    }

    #[test]
    fn parses_value_and_req_id() {
        let (id, request) = parse(br#"{"d": {"value": 22.0}, "reqId": "r1"}"#);
        assert_eq!(id.as_deref(), Some("r1"));
        let request = request.unwrap();
        assert_eq!(request.value, json!(22.0));
    }

    #[test]
    fn bad_payloads_are_400_and_keep_the_req_id() {
        let (id, err) = parse(b"not json");
        assert_eq!((id, err.unwrap_err().rc), (None, Rc::BadRequest));
        let (id, err) = parse(br#"{"d": {}, "reqId": "r2"}"#);
        assert_eq!(id.as_deref(), Some("r2"));
        assert_eq!(err.unwrap_err().rc, Rc::BadRequest);
        let (_, err) = parse(br#"{"d": {"value": 1}, "reqId": 7}"#);
        assert_eq!(err.unwrap_err().rc, Rc::BadRequest);
    }

    #[test]
    fn encodes_within_range_and_refuses_outside() {
        assert_eq!(
            prepare(&setpoint(), &json!(20.5)),
            Ok(WriteData::Registers(vec![0x41A4, 0x0000]))
        );
        let err = prepare(&setpoint(), &json!(95)).unwrap_err();
        assert_eq!(err.rc, Rc::BadRequest);
        assert!(
            err.message.contains("out of range [5, 90]"),
            "{}",
            err.message
        );
        assert_eq!(
            prepare(&setpoint(), &json!("warm")).unwrap_err().rc,
            Rc::BadRequest
        );
        assert_eq!(
            prepare(&setpoint(), &json!(true)).unwrap_err().rc,
            Rc::BadRequest
        );
        assert_eq!(
            prepare(&setpoint(), &json!([1])).unwrap_err().rc,
            Rc::BadRequest
        );
    }

    #[test]
    fn scaled_integers_and_named_values() {
        let mode = Command {
            name: "mode".into(),
            data_type: DataType::U16,
            scale: 0.1,
            min: None,
            max: None,
            values: Some([("off".to_string(), 0.0), ("eco".to_string(), 1.0)].into()),
            ..setpoint()
        };
        assert_eq!(
            prepare(&mode, &json!("eco")),
            Ok(WriteData::Registers(vec![10]))
        );
        assert_eq!(
            prepare(&mode, &json!(2.5)),
            Ok(WriteData::Registers(vec![25]))
        );
        let err = prepare(&mode, &json!("turbo")).unwrap_err();
        assert!(err.message.contains("off, eco") || err.message.contains("eco, off"));
    }

    #[test]
    fn payloads_over_the_limit_are_400_and_keep_the_req_id() {
        let big = format!(
            r#"{{"d": {{"value": "{}"}}, "reqId": "big-1"}}"#,
            "x".repeat(MAX_COMMAND)
        );
        let (id, err) = parse(big.as_bytes());
        assert_eq!(id.as_deref(), Some("big-1"));
        let err = err.unwrap_err();
        assert_eq!(err.rc, Rc::BadRequest);
        assert!(
            err.message.starts_with("payload too large"),
            "{}",
            err.message
        );
    }

    #[test]
    fn long_values_are_not_repeated_whole() {
        let huge = "x".repeat(100_000);
        let err = prepare(&setpoint(), &json!(huge)).unwrap_err();
        assert!(err.message.len() < 200, "{}", err.message);
        assert!(err.message.contains("(100002 bytes)"), "{}", err.message);
        let echoed = echo(&json!(huge));
        assert!(echoed.as_str().unwrap().ends_with("… (100002 bytes)"));
        assert_eq!(echo(&json!(22.5)), json!(22.5));
        assert_eq!(shortened("short"), "short");
    }

    #[test]
    fn coils_take_bools() {
        let pump = Command {
            name: "pump".into(),
            kind: RegisterKind::Coil,
            data_type: DataType::Bool,
            min: None,
            max: None,
            ..setpoint()
        };
        assert_eq!(
            prepare(&pump, &json!(true)),
            Ok(WriteData::Coils(vec![true]))
        );
        assert_eq!(prepare(&pump, &json!(0)), Ok(WriteData::Coils(vec![false])));
        assert_eq!(prepare(&pump, &json!(3)).unwrap_err().rc, Rc::BadRequest);
        let input = Command {
            kind: RegisterKind::Input,
            ..setpoint()
        };
        assert_eq!(prepare(&input, &json!(20)).unwrap_err().rc, Rc::NotWritable);
    }
}
