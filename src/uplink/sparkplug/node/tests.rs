use super::*;
use crate::event::{CommandResult, Qos};
use crate::registers::DataType;
use crate::uplink::catalog::{DeviceInfo, Writable};

fn tag(name: &str, data_type: DataType, unit: Option<&str>, command: bool) -> Tag {
    Tag {
        name: name.into(),
        data_type,
        scaled: false,
        unit: unit.map(str::to_owned),
        read: true,
        command: command.then(|| Writable {
            coil: false,
            min: None,
            max: None,
            options: Vec::new(),
            scale: 1.0,
        }),
        device_class: None,
        state_class: None,
        icon: None,
    }
}

fn node(primary_host: Option<&str>) -> EdgeNode {
    let mut catalog = Catalog::new();
    catalog.insert(
        "boiler-1".into(),
        DeviceInfo {
            device_type: "boiler".into(),
            tags: vec![
                tag("temperature", DataType::F32, Some("°C"), false),
                tag("setpoint", DataType::I16, None, true),
            ],
        },
    );
    catalog.insert(
        "pump-2".into(),
        DeviceInfo {
            device_type: "pump".into(),
            tags: vec![tag("on", DataType::Bool, None, false)],
        },
    );
    let settings = SparkplugSettings {
        group_id: "plant".into(),
        edge_node_id: "gw1".into(),
        primary_host_id: primary_host.map(str::to_owned),
    };
    EdgeNode::new(settings, &catalog)
}

fn decode(payload: &[u8]) -> Payload {
    Payload::decode(payload).unwrap()
}

fn data(device: &str, values: serde_json::Value) -> Event {
    Event::new(
        device,
        "status",
        Qos::AtLeastOnce,
        values.as_object().unwrap().clone(),
        time::OffsetDateTime::now_utc(),
    )
}

#[test]
fn births_carry_bd_seq_aliases_and_units_and_start_seq_at_zero() {
    let mut node = node(None);
    node.set_bd_seq(7);
    let (topic, will) = node.death();
    assert_eq!(topic, "spBv1.0/plant/NDEATH/gw1");
    assert_eq!(decode(&will).metrics[0].value, Some(Value::Long(7)));
    node.connected();
    assert!(node.may_birth());
    let births = node.births();
    let topics: Vec<&str> = births.iter().map(|b| b.0.as_str()).collect();
    assert_eq!(
        topics,
        [
            "spBv1.0/plant/NBIRTH/gw1",
            "spBv1.0/plant/DBIRTH/gw1/boiler-1",
            "spBv1.0/plant/DBIRTH/gw1/pump-2"
        ]
    );
    let nbirth = decode(&births[0].1);
    assert_eq!(nbirth.seq, Some(0));
    assert_eq!(nbirth.metrics[0].value, Some(Value::Long(7)));
    assert_eq!(nbirth.metrics[1].name.as_deref(), Some(REBIRTH));
    assert_eq!(nbirth.metrics[1].alias, None);
    let dbirth = decode(&births[1].1);
    assert_eq!(dbirth.seq, Some(1));
    let aliases: Vec<u64> = births[1..]
        .iter()
        .flat_map(|b| decode(&b.1).metrics)
        .map(|m| m.alias.unwrap())
        .collect();
    assert_eq!(aliases, [1, 2, 3], "unique across the node");
    assert_eq!(dbirth.metrics[0].datatype, Some(datatype::FLOAT));
    assert_eq!(dbirth.metrics[0].is_null, Some(true), "no value read yet");
    let unit = dbirth.metrics[0].properties.as_ref().unwrap();
    assert_eq!(unit.keys, ["engUnit"]);
}

#[test]
fn data_goes_by_alias_only_when_changed_and_seq_wraps() {
    let mut node = node(None);
    node.connected();
    node.births();
    let (topic, payload) = node
        .encode(&data(
            "boiler-1",
            serde_json::json!({"temperature": 21.5, "setpoint": -3}),
        ))
        .unwrap();
    assert_eq!(topic, "spBv1.0/plant/DDATA/gw1/boiler-1");
    let ddata = decode(&payload);
    assert_eq!(ddata.seq, Some(3));
    assert_eq!(ddata.metrics.len(), 2);
    let by_alias: Vec<(Option<u64>, Option<String>, Option<Value>)> = ddata
        .metrics
        .iter()
        .map(|m| (m.alias, m.name.clone(), m.value.clone()))
        .collect();
    assert_eq!(
        by_alias,
        [
            (Some(2), None, Some(Value::Int(-3i32 as u32))),
            (Some(1), None, Some(Value::Float(21.5)))
        ]
    );
    let same = data(
        "boiler-1",
        serde_json::json!({"temperature": 21.5, "setpoint": -2}),
    );
    let changed = decode(&node.encode(&same).unwrap().1);
    assert_eq!(changed.metrics.len(), 1, "only the setpoint changed");
    assert_eq!(node.encode(&same), None, "nothing changed");
    for n in 0..300 {
        node.encode(&data("pump-2", serde_json::json!({"on": n % 2 == 0})))
            .unwrap();
    }
    let last = decode(
        &node
            .encode(&data("pump-2", serde_json::json!({"on": true})))
            .unwrap()
            .1,
    );
    assert_eq!(last.seq, Some((5 + 300) % 256));
}

