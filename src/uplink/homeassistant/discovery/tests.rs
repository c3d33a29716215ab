use super::*;

fn tag(name: &str, data_type: DataType, unit: Option<&str>, command: Option<Writable>) -> Tag {
    Tag {
        name: name.into(),
        data_type,
        scaled: false,
        unit: unit.map(str::to_owned),
        read: command.is_none(),
        command,
        device_class: None,
        state_class: None,
        icon: None,
    }
}

fn writable(coil: bool, options: &[(&str, f64)]) -> Writable {
    Writable {
        coil,
        min: Some(5.0),
        max: Some(90.0),
        options: options.iter().map(|(n, v)| (n.to_string(), *v)).collect(),
        scale: 1.0,
    }
}

fn boiler() -> Json {
    let info = DeviceInfo {
        device_type: "boiler".into(),
        tags: vec![
            tag("temperature", DataType::F32, Some("°C"), None),
            tag("energy", DataType::U32, Some("kWh"), None),
            tag("burner", DataType::Bool, None, None),
            tag(
                "setpoint",
                DataType::F32,
                Some("°C"),
                Some(writable(false, &[])),
            ),
            tag("pump", DataType::Bool, None, Some(writable(true, &[]))),
            tag(
                "mode",
                DataType::U16,
                None,
                Some(writable(false, &[("off", 0.0), ("eco", 1.0)])),
            ),
        ],
    };
    let topics = DeviceTopics::new("homeassistant", "fieldbridge", "boiler-1");
    config("boiler-1", &info, &topics, "fieldbridge")
}

#[test]
fn components_by_tag_kind() {
    let config = boiler();
    let c = &config["cmps"];
    assert_eq!(c["temperature"]["p"], "sensor");
    assert_eq!(c["temperature"]["device_class"], "temperature");
    assert_eq!(c["temperature"]["state_class"], "measurement");
    assert_eq!(c["energy"]["device_class"], "energy");
    assert_eq!(c["energy"]["state_class"], "total_increasing");
    assert_eq!(c["burner"]["p"], "binary_sensor");
    assert_eq!(c["setpoint"]["p"], "number");
    assert_eq!(
        c["setpoint"]["command_topic"],
        "fieldbridge/boiler-1/set/setpoint"
    );
    assert_eq!(
        (c["setpoint"]["min"].as_f64(), c["setpoint"]["max"].as_f64()),
        (Some(5.0), Some(90.0))
    );
    assert_eq!(c["pump"]["p"], "switch");
    assert_eq!(c["mode"]["p"], "select");
    assert_eq!(c["mode"]["options"], json!(["off", "eco"]));
    assert_eq!(
        c["temperature"]["unique_id"],
        "fieldbridge_boiler-1_temperature"
    );
    assert_eq!(
        config["dev"]["identifiers"],
        json!(["fieldbridge_boiler-1"])
    );
    assert_eq!(config["state_topic"], "fieldbridge/boiler-1/state");
}

#[test]
fn command_payloads_as_home_assistant_sends_them() {
    assert_eq!(command_value(&writable(true, &[]), "ON"), json!(true));
    assert_eq!(command_value(&writable(true, &[]), "OFF"), json!(false));
    assert_eq!(command_value(&writable(false, &[]), "22.5"), json!(22.5));
    assert_eq!(
        command_value(&writable(false, &[("eco", 1.0)]), "eco"),
        json!("eco")
    );
    assert_eq!(
        command_value(&writable(false, &[]), "warm"),
        json!("warm"),
        "refused later"
    );
}
