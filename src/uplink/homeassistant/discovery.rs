//! Home Assistant's device-based MQTT discovery: one retained config per device with
//! its components (`cmps`), built from the device's tags. Pure functions.
//!
//! A sensor per numeric tag (unit, device and state class from the configuration or
//! inferred from the unit), a binary sensor per bool tag, and per command a switch
//! (coil), a select (named `values:`) or a number; all read one JSON state object.

use serde_json::{json, Map, Value as Json};

use crate::registers::DataType;
use crate::uplink::catalog::{DeviceInfo, Tag, Writable};

/// Identifies the gateway's devices in Home Assistant; part of every unique id, so
/// it must never change.
const ID_PREFIX: &str = "fieldbridge";

/// The topics of one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceTopics {
    pub config: String,
    pub state: String,
    pub availability: String,
    /// `<base>/<device>/set/`, followed by a command name.
    pub set: String,
}

impl DeviceTopics {
    pub fn new(discovery_prefix: &str, base_topic: &str, device: &str) -> Self {
        DeviceTopics {
            config: format!("{discovery_prefix}/device/{device}/config"),
            state: format!("{base_topic}/{device}/state"),
            availability: format!("{base_topic}/{device}/availability"),
            set: format!("{base_topic}/{device}/set/"),
        }
    }
}

/// Device class and state class for common units, when the configuration names none.
fn inferred(unit: &str) -> (Option<&'static str>, Option<&'static str>) {
    match unit {
        "°C" | "°F" | "K" => (Some("temperature"), Some("measurement")),
        "Wh" | "kWh" | "MWh" => (Some("energy"), Some("total_increasing")),
        "W" | "kW" => (Some("power"), Some("measurement")),
        "V" | "mV" => (Some("voltage"), Some("measurement")),
        "A" | "mA" => (Some("current"), Some("measurement")),
        "bar" | "mbar" | "Pa" | "hPa" | "kPa" | "psi" => (Some("pressure"), Some("measurement")),
        _ => (None, Some("measurement")),
    }
}

/// A Jinja expression for the tag's value in the state object.
fn value_of(tag: &Tag) -> String {
    let name = tag.name.replace('\\', "\\\\").replace('\'', "\\'");
    format!("value_json['{name}']")
}

fn on_off(tag: &Tag) -> String {
    format!("{{{{ 'ON' if {} else 'OFF' }}}}", value_of(tag))
}

/// The largest magnitude of a register type, for a number without `min`/`max`.
fn type_range(data_type: DataType) -> (f64, f64) {
    match data_type {
        DataType::U16 => (0.0, 65535.0),
        DataType::I16 => (-32768.0, 32767.0),
        DataType::U32 => (0.0, 4294967295.0),
        DataType::I32 => (-2147483648.0, 2147483647.0),
        _ => (-1e9, 1e9),
    }
}

fn component(device: &str, tag: &Tag, topics: &DeviceTopics) -> Json {
    let mut c = Map::new();
    c.insert("name".into(), json!(tag.name));
    c.insert(
        "unique_id".into(),
        json!(format!("{ID_PREFIX}_{device}_{}", tag.name)),
    );
    if let Some(icon) = &tag.icon {
        c.insert("icon".into(), json!(icon));
    }
    let platform = match &tag.command {
        Some(writable) => command_component(&mut c, tag, writable, topics),
        None if tag.data_type == DataType::Bool => {
            c.insert("value_template".into(), json!(on_off(tag)));
            "binary_sensor"
        }
        None => {
            c.insert(
                "value_template".into(),
                json!(format!("{{{{ {} }}}}", value_of(tag))),
            );
            if !matches!(tag.data_type, DataType::String(_)) {
                let (class, state_class) = tag
                    .unit
                    .as_deref()
                    .map_or((None, Some("measurement")), inferred);
                if let Some(unit) = &tag.unit {
                    c.insert("unit_of_measurement".into(), json!(unit));
                }
                if let Some(class) = tag.device_class.as_deref().or(class) {
                    c.insert("device_class".into(), json!(class));
                }
                if let Some(state_class) = tag.state_class.or(state_class) {
                    c.insert("state_class".into(), json!(state_class));
                }
            }
            "sensor"
        }
    };
    if let (Some(class), "switch" | "number") = (&tag.device_class, platform) {
        c.insert("device_class".into(), json!(class));
    }
    c.insert("p".into(), json!(platform));
    Json::Object(c)
}