#[test]
fn a_device_dies_and_is_born_again_with_its_health() {
    let mut node = node(None);
    node.connected();
    node.births();
    let offline = Event {
        device_id: "pump-2".into(),
        qos: Qos::AtLeastOnce,
        at: time::OffsetDateTime::now_utc(),
        body: Body::Health {
            online: false,
            error: Some("timeout".into()),
        },
    };
    assert_eq!(
        node.encode(&offline).unwrap().0,
        "spBv1.0/plant/DDEATH/gw1/pump-2"
    );
    assert_eq!(node.encode(&offline), None, "dead once");
    let online = Event {
        body: Body::Health {
            online: true,
            error: None,
        },
        ..offline
    };
    assert_eq!(
        node.encode(&online).unwrap().0,
        "spBv1.0/plant/DBIRTH/gw1/pump-2"
    );
}

#[test]
fn data_from_before_the_births_is_historical() {
    let mut node = node(None);
    let old = data("pump-2", serde_json::json!({"on": true}));
    node.connected();
    std::thread::sleep(std::time::Duration::from_millis(2));
    node.births();
    let ddata = decode(&node.encode(&old).unwrap().1);
    assert_eq!(ddata.metrics[0].is_historical, Some(true));
    assert_eq!(ddata.metrics[0].timestamp, Some(unix_millis(old.at) as u64));
}

#[test]
fn dcmd_by_name_or_alias_becomes_commands_and_results_become_ddata() {
    let mut node = node(None);
    node.connected();
    node.births();
    let dcmd = Payload {
        timestamp: Some(1),
        seq: None,
        metrics: vec![
            Metric {
                name: Some("setpoint".into()),
                ..metric(datatype::INT16, Some(Value::Int(-5i32 as u32)))
            },
            Metric {
                alias: Some(2),
                ..metric(datatype::INT16, Some(Value::Int(7)))
            },
            Metric {
                name: Some("temperature".into()),
                ..metric(datatype::FLOAT, Some(Value::Float(1.0)))
            },
        ],
    };
    let commands = node.inbound("spBv1.0/plant/DCMD/gw1/boiler-1", &dcmd.encode_to_vec());
    assert_eq!(
        commands,
        NodeInbound::Commands(vec![
            ("boiler-1".into(), "setpoint".into(), serde_json::json!(-5)),
            ("boiler-1".into(), "setpoint".into(), serde_json::json!(7)),
        ])
    );
    assert_eq!(node.refused, 1, "temperature is not writable");
    let result = Event {
        device_id: "boiler-1".into(),
        qos: Qos::AtLeastOnce,
        at: time::OffsetDateTime::now_utc(),
        body: Body::CommandResult(CommandResult {
            command: "setpoint".into(),
            rc: 200,
            message: "success".into(),
            req_id: None,
            value: Some(serde_json::json!(7)),
            readback: Some(serde_json::json!(7)),
            reply: None,
        }),
    };
    let ddata = decode(&node.encode(&result).unwrap().1);
    assert_eq!(
        (ddata.metrics[0].alias, ddata.metrics[0].value.clone()),
        (Some(2), Some(Value::Int(7)))
    );
}

#[test]
fn rebirth_and_primary_host_state() {
    let mut node = node(Some("scada"));
    assert!(node
        .subscriptions()
        .contains(&"spBv1.0/STATE/scada".to_string()));
    node.connected();
    assert!(!node.may_birth(), "waits for the host");
    let state = |online: bool, timestamp: u64| {
        serde_json::to_vec(&serde_json::json!({"online": online, "timestamp": timestamp})).unwrap()
    };
    assert_eq!(
        node.inbound("spBv1.0/STATE/scada", &state(true, 100)),
        NodeInbound::HostOnline
    );
    assert!(node.may_birth());
    node.births();
    assert!(matches!(
        node.inbound("spBv1.0/STATE/scada", &state(false, 99)),
        NodeInbound::Ignored(_)
    ));
    assert_eq!(
        node.inbound("spBv1.0/STATE/scada", &state(false, 100)),
        NodeInbound::HostOffline
    );
    let rebirth = Payload {
        timestamp: Some(1),
        seq: None,
        metrics: vec![Metric {
            name: Some(REBIRTH.into()),
            ..metric(datatype::BOOLEAN, Some(Value::Boolean(true)))
        }],
    };
    assert_eq!(
        node.inbound("spBv1.0/plant/NCMD/gw1", &rebirth.encode_to_vec()),
        NodeInbound::Rebirth
    );
}
