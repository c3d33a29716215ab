//! Register values as Sparkplug metrics and back.

use serde_json::Value as Json;

use super::proto::{datatype, Metric, PropertyKind, PropertySet, PropertyValue, Value};
use crate::registers::DataType;
use crate::uplink::catalog::Tag;

/// The Sparkplug data type of a tag: scaled values are doubles whatever the register.
pub fn datatype_of(tag: &Tag) -> u32 {
    if tag.scaled {
        return datatype::DOUBLE;
    }
    match tag.data_type {
        DataType::Bool => datatype::BOOLEAN,
        DataType::U16 => datatype::UINT16,
        DataType::I16 => datatype::INT16,
        DataType::U32 => datatype::UINT32,
        DataType::I32 => datatype::INT32,
        DataType::U64 => datatype::UINT64,
        DataType::I64 => datatype::INT64,
        DataType::F32 => datatype::FLOAT,
        DataType::F64 => datatype::DOUBLE,
        DataType::String(_) => datatype::STRING,
    }
}

/// `json` as a value of `datatype`; `None` when it is not one (a named command value,
/// an out-of-range number).
pub fn to_value(datatype: u32, json: &Json) -> Option<Value> {
    Some(match datatype {
        datatype::BOOLEAN => Value::Boolean(json.as_bool().or_else(|| Some(json.as_u64()? != 0))?),
        datatype::INT8 | datatype::INT16 | datatype::INT32 => {
            // Signed values travel in two's complement.
            Value::Int(i32::try_from(json.as_i64()?).ok()? as u32)
        }
        datatype::UINT8 | datatype::UINT16 | datatype::UINT32 => {
            Value::Int(u32::try_from(json.as_u64()?).ok()?)
        }
        datatype::INT64 => Value::Long(json.as_i64()? as u64),
        datatype::UINT64 => Value::Long(json.as_u64()?),
        datatype::FLOAT => Value::Float(json.as_f64()? as f32),
        datatype::DOUBLE => Value::Double(json.as_f64()?),
        datatype::STRING => Value::String(match json {
            Json::String(text) => text.clone(),
            other => other.to_string(),
        }),
        _ => return None,
    })
}

/// A metric value as the JSON a command takes.
pub fn to_json(datatype: u32, value: &Value) -> Json {
    match (datatype, value) {
        (datatype::INT8 | datatype::INT16 | datatype::INT32, Value::Int(n)) => {
            Json::from(*n as i32)
        }
        (datatype::INT64, Value::Long(n)) => Json::from(*n as i64),
        (_, Value::Int(n)) => Json::from(*n),
        (_, Value::Long(n)) => Json::from(*n),
        (_, Value::Float(f)) => Json::from(f64::from(*f)),
        (_, Value::Double(f)) => Json::from(*f),
        (_, Value::Boolean(b)) => Json::from(*b),
        (_, Value::String(s)) => Json::from(s.as_str()),
    }
}

/// The properties of a birth metric: `engUnit` from the tag's unit.
pub fn properties(tag: &Tag) -> Option<PropertySet> {
    let unit = tag.unit.as_ref()?;
    Some(PropertySet {
        keys: vec!["engUnit".into()],
        values: vec![PropertyValue {
            r#type: Some(datatype::STRING),
            value: Some(PropertyKind::String(unit.clone())),
        }],
    })
}

/// A metric with a value, or an explicit null without one.
pub fn metric(datatype: u32, value: Option<Value>) -> Metric {
    Metric {
        datatype: Some(datatype),
        is_null: value.is_none().then_some(true),
        value,
        ..Metric::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn values_convert_by_datatype() {
        assert_eq!(
            to_value(datatype::INT16, &json!(-2)),
            Some(Value::Int(0xFFFF_FFFE))
        );
        assert_eq!(
            to_json(datatype::INT16, &Value::Int(0xFFFF_FFFE)),
            json!(-2)
        );
        assert_eq!(to_value(datatype::UINT16, &json!(-2)), None);
        assert_eq!(
            to_value(datatype::INT64, &json!(-1)),
            Some(Value::Long(u64::MAX))
        );
        assert_eq!(to_json(datatype::INT64, &Value::Long(u64::MAX)), json!(-1));
        assert_eq!(
            to_value(datatype::BOOLEAN, &json!(1)),
            Some(Value::Boolean(true))
        );
        assert_eq!(
            to_value(datatype::DOUBLE, &json!(2)),
            Some(Value::Double(2.0))
        );
        assert_eq!(
            to_value(datatype::STRING, &json!("on")),
            Some(Value::String("on".into()))
        );
        assert_eq!(to_json(datatype::FLOAT, &Value::Float(1.5)), json!(1.5));
    }
}
