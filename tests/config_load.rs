//! Gateway configurations that load: the example file, `${VAR}` substitution, token
//! files, defaults and upstream options.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fieldbridge::config::{
    BusTransport, Config, FieldType, LineParser, OnFull, Parity, PublishMode, Size, TopicScheme,
};
use fieldbridge::event::Qos;
use fieldbridge::registers::{DataType, RegisterKind, WordOrder};

fn no_env(_: &str) -> Option<String> {
    None
}

#[test]
fn example_file_loads_with_its_documented_variables() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("gateway.example.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let asked = RefCell::new(BTreeSet::new());
    let env = |name: &str| {
        asked.borrow_mut().insert(name.to_owned());
        // FIELDBRIDGE_ORG is optional: leave it unset to use the default.
        name.ends_with("_TOKEN").then(|| format!("token-of-{name}"))
    };
    let config = Config::load_with_env(&path, &env).unwrap_or_else(|e| panic!("{e}"));

    // Every variable the file uses is listed in its header.
    let header = &text[..text.find("\ngateway:").unwrap()];
    for name in asked.borrow().iter() {
        assert!(header.contains(name.as_str()), "{name} is not documented");
    }
    assert!(asked.borrow().contains("FIELDBRIDGE_ORG"));

    let upstream = config.upstream.as_ref().unwrap();
    assert_eq!(upstream.org, "boilerroom");
    assert_eq!(
        (
            upstream.url.host.as_str(),
            upstream.url.port,
            upstream.url.tls
        ),
        ("127.0.0.1", 1883, false)
    );
    let kinds: Vec<&str> = config
        .buses
        .iter()
        .map(|b| b.transport.kind_name())
        .collect();
    assert_eq!(
        kinds,
        ["rtu", "tcp", "rtu-over-tcp", "serial-line", "serial-line"]
    );
    let ids: Vec<&str> = config.devices.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "boiler-1",
            "heat-meter-1",
            "plc-1",
            "flue-1",
            "gps-1",
            "dosing-1"
        ]
    );
    for device in &config.devices {
        let expected = format!(
            "token-of-{}_TOKEN",
            device.id.to_uppercase().replace('-', "_")
        );
        assert_eq!(device.token.as_ref().unwrap().expose(), expected);
    }
    let boiler = &config.devices[0];
    assert_eq!(boiler.publish, PublishMode::OnChange);
    assert_eq!(boiler.heartbeat.unwrap().get(), Duration::from_secs(60));
    let firmware = boiler
        .registers
        .iter()
        .find(|r| r.name == "firmware")
        .unwrap();
    assert_eq!(firmware.data_type, DataType::String(16));
    let mode = boiler.commands.iter().find(|c| c.name == "mode").unwrap();
    assert_eq!(mode.values.as_ref().unwrap()["hot_water"], 2.0);
    assert_eq!(config.devices[1].registers[2].order, WordOrder::CDAB);
    assert_eq!(config.devices[2].qos, Qos::AtMostOnce);
    match config.devices[4].parser.as_ref().unwrap() {
        LineParser::Regex { regex, fields } => {
            assert_eq!(fields["fix"], FieldType::U64);
            let line = "$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47";
            assert_eq!(&regex.captures(line).unwrap()["lat"], "4807.038");
        }
        other => panic!("gps parser is {other:?}"),
    }
    assert!(matches!(config.devices[5].parser, Some(LineParser::Json)));
}

