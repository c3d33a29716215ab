//! Broken gateway configurations: each error must name the file, the exact line and
//! the key path, and say what is allowed.

use std::path::{Path, PathBuf};

use fieldbridge::config::{Config, ConfigError};

/// A valid configuration; the broken ones change one line of it.
const BASE: &str = r#"buses:
  - { name: plc, kind: tcp, host: 127.0.0.1, port: 5020, timeout: 1s }
  - { name: rs485, kind: rtu, port: /dev/ttyUSB0, baud: 9600 }
  - { name: gps, kind: serial-line, port: /dev/ttyAMA0, baud: 4800 }
devices:
  - id: boiler-1
    type: boiler
    bus: plc
    unit: 1
    poll: 1s
    registers:
      - { name: temperature, kind: holding, address: 0, type: f32 }
      - { name: pressure, kind: input, address: 10, type: u16, scale: 0.01 }
      - { name: pump_on, kind: coil, address: 0, type: bool }
    commands:
      - { name: setpoint, kind: holding, address: 20, type: f32, min: 5, max: 90 }
  - id: gps-1
    type: gps
    bus: gps
    parser: { regex: '^\$GPGGA,(?P<utc>[^,]*),(?P<lat>[^,]*)', fields: { lat: f64 } }
"#;

/// `BASE` with line `line` (1-based) replaced by `text` (which may span lines).
fn replace_line(line: usize, text: &str) -> String {
    let mut lines: Vec<&str> = BASE.lines().collect();
    assert!(line >= 1 && line <= lines.len(), "no line {line}");
    lines[line - 1] = text;
    lines.join("\n") + "\n"
}

/// `BASE` with `text` inserted before line `line`.
fn insert_before(line: usize, text: &str) -> String {
    let mut lines: Vec<&str> = BASE.lines().collect();
    lines.insert(line - 1, text);
    lines.join("\n") + "\n"
}

fn no_env(_: &str) -> Option<String> {
    None
}

/// Writes `text` to `broken.yaml` in a fresh directory and loads it.
fn load(text: &str) -> (tempfile::TempDir, Result<Config, ConfigError>) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("broken.yaml");
    std::fs::write(&path, text).expect("write config");
    let result = Config::load_with_env(&path, &no_env);
    (dir, result)
}

/// Loads `text` and checks the error's file, line, key path and message.
fn expect_error(text: &str, line: usize, key: &str, fragments: &[&str]) -> ConfigError {
    let (_dir, result) = load(text);
    let error = match result {
        Ok(_) => panic!("expected an error at line {line} ({key}), the config loaded:\n{text}"),
        Err(error) => error,
    };
    let shown = error.to_string();
    assert_eq!(
        error.file.file_name().and_then(|n| n.to_str()),
        Some("broken.yaml"),
        "{shown}"
    );
    assert_eq!(error.line(), Some(line), "wrong line: {shown}\n{text}");
    assert_eq!(error.key, key, "wrong key: {shown}");
    let prefix = format!("broken.yaml:{line}:{}: ", error.column().unwrap_or(0));
    assert!(shown.contains(&prefix), "{shown} lacks {prefix}");
    if !key.is_empty() {
        assert!(shown.contains(&format!(": {key}: ")), "{shown}");
    }
    for fragment in fragments {
        assert!(shown.contains(fragment), "`{shown}` lacks `{fragment}`");
    }
    assert!(!shown.contains('\n'), "multi-line message: {shown}");
    error
}

#[test]
fn base_config_is_valid() {
    let (_dir, result) = load(BASE);
    let config = result.expect("base config loads");
    assert_eq!(config.devices.len(), 2);
}

#[test]
fn malformed_yaml() {
    let text = replace_line(
        13,
        "      - { name: pressure, kind: input, address: 10, type: u16",
    );
    expect_error(&text, 14, "", &["invalid YAML", "flow mapping"]);
}

#[test]
fn bad_indentation() {
    let text = replace_line(10, "     poll: 1s");
    expect_error(&text, 10, "", &["invalid YAML"]);
}

#[test]
fn unknown_key_lists_the_allowed_ones() {
    let text = replace_line(10, "    pol: 1s");
    expect_error(
        &text,
        10,
        "devices[0].pol",
        &["unknown field `pol`", "`poll`", "`unit`"],
    );
}

#[test]
fn unknown_top_level_section() {
    let text = insert_before(1, "gatway:\n  data_dir: /tmp");
    expect_error(&text, 1, "gatway", &["unknown field `gatway`", "`gateway`"]);
}

