//! `fieldbridge run`: the gateway service. SIGHUP reloads the configuration (the new
//! one is validated first; a bad one leaves the running one in place), SIGTERM stops
//! it cleanly.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::task::JoinHandle;

use tokio::sync::mpsc;

use crate::command::{self, service::CommandLog};
use crate::config::{self, Config, Upstream};
use crate::event::EventSink;
use crate::gateway::Gateway;
use crate::metrics::{Exposition, Family, DEVICE_COUNTERS};
use crate::store::{DeviceStats, Store, StoreSettings};
use crate::uplink::{
    ClientCertificate, DeviceIdentity, DeviceInfo, HomeAssistantSettings, Protocol, SessionStatus,
    SparkplugSettings, TlsSettings, TopicScheme, Uplink, UplinkSettings, HOMEASSISTANT_ANNOUNCED,
};
use tokio_util::sync::CancellationToken;

/// Events in flight between the buses and the output.
const SINK_CAPACITY: usize = 4096;

pub fn run(path: &Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    fieldbridge_service::logging::init(config.log.as_ref());
    for warning in &config.warnings {
        tracing::warn!("{}: {warning}", path.display());
    }
    // One thread: the gateway waits on I/O nearly all the time, and a second worker
    // mostly costs wake-ups handing tasks across (SQLite has threads of its own).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(path, config))
}

/// Where events go: the MQTT uplink (with the command service answering what comes
/// back), or stdout when no upstream is configured.
enum Output {
    Uplink {
        uplink: Uplink,
        commands: JoinHandle<()>,
    },
    Stdout(JoinHandle<std::io::Result<()>>),
}

/// Commands received and not yet taken by the command service.
const INBOUND_CAPACITY: usize = 256;

/// The acquisition side and where its events go, started from one configuration.
pub(crate) struct Running {
    gateway: Gateway,
    output: Output,
    /// Stops the metrics endpoint, when one is served.
    metrics: CancellationToken,
}

impl Running {
    pub(crate) async fn start(config: &Config) -> anyhow::Result<Running> {
        let (sink, events) = EventSink::channel(SINK_CAPACITY);
        let Some(upstream) = &config.upstream else {
            let output = tokio::spawn(crate::output::write_lines(events, tokio::io::stdout()));
            let sink_dropped = sink.dropped_counter();
            let gateway = Gateway::start(config, sink)?;
            let metrics = serve_metrics(config, &gateway, &sink_dropped, None).await?;
            return Ok(Running {
                gateway,
                output: Output::Stdout(output),
                metrics,
            });
        };
        let store = Store::open(store_settings(config)).await?;
        let queue = store.clone();
        let log = CommandLog {
            store: store.clone(),
            remembered: upstream.remembered_commands,
        };
        let devices = config
            .devices
            .iter()
            .map(|d| DeviceIdentity {
                id: d.id.clone(),
                device_type: d.device_type.clone(),
                token: d.token.as_ref().map(|t| t.expose().to_owned()),
                managed: d.managed,
                tls: d.tls.as_ref().map(|tls| ClientCertificate {
                    cert_file: tls.cert_file.clone(),
                    key_file: tls.key_file.clone(),
                }),
            })
            .collect();
        let (inbound, commands) = mpsc::channel(INBOUND_CAPACITY);
        let mut settings = uplink_settings(upstream);
        settings.inbound = Some(inbound);
        settings.catalog = config
            .devices
            .iter()
            .map(|d| (d.id.clone(), DeviceInfo::from_config(d)))
            .collect();
        if let TopicScheme::HomeAssistant(homeassistant) = &mut settings.topics {
            // What the previous run announced; unreadable means nothing to remove.
            homeassistant.announced_before = store
                .state(HOMEASSISTANT_ANNOUNCED)
                .await?
                .and_then(|json| serde_json::from_str(&json).ok())
                .unwrap_or_default();
        }
        let uplink = Uplink::start(settings, store, devices, events)?;
        let sink_dropped = sink.dropped_counter();
        let gateway = Gateway::start(config, sink.clone())?;
        let buses = config
            .devices
            .iter()
            .filter_map(|d| Some((d.id.clone(), gateway.device_bus(&d.id)?)))
            .collect();
        let commands = tokio::spawn(command::service::serve(
            config.devices.clone(),
            buses,
            log,
            sink,
            commands,
        ));
        let metrics =
            serve_metrics(config, &gateway, &sink_dropped, Some((&uplink, queue))).await?;
        Ok(Running {
            gateway,
            output: Output::Uplink { uplink, commands },
            metrics,
        })
    }

    /// Stops polling first, then lets the output take what was produced.
    pub(crate) async fn stop(self) -> anyhow::Result<()> {
        self.metrics.cancel();
        self.gateway.shutdown().await;
        match self.output {
            Output::Uplink { uplink, commands } => {
                // Closing the sessions ends the command service's input.
                uplink.shutdown().await;
                let _ = tokio::time::timeout(Duration::from_secs(2), commands).await;
                Ok(())
            }
            Output::Stdout(task) => task
                .await
                .context("output task failed")?
                .context("writing events to stdout"),
        }
    }
}

