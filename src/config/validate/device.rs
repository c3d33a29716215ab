//! Checks of the devices: references to buses, Modbus addressing, registers,
//! commands and line parsers.

use std::collections::HashMap;

use super::{check_identifier, Check, Checker};
use crate::config::schema::{
    Bus, Command, Config, Device, LineParser, PublishMode, Register, TopicScheme,
};
use crate::config::source_map::{child, item};
use crate::registers::{DataType, RegisterKind};

/// Event ids the gateway publishes itself.
const RESERVED_EVENTS: [&str; 2] = ["health", "cmd-result"];

/// Keys that only mean something for a device on a Modbus bus.
const MODBUS_ONLY_KEYS: [&str; 7] = [
    "unit",
    "poll",
    "registers",
    "commands",
    "max_gap",
    "max_request_registers",
    "max_request_bits",
];

type Buses<'c> = HashMap<&'c str, (usize, &'c Bus)>;

pub(super) fn check_devices(checker: &Checker, config: &Config, buses: &Buses) -> Check {
    if config.devices.is_empty() {
        return checker.fail(
            "devices",
            "no devices are configured: add at least one under `devices`",
        );
    }
    let mut ids: HashMap<&str, usize> = HashMap::new();
    let mut serial_line_users: HashMap<&str, usize> = HashMap::new();
    for (index, device) in config.devices.iter().enumerate() {
        let path = item("devices", index);
        check_identifier(checker, &child(&path, "id"), "device id", &device.id)?;
        if let Some(first) = ids.insert(&device.id, index) {
            let first_path = item("devices", first);
            return checker.fail(
                &child(&path, "id"),
                format!(
                    "device id `{}` is already used by {first_path} ({})",
                    device.id,
                    checker.line_of(&first_path)
                ),
            );
        }
        check_identifier(
            checker,
            &child(&path, "type"),
            "device type",
            &device.device_type,
        )?;
        let Some(&(_, bus)) = buses.get(device.bus.as_str()) else {
            let mut names: Vec<&str> = buses.keys().copied().collect();
            names.sort_unstable();
            let known = if names.is_empty() {
                "no buses are configured under `buses`".to_owned()
            } else {
                format!("configured buses: {}", names.join(", "))
            };
            return checker.fail(
                &child(&path, "bus"),
                format!("there is no bus named `{}`; {known}", device.bus),
            );
        };
        check_publishing(checker, &path, device)?;
        check_credentials(checker, &path, device, config)?;
        if bus.transport.is_modbus() {
            check_modbus_device(checker, &path, device, bus)?;
        } else {
            if let Some(first) = serial_line_users.insert(bus.name.as_str(), index) {
                return checker.fail(
                    &child(&path, "bus"),
                    format!(
                        "serial-line bus `{}` already feeds {} ({}); a serial line carries one device",
                        bus.name,
                        item("devices", first),
                        checker.line_of(&item("devices", first))
                    ),
                );
            }
            check_serial_line_device(checker, &path, device, bus)?;
        }
    }
    Ok(())
}

fn check_publishing(checker: &Checker, path: &str, device: &Device) -> Check {
    check_identifier(checker, &child(path, "event"), "event id", &device.event)?;
    if RESERVED_EVENTS.contains(&device.event.as_str()) {
        return checker.fail(
            &child(path, "event"),
            format!(
                "event id `{}` is reserved for the gateway's own events ({})",
                device.event,
                RESERVED_EVENTS.join(", ")
            ),
        );
    }
    if let Some(heartbeat) = device.heartbeat {
        if device.publish != PublishMode::OnChange {
            return checker.fail(
                &child(path, "heartbeat"),
                "`heartbeat` only applies with `publish: on_change` (every_poll publishes every poll anyway)",
            );
        }
        if heartbeat.is_zero() {
            return checker.fail(
                &child(path, "heartbeat"),
                "heartbeat must be longer than 0s, e.g. 60s",
            );
        }
    }
    Ok(())
}

fn check_credentials(checker: &Checker, path: &str, device: &Device, config: &Config) -> Check {
    if device.token.is_some() && device.token_file.is_some() {
        return checker.fail(
            &child(path, "token_file"),
            "give either `token` or `token_file`, not both",
        );
    }
    if device.token.as_ref().is_some_and(|t| t.expose().is_empty()) {
        return checker.fail(&child(path, "token"), "token is empty");
    }
    let Some(upstream) = &config.upstream else {
        return checker.reject_present(path, &["tls"], "needs an `upstream` broker");
    };
    if device.tls.is_some() {
        if !upstream.url.tls {
            return checker.fail(
                &child(path, "tls"),
                format!(
                    "a device certificate needs an mqtts:// url, but the url is {}",
                    upstream.url
                ),
            );
        }
        if upstream.topic_scheme == TopicScheme::Sparkplug {
            return checker.fail(
                &child(path, "tls"),
                "with `topic_scheme: sparkplug` the edge node has one session for every device: give its certificate in `upstream.tls`",
            );
        }
    }
    if upstream.topic_scheme == TopicScheme::Platform {
        if device.token.is_none() && device.token_file.is_none() {
            return checker.fail(
                path,
                format!(
                    "device `{}` needs `token` or `token_file`: the platform topic scheme authenticates every device with its token",
                    device.id
                ),
            );
        }
    } else if device.managed {
        return checker.fail(
            &child(path, "managed"),
            "device management (`managed: true`) needs `upstream.topic_scheme: platform`",
        );
    }
    Ok(())
}

fn check_modbus_device(checker: &Checker, path: &str, device: &Device, bus: &Bus) -> Check {
    let rtu = bus.transport.uses_rtu_units();
    let units = if rtu { "1 to 247" } else { "0 to 255" };
    match device.unit {
        None => {
            return checker.fail(
                path,
                format!(
                    "device `{}` on {} bus `{}` needs `unit` (its Modbus unit id, {units})",
                    device.id,
                    bus.transport.kind_name(),
                    bus.name
                ),
            )
        }
        Some(unit) if rtu && !(1..=247).contains(&unit) => {
            return checker.fail(
                &child(path, "unit"),
                format!(
                    "unit {unit} is not allowed on {} bus `{}`, expected {units} (0 is broadcast)",
                    bus.transport.kind_name(),
                    bus.name
                ),
            )
        }
        Some(_) => {}
    }
    if device.parser.is_some() {
        return Err(checker.key_error(
            &child(path, "parser"),
            format!(
                "`parser` only applies to serial-line buses; `{}` is a {} bus (use `registers`)",
                bus.name,
                bus.transport.kind_name()
            ),
        ));
    }
    if device.poll.is_zero() {
        return checker.fail(&child(path, "poll"), "poll must be longer than 0s, e.g. 1s");
    }
    if !(1..=125).contains(&device.max_request_registers) {
        return checker.fail(
            &child(path, "max_request_registers"),
            format!(
                "{} is not allowed, expected 1 to 125",
                device.max_request_registers
            ),
        );
    }
    if !(1..=2000).contains(&device.max_request_bits) {
        return checker.fail(
            &child(path, "max_request_bits"),
            format!(
                "{} is not allowed, expected 1 to 2000",
                device.max_request_bits
            ),
        );
    }
    if device.registers.is_empty() {
        return checker.fail(
            &child(path, "registers"),
            format!(
                "device `{}` needs at least one entry in `registers`",
                device.id
            ),
        );
    }
    let mut names: HashMap<&str, usize> = HashMap::new();
    for (index, register) in device.registers.iter().enumerate() {
        let reg_path = item(&child(path, "registers"), index);
        check_unique_name(
            checker,
            &reg_path,
            &register.name,
            index,
            &mut names,
            "registers",
        )?;
        check_register(checker, &reg_path, register)?;
    }
    check_overlaps(checker, path, &device.registers)?;
    let mut names: HashMap<&str, usize> = HashMap::new();
    for (index, command) in device.commands.iter().enumerate() {
        let cmd_path = item(&child(path, "commands"), index);
        check_unique_name(
            checker,
            &cmd_path,
            &command.name,
            index,
            &mut names,
            "commands",
        )?;
        check_command(checker, &cmd_path, command)?;
    }
    Ok(())
}

fn check_unique_name<'c>(
    checker: &Checker,
    path: &str,
    name: &'c str,
    index: usize,
    seen: &mut HashMap<&'c str, usize>,
    list: &str,
) -> Check {
    let name_path = child(path, "name");
    if name.trim().is_empty() {
        return checker.fail(&name_path, "name must not be empty");
    }
    if let Some(first) = seen.insert(name, index) {
        let list_path = path
            .rsplit_once('[')
            .map_or(path, |(list_path, _)| list_path);
        let first_path = item(list_path, first);
        return checker.fail(
            &name_path,
            format!(
                "name `{name}` is already used by {list}[{first}] ({}); names are unique per device",
                checker.line_of(&first_path)
            ),
        );
    }
    Ok(())
}