#[test]
fn wrong_type() {
    let text = replace_line(9, "    unit: one");
    expect_error(&text, 9, "devices[0].unit", &["invalid type", "u8"]);
}

#[test]
fn bad_duration() {
    let text = replace_line(10, "    poll: 1 fortnight");
    expect_error(
        &text,
        10,
        "devices[0].poll",
        &["invalid duration `1 fortnight`", "500ms, 30s"],
    );
}

#[test]
fn duration_without_unit() {
    let text = replace_line(10, "    poll: 30");
    expect_error(&text, 10, "devices[0].poll", &["has no unit", "`30s`"]);
}

#[test]
fn bad_size() {
    let text = insert_before(1, "queue:\n  max_bytes: 12 parsecs");
    expect_error(
        &text,
        2,
        "queue.max_bytes",
        &["invalid size `12 parsecs`", "MiB"],
    );
}

#[test]
fn queue_too_small() {
    let text = insert_before(1, "queue: { max_bytes: 1KiB }");
    expect_error(&text, 1, "queue.max_bytes", &["too small", "128KiB"]);
}

#[test]
fn unknown_enum_value() {
    let text = insert_before(1, "queue: { on_full: drop_everything }");
    expect_error(&text, 1, "queue.on_full", &["drop_oldest", "drop_newest"]);
}

#[test]
fn unknown_bus() {
    let text = replace_line(8, "    bus: plcc");
    expect_error(
        &text,
        8,
        "devices[0].bus",
        &["no bus named `plcc`", "gps, plc, rs485"],
    );
}

#[test]
fn unknown_bus_kind() {
    let text = replace_line(2, "  - { name: plc, kind: modbus, host: 127.0.0.1 }");
    expect_error(
        &text,
        2,
        "buses[0].kind",
        &["`modbus`", "rtu-over-tcp", "serial-line"],
    );
}

#[test]
fn key_that_does_not_fit_the_bus_kind() {
    let text = replace_line(
        4,
        "  - { name: gps, kind: serial-line, port: /dev/ttyAMA0, timeout: 1s }",
    );
    expect_error(
        &text,
        4,
        "buses[2].timeout",
        &["does not apply to a bus of kind serial-line", "max_line"],
    );
}

#[test]
fn bus_without_required_key() {
    let text = replace_line(2, "  - { name: plc, kind: tcp, port: 5020 }");
    expect_error(&text, 2, "buses[0]", &["needs `host`"]);
}

#[test]
fn duplicate_bus_name() {
    let text = replace_line(3, "  - { name: plc, kind: rtu, port: /dev/ttyUSB0 }");
    expect_error(
        &text,
        3,
        "buses[1].name",
        &["`plc` is already used by buses[0] (line 2)"],
    );
}

#[test]
fn duplicate_register_name() {
    let text = replace_line(
        13,
        "      - { name: temperature, kind: input, address: 10, type: u16 }",
    );
    expect_error(
        &text,
        13,
        "devices[0].registers[1].name",
        &["`temperature` is already used by registers[0] (line 12)"],
    );
}

#[test]
fn overlapping_registers() {
    let text = replace_line(
        13,
        "      - { name: pressure, kind: holding, address: 1, type: u16 }",
    );
    expect_error(
        &text,
        13,
        "devices[0].registers[1].address",
        &["`pressure` (holding 1) overlaps `temperature` (holding 0-1, line 12)"],
    );
}

#[test]
fn same_bit_twice() {
    let text = insert_before(
        14,
        "      - { name: alarm, kind: input, address: 10, type: bool, bit: 2 }\n      - { name: fault, kind: input, address: 10, type: bool, bit: 2 }",
    );
    let text = text.replace("address: 10, type: u16", "address: 11, type: u16");
    expect_error(
        &text,
        15,
        "devices[0].registers[3].address",
        &["overlaps `alarm`"],
    );
}

#[test]
fn address_out_of_range() {
    let text = replace_line(
        12,
        "      - { name: temperature, kind: holding, address: 65535, type: f32 }",
    );
    expect_error(
        &text,
        12,
        "devices[0].registers[0].address",
        &["needs 2 registers", "65535"],
    );
}

#[test]
fn address_beyond_u16() {
    let text = replace_line(
        12,
        "      - { name: temperature, kind: holding, address: 70000, type: f32 }",
    );
    expect_error(&text, 12, "devices[0].registers[0].address", &["u16"]);
}