fn command_component(
    c: &mut Map<String, Json>,
    tag: &Tag,
    writable: &Writable,
    topics: &DeviceTopics,
) -> &'static str {
    c.insert(
        "command_topic".into(),
        json!(format!("{}{}", topics.set, tag.name)),
    );
    if writable.coil {
        c.insert("value_template".into(), json!(on_off(tag)));
        c.insert("payload_on".into(), json!("ON"));
        c.insert("payload_off".into(), json!("OFF"));
        c.insert("state_on".into(), json!("ON"));
        c.insert("state_off".into(), json!("OFF"));
        return "switch";
    }
    if !writable.options.is_empty() {
        let names: Vec<&str> = writable
            .options
            .iter()
            .map(|(name, _)| name.as_str())
            .collect();
        let map: Vec<String> = writable
            .options
            .iter()
            .map(|(name, value)| format!("{value}: '{}'", name.replace('\'', "\\'")))
            .collect();
        // The state holds the number read back (or the name sent): show the name.
        let template = format!(
            "{{% set names = {{{}}} %}}{{{{ names.get({v}, {v}) }}}}",
            map.join(", "),
            v = value_of(tag)
        );
        c.insert("options".into(), json!(names));
        c.insert("value_template".into(), json!(template));
        return "select";
    }
    let (low, high) = type_range(tag.data_type);
    let float = matches!(tag.data_type, DataType::F32 | DataType::F64);
    let step = if float {
        0.01
    } else {
        writable.scale.abs().max(0.001)
    };
    c.insert(
        "min".into(),
        json!(writable.min.unwrap_or(low * writable.scale.abs())),
    );
    c.insert(
        "max".into(),
        json!(writable.max.unwrap_or(high * writable.scale.abs())),
    );
    c.insert("step".into(), json!(step));
    c.insert("mode".into(), json!("box"));
    c.insert(
        "value_template".into(),
        json!(format!("{{{{ {} }}}}", value_of(tag))),
    );
    if let Some(unit) = &tag.unit {
        c.insert("unit_of_measurement".into(), json!(unit));
    }
    "number"
}

/// The retained discovery config of one device.
pub fn config(device: &str, info: &DeviceInfo, topics: &DeviceTopics, gateway: &str) -> Json {
    let components: Map<String, Json> = info
        .tags
        .iter()
        .map(|tag| (tag.name.clone(), component(device, tag, topics)))
        .collect();
    // `dev`, `o`, `cmps` and `p` as Home Assistant's device discovery documents them.
    json!({
        "dev": {
            "identifiers": [format!("{ID_PREFIX}_{device}")],
            "name": device,
            "model": info.device_type,
            "via_device": format!("{ID_PREFIX}_{gateway}"),
        },
        "o": {
            "name": "fieldbridge",
            "sw_version": env!("CARGO_PKG_VERSION"),
        },
        "availability_topic": topics.availability,
        "state_topic": topics.state,
        "qos": 1,
        "cmps": components,
    })
}

/// The value a command topic received, as the command service takes it: `ON`/`OFF`
/// for a switch, a plain number for a number, the option text for a select.
pub fn command_value(writable: &Writable, payload: &str) -> Json {
    let payload = payload.trim();
    if writable.coil {
        return match payload {
            "ON" => json!(true),
            "OFF" => json!(false),
            other => json!(other),
        };
    }
    if writable.options.is_empty() {
        if let Ok(number) = payload.parse::<f64>() {
            return json!(number);
        }
    }
    json!(payload)
}

#[cfg(test)]
mod tests;