/// Registers (or coils) a tag occupies.
fn width(kind: RegisterKind, data_type: DataType) -> u32 {
    if kind.is_bit() {
        1
    } else {
        u32::from(data_type.register_count())
    }
}

/// "a coil", "an input", ...
fn a(kind: RegisterKind) -> String {
    match kind {
        RegisterKind::Input => format!("an {kind}"),
        _ => format!("a {kind}"),
    }
}

fn is_numeric(data_type: DataType) -> bool {
    !matches!(data_type, DataType::Bool | DataType::String(_))
}

fn check_address(
    checker: &Checker,
    path: &str,
    kind: RegisterKind,
    address: u16,
    data_type: DataType,
) -> Check {
    let count = width(kind, data_type);
    if u32::from(address) + count > 65_536 {
        return checker.fail(
            &child(path, "address"),
            format!(
                "{data_type} at {kind} address {address} needs {count} registers and runs past the last address 65535"
            ),
        );
    }
    Ok(())
}

fn check_scaling(
    checker: &Checker,
    path: &str,
    data_type: DataType,
    scale: f64,
    offset: f64,
) -> Check {
    if !is_numeric(data_type) {
        return checker.reject_present(
            path,
            &["scale", "offset"],
            &format!("does not apply to type {data_type}"),
        );
    }
    if !scale.is_finite() || scale == 0.0 {
        return checker.fail(
            &child(path, "scale"),
            format!("scale {scale} is not allowed: use a finite number other than 0"),
        );
    }
    if !offset.is_finite() {
        return checker.fail(&child(path, "offset"), "offset must be a finite number");
    }
    Ok(())
}

