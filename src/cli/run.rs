//! `fieldbridge run`: the gateway service.

use std::path::Path;

use anyhow::Context as _;

use crate::config::Config;
use crate::event::EventSink;
use crate::gateway::Gateway;

/// Events in flight between the buses and the output.
const SINK_CAPACITY: usize = 4096;

pub fn run(path: &Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    super::init_logging(config.log.as_ref().map_or("info", |l| l.level.as_str()));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(config))
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let (sink, events) = EventSink::channel(SINK_CAPACITY);
    let output = tokio::spawn(crate::output::write_lines(events, tokio::io::stdout()));
    let gateway = Gateway::start(&config, sink)?;
    tracing::info!(
        buses = config.buses.len(),
        devices = config.devices.len(),
        "gateway running"
    );
    super::stop_requested().await;
    tracing::info!("stopping");
    gateway.shutdown().await;
    output
        .await
        .context("output task failed")?
        .context("writing events to stdout")?;
    Ok(())
}