#[test]
fn bool_on_holding_without_bit() {
    let text = replace_line(
        13,
        "      - { name: alarm, kind: input, address: 10, type: bool }",
    );
    expect_error(
        &text,
        13,
        "devices[0].registers[1].type",
        &["needs `bit` (0 to 15)"],
    );
}

#[test]
fn bit_out_of_range() {
    let text = replace_line(
        13,
        "      - { name: alarm, kind: input, address: 10, type: bool, bit: 16 }",
    );
    expect_error(
        &text,
        13,
        "devices[0].registers[1].bit",
        &["bit 16 is out of range, expected 0 to 15"],
    );
}

#[test]
fn bit_with_a_numeric_type() {
    let text = replace_line(
        13,
        "      - { name: pressure, kind: input, address: 10, type: u16, bit: 2 }",
    );
    expect_error(
        &text,
        13,
        "devices[0].registers[1].bit",
        &["only goes with type bool"],
    );
}

#[test]
fn f32_on_a_coil() {
    let text = replace_line(
        14,
        "      - { name: pump_on, kind: coil, address: 0, type: f32 }",
    );
    expect_error(
        &text,
        14,
        "devices[0].registers[2].type",
        &["f32 does not fit a coil", "use type bool"],
    );
}

#[test]
fn unknown_data_type() {
    let text = replace_line(
        12,
        "      - { name: temperature, kind: holding, address: 0, type: float }",
    );
    expect_error(
        &text,
        12,
        "devices[0].registers[0].type",
        &["unknown type `float`", "string(N)"],
    );
}

#[test]
fn missing_environment_variable() {
    let text = insert_before(8, "    token: ${FIELDBRIDGE_TEST_UNSET_TOKEN}");
    expect_error(
        &text,
        8,
        "devices[0].token",
        &["environment variable `FIELDBRIDGE_TEST_UNSET_TOKEN` is not set"],
    );
}

#[test]
fn token_and_token_file() {
    let text = insert_before(8, "    token: abc\n    token_file: boiler.token");
    expect_error(
        &text,
        9,
        "devices[0].token_file",
        &["either `token` or `token_file`, not both"],
    );
}

#[test]
fn missing_token_file() {
    let text = insert_before(8, "    token_file: missing.token");
    let (dir, result) = load(&text);
    let error = result.unwrap_err();
    let shown = error.to_string();
    assert_eq!(
        (error.line(), error.key.as_str()),
        (Some(8), "devices[0].token_file"),
        "{shown}"
    );
    // Relative to the config file's directory, not the working directory.
    let expected = dir.path().join("missing.token");
    assert!(
        shown.contains(&format!("token file {}: cannot read", expected.display())),
        "{shown}"
    );
}

#[test]
fn token_file_with_two_lines_does_not_leak_its_content() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("boiler.token"),
        "first-secret\nsecond-secret\n",
    )
    .unwrap();
    let path = dir.path().join("broken.yaml");
    std::fs::write(&path, insert_before(8, "    token_file: boiler.token")).unwrap();
    let error = Config::load_with_env(&path, &no_env).unwrap_err();
    let shown = error.to_string();
    assert_eq!(error.line(), Some(8), "{shown}");
    assert_eq!(error.key, "devices[0].token_file");
    assert!(shown.contains("more than one line"), "{shown}");
    assert!(!shown.contains("secret"), "{shown}");
}

#[test]
fn bad_regex() {
    let text = replace_line(
        20,
        "    parser: { regex: '^(?P<lat[0-9]+', fields: { lat: f64 } }",
    );
    expect_error(
        &text,
        20,
        "devices[1].parser.regex",
        &["invalid regex", "at character"],
    );
}

#[test]
fn field_that_is_not_a_regex_group() {
    let text = replace_line(
        20,
        "    parser: { regex: '^(?P<lat>[0-9.]+)', fields: { lat: f64, alt: f64 } }",
    );
    expect_error(
        &text,
        20,
        "devices[1].parser.fields.alt",
        &["`alt` is not a named group", "its groups: lat"],
    );
}

#[test]
fn bad_device_id() {
    let text = replace_line(6, "  - id: boiler 1");
    expect_error(
        &text,
        6,
        "devices[0].id",
        &["device id `boiler 1` is not allowed", "A-Z a-z 0-9 . _ -"],
    );
}