fn check_register(checker: &Checker, path: &str, register: &Register) -> Check {
    let Register {
        kind,
        data_type,
        bit,
        ..
    } = *register;
    if kind.is_bit() {
        if data_type != DataType::Bool {
            return checker.fail(
                &child(path, "type"),
                format!("type {data_type} does not fit {}: coils and discrete inputs are single bits, use type bool (numbers live in holding or input registers)", a(kind)),
            );
        }
        if bit.is_some() {
            return Err(checker.key_error(
                &child(path, "bit"),
                format!(
                    "`bit` picks a bit of a holding or input register; {} is already a single bit",
                    a(kind)
                ),
            ));
        }
    } else {
        match (data_type, bit) {
            (DataType::Bool, None) => {
                return checker.fail(
                    &child(path, "type"),
                    format!("type bool on {} register needs `bit` (0 to 15) to pick the bit; or use u16 for the whole register", a(kind)),
                )
            }
            (DataType::Bool, Some(bit)) if bit > 15 => {
                return checker.fail(&child(path, "bit"), format!("bit {bit} is out of range, expected 0 to 15"))
            }
            (_, Some(_)) if data_type != DataType::Bool => {
                return checker.fail(&child(path, "bit"), format!("`bit` only goes with type bool, not {data_type}"))
            }
            _ => {}
        }
    }
    check_address(checker, path, kind, register.address, data_type)?;
    check_scaling(checker, path, data_type, register.scale, register.offset)?;
    if let Some(deadband) = register.deadband {
        if !is_numeric(data_type) {
            return checker.fail(
                &child(path, "deadband"),
                format!("deadband does not apply to type {data_type}: any change is published"),
            );
        }
        if !deadband.is_finite() || deadband < 0.0 {
            return checker.fail(
                &child(path, "deadband"),
                format!("deadband {deadband} is not allowed: use a number >= 0"),
            );
        }
    }
    Ok(())
}

/// Registers of one kind may not share an address, except different bits of one
/// holding/input register.
fn check_overlaps(checker: &Checker, path: &str, registers: &[Register]) -> Check {
    let mut spans: Vec<(RegisterKind, u32, u32, usize)> = registers
        .iter()
        .enumerate()
        .map(|(index, r)| {
            let start = u32::from(r.address);
            (r.kind, start, start + width(r.kind, r.data_type), index)
        })
        .collect();
    spans.sort_unstable();
    let mut bits_taken: HashMap<(RegisterKind, u16, u8), usize> = HashMap::new();
    let mut furthest: Option<(RegisterKind, u32, u32, usize)> = None;
    for &(kind, start, end, index) in &spans {
        let register = &registers[index];
        if let Some(bit) = register.bit {
            if let Some(other) = bits_taken.insert((kind, register.address, bit), index) {
                return overlap_error(checker, path, registers, index, other);
            }
        }
        if let Some((f_kind, _, f_end, f_index)) = furthest {
            let same_register_bits = register.bit.is_some()
                && registers[f_index].bit.is_some()
                && registers[f_index].address == register.address;
            if f_kind == kind && start < f_end && !same_register_bits {
                return overlap_error(checker, path, registers, index, f_index);
            }
        }
        if furthest.is_none_or(|(f_kind, _, f_end, _)| f_kind != kind || end > f_end) {
            furthest = Some((kind, start, end, index));
        }
    }
    Ok(())
}

