//! `fieldbridge-broker`: run the MQTT broker, or manage its password file and its
//! platform registry.

mod platform_cli;

use std::io::{BufRead, IsTerminal};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use fieldbridge_broker::config::ListenerConfig;
use fieldbridge_broker::{auth, Broker, Config, RunningBroker};
use fieldbridge_service::{logging, metrics, Service};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(
    name = "fieldbridge-broker",
    version,
    about = "MQTT 3.1.1 broker",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    /// Configuration file (YAML). Without one the broker listens on 127.0.0.1:1883.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Adds a plain MQTT listener (ADDR:PORT; port 0 picks a free one). Repeatable.
    #[arg(long, value_name = "ADDR:PORT")]
    listen: Vec<SocketAddr>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Sets a user's password in a password file (created if missing), or deletes the user.
    /// The password is read from standard input (prompted twice on a terminal) unless -b.
    Passwd {
        /// Takes the password from the command line (visible to other users: for scripts
        /// and tests).
        #[arg(short = 'b', requires = "password")]
        batch: bool,
        /// Deletes the user instead.
        #[arg(short = 'D', conflicts_with_all = ["batch", "password"])]
        delete: bool,
        file: PathBuf,
        user: String,
        password: Option<String>,
    },
    /// Manages the devices of the platform registry (`platform.registry` of the config).
    Device {
        #[command(subcommand)]
        command: platform_cli::DeviceCommand,
    },
    /// Manages the applications of the platform registry.
    App {
        #[command(subcommand)]
        command: platform_cli::AppCommand,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Passwd {
            batch,
            delete,
            file,
            user,
            password,
        }) => passwd(&file, &user, delete, batch.then_some(password).flatten()),
        Some(Command::Device { command }) => platform_cli::device(command),
        Some(Command::App { command }) => platform_cli::app(command),
        None => run(cli.config.as_deref(), cli.listen),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("fieldbridge-broker: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn passwd(file: &Path, user: &str, delete: bool, password: Option<String>) -> anyhow::Result<()> {
    if delete {
        if !auth::delete_user(file, user)? {
            bail!("no user {user:?} in {}", file.display());
        }
        return Ok(());
    }
    let password = match password {
        Some(password) => password,
        None => read_password()?,
    };
    if password.is_empty() {
        bail!("empty password");
    }
    auth::set_password(file, user, password.as_bytes())?;
    Ok(())
}

fn read_password() -> anyhow::Result<String> {
    if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password("Password: ").context("reading the password")?;
        let second =
            rpassword::prompt_password("Password again: ").context("reading the password")?;
        if first != second {
            bail!("the passwords differ");
        }
        return Ok(first);
    }
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("reading the password from standard input")?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

fn run(config_path: Option<&Path>, listen: Vec<SocketAddr>) -> anyhow::Result<()> {
    let source = ConfigSource {
        path: config_path.map(Path::to_owned),
        listen,
    };
    let config = source.load()?;
    logging::init(config.log.as_ref());
    let metrics_addr = config.metrics;
    let broker = Broker::new(config)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let running = broker.start().await?;
        let addrs: Vec<String> = running
            .local_addrs()
            .iter()
            .map(|a| a.to_string())
            .collect();
        for addr in &addrs {
            // A stable line for scripts and tests that start the broker on port 0.
            eprintln!("listening on {addr}");
        }
        let stop_metrics = CancellationToken::new();
        if let Some(addr) = metrics_addr {
            serve_metrics(addr, &running, stop_metrics.clone()).await?;
        }
        let mut service = BrokerService {
            running,
            source,
            status: format!("listening on {}", addrs.join(", ")),
        };
        fieldbridge_service::run_until_stopped(&mut service).await?;
        stop_metrics.cancel();
        service.running.shutdown().await;
        anyhow::Ok(())
    })
}

/// Where the configuration comes from: the file (read again on SIGHUP) and `--listen`.
struct ConfigSource {
    path: Option<PathBuf>,
    listen: Vec<SocketAddr>,
}

impl ConfigSource {
    fn load(&self) -> anyhow::Result<Config> {
        let mut config = match &self.path {
            Some(path) => Config::load(path)?,
            None => Config::default(),
        };
        config
            .listeners
            .extend(self.listen.iter().copied().map(ListenerConfig::mqtt));
        Ok(config)
    }
}

/// Serves `GET /metrics` with the broker's counters until `stop`.
async fn serve_metrics(
    addr: SocketAddr,
    running: &RunningBroker,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let listener = metrics::bind(addr)
        .await
        .with_context(|| format!("metrics: cannot listen on {addr}"))?;
    let bound = listener.local_addr().context("metrics listener")?;
    eprintln!("metrics on {bound}");
    let stats = running.stats_handle();
    tokio::spawn(metrics::serve(
        listener,
        move || std::future::ready(stats.get().exposition()),
        stop,
    ));
    Ok(())
}

/// The running broker as systemd sees it: SIGHUP reloads its password file and ACL, and
/// each watchdog feed first reads the broker's shared state, so a deadlocked router stops
/// the feed and systemd restarts the broker.
struct BrokerService {
    running: RunningBroker,
    source: ConfigSource,
    status: String,
}

impl Service for BrokerService {
    type Error = anyhow::Error;

    fn status(&self) -> String {
        self.status.clone()
    }

    async fn reload(&mut self) -> anyhow::Result<()> {
        reload(&mut self.running, &self.source);
        Ok(())
    }

    fn check_alive(&self) {
        let _ = self.running.stats();
    }
}

/// Reads the configuration again and applies its password file and ACL; on any error
/// the running ones stay.
fn reload(running: &mut RunningBroker, source: &ConfigSource) {
    if source.path.is_none() {
        tracing::info!("SIGHUP: no configuration file to reload");
        return;
    }
    match source.load().and_then(|config| Ok(running.reload(config)?)) {
        Ok(restart_needed) => {
            tracing::info!("configuration reloaded: password file and ACL applied");
            if !restart_needed.is_empty() {
                tracing::warn!(
                    "changes to {} take effect at the next restart",
                    restart_needed.join(", ")
                );
            }
        }
        Err(error) => {
            tracing::error!("configuration not reloaded, the running one stays: {error:#}")
        }
    }
}
