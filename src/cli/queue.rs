//! `fieldbridge queue`: what the store-and-forward queue holds, per device. Reads the
//! database without locking it, so it works while the service runs.

use std::fmt::Write as _;
use std::path::Path;
use std::time::SystemTime;

use anyhow::Context as _;

use crate::config::Config;
use crate::store::{read_stats, DeviceStats};

pub fn run(path: &Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let stats = runtime.block_on(read_stats(&config.gateway.data_dir))?;
    print!("{}", table(&config, &stats, SystemTime::now()));
    Ok(())
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
        "{:<24} {:>10} {:>12} {:>12} {:>12} {:>12}\n",
        "device", "queued", "bytes", "oldest", "dropped_full", "dropped_qos0"
    );
    let (mut depth, mut bytes, mut full, mut offline) = (0, 0, 0, 0);
    for s in &rows {
        let oldest = s
            .oldest_age(now)
            .map_or_else(|| "-".to_owned(), |age| format!("{}s", age.as_secs()));
        let _ = writeln!(
            out,
            "{:<24} {:>10} {:>12} {:>12} {:>12} {:>12}",
            s.device_id, s.depth, s.bytes, oldest, s.dropped_queue_full, s.dropped_offline_qos0
        );
        depth += s.depth;
        bytes += s.bytes;
        full += s.dropped_queue_full;
        offline += s.dropped_offline_qos0;
    }
    let _ = writeln!(
        out,
        "{:<24} {:>10} {:>12} {:>12} {:>12} {:>12}",
        "total", depth, bytes, "", full, offline
    );
    out
}