#[test]
fn duplicate_device_id() {
    let text = replace_line(17, "  - id: boiler-1");
    expect_error(
        &text,
        17,
        "devices[1].id",
        &["`boiler-1` is already used by devices[0] (line 6)"],
    );
}

#[test]
fn modbus_device_without_unit() {
    let text = replace_line(9, "    # no unit");
    expect_error(&text, 6, "devices[0]", &["needs `unit`", "0 to 255"]);
}

#[test]
fn rtu_unit_out_of_range() {
    let text = replace_line(8, "    bus: rs485").replace("    unit: 1\n", "    unit: 248\n");
    expect_error(
        &text,
        9,
        "devices[0].unit",
        &["unit 248 is not allowed", "1 to 247"],
    );
}

#[test]
fn serial_line_device_with_registers() {
    let text = insert_before(20, "    registers: []");
    expect_error(
        &text,
        20,
        "devices[1].registers",
        &["only applies to Modbus devices"],
    );
}

#[test]
fn serial_line_device_without_parser() {
    let text = replace_line(20, "    event: position");
    expect_error(&text, 17, "devices[1]", &["needs `parser`", "json: true"]);
}

#[test]
fn heartbeat_without_on_change() {
    let text = insert_before(11, "    heartbeat: 60s");
    expect_error(
        &text,
        11,
        "devices[0].heartbeat",
        &["only applies with `publish: on_change`"],
    );
}

#[test]
fn qos_two_is_rejected() {
    let text = insert_before(11, "    qos: 2");
    expect_error(
        &text,
        11,
        "devices[0].qos",
        &["qos 2", "expected 0", "or 1"],
    );
}

#[test]
fn reserved_event_id() {
    let text = insert_before(11, "    event: health");
    expect_error(&text, 11, "devices[0].event", &["reserved"]);
}

#[test]
fn duplicate_yaml_key() {
    let text = insert_before(11, "    poll: 2s");
    expect_error(&text, 11, "devices[0].poll", &["duplicate field `poll`"]);
}

#[test]
fn command_on_a_read_only_table() {
    let text = replace_line(
        16,
        "      - { name: setpoint, kind: input, address: 20, type: f32 }",
    );
    expect_error(
        &text,
        16,
        "devices[0].commands[0].kind",
        &["read-only", "coil or holding"],
    );
}

#[test]
fn command_min_above_max() {
    let text = replace_line(
        16,
        "      - { name: setpoint, kind: holding, address: 20, type: f32, min: 90, max: 5 }",
    );
    expect_error(
        &text,
        16,
        "devices[0].commands[0].min",
        &["min 90 is greater than max 5"],
    );
}

#[test]
fn command_values_on_a_coil() {
    let text = insert_before(
        17,
        "      - { name: pump, kind: coil, address: 0, type: bool, values: { on: 1 } }",
    );
    expect_error(
        &text,
        17,
        "devices[0].commands[1].values",
        &["does not apply to type bool"],
    );
}

#[test]
fn upstream_url_scheme() {
    let text = insert_before(1, "upstream:\n  url: http://127.0.0.1:1883\n  org: myorg");
    expect_error(
        &text,
        2,
        "upstream.url",
        &["mqtt://HOST[:PORT] or mqtts://HOST[:PORT]"],
    );
}

#[test]
fn platform_upstream_needs_device_tokens() {
    let text = insert_before(1, "upstream:\n  url: mqtt://127.0.0.1\n  org: myorg");
    expect_error(&text, 9, "devices[0]", &["needs `token` or `token_file`"]);
}

#[test]
fn tls_needs_mqtts() {
    let text = insert_before(
        1,
        "upstream:\n  url: mqtt://broker.example\n  org: myorg\n  tls: { ca_file: ca.pem }",
    );
    expect_error(&text, 4, "upstream.tls", &["need an mqtts:// url"]);
}

#[test]
fn unreadable_file_names_the_file() {
    let path = Path::new("/nonexistent/fieldbridge/gateway.yaml");
    let error = Config::load(path).unwrap_err();
    assert_eq!(error.file, PathBuf::from(path));
    assert_eq!(error.line(), None);
    assert!(
        error
            .to_string()
            .starts_with("/nonexistent/fieldbridge/gateway.yaml: cannot read:"),
        "{error}"
    );
}

#[test]
fn empty_file() {
    let (_dir, result) = load("# nothing yet\n");
    let error = result.unwrap_err();
    assert!(
        error
            .to_string()
            .contains("broken.yaml: the file has no settings"),
        "{error}"
    );
}

