//! `fieldbridge check`: validate a config and show what the gateway would do with it.

use std::fmt::Write as _;
use std::path::Path;

use crate::config::{BusTransport, Config};
use crate::gateway::{read_plan, tags};

pub fn run(path: &Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    print!("{}", describe(&config)?);
    Ok(())
}

/// Buses, devices, tags and the read requests of one poll cycle, as text.
pub fn describe(config: &Config) -> anyhow::Result<String> {
    let mut out = String::new();
    let mut total_requests = 0;
    let mut total_tags = 0;
    for bus in &config.buses {
        let _ = writeln!(out, "bus {} ({})", bus.name, bus.transport.kind_name());
        for device in config.devices.iter().filter(|d| d.bus == bus.name) {
            let _ = write!(
                out,
                "  device {} (type {}, event {}, qos {}, every {})",
                device.id, device.device_type, device.event, device.qos as u8, device.poll
            );
            if let BusTransport::SerialLine { .. } = bus.transport {
                let _ = writeln!(out, ", line parser");
                continue;
            }
            let _ = writeln!(out, ", unit {}", device.unit.unwrap_or(1));
            let tags = tags(device);
            for tag in &tags {
                let _ = write!(
                    out,
                    "    tag {}: {} {} {}",
                    tag.name, tag.kind, tag.address, tag.data_type
                );
                if let Some(bit) = tag.bit {
                    let _ = write!(out, " bit {bit}");
                }
                if let Some(unit) = &tag.unit {
                    let _ = write!(out, " [{unit}]");
                }
                let _ = writeln!(out);
            }
            let plan = read_plan(device, &tags)
                .map_err(|e| anyhow::anyhow!("device {}: {e}", device.id))?;
            let names: Vec<&str> = tags.iter().map(|t| t.name.as_str()).collect();
            let _ = writeln!(out, "    {} request(s) per poll:", plan.requests.len());
            for request in &plan.requests {
                let _ = writeln!(out, "      {}", request.display_with(&names));
            }
            total_requests += plan.requests.len();
            total_tags += tags.len();
        }
    }
    for warning in &config.warnings {
        let _ = writeln!(out, "warning: {warning}");
    }
    let _ = writeln!(
        out,
        "ok: {} bus(es), {} device(s), {} tag(s), {} request(s) per poll cycle",
        config.buses.len(),
        config.devices.len(),
        total_tags,
        total_requests
    );
    Ok(out)
}