const QUEUE_FAMILIES: [Family<DeviceStats>; 5] = [
    Family {
        name: "fieldbridge_queue_depth",
        kind: "gauge",
        help: "QoS 1 events queued, not yet acknowledged.",
        read: |s| s.depth as f64,
    },
    Family {
        name: "fieldbridge_queue_dropped_total",
        kind: "counter",
        help: "QoS 1 events dropped because the queue was full.",
        read: |s| s.dropped_queue_full as f64,
    },
    Family {
        name: "fieldbridge_qos0_dropped_total",
        kind: "counter",
        help: "QoS 0 events dropped while offline.",
        read: |s| s.dropped_offline_qos0 as f64,
    },
    Family {
        name: "fieldbridge_queue_write_failed_dropped_total",
        kind: "counter",
        help: "QoS 1 events lost because the queue database could not store them (disk full or failing).",
        read: |s| s.dropped_write_failed as f64,
    },
    Family {
        name: "fieldbridge_dead_lettered_total",
        kind: "counter",
        help: "QoS 1 events the broker refused for good, moved to the dead letters.",
        read: |s| s.dead_lettered as f64,
    },
];

/// Starts the Prometheus endpoint of `config.metrics`, if any: poll counters, and with
/// an uplink the sessions and the queue.
async fn serve_metrics(
    config: &Config,
    gateway: &Gateway,
    sink_dropped: &Arc<AtomicU64>,
    uplink: Option<(&Uplink, Store)>,
) -> anyhow::Result<CancellationToken> {
    let stop = CancellationToken::new();
    let Some(addr) = config.metrics else {
        return Ok(stop);
    };
    let listener = crate::metrics::bind(addr)
        .await
        .with_context(|| format!("metrics: cannot listen on {addr}"))?;
    let counters = gateway.counters().to_vec();
    let sessions: Vec<_> = match &uplink {
        Some((uplink, _)) => config
            .devices
            .iter()
            .filter_map(|d| Some((d.id.clone(), uplink.status(&d.id)?)))
            .collect(),
        None => Vec::new(),
    };
    let store = uplink.map(|(_, store)| store);
    let sink_dropped = sink_dropped.clone();
    let render = move || {
        let sink_dropped = sink_dropped.load(Ordering::Relaxed);
        let counters = counters.clone();
        let sessions = sessions.clone();
        let store = store.clone();
        async move {
            let mut out = Exposition::default();
            out.per_device(
                &DEVICE_COUNTERS,
                counters.iter().map(|(d, c)| (d.as_str(), c.as_ref())),
            );
            out.family(
                "fieldbridge_qos0_backlog_dropped_total",
                "counter",
                "QoS 0 events dropped because the output was behind the buses.",
            );
            out.sample(
                "fieldbridge_qos0_backlog_dropped_total",
                None,
                sink_dropped as f64,
            );
            if let Some(store) = store {
                let stats = store.stats().await.unwrap_or_default();
                out.per_device(
                    &QUEUE_FAMILIES,
                    stats.iter().map(|s| (s.device_id.as_str(), s)),
                );
                let statuses: Vec<(String, SessionStatus)> = sessions
                    .iter()
                    .map(|(d, rx)| (d.clone(), rx.borrow().clone()))
                    .collect();
                out.family(
                    "fieldbridge_session_connected",
                    "gauge",
                    "1 while the device's MQTT session is connected.",
                );
                for (device, status) in &statuses {
                    out.sample(
                        "fieldbridge_session_connected",
                        Some(device),
                        f64::from(u8::from(status.connected)),
                    );
                }
                out.family(
                    "fieldbridge_published_total",
                    "counter",
                    "QoS 1 events acknowledged by the broker.",
                );
                for (device, status) in &statuses {
                    out.sample(
                        "fieldbridge_published_total",
                        Some(device),
                        status.acknowledged as f64,
                    );
                }
                out.family(
                    "fieldbridge_inbound_oversized_total",
                    "counter",
                    "Packets from the broker over upstream.max_inbound (each restarted the session clean).",
                );
                for (device, status) in &statuses {
                    out.sample(
                        "fieldbridge_inbound_oversized_total",
                        Some(device),
                        status.inbound_oversized as f64,
                    );
                }
                out.family("fieldbridge_publish_latency_seconds_sum", "counter", "Time from sending to PUBACK, summed over the published events (divide by fieldbridge_published_total for the mean).");
                for (device, status) in &statuses {
                    out.sample(
                        "fieldbridge_publish_latency_seconds_sum",
                        Some(device),
                        status.ack_latency_total.as_secs_f64(),
                    );
                }
            }
            out.into_text()
        }
    };
    tokio::spawn(crate::metrics::serve(listener, render, stop.clone()));
    tracing::info!(%addr, "serving metrics");
    Ok(stop)
}

