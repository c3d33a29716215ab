//! `fieldbridge run`: the gateway service. SIGHUP reloads the configuration (the new
//! one is validated first; a bad one leaves the running one in place), SIGTERM stops
//! it cleanly.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use tokio::signal::unix::{signal, SignalKind};
use tokio::task::JoinHandle;

use super::systemd;
use crate::config::Config;
use crate::event::EventSink;
use crate::gateway::Gateway;

/// Events in flight between the buses and the output.
const SINK_CAPACITY: usize = 4096;

pub fn run(path: &Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    super::logging::init(config.log.as_ref());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(path, config))
}

/// The acquisition side and where its events go, started from one configuration.
struct Running {
    gateway: Gateway,
    output: JoinHandle<std::io::Result<()>>,
}

impl Running {
    fn start(config: &Config) -> anyhow::Result<Running> {
        let (sink, events) = EventSink::channel(SINK_CAPACITY);
        let output = tokio::spawn(crate::output::write_lines(events, tokio::io::stdout()));
        let gateway = Gateway::start(config, sink)?;
        Ok(Running { gateway, output })
    }

    async fn stop(self) -> anyhow::Result<()> {
        self.gateway.shutdown().await;
        self.output
            .await
            .context("output task failed")?
            .context("writing events to stdout")
    }
}

fn status(config: &Config) -> String {
    format!(
        "polling {} device(s) on {} bus(es)",
        config.devices.len(),
        config.buses.len()
    )
}

async fn serve(path: &Path, config: Config) -> anyhow::Result<()> {
    let mut hangup = signal(SignalKind::hangup()).context("cannot watch SIGHUP")?;
    let stop = super::stop_requested();
    tokio::pin!(stop);
    let watchdog = systemd::watchdog_interval();
    let mut watchdog_tick = tokio::time::interval(watchdog.unwrap_or(Duration::from_secs(3600)));

    let mut running = Running::start(&config)?;
    let mut config = config;
    tracing::info!("gateway running: {}", status(&config));
    systemd::ready(&status(&config));
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = hangup.recv() => {
                systemd::reloading();
                match Config::load(path) {
                    Ok(new) => {
                        running.stop().await?;
                        running = match Running::start(&new) {
                            Ok(running) => {
                                config = new;
                                tracing::info!("configuration reloaded: {}", status(&config));
                                running
                            }
                            Err(e) => {
                                tracing::error!("cannot start the reloaded configuration, going back to the previous one: {e:#}");
                                Running::start(&config)?
                            }
                        };
                    }
                    Err(e) => tracing::error!("reload refused, the running configuration stays: {e}"),
                }
                systemd::ready(&status(&config));
            }
            _ = watchdog_tick.tick(), if watchdog.is_some() => systemd::watchdog(),
        }
    }
    tracing::info!("stopping");
    systemd::stopping();
    running.stop().await
}