#[test]
fn no_devices() {
    let text: String = BASE.lines().take(4).map(|l| format!("{l}\n")).collect();
    let (_dir, result) = load(&text);
    let error = result.unwrap_err();
    assert_eq!(error.key, "devices");
    assert!(
        error.message.contains("no devices are configured"),
        "{error}"
    );
}

#[test]
fn columns_refer_to_the_file_before_substitution() {
    let line = "  - { name: plc, kind: tcp, host: ${PLC_HOST}, port: 99999 }";
    let text = replace_line(2, line);
    let env =
        |name: &str| (name == "PLC_HOST").then(|| "plc-controller.boiler-room.local".to_owned());
    let error = Config::from_str_with_env(&text, "gw.yaml", &env).unwrap_err();
    let column = line.find("99999").unwrap() + 1;
    assert_eq!(
        error.position.map(|p| (p.line, p.column)),
        Some((2, column)),
        "{error}"
    );
    assert_eq!(error.key, "buses[0].port");
}

#[test]
fn truncated_or_mangled_files_give_errors_not_panics() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("gateway.example.yaml");
    let example = std::fs::read_to_string(path).unwrap();
    let env = |name: &str| name.ends_with("_TOKEN").then(|| "t".to_owned());
    let lines: Vec<&str> = example.lines().collect();
    let mut rejected = 0;
    for cut in 0..lines.len() {
        let truncated = lines[..cut].join("\n");
        let without_line = [&lines[..cut], &lines[cut + 1..]].concat().join("\n");
        let mangled = lines[cut].replacen(':', "", 1);
        let with_mangled = [&lines[..cut], &[mangled.as_str()], &lines[cut + 1..]]
            .concat()
            .join("\n");
        for text in [truncated, without_line, with_mangled] {
            if let Err(error) = Config::from_str_with_env(&text, "gw.yaml", &env) {
                let shown = error.to_string();
                assert!(shown.starts_with("gw.yaml"), "{shown}");
                assert!(!shown.contains('\n'), "{shown}");
                rejected += 1;
            }
        }
    }
    // Most truncations lose devices or break the YAML.
    assert!(
        rejected > lines.len(),
        "only {rejected} variants were rejected"
    );
}

#[test]
fn upstream_max_inbound_bounds() {
    let text = insert_before(
        1,
        "upstream:\n  url: mqtt://127.0.0.1\n  org: myorg\n  max_inbound: 100",
    );
    expect_error(
        &text,
        4,
        "upstream.max_inbound",
        &["must be from 1KiB to 256MiB"],
    );
}

#[test]
fn sparkplug_needs_its_edge_node() {
    let text = insert_before(
        1,
        "upstream:\n  url: mqtt://127.0.0.1\n  org: myorg\n  topic_scheme: sparkplug",
    );
    expect_error(
        &text,
        4,
        "upstream.topic_scheme",
        &["needs `upstream.sparkplug`", "group_id", "edge_node_id"],
    );
    let text = insert_before(
        1,
        "upstream:\n  url: mqtt://127.0.0.1\n  org: myorg\n  topic_scheme: sparkplug\n  sparkplug:\n    group_id: plant\n    edge_node_id: gw/1",
    );
    expect_error(
        &text,
        7,
        "upstream.sparkplug.edge_node_id",
        &["\"gw/1\"", "topic level"],
    );
    let text = insert_before(
        1,
        "upstream:\n  url: mqtt://127.0.0.1\n  org: myorg\n  sparkplug: { group_id: plant, edge_node_id: gw1 }",
    );
    expect_error(
        &text,
        4,
        "upstream.sparkplug",
        &["only applies with `topic_scheme: sparkplug`"],
    );
    let text = insert_before(
        1,
        "upstream:\n  url: mqtt://127.0.0.1\n  org: myorg\n  topic_scheme: sparkplug\n  sparkplug: { group_id: plant, edge_node_id: gw1, host: x }",
    );
    expect_error(
        &text,
        5,
        "upstream.sparkplug.host",
        &["unknown field `host`", "primary_host_id"],
    );
}

