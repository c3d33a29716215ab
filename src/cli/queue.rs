//! `fieldbridge queue`: what the store-and-forward queue holds, per device. Reads the
//! database without locking it, so it works while the service runs.

use std::fmt::Write as _;
use std::path::Path;
use std::time::SystemTime;

use anyhow::Context as _;

use crate::config::Config;
use crate::store::{free_space, read_stats, DeviceStats};

/// Below this the queue cannot take new events: a commit appends at least a page to the
/// WAL, and the WAL is not emptied before a checkpoint has copied it (which needs room).
const FULL_BELOW: u64 = 1024 * 1024;
/// Below this the file system is close to that point (the WAL alone grows to about
/// 4 MiB between checkpoints).
const LOW_BELOW: u64 = 16 * 1024 * 1024;

pub fn run(path: &Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let data_dir = &config.gateway.data_dir;
    // Said even when there is no queue to show: a full disk may be why.
    let space = match free_space(data_dir) {
        Ok(free) => space_warning(data_dir, free),
        Err(e) => Some(format!(
            "warning: cannot read the free space of {}: {e}",
            data_dir.display()
        )),
    };
    let stats = runtime.block_on(read_stats(data_dir));
    if let Ok(stats) = &stats {
        print!("{}", table(&config, stats, SystemTime::now()));
    }
    if let Some(warning) = space {
        eprintln!("{warning}");
    }
    stats?;
    Ok(())
}

/// The warning for a data directory with `free` bytes left, if it is (nearly) full.
pub fn space_warning(data_dir: &Path, free: u64) -> Option<String> {
    let dir = data_dir.display();
    if free < FULL_BELOW {
        Some(format!(
            "warning: {dir} has {free} bytes free: QoS 1 events cannot be queued \
             (they are lost and counted in dropped_write)"
        ))
    } else if free < LOW_BELOW {
        Some(format!(
            "warning: {dir} has only {free} bytes free: QoS 1 events cannot be queued \
             once it is full (they are then lost and counted in dropped_write)"
        ))
    } else {
        None
    }
}

/// One row per configured device (and any other device the queue still holds).
pub fn table(config: &Config, stats: &[DeviceStats], now: SystemTime) -> String {
    let mut rows: Vec<DeviceStats> = config
        .devices
        .iter()
        .map(|d| {
            stats
                .iter()
                .find(|s| s.device_id == d.id)
                .cloned()
                .unwrap_or_else(|| DeviceStats {
                    device_id: d.id.clone(),
                    ..Default::default()
                })
        })
        .collect();
    rows.extend(
        stats
            .iter()
            .filter(|s| !config.devices.iter().any(|d| d.id == s.device_id))
            .cloned(),
    );
    let mut out = format!(
        "{:<24} {:>10} {:>12} {:>12} {:>12} {:>12} {:>13} {:>12}\n",
        "device",
        "queued",
        "bytes",
        "oldest",
        "dropped_full",
        "dropped_qos0",
        "dropped_write",
        "dead_letters"
    );
    let (mut depth, mut bytes, mut full, mut offline, mut write, mut dead) = (0, 0, 0, 0, 0, 0);
    for s in &rows {
        let oldest = s
            .oldest_age(now)
            .map_or_else(|| "-".to_owned(), |age| format!("{}s", age.as_secs()));
        let _ = writeln!(
            out,
            "{:<24} {:>10} {:>12} {:>12} {:>12} {:>12} {:>13} {:>12}",
            s.device_id,
            s.depth,
            s.bytes,
            oldest,
            s.dropped_queue_full,
            s.dropped_offline_qos0,
            s.dropped_write_failed,
            s.dead_lettered
        );
        depth += s.depth;
        bytes += s.bytes;
        full += s.dropped_queue_full;
        offline += s.dropped_offline_qos0;
        write += s.dropped_write_failed;
        dead += s.dead_lettered;
    }
    let _ = writeln!(
        out,
        "{:<24} {:>10} {:>12} {:>12} {:>12} {:>12} {:>13} {:>12}",
        "total", depth, bytes, "", full, offline, write, dead
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_or_nearly_full_data_dir_is_reported() {
        let dir = Path::new("/var/lib/fieldbridge");
        assert_eq!(
            space_warning(dir, 0).unwrap(),
            "warning: /var/lib/fieldbridge has 0 bytes free: QoS 1 events cannot be queued \
             (they are lost and counted in dropped_write)"
        );
        let low = space_warning(dir, 5 * 1024 * 1024).unwrap();
        assert!(low.contains("has only 5242880 bytes free"), "{low}");
        assert!(low.contains("once it is full"), "{low}");
        assert_eq!(space_warning(dir, 1 << 30), None);
    }

    const CONFIG: &str = "\
buses: [ { name: plc, kind: tcp, host: plc.local } ]
devices:
  - { id: a, type: t, bus: plc, unit: 1, registers: [ { name: x, kind: input, address: 7, type: i32 } ] }
";

    #[test]
    fn the_table_shows_write_failures_and_dead_letters_per_device_and_in_total() {
        let config = Config::from_str(CONFIG, "gateway.yaml").unwrap();
        let stats = [
            DeviceStats {
                device_id: "a".into(),
                dropped_write_failed: 7,
                dead_lettered: 3,
                ..Default::default()
            },
            DeviceStats {
                device_id: "b".into(),
                dropped_write_failed: 5,
                ..Default::default()
            },
        ];
        let out = table(&config, &stats, SystemTime::now());
        let lines: Vec<Vec<&str>> = out
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(lines[0][6..], ["dropped_write", "dead_letters"], "{out}");
        assert_eq!(
            (lines[1][0], &lines[1][6..]),
            ("a", &["7", "3"][..]),
            "{out}"
        );
        assert_eq!(
            (lines[2][0], &lines[2][6..]),
            ("b", &["5", "0"][..]),
            "{out}"
        );
        assert_eq!(
            (lines[3][0], &lines[3][5..]),
            ("total", &["12", "3"][..]),
            "{out}"
        );
    }
}