#[test]
fn environment_substitution() {
    let text = r#"
upstream: { url: "mqtt://${BROKER_HOST}:${BROKER_PORT:-1884}", org: "${ORG:-acme}" }
buses:
  - { name: plc, kind: tcp, host: "${PLC_HOST}" }   # ${NOT_NEEDED_IN_A_COMMENT}
devices:
  - id: boiler-1
    type: boiler
    token: ${TOKEN}
    bus: plc
    unit: 1
    registers:
      - { name: t, kind: holding, address: 0, type: u16, unit: "$${literal}" }
"#;
    let env = |name: &str| match name {
        "BROKER_HOST" => Some("broker.local".to_owned()),
        "PLC_HOST" => Some("10.0.0.5".to_owned()),
        "TOKEN" => Some("s3cr3t: with # yaml characters".to_owned()),
        _ => None,
    };
    // The token value would break the YAML unquoted: quoting is the user's job.
    let error = Config::from_str_with_env(text, "gw.yaml", &env).unwrap_err();
    assert!(!error.to_string().contains("s3cr3t"), "{error}");

    let quoted = text.replace("token: ${TOKEN}", "token: \"${TOKEN}\"");
    let config =
        Config::from_str_with_env(&quoted, "gw.yaml", &env).unwrap_or_else(|e| panic!("{e}"));
    let upstream = config.upstream.unwrap();
    assert_eq!(
        (upstream.url.host.as_str(), upstream.url.port),
        ("broker.local", 1884)
    );
    assert_eq!(upstream.org, "acme");
    assert!(
        matches!(&config.buses[0].transport, BusTransport::Tcp { host, .. } if host == "10.0.0.5")
    );
    let device = &config.devices[0];
    assert_eq!(
        device.token.as_ref().unwrap().expose(),
        "s3cr3t: with # yaml characters"
    );
    assert!(!format!("{device:?}").contains("s3cr3t"));
    assert_eq!(device.registers[0].unit.as_deref(), Some("${literal}"));
}

const MINIMAL: &str = "\
buses:
  - { name: plc, kind: tcp, host: plc.local }
  - { name: rs485, kind: rtu, port: /dev/ttyUSB0 }
  - { name: scale, kind: serial-line, port: /dev/ttyUSB1 }
devices:
  - { id: d1, type: t, bus: plc, unit: 0, registers: [ { name: a, kind: input, address: 7, type: i32 } ] }
  - id: d2
    type: t
    bus: rs485
    unit: 247
    registers:
      - { name: run, kind: holding, address: 3, type: bool, bit: 0 }
      - { name: fault, kind: holding, address: 3, type: bool, bit: 15 }
  - { id: d3, type: t, bus: scale, parser: { json: true } }
";

#[test]
fn token_file_is_read_relative_to_the_config() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("tokens")).unwrap();
    std::fs::write(dir.path().join("tokens/d1.token"), "file-token-123\n").unwrap();
    let text = MINIMAL.replace(
        "{ id: d1, type: t,",
        "{ id: d1, type: t, token_file: tokens/d1.token,",
    );
    let path = dir.path().join("gateway.yaml");
    std::fs::write(&path, text).unwrap();
    let config = Config::load_with_env(&path, &no_env).unwrap_or_else(|e| panic!("{e}"));
    let device = &config.devices[0];
    assert_eq!(device.token.as_ref().unwrap().expose(), "file-token-123");
    assert_eq!(
        device.token_file.as_deref(),
        Some(dir.path().join("tokens/d1.token").as_path())
    );
    assert!(!format!("{config:?}").contains("file-token-123"));
}

#[test]
fn defaults() {
    let config = Config::from_str_with_env(MINIMAL, "/etc/fieldbridge/gateway.yaml", &no_env)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        config.gateway.data_dir,
        PathBuf::from("/var/lib/fieldbridge")
    );
    assert!(config.upstream.is_none());
    assert!(config.log.is_none());
    assert_eq!(config.queue.max_messages, 1_000_000);
    assert_eq!(config.queue.max_bytes, Size(256 << 20));
    assert_eq!(config.queue.on_full, OnFull::DropOldest);

    match &config.bus("plc").unwrap().transport {
        BusTransport::Tcp {
            port,
            timeout,
            delay_between_requests,
            ..
        } => {
            assert_eq!(*port, 502);
            assert_eq!(timeout.get(), Duration::from_secs(1));
            assert!(delay_between_requests.is_zero());
        }
        other => panic!("{other:?}"),
    }
    match &config.bus("rs485").unwrap().transport {
        BusTransport::Rtu {
            baud,
            parity,
            data_bits,
            stop_bits,
            ..
        } => {
            assert_eq!(
                (*baud, *parity, *data_bits, *stop_bits),
                (9600, Parity::None, 8, 1)
            );
        }
        other => panic!("{other:?}"),
    }
    match &config.bus("scale").unwrap().transport {
        BusTransport::SerialLine { max_line, .. } => assert_eq!(*max_line, Size(1024)),
        other => panic!("{other:?}"),
    }

    let d1 = &config.devices[0];
    assert_eq!(d1.poll.get(), Duration::from_secs(1));
    assert_eq!(d1.event, "status");
    assert_eq!(d1.qos, Qos::AtLeastOnce);
    assert_eq!(d1.publish, PublishMode::EveryPoll);
    assert_eq!(
        (d1.max_gap, d1.max_request_registers, d1.max_request_bits),
        (16, 125, 2000)
    );
    assert!(!d1.managed && d1.heartbeat.is_none() && d1.commands.is_empty());
    let a = &d1.registers[0];
    assert_eq!(
        (a.kind, a.order, a.scale, a.offset, a.bit),
        (RegisterKind::Input, WordOrder::ABCD, 1.0, 0.0, None)
    );
    // Two bits of one register share its address.
    assert_eq!(config.devices[1].registers[1].bit, Some(15));
}