#[test]
fn homeassistant_topics() {
    let text = insert_before(
        1,
        "upstream:\n  url: mqtt://127.0.0.1\n  org: myorg\n  topic_scheme: homeassistant\n  homeassistant:\n    base_topic: \"fb/#\"",
    );
    expect_error(
        &text,
        6,
        "upstream.homeassistant.base_topic",
        &["\"fb/#\"", "without wildcards"],
    );
    let text = insert_before(
        1,
        "upstream:\n  url: mqtt://127.0.0.1\n  org: myorg\n  homeassistant: { base_topic: fb }",
    );
    expect_error(
        &text,
        4,
        "upstream.homeassistant",
        &["only applies with `topic_scheme: homeassistant`"],
    );
    let text = replace_line(
        12,
        "      - { name: temperature, kind: holding, address: 0, type: f32, state_class: average }",
    );
    expect_error(
        &text,
        12,
        "devices[0].registers[0].state_class",
        &["unknown variant `average`", "total_increasing"],
    );
}

/// A self-signed certificate for `name` ending in `days` days (negative: ended), and
/// its key, as PEM files in `dir`.
fn certificate_pair(dir: &Path, name: &str, days: i64) -> (PathBuf, PathBuf) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(400);
    params.not_after = now + time::Duration::days(days);
    let cert = params.self_signed(&key).unwrap();
    let (cert_file, key_file) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    (cert_file, key_file)
}

/// `BASE` below an upstream at `url` (with `extra` upstream lines), its devices with
/// tokens and boiler-1 with the device certificate `tls`, which lands on line 13 plus
/// `extra`'s lines.
fn with_device_tls(url: &str, extra: &str, tls: &str) -> String {
    let devices = insert_before(9, &format!("    token: secret\n    tls: {tls}"))
        .replace("    type: gps\n", "    type: gps\n    token: secret\n");
    format!("upstream:\n  url: {url}\n  org: myorg\n{extra}{devices}")
}

#[test]
fn device_certificates_need_mqtts_and_a_session_per_device() {
    let tls = "{ cert_file: /etc/d.pem, key_file: /etc/d.key }";
    let text = with_device_tls("mqtt://127.0.0.1", "", tls);
    expect_error(&text, 13, "devices[0].tls", &["needs an mqtts:// url"]);
    let sparkplug =
        "  topic_scheme: sparkplug\n  sparkplug: { group_id: plant, edge_node_id: gw1 }\n";
    let text = with_device_tls("mqtts://broker.example", sparkplug, tls);
    expect_error(
        &text,
        15,
        "devices[0].tls",
        &["edge node has one session", "upstream.tls"],
    );
    let text = with_device_tls("mqtts://broker.example", "", "{ cert_file: /etc/d.pem }");
    expect_error(&text, 13, "devices[0].tls", &["missing field `key_file`"]);
}

#[test]
fn device_certificates_are_checked_when_the_file_is_loaded() {
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = certificate_pair(certs.path(), "pump", 365);
    let (_, other_key) = certificate_pair(certs.path(), "other", 365);
    let (old_cert, old_key) = certificate_pair(certs.path(), "old", -1);
    let (soon_cert, soon_key) = certificate_pair(certs.path(), "soon", 10);
    let tls = |cert: &Path, key: &Path| {
        format!(
            "{{ cert_file: {}, key_file: {} }}",
            cert.display(),
            key.display()
        )
    };
    let url = "mqtts://broker.example";
    let text = with_device_tls(url, "", &tls(&cert, &other_key));
    expect_error(
        &text,
        13,
        "devices[0].tls.cert_file",
        &[
            "other.key",
            "does not belong to the certificate in",
            "pump.pem",
        ],
    );
    let text = with_device_tls(url, "", &tls(&old_cert, &old_key));
    expect_error(
        &text,
        13,
        "devices[0].tls.cert_file",
        &["old.pem", "expired on"],
    );
    let missing = certs.path().join("missing.pem");
    let text = with_device_tls(url, "", &tls(&missing, &key));
    expect_error(
        &text,
        13,
        "devices[0].tls.cert_file",
        &["cannot read", "missing.pem"],
    );

    let (_dir, loaded) = load(&with_device_tls(url, "", &tls(&cert, &key)));
    assert_eq!(loaded.unwrap().warnings, Vec::<String>::new());
    let (_dir, loaded) = load(&with_device_tls(url, "", &tls(&soon_cert, &soon_key)));
    let warnings = loaded.unwrap().warnings;
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].starts_with("devices[0].tls.cert_file: the certificate in")
            && warnings[0].contains("soon.pem expires on"),
        "{warnings:?}"
    );
}
