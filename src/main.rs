use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use fieldbridge::cli;

/// Modbus and serial field devices to MQTT, with store-and-forward.
#[derive(Debug, Parser)]
#[command(name = "fieldbridge", version, about)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

const DEFAULT_CONFIG: &str = "/etc/fieldbridge/gateway.yaml";

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway.
    Run {
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Validate the configuration, then print devices, tags and the planned Modbus requests.
    Check {
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Show the store-and-forward queue: depth per device, oldest age, drops.
    Queue {
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Run everything in one process on simulated hardware (no setup needed).
    #[cfg(feature = "demo")]
    Demo {
        /// Stop after this long (e.g. `30s`); runs until Ctrl-C when absent.
        #[arg(long)]
        duration: Option<fieldbridge::config::Duration>,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    let outcome = match args.command {
        Command::Check { config } => cli::check::run(&config),
        Command::Run { config } => cli::run::run(&config),
        Command::Queue { config } => cli::queue::run(&config),
        #[cfg(feature = "demo")]
        Command::Demo { duration } => cli::demo::run(duration.map(|d| d.get())),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fieldbridge: {e:#}");
            ExitCode::FAILURE
        }
    }
}