fn overlap_error(
    checker: &Checker,
    path: &str,
    registers: &[Register],
    a: usize,
    b: usize,
) -> Check {
    let (first, later) = if a < b { (a, b) } else { (b, a) };
    let describe = |r: &Register| {
        let end = u32::from(r.address) + width(r.kind, r.data_type) - 1;
        let place = if end > u32::from(r.address) {
            format!("{} {}-{end}", r.kind, r.address)
        } else {
            format!("{} {}", r.kind, r.address)
        };
        match r.bit {
            Some(bit) => format!("{place} bit {bit}"),
            None => place,
        }
    };
    let first_path = item(&child(path, "registers"), first);
    let later_path = item(&child(path, "registers"), later);
    checker.fail(
        &child(&later_path, "address"),
        format!(
            "register `{}` ({}) overlaps `{}` ({}, {}); registers of one kind may only share an address as different bits",
            registers[later].name,
            describe(&registers[later]),
            registers[first].name,
            describe(&registers[first]),
            checker.line_of(&first_path)
        ),
    )
}

fn check_command(checker: &Checker, path: &str, command: &Command) -> Check {
    let Command {
        kind, data_type, ..
    } = *command;
    match kind {
        RegisterKind::Coil if data_type != DataType::Bool => {
            return checker.fail(&child(path, "type"), format!("type {data_type} does not fit a coil command, use type bool"))
        }
        RegisterKind::Holding if data_type == DataType::Bool => {
            return checker.fail(
                &child(path, "type"),
                "a holding register command writes whole registers: use u16 (with `values` for named states) instead of bool",
            )
        }
        RegisterKind::Discrete | RegisterKind::Input => {
            return checker.fail(
                &child(path, "kind"),
                format!("{} is read-only: commands write a coil or holding register", a(kind)),
            )
        }
        _ => {}
    }
    check_address(checker, path, kind, command.address, data_type)?;
    check_scaling(checker, path, data_type, command.scale, command.offset)?;
    if !is_numeric(data_type) {
        return checker.reject_present(
            path,
            &["min", "max", "values"],
            &format!("does not apply to type {data_type}"),
        );
    }
    for (key, bound) in [("min", command.min), ("max", command.max)] {
        if bound.is_some_and(|b| !b.is_finite()) {
            return checker.fail(&child(path, key), format!("{key} must be a finite number"));
        }
    }
    if let (Some(min), Some(max)) = (command.min, command.max) {
        if min > max {
            return checker.fail(
                &child(path, "min"),
                format!("min {min} is greater than max {max}"),
            );
        }
    }
    if let Some(values) = &command.values {
        if values.is_empty() {
            return checker.fail(
                &child(path, "values"),
                "values must name at least one value, e.g. { off: 0, on: 1 }",
            );
        }
        for (name, &value) in values {
            let value_path = child(&child(path, "values"), name);
            let below = command.min.is_some_and(|min| value < min);
            let above = command.max.is_some_and(|max| value > max);
            if !value.is_finite() || below || above {
                return checker.fail(
                    &value_path,
                    format!("value {value} of `{name}` is outside min/max or not a finite number"),
                );
            }
        }
    }
    Ok(())
}

fn check_serial_line_device(checker: &Checker, path: &str, device: &Device, bus: &Bus) -> Check {
    checker.reject_present(
        path,
        &MODBUS_ONLY_KEYS,
        &format!(
            "only applies to Modbus devices; `{}` is a serial-line bus, whose device publishes each parsed line",
            bus.name
        ),
    )?;
    let Some(parser) = &device.parser else {
        return checker.fail(
            path,
            format!(
                "device `{}` on serial-line bus `{}` needs `parser`: {{ regex: PATTERN, fields: {{...}} }} or {{ json: true }}",
                device.id, bus.name
            ),
        );
    };
    if let LineParser::Regex { regex, fields } = parser {
        let groups: Vec<&str> = regex.capture_names().flatten().collect();
        let parser_path = child(path, "parser");
        if groups.is_empty() {
            return checker.fail(
                &child(&parser_path, "regex"),
                "the regex has no named groups like (?P<name>...): a line would yield no fields",
            );
        }
        for field in fields.keys() {
            if !groups.contains(&field.as_str()) {
                return Err(checker.key_error(
                    &child(&child(&parser_path, "fields"), field),
                    format!(
                        "field `{field}` is not a named group of the regex; its groups: {}",
                        groups.join(", ")
                    ),
                ));
            }
        }
    }
    Ok(())
}
