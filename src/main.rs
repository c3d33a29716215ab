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
    Demo {
        /// Stop after this long (e.g. `30s`); runs until Ctrl-C when absent.
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Option<std::time::Duration>,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    let outcome = match args.command {
        Command::Check { config } => cli::check::run(&config),
        Command::Run { config } => cli::run::run(&config),
        Command::Queue { config } => cli::queue::run(&config),
        Command::Demo { duration } => cli::demo::run(duration),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fieldbridge: {e:#}");
            ExitCode::FAILURE
        }
    }
}