#[test]
fn upstream_options() {
    let dir = tempfile::tempdir().unwrap();
    // The client certificate is checked at load: a real one, elsewhere (absolute path),
    // and its key next to the file (relative path).
    let elsewhere = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["gw".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let cert_file = elsewhere.path().join("gw.crt");
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(dir.path().join("gw.key"), key.serialize_pem()).unwrap();
    let upstream = format!(
        "\
upstream:
  url: mqtts://[::1]
  org: acme
  keepalive: 0s
  tls: {{ ca_file: certs/ca.pem, cert_file: {}, key_file: gw.key }}
  topic_scheme: custom
  topics: {{ event: 'site/{{device}}/events/{{event}}' }}
  username: 'gw-{{device}}'
",
        cert_file.display()
    );
    let path = dir.path().join("gateway.yaml");
    std::fs::write(&path, format!("{upstream}{MINIMAL}")).unwrap();
    let config = Config::load_with_env(&path, &no_env).unwrap_or_else(|e| panic!("{e}"));
    let upstream = config.upstream.unwrap();
    assert_eq!(
        (
            upstream.url.host.as_str(),
            upstream.url.port,
            upstream.url.tls
        ),
        ("::1", 8883, true)
    );
    assert_eq!(upstream.url.to_string(), "mqtts://[::1]:8883");
    assert!(upstream.keepalive.is_zero());
    let tls = upstream.tls.unwrap();
    assert_eq!(tls.ca_file.unwrap(), dir.path().join("certs/ca.pem"));
    assert_eq!(tls.cert_file.unwrap(), cert_file);
    assert_eq!(tls.key_file.unwrap(), dir.path().join("gw.key"));
    assert_eq!(upstream.topic_scheme, TopicScheme::Custom);
    let topics = upstream.topics.unwrap();
    assert_eq!(topics.event, "site/{device}/events/{event}");
    assert_eq!(topics.command, "fieldbridge/{type}/{device}/cmd/{command}");
    assert_eq!(upstream.username.as_deref(), Some("gw-{device}"));
}

#[test]
fn custom_topic_template_errors() {
    let upstream = "\
upstream:
  url: mqtt://localhost
  org: acme
  topic_scheme: custom
  topics: { command: 'site/{device}/cmd-{command}', event: 'site/{device}/{event}' }
";
    let error =
        Config::from_str_with_env(&format!("{upstream}{MINIMAL}"), "gw.yaml", &no_env).unwrap_err();
    assert_eq!(
        (error.line(), error.key.as_str()),
        (Some(5), "upstream.topics.command"),
        "{error}"
    );
    assert!(error.message.contains("whole topic level"), "{error}");

    let upstream = upstream.replace("{event}'", "{evt}'");
    let error =
        Config::from_str_with_env(&format!("{upstream}{MINIMAL}"), "gw.yaml", &no_env).unwrap_err();
    assert_eq!(error.key, "upstream.topics.event", "{error}");
    assert!(
        error.message.contains("unknown placeholder `{evt}`"),
        "{error}"
    );
}