fn store_settings(config: &Config) -> StoreSettings {
    let mut settings = StoreSettings::new(&config.gateway.data_dir);
    settings.max_messages = config.queue.max_messages;
    settings.max_bytes = config.queue.max_bytes.bytes();
    settings.commit_window = *config.queue.commit_window;
    settings.on_full = match config.queue.on_full {
        config::OnFull::DropOldest => crate::store::OnFull::DropOldest,
        config::OnFull::DropNewest => crate::store::OnFull::DropNewest,
    };
    settings
}

fn uplink_settings(upstream: &Upstream) -> UplinkSettings {
    let mut settings = UplinkSettings::new(upstream.url.clone(), upstream.org.clone());
    settings.keepalive = *upstream.keepalive;
    settings.inflight = upstream.max_inflight;
    settings.max_inbound = usize::try_from(upstream.max_inbound.bytes()).unwrap_or(usize::MAX);
    settings.protocol = match upstream.protocol {
        config::MqttVersion::V311 => Protocol::V311,
        config::MqttVersion::V5 => Protocol::V5,
    };
    if let Some(expiry) = upstream.session_expiry {
        settings.session_expiry = *expiry;
    }
    settings.message_expiry = upstream.message_expiry.map(|expiry| *expiry);
    settings.command_qos = match upstream.command_qos {
        0 => rumqttc::QoS::AtMostOnce,
        1 => rumqttc::QoS::AtLeastOnce,
        _ => rumqttc::QoS::ExactlyOnce,
    };
    if let Some(tls) = &upstream.tls {
        settings.tls = TlsSettings {
            ca_file: tls.ca_file.clone(),
            cert_file: tls.cert_file.clone(),
            key_file: tls.key_file.clone(),
            insecure: tls.insecure,
        };
    }
    settings.topics = match upstream.topic_scheme {
        config::TopicScheme::Platform => TopicScheme::Platform,
        config::TopicScheme::Custom => {
            let templates = upstream.topics.clone().unwrap_or_default();
            TopicScheme::Custom {
                client_id: templates.client_id,
                username: upstream.username.clone(),
                event: templates.event,
                command: templates.command,
            }
        }
        config::TopicScheme::Sparkplug => {
            let sparkplug = upstream
                .sparkplug
                .clone()
                .expect("validation requires upstream.sparkplug");
            TopicScheme::Sparkplug(SparkplugSettings {
                group_id: sparkplug.group_id,
                edge_node_id: sparkplug.edge_node_id,
                primary_host_id: sparkplug.primary_host_id,
            })
        }
        config::TopicScheme::HomeAssistant => {
            let section = upstream.homeassistant.clone().unwrap_or_default();
            TopicScheme::HomeAssistant(HomeAssistantSettings {
                discovery_prefix: section.discovery_prefix,
                base_topic: section.base_topic,
                announced_before: Vec::new(),
            })
        }
    };
    settings
}

fn status(config: &Config) -> String {
    format!(
        "polling {} device(s) on {} bus(es)",
        config.devices.len(),
        config.buses.len()
    )
}

/// The running gateway as systemd sees it: SIGHUP loads the file again, and only a
/// configuration that loads and starts replaces the running one.
struct GatewayService<'a> {
    path: &'a Path,
    config: Config,
    running: Option<Running>,
}

impl fieldbridge_service::Service for GatewayService<'_> {
    type Error = anyhow::Error;

    fn status(&self) -> String {
        status(&self.config)
    }

    async fn reload(&mut self) -> anyhow::Result<()> {
        let new = match Config::load(self.path) {
            Ok(new) => new,
            Err(e) => {
                tracing::error!("reload refused, the running configuration stays: {e}");
                return Ok(());
            }
        };
        if let Some(running) = self.running.take() {
            if let Err(e) = running.stop().await {
                tracing::error!("stopping the running configuration: {e:#}");
            }
        }
        match Running::start(&new).await {
            Ok(running) => {
                self.config = new;
                self.running = Some(running);
                tracing::info!("configuration reloaded: {}", status(&self.config));
            }
            Err(e) => {
                tracing::error!("cannot start the reloaded configuration, going back to the previous one: {e:#}");
                self.running = Some(Running::start(&self.config).await?);
            }
        }
        Ok(())
    }
}

async fn serve(path: &Path, config: Config) -> anyhow::Result<()> {
    let running = Running::start(&config).await?;
    tracing::info!("gateway running: {}", status(&config));
    let mut service = GatewayService {
        path,
        config,
        running: Some(running),
    };
    fieldbridge_service::run_until_stopped(&mut service).await?;
    match service.running {
        Some(running) => running.stop().await,
        None => Ok(()),
    }
}
